"""Layer-wise reconstruction: refit pruned layers so they reproduce the original model.

Training-free distillation with the original model as teacher. Layers are refit
in dependency order, level by level: the inputs X of a layer are taken from the
pruned model *after* the layers before it were refit, and the targets Y from the
original model, so each refit also absorbs the error accumulated upstream. Each
level costs one ORT pass of the calibration feeds over the current pruned model;
the original model's session is built once.

Per layer, onnxslim.activations streams X^T X and X^T Y (memory flat in the
number of feeds) and passes/prune/lstsq solves a ridge problem on the weights the
pruning kept: zeros stay zeros (so sparsity and N:M patterns survive), removed
channels stay removed. The bias is refit too (a zero bias is added to a Conv or
Gemm that had none), which absorbs the mean shift pruning causes.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from threadpoolctl import threadpool_limits

from onnxslim.activations import NormalEquations, Tap, accumulate_normal_equations
from onnxslim.feeds import Feed
from onnxslim.passes._options import option
from onnxslim.passes._run_data import RunData, TakesData
from onnxslim.passes.prune._common import load_feeds
from onnxslim.passes.prune.layers import Layer, find_layers, refit_levels, refit_refusal
from onnxslim.passes.prune.lstsq import DIRECT_FLOPS, PCG_ITERATIONS, Stats, solve

REFIT_OPS = ("Conv", "Gemm", "MatMul")
MAX_COLUMNS = 8192  # (K+1)^2 float64 per group: 8192 columns is 512 MiB


@dataclasses.dataclass(frozen=True, kw_only=True)
class RefitOptions(TakesData):
    """The least-squares refit every pruning pass offers, its options declared once.

    A pass that subclasses this takes data (its run's `data.feeds`: an .npz of stacked
    samples, or a list of feeds through the API) and reads it with `refit_data`;
    `reconstruct=None` refits exactly when calibration data is given.
    """

    reconstruct: bool | None = option(
        None,
        "Refit the kept weights (channels: the layers downstream) on calib by least "
        "squares (default: on with calib).",
    )
    calib_count: int = option(256, "Calibration samples used.")
    ridge: float | None = option(
        None,
        "Ridge strength of the refit relative to the mean input energy "
        "(None: chosen per layer on held-out calibration samples).",
    )
    max_rows: int = option(16384, "Calibration rows sampled per layer for the refit.")

    def refit_data(self, model: ir.Model, data: RunData) -> tuple[list[Feed] | None, bool]:
        """(calibration feeds or None, whether to refit)."""
        feeds = load_feeds(data.feeds, self.calib_count, model)
        return feeds, self.reconstruct if self.reconstruct is not None else feeds is not None


@dataclass(frozen=True)
class RefitRequest:
    """One layer to refit. `out_index`: the original output channels it still produces."""

    node_name: str
    keep_zeros: bool = True
    out_index: np.ndarray | None = None


@dataclass(frozen=True)
class RefitRecord:
    name: str
    op_type: str
    rows: int
    error_before: float  # relative squared error of the layer output vs the original, before refit
    error_after: float
    skipped: str = ""
    ridge: float | None = (
        None  # relative ridge strength used (chosen on held-out samples by default)
    )
    seconds: float = 0.0  # solving time (the ORT passes are shared by a level and not counted here)

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "op_type": self.op_type,
            "rows": self.rows,
            "error_before": self.error_before,
            "error_after": self.error_after,
            "skipped": self.skipped,
            "ridge": self.ridge,
            "seconds": self.seconds,
        }


def reconstruct(
    original: ir.Model,
    pruned: ir.Model,
    requests: Sequence[RefitRequest],
    feeds: Sequence[Feed],
    *,
    ridge: float | None,
    max_rows: int,
    seed: int = 0,
    blas_threads: int = 1,
) -> list[RefitRecord]:
    """Refit `requests` in `pruned` (modified in place) against `original` on `feeds`.

    numpy's BLAS is held to `blas_threads` meanwhile: the systems are small and
    many, and spinning up BLAS threads for each cost 10x on a loaded machine.
    """
    with threadpool_limits(limits=blas_threads, user_api="blas"):
        return _reconstruct(
            original, pruned, requests, feeds, ridge=ridge, max_rows=max_rows, seed=seed
        )


def _reconstruct(
    original: ir.Model,
    pruned: ir.Model,
    requests: Sequence[RefitRequest],
    feeds: Sequence[Feed],
    *,
    ridge: float | None,
    max_rows: int,
    seed: int,
) -> list[RefitRecord]:
    layers = {layer.name: layer for layer in find_layers(pruned, ops=REFIT_OPS)[0]}
    records: list[RefitRecord] = []
    ready: dict[str, RefitRequest] = {}
    for request in requests:
        layer = layers.get(request.node_name)
        reason = (
            cannot_refit(layer, original)
            if layer is not None
            else "not a Conv/Gemm/MatMul with constant weight"
        )
        if reason:
            records.append(
                RefitRecord(
                    request.node_name,
                    layer.op_type if layer else "?",
                    0,
                    float("nan"),
                    float("nan"),
                    reason,
                )
            )
            continue
        ready[request.node_name] = request
    if not ready:
        return records
    for name in ready:  # a bias to refit, where the layer can take one
        layer = layers[name]
        if layer.bias is None and layer.can_have_bias():
            layer.set_bias(np.zeros(layer.out_channels, dtype=np.float32))
    outputs = {name: layers[name].output.name or "" for name in ready}
    target = Tap(original, list(dict.fromkeys(outputs.values())))
    columns = {n: r.out_index for n, r in ready.items() if r.out_index is not None}
    for level in refit_levels(pruned, list(ready)):
        sums = accumulate_normal_equations(
            pruned,
            level,
            feeds,
            target_model=target,
            max_rows=max_rows,
            seed=seed,
            outputs={n: outputs[n] for n in level},
            target_columns={n: columns[n] for n in level if n in columns},
        )
        for name in level:
            records.append(refit_layer(layers[name], sums[name], ready[name], ridge))
    return records


def cannot_refit(layer: Layer, original: ir.Model) -> str:
    if layer.op_type not in REFIT_OPS:
        return f"{layer.op_type} is not refit"
    return refit_refusal(layer, original, MAX_COLUMNS)


def refit_layer(
    layer: Layer,
    sums: NormalEquations,
    request: RefitRequest,
    ridge: float | None,
    iterations: int = PCG_ITERATIONS,
    direct_flops: float = DIRECT_FLOPS,
) -> RefitRecord:
    start = time.perf_counter()
    if sums.total is None or sums.rows == 0:
        return RefitRecord(
            layer.name, layer.op_type, 0, float("nan"), float("nan"), "no calibration rows"
        )
    w = layer.array()
    alpha = layer.node.attributes.get_float("alpha", 1.0) if layer.op_type == "Gemm" else 1.0
    beta = layer.node.attributes.get_float("beta", 1.0) if layer.op_type == "Gemm" else 1.0
    matrix = layer.to_matrix(w).astype(np.float64) * alpha  # the effective weight: alpha * W
    bias = layer.bias_array()
    b = bias.reshape(-1).astype(np.float64) * beta if bias is not None else None
    groups = sums.groups
    per_group = matrix.shape[0] // groups
    new_w = np.empty_like(matrix)
    new_b = np.empty(matrix.shape[0]) if b is not None else None
    total, held = sums.total, sums.holdout
    energy = float(np.sum(total.target_sq))
    before = after = 0.0
    ridges = []
    for g in range(groups):
        rows = slice(g * per_group, (g + 1) * per_group)
        w0 = matrix[rows]
        fit = solve(
            Stats(total.gram[g], total.cross[g], total.target_sq[g], total.rows),
            Stats(held.gram[g], held.cross[g], held.target_sq[g], held.rows)
            if held is not None
            else None,
            w0,
            b[rows] if b is not None else None,
            (w0 != 0) if request.keep_zeros else None,
            ridge=ridge,
            intercept=b is not None,
            iterations=iterations,
            direct_flops=direct_flops,
        )
        new_w[rows] = fit.weight
        if new_b is not None and fit.bias is not None:
            new_b[rows] = fit.bias
        share = float(np.sum(total.target_sq[g])) / energy if energy > 0 else 0.0
        before += fit.error_before * share
        after += fit.error_after * share
        ridges.append(fit.ridge)
    layer.set_weight(layer.from_matrix(new_w / alpha, w.shape))
    if new_b is not None:
        layer.set_bias(new_b / beta)
    return RefitRecord(
        layer.name,
        layer.op_type,
        sums.rows,
        before,
        after,
        ridge=float(np.median(ridges)),
        seconds=time.perf_counter() - start,
    )
