"""Which palette entry each weight takes: chosen column by column with error feedback (GPTVQ).

k-means gives the palette and sends every weight to its nearest entry: optimal for the
weight, not for the layer's output, where the errors of one output channel add up over
correlated inputs. With the layer's input statistics H = X^T X, the input columns are
assigned one at a time and each assignment's error is pushed onto the columns not yet
assigned, weighted by the Cholesky factor of H^-1 (GPTQ, Frantar et al. 2022, with the
palette as the grid: GPTVQ, van Baalen et al. 2024, in one dimension). The palette stays
(the refinement refits it afterwards), only the indices change.

Cost: X^T X per layer (R x K^2, one ORT pass for all layers) and K^3 for its inverse, then
N x K^2 per candidate form: layers over MAX_COLUMNS input columns keep nearest assignment.
Only weights with one Conv / Gemm / MatMul reader whose palette groups run along its output
channels, not pruned ones (zeros kept as zeros) and not on the int8 grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import onnx_ir as ir
from threadpoolctl import threadpool_limits

from onnxslim.activations import accumulate_normal_equations
from onnxslim.column_energy import measurable
from onnxslim.feeds import Feed
from onnxslim.passes.prune.layers import Layer, find_layers

from .palette import Palettized
from .weights import Weight

MAX_COLUMNS = 1152  # 128 channels x 3x3: above, X^T X and the N x K^2 loop per form cost seconds
MAX_ROWS = 2048
DAMP = 0.01  # of the mean diagonal: H stays invertible where inputs are constant
BLOCK = 128
SPARSE = 0.01  # a weight with more exact zeros than this was pruned: zeros must stay


@dataclass(frozen=True)
class Hessian:
    """A weight's only reader and its input statistics X^T X per conv group [g, K, K]."""

    layer: Layer
    gram: np.ndarray


def hessians(
    model: ir.Model, weights: Sequence[Weight], feeds: Sequence[Feed], *, max_rows: int = MAX_ROWS
) -> dict[str, Hessian]:
    """Per clustered weight name: its reader's X^T X, for the weights `assign` can take."""
    readers: dict[str, list[Layer]] = {}
    for layer in find_layers(model, ops=("Conv", "Gemm", "MatMul"))[0]:
        readers.setdefault(layer.weight_name, []).append(layer)
    chosen: dict[str, Layer] = {}
    for weight in weights:
        found = readers.get(weight.name, [])
        if len(found) != 1 or found[0].shared:
            continue
        layer = found[0]
        w = layer.array()
        columns = w.size // max(layer.out_channels, 1)
        if columns <= MAX_COLUMNS and np.count_nonzero(w == 0) <= SPARSE * w.size:
            chosen[layer.name] = layer
    names = measurable(model, list(chosen))
    if not names or not feeds:
        return {}
    with threadpool_limits(limits=1, user_api="blas"):
        sums = accumulate_normal_equations(model, names, feeds, max_rows=max_rows, holdout_every=0)
    result = {}
    for name in names:
        total = sums[name].total
        if total is not None and total.rows:
            result[chosen[name].weight_name] = Hessian(chosen[name], total.gram[:, :-1, :-1])
    return result


def assign(p: Palettized, weight: np.ndarray, hessian: Hessian) -> Palettized:
    """`p` with its indices chosen by error feedback on `weight` (the float values); `p`
    itself when its palette groups do not follow the reader's output channels."""
    if p.scale is not None:
        return p
    layer = hessian.layer
    group_of = layer.to_matrix(np.broadcast_to(p.group_of_element(), p.shape))
    if not np.all(group_of == group_of[:, :1]):
        return p
    palettes = p.values().astype(np.float64)[group_of[:, 0]]  # [N, k]: each row's palette
    matrix = layer.to_matrix(weight).astype(np.float64)
    if matrix.shape[0] % hessian.gram.shape[0] or matrix.shape[1] != hessian.gram.shape[1]:
        return p
    per_group = matrix.shape[0] // hessian.gram.shape[0]
    indices = np.empty(matrix.shape, np.int64)
    with threadpool_limits(limits=1, user_api="blas"):
        for g, h in enumerate(hessian.gram):
            rows = slice(g * per_group, (g + 1) * per_group)
            indices[rows] = sequential_indices(matrix[rows], h, palettes[rows])
    chosen = layer.from_matrix(indices, weight.shape).astype(p.indices.dtype)
    return replace(p, indices=np.ascontiguousarray(chosen))


def sequential_indices(weight: np.ndarray, hessian: np.ndarray, palettes: np.ndarray) -> np.ndarray:
    """Palette indices [N, K] for weight [N, K] (row n choosing from palettes[n]), minimising
    sum over rows of (w - p[idx])^T H (w - p[idx]) greedily, column by column (GPTQ)."""
    w = weight.copy()
    h = hessian.astype(np.float64).copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    h[np.diag_indices_from(h)] += DAMP * float(np.mean(np.diag(h)))
    rows = np.arange(len(w))
    try:
        upper = np.linalg.cholesky(np.linalg.inv(h)).T
    except np.linalg.LinAlgError:
        return np.abs(w[:, :, None] - palettes[:, None, :]).argmin(axis=2)
    chosen = np.zeros(w.shape, np.int64)
    columns = w.shape[1]
    for first in range(0, columns, BLOCK):
        last = min(first + BLOCK, columns)
        block = w[:, first:last].copy()
        errors = np.zeros_like(block)
        inverse = upper[first:last, first:last]
        for i in range(last - first):
            column = block[:, i]
            pick = np.abs(column[:, None] - palettes).argmin(axis=1)
            chosen[:, first + i] = pick
            error = (column - palettes[rows, pick]) / inverse[i, i]
            block[:, i:] -= np.outer(error, inverse[i, i:])
            errors[:, i] = error
        w[:, last:] -= errors @ upper[first:last, last:]
    return chosen
