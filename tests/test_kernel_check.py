"""The kernel check (passes/quantize/kernel_check.py): each planned Conv alone, float and int8,
profiled on ORT for real; the layers whose int8 kernel is slower go float only when the whole
model then runs faster."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper
from quantize_fixtures import cnn, feeds_for, to_ir

from onnxslim.passes.quantize import static
from onnxslim.passes.quantize.collect import collect_stats
from onnxslim.passes.quantize.kernel_check import (
    KernelTiming,
    _lone_conv,
    _quantized,
    conv_kernel_median,
    kernel_timings,
    slow_layers,
)
from onnxslim.passes.quantize.policy import PolicyConfig, make_plan
from onnxslim.passes.quantize.prepare import prepare
from onnxslim.passes.quantize.static import QuantizeStatic, quantize_static
from onnxslim.runtime import Session, SessionConfig


def _event(op: str, dur: int) -> dict:
    return {"cat": "Node", "name": "n_kernel_time", "dur": dur, "args": {"op_name": op}}


def test_profile_reading_takes_conv_kernels_only_after_the_warmup():
    events = [_event("Conv", 500)] + [_event("Conv", d) for d in (10, 11, 12, 13, 90)]
    events += [_event("Transpose", 1000), {"cat": "Session", "name": "model_run", "dur": 5}]
    # warm-up dropped, then the mean of the middle half of 10..13, 90 (sorted): 11, 12, 13
    assert abs(conv_kernel_median(events, skip=1) - 12e-6) < 1e-12
    assert abs(conv_kernel_median([_event("QLinearConv", 7)] * 4) - 7e-6) < 1e-12


def test_slow_layers_names_the_measured_ratio():
    timings = [KernelTiming("stem", 20.0, 60.0), KernelTiming("wide", 40.0, 20.0)]
    slow = slow_layers(timings)
    assert list(slow) == ["stem"]
    assert "3.00x its float kernel" in slow["stem"] and "60 vs 20 us" in slow["stem"]
    assert slow_layers([KernelTiming("even", 10.0, 10.5)]) == {}  # within 10 %: no verdict


def _stats(model, feeds):
    """The plan and the calibrated conv inputs of `model` (prepared in place: types known)."""
    prepared, _ = prepare(model)
    model.graph = prepared.graph
    plan = make_plan(model, PolicyConfig())
    inputs = [n.inputs[0].name for n in model.graph if n.op_type == "Conv"]
    return plan, collect_stats(model, feeds, inputs)[0]


def test_lone_layers_run_on_the_int8_kernel_they_are_timed_as():
    model = cnn()
    plan, stats = _stats(model, feeds_for(model, 2))
    conv = next(n for n in model.graph if n.name == "conv2")
    lone = _lone_conv(conv, stats, 13)
    assert lone is not None
    float_model, feed = lone
    int8_model = _quantized(float_model, np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "opt.onnx"
        Session(int8_model, SessionConfig(optimized_model_path=str(path)))
        ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "QLinearConv" in ops and "Conv" not in ops
    assert feed["x"].shape == (2, 16, 8, 8)  # the calibrated input shape of conv2
    shapes = [Session(m).run(feed)["y"].shape for m in (float_model, int8_model)]
    assert shapes[0] == shapes[1] == (2, 32, 8, 8)


def test_every_planned_conv_is_timed_both_ways_on_this_cpu():
    model = cnn()
    plan, stats = _stats(model, feeds_for(model, 2))
    timings = kernel_timings(model, plan, stats, np.uint8)
    assert sorted(t.layer for t in timings) == ["conv1", "conv2"]
    assert all(t.float_us > 0 and t.int8_us > 0 for t in timings)


def _stem_model():
    """A 3-channel stem conv then a 32-channel conv, input [N, 3, 32, 32]."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((32, 3, 3, 3)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((32, 32, 3, 3)) * 0.1).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1] * 4, name="stem"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1] * 4, name="body"),
        helper.make_node("Relu", ["c2"], ["y"], name="relu2"),
    ]
    graph = helper.make_graph(
        nodes,
        "stem",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32, 32, 32])],
        initializer=[
            helper.make_tensor("w1", TensorProto.FLOAT, w1.shape, w1.ravel()),
            helper.make_tensor("w2", TensorProto.FLOAT, w2.shape, w2.ravel()),
        ],
    )
    return to_ir(graph)


def _patched(monkeypatch, whole_model: dict[str, float]):
    """The stem's int8 kernel measured 3x slower; the whole-model ratios given; the guard
    accepts whatever it is handed (0.5)."""
    import onnxslim.passes.quantize.latency_guard as latency_guard

    def timings(model, plan, stats, act_dtype):
        assert act_dtype == np.uint8
        return [KernelTiming("stem", 10.0, 30.0), KernelTiming("body", 40.0, 20.0)]

    monkeypatch.setattr(static, "kernel_timings", timings)
    monkeypatch.setattr(static, "latency_ratios", lambda *a, **k: dict(whole_model))
    monkeypatch.setattr(latency_guard, "latency_ratio", lambda *a, **k: 0.5)


def test_a_slow_kernel_goes_float_when_the_whole_model_gains(monkeypatch):
    _patched(monkeypatch, {"all": 0.9, "slow float": 0.7})
    model = _stem_model()
    _, report = quantize_static(
        model, feeds_for(model, 4), QuantizeStatic(check_fusion=False, kernel_check=True)
    )
    assert "stem" not in report.quantized_nodes and "body" in report.quantized_nodes
    assert report.skipped["stem"].startswith("its int8 kernel ran 3.00x")
    assert [k["layer"] for k in report.kernel_checks] == ["stem", "body"]
    assert report.latency_checks[0]["kernel_check"] == ["stem"]


def test_a_slow_kernel_stays_int8_when_its_float_boundary_costs_more(monkeypatch):
    _patched(monkeypatch, {"all": 0.8, "slow float": 0.85})
    model = _stem_model()
    options = QuantizeStatic(check_fusion=False, kernel_check=True)
    _, report = quantize_static(model, feeds_for(model, 4), options)
    assert {"stem", "body"} <= set(report.quantized_nodes)
    assert report.latency_checks[0]["ratio_slow_float"] == 0.85


def test_no_kernel_check_by_default(monkeypatch):
    _patched(monkeypatch, {"all": 0.9, "slow float": 0.7})
    model = _stem_model()
    _, report = quantize_static(model, feeds_for(model, 4), QuantizeStatic(check_fusion=False))
    assert not report.kernel_checks and "stem" in report.quantized_nodes
