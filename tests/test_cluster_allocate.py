"""Mixed-precision palettes (passes/cluster/allocate.py) and the grouped lut storage it leans on."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from onnxslim import api
from onnxslim.activations import batch_coupled
from onnxslim.cli import main
from onnxslim.passes.cluster import expansion, storage
from onnxslim.passes.cluster import packing as index_packing
from onnxslim.passes.cluster.allocate import FLOAT, Candidate, Form, candidate_forms, choose
from onnxslim.passes.cluster.palette import cluster_tensor
from onnxslim.runtime import Session, SessionConfig

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"


def metric(name: str, model: ir.Model | Path) -> float:
    """The model's figure on its evaluation set (scripts/model_metrics.py), run one sample at
    a time: digits_gated routes each sample only with batch 1."""
    spec = importlib.util.spec_from_file_location(
        "model_metrics", REPO / "scripts" / "model_metrics.py"
    )
    metrics = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(metrics)  # type: ignore[union-attr]
    arrays = dict(np.load(MODELS / f"{name}.eval.npz"))
    session = Session(model)
    first = session.output_names[0]
    outputs = [
        session.run({k: arrays[k][i] for k in session.input_names})[first]
        for i in range(len(arrays["labels"]))
    ]
    return float(metrics.score(name, np.concatenate(outputs), arrays))


# --- the knapsack ------------------------------------------------------------------------------


def c(bits: int, cost: int, error: float, functions: frozenset[str] = frozenset()) -> Candidate:
    return Candidate(Form(bits), cost, error, functions)


def test_choose_finds_the_least_error_that_fits():
    a = [c(3, 30, 9.0), c(4, 40, 4.0), c(5, 50, 1.0)]
    b = [c(3, 30, 1.0), c(4, 40, 0.9), c(5, 50, 0.8)]
    # 90 bytes: a at 5 bits (1.0) + b at 4 (0.9) = 1.9 beats 4 + 5 (4.8) and 5 + 3 (2.0) ... and
    # the uniform 4 + 4 (4.9).
    assert choose([a, b], 90, {}) == [2, 1]
    assert choose([a, b], 80, {}) == [2, 0]  # 1.0 + 1.0 at exactly the budget
    assert choose([a, b], 59, {}) == [0, 0]  # nothing fits: the cheapest of each


def test_choose_pays_each_function_once_and_keeps_the_fallback_when_nothing_beats_it():
    lut = frozenset({"ExpandPacked4"})
    planes = frozenset({"Unpack_4_1", "Expand"})
    a = [c(4, 40, 4.0, lut), c(5, 50, 1.0, planes)]
    b = [c(4, 40, 4.0, lut), c(5, 50, 1.0, planes)]
    costs = {"ExpandPacked4": 10, "Unpack_4_1": 30, "Expand": 5}
    # 5 bits for both: 100 + 35 of functions = 135; mixing pays both function sets (145).
    assert choose([a, b], 135, costs) == [1, 1]
    assert choose([a, b], 134, costs, fallback=[0, 0]) == [0, 0]
    # The float form needs no function: worth it for a weight whose palette functions cost much.
    f = [c(4, 40, 4.0, planes), Candidate(Form(FLOAT), 60, 0.0)]
    assert choose([f], 70, costs) == [1]


def test_candidate_forms_probe_around_the_bits_and_both_granularities():
    forms = candidate_forms(4, channels=32, fixed_group=None)
    assert {f.bits for f in forms} == {3, 4, 5, 6}
    assert {f.group_size for f in forms} == {0, 1, 4, 16}
    assert {f.group_size for f in candidate_forms(2, channels=None, fixed_group=None)} == {0}
    assert {f.bits for f in candidate_forms(2, channels=8, fixed_group=1)} == {2, 3, 4}
    assert {f.group_size for f in candidate_forms(4, channels=8, fixed_group=1)} == {1}


# --- grouped lut storage -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape,axis,group_size,bits",
    [
        ((32, 16, 3, 3), 0, 1, 4),  # a conv, per channel
        ((16, 1, 3, 3), 0, 4, 4),  # depthwise: 9 values per channel, groups of 4 are byte runs
        ((32, 48), 1, 2, 4),  # MatMul [K, N]: channels are the last axis
        ((64, 32), 0, 4, 2),
        ((40, 8), 0, 1, 1),
    ],
)
def test_grouped_lut_expands_to_the_dense_weight_on_ort_and_folds(shape, axis, group_size, bits):
    rng = np.random.default_rng(3)
    w = rng.normal(size=shape).astype(np.float32)
    p, _ = cluster_tensor(w, bits, axis=axis, group_size=group_size)
    p = p.narrowed(np.float16)
    assert index_packing.format_of(p, 18) == "lut" and index_packing.byte_layout(p) is not None
    weight = ir.Value(
        name="w",
        shape=ir.Shape(shape),
        type=ir.TensorType(ir.DataType.FLOAT),
        const_value=ir.Tensor(w, name="w"),
    )
    node = ir.node("Identity", [weight])
    node.outputs[0].name = "out"
    node.outputs[0].dtype = ir.DataType.FLOAT
    node.outputs[0].shape = ir.Shape(shape)
    graph = ir.Graph(
        [], node.outputs, nodes=[node], initializers=[weight], opset_imports={"": 18}, name="g"
    )
    model = ir.Model(graph, ir_version=10)
    storage.write(graph, model, weight, p)
    assert any(n.op_type == f"ExpandPackedGrouped{bits}" for n in graph)
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    np.testing.assert_array_equal(Session(model).run({})["out"], p.dense())
    np.testing.assert_array_equal(storage.packed_weights(model)["w"], p.dense())
    footprint = storage.footprint(p, "w", 18)
    assert footprint.bytes < index_packing.stored_bytes(p, 18) + 400  # names and framing only
    assert set(footprint.functions) == {"WidenPalette", f"ExpandPackedGrouped{bits}"}


def test_a_byte_straddling_two_groups_falls_back_to_bit_planes():
    w = np.random.default_rng(0).normal(size=(16, 1, 3, 3)).astype(np.float32)
    p, _ = cluster_tensor(w, 4, axis=0, group_size=3)  # 27 values per group: odd
    assert index_packing.byte_layout(p) is None and index_packing.format_of(p, 18) == "planes"


# --- batching ----------------------------------------------------------------------------------


def test_control_flow_on_input_values_is_not_batched():
    assert batch_coupled(ir.load(MODELS / "digits_gated.onnx"))
    assert not batch_coupled(ir.load(MODELS / "digits_cnn.onnx"))


# --- end to end --------------------------------------------------------------------------------


def test_mixed_at_the_uniform_budget_is_no_bigger_and_no_worse_on_the_outputs():
    path = MODELS / "digits_detector.onnx"
    calib = str(MODELS / "digits_detector.calib.npz")
    uniform = api.cluster(path, bits=4, calib=calib, verify=False)
    mixed = api.cluster(path, bits=4, calib=calib, verify=False, allocation="mixed")
    a = mixed.allocation
    assert a["budget_bytes"] == a["uniform_bytes"] and a["chosen_bytes"] <= a["budget_bytes"]
    assert a["chosen_error"] <= a["uniform_error"]
    # the weights below 256 elements uniform leaves alone are candidates too (or kept float)
    assert mixed.size_after.raw <= uniform.size_after.raw + 600


def test_size_target_meets_the_issue_goal_on_the_detector(tmp_path, capsys):
    """4 bits within 1 point of float, file at most 1/6 of the float file: uniform 4-bit
    per-tensor palettes lose 1.3 points here; the allocation gives the first conv and the
    heads what they need and finds the bytes elsewhere."""
    path = MODELS / "digits_detector.onnx"
    out = tmp_path / "det.onnx"
    code = main(
        [
            "cluster",
            str(path),
            "-o",
            str(out),
            "--bits",
            "4",
            "--calib",
            str(MODELS / "digits_detector.calib.npz"),
            "--max-size",
            "1/6",
            "--runs",
            "0",
            # The label-free target measures the scores part of the detections apart from
            # the boxes (agreement.py): 1.6-1.9 points of the float model's score decisions
            # change here while the labelled metric drops 0.93: this test is about the size
            # goal and the labelled drop, so the target is set at 2 points.
            "--target-error",
            "2",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "mixed allocation" in text
    assert out.stat().st_size <= path.stat().st_size / 6
    drop = 100 * (metric("digits_detector", path) - metric("digits_detector", out))
    assert drop <= 1.0, drop
    ops = {n.op_type for n in onnx.load(out).graph.node}
    assert "ExpandPacked4" in ops or "ExpandPackedGrouped4" in ops
    # ORT folds every palette at load: the optimized graph runs the float model's ops
    optimized = tmp_path / "opt.onnx"
    Session(out, SessionConfig(optimized_model_path=str(optimized)))
    assert not any(n.domain == expansion.DOMAIN for n in onnx.load(optimized).graph.node)


@pytest.mark.parametrize(
    "arguments,message",
    [
        (["--max-size", "1/0"], "--max-size"),
        (["--max-size", "2"], None),  # 2 bytes: nothing fits, the report warns; exit 0
        (["--mixed"], "needs calibration data"),
        (["--budget", "0.1"], "budget"),
    ],
)
def test_mixed_usage_errors_exit_2_and_write_nothing(tmp_path, capsys, arguments, message):
    out = tmp_path / "x.onnx"
    calib = (
        [] if arguments == ["--mixed"] else ["--calib", str(MODELS / "digits_detector.calib.npz")]
    )
    code = main(
        [
            "cluster",
            str(MODELS / "digits_detector.onnx"),
            "-o",
            str(out),
            "--runs",
            "0",
            "--no-verify",
            *calib,
            *arguments,
        ]
    )
    captured = capsys.readouterr()
    if message is None:
        assert code == 0 and out.is_file() and "over the size target" in captured.err
        return
    assert code == 2 and not out.exists()
    assert message in captured.err and "Traceback" not in captured.err
