"""Fast bias correction: cancel the mean output error that weight rounding adds to each layer.

Why: rounding a layer's weights to int8 shifts the expected value of each output
channel (E[y_q - y] = (W_q - W) E[x] is not zero when E[x] is not, which after a
ReLU it never is). The shift adds up layer after layer and moves a classifier's
logits; it is cheap to measure on calibration data and exact to cancel through
the bias (Nagel et al. 2019; NNCF's FastBiasCorrection).

How, in one pass over the calibration feeds ("measured well" in one shot): a probe
model is the float model plus, beside each quantized layer L, a copy of L's
quantized form (the Q/DQ of its input, its dequantized weights and bias) that reads
the float model's own input of L. One run gives, for every layer at once, the
quantized layer's output and the float layer's output on the SAME input, so the
measured error is L's own error, not the error inherited from the layers before it
(which their own corrections remove). Per output channel c,

    b_c  <-  b_c - mean(y_q[c] - y[c])

applied to a float bias, to an int32 bias behind DequantizeLinear (in its own units,
rounded), or to the constant of the Add that follows a MatMul. Conv and Gemm with
quantized input and weights but no bias get an int32 bias (scale s_x * s_w),
which ORT's int8 kernels take as they are.

Matching relies on the QDQ convention that a quantized model keeps the float
model's tensor names for each layer's float input and output; layers that do not
match are reported as skipped.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxslim.feeds import Feed
from onnxslim.runtime import Session, SessionConfig

_LAYERS = {"Conv", "Gemm", "MatMul"}
_PREFIX = "__onnxslim_bc_"


@dataclass(frozen=True)
class LayerCorrection:
    layer: str
    channels: int
    mean_abs_shift: float
    max_abs_shift: float
    bias_added: bool

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class BiasCorrectionReport:
    corrected: list[LayerCorrection] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    samples: int = 0
    final_layers: list[str] = field(default_factory=list)  # also corrected end to end


@dataclass
class _Target:
    node: ir.Node  # the layer in the quantized model
    input_name: str  # float tensor read by its input Q/DQ chain
    output_name: str  # its float output name, shared with the float model
    axis: int  # channel axis of the output
    bias: _BiasSlot
    probe_output: str = ""
    float_input: str = ""  # the same tensor's name in the float model


@dataclass
class _BiasSlot:
    """Where the correction goes: a float constant, an integer constant behind DQ, or nowhere."""

    kind: str  # "float", "quantized", "add"
    value: ir.Value | None = None  # the constant holding the bias
    scale: np.ndarray | None = None  # for "quantized": the DQ scale
    zero_point: np.ndarray | None = None
    owner: ir.Node | None = None


def correct_biases(
    quantized: ir.Model,
    float_model: ir.Model,
    feeds: Iterable[Feed],
    *,
    layers: set[str] | None = None,
    samples: int = 32,
    final_layers: bool = True,
) -> BiasCorrectionReport:
    """Measure every quantized layer's own mean error and fold it into its bias (in place).

    With `final_layers`, layers that produce graph outputs then get a second, end-to-end
    correction (one more run of both models over the same feeds).
    """
    report = BiasCorrectionReport()
    float_names = {v.name for n in float_model.graph for v in n.outputs} | {
        v.name for v in float_model.graph.inputs
    }
    float_layers = {n.name: n for n in float_model.graph if n.name}
    targets = []
    for node in quantized.graph:
        if node.op_type not in _LAYERS or node.domain not in ("", "ai.onnx"):
            continue
        if layers is not None and node.name not in layers:
            continue
        found = _target(node, float_names, float_layers.get(node.name or ""))
        if isinstance(found, str):
            if found:
                report.skipped.append((node.name or node.op_type, found))
        else:
            targets.append(found)
    if not targets:
        return report
    feeds_list = [dict(f) for f in islice(iter(feeds), samples)]
    probe = _probe(float_model, targets)
    session = Session(probe, _session_config())
    sums: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    names = [name for t in targets for name in (t.output_name, t.probe_output)]
    for feed in feeds_list:
        out = session.run(feed, outputs=names)
        report.samples += 1
        for k, t in enumerate(targets):
            diff = np.asarray(out[t.probe_output], np.float64) - np.asarray(
                out[t.output_name], np.float64
            )
            axis = t.axis % diff.ndim
            per_channel = np.moveaxis(diff, axis, 0).reshape(diff.shape[axis], -1)
            sums[k] = sums.get(k, 0.0) + per_channel.sum(axis=1)
            counts[k] = counts.get(k, 0) + per_channel.shape[1]
    for k, t in enumerate(targets):
        if k not in sums:
            continue
        shift = sums[k] / max(counts[k], 1)
        added = t.bias.kind == "new"
        applied = _apply(t, shift, quantized)
        if isinstance(applied, str):
            report.skipped.append((t.node.name or t.node.op_type, applied))
            continue
        if added:  # later steps must see the bias just added, not add another
            t.bias = _bias_slot(t.node)  # type: ignore[assignment]
        report.corrected.append(
            LayerCorrection(
                t.node.name or t.node.op_type,
                int(shift.size),
                float(np.mean(np.abs(shift))),
                float(np.max(np.abs(shift))),
                added,
            )
        )
    if final_layers:
        _correct_final_layers(
            quantized,
            float_model,
            [t for t in targets if not isinstance(t.bias, str)],
            feeds_list,
            samples,
            report,
        )
    return report


def _correct_final_layers(
    quantized: ir.Model,
    float_model: ir.Model,
    targets: list[_Target],
    feeds: list[Feed],
    samples: int,
    report: BiasCorrectionReport,
) -> None:
    """Layers whose output is a graph output (through Q/DQ at most): cancel the mean error
    the whole model leaves there, which includes what earlier layers' rounding passed on.

    Exact for the mean of that output, because nothing nonlinear follows the bias.
    """
    outputs = {v.name: v for v in quantized.graph.outputs}
    finals: list[tuple[_Target, str]] = []
    for t in targets:
        value = t.node.outputs[0]
        for _ in range(3):
            if value.name in outputs and value.is_graph_output():
                finals.append((t, value.name or ""))
                break
            users = list(value.uses())
            if len(users) != 1 or users[0][0].op_type not in ("QuantizeLinear", "DequantizeLinear"):
                break
            value = users[0][0].outputs[0]
    float_outputs = {v.name for v in float_model.graph.outputs}
    finals = [(t, name) for t, name in finals if name in float_outputs]
    if not finals or not feeds:
        return
    names = [name for _, name in finals]
    q_session, f_session = (
        Session(quantized, _session_config()),
        Session(float_model, _session_config()),
    )
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    axis_of = {name: t.axis for t, name in finals}
    for feed in feeds[:samples]:
        q_out, f_out = q_session.run(feed, outputs=names), f_session.run(feed, outputs=names)
        for name in names:
            diff = np.asarray(q_out[name], np.float64) - np.asarray(f_out[name], np.float64)
            axis = axis_of[name] % diff.ndim
            per_channel = np.moveaxis(diff, axis, 0).reshape(diff.shape[axis], -1)
            sums[name] = sums.get(name, 0.0) + per_channel.sum(axis=1)
            counts[name] = counts.get(name, 0) + per_channel.shape[1]
    for t, name in finals:
        shift = sums[name] / max(counts[name], 1)
        if _apply(t, shift, quantized) is None:
            report.final_layers.append(t.node.name or t.node.op_type)


def _session_config() -> SessionConfig:
    return SessionConfig(threads=1, optimization="all")


# --- matching -----------------------------------------------------------------------------------


def _producer(value: ir.Value | None, op: str) -> ir.Node | None:
    node = value.producer() if value is not None else None
    return node if node is not None and node.op_type == op else None


def _const(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def _dq_parts(dq: ir.Node) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
    """(integer values, scale, zero point) of a DequantizeLinear over a constant."""
    q = _const(dq.inputs[0])
    scale = _const(dq.inputs[1])
    zp = _const(dq.inputs[2]) if len(dq.inputs) > 2 else None
    if q is None or scale is None or q.dtype.kind not in "iu":
        return None
    return q, scale, zp


def _target(
    node: ir.Node, float_names: set[str | None], float_node: ir.Node | None
) -> _Target | str:
    """Match `node` with its float counterpart: the float node of the same name and type
    if there is one (its output is the layer's pre-activation output even where the
    quantizer folded a following Relu into the output quantization), else by tensor names."""
    x = node.inputs[0]
    if float_node is not None and float_node.op_type != node.op_type:
        float_node = None
    dq_w = _producer(node.inputs[1] if len(node.inputs) > 1 else None, "DequantizeLinear")
    if dq_w is None or _dq_parts(dq_w) is None:
        return ""  # a float layer: nothing to correct
    if node.op_type == "Gemm" and (node.attributes.get_int("transA", 0)):
        return "Gemm with transA"
    dq_x = _producer(x, "DequantizeLinear")
    q_x = _producer(dq_x.inputs[0], "QuantizeLinear") if dq_x is not None else None
    source = q_x.inputs[0] if q_x is not None else (x if dq_x is None else None)
    if source is None:
        return "input is dequantized from a constant"
    float_input = source.name
    if (
        float_input not in float_names
        and float_node is not None
        and float_node.inputs[0] is not None
    ):
        float_input = float_node.inputs[0].name
    if float_input not in float_names:
        return "input tensor has no counterpart in the float model"
    output = float_node.outputs[0].name if float_node is not None else node.outputs[0].name
    if output not in float_names:
        return "output tensor has no counterpart in the float model"
    axis = 1 if node.op_type == "Conv" else -1
    bias = _bias_slot(node)
    if isinstance(bias, str):
        return bias
    return _Target(node, source.name or "", output or "", axis, bias, float_input=float_input or "")


def _bias_slot(node: ir.Node) -> _BiasSlot | str:
    if node.op_type in ("Conv", "Gemm"):
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        if bias is None:
            return _BiasSlot("new", owner=node)
        return _slot_of(bias, node)
    # MatMul: the bias is the constant of the Add that consumes its output (through Q/DQ).
    value = node.outputs[0]
    for _ in range(3):
        users = list(value.uses())
        if len(users) != 1:
            return "MatMul output has several consumers; no single bias to correct"
        user = users[0][0]
        if user.op_type in ("QuantizeLinear", "DequantizeLinear"):
            value = user.outputs[0]
            continue
        if user.op_type == "Add":
            other = next((v for v in user.inputs if v is not value), None)
            if other is None:
                break
            return _slot_of(other, user, kind_float="add")
        break
    return "MatMul without a following bias Add"


def _slot_of(bias: ir.Value, owner: ir.Node, kind_float: str = "float") -> _BiasSlot | str:
    if bias.const_value is not None:
        if len(list(bias.uses())) != 1:
            return "bias constant is shared"
        return _BiasSlot(kind_float, bias, owner=owner)
    dq = _producer(bias, "DequantizeLinear")
    parts = _dq_parts(dq) if dq is not None else None
    if parts is None:
        return "bias is neither a constant nor a dequantized constant"
    if len(list(dq.inputs[0].uses())) != 1:  # type: ignore[union-attr]
        return "bias constant is shared"
    _, scale, zp = parts
    return _BiasSlot("quantized", dq.inputs[0], scale, zp, owner=dq)


# --- the probe ------------------------------------------------------------------------------


def _probe(float_model: ir.Model, targets: list[_Target]) -> ir.Model:
    """The float model plus each target's quantized copy reading the float input."""
    probe = float_model.clone()
    graph = probe.graph
    values = {v.name: v for n in graph for v in n.outputs}
    values.update({v.name: v for v in graph.inputs})
    existing_outputs = {v.name for v in graph.outputs}
    constants: dict[int, ir.Value] = {}  # one copy per constant, however many layers share it
    for k, t in enumerate(targets):
        mapping: dict[int, ir.Value] = {}
        copy_of_layer = _copy_closure(
            t.node, t.input_name, values[t.float_input], graph, mapping, f"{_PREFIX}{k}_", constants
        )
        t.probe_output = copy_of_layer.outputs[0].name or ""
        graph.outputs.append(copy_of_layer.outputs[0])
        if t.output_name not in existing_outputs:
            graph.outputs.append(values[t.output_name])
            existing_outputs.add(t.output_name)
    return probe


def _copy_closure(
    node: ir.Node,
    source: str,
    float_value: ir.Value,
    graph: ir.Graph,
    mapping: dict[int, ir.Value],
    prefix: str,
    constants: dict[int, ir.Value],
) -> ir.Node:
    """Copy `node` and its Q/DQ/constant inputs into `graph`; `source` becomes `float_value`."""
    inputs: list[ir.Value | None] = []
    for value in node.inputs:
        if value is None:
            inputs.append(None)
        elif id(value) in mapping:
            inputs.append(mapping[id(value)])
        elif value.name == source:
            inputs.append(float_value)
        elif value.const_value is not None:
            if id(value) not in constants:
                copy = ir.Value(
                    name=f"{prefix}{value.name}",
                    const_value=value.const_value,
                    type=value.type,
                    shape=value.shape,
                )
                graph.register_initializer(copy)
                constants[id(value)] = copy
            inputs.append(constants[id(value)])
        else:
            producer = value.producer()
            if producer is None or producer.op_type not in ("QuantizeLinear", "DequantizeLinear"):
                raise ValueError(
                    f"cannot copy {node.name}: input {value.name!r} is not a Q/DQ chain"
                )
            copied = _copy_closure(producer, source, float_value, graph, mapping, prefix, constants)
            mapping[id(value)] = copied.outputs[value.index() or 0]
            inputs.append(mapping[id(value)])
    attributes = [ir.Attr(a.name, a.type, a.value) for a in node.attributes.values()]
    clone = ir.Node(
        node.domain,
        node.op_type,
        inputs,
        attributes=attributes,
        num_outputs=len(node.outputs),
        name=f"{prefix}{node.name}",
        version=node.version,
    )
    for out, original in zip(clone.outputs, node.outputs, strict=True):
        out.name = f"{prefix}{original.name}"
    graph.append(clone)
    return clone


# --- applying -------------------------------------------------------------------------------


def _apply(t: _Target, shift: np.ndarray, model: ir.Model) -> str | None:
    slot = t.bias
    if slot.kind in ("float", "add"):
        array = _const(slot.value)
        assert array is not None and slot.value is not None
        if array.size not in (1, shift.size):
            return f"bias shape {array.shape} is not per output channel"
        new = (
            np.broadcast_to(array.reshape(-1), shift.shape) - shift
            if array.size == 1
            else array.reshape(-1) - shift
        )
        if slot.kind == "add":
            new = new.reshape(array.shape if array.size == shift.size else (shift.size,))
        slot.value.const_value = ir.tensor(
            new.astype(array.dtype).reshape(
                array.shape if array.size == shift.size else shift.shape
            ),
            name=slot.value.name,
        )
        return None
    if slot.kind == "quantized":
        q = _const(slot.value)
        assert q is not None and slot.value is not None and slot.scale is not None
        if q.size != shift.size:
            return f"quantized bias shape {q.shape} is not per output channel"
        step = np.broadcast_to(slot.scale.reshape(-1).astype(np.float64), shift.shape)
        info = np.iinfo(q.dtype)
        new = np.clip(np.rint(q.reshape(-1).astype(np.float64) - shift / step), info.min, info.max)
        slot.value.const_value = ir.tensor(
            new.astype(q.dtype).reshape(q.shape), name=slot.value.name
        )
        return None
    return _add_bias(t, shift, model)


def _add_bias(t: _Target, shift: np.ndarray, model: ir.Model) -> str | None:
    """A Conv/Gemm without bias gets -shift as an int32 bias behind DequantizeLinear."""
    node = t.node
    dq_x = _producer(node.inputs[0], "DequantizeLinear")
    dq_w = _producer(node.inputs[1], "DequantizeLinear")
    sx = _const(dq_x.inputs[1]) if dq_x is not None else None
    sw = _const(dq_w.inputs[1]) if dq_w is not None else None
    if sx is None or sw is None or sx.size != 1 or sw.size not in (1, shift.size):
        return "no bias, and input/weight scales do not give an int32 bias scale"
    scale = np.broadcast_to(sw.reshape(-1), shift.shape).astype(np.float64) * float(sx.reshape(()))
    q = np.clip(np.rint(-shift / scale), -(2**31), 2**31 - 1).astype(np.int32)
    name = f"{node.name or 'layer'}_bias_correction"
    q_value = ir.Value(name=f"{name}_quantized", const_value=ir.tensor(q, name=f"{name}_quantized"))
    s_value = ir.Value(
        name=f"{name}_scale", const_value=ir.tensor(scale.astype(np.float32), name=f"{name}_scale")
    )
    model.graph.register_initializer(q_value)
    model.graph.register_initializer(s_value)
    dq = ir.Node(
        "",
        "DequantizeLinear",
        [q_value, s_value],
        attributes=[ir.AttrInt64("axis", 0)],
        name=f"{name}_dq",
    )
    dq.outputs[0].name = f"{name}_dequantized"
    model.graph.insert_before(node, dq)
    if len(node.inputs) < 3:
        node.resize_inputs(3)
    node.replace_input_with(2, dq.outputs[0])
    return None


# --- the hook the static pass calls ---------------------------------------------------------------

REPORT_KEY = "onnxslim.bias_correction"
DEFAULT_SAMPLES = 32


def static_hook(
    quantized: ir.Model, prepared: ir.Model, feeds: Any, options: Any, report: Any
) -> None:
    """Bias-correct the static pass's final model, unless `options.bias_correction` is off.

    `prepared` is the float model the plan was made on (same node names as `quantized`).
    The per-layer figures go to `quantized.meta[REPORT_KEY]` and the time to
    `report.seconds["bias_correction"]`.
    """
    if not getattr(options, "bias_correction", True) or feeds is None:
        return
    start = time.perf_counter()
    limit = getattr(options, "max_samples", None) or DEFAULT_SAMPLES
    result = correct_biases(quantized, prepared, feeds, samples=min(limit, DEFAULT_SAMPLES))
    quantized.meta[REPORT_KEY] = result
    seconds = getattr(report, "seconds", None)
    if isinstance(seconds, dict):
        seconds["bias_correction"] = time.perf_counter() - start
