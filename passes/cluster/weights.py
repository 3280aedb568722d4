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

import onnx_ir as ir
from onnxslim.passes.prune.layers import resolve_initializer

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
    """Initializer name -> [(node, channel axis)] over every weight slot that reads it."""
    found: dict[str, list[tuple[ir.Node, int | None]]] = {}
    for node in model.graph:
        if node.domain not in ("", "ai.onnx"):
            continue

        def rank_of(index: int, node: ir.Node = node) -> int | None:
            value = node.inputs[index] if index < len(node.inputs) else None
            tensor = value.const_value if value is not None else None
            if tensor is None and value is not None:
                source = resolve_initializer(value)
                tensor = source.const_value if source is not None else None
            if tensor is not None:
                return len(tensor.shape)
            return len(value.shape) if value is not None and value.shape is not None else None

        for index, axis in _slots(node, rank_of).items():
            if index >= len(node.inputs):
                continue
            source = resolve_initializer(node.inputs[index])
            if source is None or source.name is None:
                continue
            if (
                node.op_type == "MatMul"
                and index == 0
                and resolve_initializer(node.inputs[1]) is not None
            ):
                continue  # both constant: not a layer
            if node.op_type == "Gather" and resolve_initializer(node.inputs[1]) is not None:
                continue  # constant indices: folded anyway
            found.setdefault(source.name, []).append((node, axis))
    return found


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
        labels = [node.name or node.outputs[0].name or node.op_type for node, _ in readers]
        if any(fnmatch.fnmatchcase(n, p) for p in patterns for n in (name, *labels)):
            skipped.append(Skipped(name, "excluded"))
            continue
        axes = {axis for _, axis in readers}
        axis = axes.pop() if len(axes) == 1 else None
        weights.append(Weight(value, axis, labels, sorted({node.op_type for node, _ in readers})))
    return weights, skipped
