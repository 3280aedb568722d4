"""Structured channel pruning: remove whole output channels and rewrite every consumer.

The dependency groups (passes/prune/groups.py) say which channels must go
together and where each removal lands: the producing layers' weight rows and
biases, the next layers' input columns (blocks of them after a Flatten), BN and
other per-channel parameters, depthwise group counts, Concat offsets, explicit
Reshape sizes. Each unfrozen group keeps its most important channels:

- l1 / l2: the norm of each producer's output-channel weights, scaled by the
  BatchNormalization that follows it (its |gamma| / sqrt(var + eps) decides how
  much the channel actually contributes), summed over the group's producers;
- activation: E[x_c^2] at each consumer's input times the squared norm of the
  consumer's weights reading channel c, summed over consumers: the energy the
  channel feeds forward, measured on calibration data.

Kept counts are rounded up to a multiple of `multiple` channels (so at most
`ratio` of a group goes): ORT's NCHWc conv
kernels need input channels in blocks of 8 (AVX2) or 16 (AVX-512), and a conv
that falls off that path can be slower with fewer channels. The default (0)
uses this machine's block.

With calibration data, every weighted layer from the first rewritten consumer on
is refit by least squares against the original model (passes/prune/reconstruct).
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxslim.activations import channel_mean_squares
from onnxslim.errors import UsageError
from onnxslim.passes._options import check_choice, option
from onnxslim.passes._run_data import RunData
from onnxslim.passes.prune._common import check_fraction, store_summary
from onnxslim.passes.prune.channel_graph import ChannelGraph, Edit, Layout, readers
from onnxslim.passes.prune.groups import analyze
from onnxslim.passes.prune.layers import find_layers, resolve_initializer
from onnxslim.passes.prune.prepare import prepare
from onnxslim.passes.prune.reconstruct import REFIT_OPS, RefitOptions, RefitRequest, reconstruct
from onnxslim.shapes import infer_shapes


def nchwc_block() -> int:
    """ORT's NCHWc channel block on this CPU: 16 with AVX-512F, 8 otherwise."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="ignore")
    except OSError:
        return 8
    return 16 if " avx512f" in flags else 8


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChannelPruning(RefitOptions, ir.passes.InPlacePass):
    """Remove whole output channels of Conv/Gemm/MatMul and rewrite every consumer."""

    ratio: float = option(
        0.25,
        "Fraction of each prunable channel group removed (at most: counts round "
        "up to the channel multiple).",
    )
    importance: str = option(
        "l2",
        "Channel importance: l1 / l2 weight norms (BN-scaled) or activation (needs calib).",
        choices=("l1", "l2", "activation"),
    )
    multiple: int = option(
        0, "Keep channel counts a multiple of this (0: ORT's NCHWc block on this CPU)."
    )
    exclude: tuple[str, ...] = option(
        (), "Producer node names (fnmatch patterns) whose channels stay."
    )

    def __post_init__(self) -> None:
        check_choice(self, "importance")
        check_fraction("ratio", self.ratio)
        if self.multiple < 0:
            raise ValueError("multiple must be >= 0")

    def run(self, model: ir.Model, data: RunData) -> ir.passes.PassResult:
        feeds, refit = self.refit_data(model, data)
        if (refit or self.importance == "activation") and feeds is None:
            raise UsageError(
                "reconstruction and activation importance need calibration data (calib)"
            )
        prepared = prepare(model)
        _infer_shapes(model)
        cg = analyze(model)
        for space in cg.spaces:
            producer = space.producer
            if producer is not None and any(
                fnmatch.fnmatchcase(producer.name or "", p) for p in self.exclude
            ):
                space.frozen = space.frozen or "excluded"
        multiple = self.multiple or nchwc_block()
        stats = _activation_stats(model, cg, feeds) if self.importance == "activation" else {}
        kept: dict[int, np.ndarray] = {}
        report = []
        for root, members in cg.groups().items():
            size = cg.spaces[root].size
            producers = [
                producer.name for m in members if (producer := cg.spaces[m].producer) is not None
            ]
            entry = {
                "producers": producers,
                "channels": size,
                "kept": size,
                "reason": cg.spaces[root].frozen,
            }
            if not entry["reason"]:
                keep = _keep_count(size, self.ratio, multiple)
                if keep >= size:
                    entry["reason"] = (
                        f"{size} channels: nothing to remove at a multiple of {multiple}"
                    )
                else:
                    score = _importance(model, cg, root, self.importance, stats)
                    kept[root] = np.sort(np.argsort(-score, kind="stable")[:keep])
                    entry["kept"] = keep
            report.append(entry)
        if not kept:
            store_summary(model, method="channels", groups=report, refit=[])
            return ir.passes.PassResult(model, prepared)
        original = model.clone() if refit else None
        consumers = _apply(cg, kept)
        _clear_shapes(model)
        _infer_shapes(model)
        records = []
        if refit and original is not None and feeds is not None:
            requests = _refit_requests(model, cg, kept, consumers)
            records = reconstruct(
                original, model, requests, feeds, ridge=self.ridge, max_rows=self.max_rows
            )
        store_summary(model, method="channels", groups=report, refit=[r.to_dict() for r in records])
        return ir.passes.PassResult(model, True)


def _keep_count(size: int, ratio: float, multiple: int) -> int:
    if size <= multiple:
        return size
    keep = int(np.ceil(size * (1 - ratio) / multiple - 1e-9)) * multiple  # remove at most `ratio`
    return min(size, max(multiple, keep))


# ------------------------------------------------------------------ importance


def _producer_scores(node: ir.Node, norm: str) -> np.ndarray:
    weight = resolve_initializer(node.inputs[1])
    assert weight is not None and weight.const_value is not None
    w = weight.const_value.numpy().astype(np.float64)
    if node.op_type == "Conv":
        rows = w.reshape(w.shape[0], -1)
    elif node.op_type == "ConvTranspose":
        rows = np.moveaxis(w, 1, 0).reshape(w.shape[1], -1)
    elif node.op_type == "Gemm" and bool(node.attributes.get_int("transB", 0)):
        rows = w
    else:
        rows = w.T
    score = np.abs(rows).sum(1) if norm == "l1" else np.sqrt((rows * rows).sum(1))
    uses = list(node.outputs[0].uses())
    if len(uses) == 1 and uses[0][0].op_type == "BatchNormalization":
        bn = uses[0][0]
        scale, var = (resolve_initializer(bn.inputs[i]) for i in (1, 4))
        if (
            scale is not None
            and var is not None
            and scale.const_value is not None
            and var.const_value is not None
        ):
            eps = bn.attributes.get_float("epsilon", 1e-5)
            score = (
                score * np.abs(scale.const_value.numpy()) / np.sqrt(var.const_value.numpy() + eps)
            )
    return score


def _importance(
    model: ir.Model, cg: ChannelGraph, root: int, method: str, stats: dict[str, np.ndarray]
) -> np.ndarray:
    size = cg.spaces[root].size
    score = np.zeros(size)
    if method in ("l1", "l2"):
        for i, member in enumerate(cg.spaces):
            if cg.find(i) == root and member.producer is not None:
                produced = _producer_scores(member.producer, method)
                score += produced / (np.mean(produced) + 1e-30)
        return score
    for edit in cg.edits:
        if edit.kind != "consumer" or edit.node.inputs[0] is None:
            continue
        energy = stats.get(edit.node.inputs[0].name or "")
        if energy is None:
            continue
        per_feature = energy * _consumer_row_energy(edit.node)
        per_channel = per_feature.reshape(-1, edit.layout.factor).sum(1)
        offset = 0
        for space, length in edit.layout.segments:
            if cg.find(space) == root:
                score += per_channel[offset : offset + length]
            offset += length
    return score


def _consumer_row_energy(node: ir.Node) -> np.ndarray:
    """Squared norm of the consumer weights reading each input feature."""
    weight = resolve_initializer(node.inputs[1])
    assert weight is not None and weight.const_value is not None
    w = weight.const_value.numpy().astype(np.float64)
    if node.op_type == "Conv":
        return (np.moveaxis(w, 1, 0).reshape(w.shape[1], -1) ** 2).sum(1)
    if node.op_type == "ConvTranspose":
        return (w.reshape(w.shape[0], -1) ** 2).sum(1)
    if node.op_type == "Gemm" and bool(node.attributes.get_int("transB", 0)):
        return (w**2).sum(0)
    return (w**2).sum(1)


def _activation_stats(
    model: ir.Model, cg: ChannelGraph, feeds: list | None
) -> dict[str, np.ndarray]:
    axes: dict[str, int] = {}
    for edit in cg.edits:
        if edit.kind == "consumer" and edit.node.inputs[0] is not None:
            axes[edit.node.inputs[0].name or ""] = edit.layout.axis
    if not axes or feeds is None:
        return {}
    return channel_mean_squares(model, axes, feeds)


# ------------------------------------------------------------------ rewrite


def _kept_of(cg: ChannelGraph, layout: Layout, kept: dict[int, np.ndarray]) -> np.ndarray:
    parts, offset = [], 0
    for space, size in layout.segments:
        root = cg.find(space)
        parts.append(offset + (kept[root] if root in kept else np.arange(size)))
        offset += size
    channels = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    if layout.factor == 1:
        return channels
    return (channels[:, None] * layout.factor + np.arange(layout.factor)).reshape(-1)


def _changed(cg: ChannelGraph, layout: Layout, kept: dict[int, np.ndarray]) -> bool:
    return any(cg.find(space) in kept for space, _ in layout.segments)


@dataclasses.dataclass
class _Slice:
    """Take `index` along `axis` of the constant feeding input `input_index` of `node`."""

    node: ir.Node
    input_index: int
    axis: int
    index: np.ndarray


def _apply(cg: ChannelGraph, kept: dict[int, np.ndarray]) -> list[ir.Node]:
    """Make every edit whose channels change; returns the rewritten consumers."""
    consumers: list[ir.Node] = []
    slices: list[_Slice] = []
    reshapes: list[tuple[ir.Node, int]] = []
    for edit in cg.edits:
        if not _changed(cg, edit.layout, kept):
            continue
        index = _kept_of(cg, edit.layout, kept)
        node = edit.node
        if edit.kind == "producer":
            slices += _producer_slices(node, index)
        elif edit.kind == "consumer":
            slices.append(_Slice(node, 1, _consumer_axis(node), index))
            consumers.append(node)
        elif edit.kind == "depthwise":
            slices.append(_Slice(node, 1, 0, index))
            if len(node.inputs) > 2 and node.inputs[2] is not None:
                slices.append(_Slice(node, 2, 0, index))
            node.attributes["group"] = ir.AttrInt64("group", len(index))
        elif edit.kind == "param":
            slices.append(_Slice(node, edit.index, edit.axis, index))
        elif edit.kind == "reshape":
            reshapes.append((node, len(index)))
    _make_slices(slices)
    for node, width in reshapes:
        target = _array(node.inputs[1]).copy()
        target[1] = width
        _write_input(node, 1, target, in_place=False)
    return consumers


def _producer_slices(node: ir.Node, index: np.ndarray) -> list[_Slice]:
    op = node.op_type
    trans_b = op == "Gemm" and bool(node.attributes.get_int("transB", 0))
    result = [_Slice(node, 1, {"Conv": 0, "ConvTranspose": 1}.get(op, 0 if trans_b else 1), index)]
    if (
        op in ("Conv", "ConvTranspose", "Gemm")
        and len(node.inputs) > 2
        and node.inputs[2] is not None
    ):
        bias = _array(node.inputs[2])
        if bias.size > 1:
            result.append(_Slice(node, 2, bias.ndim - 1, index))
    return result


def _consumer_axis(node: ir.Node) -> int:
    trans_b = node.op_type == "Gemm" and bool(node.attributes.get_int("transB", 0))
    return {"Conv": 1, "ConvTranspose": 0}.get(node.op_type, 1 if trans_b else 0)


def _make_slices(slices: list[_Slice]) -> None:
    """Slice every constant once where all its readers want the same cut, else copy per reader.

    Tied weights (one initializer, several layers merged into one group) and
    per-channel constants shared inside a group are sliced in place once, so the
    sharing survives; a constant shared by nodes that want different cuts is
    copied for each of them.
    """
    done: dict[tuple[int, int], np.ndarray] = {}
    for position, cut in enumerate(slices):
        source = resolve_initializer(cut.node.inputs[cut.input_index])
        assert source is not None
        key = (id(source), cut.axis)
        if key in done and np.array_equal(done[key], cut.index):
            continue  # already cut in place for every reader
        wanted = {
            (id(other.node), other.input_index)
            for other in slices[position:]
            if other.axis == cut.axis
            and np.array_equal(other.index, cut.index)
            and resolve_initializer(other.node.inputs[other.input_index]) is source
        }
        in_place = key not in done and all((id(n), i) in wanted for n, i in readers(source))
        _write_input(
            cut.node,
            cut.input_index,
            np.take(_array(cut.node.inputs[cut.input_index]), cut.index, axis=cut.axis),
            in_place=in_place,
        )
        if in_place:
            done[key] = cut.index


def _array(value: ir.Value | None) -> np.ndarray:
    source = resolve_initializer(value)
    assert source is not None and source.const_value is not None
    return source.const_value.numpy()


def _write_input(node: ir.Node, input_index: int, array: np.ndarray, *, in_place: bool) -> None:
    """Write a new constant for one input: into its initializer, or a fresh copy for this node."""
    value = node.inputs[input_index]
    source = resolve_initializer(value)
    assert source is not None and source.const_value is not None
    dtype = source.const_value.dtype
    array = np.ascontiguousarray(array)
    if in_place or (len(source.uses()) == 1 and source is value):
        source.const_value = ir.Tensor(array, name=source.name)
        source.shape = ir.Shape(array.shape)
        return
    graph = node.graph
    assert graph is not None
    base, name, i = f"{source.name}_pruned", f"{source.name}_pruned", 1
    while name in graph.initializers:
        name, i = f"{base}_{i}", i + 1
    fresh = ir.Value(
        name=name,
        shape=ir.Shape(array.shape),
        type=ir.TensorType(dtype),
        const_value=ir.Tensor(array, name=name),
    )
    graph.register_initializer(fresh)
    node.replace_input_with(input_index, fresh)


def _clear_shapes(model: ir.Model) -> None:
    """Forget inferred shapes of intermediate values: channel counts changed."""
    graph = model.graph
    keep = {id(v) for v in graph.inputs} | {id(v) for v in graph.outputs}
    for node in graph:
        for out in node.outputs:
            if id(out) not in keep:
                out.shape = None


def _infer_shapes(model: ir.Model) -> None:
    try:
        infer_shapes(model, check_type=True, strict_mode=False)
    except Exception:  # shapes are a help to the analysis, never a requirement
        pass


def _refit_requests(
    model: ir.Model, cg: ChannelGraph, kept: dict[int, np.ndarray], consumers: list[ir.Node]
) -> list[RefitRequest]:
    """Every weighted layer from the rewritten consumers on, with the original outputs it keeps."""
    downstream: set[str] = set()
    queue = deque(consumers)
    seen: set[int] = set()
    while queue:
        node = queue.popleft()
        if id(node) in seen:
            continue
        seen.add(id(node))
        downstream.add(node.name or "")
        for out in node.outputs:
            for user, _ in out.uses():
                if user.graph is model.graph:
                    queue.append(user)
    out_index: dict[str, np.ndarray] = {}
    for edit in cg.edits:
        if edit.kind in ("producer", "depthwise") and _changed(cg, edit.layout, kept):
            out_index[edit.node.name or ""] = _kept_of(cg, edit.layout, kept)
    layers = find_layers(model, ops=REFIT_OPS)[0]
    return [
        RefitRequest(layer.name, keep_zeros=True, out_index=out_index.get(layer.name))
        for layer in layers
        if layer.name in downstream
    ]


def channel_groups(model: ir.Model) -> list[dict[str, Any]]:
    """What channel pruning could and could not rewrite on `model` (analysis only, no change)."""
    work = model.clone()
    prepare(work)
    _infer_shapes(work)
    cg = analyze(work)
    result = []
    for root, members in cg.groups().items():
        producers = [
            producer.name for m in members if (producer := cg.spaces[m].producer) is not None
        ]
        if not producers:
            continue
        edits = [e for e in cg.edits if any(cg.find(s) == root for s, _ in e.layout.segments)]
        result.append(
            {
                "producers": producers,
                "channels": cg.spaces[root].size,
                "prunable": not cg.spaces[root].frozen,
                "reason": cg.spaces[root].frozen,
                "rewrites": sorted({f"{e.kind}:{e.node.op_type}" for e in edits}),
            }
        )
    return result


__all__ = ["ChannelPruning", "channel_groups", "nchwc_block", "Edit"]
