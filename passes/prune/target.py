"""Sparsity at an accuracy target: the most pruning whose model still decides like the original.

A fixed sparsity is the wrong question: uniform 50 % took a detector to 17 % F1 while
other models lose nothing at 80 %. So the per-layer sensitivities are measured once
(passes/prune/allocation.py: each layer alone pruned to a few probe sparsities, one
ORT session for every probe), and an overall sparsity s turns into per-layer
sparsities with the least summed output error (`allocate`). Which s still meets the
target is then decided by the target itself, not by a proxy: the workflow hands in
`accept` (candidate model -> onnxslim.agreement.Assessment on held-out feeds), and
the ladder of overall sparsities is bisected with it, the request (the user's
`sparsity`, the upper bound) tried first. Each trial costs one ORT session on the
held-out feeds; the sensitivities cost one session and layers x probes runs, so the
work grows with the number of weights, not with weights x candidates x feeds.

With calibration data every trial is refit by least squares from statistics collected
once (trial_refit.py: a numpy solve per layer, no ORT run), and the written model is
the refit trial itself; without, trials and result are pruned only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxslim.passes._run_data import Accept
from onnxslim.passes.prune.allocation import PROBES, allocate
from onnxslim.passes.prune.layers import Layer
from onnxslim.passes.prune.trial_refit import TrialRefit, prune_twins

# Overall sparsities tried below the request; the request itself is always tried first.
LADDER = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)
BLAMED = 3  # layers named when the request misses the target


@dataclass
class Trial:
    sparsity: float
    passed: bool
    figures: str  # the missed outputs, in words ("" when passed)

    def to_dict(self) -> dict[str, Any]:
        return {"sparsity": self.sparsity, "passed": self.passed, "missed": self.figures}


@dataclass
class Search:
    """What the search tried and where it ended."""

    requested: float
    reached: float
    levels: list[float]  # per layer: at `reached` (at the request when it was one and missed)
    trials: list[Trial] = field(default_factory=list)
    blamed: list[dict[str, Any]] = field(default_factory=list)  # at the request, when it missed

    def to_dict(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "reached": self.reached,
            "trials": [t.to_dict() for t in self.trials],
            "blamed": self.blamed,
        }


def search(
    model: ir.Model,
    layers: Sequence[Layer],
    errors: np.ndarray,
    accept: Accept,
    *,
    upper: float,
    cap: float,
    requested: bool = False,
    refit: TrialRefit | None = None,
) -> Search:
    """The largest overall sparsity <= `upper` (on LADDER, or `upper` itself) meeting the target.

    `errors[i, j]`: measured output error with only layer i pruned to PROBES[j].
    The target is assumed to hold at any sparsity below one where it holds (more
    pruning never helps), so the ladder is bisected: about log2(len(LADDER)) trials.
    `requested` (the user asked for `upper`): when it misses, `levels` stay the
    request's (the result closest to it; the caller fails the run), and `reached`
    says how far the target would have allowed. With `refit`, every trial is refit
    (trial_refit.py), as the written model will be.
    """
    sizes = [layer.array().size for layer in layers]
    ladder = [s for s in LADDER if s < upper - 1e-9] + [upper]
    found = Search(requested=upper, reached=0.0, levels=[0.0] * len(layers))

    def trial(index: int) -> bool:
        s = ladder[index]
        levels = allocate(sizes, errors, s, cap=cap)
        if refit is not None:
            candidate = refit.pruned(model, layers, levels)[0]
        else:
            candidate = _pruned_copy(model, layers, levels)
        assessment = accept(candidate)
        missed = "" if assessment.passed else assessment.message()
        found.trials.append(Trial(s, assessment.passed, missed))
        if assessment.passed and s > found.reached:
            found.reached, found.levels = s, levels
        if not assessment.passed and index == len(ladder) - 1:
            found.blamed = blame(layers, errors, levels)
        return assessment.passed

    if trial(len(ladder) - 1):
        return found
    request = allocate(sizes, errors, upper, cap=cap)
    low, high = -1, len(ladder) - 1  # ladder[low] passes (-1: dense), ladder[high] fails
    while high - low > 1:
        middle = (low + high) // 2
        if trial(middle):
            low = middle
        else:
            high = middle
    if requested:
        found.levels = request
    return found


def blame(
    layers: Sequence[Layer], errors: np.ndarray, levels: Sequence[float]
) -> list[dict[str, Any]]:
    """The layers carrying most of the predicted output error at `levels` (their sparsities)."""
    grid = np.array([0.0, *PROBES])
    predicted = [
        float(np.interp(level, grid, np.maximum.accumulate(np.concatenate([[0.0], row]))))
        for level, row in zip(levels, errors, strict=True)
    ]
    total = sum(predicted)
    order = sorted(range(len(layers)), key=lambda i: -predicted[i])[:BLAMED]
    return [
        {
            "layer": layers[i].name,
            "sparsity": levels[i],
            "error_share": predicted[i] / total if total > 0 else 0.0,
        }
        for i in order
        if predicted[i] > 0
    ]


def _pruned_copy(model: ir.Model, layers: Sequence[Layer], levels: Sequence[float]) -> ir.Model:
    """A copy of `model` with each layer's weight magnitude-pruned to its level (no refit)."""
    copy = model.clone()
    for _ in prune_twins(copy, layers, levels):  # pruned as they are yielded
        pass
    return copy
