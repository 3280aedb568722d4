"""GPTQ's column-by-column error feedback, shared by int8 weight rounding and palette assignment.

Both choose each column of a weight [N, K] (rows = output channels, columns = inputs) from
a discrete set, an int8 grid (passes/quantize/rounding.py) or a palette
(passes/cluster/assign.py), minimising sum over rows of (w - q)^T H (w - q), H = X^T X of
the layer's inputs: greedily, column by column, each column's error pushed onto the columns
not chosen yet through the upper Cholesky factor of H's damped inverse (Frantar et al.
2022), the updates of a block of columns batched into one product.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

BLOCK = 128  # columns whose error feedback is batched into one product
DAMP = 0.01  # of the mean diagonal: keeps H invertible where inputs are constant


def inverse_factor(hessian: np.ndarray) -> np.ndarray | None:
    """Upper Cholesky factor of (H + damping)^-1, dead columns (no input energy) made
    harmless; None when H cannot be inverted."""
    h = hessian.astype(np.float64).copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    h[np.diag_indices_from(h)] += DAMP * float(np.mean(np.diag(h)))
    try:
        return np.linalg.cholesky(np.linalg.inv(h)).T
    except np.linalg.LinAlgError:
        return None


def feed_back_errors(
    w: np.ndarray, upper: np.ndarray, quantize: Callable[[int, np.ndarray], np.ndarray]
) -> None:
    """Quantize the columns of `w` in order, updating `w` in place with each column's error.

    `quantize(k, column)` is called once per column k with the column as the errors of the
    columns before it left it, records its choice, and returns the values chosen (the
    column's quantized weights)."""
    columns = w.shape[1]
    for first in range(0, columns, BLOCK):
        last = min(first + BLOCK, columns)
        block = w[:, first:last].copy()
        errors = np.zeros_like(block)
        inverse = upper[first:last, first:last]
        for i in range(last - first):
            column = block[:, i]
            error = (column - quantize(first + i, column)) / inverse[i, i]
            block[:, i:] -= np.outer(error, inverse[i, i:])
            errors[:, i] = error
        w[:, last:] -= errors @ upper[first:last, last:]
