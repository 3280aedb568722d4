"""The accuracy target on the lossy commands: a miss is exit 1 with the model written,
and the checks run on the user's data when there is some."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxslim.cli import main

MODELS = Path(__file__).resolve().parents[1] / "models"
LSTM = MODELS / "digits_lstm.onnx"
LSTM_CALIB = MODELS / "digits_lstm.calib.npz"


def test_a_collapse_is_a_missed_target_and_the_model_is_still_written(
    tmp_path: Path, capsys
) -> None:
    """2-bit clustering of digits_lstm loses 5.4 points on held-out feeds: exit 1."""
    out = tmp_path / "c2.onnx"
    code = main(
        ["cluster", str(LSTM), "-o", str(out), "--bits", "2", "--calib", str(LSTM_CALIB)]
        + ["--runs", "0"]
    )
    captured = capsys.readouterr()
    assert code == 1 and out.is_file()
    error = " ".join(captured.err.split())
    assert "accuracy target missed: logits (classifier):" in error
    assert "points of top-1 decisions changed (counted, or estimated from margins if more)" in error
    assert "(target <= 1.00, 64 decisions)" in error
    assert "try --bits one higher" in error
    assert "last 64 of 256 feeds, held back from calibration" in captured.out
    assert "MISSED logits (classifier)" in captured.out


def test_met_target_exits_0_and_json_carries_the_figures(tmp_path: Path, capsys) -> None:
    out = tmp_path / "c8.onnx"
    args = ["cluster", str(LSTM), "-o", str(out), "--bits", "8", "--calib", str(LSTM_CALIB)]
    assert main([*args, "--runs", "0", "--json"]) == 0
    target = json.loads(capsys.readouterr().out)["target"]
    assert target["passed"] and target["target_error"] == 1.0
    (figure,) = target["outputs"]
    assert (figure["name"], figure["role"], figure["decisions"]) == ("logits", "classifier", 64)
    assert figure["value"] <= 1.0


def test_a_looser_target_passes_the_same_model(tmp_path: Path) -> None:
    out = tmp_path / "c2.onnx"
    args = ["cluster", str(LSTM), "-o", str(out), "--bits", "2", "--calib", str(LSTM_CALIB)]
    assert main([*args, "--runs", "0", "--target-error", "100"]) == 0


def _gated(path: Path) -> Path:
    """x[N,16], sr[1] -> If(sr == 16000): x @ W, else a Reshape that fails on any other rate
    (a VAD checks its sample rate this way): generated feeds take the failing branch."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(16, 32)).astype(np.float32), "w")
    then = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)],
    )
    shape = numpy_helper.from_array(np.array([-1, 7, 32], np.int64), "bad_shape")
    otherwise = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["m"]),
            helper.make_node("Reshape", ["m", "bad_shape"], ["e"]),
        ],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)],
        initializer=[shape],
    )
    rate = numpy_helper.from_array(np.array([16000], np.int64), "rate")
    graph = helper.make_graph(
        [
            helper.make_node("Equal", ["sr", "rate"], ["eq"]),
            helper.make_node("Squeeze", ["eq"], ["cond"]),
            helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=otherwise),
        ],
        "gated",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, [1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[w, rate],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_checks_run_on_the_users_data(tmp_path: Path, capsys) -> None:
    """With --calib the clean-up check and the target run on it, never on generated feeds."""
    model = _gated(tmp_path / "gated.onnx")
    rng = np.random.default_rng(1)
    calib = tmp_path / "calib.npz"
    np.savez(
        calib,
        x=rng.normal(size=(32, 3, 16)).astype(np.float32),
        sr=np.full((32, 1), 16000, np.int64),
    )
    out = tmp_path / "c.onnx"
    code = main(
        ["cluster", str(model), "-o", str(out), "--bits", "8", "--calib", str(calib)]
        + ["--runs", "0", "--min-elements", "64"]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "ok y (regression): SQNR" in captured.out
    assert "last 8 of 32 feeds, held back" in captured.out


def test_too_few_held_out_decisions_are_said_to_be_too_few() -> None:
    """One decision worth more than the target: the figure cannot vouch for it."""
    from onnxslim.agreement import Assessment, OutputFigure, Target
    from onnxslim.cli._target import resolution_note

    def assessment(decisions: int) -> Assessment:
        figure = OutputFigure("logits", "ctc", "decoded", 0.0, 1.0, "points", decisions)
        return Assessment(Target(), (figure,), "held-out feeds")

    note = resolution_note(assessment(16))
    assert "16 decisions, one is 6.2 points" in note and "at least 100 decisions" in note
    assert resolution_note(assessment(200)) == ""
    sqnr = OutputFigure("y", "regression", "SQNR", 40.0, 34.0, "dB", 0)
    assert resolution_note(Assessment(Target(), (sqnr,), "feeds")) == ""
