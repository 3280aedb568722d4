"""Huge graphs (fuzz cases bombs/chain-30k, chain-300k, ...): no command repeats work per
model that it can do once (a session per model per workflow, one prepare per static
quantization), so a 30,000-node chain stays within the fuzz runner's 30 CPU seconds."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from onnxslim import api, runtime
from onnxslim.graphs import node_count, subgraphs
from onnxslim.passes.quantize import static as static_module
from onnxslim.passes.quantize.prepare import prepare
from onnxslim.pipeline import Pipeline, run_pipeline
from onnxslim.registry import DEFAULT_OPTIMIZE
from onnxslim.runtime import Session, SessionConfig, shared_sessions
from onnxslim.workflows import measure
from onnxslim.workflows import quantize as quantize_workflow


def relu_chain(n: int) -> ir.Model:
    """x -> Relu -> ... -> Relu (n nodes) -> y, as the fuzz corpus builds it."""
    nodes = [
        helper.make_node("Relu", [f"t{i}" if i else "x"], [f"t{i + 1}" if i < n - 1 else "y"])
        for i in range(n)
    ]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return ir.serde.deserialize_model(proto)


def test_shared_sessions_open_one_session_per_model_and_config() -> None:
    model, other = relu_chain(3), relu_chain(3)
    with shared_sessions():
        first, again = Session(model), Session(model)
        assert again.ort_session is first.ort_session
        assert Session(other).ort_session is not first.ort_session
        basic = Session(model, SessionConfig(optimization="basic"))
        assert basic.ort_session is not first.ort_session
        feed = {"x": np.array([[-1, 2, -3, 4]], np.float32)}
        np.testing.assert_array_equal(again.run(feed)["y"], [[0, 2, 0, 4]])
    assert Session(model).ort_session is not first.ort_session  # outside the block


def test_static_quantization_prepares_once_and_opens_few_sessions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = {"prepare": 0, "sessions": 0}
    real_prepare = quantize_workflow.prepare
    real_create = Session._create

    def counting_prepare(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["prepare"] += 1
        return real_prepare(*args, **kwargs)

    def counting_create(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls["sessions"] += 1
        return real_create(self, *args, **kwargs)

    monkeypatch.setattr(quantize_workflow, "prepare", counting_prepare)
    monkeypatch.setattr(static_module, "prepare", counting_prepare)
    monkeypatch.setattr(Session, "_create", counting_create)
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((1, 4)).astype(np.float32)} for _ in range(4)]
    result = api.quantize(relu_chain(5), calib=feeds)
    assert result.kept_float  # nothing to quantize in a Relu chain: the cleaned float model
    assert calls["prepare"] == 1
    assert result.report.samples == 0  # no layer could be int8: nothing calibrated
    # ORT's pre-optimization, the Q/DQ kernel check, and one session per model for the
    # parity check, the target check and latency (was 11 on bombs/chain-30k, then 5 with
    # the calibration probe).
    assert calls["sessions"] <= 4, calls


def test_unguarded_lossless_clean_up_clones_the_model_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """export's clean-up (no guard) cloned the model once per pass: 14 clones of a
    30,000-node graph, 52 CPU s of export on bombs/chain-30k (now 20)."""
    clones = 0
    real_clone = ir.Model.clone

    def counting_clone(self):  # type: ignore[no-untyped-def]
        nonlocal clones
        clones += 1
        return real_clone(self)

    monkeypatch.setattr(ir.Model, "clone", counting_clone)
    pipeline = Pipeline.from_names(DEFAULT_OPTIMIZE)
    result = run_pipeline(relu_chain(50), pipeline, rollback_failures=True)
    assert clones == 1
    assert len(result.records) == len(pipeline.passes)
    assert node_count(result.model) == 50


def test_subgraphs_in_onnx_ir_order() -> None:
    """graphs.subgraphs is ir.Graph.subgraphs() (nested Ifs, pre-order), without its
    per-node generators."""
    branch = None
    for level in range(3):
        nodes = [helper.make_node("Identity", ["x"], ["out"])]
        if branch is not None:
            nodes = [helper.make_node("If", ["c"], ["out"], then_branch=branch, else_branch=branch)]
        branch = helper.make_graph(
            nodes, f"g{level}", [], [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])]
        )
    assert branch is not None
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)],
        "main",
        [
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = ir.serde.deserialize_model(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    )
    expected = list(model.graph.subgraphs())
    assert len(expected) == 2 + 4 + 8  # then and else of each If, deserialized apart
    assert subgraphs(model.graph) == expected


def test_heavy_graph_session_runs_unoptimized_keeps_initializers_and_cleans_up(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Past runtime.HEAVY_INITIALIZERS ORT drops each initializer with a linear search
    (bombs/inits-100k: 44 CPU s to open, 2.2 s unoptimized with its initializers kept)."""
    monkeypatch.setattr(runtime, "HEAVY_INITIALIZERS", 8)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    count = 10
    inits = [
        helper.make_tensor(f"w{i}", TensorProto.FLOAT, [4], [float(i)] * 4) for i in range(count)
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Sum", [f"w{i}" for i in range(count)], ["s"]),
            helper.make_node("Add", ["x", "s"], ["y"]),
        ],
        "inits",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    model = ir.serde.deserialize_model(proto)
    assert runtime.heavy_graph(model) == "10 initializers"
    session = Session(model)
    options = session.ort_session.get_session_options()
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert options.optimized_model_filepath  # ORT keeps its initializers...
    assert not list(tmp_path.iterdir())  # ...and the scratch file it wrote is gone
    x = np.arange(4, dtype=np.float32)
    np.testing.assert_array_equal(session.run({"x": x})["y"], x + sum(range(count)))
    monkeypatch.setattr(runtime, "HEAVY_INITIALIZERS", 11)
    assert runtime.heavy_graph(model) is None
    options = Session(model).ort_session.get_session_options()
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_quantize_prepare_skips_ort_pre_optimization_on_a_heavy_graph(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """bombs/inits-100k: ORT's basic optimizations fold the Sum of 100,000 initializers,
    dropping them one by one (quantize hit the 30 CPU s cap there)."""
    model = relu_chain(12)
    _, report = prepare(model)
    assert any("ORT basic" in step for step in report.steps)
    monkeypatch.setattr(runtime, "HEAVY_NODES", 10)
    _, report = prepare(model)
    assert not any("ORT basic" in step for step in report.steps)
    assert report.warnings == ["ORT pre-optimization skipped: 12 nodes, past its linear range"]


def test_session_start_is_not_timed_on_a_heavy_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    """prune and cluster time ORT_ENABLE_ALL session starts for their report: 44 CPU s a
    session on bombs/inits-100k, for a figure."""
    model = relu_chain(12)
    feeds = [{"x": np.ones((1, 4), np.float32)}]
    timed = measure.compare(model, model.clone(), "pruned", feeds=feeds, eval_data=None, runs=0)
    assert set(timed.session_ms) == {"original", "pruned"}
    monkeypatch.setattr(runtime, "HEAVY_NODES", 10)
    heavy = measure.compare(model, model.clone(), "pruned", feeds=feeds, eval_data=None, runs=0)
    assert heavy.session_ms == {}
    assert heavy.validation is not None


def test_heavy_graph_sessions_are_shared_by_content_whatever_the_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A heavy graph's session is unoptimized whatever its config says, so the feed probe
    (basic, 10 s), a guard (basic) and the checks (all) opened the same session four times
    (cluster on bombs/inits-100k, 3.4-3.9 CPU s each): now once, keyed by content."""
    created = 0
    real = ort.InferenceSession

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal created
        created += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(runtime.ort, "InferenceSession", counting)
    monkeypatch.setattr(runtime, "HEAVY_NODES", 10)
    monkeypatch.setattr(runtime, "_HEAVY_SESSIONS", type(runtime._HEAVY_SESSIONS)())
    model = relu_chain(12)
    probe = Session(model, SessionConfig(optimization="basic", budget=runtime.Budget(seconds=10)))
    check = Session(model)
    copy = Session(model.clone())
    assert created == 1
    assert probe.ort_session is check.ort_session is copy.ort_session
    assert probe._budget.seconds == 10 and check._budget.seconds != 10  # each keeps its own
    feed = {"x": np.array([[-1, 2, -3, 4]], np.float32)}
    np.testing.assert_array_equal(copy.run(feed)["y"], [[0, 2, 0, 4]])
    Session(model, SessionConfig(threads=2))  # another config ORT itself uses: its own
    assert created == 2
    changed = model.clone()
    changed.graph.node(0).op_type = "Sigmoid"  # same object shape, other content
    Session(changed)
    assert created == 3
    monkeypatch.setattr(runtime, "HEAVY_NODES", 100)  # not heavy: configs are kept apart
    Session(model, SessionConfig(optimization="basic"))
    Session(model)
    assert created == 5
