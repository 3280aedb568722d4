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

This module is the walk; the graph it fills is `channel_graph`, the layers that
create spaces are handled in `channel_layers`, every other op in `channel_ops`.
"""

from __future__ import annotations

import onnx_ir as ir

from onnxslim.passes.prune.channel_graph import ChannelGraph, freeze_all
from onnxslim.passes.prune.channel_layers import LAYER_HANDLERS, resolve_ties
from onnxslim.passes.prune.channel_ops import flow_handler


def analyze(model: ir.Model) -> ChannelGraph:
    """Channel spaces, groups and edits of the main graph (the model is not changed)."""
    cg = ChannelGraph()
    for node in model.graph:
        _visit(cg, node)
    resolve_ties(cg)
    for value, layout in list(cg.layouts.items()):
        if value.is_graph_output():
            cg.freeze(layout, f"reaches graph output {value.name!r}")
        for user, _ in value.uses():
            if user.graph is not model.graph:
                cg.freeze(layout, f"read inside a subgraph ({user.op_type})")
    return cg


def _visit(cg: ChannelGraph, node: ir.Node) -> None:
    ins = [cg.layouts.get(v) if v is not None else None for v in node.inputs]
    op = node.op_type
    if node.domain not in ("", "ai.onnx") or any(
        a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
        for a in node.attributes.values()
    ):
        freeze_all(cg, ins, f"{node.domain + '.' if node.domain else ''}{op} is not understood")
        return
    handler = LAYER_HANDLERS.get(op) or flow_handler(op)
    if handler is not None:
        handler(cg, node, ins)
    else:
        freeze_all(cg, ins, f"{op} is not understood")
