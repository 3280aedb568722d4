"""Capture what a layer sees and produces on ONNX Runtime, for training-free refitting.

Pruning reconstruction and cluster-palette refinement both solve least-squares
problems of the form  min ||X W^T + b - Y||  where X are a layer's input rows (a
Conv's unfolded patches, a MatMul's input vectors) and Y the outputs it should
produce. This module gets X and Y from ORT on calibration feeds:

- `layer_geometry(node)` (in layer_rows.py) says how a Conv / Gemm / MatMul input
  becomes rows whose columns line up with the flattened weight `W.reshape(out, -1)`
  (grouped convs split into per-group column blocks).
- `capture_layer_io(model, nodes, feeds, max_rows=...)` returns subsampled rows
  {node: LayerIO(X, Y)} for small problems and for inspection.
- `accumulate_normal_equations(...)` streams X^T X and X^T Y per layer (and per
  group), so memory stays flat however many feeds there are. X may come from one
  model (say, the pruned one) and Y from another (the original, the teacher), at
  the same sampled positions; that is what sequential reconstruction needs.
- `channel_mean_squares(...)` gives E[x_c^2] per channel of chosen values.

Feeds whose inputs all have a free leading dimension are concatenated into
batches, so ORT runs few large batches instead of many single samples; except in
models whose control flow reads the data (an If on the feed's mean picks one branch
for the whole batch: batching would change what each sample computes).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from onnxslim.errors import DataError
from onnxslim.feeds import Feed, input_specs
from onnxslim.layer_rows import LayerGeometry, layer_geometry
from onnxslim.runtime import Session, SessionConfig

DEFAULT_BATCH = 32
# Tapping runs at the deployed level: ORT keeps any value that is a graph output.
TAP_CONFIG = SessionConfig(threads=1, optimization="all")


@dataclass
class LayerIO:
    """Sampled input rows X [R, K] and output rows Y [R, out] of one layer."""

    X: np.ndarray
    Y: np.ndarray


@dataclass
class GramSums:
    """[X 1]^T [X 1], [X 1]^T Y and sum(Y^2) per group, over some rows (float64)."""

    gram: np.ndarray  # [g, K+1, K+1]
    cross: np.ndarray  # [g, K+1, O_g]
    target_sq: np.ndarray  # [g, O_g]
    rows: int = 0

    @classmethod
    def of(cls, Xa: np.ndarray, Yg: np.ndarray) -> GramSums:
        """From rows already split per group: Xa [g, R, K+1] (ones column last), Yg [g, R, O_g]."""
        Xt = Xa.transpose(0, 2, 1)
        return cls(np.matmul(Xt, Xa), np.matmul(Xt, Yg), np.sum(Yg * Yg, axis=1), Xa.shape[1])

    def __iadd__(self, other: GramSums) -> GramSums:
        self.gram += other.gram
        self.cross += other.cross
        self.target_sq += other.target_sq
        self.rows += other.rows
        return self

    def __sub__(self, other: GramSums) -> GramSums:
        return GramSums(
            self.gram - other.gram,
            self.cross - other.cross,
            self.target_sq - other.target_sq,
            self.rows - other.rows,
        )


@dataclass
class NormalEquations:
    """Streaming sums for ridge least squares, per group: [X 1]^T [X 1] and [X 1]^T Y.

    `gram[g]` is (K_g + 1) x (K_g + 1) and `cross[g]` is (K_g + 1) x O_g; the last
    row/column is the intercept. `holdout` holds the same sums over the rows of
    held-out samples (a subset of all rows, whole samples, never split), so a
    solver can pick its regularisation on data it did not fit.
    """

    groups: int
    total: GramSums | None = None
    holdout: GramSums | None = None

    @property
    def gram(self) -> np.ndarray | None:
        return self.total.gram if self.total is not None else None

    @property
    def cross(self) -> np.ndarray | None:
        return self.total.cross if self.total is not None else None

    @property
    def target_sq(self) -> np.ndarray | None:
        return self.total.target_sq if self.total is not None else None

    @property
    def rows(self) -> int:
        return self.total.rows if self.total is not None else 0

    def add(self, X: np.ndarray, Y: np.ndarray, holdout: np.ndarray | None = None) -> None:
        """Fold rows in; `holdout` marks rows of held-out samples (boolean per row)."""
        if len(X) == 0:
            return
        g = self.groups
        X = np.asarray(X, dtype=np.float64).reshape(len(X), g, -1)
        Y = np.asarray(Y, dtype=np.float64).reshape(len(Y), g, -1)
        Xa = np.concatenate([X, np.ones((len(X), g, 1))], axis=2).transpose(1, 0, 2)  # [g, R, K+1]
        Yg = Y.transpose(1, 0, 2)  # [g, R, O_g]
        sums = GramSums.of(Xa, Yg)
        if self.total is None:
            self.total = sums
        else:
            self.total += sums
        if holdout is not None:
            held = GramSums.of(Xa[:, holdout], Yg[:, holdout])
            if self.holdout is None:
                self.holdout = held
            else:
                self.holdout += held


_CONTROL_FLOW = ("If", "Loop", "Scan")
_SHAPE_ONLY = ("Shape", "Size")  # their outputs do not depend on the values of the batch


def batch_coupled(model: ir.Model) -> bool:
    """True when a control-flow decision depends on input values, not only shapes.

    Such a decision is taken once per run, for the whole batch (digits_gated's If
    tests ReduceMean(input) > t), so samples of a coalesced batch could take another
    branch or trip count than they take alone. Conditions read through Shape/Size only
    (sequence-length loops) are the same for every batch of equal shapes.
    """
    graph = model.graph
    inputs = {id(v) for v in graph.inputs if v.name not in graph.initializers}
    for node in graph:
        if node.domain not in ("", "ai.onnx") or node.op_type not in _CONTROL_FLOW:
            continue
        decisions = node.inputs[:1] if node.op_type == "If" else node.inputs[:2]
        if node.op_type == "Scan" or any(
            _reads_values(v, inputs) for v in decisions if v is not None
        ):
            return True
    return False


def _reads_values(value: ir.Value, inputs: set[int]) -> bool:
    """Whether `value` depends on the values (not just the shapes) of the graph inputs."""
    seen: set[int] = set()
    stack = [value]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if id(current) in inputs:
            return True
        producer = current.producer()
        if producer is None or producer.op_type in _SHAPE_ONLY:
            continue
        stack.extend(v for v in producer.inputs if v is not None)
    return False


def coalesce_feeds(
    model: ir.Model, feeds: Sequence[Feed], max_batch: int = DEFAULT_BATCH
) -> list[Feed]:
    """Concatenate feeds along the leading axis when every input's leading dim is free.

    Models with a fixed batch, inputs of other ranks, or feeds of unequal shapes are
    returned feed by feed.
    """
    feeds = list(feeds)
    if max_batch <= 1 or len(feeds) <= 1 or batch_coupled(model):
        return feeds
    specs = input_specs(model)
    if not specs or any(
        s.shape is None or not s.shape or isinstance(s.shape[0], int) for s in specs
    ):
        return feeds
    first = feeds[0]
    for feed in feeds:
        for spec in specs:
            a = feed.get(spec.name)
            if (
                a is None
                or spec.shape is None
                or np.ndim(a) != len(spec.shape)
                or np.shape(a)[1:] != np.shape(first[spec.name])[1:]
            ):
                return feeds
    out = []
    for start in range(0, len(feeds), max_batch):
        chunk = feeds[start : start + max_batch]
        out.append(
            {s.name: np.concatenate([np.asarray(f[s.name]) for f in chunk], axis=0) for s in specs}
        )
    return out


class Tap:
    """An ORT session over `model` that also returns the named intermediate values.

    The model is only borrowed: the extra outputs are removed again once the
    session is built.
    """

    def __init__(
        self, model: ir.Model, names: Sequence[str], config: SessionConfig = TAP_CONFIG
    ) -> None:
        graph = model.graph
        values = _values_by_name(graph)
        inputs = {v.name for v in graph.inputs}
        missing = [n for n in names if n not in values and n not in inputs]
        if missing:
            raise KeyError(f"no value named {missing[0]!r} in the model")
        self.from_feed = [n for n in names if n in inputs]
        existing = {v.name for v in graph.outputs}
        added = [values[n] for n in dict.fromkeys(names) if n not in inputs and n not in existing]
        graph.outputs.extend(added)
        try:
            self.session = Session(model, config)
        finally:
            for _ in added:
                graph.outputs.pop()
        self.names = [n for n in names if n not in inputs]

    def run(self, feed: Feed, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """The tapped values (or the subset `names`) on one feed."""
        wanted = self.names if names is None else [n for n in names if n not in self.from_feed]
        result = self.session.run(feed, wanted) if wanted else {}
        for name in self.from_feed:
            if names is None or name in names:
                result[name] = np.asarray(feed[name])
        return result


def iter_batches(
    model: ir.Model, feeds: Sequence[Feed], max_batch: int = DEFAULT_BATCH
) -> list[Feed]:
    """Feeds ready to run: checked for the model's inputs, then coalesced."""
    feeds = list(feeds)
    if not feeds:
        raise DataError("no calibration feeds")
    names = [s.name for s in input_specs(model)]
    for feed in feeds[:1]:
        missing = [n for n in names if n not in feed]
        if missing:
            raise DataError(
                f"calibration data lacks model input {missing[0]!r} "
                f"(it has {', '.join(sorted(feed)) or 'nothing'})"
            )
    return coalesce_feeds(model, feeds, max_batch)


def sample_positions(total: int, count: int, seed: int, batch_index: int, key: str) -> np.ndarray:
    """Sorted row positions to keep from one batch: the same for every model run on it."""
    if total <= count:
        return np.arange(total)
    rng = np.random.default_rng([seed, batch_index, zlib.crc32(key.encode())])
    return np.sort(rng.choice(total, size=count, replace=False))


def _nodes_by_name(model: ir.Model) -> dict[str, ir.Node]:
    return {n.name: n for n in model.graph if n.name}


def geometries(
    model: ir.Model, node_names: Sequence[str], outputs: Mapping[str, str] | None = None
) -> dict[str, LayerGeometry]:
    """Row geometry of each named node; KeyError/ValueError when one is missing or not a layer."""
    nodes = _nodes_by_name(model)
    result = {}
    for name in node_names:
        if name not in nodes:
            raise KeyError(f"no node named {name!r}")
        geometry = layer_geometry(nodes[name], (outputs or {}).get(name))
        if geometry is None:
            raise ValueError(
                f"node {name!r} ({nodes[name].op_type}) is not a Conv, Gemm or MatMul "
                "with a static weight shape"
            )
        result[name] = geometry
    return result


def capture_layer_io(
    model: ir.Model,
    node_names: Sequence[str],
    feeds: Sequence[Feed],
    *,
    max_rows: int = 4096,
    seed: int = 0,
    max_batch: int = DEFAULT_BATCH,
    outputs: Mapping[str, str] | None = None,
    target_model: ir.Model | Tap | None = None,
    target_columns: Mapping[str, np.ndarray] | None = None,
) -> dict[str, LayerIO]:
    """Sampled input rows and output rows of each layer, at most `max_rows` per layer.

    X comes from `model`; Y from `target_model` (default: the same model; a Tap
    built once may be passed to avoid rebuilding its session) at the same
    positions, restricted to `target_columns[node]` when given (the original
    channels a pruned layer still produces). Rows are spread evenly over batches.
    """
    result: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {n: ([], []) for n in node_names}
    for name, X, Y, _ in iter_layer_rows(
        model,
        node_names,
        feeds,
        max_rows=max_rows,
        seed=seed,
        max_batch=max_batch,
        outputs=outputs,
        target_model=target_model,
        target_columns=target_columns,
    ):
        result[name][0].append(X)
        result[name][1].append(Y)
    return {
        n: LayerIO(
            np.concatenate(xs) if xs else np.zeros((0, 0), np.float32),
            np.concatenate(ys) if ys else np.zeros((0, 0), np.float32),
        )
        for n, (xs, ys) in result.items()
    }


def accumulate_normal_equations(
    model: ir.Model,
    node_names: Sequence[str],
    feeds: Sequence[Feed],
    *,
    target_model: ir.Model | Tap | None = None,
    max_rows: int = 8192,
    seed: int = 0,
    max_batch: int = DEFAULT_BATCH,
    outputs: Mapping[str, str] | None = None,
    target_columns: Mapping[str, np.ndarray] | None = None,
    holdout_every: int = 5,
) -> dict[str, NormalEquations]:
    """Streaming X^T X and X^T Y per layer (and group), X from `model`, Y from `target_model`.

    Same arguments as `capture_layer_io`; at most `max_rows` rows per layer are
    folded in, spread over the batches, so the cost is bounded for any data size.
    Every `holdout_every`-th sample (0: none) is also summed apart as held-out data.
    """
    layers = geometries(model, node_names, outputs)
    sums = {
        n: NormalEquations(groups=layers[n].groups if layers[n].op_type == "Conv" else 1)
        for n in node_names
    }
    for name, X, Y, samples in iter_layer_rows(
        model,
        node_names,
        feeds,
        max_rows=max_rows,
        seed=seed,
        max_batch=max_batch,
        outputs=outputs,
        target_model=target_model,
        target_columns=target_columns,
    ):
        sums[name].add(
            X, Y, samples % holdout_every == holdout_every - 1 if holdout_every else None
        )
    return sums


def iter_layer_rows(
    model: ir.Model,
    node_names: Sequence[str],
    feeds: Sequence[Feed],
    *,
    max_rows: int,
    seed: int,
    max_batch: int,
    outputs: Mapping[str, str] | None,
    target_model: ir.Model | Tap | None,
    target_columns: Mapping[str, np.ndarray] | None = None,
) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(layer, X rows, Y rows, sample index of each row) for every batch and layer."""
    layers = geometries(model, node_names, outputs)
    batches = iter_batches(model, feeds, max_batch)
    per_batch = max(1, -(-max_rows // len(batches)))
    x_names = [g.input_name for g in layers.values()]
    y_names = [g.output_name for g in layers.values()]
    if target_model is None:
        x_tap, y_tap = Tap(model, x_names + y_names), None
    else:
        x_tap = Tap(model, x_names)
        y_tap = target_model if isinstance(target_model, Tap) else Tap(target_model, y_names)
    columns = target_columns or {}
    offset = 0
    for index, batch in enumerate(batches):
        xs = x_tap.run(batch)
        ys = y_tap.run(batch, y_names) if y_tap is not None else xs
        batch_samples = 1
        for name, geometry in layers.items():
            x = xs[geometry.input_name]
            total = geometry.row_count(x)
            batch_samples = int(x.shape[0]) if x.ndim > 1 else 1
            positions = sample_positions(total, per_batch, seed, index, name)
            X = geometry.rows(x, positions)
            Y = geometry.targets(ys[geometry.output_name], positions)
            if name in columns:
                Y = Y[:, columns[name]]
            yield name, X, Y, offset + positions // max(1, total // batch_samples)
        offset += batch_samples


def channel_mean_squares(
    model: ir.Model,
    axes: Mapping[str, int],
    feeds: Sequence[Feed],
    *,
    max_batch: int = DEFAULT_BATCH,
) -> dict[str, np.ndarray]:
    """E[x_c^2] per channel of each named value, `axes[name]` being its channel axis."""
    batches = iter_batches(model, feeds, max_batch)
    tap = Tap(model, list(axes))
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for batch in batches:
        values = tap.run(batch)
        for name, axis in axes.items():
            x = np.moveaxis(np.asarray(values[name], dtype=np.float64), axis, -1)
            x = x.reshape(-1, x.shape[-1])
            sums[name] = sums.get(name, 0.0) + np.sum(x * x, axis=0)
            counts[name] = counts.get(name, 0) + len(x)
    return {n: sums[n] / max(counts[n], 1) for n in axes}


def _values_by_name(graph: ir.Graph) -> dict[str, ir.Value]:
    values: dict[str, ir.Value] = {}
    for node in graph:
        for out in node.outputs:
            if out.name:
                values[out.name] = out
    return values
