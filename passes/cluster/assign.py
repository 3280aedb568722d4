"""Which palette entry each weight takes: chosen column by column with error feedback (GPTVQ).

k-means gives the palette and sends every weight to its nearest entry: optimal for the
weight, not for the layer's output, where the errors of one output channel add up over
correlated inputs. With the layer's input statistics H = X^T X, the input columns are
assigned one at a time and each assignment's error is pushed onto the columns not yet
assigned, weighted by the Cholesky factor of H^-1 (GPTQ, Frantar et al. 2022, with the
palette as the grid: GPTVQ, van Baalen et al. 2024, in one dimension). The palette stays
(the refinement refits it afterwards), only the indices change.

A pruned weight's zeros stay zeros (its palette keeps a zero entry that only they take).
A layer whose rows are fewer than ROWS_PER_COLUMN per input column keeps nearest
assignment: its X^T X would be fitted, not estimated. Cost: X^T X per layer (R x K^2,
one ORT pass for all layers) and K^3 once for its inverse's factor, then N x K^2 per
candidate form: layers over MAX_COLUMNS input columns keep nearest assignment.
Only weights read by Conv / Gemm / MatMul nodes alone (X^T X summed over them) whose palette
groups run along the output channels, and not on the int8 grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import onnx_ir as ir
from threadpoolctl import threadpool_limits

from onnxslim.activations import accumulate_normal_equations
from onnxslim.feeds import Feed
from onnxslim.passes._gptq import feed_back_errors, inverse_factor
from onnxslim.passes.prune.layers import Layer

from .palette import Palettized

MAX_COLUMNS = 1152  # 128 channels x 3x3: above, X^T X and the N x K^2 loop per form cost seconds
MAX_ROWS = 2048
MIN_READER_ROWS = 256  # rows per reader of a weight read by many nodes (summed)
MAX_BITS = 6  # wider palettes: nearest is within a few % of the feedback's error, at 4x its cost
ROWS_PER_COLUMN = 4  # fewer input rows per column: X^T X is a poor estimate, the feedback
# fits the probe feeds, not the data (minilm's attention, 16 feeds of ~20 tokens for 384
# columns, reached 5.0 bits per weight with it where nearest reached 4.0)


@dataclass(frozen=True)
class Hessian:
    """A weight's reader (the first, when several share it), its input statistics X^T X per
    conv group [g, K, K] (summed over the readers), and the upper Cholesky factor of each
    damped inverse (computed once here: every candidate form of the weight reuses it; None
    where H could not be inverted)."""

    layer: Layer
    gram: np.ndarray
    factors: tuple[np.ndarray | None, ...] = ()

    @classmethod
    def of(cls, layer: Layer, gram: np.ndarray) -> Hessian:
        with threadpool_limits(limits=1, user_api="blas"):
            return cls(layer, gram, tuple(inverse_factor(h) for h in gram))


def hessians(
    model: ir.Model,
    readers: dict[str, list[Layer]],
    feeds: Sequence[Feed],
    *,
    max_rows: int = MAX_ROWS,
    rows: dict[str, int] | None = None,
) -> dict[str, Hessian]:
    """Per clustered weight name: X^T X summed over its readers (importance.readers_of), for
    the weights `assign` can take (at most MAX_COLUMNS input columns; `rows`, the rows each
    weight's inputs showed in an earlier pass: too few for ROWS_PER_COLUMN are not read)."""
    chosen: dict[str, list[Layer]] = {}
    for name, found in readers.items():
        w = found[0].array()
        columns = w.size // max(found[0].out_channels, 1)
        seen = (rows or {}).get(name)
        if seen is not None and min(seen, max_rows * len(found)) < ROWS_PER_COLUMN * columns:
            continue
        if columns <= MAX_COLUMNS:
            chosen[name] = found
    names = [layer.name for found in chosen.values() for layer in found]
    if not names or not feeds:
        return {}
    per_reader = max(MIN_READER_ROWS, max_rows // max(len(found) for found in chosen.values()))
    with threadpool_limits(limits=1, user_api="blas"):
        sums = accumulate_normal_equations(
            model, names, feeds, max_rows=per_reader, holdout_every=0
        )
    result = {}
    for name, found in chosen.items():
        totals = [sums[layer.name].total for layer in found]
        if any(total is None or not total.rows for total in totals):
            continue
        counted = sum(total.rows for total in totals if total is not None)
        if counted < ROWS_PER_COLUMN * (totals[0].gram.shape[1] - 1):  # type: ignore[union-attr]
            continue
        gram = sum(total.gram[:, :-1, :-1] for total in totals if total is not None)
        result[name] = Hessian.of(found[0], np.asarray(gram))
    return result


def assign(p: Palettized, weight: np.ndarray, hessian: Hessian) -> Palettized:
    """`p` with its indices chosen by error feedback on `weight` (the float values); `p`
    itself when its palette groups do not follow the reader's output channels."""
    if p.scale is not None or p.bits > MAX_BITS:
        return p
    layer = hessian.layer
    group_of = layer.to_matrix(np.broadcast_to(p.group_of_element(), p.shape))
    if not np.all(group_of == group_of[:, :1]):
        return p
    palettes = p.values().astype(np.float64)[group_of[:, 0]]  # [N, k]: each row's palette
    matrix = layer.to_matrix(weight).astype(np.float64)
    if matrix.shape[0] % hessian.gram.shape[0] or matrix.shape[1] != hessian.gram.shape[1]:
        return p
    # a pruned weight's palettes keep zero as an entry of its own (kmeans keep_zero): in
    # the rows whose palette has it, the zeros stay zeros and nothing else becomes zero
    kept = np.any(palettes == 0, axis=1)
    zeros = (matrix == 0) & kept[:, None] if kept.any() else None
    per_group = matrix.shape[0] // hessian.gram.shape[0]
    indices = np.empty(matrix.shape, np.int64)
    with threadpool_limits(limits=1, user_api="blas"):
        for g, upper in enumerate(hessian.factors):
            rows = slice(g * per_group, (g + 1) * per_group)
            pinned = zeros[rows] if zeros is not None else None
            indices[rows] = sequential_indices(matrix[rows], upper, palettes[rows], pinned)
    chosen = layer.from_matrix(indices, weight.shape).astype(p.indices.dtype)
    return replace(p, indices=np.ascontiguousarray(chosen))


def sequential_indices(
    weight: np.ndarray,
    upper: np.ndarray | None,
    palettes: np.ndarray,
    zeros: np.ndarray | None = None,
) -> np.ndarray:
    """Palette indices [N, K] for weight [N, K] (row n choosing from palettes[n]), minimising
    sum over rows of (w - p[idx])^T H (w - p[idx]) greedily, column by column (GPTQ);
    `upper`: the Cholesky factor of H's damped inverse (`inverse_factor`; None: nearest
    entries).

    `zeros` [N, K]: elements that must take their row's zero entry (a pruned weight's
    zeros), which no other element of a row that has one may take: the pattern survives,
    the error of forcing them is pushed on like any other."""
    w = weight.copy()
    rows = np.arange(len(w))
    distance_to = palettes
    zero_entry = np.argmax(palettes == 0, axis=1)  # [N]: each row's zero entry, if it has one
    if zeros is not None:
        kept = np.any(palettes == 0, axis=1)
        distance_to = palettes.copy()
        distance_to[rows[kept], zero_entry[kept]] = np.inf  # only the pinned zeros take it
    if upper is None:
        nearest = np.abs(w[:, :, None] - distance_to[:, None, :]).argmin(axis=2)
        return np.where(zeros, zero_entry[:, None], nearest) if zeros is not None else nearest
    chosen = np.zeros(w.shape, np.int64)
    shared = (  # one ascending palette for every row: the nearest entry by bisection
        zeros is None
        and bool(np.all(palettes == palettes[:1]))
        and bool(np.all(np.diff(palettes[0]) >= 0))
    )
    bounds = (palettes[0, 1:] + palettes[0, :-1]) / 2 if shared else None

    def to_palette(k: int, column: np.ndarray) -> np.ndarray:
        if bounds is not None:
            pick = np.searchsorted(bounds, column)
        else:
            pick = np.abs(column[:, None] - distance_to).argmin(axis=1)
        if zeros is not None:
            pick = np.where(zeros[:, k], zero_entry, pick)
        chosen[:, k] = pick
        return np.asarray(palettes[rows, pick])

    feed_back_errors(w, upper, to_palette)
    return chosen
