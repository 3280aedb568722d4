"""Sensitivity-aware sparsity allocation: layers that hurt the outputs more are pruned less.

Sensitivity is measured, not guessed: each layer alone is magnitude-pruned to a
few probe sparsities and the model's outputs on calibration feeds are compared
with the original's (relative squared error, summed over outputs). All probes
share one ORT session: the probed weights are listed as graph inputs, which makes
ORT treat them as overridable defaults, so a probe is a run with one weight fed,
not a new session.

Allocation then minimises the summed error under the sparsity budget, greedily:
starting from dense, repeatedly give one more step of sparsity to the layer
whose error grows least per weight removed, until the budget is met. The errors
of different layers are assumed to add up, which holds well at the small
per-layer perturbations a calibrated budget produces.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from onnxslim.feeds import Feed
from onnxslim.passes.prune.layers import Layer
from onnxslim.passes.prune.masks import magnitude_mask
from onnxslim.passes.prune.saliency import Scores, score_of
from onnxslim.probing import WeightProbe

PROBES = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
STEP = 0.025
MAX_FEEDS = 32  # probes need a stable figure, not the whole calibration set
REFERENCE = 0.7  # quick_sensitivity's one measured sparsity per layer
QUICK_FEEDS = 8
QUICK_SECONDS = 30.0  # above (probe runs x layers): fewer feeds, down to MIN_QUICK_FEEDS
MIN_QUICK_FEEDS = 2


def measure_sensitivity(
    model: ir.Model,
    layers: Sequence[Layer],
    feeds: Sequence[Feed],
    probes: Sequence[float] = PROBES,
) -> np.ndarray:
    """errors[i, j]: output error with only layer i pruned to probes[j] (others dense)."""
    probe = WeightProbe(model, [layer.weight_name for layer in layers], list(feeds)[:MAX_FEEDS])
    errors = np.zeros((len(layers), len(probes)))
    for i, layer in enumerate(layers):
        w = layer.array()
        for j, s in enumerate(probes):
            pruned = np.where(magnitude_mask(w, s), w, 0).astype(w.dtype)
            errors[i, j] = probe.pooled_error({layer.weight_name: pruned})
    return errors


def quick_sensitivity(
    model: ir.Model,
    layers: Sequence[Layer],
    feeds: Sequence[Feed],
    probes: Sequence[float] = PROBES,
    *,
    seconds: float = QUICK_SECONDS,
    max_feeds: int = QUICK_FEEDS,
    scores: Scores | None = None,
) -> np.ndarray:
    """errors[i, j] as `measure_sensitivity` gives them, from ONE ORT probe per layer.

    Each layer alone is pruned to REFERENCE and the outputs measured on QUICK_FEEDS
    feeds; its error at the other probe sparsities is that figure scaled by the
    relative weight error ||W - W_s||^2 / ||W||^2 at s over the one at REFERENCE
    (output error grows about in step with weight error, as clustering's big-model
    probes assume). 7 probes x 32 feeds per layer took 80 % of captcha_crnn's 399 s;
    this is 1 x 8: 28 x less ORT work. When even that would take over QUICK_SECONDS
    (open_nsfw_resnet: 54 layers x 4.4 s on a loaded machine), fewer feeds: the figures
    only rank the layers, the target check on the held-out feeds decides.

    `scores` (saliency.py): the weights each layer drops are its lowest scores, as the
    trials will drop them, and the removed energy is the sum of their squares (a score is
    the output change's norm); |W| where a layer has none.
    """
    names = [layer.weight_name for layer in layers]
    probe = WeightProbe(model, names, list(feeds)[:max_feeds])
    probe.fit(len(layers), seconds, MIN_QUICK_FEEDS)  # a slow model: fewer feeds
    errors = np.zeros((len(layers), len(probes)))
    for i, layer in enumerate(layers):
        w = layer.array()
        score = score_of(layer, scores)
        pruned = np.where(magnitude_mask(score, REFERENCE), w, 0).astype(w.dtype)
        # removed energy at sparsity s: the smallest s of the squared scores, summed
        squares = np.square(score, dtype=np.float64)
        removed = np.concatenate([[0.0], np.cumsum(np.sort(squares, None))])
        if removed[-1] <= 0:
            continue
        at = removed[np.round(np.array([REFERENCE, *probes]) * w.size).astype(np.int64)]
        if at[0] <= 0:
            continue
        measured = probe.pooled_error({layer.weight_name: pruned})
        errors[i] = measured * at[1:] / at[0]
    return errors


def allocate(
    sizes: Sequence[int],
    errors: np.ndarray,
    target: float,
    *,
    cap: float,
    probes: Sequence[float] = PROBES,
) -> list[float]:
    """Per-layer sparsities meeting `target` over all weights with least summed error."""
    grid = np.array([0.0, *probes])
    total = float(sum(sizes))
    budget = target * total
    steps = np.arange(0.0, cap + 1e-9, STEP)
    curves = []
    for row in errors:
        curve = np.interp(steps, grid, np.concatenate([[0.0], row]))
        curves.append(np.maximum.accumulate(curve))  # more pruning never helps
    level = [0] * len(sizes)
    heap: list[tuple[float, int]] = []
    for i, n in enumerate(sizes):
        if len(steps) > 1 and n > 0:
            heapq.heappush(heap, ((curves[i][1] - curves[i][0]) / (n * STEP), i))
    removed = 0.0
    last = None
    while heap and removed < budget:
        _, i = heapq.heappop(heap)
        last = i
        level[i] += 1
        removed += sizes[i] * STEP
        k = level[i]
        if k + 1 < len(steps):
            heapq.heappush(heap, ((curves[i][k + 1] - curves[i][k]) / (sizes[i] * STEP), i))
    result = [float(steps[k]) for k in level]
    if removed > budget and last is not None:  # the last step overshot: take it back partly
        result[last] = max(0.0, result[last] - (removed - budget) / sizes[last])
    return result
