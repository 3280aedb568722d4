"""A least-squares refit cheap enough for every trial of the target search.

The sequential refit (reconstruct.py) costs one ORT pass over the calibration feeds
per level of layers, so the search ran its trials without it and stopped early
(digits_cnn: 0.7 found, 0.9 meets the target with the refit). Here each layer's
normal equations, [X 1]^T [X 1] and [X 1]^T Y with X its input and Y its output in
the ORIGINAL model, are streamed once (one ORT pass, every layer's input and output
exposed); the refit of any mask is then the same masked ridge solve on them
(lstsq.py: one small system per output channel, or batched conjugate gradients on
wide layers), pure numpy, no ORT run. It is one-shot: each layer reproduces the
original's output from the original's input, it does not absorb the error of the
layers before it as the sequential refit does; what the trials check is exactly
what is written (`refit` on the chosen levels), so the search judges the result.

Each layer's ridge is chosen once, on its first refit (held-out samples, lstsq.py),
and reused: the choice depends on the data far more than on the mask; layers with
more than ROWS_PER_COLUMN rows per input column (where it matters little) or over
1024 columns (where each grid solve costs seconds) take FALLBACK_RIDGE, no grid.
The statistics hold at most TRIAL_ROWS rows per layer, layers over TRIAL_COLUMNS
inputs are not refit, and the conjugate gradients stop after TRIAL_ITERATIONS: with
16384 rows, every layer and 40 iterations, open_nsfw_resnet took 90 s for the
statistics and 70 s per trial (loaded machine). A layer refit at a level is kept
(weight and bias), so the written model reuses its accepted trial's solves.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import onnx_ir as ir
from threadpoolctl import threadpool_limits

from onnxslim.activations import NormalEquations, accumulate_normal_equations
from onnxslim.feeds import Feed
from onnxslim.passes.prune.layers import Layer, find_layers
from onnxslim.passes.prune.lstsq import FALLBACK_RIDGE
from onnxslim.passes.prune.masks import magnitude_mask
from onnxslim.passes.prune.reconstruct import (
    REFIT_OPS,
    RefitRecord,
    RefitRequest,
    cannot_refit,
    refit_layer,
)
from onnxslim.passes.prune.saliency import Scores, layer_scores, score_of

TRIAL_ROWS = 4096
TRIAL_ITERATIONS = 10
TRIAL_DIRECT_FLOPS = 1e8  # above: conjugate gradients (10 x K^2 x O) beat exact solves
TRIAL_COLUMNS = 2304  # wider layers (a 512-channel 3x3 conv: 4608) are pruned without refit
ROWS_PER_COLUMN = 4  # more rows per input column: FALLBACK_RIDGE, no ridge grid


def prune_twins(
    model: ir.Model,
    originals: Sequence[Layer],
    levels: Sequence[float],
    scores: Scores | None = None,
) -> Iterator[tuple[Layer, Layer, float]]:
    """Prune `model`'s twins of `originals` (same weight names) to `levels`, each from the
    original's weights, dropping the lowest `scores` (saliency.py; |W| where a layer has
    none); yields (original, twin, level) for every twin pruned (layers at level 0 and
    layers `model` lacks are left as they are)."""
    twins = {layer.weight_name: layer for layer in find_layers(model)[0]}
    for layer, level in zip(originals, levels, strict=True):
        twin = twins.get(layer.weight_name)
        if twin is None or level <= 0:
            continue
        w = layer.array()
        twin.set_weight(np.where(magnitude_mask(score_of(layer, scores), level), w, 0))
        yield layer, twin, level


class TrialRefit:
    """Normal equations of every refittable layer of `model`, collected in one ORT pass."""

    def __init__(
        self,
        model: ir.Model,
        layers: Sequence[Layer],
        feeds: Sequence[Feed],
        *,
        max_rows: int,
        ridge: float | None,
        seed: int = 0,
        scored: bool = True,
    ) -> None:
        """`scored`: choose the pruned weights by activation scores (False: by magnitude)."""
        self.ridge = ridge
        self.ridges: dict[str, float] = {}
        self.solved: dict[tuple[str, float], tuple[np.ndarray, np.ndarray | None, RefitRecord]] = {}
        self.skipped: dict[str, str] = {}
        refittable = []
        for layer in layers:
            reason = cannot_refit(layer, model) if layer.op_type in REFIT_OPS else "not refit"
            columns = layer.array().size // max(layer.out_channels, 1)
            if not reason and columns > TRIAL_COLUMNS:
                reason = f"{columns} input columns > {TRIAL_COLUMNS}: pruned without refit"
            if reason:
                self.skipped[layer.name] = reason
            else:
                refittable.append(layer.name)
        outputs = {layer.name: layer.output.name or "" for layer in layers}
        self.sums: dict[str, NormalEquations] = {}
        if refittable:
            with threadpool_limits(limits=1, user_api="blas"):
                self.sums = accumulate_normal_equations(
                    model,
                    refittable,
                    feeds,
                    max_rows=max_rows,
                    seed=seed,
                    outputs={n: outputs[n] for n in refittable},
                )
        # which weights go: by their output energy on these feeds (saliency.py), the refit's
        # own statistics reused; only the layers too wide to refit cost a pass of their own
        self.scores: Scores = (
            layer_scores(model, layers, feeds, self.sums, max_rows=max_rows, seed=seed)
            if scored
            else {}
        )

    def pruned(
        self, model: ir.Model, originals: Sequence[Layer], levels: Sequence[float]
    ) -> tuple[ir.Model, list[RefitRecord]]:
        """A copy of `model` with each layer pruned to its level (by `scores`) and refit."""
        copy = model.clone()
        records = self.apply(copy, originals, levels)
        return copy, records

    def apply(
        self, model: ir.Model, originals: Sequence[Layer], levels: Sequence[float]
    ) -> list[RefitRecord]:
        """Prune `model`'s twins of `originals` (same weight names) to `levels`, refit in place.

        Layers at level 0 stay as they are (the original reproduces itself).
        """
        records = []
        with threadpool_limits(limits=1, user_api="blas"):
            for layer, twin, level in prune_twins(model, originals, levels, self.scores):
                w = layer.array()
                sums = self.sums.get(layer.name)
                if sums is None:
                    continue
                if twin.bias is None and twin.can_have_bias():
                    twin.set_bias(np.zeros(twin.out_channels, dtype=np.float32))
                done = self.solved.get((layer.name, level))
                if done is not None:
                    twin.set_weight(done[0])
                    if done[1] is not None:
                        twin.set_bias(done[1])
                    records.append(done[2])
                    continue
                ridge = self.ridges.get(layer.name, self.ridge)
                columns = w.size // twin.out_channels
                if ridge is None and (sums.rows > ROWS_PER_COLUMN * columns or columns > 1024):
                    ridge = FALLBACK_RIDGE  # well determined, or a grid solve costs seconds
                request = RefitRequest(twin.name)
                record = refit_layer(
                    twin, sums, request, ridge, TRIAL_ITERATIONS, TRIAL_DIRECT_FLOPS
                )
                if record.ridge is not None:
                    self.ridges.setdefault(layer.name, record.ridge)
                self.solved[(layer.name, level)] = (twin.array(), twin.bias_array(), record)
                records.append(record)
        return records
