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
feedback (assign.py). A weight read by several such nodes (an unrolled LSTM's
Gemm, one per time step) sums its readers' statistics. Weights without them (embedding
tables, ONNX LSTM / GRU weights, a tensor also read by other ops, layers whose input rows
cannot be read) are clustered as before, every value weighing the same.
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
MIN_READER_ROWS = 256  # rows per reader of a weight read by many nodes


def readers_of(model: ir.Model, weights: Sequence[Weight]) -> dict[str, list[Layer]]:
    """Per clustered weight name: the Conv / Gemm / MatMul nodes reading it, when every node
    that reads it is one of those, with the same matrix view (an unrolled LSTM's Gemms, one
    per time step, share one weight: its output error is summed over them all)."""
    readers: dict[str, list[Layer]] = {}
    for layer in find_layers(model, ops=("Conv", "Gemm", "MatMul"))[0]:
        readers.setdefault(layer.weight_name, []).append(layer)
    result = {}
    for weight in weights:
        found = readers.get(weight.name, [])
        if not found or len(found) != found[0].uses:
            continue
        views = {(layer.op_type, layer.trans_b, layer.groups) for layer in found}
        if len(views) == 1 and len(measurable(model, [layer.name for layer in found])) == len(
            found
        ):
            result[weight.name] = found
    return result


def weight_importance(
    model: ir.Model,
    weights: Sequence[Weight],
    feeds: Sequence[Feed],
    *,
    max_rows: int = MAX_ROWS,
    readers: dict[str, list[Layer]] | None = None,
    rows_seen: dict[str, int] | None = None,
) -> dict[str, np.ndarray]:
    """Per clustered weight name: each value's input energy (the weight's shape), summed over
    the weight's readers (`readers_of`); `rows_seen` gets the rows each weight had."""
    readers = readers_of(model, weights) if readers is None else readers
    names = [layer.name for found in readers.values() for layer in found]
    if not names or not feeds:
        return {}
    groups = {layer.name: layer.groups for found in readers.values() for layer in found}
    per_reader = max(MIN_READER_ROWS, max_rows // max(len(found) for found in readers.values()))
    energies = column_energy(model, names, feeds, max_rows=per_reader, groups=groups)
    result = {}
    for weight_name, found in readers.items():
        measured = [energies[layer.name] for layer in found if layer.name in energies]
        if len(measured) != len(found):
            continue
        layer = found[0]
        w = layer.array()
        rows = sum(energy.rows for energy in measured)
        if rows_seen is not None:
            rows_seen[weight_name] = rows
        square = np.sum([energy.square for energy in measured], axis=0) / max(rows, 1)  # [g, K]
        matrix = layer.to_matrix(w)
        if matrix.shape[0] % square.shape[0] or matrix.shape[1] != square.shape[1]:
            continue
        per_group = matrix.shape[0] // square.shape[0]
        result[weight_name] = layer.from_matrix(np.repeat(square, per_group, axis=0), w.shape)
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
    readers = readers_of(model, weights)
    rows: dict[str, int] = {}
    importances = weight_importance(model, weights, feeds, readers=readers, rows_seen=rows)
    found = hessians(model, readers, feeds, rows=rows)
    return {
        name: WeightStats(importances.get(name), found.get(name))
        for name in sorted(set(importances) | set(found))
    }
