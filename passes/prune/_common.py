"""What the pruning passes share: calibration feeds, node names, the run summary.

A pass keeps no state on itself; what it measured on a run (per-layer sparsity
targets, refit errors, groups it could not rewrite) goes into `model.meta` under
SUMMARY_KEY, which is not serialized, so the caller's report can read it off the
model the pipeline hands back.
"""

from __future__ import annotations

from typing import Any

import onnx_ir as ir

from onnxslim.calibration import read_feeds
from onnxslim.feeds import Feed

SUMMARY_KEY = "onnxslim.prune"


def load_feeds(calib: Any, count: int, model: ir.Model) -> list[Feed] | None:
    """Up to `count` calibration feeds, checked against `model`'s inputs; None if no data.

    `calib` is anything onnxslim.calibration reads (an .npz of stacked samples, a
    folder, an ORT CalibrationDataReader, a list of feed dicts). Extra arrays such
    as an evaluation file's `labels` are ignored.
    """
    if calib is None:
        return None
    return read_feeds(calib, model, limit=count, extra="ignore")


def name_nodes(model: ir.Model) -> bool:
    """Give every main-graph node a unique name; True if any node was unnamed."""
    taken = {n.name for n in model.graph if n.name}
    counter = 0
    named = False
    for node in model.graph:
        if node.name:
            continue
        while f"{node.op_type}_{counter}" in taken:
            counter += 1
        node.name = f"{node.op_type}_{counter}"
        taken.add(node.name)
        named = True
    return named


def summary(model: ir.Model) -> dict[str, Any]:
    """The pruning summary stored on `model` by the last pruning pass (empty if none)."""
    return dict(model.meta.get(SUMMARY_KEY, {}) or {})


def store_summary(model: ir.Model, **items: Any) -> None:
    current = summary(model)
    current.update(items)
    model.meta[SUMMARY_KEY] = current


def check_fraction(name: str, value: float, *, low: float = 0.0, high: float = 1.0) -> None:
    if not (low <= value < high):
        raise ValueError(f"{name}={value}: expected {low} <= {name} < {high}")
