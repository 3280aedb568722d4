"""Which weights pruning drops: each weight's effect on its layer's output, not its size.

Magnitude pruning drops the smallest |W_oj|; but a small weight on an input column that
swings widely can move the output more than a large one on a column that hardly varies.
The change of output o when W_oj goes is W_oj x_j, so its energy over the calibration
rows is W_oj^2 sum (x_j - mean_j)^2 (centered: the refit's bias absorbs the mean). The
score is its square root, |W_oj| ||x_j - mean_j|| (Wanda, Sun et al. 2023, on centered
inputs), compared over the whole layer: the layer loses the weights of least output
energy, then the least-squares refit (lstsq.py) compensates with the ones kept.

Measured (docs/benchmarks.md): on the layers of task_mobilenetv3, task_yolov8 and
digits_cnn, lower layer output error than magnitude at the same sparsity after the same
refit on most layers (a depthwise conv of task_mobilenetv3 at 80 %: 0.34 -> 0.025), about
equal on the rest. At model level the gain is smaller than per layer and not uniform:
task_mobilenetv3's logits at 50 % moved 0.075 instead of 0.107 (relative RMS on its
evaluation images) but at 70 % 0.48 instead of 0.43; digits_transformer's search
reached 60 % instead of 50 %; on the task benchmark's nine models the search reached
further on one (task_dbnet 75 -> 80 %) and less far on three (task_mobilenetv3 70 -> 60 %,
lac_bigru 85 -> 80 %, minilm 40 -> 20 %), so magnitude stays the default (MagnitudePruning
option `saliency`). The OBS / SparseGPT saliency W_oj^2 / [(G + lam I)^-1]_jj
was no better after the refit (which already does the compensation OBS models) and
costs a K^3 inverse per layer, so it is not used.

Where no calibration data reaches a layer the score is |W| (magnitude), so the masks
are the old ones; so is a weight read by several nodes (an unrolled LSTM's Gemms: the
first step's recurrent input is all zeros, and one reader's columns do not speak for
the others: captcha_crnn pruned 10 % by its first reader's score moved the logits 5x
more than by magnitude).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxslim.activations import NormalEquations
from onnxslim.column_energy import ColumnEnergy, column_energy, measurable
from onnxslim.feeds import Feed
from onnxslim.passes.prune.layers import Layer

Scores = Mapping[str, np.ndarray]  # weight name -> non-negative score, the weight's shape


def activation_score(layer: Layer, energy: ColumnEnergy) -> np.ndarray:
    """|W_oj| sqrt(centered energy of column j), in the weight's shape."""
    w = layer.array()
    matrix = np.abs(layer.to_matrix(w).astype(np.float64))
    spread = np.sqrt(energy.centered())  # [g, K]
    groups = spread.shape[0]
    if matrix.shape[0] % groups or matrix.shape[1] != spread.shape[1]:
        return np.abs(w.astype(np.float64))  # the stats do not line up: magnitude
    per_group = matrix.shape[0] // groups
    scaled = matrix * np.repeat(spread, per_group, axis=0)
    return layer.from_matrix(scaled, w.shape)


def layer_scores(
    model: ir.Model,
    layers: Sequence[Layer],
    feeds: Sequence[Feed] | None,
    sums: Mapping[str, NormalEquations],
    *,
    max_rows: int,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Activation scores per weight name: from the refit's normal equations where a layer has
    them, else from one ORT pass reading only the column energies (layers too wide for the
    refit); layers no data reaches are left out (their masks stay by magnitude)."""
    layers = [layer for layer in layers if not layer.shared]
    energies: dict[str, ColumnEnergy] = {}
    for layer in layers:
        found = sums.get(layer.name)
        energy = ColumnEnergy.of(found) if found is not None else None
        if energy is not None:
            energies[layer.name] = energy
    missing = measurable(model, [layer.name for layer in layers if layer.name not in energies])
    if missing and feeds:
        groups = {layer.name: layer.groups for layer in layers}
        energies.update(
            column_energy(model, missing, feeds, max_rows=max_rows, seed=seed, groups=groups)
        )
    scores = {}
    for layer in layers:
        energy = energies.get(layer.name)
        if energy is not None and layer.weight_name not in scores:
            scores[layer.weight_name] = activation_score(layer, energy)
    return scores


def score_of(layer: Layer, scores: Scores | None) -> np.ndarray:
    """The layer's activation score, or |W| where it has none."""
    found = scores.get(layer.weight_name) if scores is not None else None
    return found if found is not None else np.abs(layer.array())
