"""Unstructured magnitude pruning of Conv / Gemm / MatMul weights, with optional refit.

How much each layer loses:
- scope "per-layer", allocation "uniform": every eligible layer to `sparsity`;
- scope "per-layer", allocation "sensitivity": per-layer sparsities measured on
  the calibration data (passes/prune/allocation.py), meeting `sparsity` over all
  eligible weights;
- scope "per-layer", allocation "target": the most overall sparsity, up to `sparsity`,
  whose model still meets the accuracy target the workflow checks (`accept`), per-layer
  sparsities from the measured sensitivities (passes/prune/target.py); without a
  check (a recipe step) it is "uniform";
- scope "global": one magnitude threshold over all eligible weights.
No layer loses more than `max_layer_sparsity`. Layers under `min_elements` or
matching `exclude` (fnmatch patterns on node or weight names) stay dense.

With calibration data, the surviving weights and the bias are then refit by
least squares so each layer reproduces the original model's outputs
(passes/prune/reconstruct.py); zeros stay zeros.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxslim.errors import UsageError
from onnxslim.passes._options import check_choice, effort_option, option
from onnxslim.passes._run_data import RunData
from onnxslim.passes.prune._common import check_fraction, store_summary
from onnxslim.passes.prune.allocation import allocate, measure_sensitivity, quick_sensitivity
from onnxslim.passes.prune.layers import Layer, find_layers, sparsity
from onnxslim.passes.prune.masks import count_mask, global_counts, magnitude_mask
from onnxslim.passes.prune.prepare import prepare
from onnxslim.passes.prune.reconstruct import RefitOptions, RefitRequest, reconstruct
from onnxslim.passes.prune.saliency import score_of
from onnxslim.passes.prune.target import search
from onnxslim.passes.prune.trial_refit import TrialRefit


@dataclasses.dataclass(frozen=True)
class Effort:
    """What the target search measures at one `effort`."""

    probe_seconds: float  # sensitivities: about this long (fewer probe feeds when slower)
    probe_feeds: int  # sensitivities: at most this many feeds
    refit_feeds: int | None  # the trials' refit statistics: the first this many feeds
    refit_rows: int  # ... and at most this many rows per layer


# open_nsfw_resnet (2 cores, loaded): 38 s of sensitivities at 30 s planned, 32 s of refit
# statistics on 24 feeds. A conv layer's rows fill from a few feeds, a Gemm's do not
# (digits_cnn refit on 16 feeds missed the target at 0.9, on all 192 it meets it).
EFFORT = {
    "fast": Effort(10.0, 4, 16, 2048),
    "default": Effort(20.0, 8, None, 4096),
    "thorough": Effort(120.0, 32, None, 8192),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class MagnitudePruning(RefitOptions, ir.passes.InPlacePass):
    """Zero the smallest-magnitude weights of Conv/Gemm/MatMul layers to a target sparsity."""

    sparsity: float = option(0.5, "Fraction of eligible weights set to zero.")
    scope: str = option(
        "per-layer",
        "per-layer: each layer its own threshold; global: one threshold for all.",
        choices=("per-layer", "global"),
    )
    allocation: str = option(
        "target",
        "uniform: every layer at `sparsity`; sensitivity: measured per layer "
        "on calib (needs calib); target: the most sparsity up to `sparsity` that meets "
        "the accuracy target the workflow checks, allocated by sensitivity (without a "
        "check, as in a recipe: uniform).",
        choices=("uniform", "sensitivity", "target"),
    )
    min_elements: int = option(1024, "Leave weights with fewer elements dense.")
    exclude: tuple[str, ...] = option((), "Node or weight names (fnmatch patterns) to leave dense.")
    max_layer_sparsity: float = option(0.95, "No layer loses more than this fraction.")
    saliency: str = option(
        "magnitude",
        "Which weights a layer loses, in the target search with calib: magnitude (least "
        "|W|) or activation (least |W| times its input's spread on calib, Wanda; lower "
        "layer errors, but reached no further on the task benchmark); without calib, "
        "magnitude.",
        choices=("activation", "magnitude"),
    )
    effort: str = effort_option()

    def __post_init__(self) -> None:
        check_choice(self, "scope")
        check_choice(self, "allocation")
        check_choice(self, "effort")
        check_choice(self, "saliency")
        check_fraction("sparsity", self.sparsity)
        check_fraction("max_layer_sparsity", self.max_layer_sparsity, high=1.0 + 1e-12)
        if self.scope == "global" and self.allocation == "sensitivity":
            raise ValueError("allocation=sensitivity applies to scope=per-layer")

    def run(self, model: ir.Model, data: RunData) -> ir.passes.PassResult:
        """Prune on the run's data: `feeds` (refit, sensitivities) and, for allocation=target,
        `accept`, `requested` and `probe_feeds` (passes/_run_data.py)."""
        feeds, refit = self.refit_data(model, data)
        if refit and feeds is None:
            raise UsageError("reconstruction needs calibration data (calib)")
        if self.allocation == "sensitivity" and feeds is None:
            raise UsageError("allocation=sensitivity needs calibration data (calib)")
        prepared = prepare(model)
        layers, skipped = find_layers(model, min_elements=self.min_elements, exclude=self.exclude)
        unique = list({id(layer.weight): layer for layer in layers}.values())
        if not unique or self.sparsity == 0:
            store_summary(
                model,
                method="magnitude",
                targets={},
                skipped=[s.__dict__ for s in skipped],
                refit=[],
            )
            return ir.passes.PassResult(model, prepared)
        original = model.clone() if refit else None
        effort = EFFORT[self.effort]
        trial = (
            TrialRefit(
                model,
                unique,
                feeds[: effort.refit_feeds],
                max_rows=min(self.max_rows, effort.refit_rows),
                ridge=self.ridge,
                scored=self.saliency == "activation",
            )
            if refit and feeds is not None and self._searching(feeds, data)
            else None
        )
        masks, sensitivity, searched, levels = self._masks(model, unique, feeds, data, trial)
        records = []
        if trial is not None and levels is not None:  # the refit the search's trials had
            records = trial.apply(model, unique, levels)
        else:
            for layer, mask in zip(unique, masks, strict=False):
                w = layer.array()
                layer.set_weight(np.where(mask, w, 0))
        if trial is None and refit and original is not None and feeds is not None:
            requests = [RefitRequest(layer.name, keep_zeros=True) for layer in layers]
            records = reconstruct(
                original, model, requests, feeds, ridge=self.ridge, max_rows=self.max_rows
            )
        store_summary(
            model,
            method="magnitude",
            targets={layer.name: sparsity(layer.array()) for layer in layers},
            sensitivity=sensitivity,
            search=searched,
            skipped=[s.__dict__ for s in skipped],
            refit=[r.to_dict() for r in records],
        )
        return ir.passes.PassResult(model, True)

    def _searching(self, feeds: list | None, data: RunData) -> bool:
        """Whether the target search runs (allocation=target, a check handed in, feeds)."""
        probe_feeds = feeds if feeds is not None else data.probe_feeds
        return (
            self.scope == "per-layer"
            and self.allocation == "target"
            and data.accept is not None
            and bool(probe_feeds)
        )

    def _masks(
        self,
        model: ir.Model,
        layers: list[Layer],
        feeds: list | None,
        data: RunData,
        trial: TrialRefit | None = None,
    ) -> tuple[
        list[np.ndarray], dict[str, dict[str, Any]], dict[str, Any] | None, list[float] | None
    ]:
        """Keep-mask per unique weight, the measured sensitivities when allocation used them,
        what the target search tried (allocation=target with a check) and its levels."""
        arrays = [layer.array() for layer in layers]
        cap = self.max_layer_sparsity
        if self.scope == "global":
            counts = global_counts(arrays, self.sparsity, cap)
            masks = [count_mask(w, c) for w, c in zip(arrays, counts, strict=False)]
            return masks, {}, None, None
        allocation = self.allocation
        probe_feeds = feeds if feeds is not None else data.probe_feeds
        if self._searching(feeds, data):
            assert data.accept is not None and probe_feeds is not None
            effort = EFFORT[self.effort]
            errors = quick_sensitivity(
                model,
                layers,
                probe_feeds,
                seconds=effort.probe_seconds,
                max_feeds=effort.probe_feeds,
                scores=trial.scores if trial is not None else None,
            )
            found = search(
                model,
                layers,
                errors,
                data.accept,
                upper=self.sparsity,
                cap=cap,
                requested=data.requested,
                refit=trial,
            )
            info = {
                layer.name: {"allocated": level, "probe_errors": [float(e) for e in row]}
                for layer, level, row in zip(layers, found.levels, errors, strict=False)
            }
            scores = trial.scores if trial is not None else None
            masks = [
                magnitude_mask(score_of(layer, scores), s)
                for layer, s in zip(layers, found.levels, strict=False)
            ]
            return masks, info, found.to_dict(), found.levels
        if allocation == "target":  # no check handed in (a recipe step): `sparsity` everywhere
            allocation = "uniform"
        if allocation == "sensitivity":
            assert feeds is not None
            errors = measure_sensitivity(model, layers, feeds)
            levels = allocate([w.size for w in arrays], errors, self.sparsity, cap=cap)
            info = {
                layer.name: {"allocated": level, "probe_errors": [float(e) for e in row]}
                for layer, level, row in zip(layers, levels, errors, strict=False)
            }
            masks = [magnitude_mask(w, s) for w, s in zip(arrays, levels, strict=False)]
            return masks, info, None, None
        return [magnitude_mask(w, min(self.sparsity, cap)) for w in arrays], {}, None, None
