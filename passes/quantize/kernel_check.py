"""The kernel check: keep float the convolutions whose int8 kernel is slower than their float one.

Why its own module: whether a layer's int8 kernel beats its float kernel depends on the
CPU and on the layer's shape, not on its size alone (the latency guard's MAC ladder):
on an AVX-512 VNNI Xeon with ONNX Runtime 1.32, a network's stem (a 3x3 conv over 3 input
channels) ran 2-3x slower as QLinearConv than as float NCHWc Conv on three task models,
while wider convs of the same MAC count ran faster in int8. So it is measured here, on
the machine the model is built on: each planned Conv is built alone twice, float and
with Q/DQ around it, both sessions profiled (one thread, ORT_ENABLE_ALL), and only the
two conv kernels' times compared (the layout changes ORT adds around a lone op belong
to the lone model, not to the layer). Layers whose int8 kernel is clearly slower go float;
whether that pays for the whole model (a float layer between int8 ones costs a Q/DQ
pair) is the caller's timed decision.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxslim.errors import OnnxSlimError
from onnxslim.runtime import Session, SessionConfig

from .constants import const_array
from .plan import QuantPlan
from .ranges import TensorStats

# Kernel op names ORT's profiler gives a convolution, float (NCHWc or not) and int8.
CONV_KERNELS = frozenset({"Conv", "FusedConv", "NhwcFusedConv", "QLinearConv", "NhwcQLinearConv"})
_RUNS = 40  # profiled runs per lone model (after _WARMUP), fewer for big layers:
_MIN_RUNS = 8
_BUDGET_S = 0.05
_WARMUP = 3
# A layer goes float only when its int8 kernel is clearly slower: a near-even one would
# still cost a Q/DQ pair between int8 neighbours, and small kernels time to about 1 us.
_SLOWER = 1.1

KernelTimer = Callable[[ir.Model, ir.Model, dict[str, np.ndarray]], tuple[float, float]]
"""Seconds per run of the convolution kernel of a float and an int8 model, on this machine."""


@dataclass(frozen=True)
class KernelTiming:
    """One layer's conv kernel, alone, in float and in int8 (microseconds per run)."""

    layer: str
    float_us: float
    int8_us: float

    @property
    def ratio(self) -> float:
        return self.int8_us / self.float_us if self.float_us > 0 else float("inf")

    def to_dict(self) -> dict[str, object]:
        return {
            "layer": self.layer,
            "float_us": round(self.float_us, 1),
            "int8_us": round(self.int8_us, 1),
            "ratio": round(self.ratio, 2),
        }


def kernel_timings(
    model: ir.Model,
    plan: QuantPlan,
    stats: Mapping[str, TensorStats],
    act_dtype: type[np.integer],
    *,
    timer: KernelTimer | None = None,
) -> list[KernelTiming]:
    """The float and int8 kernel time of every planned compute Conv, each built alone on
    its calibrated input shape (the largest seen). Layers that cannot be built alone
    (no observed shape, weights not constant) are left out."""
    timer = timer or profiled_kernel_seconds
    opset = max(model.opset_imports.get("", 13), 13)
    timings = []
    for node in model.graph.all_nodes():
        node_plan = plan.nodes.get(node.name or "")
        if node_plan is None or node_plan.role != "compute" or node.op_type != "Conv":
            continue
        lone = _lone_conv(node, stats, opset)
        if lone is None:
            continue
        float_model, int8_model, feed = lone[0], _quantized(lone[0], act_dtype), lone[1]
        try:
            float_s, int8_s = timer(float_model, int8_model, feed)
        except (OnnxSlimError, OSError, ValueError):
            continue  # ORT cannot run the lone layer, or no profile to read: no verdict
        timings.append(KernelTiming(node.name or "", float_s * 1e6, int8_s * 1e6))
    return timings


def slow_layers(timings: list[KernelTiming], limit: float = _SLOWER) -> dict[str, str]:
    """Layer name -> why it stays float, for the layers whose int8 kernel is clearly slower."""
    return {
        t.layer: (
            f"its int8 kernel ran {t.ratio:.2f}x its float kernel on this CPU "
            f"({t.int8_us:.0f} vs {t.float_us:.0f} us, measured alone)"
        )
        for t in timings
        if t.ratio > limit
    }


def profiled_kernel_seconds(
    float_model: ir.Model, int8_model: ir.Model, feed: dict[str, np.ndarray]
) -> tuple[float, float]:
    """The conv kernel's time per run in each model, from ORT's profiler (one thread,
    ORT_ENABLE_ALL), the two models' runs alternated so a busy spell of the machine
    falls on both: the runs' other nodes (layout changes, Q/DQ) are not counted."""
    with tempfile.TemporaryDirectory(prefix="onnxslim-kernels-") as folder:
        sessions = [
            Session(m, SessionConfig(threads=1, profile=True, profile_prefix=f"{folder}/{i}"))
            for i, m in enumerate((float_model, int8_model))
        ]
        for session in sessions:
            session.run(feed)  # within the run budget once; the repeats are the same run
        start = time.perf_counter()
        for _ in range(_WARMUP - 1):
            for session in sessions:
                session.run(feed, budgeted=False)
        each = (time.perf_counter() - start) / max(_WARMUP - 1, 1)
        # A big layer needs fewer runs to be timed well: about _BUDGET_S a layer.
        runs = int(min(_RUNS, max(_MIN_RUNS, _BUDGET_S / max(each, 1e-9))))
        for _ in range(runs):
            for session in sessions:
                session.run(feed, budgeted=False)
        seconds = []
        for session in sessions:
            with open(session.end_profiling(), encoding="utf-8") as handle:
                seconds.append(conv_kernel_median(json.load(handle), skip=_WARMUP))
    return seconds[0], seconds[1]


def conv_kernel_median(events: list[dict[str, Any]], skip: int = 0) -> float:
    """Seconds per run (mean of the middle half) of the convolution kernels in an ORT
    profile (the lone model holds one convolution: its kernel events are one per run)."""
    durations = []
    for event in events:
        args = event.get("args")
        if (
            event.get("cat") == "Node"
            and str(event.get("name", "")).endswith("_kernel_time")
            and isinstance(args, dict)
            and args.get("op_name") in CONV_KERNELS
        ):
            durations.append(float(event["dur"]))
    kept = np.sort(durations[skip:] or durations)
    if not len(kept):
        raise OnnxSlimError("no convolution kernel in the profile")
    # The profiler counts whole microseconds: the mean of the middle half resolves the
    # few-microsecond kernels of small layers better than a median would.
    middle = kept[len(kept) // 4 : len(kept) - len(kept) // 4] if len(kept) >= 4 else kept
    return float(np.mean(middle)) * 1e-6


def _lone_conv(
    node: ir.Node, stats: Mapping[str, TensorStats], opset: int
) -> tuple[ir.Model, dict[str, np.ndarray]] | None:
    """The node alone as a float model, with a random feed of its largest calibrated shape."""
    x = node.inputs[0]
    observed = stats.get(x.name or "") if x is not None else None
    if observed is None or not observed.shapes:
        return None
    shape = max(observed.shapes, key=lambda s: int(np.prod(s)))
    weight = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if weight is None or weight.dtype != np.float32:
        return None
    bias = const_array(node.inputs[2]) if len(node.inputs) > 2 else None
    x_in = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(shape))
    w = _constant("w", weight)
    inputs = [x_in, w] + ([_constant("b", bias.astype(np.float32))] if bias is not None else [])
    conv = ir.Node("", "Conv", inputs, attributes=list(node.attributes.values()), name="conv")
    conv.outputs[0].name = "y"
    conv.outputs[0].dtype = ir.DataType.FLOAT
    graph = ir.Graph(
        [x_in],
        [conv.outputs[0]],
        nodes=[conv],
        initializers=[v for v in inputs[1:]],
        opset_imports={"": opset},
        name="lone",
    )
    feed = {"x": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    return ir.Model(graph, ir_version=8), feed


def _constant(name: str, array: np.ndarray) -> ir.Value:
    value = ir.Value(name=name, type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(array.shape))
    value.const_value = ir.tensor(array, name=name)
    return value


def _quantized(lone: ir.Model, act_dtype: type[np.integer]) -> ir.Model:
    """The lone conv with Q/DQ on its input, weight (int8, per output channel), bias
    (int32) and output: the pattern ORT fuses into QLinearConv."""
    graph = lone.graph
    conv = next(iter(graph))
    weight = const_array(conv.inputs[1])
    bias = const_array(conv.inputs[2]) if len(conv.inputs) > 2 else None
    assert weight is not None
    zero = 128 if act_dtype == np.uint8 else 0
    x_scale = np.float32(4.0 / 255)
    w_scale = (np.abs(weight).reshape(len(weight), -1).max(axis=1) / 127).astype(np.float32)
    w_scale[w_scale == 0] = 1.0
    shape = (-1,) + (1,) * (weight.ndim - 1)
    w_q = np.clip(np.round(weight / w_scale.reshape(shape)), -127, 127).astype(np.int8)
    nodes: list[ir.Node] = []
    inits: list[ir.Value] = []

    def const(name: str, array: np.ndarray) -> ir.Value:
        value = ir.Value(
            name=name, type=ir.TensorType(ir.DataType.from_numpy(array.dtype)), shape=None
        )
        value.const_value = ir.tensor(array, name=name)
        inits.append(value)
        return value

    def qdq(value: ir.Value, tag: str) -> ir.Value:
        scale = const(f"{tag}_s", np.array(x_scale))
        zp = const(f"{tag}_z", np.array(zero, dtype=act_dtype))
        q = ir.Node("", "QuantizeLinear", [value, scale, zp], name=f"{tag}_q")
        dq = ir.Node("", "DequantizeLinear", [q.outputs[0], scale, zp], name=f"{tag}_dq")
        q.outputs[0].name, dq.outputs[0].name = f"{tag}_qv", f"{tag}_dqv"
        nodes.extend([q, dq])
        return dq.outputs[0]

    x_in = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=graph.inputs[0].shape)
    w_dq = ir.Node(
        "",
        "DequantizeLinear",
        [const("w_q", w_q), const("w_s", w_scale), const("w_z", np.zeros(len(w_q), np.int8))],
        attributes=[ir.AttrInt64("axis", 0)],
        name="w_dq",
    )
    w_dq.outputs[0].name = "w_dqv"
    nodes.append(w_dq)
    conv_inputs = [qdq(x_in, "x"), w_dq.outputs[0]]
    if bias is not None:
        b_scale = (w_scale * x_scale).astype(np.float32)
        b_q = np.round(bias / b_scale).astype(np.int32)
        b_dq = ir.Node(
            "",
            "DequantizeLinear",
            [const("b_q", b_q), const("b_s", b_scale), const("b_z", np.zeros_like(b_q))],
            attributes=[ir.AttrInt64("axis", 0)],
            name="b_dq",
        )
        b_dq.outputs[0].name = "b_dqv"
        nodes.append(b_dq)
        conv_inputs.append(b_dq.outputs[0])
    new_conv = ir.Node("", "Conv", conv_inputs, attributes=list(conv.attributes.values()), name="c")
    new_conv.outputs[0].name = "c_y"
    nodes.append(new_conv)
    y = qdq(new_conv.outputs[0], "y")
    y.name = "y"
    out = ir.Graph(
        [x_in],
        [y],
        nodes=nodes,
        initializers=inits,
        opset_imports=dict(graph.opset_imports),
        name="lone_int8",
    )
    return ir.Model(out, ir_version=lone.ir_version)
