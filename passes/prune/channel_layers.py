"""Where channel spaces are born: Conv, ConvTranspose, Gemm and MatMul with a constant weight.

Why its own module: a layer with a constant weight is the one place a channel space
is created and the only place whose output channels can be removed; weight sharing
(tied layers) is resolved here too, after the walk, because it needs every reader.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx_ir as ir

from onnxslim.passes.prune.channel_graph import (
    ChannelGraph,
    Edit,
    Layout,
    channel_axis_ok,
    dims_of,
    freeze_all,
    readers,
    set_layout,
)
from onnxslim.passes.prune.layers import resolve_initializer


def _tie(
    cg: ChannelGraph, weight: ir.Value, node: ir.Node, space: int, layout: Layout | None
) -> None:
    """Note one reader of a weight several layers share (resolved in _resolve_ties)."""
    cg.tied.setdefault(id(weight), (weight, []))[1].append((node, space, layout))


def conv(cg: ChannelGraph, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0] if ins else None
    weight = resolve_initializer(node.inputs[1]) if len(node.inputs) > 1 else None
    if weight is None or weight.const_value is None:
        cg.freeze(x, "Conv with a non-constant weight")
        return
    shape = tuple(weight.const_value.shape.numpy())
    group = node.attributes.get_int("group", 1)
    out, per_group = int(shape[0]), int(shape[1])
    rank = len(shape)
    shared = len(readers(weight)) > 1
    if group == 1:
        consumer = None
        if x is not None:
            if not channel_axis_ok(x, node.inputs[0]):
                cg.freeze(x, "Conv input channels are not on axis 1")
            else:
                consumer = x
                cg.edits.append(Edit("consumer", node, x))
        space = cg.new_space(out, node)
        if shared:
            _tie(cg, weight, node, space, consumer)
        cg.edits.append(Edit("producer", node, Layout(((space, out),), 1 - rank), space=space))
        set_layout(cg, node, Layout(((space, out),), 1 - rank))
        return
    if (
        per_group == 1
        and group == out
        and x is not None
        and x.channels == group
        and channel_axis_ok(x, node.inputs[0])
    ):
        if shared:
            cg.freeze(x, f"depthwise weight {weight.name!r} shared by {len(readers(weight))} nodes")
        else:
            cg.edits.append(Edit("depthwise", node, x))
        set_layout(cg, node, x)
        return
    cg.freeze(x, f"grouped Conv (group={group}) keeps its channels")
    set_layout(
        cg,
        node,
        Layout(((cg.new_space(out, node, f"grouped Conv (group={group}) output"), out),), 1 - rank),
    )


def conv_transpose(cg: ChannelGraph, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0] if ins else None
    weight = resolve_initializer(node.inputs[1]) if len(node.inputs) > 1 else None
    group = node.attributes.get_int("group", 1)
    if (
        weight is None
        or weight.const_value is None
        or group != 1
        or node.attributes.get_ints("output_shape", None) is not None
    ):
        cg.freeze(x, "ConvTranspose with groups, explicit output_shape or non-constant weight")
        return
    shape = tuple(weight.const_value.shape.numpy())
    consumer = None
    if x is not None:
        if not channel_axis_ok(x, node.inputs[0]):
            cg.freeze(x, "ConvTranspose input channels not on axis 1")
        else:
            consumer = x
            cg.edits.append(Edit("consumer", node, x))
    out = int(shape[1])
    space = cg.new_space(out, node)
    if len(readers(weight)) > 1:
        _tie(cg, weight, node, space, consumer)
    layout = Layout(((space, out),), 1 - len(shape))
    cg.edits.append(Edit("producer", node, layout, space=space))
    set_layout(cg, node, layout)


def matmul_like(cg: ChannelGraph, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0] if ins else None
    weight = resolve_initializer(node.inputs[1]) if len(node.inputs) > 1 else None
    if (
        weight is None
        or weight.const_value is None
        or len(weight.const_value.shape) != 2
        or (node.op_type == "Gemm" and bool(node.attributes.get_int("transA", 0)))
    ):
        freeze_all(cg, ins, f"{node.op_type} of two activations (or transA)")
        return
    if len(ins) > 1 and ins[1] is not None:
        cg.freeze(ins[1], f"{node.op_type} weight carries channels")
    shape = tuple(weight.const_value.shape.numpy())
    trans_b = node.op_type == "Gemm" and bool(node.attributes.get_int("transB", 0))
    out = int(shape[0] if trans_b else shape[1])
    frozen = ""
    if node.op_type == "Gemm" and len(node.inputs) > 2 and node.inputs[2] is not None:
        c_dims = dims_of(node.inputs[2])
        if (
            c_dims is None
            or resolve_initializer(node.inputs[2]) is None
            or (len(c_dims) == 2 and c_dims[0] != 1)
        ):
            frozen = "Gemm C is not a per-column bias"
    consumer = None
    if x is not None:
        if x.axis != -1:
            cg.freeze(x, f"{node.op_type} contracts an axis other than the channels")
        else:
            consumer = x
            cg.edits.append(Edit("consumer", node, x))
    space = cg.new_space(out, node, frozen)
    if len(readers(weight)) > 1:
        _tie(cg, weight, node, space, consumer)
    layout = Layout(((space, out),), -1)
    cg.edits.append(Edit("producer", node, layout, space=space))
    set_layout(cg, node, layout)


def resolve_ties(cg: ChannelGraph) -> None:
    """Layers sharing one weight must keep the same channels: merge their spaces, or freeze.

    Tied output channels are merged (3 layers of one shared FFN lose the same
    hidden channels); tied input channels must come from layouts that can be
    merged too. A weight also read by anything that is not such a layer (or by
    layers of different kinds) freezes every space it touches.
    """
    for weight, entries in cg.tied.values():
        users = readers(weight)
        kinds = {
            (n.op_type, n.attributes.get_int("group", 1), n.attributes.get_int("transB", 0))
            for n, _, _ in entries
        }
        if len(entries) != len(users) or len(kinds) != 1 or any(i != 1 for _, i in users):
            reason = f"weight {weight.name!r} shared by {len(users)} nodes not all alike"
            for _, space, layout in entries:
                cg.freeze_space(space, reason)
                cg.freeze(layout, reason)
            continue
        spaces = [space for _, space, _ in entries]
        for space in spaces[1:]:
            cg.union(spaces[0], space)
        layouts = [layout for _, _, layout in entries]
        present = [layout for layout in layouts if layout is not None]
        first = present[0] if present else None
        if (
            first is None
            or len(present) != len(layouts)
            or any(
                layout.sizes() != first.sizes()
                or layout.axis != first.axis
                or layout.factor != first.factor
                for layout in present
            )
        ):
            reason = f"weight {weight.name!r} shared by layers whose inputs differ"
            for entry_layout in layouts:
                cg.freeze(entry_layout, reason)
            continue
        for layout in present[1:]:
            for (a, _), (b, _) in zip(first.segments, layout.segments, strict=False):
                cg.union(a, b)


Handler = Callable[[ChannelGraph, ir.Node, list[Layout | None]], None]

LAYER_HANDLERS: dict[str, Handler] = {
    "Conv": conv,
    "ConvTranspose": conv_transpose,
    "Gemm": matmul_like,
    "MatMul": matmul_like,
}
