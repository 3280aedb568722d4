"""Palette refinement: re-fit palette values so each layer reproduces the original outputs.

A clustered layer's weight is W[o, j] = p[g(o), a[o, j]]: palette p, assignment a,
g(o) the palette group of output channel o. The layer output on input rows X is
X W^T + b, linear in p, so the palette that best reproduces the original
layer's outputs Y on calibration rows is a small least-squares problem: one
variable per palette entry (2^bits per group), however large the layer.

With G = X^T X and c_o = X^T y_o (streamed by onnxslim.activations, per conv
group) and the bias eliminated (b_o = (t_o - s^T w_o) / n, with s = X^T 1,
t_o = 1^T y_o, n rows), the loss of row o is w_o^T G' w_o - 2 w_o^T c'_o + const,
G' = G - s s^T / n, c'_o = c_o - s t_o / n. Writing w_o = Z_o p_g, Z_o the
one-hot [K, k] matrix of row o's assignment, each group's normal equations are

    (H_g + lam I) p_g = r_g + lam p0_g,   H_g = sum_o Z_o^T G' Z_o,   r_g = sum_o Z_o^T c'_o

(lam = ridge x mean diag H_g pulls towards the k-means palette p0, which keeps
entries no calibration row reaches where they were). H_g costs 2 K^2 k flops per
row; above REFINE_FLOPS per layer the rows of each group are subsampled.

Layers are refit in dependency order, level by level, with X taken from the
clustered model after the levels before it were refit and Y from the original
model, so each refit also absorbs the error accumulated upstream (the scheme of
pruning's reconstruction, passes/prune/reconstruct.py). A refit that does not
lower the layer's error on the calibration rows is discarded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from threadpoolctl import threadpool_limits

from onnxslim.activations import NormalEquations, Tap, accumulate_normal_equations
from onnxslim.feeds import Feed
from onnxslim.passes.prune.layers import Layer, find_layers, refit_levels, refit_refusal

from .palette import Palettized, snap_int8

REFIT_OPS = ("Conv", "Gemm", "MatMul")
MAX_COLUMNS = 4096  # (K+1)^2 float64 normal equations per conv group: 128 MiB at the limit
REFINE_FLOPS = 4e9  # per layer, building H; rows are subsampled above it
CHUNK_BYTES = 32 << 20


@dataclass(frozen=True)
class LayerError:
    """Relative squared output error of one layer on calibration rows, before and after refit."""

    name: str
    weight: str
    op_type: str
    rows: int
    error_before: float
    error_after: float
    refit: bool
    skipped: str = ""

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "weight": self.weight,
            "op_type": self.op_type,
            "rows": self.rows,
            "error_before": self.error_before,
            "error_after": self.error_after,
            "refit": self.refit,
            "skipped": self.skipped,
        }


@dataclass(frozen=True)
class Fit:
    values: np.ndarray  # [groups, k]
    bias: np.ndarray | None  # [n_out]
    error_before: float
    error_after: float
    improved: bool


def fit_palette(
    sums: NormalEquations,
    assign: np.ndarray,
    group_of_row: np.ndarray,
    values: np.ndarray,
    bias: np.ndarray | None,
    *,
    intercept: bool,
    ridge: float = 1e-4,
    snap: Callable[[np.ndarray], np.ndarray] | None = None,
    fixed: np.ndarray | None = None,
    seed: int = 0,
) -> Fit:
    """Least-squares palette for one layer.

    assign [n_out, K] local palette indices of each weight row (matrix view), group_of_row
    [n_out] its palette group, values [groups, k] the current palette, bias [n_out] or None.
    `intercept`: refit the bias too. `snap` maps refit values onto a grid (int8).
    `fixed` [groups, k] bool: entries that keep their value (the zero of a pruned weight).
    """
    n_out, K = assign.shape
    groups, k = values.shape
    values = values.astype(np.float64)
    b0 = np.zeros(n_out) if bias is None else bias.astype(np.float64).reshape(-1)
    conv_groups = sums.groups
    per_conv = n_out // conv_groups
    H = np.zeros((groups, k, k))
    r = np.zeros((groups, k))
    rows = _sample_rows(group_of_row, K, k, seed)
    for gamma in range(conv_groups):
        gram, cross = sums.gram[gamma], sums.cross[gamma]  # type: ignore[index]
        G, C = _eliminate_bias(gram, cross, K, intercept)
        mine = rows[(rows >= gamma * per_conv) & (rows < (gamma + 1) * per_conv)]
        chunk = max(1, int(CHUNK_BYTES // (8 * K * k)))
        for start in range(0, len(mine), chunk):
            batch = mine[start : start + chunk]
            Z = np.zeros((K, len(batch), k))
            Z[np.arange(K)[:, None], np.arange(len(batch))[None, :], assign[batch].T] = 1.0
            M = (G @ Z.reshape(K, -1)).reshape(K, len(batch), k)
            blocks = np.matmul(Z.transpose(1, 2, 0), M.transpose(1, 0, 2))  # [R, k, k]
            np.add.at(H, group_of_row[batch], blocks)
            local = batch - gamma * per_conv
            rhs = np.einsum("krc,kr->rc", Z, C[:, local])
            np.add.at(r, group_of_row[batch], rhs)
    new = values.copy()
    for g in range(groups):
        diagonal = np.diag(H[g])
        if not np.any(diagonal > 0):
            continue
        lam = max(ridge * float(np.mean(diagonal[diagonal > 0])), 1e-300)
        A = H[g] + lam * np.eye(k)
        b = r[g] + lam * values[g]
        if fixed is not None and fixed[g].any():  # move the pinned terms right, pin their rows
            pinned = fixed[g]
            b = b - A[:, pinned] @ values[g][pinned]
            A[:, pinned] = 0.0
            A[pinned, :] = 0.0
            A[pinned, pinned] = 1.0
            b[pinned] = values[g][pinned]
        new[g] = np.linalg.solve(A, b)
    if snap is not None:
        new = snap(new)
    before = _error(sums, assign, group_of_row, values, b0)
    new_bias = (
        _best_bias(sums, assign, group_of_row, new) if intercept else (None if bias is None else b0)
    )
    after = _error(
        sums, assign, group_of_row, new, new_bias if new_bias is not None else np.zeros(n_out)
    )
    if not after < before:
        return Fit(values, None if bias is None else b0, before, before, False)
    return Fit(new, new_bias, before, after, True)


def layer_error(
    sums: NormalEquations,
    assign: np.ndarray,
    group_of_row: np.ndarray,
    values: np.ndarray,
    bias: np.ndarray | None,
) -> float:
    """Relative squared output error of the layer with this palette and bias on the summed rows."""
    n_out = assign.shape[0]
    b = np.zeros(n_out) if bias is None else bias.astype(np.float64).reshape(-1)
    return _error(sums, assign, group_of_row, values.astype(np.float64), b)


def refine_layers(
    original: ir.Model,
    current: ir.Model,
    palettes: dict[str, Palettized],
    feeds: Sequence[Feed],
    *,
    ridge: float,
    max_rows: int,
    seed: int = 0,
    refit: bool = True,
    qmax: int | None = None,
    pinned_zero: frozenset[str] = frozenset(),
    blas_threads: int = 1,
    seconds: float | None = None,
) -> list[LayerError]:
    """Refit (or, with refit False, only measure) the palettes of `palettes` in `current`.

    `palettes` maps weight names to their Palettized form and is updated in place;
    the dense weights (and biases) of `current` are rewritten to match. Weights in
    `pinned_zero` keep their zero palette entries at zero (pruned weights stay sparse).
    Returns the per-layer errors (skipped layers with their reason). `seconds`: no level
    starts after that long (the layers after it keep their palettes).
    """
    with threadpool_limits(limits=blas_threads, user_api="blas"):
        return _refine(
            original,
            current,
            palettes,
            feeds,
            ridge=ridge,
            max_rows=max_rows,
            seed=seed,
            refit=refit,
            qmax=qmax,
            pinned_zero=pinned_zero,
            # CPU seconds: a loaded machine must not refine fewer layers
            deadline=None if seconds is None else time.process_time() + seconds,
        )


def _refine(
    original: ir.Model,
    current: ir.Model,
    palettes: dict[str, Palettized],
    feeds: Sequence[Feed],
    *,
    ridge: float,
    max_rows: int,
    seed: int,
    refit: bool,
    qmax: int | None,
    pinned_zero: frozenset[str],
    deadline: float | None = None,
) -> list[LayerError]:
    records: list[LayerError] = []
    ready: dict[str, Layer] = {}
    for layer in find_layers(current, ops=REFIT_OPS)[0]:
        name = layer.weight.name or ""
        if name not in palettes:
            continue
        reason = _cannot_refit(layer, palettes[name], original)
        if reason:
            records.append(
                LayerError(
                    layer.name, name, layer.op_type, 0, float("nan"), float("nan"), False, reason
                )
            )
            continue
        ready[layer.name] = layer
    covered = {r.weight for r in records} | {layer.weight.name for layer in ready.values()}
    for weight in palettes:
        if weight not in covered:  # Gather tables, LSTM weights, layers inside If/Loop bodies
            readers = (
                [user for user, _ in current.graph.initializers[weight].uses()]
                if weight in current.graph.initializers
                else []
            )
            ops = sorted({user.op_type for user in readers}) or ["?"]
            where = (
                "inside an If/Loop body"
                if any(u.graph is not current.graph for u in readers)
                else f"read by {', '.join(ops)}"
            )
            reason = f"{where}: refinement refits main-graph Conv/Gemm/MatMul layers"
            records.append(
                LayerError(weight, weight, ops[0], 0, float("nan"), float("nan"), False, reason)
            )
    if not ready:
        return records
    if refit:
        for layer in ready.values():
            if layer.bias is None and layer.can_have_bias():
                layer.set_bias(np.zeros(layer.out_channels, dtype=np.float32))
    outputs = {name: layer.output.name or "" for name, layer in ready.items()}
    target = Tap(original, list(dict.fromkeys(outputs.values())))
    levels = refit_levels(current, list(ready)) if refit else [list(ready)]
    for done, level in enumerate(levels):
        if deadline is not None and time.process_time() > deadline:
            for name in (n for rest in levels[done:] for n in rest):
                layer, why = ready[name], "time budget of the refinement spent (--effort)"
                nan = float("nan")
                records.append(
                    LayerError(
                        name, layer.weight.name or "", layer.op_type, 0, nan, nan, False, why
                    )
                )
            break
        sums = accumulate_normal_equations(
            current,
            level,
            feeds,
            target_model=target,
            max_rows=max_rows,
            seed=seed,
            outputs={n: outputs[n] for n in level},
        )
        for name in level:
            records.append(
                _refit_layer(
                    ready[name],
                    sums[name],
                    palettes,
                    ridge=ridge,
                    refit=refit,
                    qmax=qmax,
                    seed=seed,
                    pin_zero=ready[name].weight.name in pinned_zero,
                )
            )
    return records


def _refit_layer(
    layer: Layer,
    sums: NormalEquations,
    palettes: dict[str, Palettized],
    *,
    ridge: float,
    refit: bool,
    qmax: int | None,
    seed: int,
    pin_zero: bool = False,
) -> LayerError:
    weight = layer.weight.name or ""
    p = palettes[weight]
    if sums.rows == 0 or sums.gram is None:
        return LayerError(
            layer.name,
            weight,
            layer.op_type,
            0,
            float("nan"),
            float("nan"),
            False,
            "no calibration rows",
        )
    assign = layer.to_matrix(p.indices).astype(np.int64)
    n_out = assign.shape[0]
    grouped = p.axis is not None
    group_of_row = np.arange(n_out) // p.group_size if grouped else np.zeros(n_out, np.int64)
    values = p.values().astype(np.float64)
    bias = layer.bias_array()
    if not refit:
        error = layer_error(sums, assign, group_of_row, values, bias)
        return LayerError(layer.name, weight, layer.op_type, sums.rows, error, error, False)
    intercept = layer.bias is not None and layer.bias.const_value is not None
    snap = None
    if qmax is not None:

        def snap(v: np.ndarray) -> np.ndarray:
            return snap_int8(p.with_values(v), qmax).values().astype(np.float64)

    fit = fit_palette(
        sums,
        assign,
        group_of_row,
        values,
        bias,
        intercept=intercept,
        ridge=ridge,
        snap=snap,
        fixed=(values == 0) if pin_zero else None,
        seed=seed,
    )
    if fit.improved:
        updated = p.with_values(fit.values)
        if qmax is not None:
            updated = snap_int8(updated, qmax)
        palettes[weight] = updated
        layer.set_weight(updated.dense())
        if fit.bias is not None:
            layer.set_bias(fit.bias.astype(np.float32))
    return LayerError(
        layer.name,
        weight,
        layer.op_type,
        sums.rows,
        fit.error_before,
        fit.error_after,
        fit.improved,
    )


def _cannot_refit(layer: Layer, p: Palettized, original: ir.Model) -> str:
    why = refit_refusal(layer, original, MAX_COLUMNS)
    if why:
        return why
    if layer.op_type == "Gemm":
        attrs = layer.node.attributes
        if attrs.get_float("alpha", 1.0) != 1.0 or attrs.get_float("beta", 1.0) != 1.0:
            return "Gemm with alpha or beta other than 1"
    w = layer.weight.const_value
    assert w is not None
    columns = (
        int(w.size // layer.out_channels)
        if layer.op_type != "Conv"
        else int(np.prod(w.shape.numpy()[1:]))
    )
    if p.axis is not None:
        expected = {"Conv": 0, "MatMul": len(w.shape) - 1, "Gemm": 0 if layer.trans_b else 1}[
            layer.op_type
        ]
        if p.axis != expected:
            return "palette groups do not run along the output channels"
    k = p.k
    if p.groups * 2 * columns * columns * k > 8 * REFINE_FLOPS:
        return f"one row per palette group already costs more than {8 * REFINE_FLOPS:.0e} flops"
    return ""


def _sample_rows(group_of_row: np.ndarray, K: int, k: int, seed: int) -> np.ndarray:
    """Rows used to build H: all of them, or an even sample per group within REFINE_FLOPS."""
    n_out = len(group_of_row)
    groups = int(group_of_row.max()) + 1 if n_out else 0
    per_row = 2.0 * K * K * k
    if n_out * per_row <= REFINE_FLOPS or groups == 0:
        return np.arange(n_out)
    cap = max(1, int(REFINE_FLOPS // (per_row * groups)))
    rng = np.random.default_rng(seed)
    chosen = []
    for g in range(groups):
        members = np.flatnonzero(group_of_row == g)
        chosen.append(
            members if len(members) <= cap else np.sort(rng.choice(members, cap, replace=False))
        )
    return np.sort(np.concatenate(chosen))


def _eliminate_bias(
    gram: np.ndarray, cross: np.ndarray, K: int, intercept: bool
) -> tuple[np.ndarray, np.ndarray]:
    """G', C' of the module docstring (the bias solved out), or the plain G, C without a bias."""
    G, C = gram[:K, :K], cross[:K]
    if not intercept:
        return G, C
    n = gram[K, K]
    if n <= 0:
        return G, C
    s = gram[:K, K]
    t = cross[K]
    return G - np.outer(s, s) / n, C - np.outer(s, t) / n


def _weights(assign: np.ndarray, group_of_row: np.ndarray, values: np.ndarray) -> np.ndarray:
    return values[group_of_row[:, None], assign]


def _best_bias(
    sums: NormalEquations, assign: np.ndarray, group_of_row: np.ndarray, values: np.ndarray
) -> np.ndarray:
    """b_o = (t_o - s^T w_o) / n for every row."""
    W = _weights(assign, group_of_row, values)
    n_out, K = W.shape
    per_conv = n_out // sums.groups
    bias = np.zeros(n_out)
    for gamma in range(sums.groups):
        gram, cross = sums.gram[gamma], sums.cross[gamma]  # type: ignore[index]
        rows = slice(gamma * per_conv, (gamma + 1) * per_conv)
        n = gram[K, K]
        if n > 0:
            bias[rows] = (cross[K] - W[rows] @ gram[:K, K]) / n
    return bias


def _error(
    sums: NormalEquations,
    assign: np.ndarray,
    group_of_row: np.ndarray,
    values: np.ndarray,
    bias: np.ndarray,
) -> float:
    W = _weights(assign, group_of_row, values)
    n_out, K = W.shape
    per_conv = n_out // sums.groups
    total = energy = 0.0
    for gamma in range(sums.groups):
        gram, cross = sums.gram[gamma], sums.cross[gamma]  # type: ignore[index]
        rows = slice(gamma * per_conv, (gamma + 1) * per_conv)
        full = np.concatenate([W[rows], bias[rows, None]], axis=1)
        total += float(np.sum((full @ gram) * full)) - 2 * float(np.sum(full * cross.T))
        e = float(np.sum(sums.target_sq[gamma]))  # type: ignore[index]
        total += e
        energy += e
    return max(total, 0.0) / energy if energy > 0 else 0.0
