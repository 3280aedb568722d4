"""Which tensors clustering touches, and the channel axis their palette groups run along.

A weight is a float initializer of the main graph read, directly or through
Identity nodes, in a weight slot of a weighted op (table below). Its channel
axis is the output-channel axis of that op, the same axis the int8 quantizer
takes per-channel scales along, so per-channel palettes line up with int8
scales. A tensor read by several nodes is clustered once (sharing is kept);
when its readers disagree on the axis it gets one palette.

Everything at least `min_elements` large that is not clustered is reported with
its reason: already-int8 weights (a quantized model), tensors that are not layer
weights (biases, norms, position tables added with Add), excluded names.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16)
QUANTIZED_TYPES = (
    ir.DataType.INT8,
    ir.DataType.UINT8,
    ir.DataType.INT4,
    ir.DataType.UINT4,
    ir.DataType.INT2,
    ir.DataType.UINT2,
    ir.DataType.FLOAT8E4M3FN,
    ir.DataType.FLOAT8E5M2,
)


def _slots(node: ir.Node, rank_of) -> dict[int, int | None]:  # type: ignore[no-untyped-def]
    """{input index: output-channel axis} of the weight slots of `node`."""
    op = node.op_type
    if op == "Conv":
        return {1: 0}
    if op == "ConvTranspose":
        return {1: 1}
    if op == "Gemm":
        return {0: None, 1: 0 if node.attributes.get_int("transB", 0) else 1}
    if op == "MatMul":
        rank = rank_of(1)
        first = rank_of(0)
        return {1: (rank - 1) if rank else None, 0: (first - 2) if first and first >= 2 else None}
    if op == "Gather":
        return {0: node.attributes.get_int("axis", 0) % max(rank_of(0) or 1, 1)}
    if op in ("LSTM", "GRU", "RNN"):
        return {1: 1, 2: 1}
    return {}


@dataclass
class Weight:
    """One tensor to cluster."""

    value: ir.Value  # the initializer
    axis: int | None  # channel axis for palette groups (None: readers disagree or none)
    readers: list[str] = field(default_factory=list)  # node names
    ops: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.value.name or "?"


@dataclass(frozen=True)
class Skipped:
    name: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "reason": self.reason}


def weight_uses(model: ir.Model) -> dict[str, list[tuple[ir.Node, int | None]]]:
    """Initializer name -> [(node, channel axis)] over every weight slot that reads it.

    Slots in If/Loop/Scan bodies count too (they read main-graph weights from the
    outer scope). A weight reached through data-movement ops (Reshape, Transpose,
    Slice, ...: exporters slice LSTM weights this way) counts with no channel axis,
    since the ops may move it; clustering values survives any of them.
    """
    found: dict[str, list[tuple[ir.Node, int | None]]] = {}
    for node in model.graph.all_nodes():
        if node.domain not in ("", "ai.onnx"):
            continue

        def rank_of(index: int, node: ir.Node = node) -> int | None:
            value = node.inputs[index] if index < len(node.inputs) else None
            if value is None:
                return None
            if value.shape is not None:
                return len(value.shape)
            source, _ = _weight_source(value)
            tensor = source.const_value if source is not None else None
            return len(tensor.shape) if tensor is not None else None

        for index, axis in _slots(node, rank_of).items():
            if index >= len(node.inputs):
                continue
            source, moved = _weight_source(node.inputs[index])
            if source is None or model.graph.initializers.get(source.name or "") is not source:
                continue  # not constant, or a subgraph's own initializer
            if (
                node.op_type == "MatMul"
                and index == 0
                and _weight_source(node.inputs[1])[0] is not None
            ):
                continue  # both constant: not a layer
            if node.op_type == "Gather" and _weight_source(node.inputs[1])[0] is not None:
                continue  # constant indices: folded anyway
            found.setdefault(source.name or "", []).append((node, None if moved else axis))
    return found


# Ops that only move or select elements of their first input (the rest are shapes/indices).
_MOVEMENT = frozenset(
    {"Identity", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Flatten"}
)


def _weight_source(value: ir.Value | None) -> tuple[ir.Value | None, bool]:
    """(the one initializer behind `value`, whether data-movement ops lie between), or
    (None, False) when the value is not built from exactly one constant weight."""
    sources, moved = _weight_sources(value, 12)
    unique = {id(v): v for v in sources or []}
    if len(unique) != 1:
        return None, False
    return next(iter(unique.values())), moved


def _weight_sources(value: ir.Value | None, budget: int) -> tuple[list[ir.Value] | None, bool]:
    """Initializers `value` is moved, sliced or concatenated from (None: other inputs feed it)."""
    if value is None or budget <= 0:
        return None, False
    if value.is_initializer() and value.const_value is not None:
        return [value], False
    producer = value.producer()
    if producer is None or producer.domain not in ("", "ai.onnx"):
        return None, False
    if producer.op_type == "Identity":
        return _weight_sources(producer.inputs[0], budget - 1)
    if producer.op_type in _MOVEMENT:
        if any(v is not None and not _is_constant(v) for v in producer.inputs[1:]):
            return None, False
        sources, _ = _weight_sources(producer.inputs[0], budget - 1)
        return sources, True
    if producer.op_type == "Concat":  # exporters reorder LSTM gates by slicing and concatenating
        found: list[ir.Value] = []
        for part in producer.inputs:
            sources, _ = _weight_sources(part, budget - 1)
            if sources is None:
                return None, False
            found.extend(sources)
        return found, True
    return None, False


def _is_constant(value: ir.Value) -> bool:
    if value.const_value is not None:
        return True
    producer = value.producer()
    return producer is not None and producer.op_type == "Constant"


def channel_axes(model: ir.Model) -> dict[str, int | None]:
    """Initializer name -> the channel axis its weight slots agree on (None when they do not).

    Integer initializers read by DequantizeLinear get the DQ's axis when its scale
    is per channel (the int8 weights of a quantized model).
    """
    axes: dict[str, int | None] = {}
    for name, uses in weight_uses(model).items():
        found = {axis for _, axis in uses}
        axes[name] = found.pop() if len(found) == 1 else None
    for node in model.graph:
        if node.op_type != "DequantizeLinear" or len(node.inputs) < 2:
            continue
        source, scale = node.inputs[0], node.inputs[1]
        if (
            source is None
            or not source.is_initializer()
            or scale is None
            or scale.const_value is None
        ):
            continue
        if scale.const_value.size > 1 and source.const_value is not None:
            rank = len(source.const_value.shape)
            axes.setdefault(source.name or "", node.attributes.get_int("axis", 1) % max(rank, 1))
    return axes


def find_weights(
    model: ir.Model, *, min_elements: int = 1024, exclude: Iterable[str] = ()
) -> tuple[list[Weight], list[Skipped]]:
    """The weights to cluster (in graph order) and every sizeable tensor left alone, with why."""
    patterns = tuple(exclude)
    graph = model.graph
    protected = {v.name for v in graph.inputs} | {v.name for v in graph.outputs}
    uses = weight_uses(model)
    weights: list[Weight] = []
    skipped: list[Skipped] = []
    for name, value in graph.initializers.items():
        tensor = value.const_value
        if tensor is None or tensor.size < min_elements or not value.uses():
            continue
        readers = uses.get(name, [])
        if tensor.dtype in QUANTIZED_TYPES:
            skipped.append(
                Skipped(name, f"already {tensor.dtype.name}: quantized weights are not clustered")
            )
            continue
        if tensor.dtype not in FLOAT_TYPES:
            skipped.append(Skipped(name, f"{tensor.dtype.name} tensor, not a float weight"))
            continue
        if not readers:
            ops = sorted({user.op_type for user, _ in value.uses()})
            skipped.append(Skipped(name, f"not a layer weight (read by {', '.join(ops)})"))
            continue
        if name in protected:
            skipped.append(Skipped(name, "also a graph input or output"))
            continue
        if not np.isfinite(tensor.numpy()).all():  # a mask of -inf: no palette holds it
            skipped.append(Skipped(name, "holds NaN or infinity"))
            continue
        labels = [node.name or node.outputs[0].name or node.op_type for node, _ in readers]
        if any(fnmatch.fnmatchcase(n, p) for p in patterns for n in (name, *labels)):
            skipped.append(Skipped(name, "excluded"))
            continue
        axes = {axis for _, axis in readers}
        axis = axes.pop() if len(axes) == 1 else None
        weights.append(Weight(value, axis, labels, sorted({node.op_type for node, _ in readers})))
    return weights, skipped
