"""How much input each weight column of a Conv / Gemm / MatMul multiplies, on calibration data.

Why: the weight that matters is not the largest one but the one whose removal or
rounding moves the layer's output most. For one column j of W (an input row's feature),
that movement is |dW_oj| times the spread of x_j over the data: the diagonal of the
layer's Hessian X^T X. Pruning (Wanda's score |W_oj| ||x_j||) and clustering
(SqueezeLLM's sensitivity-weighted k-means) both need only that diagonal, which costs
R x K per layer where the full X^T X of the least-squares refits costs R x K^2: a
512-channel 3x3 conv (4608 columns) that the refits leave out gets it in one pass.

Centered: a layer whose bias is refit (prune's least squares, cluster's palette
refinement) absorbs the mean of each column's contribution, so what is left to lose is
the column's variance, sum (x_j - mean_j)^2. `centered()` gives that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from onnxslim.activations import NormalEquations, iter_layer_rows
from onnxslim.feeds import Feed
from onnxslim.layer_rows import layer_geometry


@dataclass
class ColumnEnergy:
    """Per group and column of one layer: sum of x^2 and sum of x over `rows` input rows."""

    square: np.ndarray  # [g, K]
    total: np.ndarray  # [g, K]
    rows: int

    def centered(self) -> np.ndarray:
        """[g, K]: sum over rows of (x_j - mean_j)^2 (never negative)."""
        if self.rows <= 0:
            return np.zeros_like(self.square)
        return np.maximum(self.square - self.total * self.total / self.rows, 0.0)

    @classmethod
    def of(cls, sums: NormalEquations) -> ColumnEnergy | None:
        """The diagonal of a refit's normal equations [X 1]^T [X 1] (no second pass)."""
        if sums.total is None or sums.total.rows == 0:
            return None
        gram = sums.total.gram  # [g, K+1, K+1], ones column last
        diagonal = np.diagonal(gram, axis1=1, axis2=2)
        return cls(diagonal[:, :-1].copy(), gram[:, :-1, -1].copy(), sums.total.rows)


def measurable(model: ir.Model, node_names: Sequence[str]) -> list[str]:
    """The named nodes whose input rows can be read (a Conv / Gemm / MatMul geometry)."""
    nodes = {n.name: n for n in model.graph if n.name}
    return [n for n in node_names if n in nodes and layer_geometry(nodes[n]) is not None]


def column_energy(
    model: ir.Model,
    node_names: Sequence[str],
    feeds: Sequence[Feed],
    *,
    max_rows: int = 4096,
    seed: int = 0,
    groups: Mapping[str, int] | None = None,
) -> dict[str, ColumnEnergy]:
    """ColumnEnergy of each named layer (see `measurable`) from one ORT pass over `feeds`.

    `groups[name]`: the Conv's group count (columns are per group, as in the refits).
    """
    result: dict[str, ColumnEnergy] = {}
    if not node_names or not feeds:
        return result
    for name, X, _, _ in iter_layer_rows(
        model,
        node_names,
        feeds,
        max_rows=max_rows,
        seed=seed,
        max_batch=32,
        outputs=None,
        target_model=None,
    ):
        if len(X) == 0:
            continue
        g = (groups or {}).get(name, 1)
        rows = np.asarray(X, dtype=np.float64).reshape(len(X), g, -1)
        square, total = np.sum(rows * rows, axis=0), np.sum(rows, axis=0)
        if name in result:
            found = result[name]
            found.square += square
            found.total += total
            found.rows += len(X)
        else:
            result[name] = ColumnEnergy(square, total, len(X))
    return result
