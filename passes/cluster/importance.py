"""What each weight's rounding costs the layer output: the weights of sensitivity-weighted k-means.

Plain k-means on a weight's values spends its palette entries where the values crowd,
whatever they multiply. The output of a Conv / Gemm / MatMul changes by sum_j dW_oj x_j,
whose energy over the calibration rows is, to a diagonal approximation of X^T X,
sum_j dW_oj^2 sum x_j^2: so weighing every value by the energy of its input column
(SqueezeLLM's Hessian-diagonal weighting, Kim et al. 2023) makes k-means minimise that
estimate of the output error instead of the weight error. Uncentered: the target
search's trials keep the biases as they are (the refinement after it refits them).

Read in one ORT pass over the probe feeds (onnxslim.column_energy: R x K per layer).
`weight_stats` adds each weight's X^T X where the indices are then chosen with error
feedback (assign.py). Weights without them (embedding tables, recurrent weights, a
tensor read by several nodes, layers whose input rows cannot be read) are clustered as
before, every value weighing the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from onnxslim.column_energy import column_energy, measurable
from onnxslim.feeds import Feed
from onnxslim.passes.prune.layers import Layer, find_layers

from .assign import Hessian, hessians
from .weights import Weight

MAX_ROWS = 4096  # rows per layer: a diagonal settles from far fewer than a refit needs


def weight_importance(
    model: ir.Model, weights: Sequence[Weight], feeds: Sequence[Feed], *, max_rows: int = MAX_ROWS
) -> dict[str, np.ndarray]:
    """Per clustered weight name: each value's input energy (the weight's shape); weights
    with one Conv / Gemm / MatMul reader whose input rows can be read."""
    readers: dict[str, list[Layer]] = {}
    for layer in find_layers(model, ops=("Conv", "Gemm", "MatMul"))[0]:
        readers.setdefault(layer.weight_name, []).append(layer)
    chosen: dict[str, Layer] = {}
    for weight in weights:
        found = readers.get(weight.name, [])
        if len(found) == 1 and not found[0].shared:
            chosen[found[0].name] = found[0]
    names = measurable(model, list(chosen))
    if not names or not feeds:
        return {}
    groups = {name: chosen[name].groups for name in names}
    energies = column_energy(model, names, feeds, max_rows=max_rows, groups=groups)
    result = {}
    for name, energy in energies.items():
        layer = chosen[name]
        w = layer.array()
        matrix_rows = layer.to_matrix(w).shape[0]
        square = energy.square / max(energy.rows, 1)  # [g, K]
        if matrix_rows % square.shape[0] or layer.to_matrix(w).shape[1] != square.shape[1]:
            continue
        per_group = matrix_rows // square.shape[0]
        result[layer.weight_name] = layer.from_matrix(np.repeat(square, per_group, axis=0), w.shape)
    return result


@dataclass(frozen=True)
class WeightStats:
    """What the data says about one weight: its values' k-means weights, its reader's X^T X."""

    importance: np.ndarray | None = None
    hessian: Hessian | None = None


def weight_stats(
    model: ir.Model, weights: Sequence[Weight], feeds: Sequence[Feed]
) -> dict[str, WeightStats]:
    """WeightStats per clustered weight name (weights the data says nothing about: absent)."""
    importances = weight_importance(model, weights, feeds)
    found = hessians(model, weights, feeds)
    return {
        name: WeightStats(importances.get(name), found.get(name))
        for name in sorted(set(importances) | set(found))
    }
