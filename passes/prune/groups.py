"""Channel dependency groups: which output channels must be removed together, and every
place that has to change when they are.

Every Conv / ConvTranspose / Gemm / MatMul with a constant weight *produces* a
channel space (its output channels). Walking the graph in order, each value that
carries channels gets a layout: the spaces it is made of (more than one after a
Concat along channels), its channel axis (negative, so broadcasting lines up)
and a factor (after Flatten / Reshape into a Gemm, each channel spans `factor`
consecutive features). Spaces that must keep the same channel set are merged
(union-find):

 1. element-wise ops on two channel-carrying values (residual Add, gating Mul);
 2. a depthwise Conv passes its input's channels through (group count follows);
 3. Concat along channels concatenates layouts (offsets move); along other axes
    it merges like (1);
 4. BatchNormalization / InstanceNormalization, per-channel constants of Add /
    Mul / PRelu ..., biases: sliced with the channels;
 5. Flatten / Reshape([N, -1]) before a Gemm: the Gemm's rows are removed in
    blocks of `factor`; an explicit reshape size is rewritten.

A space is *frozen* (left whole), with the reason kept for the report, when the
channels reach a graph output, an op that mixes or reads across channels
(LayerNormalization over them, Softmax over them, Split/Slice/Gather on them,
Shape, a Reshape that splits them into heads), a grouped (non-depthwise) Conv,
a subgraph, or any op not listed here. Layers that share one weight (weight
tying, unrolled recurrences) are merged, so they lose the same channels, when
every reader is such a layer; otherwise the weight's spaces are frozen too.
Frozen spaces merged with others freeze the whole group: refusing is always safe.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from onnxslim.passes.prune.layers import resolve_initializer

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


@dataclass(frozen=True)
class Layout:
    """How a value carries channels: (space, size) segments along `axis`, `factor` features each."""

    segments: tuple[tuple[int, int], ...]
    axis: int
    factor: int = 1

    @property
    def channels(self) -> int:
        return sum(size for _, size in self.segments)

    @property
    def width(self) -> int:
        return self.channels * self.factor

    def sizes(self) -> tuple[int, ...]:
        return tuple(size for _, size in self.segments)


@dataclass
class Edit:
    """One change the rewrite makes; `layout` gives the channels kept."""

    kind: str  # producer | consumer | depthwise | param | reshape
    node: ir.Node
    layout: Layout
    index: int = 0  # param: input index
    axis: int = 0  # param: axis of the constant to slice
    space: int = -1  # producer: the space it creates


@dataclass
class Space:
    size: int
    producer: ir.Node | None
    frozen: str = ""


@dataclass
class ChannelGraph:
    """The analysis result: spaces, their union, layouts of values and the edits to make."""

    spaces: list[Space] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)
    layouts: dict[ir.Value, Layout] = field(default_factory=dict)
    edits: list[Edit] = field(default_factory=list)
    tied: dict[int, tuple[ir.Value, list[tuple[ir.Node, int, Layout | None]]]] = field(
        default_factory=dict
    )

    # union-find
    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.spaces[ra].size != self.spaces[rb].size:
            self.freeze_space(a, "merged spaces of different sizes")
            self.freeze_space(b, "merged spaces of different sizes")
        self.parent[rb] = ra
        if not self.spaces[ra].frozen and self.spaces[rb].frozen:
            self.spaces[ra].frozen = self.spaces[rb].frozen

    def new_space(self, size: int, producer: ir.Node | None, frozen: str = "") -> int:
        self.spaces.append(Space(size, producer, frozen))
        self.parent.append(len(self.parent))
        return len(self.spaces) - 1

    def freeze_space(self, i: int, reason: str) -> None:
        root = self.find(i)
        if not self.spaces[root].frozen:
            self.spaces[root].frozen = reason

    def freeze(self, layout: Layout | None, reason: str) -> None:
        if layout is not None:
            for space, _ in layout.segments:
                self.freeze_space(space, reason)

    def frozen(self, i: int) -> str:
        return self.spaces[self.find(i)].frozen

    def groups(self) -> dict[int, list[int]]:
        """Root -> member spaces."""
        result: dict[int, list[int]] = {}
        for i in range(len(self.spaces)):
            result.setdefault(self.find(i), []).append(i)
        return result


def analyze(model: ir.Model) -> ChannelGraph:
    """Channel spaces, groups and edits of the main graph (the model is not changed)."""
    cg = ChannelGraph()
    for node in model.graph:
        _visit(cg, node)
    _resolve_ties(cg)
    for value, layout in list(cg.layouts.items()):
        if value.is_graph_output():
            cg.freeze(layout, f"reaches graph output {value.name!r}")
        for user, _ in value.uses():
            if user.graph is not model.graph:
                cg.freeze(layout, f"read inside a subgraph ({user.op_type})")
    return cg


# ---------------------------------------------------------------- node handlers


def _visit(cg: ChannelGraph, node: ir.Node) -> None:
    ins = [cg.layouts.get(v) if v is not None else None for v in node.inputs]
    op = node.op_type
    if node.domain not in ("", "ai.onnx") or any(
        a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
        for a in node.attributes.values()
    ):
        _freeze_all(cg, ins, f"{node.domain + '.' if node.domain else ''}{op} is not understood")
        return
    handler = _HANDLERS.get(op)
    if handler is not None:
        handler(cg, node, ins)
    elif op in UNARY:
        _passthrough(cg, node, ins)
    elif op in ELEMENTWISE:
        _elementwise(cg, node, ins)
    elif op in POOLS:
        _pool(cg, node, ins)
    elif op in REDUCE:
        _reduce(cg, node, ins)
    else:
        _freeze_all(cg, ins, f"{op} is not understood")


def _freeze_all(cg: ChannelGraph, ins: Iterable[Layout | None], reason: str) -> None:
    for layout in ins:
        cg.freeze(layout, reason)


def _rank(value: ir.Value | None) -> int | None:
    if value is None:
        return None
    if value.const_value is not None:
        return len(value.const_value.shape)
    return len(value.shape) if value.shape is not None else None


def _dims(value: ir.Value | None) -> tuple[int | None, ...] | None:
    if value is None:
        return None
    if value.const_value is not None:
        return tuple(int(d) for d in value.const_value.shape)
    if value.shape is None:
        return None
    return tuple(d if isinstance(d, int) else None for d in value.shape)


def _const(value: ir.Value | None) -> np.ndarray | None:
    source = resolve_initializer(value)
    if source is not None and source.const_value is not None:
        return source.const_value.numpy()
    if value is not None and value.const_value is not None:
        return value.const_value.numpy()
    producer = value.producer() if value is not None else None
    if producer is not None and producer.op_type == "Constant" and "value" in producer.attributes:
        return producer.attributes["value"].as_tensor().numpy()
    return None


def _set(
    cg: ChannelGraph, node: ir.Node, layout: Layout | None, outputs: Iterable[int] = (0,)
) -> None:
    if layout is None:
        return
    for i in outputs:
        if i < len(node.outputs):
            cg.layouts[node.outputs[i]] = layout


def _extra_outputs_used(node: ir.Node) -> bool:
    return any(out.uses() or out.is_graph_output() for out in node.outputs[1:])


def _passthrough(cg: ChannelGraph, node: ir.Node, ins: list[Layout | None]) -> None:
    if ins and ins[0] is not None:
        if any(layout is not None for layout in ins[1:]):
            _elementwise(cg, node, ins)
            return
        if _extra_outputs_used(node):
            cg.freeze(ins[0], f"{node.op_type} second output is used")
            return
        _set(cg, node, ins[0])
    elif any(layout is not None for layout in ins):
        _freeze_all(cg, ins, f"{node.op_type} reads channels as a parameter")


def _elementwise(cg: ChannelGraph, node: ir.Node, ins: list[Layout | None]) -> None:
    carrying = [layout for layout in ins if layout is not None]
    if not carrying:
        return
    ref = carrying[0]
    for other in carrying[1:]:
        if other.sizes() != ref.sizes() or other.axis != ref.axis or other.factor != ref.factor:
            _freeze_all(cg, carrying, f"{node.op_type} combines differently laid out channels")
            return
    for other in carrying[1:]:
        for (a, _), (b, _) in zip(ref.segments, other.segments, strict=False):
            cg.union(a, b)
    for index, (value, layout) in enumerate(zip(node.inputs, ins, strict=False)):
        if layout is not None or value is None:
            continue
        dims = _dims(value)
        constant = _const(value)
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
    _set(cg, node, ref, range(len(node.outputs)))


def _channel_axis_ok(layout: Layout, value: ir.Value | None) -> bool:
    rank = _rank(value)
    return rank is not None and layout.factor == 1 and layout.axis == 1 - rank


def readers(value: ir.Value) -> list[tuple[ir.Node, int]]:
    """(node, input index) of everything reading `value`, looking through Identity nodes."""
    found, stack = [], [value]
    while stack:
        current = stack.pop()
        for node, index in current.uses():
            if node.op_type == "Identity" and node.domain in ("", "ai.onnx"):
                stack.append(node.outputs[0])
            else:
                found.append((node, index))
    return found


def _tie(
    cg: ChannelGraph, weight: ir.Value, node: ir.Node, space: int | None, layout: Layout | None
) -> None:
    """Note one reader of a weight several layers share (resolved in _resolve_ties)."""
    cg.tied.setdefault(id(weight), (weight, []))[1].append((node, space, layout))


def _conv(cg: ChannelGraph, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0] if ins else None
    weight = resolve_initializer(node.inputs[1]) if len(node.inputs) > 1 else None
    if weight is None or weight.const_value is None:
        cg.freeze(x, "Conv with a non-constant weight")
        return
    shape = tuple(weight.const_value.shape)
    group = node.attributes.get_int("group", 1)
    out, per_group = int(shape[0]), int(shape[1])
    rank = len(shape)
    shared = len(readers(weight)) > 1
    if group == 1:
        consumer = None
        if x is not None:
            if not _channel_axis_ok(x, node.inputs[0]):
                cg.freeze(x, "Conv input channels are not on axis 1")
            else:
                consumer = x
                cg.edits.append(Edit("consumer", node, x))
        space = cg.new_space(out, node)
        if shared:
            _tie(cg, weight, node, space, consumer)
        cg.edits.append(Edit("producer", node, Layout(((space, out),), 1 - rank), space=space))
        _set(cg, node, Layout(((space, out),), 1 - rank))
        return
    if (
        per_group == 1
        and group == out
        and x is not None
        and x.channels == group
        and _channel_axis_ok(x, node.inputs[0])
    ):
        if shared:
            cg.freeze(x, f"depthwise weight {weight.name!r} shared by {len(readers(weight))} nodes")
        else:
            cg.edits.append(Edit("depthwise", node, x))
        _set(cg, node, x)
        return
    cg.freeze(x, f"grouped Conv (group={group}) keeps its channels")
    _set(
        cg,
        node,
        Layout(((cg.new_space(out, node, f"grouped Conv (group={group}) output"), out),), 1 - rank),
    )


def _conv_transpose(cg: ChannelGraph, node: ir.Node, ins: list[Layout | None]) -> None:
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
    shape = tuple(weight.const_value.shape)
    consumer = None
    if x is not None:
        if not _channel_axis_ok(x, node.inputs[0]):
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
    _set(cg, node, layout)


def _matmul_like(cg: ChannelGraph, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0] if ins else None
    weight = resolve_initializer(node.inputs[1]) if len(node.inputs) > 1 else None
    if (
        weight is None
        or weight.const_value is None
        or len(weight.const_value.shape) != 2
        or (node.op_type == "Gemm" and node.attributes.get_int("transA", 0))
    ):
        _freeze_all(cg, ins, f"{node.op_type} of two activations (or transA)")
        return
    if len(ins) > 1 and ins[1] is not None:
        cg.freeze(ins[1], f"{node.op_type} weight carries channels")
    shape = tuple(weight.const_value.shape)
    trans_b = node.op_type == "Gemm" and bool(node.attributes.get_int("transB", 0))
    out = int(shape[0] if trans_b else shape[1])
    frozen = ""
    if node.op_type == "Gemm" and len(node.inputs) > 2 and node.inputs[2] is not None:
        c_dims = _dims(node.inputs[2])
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
    _set(cg, node, layout)


def _resolve_ties(cg: ChannelGraph) -> None:
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
        first = layouts[0]
        if any(layout is None for layout in layouts) or any(
            layout.sizes() != first.sizes()
            or layout.axis != first.axis
            or layout.factor != first.factor
            for layout in layouts
        ):
            reason = f"weight {weight.name!r} shared by layers whose inputs differ"
            for layout in layouts:
                cg.freeze(layout, reason)
            continue
        for layout in layouts[1:]:
            for (a, _), (b, _) in zip(first.segments, layout.segments, strict=False):
                cg.union(a, b)


def _norm(cg: ChannelGraph, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0] if ins else None
    if x is None:
        _freeze_all(cg, ins, f"{node.op_type} parameters carry channels")
        return
    if (
        not _channel_axis_ok(x, node.inputs[0])
        or _extra_outputs_used(node)
        or any(layout is not None for layout in ins[1:])
    ):
        cg.freeze(x, f"{node.op_type} on channels it cannot follow")
        return
    for index in range(1, len(node.inputs)):
        if node.inputs[index] is None:
            continue
        if _const(node.inputs[index]) is None:
            cg.freeze(x, f"{node.op_type} parameter is not constant")
            return
        cg.edits.append(Edit("param", node, x, index=index, axis=0))
    _set(cg, node, x)


def _layer_norm(cg: ChannelGraph, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0] if ins else None
    rank = _rank(node.inputs[0])
    if x is None:
        _freeze_all(cg, ins, "LayerNormalization parameters carry channels")
        return
    axis = node.attributes.get_int("axis", -1)
    if rank is None:
        cg.freeze(x, "LayerNormalization input of unknown rank")
        return
    start = axis % rank
    if rank + x.axis >= start:
        cg.freeze(x, "LayerNormalization normalises over the channels")
        return
    if _extra_outputs_used(node):
        cg.freeze(x, "LayerNormalization statistics outputs are used")
        return
    _set(cg, node, x)


def _softmax(cg: ChannelGraph, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0] if ins else None
    rank = _rank(node.inputs[0])
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
    _set(cg, node, x)


def _pool(cg: ChannelGraph, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0] if ins else None
    if x is None:
        return
    if not _channel_axis_ok(x, node.inputs[0]) or _extra_outputs_used(node):
        cg.freeze(x, f"{node.op_type} on channels it cannot follow")
        return
    _set(cg, node, x)


def _axes(node: ir.Node, index: int) -> list[int] | None:
    """Axes from the `axes` attribute or input `index` (by opset); None if unknown or dynamic."""
    attr = node.attributes.get_ints("axes", None)
    if attr is not None:
        return list(attr)
    if len(node.inputs) > index and node.inputs[index] is not None:
        value = _const(node.inputs[index])
        return None if value is None else [int(a) for a in value.reshape(-1)]
    return []


def _reduce(cg: ChannelGraph, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0] if ins else None
    rank = _rank(node.inputs[0])
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
        _set(cg, node, x)
        return
    new_rank = rank - len(axes)
    new_position = position - sum(1 for a in axes if a < position)
    _set(cg, node, Layout(x.segments, new_position - new_rank, x.factor))


def _transpose(cg: ChannelGraph, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0] if ins else None
    rank = _rank(node.inputs[0])
    if x is None:
        return
    perm = node.attributes.get_ints("perm", None)
    if rank is None or x.factor != 1:
        cg.freeze(x, "Transpose of unknown rank")
        return
    perm = list(perm) if perm is not None else list(reversed(range(rank)))
    position = perm.index(rank + x.axis)
    _set(cg, node, Layout(x.segments, position - rank))


def _flatten(cg: ChannelGraph, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0] if ins else None
    if x is None:
        return
    dims = _dims(node.inputs[0])
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
    _set(cg, node, Layout(x.segments, -1, x.factor * math.prod(tail)))  # type: ignore[arg-type]


def _reshape(cg: ChannelGraph, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0] if ins else None
    if x is None:
        return
    if len(ins) > 1 and ins[1] is not None:
        cg.freeze(ins[1], "Reshape shape carries channels")
    dims = _dims(node.inputs[0])
    target = _const(node.inputs[1]) if len(node.inputs) > 1 else None
    if dims is None or target is None:
        cg.freeze(x, "Reshape with unknown input shape or dynamic target")
        return
    target = [int(t) for t in target.reshape(-1)]
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
    _set(cg, node, layout)


def _squeeze(cg: ChannelGraph, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0] if ins else None
    rank = _rank(node.inputs[0])
    if x is None:
        return
    axes = _axes(node, 1)
    if axes is None or rank is None or x.factor != 1:
        cg.freeze(x, f"{node.op_type} with unknown axes or rank")
        return
    position = rank + x.axis
    if node.op_type == "Squeeze":
        if not axes:
            dims = _dims(node.inputs[0])
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
    _set(cg, node, Layout(x.segments, new_position - new_rank, x.factor))


def _concat(cg: ChannelGraph, node: ir.Node, ins: list[Layout | None]) -> None:
    carrying = [layout for layout in ins if layout is not None]
    if not carrying:
        return
    rank = next((_rank(v) for v in node.inputs if _rank(v) is not None), None)
    if rank is None:
        _freeze_all(cg, carrying, "Concat of unknown rank")
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
                _freeze_all(cg, carrying, "Concat of differently laid out channels")
                return
            segments.extend(layout.segments)
            continue
        dims = _dims(value)
        size = dims[axis] if dims is not None and len(dims) > axis else None
        if size is None:
            _freeze_all(cg, carrying, "Concat operand of unknown channel count")
            return
        segments.append((cg.new_space(size, None, "fixed Concat operand"), size))
    _set(cg, node, Layout(tuple(segments), ref.axis))


def _elementwise_strict(cg: ChannelGraph, node: ir.Node, ins: list[Layout | None]) -> None:
    if any(layout is None for layout in ins):
        _freeze_all(cg, ins, f"{node.op_type} joins channel-carrying and fixed tensors")
        return
    _elementwise(cg, node, ins)


def _split_like(cg: ChannelGraph, node: ir.Node, ins: list[Layout | None]) -> None:
    """Split / Slice / Gather / Pad: fine on other axes, frozen on the channel axis."""
    x = ins[0] if ins else None
    if x is None:
        _freeze_all(cg, ins, f"{node.op_type} indexes with channels")
        return
    rank = _rank(node.inputs[0])
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
            value = _const(node.inputs[1])
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
    _set(cg, node, x, range(len(node.outputs)))


def _resize(cg: ChannelGraph, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0] if ins else None
    if x is None:
        return
    rank = _rank(node.inputs[0])
    sizes = node.inputs[3] if len(node.inputs) > 3 else None
    scale_index = 2 if node.op_type == "Resize" and len(node.inputs) > 2 else 1
    scales = _const(node.inputs[scale_index]) if len(node.inputs) > scale_index else None
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
    _set(cg, node, x)


def _freeze_reader(cg: ChannelGraph, node: ir.Node, ins: list[Layout | None]) -> None:
    _freeze_all(cg, ins, f"{node.op_type} reads the shape")


_HANDLERS = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Gemm": _matmul_like,
    "MatMul": _matmul_like,
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
