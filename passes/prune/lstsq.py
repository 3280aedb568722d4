"""Ridge least squares on normal equations, restricted to the weights a mask keeps.

For one output column o with kept input set S_o (plus the intercept), solve

    (G_SS + lam I) w_S = c_S + lam w0_S

where G = [X 1]^T [X 1] and c = [X 1]^T y come from the calibration rows and w0
is the current (pruned) weight: the ridge term pulls towards what pruning left,
not towards zero, so a layer with few rows changes little. lam is a relative
strength times the mean diagonal of G, which makes it independent of the
activation scale.

The relative strength matters: a Gemm after global pooling sees one row per
sample, as many rows as it has weights per output, and overfits without it,
while a Conv sees thousands of rows per sample. So by default it is chosen per
layer: fitted on all but the held-out samples for each value of a grid, scored
on the held-out samples, and the best one refit on everything.

Columns that share a support (channel pruning, dense layers) are solved in one
multi-right-hand-side solve. Distinct supports (unstructured, N:M) are solved
exactly, one padded system per column in one batched call, when that is cheap,
and otherwise by preconditioned conjugate gradients run on all columns at once
(each iteration is one G @ P product, warm-started from the pruned weights),
which scales to 4096-wide layers. The ridge grid search scores the dense
(unmasked) problem held to the support, a proxy that costs one solve per value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DIRECT_FLOPS = 4e9  # above this, per-column exact solves give way to batched PCG
BATCH_BYTES = 256 << 20  # memory for one batch of padded per-column systems
PCG_ITERATIONS = 40  # warm-started from the pruned weights; most of the gain comes early
PCG_TOLERANCE = 1e-5
RIDGE_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
WIDE_GRID = (
    1e-3,
    1e-2,
    1e-1,
)  # for layers over WIDE_COLUMNS inputs, where each solve costs seconds
WIDE_COLUMNS = 2048
FALLBACK_RIDGE = 1e-2  # when there is nothing held out to choose on


@dataclass(frozen=True)
class Stats:
    """Normal-equation sums of one group: gram [K+1, K+1], cross [K+1, O], target_sq [O]."""

    gram: np.ndarray
    cross: np.ndarray
    target_sq: np.ndarray
    rows: int


@dataclass(frozen=True)
class Fit:
    weight: np.ndarray  # [O, K]
    bias: np.ndarray | None  # [O]
    error_before: float  # squared error on the calibration rows / target energy
    error_after: float
    ridge: float  # the relative strength used


def solve(
    total: Stats,
    holdout: Stats | None,
    w0: np.ndarray,
    b0: np.ndarray | None,
    mask: np.ndarray | None,
    *,
    ridge: float | None,
    intercept: bool,
    iterations: int = PCG_ITERATIONS,
    direct_flops: float = DIRECT_FLOPS,
) -> Fit:
    """Refit one group: w0 [O, K], b0 [O] or None, mask [O, K] (None: all weights free)."""
    K = w0.shape[1]
    start = (
        np.concatenate([w0, (b0 if b0 is not None else np.zeros(len(w0)))[:, None]], axis=1)
        if intercept
        else w0.copy()
    )
    start = start.astype(np.float64)
    full = np.ones(start.shape, dtype=bool)
    if mask is not None:
        full[:, :K] = mask
    masked = not full.all()
    if ridge is None:
        ridge = _choose_ridge(total, holdout, start, full, K, intercept, masked)
    W = _solve(total, start, full, K, intercept, ridge, masked, iterations, direct_flops)
    before = _error(total, start, K, intercept)
    after = _error(total, W, K, intercept)
    if after > before:  # never hand back something worse on the rows we fitted
        W, after = start, before
    return Fit(W[:, :K], W[:, K] if intercept else None, before, after, ridge)


def _system(
    stats: Stats, start: np.ndarray, K: int, intercept: bool, ridge: float
) -> tuple[np.ndarray, np.ndarray]:
    size = K + 1 if intercept else K
    gram, cross = stats.gram[:size, :size], stats.cross[:size]
    scale = float(np.mean(np.diag(gram)[:K])) if K else 1.0
    lam = ridge * scale if scale > 0 else 1e-12
    regular = np.full(size, lam)
    if intercept:
        regular[K] = lam * 1e-6
    return gram + np.diag(regular), cross + regular[:, None] * start.T


def _solve(
    stats: Stats,
    start: np.ndarray,
    mask: np.ndarray,
    K: int,
    intercept: bool,
    ridge: float,
    masked: bool,
    iterations: int = PCG_ITERATIONS,
    direct_flops: float = DIRECT_FLOPS,
) -> np.ndarray:
    A, B = _system(stats, start, K, intercept, ridge)
    if not masked:
        return np.linalg.solve(A, B).T
    return _masked(A, B, mask, start, iterations, direct_flops)


def _choose_ridge(
    total: Stats,
    holdout: Stats | None,
    start: np.ndarray,
    mask: np.ndarray,
    K: int,
    intercept: bool,
    masked: bool,
) -> float:
    """The grid value whose fit on the other samples scores best on the held-out ones."""
    if holdout is None or holdout.rows == 0 or holdout.rows == total.rows:
        return FALLBACK_RIDGE
    train = Stats(
        total.gram - holdout.gram,
        total.cross - holdout.cross,
        total.target_sq - holdout.target_sq,
        total.rows - holdout.rows,
    )
    best, best_error = FALLBACK_RIDGE, np.inf
    for ridge in RIDGE_GRID if K <= WIDE_COLUMNS else WIDE_GRID:
        W = _solve(train, start, mask, K, intercept, ridge, False)
        if masked:
            W = W * mask  # the dense proxy, held to the support when scored
        error = _error(holdout, W, K, intercept)
        if error < best_error:
            best, best_error = ridge, error
    return best


def _direct_cost(mask: np.ndarray) -> float:
    return len(mask) * float(mask.sum(axis=1).max()) ** 3 / 3


def _masked(
    A: np.ndarray,
    B: np.ndarray,
    mask: np.ndarray,
    start: np.ndarray,
    iterations: int = PCG_ITERATIONS,
    direct_flops: float = DIRECT_FLOPS,
) -> np.ndarray:
    """Exact solves on each column's support (one batched call) when cheap, else batched PCG."""
    width = int(mask.sum(axis=1).max())
    if _direct_cost(mask) > direct_flops:
        return _pcg(A, B, mask, start, iterations)
    W = np.zeros_like(start)
    chunk = max(1, int(BATCH_BYTES // (8 * width * width)))
    for first in range(0, len(mask), chunk):
        cols = range(first, min(first + chunk, len(mask)))
        systems = np.zeros((len(cols), width, width))
        rhs = np.zeros((len(cols), width, 1))
        supports = []
        for j, o in enumerate(cols):
            support = np.flatnonzero(mask[o])
            n = len(support)
            systems[j, :n, :n] = A[np.ix_(support, support)]
            systems[j, range(n, width), range(n, width)] = 1.0  # padding solves to zero
            rhs[j, :n, 0] = B[support, o]
            supports.append(support)
        solved = np.linalg.solve(systems, rhs)[..., 0]
        for j, o in enumerate(cols):
            W[o, supports[j]] = solved[j, : len(supports[j])]
    return W


def _pcg(
    A: np.ndarray,
    B: np.ndarray,
    mask: np.ndarray,
    start: np.ndarray,
    iterations: int = PCG_ITERATIONS,
) -> np.ndarray:
    """Jacobi-preconditioned CG on every column's restricted system at once."""
    M = mask.T.astype(np.float64)  # [K+1, O]
    X = start.T * M
    diag = np.diag(A)[:, None]
    R = M * (B - A @ X)
    Z = R / diag
    P = Z.copy()
    rz = np.sum(R * Z, axis=0)
    norm0 = np.sqrt(np.sum(B * B * M, axis=0)) + 1e-300
    A32 = A.astype(
        np.float32
    )  # the G @ P products dominate; float32 halves them, sums stay float64
    for _ in range(iterations):
        AP = M * (A32 @ P.astype(np.float32)).astype(np.float64)
        denom = np.sum(P * AP, axis=0)
        alpha = np.where(denom > 0, rz / np.where(denom > 0, denom, 1), 0.0)
        X += alpha * P
        R -= alpha * AP
        if np.all(np.sqrt(np.sum(R * R, axis=0)) <= PCG_TOLERANCE * norm0):
            break
        Z = R / diag
        rz_new = np.sum(R * Z, axis=0)
        beta = np.where(rz > 0, rz_new / np.where(rz > 0, rz, 1), 0.0)
        P = Z + beta * P
        rz = rz_new
    return X.T


def _error(stats: Stats, W: np.ndarray, K: int, intercept: bool) -> float:
    """Squared error over the rows of `stats`, relative to the targets' energy."""
    size = K + 1 if intercept else K
    gram, cross = stats.gram[:size, :size], stats.cross[:size]
    quad = float(np.sum((W @ gram) * W))
    lin = 2 * float(np.sum(W * cross.T))
    energy = float(np.sum(stats.target_sq))
    return float(max(quad - lin + energy, 0.0) / energy) if energy > 0 else 0.0
