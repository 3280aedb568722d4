"""The channel analysis's data: spaces, their union, value layouts, edits; graph queries.

Why its own module: the handlers of channel-producing layers (`channel_layers`) and
of the ops channels flow through (`channel_ops`) all record into one `ChannelGraph`
and ask the same questions of a value (rank, dims, constant, readers); `channels.py`
reads the finished graph to rewrite the model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from onnxslim.passes.prune.layers import resolve_initializer


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


def freeze_all(cg: ChannelGraph, ins: Iterable[Layout | None], reason: str) -> None:
    for layout in ins:
        cg.freeze(layout, reason)


def rank_of(value: ir.Value | None) -> int | None:
    if value is None:
        return None
    if value.const_value is not None:
        return len(value.const_value.shape)
    return len(value.shape) if value.shape is not None else None


def dims_of(value: ir.Value | None) -> tuple[int | None, ...] | None:
    if value is None:
        return None
    if value.const_value is not None:
        return tuple(int(d) for d in value.const_value.shape.numpy())
    if value.shape is None:
        return None
    return tuple(d if isinstance(d, int) else None for d in value.shape)


def const_of(value: ir.Value | None) -> np.ndarray | None:
    source = resolve_initializer(value)
    if source is not None and source.const_value is not None:
        return source.const_value.numpy()
    if value is not None and value.const_value is not None:
        return value.const_value.numpy()
    producer = value.producer() if value is not None else None
    if producer is not None and producer.op_type == "Constant" and "value" in producer.attributes:
        return producer.attributes["value"].as_tensor().numpy()
    return None


def set_layout(
    cg: ChannelGraph, node: ir.Node, layout: Layout | None, outputs: Iterable[int] = (0,)
) -> None:
    if layout is None:
        return
    for i in outputs:
        if i < len(node.outputs):
            cg.layouts[node.outputs[i]] = layout


def extra_outputs_used(node: ir.Node) -> bool:
    return any(out.uses() or out.is_graph_output() for out in node.outputs[1:])


def channel_axis_ok(layout: Layout, value: ir.Value | None) -> bool:
    rank = rank_of(value)
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
