"""Fetch intermediate tensors of a model from ONNX Runtime, batch by batch, in memory.

How: a clone of the model gets the wanted values as extra graph outputs and runs
through `onnxslim.runtime.Session` (no file is written anywhere); each feed's
fetched tensors are handed to a `consume` callback and dropped, so memory is one
feed's worth of tensors whatever the number of feeds.

When the wanted tensors of one feed would exceed `max_group_bytes` (estimated
from the shapes the graph declares, free dimensions taken from the first feed),
they are split into groups fetched by separate sessions: several passes over a
re-iterable source (a list, a path, a factory), or, for a one-shot iterator, one
session per group kept open and each feed run through all of them.

Subgraph tensors (inside If / Loop / Scan bodies) cannot be fetched from ORT
directly. They are threaded out of their owner node as extra outputs, innermost
first, so nested bodies work too:
  If    every branch gets one extra output per wanted value: the flattened value
        in the branch that holds it, an empty tensor in the others;
  Loop  one extra loop-carried accumulator per wanted value, starting empty and
        concatenating the flattened value every iteration (shapes may vary
        between iterations);
  Scan  one extra scan output per wanted value (the flattened value per
        iteration; Scan bodies have fixed per-iteration shapes).
So subgraph tensors arrive flattened to 1-D (all iterations' values together),
which is what range statistics need; a branch not taken contributes nothing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import onnx_ir as ir

from onnxslim.calibration import open_feeds
from onnxslim.errors import DataError
from onnxslim.feeds import Feed
from onnxslim.graphs import iter_graphs
from onnxslim.passes._run_data import FeedSource  # what the quantizer reads
from onnxslim.runtime import Session, SessionConfig
from onnxslim.shapes import infer_shapes

from .ranges import DEFAULT_BINS, Summary, TensorStats

# progress(done, total): runs finished so far, and the total when the source has a length.
ProgressFn = Callable[[int, int | None], None]
# consume(feed_index, {name: array}) for each feed (and each group of tensors); names asked
# for in `summarize` arrive as a ranges.Summary.
ConsumeFn = Callable[[int, dict[str, np.ndarray | Summary]], None]

DEFAULT_GROUP_BYTES = 1 << 30
_FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16)
_PREFIX = "__onnxslim_probe"


@dataclass(frozen=True)
class CollectConfig:
    """How to fetch: memory budget per run, ORT threads (0 = ORT's default), feed limit."""

    max_group_bytes: int = DEFAULT_GROUP_BYTES
    threads: int = 0
    limit: int | None = None


def infer_types(model: ir.Model) -> None:
    """Fill in value types and shapes with ONNX shape inference, where it can tell.

    Exported models often declare no value_info; without dtypes the quantizer
    cannot tell float tensors from integer ones. Failures leave the model as it was.
    """
    try:
        infer_shapes(model, check_type=True, strict_mode=False)
    except Exception:  # inference is best effort: unknown types stay unknown
        pass


def float_values(model: ir.Model, *, include_untyped: bool = True) -> dict[str, ir.Value]:
    """Every named float tensor computed by a node or fed as input, subgraphs included.

    Values whose type is unknown count as float unless `include_untyped` is False.
    """
    found: dict[str, ir.Value] = {}
    for graph in iter_graphs(model):
        if not isinstance(graph, ir.Graph):
            continue
        candidates = list(graph.inputs) + [out for node in graph for out in node.outputs]
        for value in candidates:
            if not value.name or value.is_initializer():
                continue
            if value.dtype in _FLOAT_TYPES or (value.dtype is None and include_untyped):
                found.setdefault(value.name, value)
    return found


def collect_stats(
    model: ir.Model,
    feeds: FeedSource,
    names: Iterable[str],
    *,
    histogram: bool = True,
    bins: int = DEFAULT_BINS,
    progress: ProgressFn | None = None,
    config: CollectConfig | None = None,
) -> tuple[dict[str, TensorStats], int]:
    """Streaming statistics of the named tensors over every feed, and the feed count."""
    stats = {
        name: (TensorStats.with_histogram(bins) if histogram else TensorStats()) for name in names
    }

    def consume(_: int, arrays: dict[str, np.ndarray | Summary]) -> None:
        for name, array in arrays.items():
            stats[name].update(array)

    # Min/max alone are reduced inside ORT: two scalars per tensor instead of a copy.
    summarize = () if histogram else list(stats)
    count = stream_tensors(
        model, feeds, list(stats), consume, progress=progress, config=config, summarize=summarize
    )
    return stats, count


def stream_tensors(
    model: ir.Model,
    feeds: FeedSource,
    names: Sequence[str],
    consume: ConsumeFn,
    *,
    progress: ProgressFn | None = None,
    config: CollectConfig | None = None,
    summarize: Iterable[str] = (),
) -> int:
    """Run every feed and hand the named tensors to `consume`; returns the number of feeds.

    Names may be graph inputs (taken from the feed), graph outputs, intermediate
    values of the main graph or values inside subgraphs (delivered flattened).
    Names in `summarize` arrive as `ranges.Summary` (min, max, shape) computed by
    ReduceMin/ReduceMax/Shape nodes in the probe: nothing large leaves ORT.
    """
    config = config or CollectConfig()
    wanted = list(dict.fromkeys(names))
    known = float_values(model)
    known.update({v.name: v for v in model.graph.outputs if v.name})
    missing = [n for n in wanted if n not in known]
    if missing:
        raise DataError(f"cannot collect unknown tensor(s): {', '.join(missing[:5])}")
    input_names = {v.name for v in model.graph.inputs}
    from_feed = [n for n in wanted if n in input_names]
    fetched = [n for n in wanted if n not in input_names]
    reduced = set(summarize) & set(fetched)

    factory, first_iter = _feed_factory(feeds, model, config.limit)
    iterator = first_iter if first_iter is not None else factory()  # type: ignore[misc]
    try:
        first = next(iterator)
    except StopIteration:
        raise DataError("calibration data holds no feeds") from None
    iterator = _chain_first(first, iterator)
    total = _length(feeds, config.limit)

    if not fetched:
        groups: list[list[str]] = []
    else:
        groups = _plan_groups(model, fetched, known, first, config.max_group_bytes, reduced)
    probes = [_probe_model(model, group, reduced) for group in groups] if groups else []
    runs_total = None if total is None else total * max(len(groups), 1)

    def run_inputs(index: int, feed: Feed) -> None:
        if from_feed:
            consume(index, {n: np.asarray(feed[n]) for n in from_feed if n in feed})

    done = 0
    if len(probes) <= 1 or factory is None:
        # One pass over the data; with several groups (one-shot source) all sessions stay open.
        sessions = [
            (Session(probe, SessionConfig(threads=config.threads)), outputs)
            for probe, outputs in probes
        ]
        count = 0
        for index, feed in enumerate(iterator):
            feed = _as_feed(feed)
            run_inputs(index, feed)
            for session, outputs in sessions:
                consume(index, _fetch(session, feed, outputs))
                done += 1
                if progress is not None:
                    progress(done, runs_total)
            if not sessions and progress is not None:
                done += 1
                progress(done, runs_total)
            count += 1
        return count
    count = 0
    for group_index, (probe, outputs) in enumerate(probes):
        session = Session(probe, SessionConfig(threads=config.threads))
        source = iterator if group_index == 0 else factory()
        count = 0
        for index, feed in enumerate(source):
            feed = _as_feed(feed)
            if group_index == 0:
                run_inputs(index, feed)
            consume(index, _fetch(session, feed, outputs))
            done += 1
            count += 1
            if progress is not None:
                progress(done, runs_total)
        del session
    return count


def _fetch(
    session: Session, feed: Feed, outputs: Mapping[str, str | tuple[str, str, str]]
) -> dict[str, np.ndarray | Summary]:
    """One run: plain outputs as arrays, reduced ones as Summary."""
    names: list[str] = []
    for out in outputs.values():
        names.extend(out if isinstance(out, tuple) else (out,))
    values = session.run(feed, names)
    result: dict[str, np.ndarray | Summary] = {}
    for name, out in outputs.items():
        if isinstance(out, tuple):
            low, high, shape = (values[o] for o in out)
            result[name] = Summary(float(low), float(high), tuple(int(d) for d in shape))
        else:
            result[name] = values[out]
    return result


# ---------------------------------------------------------------------------
# Feeds


def _feed_factory(
    feeds: FeedSource, model: ir.Model, limit: int | None
) -> tuple[Callable[[], Iterator[Feed]] | None, Iterator[Feed] | None]:
    """A factory of fresh iterators when the source can be read again, else one iterator."""
    if isinstance(feeds, (str, os.PathLike)):
        path = Path(feeds)
        return (lambda: _limited(open_feed_path(path, model, limit), limit)), None
    if isinstance(feeds, Mapping):
        return (lambda: iter([dict(feeds)])), None
    if callable(feeds) and not hasattr(feeds, "__iter__"):
        return (lambda: _limited(iter(feeds()), limit)), None
    if isinstance(feeds, Iterator) or getattr(
        feeds, "_once", False
    ):  # a generator, or a FeedStream over one
        return None, _limited(iter(feeds), limit)  # type: ignore[arg-type]
    return (lambda: _limited(iter(feeds), limit)), None  # type: ignore[arg-type]


def open_feed_path(path: Path, model: ir.Model, limit: int | None = None) -> Iterator[Feed]:
    """Feeds from a calibration data path, through the engine's readers."""
    return iter(open_feeds(path, model, limit=limit))


def _limited(iterator: Iterator[Feed], limit: int | None) -> Iterator[Feed]:
    return iterator if limit is None else islice(iterator, limit)


def _chain_first(first: Feed, rest: Iterator[Feed]) -> Iterator[Feed]:
    yield first
    yield from rest


def _length(feeds: FeedSource, limit: int | None) -> int | None:
    try:
        n = len(feeds)  # type: ignore[arg-type]
    except TypeError:
        return limit if isinstance(feeds, (str, os.PathLike)) and limit is not None else None
    return n if limit is None else min(n, limit)


def _as_feed(feed: Mapping[str, np.ndarray]) -> Feed:
    if not isinstance(feed, Mapping):
        raise DataError(
            f"a feed must be a mapping of input name to array, got {type(feed).__name__}"
        )
    return {k: np.asarray(v) for k, v in feed.items()}


# ---------------------------------------------------------------------------
# Grouping by estimated size


def _plan_groups(
    model: ir.Model,
    names: list[str],
    values: Mapping[str, ir.Value],
    first: Feed,
    budget: int,
    reduced: set[str],
) -> list[list[str]]:
    """Names split so that one run's fetched tensors stay under `budget` bytes."""
    symbols: dict[str, int] = {}
    for value in model.graph.inputs:
        array = first.get(value.name or "")
        if array is None or value.shape is None:
            continue
        for dim, size in zip(value.shape, np.shape(array), strict=False):
            if isinstance(dim, ir.SymbolicDim) and dim.value:
                symbols[dim.value] = int(size)
    largest_input = max([int(np.size(a)) for a in first.values()] or [1])
    groups: list[list[str]] = []
    current: list[str] = []
    used = 0
    for name in names:
        size = 64 if name in reduced else _estimate_bytes(values[name], symbols, largest_input)
        if current and used + size > budget:
            groups.append(current)
            current, used = [], 0
        current.append(name)
        used += size
    if current:
        groups.append(current)
    return groups


def _estimate_bytes(value: ir.Value, symbols: Mapping[str, int], largest_input: int) -> int:
    """Bytes of one fetched tensor: declared dims, the first feed's sizes for dims named
    like an input's, 1 for other free dims; the largest input's size when no shape is known."""
    itemsize = value.dtype.itemsize if value.dtype is not None else 4
    if value.shape is None:
        return math.ceil(itemsize * largest_input)  # itemsize is fractional for 4-bit types
    elements = 1
    for dim in value.shape:
        if isinstance(dim, int):
            elements *= max(dim, 1)
        else:
            elements *= symbols.get(getattr(dim, "value", None) or "", 1)
    return int(math.ceil(itemsize * elements))


# ---------------------------------------------------------------------------
# The probe model: wanted values exposed as main-graph outputs


def _probe_model(
    model: ir.Model, names: list[str], reduced: set[str] | frozenset[str] = frozenset()
) -> tuple[ir.Model, dict[str, str | tuple[str, str, str]]]:
    """A clone whose main graph outputs every named value (or, for `reduced` names, its
    min, max and shape); returns it and name -> output name(s)."""
    probe = model.clone()
    values = float_values(probe)
    values.update({v.name: v for v in probe.graph.outputs if v.name})
    owners = _subgraph_owners(probe)
    graph_of = _graph_of_values(probe)
    exposed: dict[str, ir.Value] = {}
    pending: dict[int, list[tuple[str, ir.Value]]] = {}
    for name in names:
        value = values[name]
        graph = graph_of[id(value)]
        if graph is probe.graph:
            exposed[name] = value
        else:
            pending.setdefault(id(graph), []).append((name, value))
    # Innermost bodies first: threading a value out of a body makes it a value of the parent.
    graphs = {id(g): g for g in iter_graphs(probe) if isinstance(g, ir.Graph)}
    counter = [0]
    while pending:
        deepest = max(pending, key=lambda gid: _depth(gid, owners))
        node, parent = owners[deepest]
        by_node: dict[int, list[tuple[str, ir.Value]]] = {}
        for gid in list(pending):
            if owners.get(gid, (None,))[0] is node:
                by_node[gid] = pending.pop(gid)
        outer = _thread_out(node, parent, by_node, graphs, owners, counter)
        for name, value in outer:
            if parent is probe.graph:
                exposed[name] = value
            else:
                pending.setdefault(id(parent), []).append((name, value))
    outputs: dict[str, str | tuple[str, str, str]] = {}
    present = {id(v) for v in probe.graph.outputs}
    for name, value in exposed.items():
        if name in reduced:
            outputs[name] = _reduce(probe.graph, value, counter)
            continue
        if id(value) not in present:
            if not value.name:
                value.name = _fresh(counter)
            probe.graph.outputs.append(value)
            present.add(id(value))
        outputs[name] = value.name or name
    return probe, outputs


def _reduce(graph: ir.Graph, value: ir.Value, counter: list[int]) -> tuple[str, str, str]:
    """Append ReduceMin, ReduceMax (over all axes) and Shape of `value` as graph outputs."""
    names = []
    for op, attributes in (
        ("ReduceMin", {"keepdims": 0}),
        ("ReduceMax", {"keepdims": 0}),
        ("Shape", {}),
    ):
        node = ir.node(op, [value], attributes, name=_fresh(counter))
        graph.append(node)
        out = node.outputs[0]
        out.name = _fresh(counter)
        graph.outputs.append(out)
        names.append(out.name)
    return names[0], names[1], names[2]


def _subgraph_owners(model: ir.Model) -> dict[int, tuple[ir.Node, ir.Graph]]:
    owners: dict[int, tuple[ir.Node, ir.Graph]] = {}
    for graph in iter_graphs(model):
        if not isinstance(graph, ir.Graph):
            continue
        for node in graph:
            for attr in node.attributes.values():
                if attr.type == ir.AttributeType.GRAPH:
                    owners[id(attr.as_graph())] = (node, graph)
                elif attr.type == ir.AttributeType.GRAPHS:
                    for sub in attr.as_graphs():
                        owners[id(sub)] = (node, graph)
    return owners


def _graph_of_values(model: ir.Model) -> dict[int, ir.Graph]:
    where: dict[int, ir.Graph] = {}
    for graph in iter_graphs(model):
        if not isinstance(graph, ir.Graph):
            continue
        for value in graph.inputs:
            where[id(value)] = graph
        for node in graph:
            for value in node.outputs:
                where[id(value)] = graph
    return where


def _depth(graph_id: int, owners: Mapping[int, tuple[ir.Node, ir.Graph]]) -> int:
    depth = 0
    while graph_id in owners:
        graph_id = id(owners[graph_id][1])
        depth += 1
    return depth


def _fresh(counter: list[int]) -> str:
    counter[0] += 1
    return f"{_PREFIX}_{counter[0]}"


def _flatten(graph: ir.Graph, value: ir.Value, counter: list[int]) -> ir.Value:
    """Append nodes computing float32 reshape(value, [-1]) to `graph`."""
    source = value
    if value.dtype != ir.DataType.FLOAT:
        cast = ir.node("Cast", [value], {"to": ir.DataType.FLOAT}, name=_fresh(counter))
        graph.append(cast)
        source = cast.outputs[0]
        source.name = _fresh(counter)
    shape = ir.node(
        "Constant", [], {"value": ir.tensor(np.array([-1], dtype=np.int64))}, name=_fresh(counter)
    )
    graph.append(shape)
    shape.outputs[0].name = _fresh(counter)
    reshape = ir.node("Reshape", [source, shape.outputs[0]], name=_fresh(counter))
    graph.append(reshape)
    flat = reshape.outputs[0]
    flat.name = _fresh(counter)
    flat.dtype = ir.DataType.FLOAT
    flat.shape = ir.Shape([None])
    return flat


def _empty(graph: ir.Graph, counter: list[int]) -> ir.Value:
    node = ir.node(
        "Constant", [], {"value": ir.tensor(np.zeros(0, dtype=np.float32))}, name=_fresh(counter)
    )
    graph.append(node)
    out = node.outputs[0]
    out.name = _fresh(counter)
    out.dtype = ir.DataType.FLOAT
    out.shape = ir.Shape([0])
    return out


def _thread_out(
    node: ir.Node,
    parent: ir.Graph,
    by_graph: Mapping[int, list[tuple[str, ir.Value]]],
    graphs: Mapping[int, ir.Graph],
    owners: Mapping[int, tuple[ir.Node, ir.Graph]],
    counter: list[int],
) -> list[tuple[str, ir.Value]]:
    """Make the wanted body values of `node` into (flattened) values of `parent`."""
    op = node.op_type
    if node.domain not in ("", "ai.onnx") or op not in ("If", "Loop", "Scan"):
        raise DataError(f"cannot calibrate inside the subgraph of {op} node {node.name!r}")
    items = [
        (name, value, graphs[gid]) for gid, entries in by_graph.items() for name, value in entries
    ]
    if op == "If":
        branches = [
            node.attributes["then_branch"].as_graph(),
            node.attributes["else_branch"].as_graph(),
        ]
        for _name, value, body in items:
            for branch in branches:
                branch.outputs.append(
                    _flatten(branch, value, counter) if branch is body else _empty(branch, counter)
                )
        first_new = len(node.outputs)
        node.resize_outputs(first_new + len(items))
        return _name_new_outputs(node, first_new, items, counter)
    if op == "Scan":
        body = node.attributes["body"].as_graph()
        for _, value, _ in items:
            body.outputs.append(_flatten(body, value, counter))
        for key in ("scan_output_axes", "scan_output_directions"):
            if key in node.attributes:
                current = list(node.attributes[key].as_ints())
                node.attributes[key] = ir.AttrInt64s(key, current + [0] * len(items))
        first_new = len(node.outputs)
        node.resize_outputs(first_new + len(items))
        return _name_new_outputs(node, first_new, items, counter)
    return _thread_out_of_loop(node, parent, items, counter)


def _name_new_outputs(
    node: ir.Node, first_new: int, items: list[tuple[str, ir.Value, ir.Graph]], counter: list[int]
) -> list[tuple[str, ir.Value]]:
    result = []
    for offset, (name, _, _) in enumerate(items):
        out = node.outputs[first_new + offset]
        out.name = _fresh(counter)
        out.dtype = ir.DataType.FLOAT
        result.append((name, out))
    return result


def _thread_out_of_loop(
    node: ir.Node, parent: ir.Graph, items: list[tuple[str, ir.Value, ir.Graph]], counter: list[int]
) -> list[tuple[str, ir.Value]]:
    """Rebuild a Loop with one extra loop-carried accumulator per wanted value."""
    body = node.attributes["body"].as_graph()
    carried = len(node.inputs) - 2
    initial = []
    for offset, (_, value, _) in enumerate(items):
        acc_in = ir.Value(
            name=_fresh(counter), type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([None])
        )
        body.inputs.insert(2 + carried + offset, acc_in)
        flat = _flatten(body, value, counter)
        concat = ir.node("Concat", [acc_in, flat], {"axis": 0}, name=_fresh(counter))
        body.append(concat)
        acc_out = concat.outputs[0]
        acc_out.name = _fresh(counter)
        acc_out.dtype = ir.DataType.FLOAT
        body.outputs.insert(1 + carried + offset, acc_out)
        empty = ir.node(
            "Constant",
            [],
            {"value": ir.tensor(np.zeros(0, dtype=np.float32))},
            name=_fresh(counter),
        )
        parent.insert_before(node, empty)
        empty.outputs[0].name = _fresh(counter)
        initial.append(empty.outputs[0])
    k = len(items)
    old_outputs = list(node.outputs)
    replacement = ir.Node(
        node.domain,
        node.op_type,
        [*node.inputs, *initial],
        attributes=list(node.attributes.values()),
        num_outputs=len(old_outputs) + k,
        name=node.name,
        version=node.version,
    )
    parent.insert_before(node, replacement)
    for i, old in enumerate(old_outputs):
        new = replacement.outputs[i if i < carried else i + k]
        name, old.name = old.name, None
        new.name, new.type, new.shape = name, old.type, old.shape
        old.replace_all_uses_with(new, replace_graph_outputs=True)
    parent.remove(node, safe=True)
    result = []
    for offset, (name, _, _) in enumerate(items):
        out = replacement.outputs[carried + offset]
        out.name = _fresh(counter)
        out.dtype = ir.DataType.FLOAT
        result.append((name, out))
    return result
