"""validate() and run() on ONNX Runtime: parity figures, latency, memory, feeds that do not fit.

Every expected figure is recomputed here with plain onnxruntime sessions on the
same feeds, so the report is checked against an independent run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import DEVMODELS_CACHE, devmodel_feeds, devmodel_params
from onnx import TensorProto, helper, numpy_helper

from onnxslim import inspect, io, validate
from onnxslim import run_model as run  # onnxslim.run is the recipe runner
from onnxslim.errors import DataError, UsageError
from onnxslim.feeds import generate_feeds, input_specs

FAST = {"runs": 2, "warmup": 1, "measure_memory": False}


def make_if_model(path: Path, *, then_scale: float = 1.0) -> Path:
    """Two inputs, an If whose branches hold the matmuls, three outputs of three kinds:
    logits [N,10] (classifier-shaped), score [N] (float, 1-D) and cls [N] (int64)."""
    rng = np.random.default_rng(3)
    w_then = (rng.standard_normal((10, 10)) * then_scale).astype(np.float32)
    w_else = rng.standard_normal((10, 10)).astype(np.float32)
    then_graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["w_then"], value=numpy_helper.from_array(w_then)),
            helper.make_node("Add", ["x", "y"], ["s"]),
            helper.make_node("MatMul", ["s", "w_then"], ["then_out"]),
        ],
        "then",
        [],
        [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, ["N", 10])],
    )
    else_graph = helper.make_graph(
        [
            helper.make_node("Sub", ["x", "y"], ["d"]),
            helper.make_node("MatMul", ["d", "w_else"], ["else_out"]),
        ],
        "else",
        [],
        [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, ["N", 10])],
    )
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["cond"]),
        helper.make_node(
            "If", ["cond"], ["logits"], then_branch=then_graph, else_branch=else_graph
        ),
        helper.make_node("ReduceMax", ["logits"], ["score"], axes=[1], keepdims=0),
        helper.make_node("ArgMax", ["logits"], ["cls"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "branchy",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 10]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10]),
        ],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10]),
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("cls", TensorProto.INT64, ["N"]),
        ],
        initializer=[
            numpy_helper.from_array(w_else, "w_else"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def scaled_copy(source: Path, target: Path, initializer: str, factor: float) -> Path:
    model = onnx.load(str(source))
    for tensor in model.graph.initializer:
        if tensor.name == initializer:
            tensor.CopyFrom(
                numpy_helper.from_array(
                    numpy_helper.to_array(tensor) * np.float32(factor), tensor.name
                )
            )
    onnx.save(model, str(target))
    return target


def ort_outputs(path: Path, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return [dict(zip(names, session.run(None, feed), strict=True)) for feed in feeds]


def generated(path: Path, count: int = 8) -> list[dict[str, np.ndarray]]:
    return generate_feeds(input_specs(io.load(path)), count, seed=0)


def test_model_against_itself_passes_exactly(mlp_path: Path) -> None:
    report = validate(mlp_path, mlp_path, runs=3, warmup=1, measure_memory=False)
    assert report.passed, report.summary()
    assert report.generated_inputs and report.feeds == "generated inputs (8 feeds)"
    assert report.feed_count == 8 and report.provider == "CPUExecutionProvider"
    [output] = report.outputs
    assert (
        output.name == "y"
        and output.max_abs == 0.0
        and output.cosine == pytest.approx(1.0, abs=1e-12)
    )
    assert output.mismatched == 0 and output.elements == 8 * 4
    for label in ("reference", "candidate"):
        latency = report.latency[label]
        assert latency.runs == 3 and latency.warmup == 1 and latency.threads == 1
        assert 0 < latency.min_ms <= latency.median_ms <= latency.p90_ms
    assert report.speedup is not None and report.speedup > 0
    assert report.memory == {}


def test_perturbed_weights_fail_with_figures_from_an_independent_run(
    mlp_path: Path, tmp_path: Path
) -> None:
    candidate = scaled_copy(mlp_path, tmp_path / "scaled.onnx", "w2", 1.01)
    report = validate(mlp_path, candidate, runs=0, measure_memory=False)
    assert not report.passed and "parity check failed" in report.summary()
    feeds = generated(mlp_path)
    ref = np.stack([o["y"] for o in ort_outputs(mlp_path, feeds)]).astype(np.float64)
    cand = np.stack([o["y"] for o in ort_outputs(candidate, feeds)]).astype(np.float64)
    [output] = report.outputs
    assert output.max_abs == pytest.approx(np.abs(ref - cand).max(), rel=1e-9)
    assert output.max_rel == pytest.approx(np.abs(ref - cand).max() / np.abs(ref).max(), rel=1e-9)
    cosine = (ref * cand).sum() / np.sqrt((ref * ref).sum() * (cand * cand).sum())
    assert output.cosine == pytest.approx(cosine, abs=1e-12)
    snr = 10 * np.log10((ref**2).sum() / ((ref - cand) ** 2).sum())
    assert output.snr_db == pytest.approx(snr, rel=1e-9)  # a 1% scale is an SNR of 40 dB
    assert output.mismatched == int(
        np.count_nonzero(np.abs(ref - cand) > 1e-5 + 1e-5 * np.abs(ref))
    )
    assert report.latency == {}
    data = json.loads(json.dumps(report.to_dict()))
    assert data["passed"] is False and data["outputs"][0]["passed"] is False
    loose = validate(mlp_path, candidate, runs=0, measure_memory=False, atol=1.0, rtol=0.05)
    assert loose.passed


def test_if_subgraph_with_two_inputs_and_three_outputs(tmp_path: Path) -> None:
    reference = make_if_model(tmp_path / "if.onnx")
    report = validate(reference, reference, **FAST)
    assert report.passed
    figures = {o.name: o for o in report.outputs}
    assert list(figures) == ["logits", "score", "cls"]
    assert figures["logits"].top1_agreement == 1.0
    assert figures["score"].top1_agreement is None, "a 1-D output is not classifier-shaped"
    assert figures["cls"].top1_agreement is None, "an integer output is compared exactly"
    # Change only the weight inside the then-branch: only feeds that take that branch differ.
    feeds = generated(reference)
    taken = [bool(f["x"].sum() > 0) for f in feeds]
    assert any(taken) and not all(taken), "the generated feeds must exercise both branches"
    candidate = make_if_model(tmp_path / "if_scaled.onnx", then_scale=1.1)
    failed = validate(reference, candidate, **FAST)
    assert not failed.passed
    figures = {o.name: o for o in failed.outputs}
    assert not figures["logits"].passed and figures["logits"].max_abs > 0
    ref, cand = ort_outputs(reference, feeds), ort_outputs(candidate, feeds)
    pairs = list(zip(ref, cand, strict=True))
    expected = max(float(np.abs(r["logits"] - c["logits"]).max()) for r, c in pairs)
    assert figures["logits"].max_abs == pytest.approx(expected, rel=1e-6)
    agree = np.mean([np.array_equal(r["cls"], c["cls"]) for r, c in pairs])
    assert figures["logits"].top1_agreement == pytest.approx(agree)


def test_peak_memory_is_measured_for_paths_and_in_memory_models(mlp_path: Path) -> None:
    candidate = io.load(mlp_path)
    report = validate(mlp_path, candidate, runs=0, measure_memory=True)
    assert report.passed
    for label in ("reference", "candidate"):
        memory = report.memory[label]
        assert memory is not None, report.notes
        assert memory.peak_bytes >= memory.baseline_bytes > 10_000_000  # python + onnxruntime
        assert memory.method in {"VmHWM", "ru_maxrss"}
    assert report.candidate.startswith("<in-memory model")
    assert report.to_dict()["memory"]["reference"]["model_bytes"] >= 0


def _renamed_input(source: Path, target: Path) -> Path:
    model = onnx.load(str(source))
    model.graph.input[0].name = "features"
    for node in model.graph.node:
        node.input[:] = ["features" if name == "x" else name for name in node.input]
    onnx.save(model, str(target))
    return target


def _renamed_output(source: Path, target: Path) -> Path:
    model = onnx.load(str(source))
    model.graph.output[0].name = "z"
    for node in model.graph.node:
        node.output[:] = ["z" if name == "y" else name for name in node.output]
    onnx.save(model, str(target))
    return target


def test_interface_mismatch_is_a_usage_error(mlp_path: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="different inputs"):
        validate(mlp_path, _renamed_input(mlp_path, tmp_path / "in.onnx"), **FAST)
    with pytest.raises(UsageError, match="lacks output"):
        validate(mlp_path, _renamed_output(mlp_path, tmp_path / "out.onnx"), **FAST)


def test_data_file_feeds_and_extra_arrays(mlp_path: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 2, 8)).astype(np.float32)
    data = tmp_path / "data.npz"
    np.savez(data, x=x, labels=np.arange(3))
    report = validate(mlp_path, mlp_path, feeds=data, **FAST)
    assert report.passed and not report.generated_inputs
    assert report.feed_count == 3 and str(data) in report.feeds
    assert report.outputs[0].elements == 3 * 2 * 4
    capped = validate(mlp_path, mlp_path, feeds=data, max_samples=2, **FAST)
    assert capped.feed_count == 2


@pytest.mark.parametrize(
    "arrays, message",
    [
        (
            {"input": np.zeros((2, 1, 8), np.float32)},
            "'x'.*'input'",
        ),  # names what is missing and what came
        ({"x": np.zeros((2, 1, 8), np.float64)}, "float64"),
        ({"x": np.zeros((2, 1, 7), np.float32)}, r"\[1, 7\]"),
        ({"x": np.zeros((2, 8), np.float32)}, "rank 1"),
    ],
)
def test_data_that_does_not_fit_is_a_data_error(
    mlp_path: Path, tmp_path: Path, arrays, message
) -> None:
    data = tmp_path / "bad.npz"
    np.savez(data, **arrays)
    with pytest.raises(DataError, match=message):
        validate(mlp_path, mlp_path, feeds=data, **FAST)
    with pytest.raises(DataError, match=message):
        run(mlp_path, data)


def test_unreadable_data_is_a_data_error(mlp_path: Path, tmp_path: Path) -> None:
    data = tmp_path / "garbage.npz"
    data.write_bytes(b"not a zip archive at all")
    with pytest.raises(DataError):
        validate(mlp_path, mlp_path, feeds=data, **FAST)


def test_run_matches_onnxruntime(mlp_path: Path) -> None:
    feeds = generated(mlp_path, 3)
    expected = ort_outputs(mlp_path, feeds)
    results = run(mlp_path, feeds)
    assert len(results) == 3
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_array_equal(got["y"], want["y"])
    [single] = run(io.load(mlp_path), feeds[0])
    np.testing.assert_array_equal(single["y"], expected[0]["y"])
    assert len(run(mlp_path, None)) == 1


def test_bad_arguments_are_usage_errors(mlp_path: Path) -> None:
    with pytest.raises(UsageError):
        validate(mlp_path, mlp_path, threads=0)
    with pytest.raises(UsageError):
        validate(mlp_path, mlp_path, runs=-1)


@pytest.mark.devmodels
@pytest.mark.parametrize("entry", devmodel_params())
def test_devmodel_inspect_and_validate_against_itself(entry: dict) -> None:
    path = DEVMODELS_CACHE / f"{entry['id']}.onnx"
    summary = inspect(path)
    # The manifest's "nodes" is len(graph.node) of the main graph; no corpus model has
    # subgraphs, so the histogram over every graph must add up to the same number.
    assert summary.subgraphs == 0 and summary.functions == 0
    assert summary.main_graph_nodes == entry["nodes"]
    assert sum(summary.op_histogram.values()) == summary.nodes == entry["nodes"]
    assert summary.file_bytes == entry["size"]
    assert [i.name for i in summary.inputs] == [i["name"] for i in entry["inputs"]]
    assert [o.name for o in summary.outputs] == [o["name"] for o in entry["outputs"]]
    assert summary.parameter_count >= entry["initializer_elements"]
    assert summary.quantized == entry["id"].endswith("_int8")
    assert summary.macs is not None and summary.macs > 0
    model = io.load(path)  # loaded once, run by two sessions
    report = validate(
        model, model, feeds=devmodel_feeds(entry["id"], 2), runs=1, warmup=0, measure_memory=False
    )
    assert report.passed, report.summary()
    assert all(o.max_abs == 0 and o.mismatched == 0 for o in report.outputs)
    assert [o.name for o in report.outputs] == [o["name"] for o in entry["outputs"]]


def make_loop_model(path: Path, *, scale: float = 1.0) -> Path:
    """x [N,4] and an int64 trip count: Loop body does acc = tanh(acc @ W) + x, W outer-scope."""
    w = (np.random.default_rng(4).standard_normal((4, 4)) * scale).astype(np.float32)
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("MatMul", ["acc_in", "w"], ["mm"]),
            helper.make_node("Tanh", ["mm"], ["t"]),
            helper.make_node("Add", ["t", "x"], ["acc_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, ["N", 4]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, ["N", 4]),
        ],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["steps", "go", "x"], ["acc"], body=body)],
        "looped",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("steps", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("acc", TensorProto.FLOAT, ["N", 4])],
        initializer=[
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(np.array(True), "go"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def test_loop_subgraph_with_trip_count_input(tmp_path: Path) -> None:
    reference = make_loop_model(tmp_path / "loop.onnx")
    assert validate(reference, reference, **FAST).passed
    feeds = generated(reference)
    assert any(int(f["steps"]) > 0 for f in feeds), "some generated feeds must run the body"
    candidate = make_loop_model(tmp_path / "loop_scaled.onnx", scale=1.1)
    report = validate(reference, candidate, **FAST)
    ref, cand = ort_outputs(reference, feeds), ort_outputs(candidate, feeds)
    expected = max(float(np.abs(r["acc"] - c["acc"]).max()) for r, c in zip(ref, cand, strict=True))
    assert not report.passed and report.outputs[0].max_abs == pytest.approx(expected, rel=1e-6)
    summary = inspect(reference)
    assert summary.subgraphs == 1 and summary.nodes == 5 and summary.op_histogram["Loop"] == 1
