"""How channels flow through the ops between layers: pass through, merge, move, or freeze.

Why its own module: everything that is not a channel-producing layer (activations,
element-wise ops, normalisations, pools, reductions, shape ops, Concat, Split, ...)
only carries a layout on, ties spaces together (rules 1-5 in `groups`) or freezes
them with the reason; the op sets say which op takes which rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from onnxslim.passes.prune.channel_graph import (
    ChannelGraph,
    Edit,
    Layout,
    channel_axis_ok,
    const_of,
    dims_of,
    extra_outputs_used,
    freeze_all,
    rank_of,
    set_layout,
)

UNARY = {
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "Clip",
    "HardSigmoid",
    "HardSwish",
    "Elu",
    "Selu",
    "Celu",
    "Softplus",
    "Softsign",
    "Gelu",
    "Erf",
    "Identity",
    "Dropout",
    "Cast",
    "Neg",
    "Abs",
    "Exp",
    "Log",
    "Sqrt",
    "Reciprocal",
    "Floor",
    "Ceil",
    "Round",
    "Sin",
    "Cos",
    "Mish",
    "ThresholdedRelu",
    "Sign",
    "Not",
    "IsNaN",
    "IsInf",
    "Swish",
    "CastLike",
}
ELEMENTWISE = {
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Max",
    "Min",
    "Sum",
    "Mean",
    "PRelu",
    "Where",
    "Equal",
    "Greater",
    "Less",
    "GreaterOrEqual",
    "LessOrEqual",
    "And",
    "Or",
    "Xor",
    "Mod",
    "BitShift",
}
POOLS = {"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}
REDUCE = {
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceSumSquare",
}


def _passthrough(cg: ChannelGraph, node: ir.Node, ins: list[Layout | None]) -> None:
    if ins and ins[0] is not None:
        if any(layout is not None for layout in ins[1:]):
            _elementwise(cg, node, ins)
            return
        if extra_outputs_used(node):
            cg.freeze(ins[0], f"{node.op_type} second output is used")
            return
        set_layout(cg, node, ins[0])
    elif any(layout is not None for layout in ins):
        freeze_all(cg, ins, f"{node.op_type} reads channels as a parameter")


def _elementwise(cg: ChannelGraph, node: ir.Node, ins: list[Layout | None]) -> None:
    carrying = [layout for layout in ins if layout is not None]
    if not carrying:
        return
    ref = carrying[0]
    for other in carrying[1:]:
        if other.sizes() != ref.sizes() or other.axis != ref.axis or other.factor != ref.factor:
            freeze_all(cg, carrying, f"{node.op_type} combines differently laid out channels")
            return
    for other in carrying[1:]:
        for (a, _), (b, _) in zip(ref.segments, other.segments, strict=False):
            cg.union(a, b)
    for index, (value, layout) in enumerate(zip(node.inputs, ins, strict=False)):
        if layout is not None or value is None:
            continue
        dims = dims_of(value)
        constant = const_of(value)
        if dims is None:
            cg.freeze(ref, f"{node.op_type} operand {value.name!r} has unknown shape")
            return
        position = len(dims) + ref.axis
        size = dims[position] if position >= 0 else 1
        if size == 1:
            continue
        if constant is not None and size == ref.width and ref.factor == 1:
            cg.edits.append(Edit("param", node, ref, index=index, axis=position))
            continue
        cg.freeze(ref, f"{node.op_type} operand {value.name!r} is per-channel but cannot be sliced")
        return
    set_layout(cg, node, ref, range(len(node.outputs)))


def _norm(cg: ChannelGraph, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0] if ins else None
    if x is None:
        freeze_all(cg, ins, f"{node.op_type} parameters carry channels")
        return
    if (
        not channel_axis_ok(x, node.inputs[0])
        or extra_outputs_used(node)
        or any(layout is not None for layout in ins[1:])
    ):
        cg.freeze(x, f"{node.op_type} on channels it cannot follow")
        return
    for index in range(1, len(node.inputs)):
        if node.inputs[index] is None:
            continue
        if const_of(node.inputs[index]) is None:
            cg.freeze(x, f"{node.op_type} parameter is not constant")
            return
        cg.edits.append(Edit("param", node, x, index=index, axis=0))
    set_layout(cg, node, x)


def _layer_norm(cg: ChannelGraph, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0] if ins else None
    rank = rank_of(node.inputs[0])
    if x is None:
        freeze_all(cg, ins, "LayerNormalization parameters carry channels")
        return
    axis = node.attributes.get_int("axis", -1)
    if rank is None:
        cg.freeze(x, "LayerNormalization input of unknown rank")
        return
    start = axis % rank
    if rank + x.axis >= start:
        cg.freeze(x, "LayerNormalization normalises over the channels")
        return
    if extra_outputs_used(node):
        cg.freeze(x, "LayerNormalization statistics outputs are used")
        return
    set_layout(cg, node, x)


def _softmax(cg: ChannelGraph, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0] if ins else None
    rank = rank_of(node.inputs[0])
    if x is None:
        return
    if rank is None:
        cg.freeze(x, f"{node.op_type} input of unknown rank")
        return
    graph_opset = node.graph.opset_imports.get("", 13) if node.graph is not None else 13
    opset = node.version or graph_opset
    axis = node.attributes.get_int("axis", -1 if opset >= 13 else 1) % rank
    position = rank + x.axis
    if position == axis or (opset < 13 and position >= axis):
        cg.freeze(x, f"{node.op_type} over the channels")
        return
    set_layout(cg, node, x)


def _pool(cg: ChannelGraph, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0] if ins else None
    if x is None:
        return
    if not channel_axis_ok(x, node.inputs[0]) or extra_outputs_used(node):
        cg.freeze(x, f"{node.op_type} on channels it cannot follow")
        return
    set_layout(cg, node, x)


def _axes(node: ir.Node, index: int) -> list[int] | None:
    """Axes from the `axes` attribute or input `index` (by opset); None if unknown or dynamic."""
    attr = node.attributes.get_ints("axes", None)
    if attr is not None:
        return list(attr)
    if len(node.inputs) > index and node.inputs[index] is not None:
        value = const_of(node.inputs[index])
        return None if value is None else [int(a) for a in value.reshape(-1)]
    return []


def _reduce(cg: ChannelGraph, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0] if ins else None
    rank = rank_of(node.inputs[0])
    if x is None:
        return
    axes = _axes(node, 1)
    if axes is None or rank is None or x.factor != 1:
        cg.freeze(x, f"{node.op_type} with unknown axes or rank")
        return
    axes = [a % rank for a in axes]
    position = rank + x.axis
    if not axes and not node.attributes.get_int("noop_with_empty_axes", 0):
        cg.freeze(x, f"{node.op_type} reduces every axis")
        return
    if position in axes:
        cg.freeze(x, f"{node.op_type} reduces over the channels")
        return
    if node.attributes.get_int("keepdims", 1):
        set_layout(cg, node, x)
        return
    new_rank = rank - len(axes)
    new_position = position - sum(1 for a in axes if a < position)
    set_layout(cg, node, Layout(x.segments, new_position - new_rank, x.factor))


def _transpose(cg: ChannelGraph, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0] if ins else None
    rank = rank_of(node.inputs[0])
    if x is None:
        return
    perm = node.attributes.get_ints("perm", None)
    if rank is None or x.factor != 1:
        cg.freeze(x, "Transpose of unknown rank")
        return
    perm = list(perm) if perm is not None else list(reversed(range(rank)))
    position = perm.index(rank + x.axis)
    set_layout(cg, node, Layout(x.segments, position - rank))


def _flatten(cg: ChannelGraph, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0] if ins else None
    if x is None:
        return
    dims = dims_of(node.inputs[0])
    axis = node.attributes.get_int("axis", 1)
    if dims is None:
        cg.freeze(x, "Flatten of unknown shape")
        return
    rank = len(dims)
    axis %= rank if axis < 0 else rank + 1
    position = rank + x.axis
    tail = dims[position + 1 :]
    if position != axis or any(d is None for d in tail):
        cg.freeze(x, "Flatten mixes the channels with other axes")
        return
    set_layout(cg, node, Layout(x.segments, -1, x.factor * math.prod(tail)))  # type: ignore[arg-type]


def _reshape(cg: ChannelGraph, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0] if ins else None
    if x is None:
        return
    if len(ins) > 1 and ins[1] is not None:
        cg.freeze(ins[1], "Reshape shape carries channels")
    dims = dims_of(node.inputs[0])
    target_array = const_of(node.inputs[1]) if len(node.inputs) > 1 else None
    if dims is None or target_array is None:
        cg.freeze(x, "Reshape with unknown input shape or dynamic target")
        return
    target = [int(t) for t in target_array.reshape(-1)]
    rank = len(dims)
    position = rank + x.axis
    tail = dims[position + 1 :]
    copies_zero = (
        node.attributes.get_int("allowzero", 0) == 0
    )  # a 0 in the target copies the input dim
    flatten_like = (
        position == 1
        and len(target) == 2
        and all(d is not None for d in tail)
        and (
            target[0] == -1
            or (target[0] == 0 and copies_zero)
            or (dims[0] is not None and target[0] == dims[0])
        )
        and (target[1] == -1 or target[1] == x.width * math.prod(tail))  # type: ignore[arg-type]
        and not (target[0] == -1 and target[1] == -1)
    )
    if not flatten_like:
        cg.freeze(x, f"Reshape to {target} splits or moves the channels")
        return
    layout = Layout(x.segments, -1, x.factor * math.prod(tail))  # type: ignore[arg-type]
    if target[1] != -1:
        cg.edits.append(Edit("reshape", node, layout))
    set_layout(cg, node, layout)


def _squeeze(cg: ChannelGraph, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0] if ins else None
    rank = rank_of(node.inputs[0])
    if x is None:
        return
    axes = _axes(node, 1)
    if axes is None or rank is None or x.factor != 1:
        cg.freeze(x, f"{node.op_type} with unknown axes or rank")
        return
    position = rank + x.axis
    if node.op_type == "Squeeze":
        if not axes:
            dims = dims_of(node.inputs[0])
            if dims is None or any(d is None for d in dims):
                cg.freeze(x, "Squeeze without axes on an unknown shape")
                return
            axes = [i for i, d in enumerate(dims) if d == 1]
        axes = [a % rank for a in axes]
        if position in axes:
            cg.freeze(x, "Squeeze removes the channel axis")
            return
        new_rank = rank - len(axes)
        new_position = position - sum(1 for a in axes if a < position)
    else:
        new_rank = rank + len(axes)
        axes = sorted(a % new_rank for a in axes)
        new_position = position
        for a in axes:
            if a <= new_position:
                new_position += 1
    set_layout(cg, node, Layout(x.segments, new_position - new_rank, x.factor))


def _concat(cg: ChannelGraph, node: ir.Node, ins: list[Layout | None]) -> None:
    carrying = [layout for layout in ins if layout is not None]
    if not carrying:
        return
    rank = next((rank_of(v) for v in node.inputs if rank_of(v) is not None), None)
    if rank is None:
        freeze_all(cg, carrying, "Concat of unknown rank")
        return
    axis = node.attributes.get_int("axis", 0) % rank
    ref = carrying[0]
    if axis != rank + ref.axis:  # not along the channels: behaves element-wise
        _elementwise_strict(cg, node, ins)
        return
    segments: list[tuple[int, int]] = []
    for value, layout in zip(node.inputs, ins, strict=False):
        if layout is not None:
            if layout.axis != ref.axis or layout.factor != 1:
                freeze_all(cg, carrying, "Concat of differently laid out channels")
                return
            segments.extend(layout.segments)
            continue
        dims = dims_of(value)
        size = dims[axis] if dims is not None and len(dims) > axis else None
        if size is None:
            freeze_all(cg, carrying, "Concat operand of unknown channel count")
            return
        segments.append((cg.new_space(size, None, "fixed Concat operand"), size))
    set_layout(cg, node, Layout(tuple(segments), ref.axis))


def _elementwise_strict(cg: ChannelGraph, node: ir.Node, ins: list[Layout | None]) -> None:
    if any(layout is None for layout in ins):
        freeze_all(cg, ins, f"{node.op_type} joins channel-carrying and fixed tensors")
        return
    _elementwise(cg, node, ins)


def _split_like(cg: ChannelGraph, node: ir.Node, ins: list[Layout | None]) -> None:
    """Split / Slice / Gather / Pad: fine on other axes, frozen on the channel axis."""
    x = ins[0] if ins else None
    if x is None:
        freeze_all(cg, ins, f"{node.op_type} indexes with channels")
        return
    rank = rank_of(node.inputs[0])
    if rank is None or x.factor != 1 or any(layout is not None for layout in ins[1:]):
        cg.freeze(x, f"{node.op_type} of unknown rank")
        return
    position = rank + x.axis
    op = node.op_type
    touched: bool
    if op == "Split":
        touched = node.attributes.get_int("axis", 0) % rank == position
    elif op == "Gather":
        touched = node.attributes.get_int("axis", 0) % rank == position
    elif op == "Slice":
        axes = _axes(node, 3)
        if axes is None:
            touched = True
        else:
            touched = (position in [a % rank for a in axes]) if axes else True
    else:  # Pad
        pads = node.attributes.get_ints("pads", None)
        if pads is None and len(node.inputs) > 1:
            value = const_of(node.inputs[1])
            pads = None if value is None else [int(p) for p in value.reshape(-1)]
        axes = _axes(node, 3) if len(node.inputs) > 3 else []
        if pads is None or axes is None:
            touched = True
        else:
            axes = [a % rank for a in axes] or list(range(rank))
            half = len(pads) // 2
            touched = any(
                (pads[i] or pads[i + half]) and axes[i] == position
                for i in range(min(half, len(axes)))
            )
    if touched:
        cg.freeze(x, f"{op} on the channel axis")
        return
    set_layout(cg, node, x, range(len(node.outputs)))


def _resize(cg: ChannelGraph, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0] if ins else None
    if x is None:
        return
    rank = rank_of(node.inputs[0])
    sizes = node.inputs[3] if len(node.inputs) > 3 else None
    scale_index = 2 if node.op_type == "Resize" and len(node.inputs) > 2 else 1
    scales = const_of(node.inputs[scale_index]) if len(node.inputs) > scale_index else None
    if node.op_type == "Upsample" and "scales" in node.attributes:
        scales = np.asarray(node.attributes.get_floats("scales"))
    if (
        rank is None
        or sizes is not None
        or scales is None
        or scales.size != rank
        or scales.reshape(-1)[rank + x.axis] != 1
    ):
        cg.freeze(x, f"{node.op_type} with explicit sizes or a channel scale")
        return
    set_layout(cg, node, x)


def _freeze_reader(cg: ChannelGraph, node: ir.Node, ins: list[Layout | None]) -> None:
    freeze_all(cg, ins, f"{node.op_type} reads the shape")


Handler = Callable[[ChannelGraph, ir.Node, list[Layout | None]], None]

_HANDLERS: dict[str, Handler] = {
    "BatchNormalization": _norm,
    "InstanceNormalization": _norm,
    "LayerNormalization": _layer_norm,
    "Softmax": _softmax,
    "LogSoftmax": _softmax,
    "Hardmax": _softmax,
    "Transpose": _transpose,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Squeeze": _squeeze,
    "Unsqueeze": _squeeze,
    "Concat": _concat,
    "Split": _split_like,
    "Slice": _split_like,
    "Gather": _split_like,
    "Pad": _split_like,
    "Resize": _resize,
    "Upsample": _resize,
    "Shape": _freeze_reader,
    "Size": _freeze_reader,
}


def flow_handler(op: str) -> Handler | None:
    """The rule for an op channels flow through, or None when it is not understood."""
    if op in _HANDLERS:
        return _HANDLERS[op]
    if op in UNARY:
        return _passthrough
    if op in ELEMENTWISE:
        return _elementwise
    if op in POOLS:
        return _pool
    if op in REDUCE:
        return _reduce
    return None
