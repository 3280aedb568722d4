"""Find tensors that one int8 scale cannot carry, from their calibrated ranges.

Why: onnxruntime's quantize_static made a YOLOv8 detector lose every detection:
its output is a Concat of box coordinates (0-640 pixels) and class scores (0-1),
and one uint8 scale of 2.5 pixels per step rounds every score to 0. A quantizer
that keeps accuracy must notice such tensors before it inserts Q/DQ. Rules
(numbered; the reasons quote them):

  (1) mixed join: a Concat whose non-constant inputs' ranges differ in width by
      more than `ratio` (default 16x: the narrow input would get fewer than 16 of
      256 levels; a 32-pixel detector's boxes (0-31) beside its scores (0-1) are
      30x apart and leave the scores 8 levels, enough to tie class scores), or an
      Add whose inputs differ by more than 4 * `ratio` (an Add's output only needs
      the precision of its wider input, so it tolerates more). The output stays
      float; each input keeps its own Q/DQ pair and hence its own range.
  (2) probability output: a graph output reached from Sigmoid/Softmax through
      layout-only ops (Reshape, Transpose, Concat, Slice, ...). Those tensors stay
      float: scores near a threshold are what a detector's or classifier's
      post-processing compares, and 1/255 steps move them.
  (3) extreme range: a tensor whose calibrated range reaches 1e30 or that saw
      inf/NaN (additive attention masks of finfo.min): any scale covering it
      leaves no resolution for the real values. It stays float.

The decisions are data with reasons; the quantizer reads `float_tensors` and
`float_nodes`, and the report prints every `Protection`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

DEFAULT_RATIO = 16.0
ADD_RATIO_FACTOR = 4.0
EXTREME_MAGNITUDE = 1e30
_JOINS = {"Concat", "Add"}
_PROBABILITY = {"Sigmoid", "Softmax", "LogSoftmax", "HardSigmoid"}
# Ops that only move values around: a probability stays a probability through them.
_LAYOUT = {
    "Reshape",
    "Transpose",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Identity",
    "Concat",
    "Slice",
    "Gather",
    "Split",
    "Expand",
    "Tile",
    "GatherElements",
    "ReduceMax",
    "MaxPool",
}


@dataclass(frozen=True)
class Protection:
    """One decision: keep `tensor` (and `nodes`) float, and why."""

    tensor: str
    rule: str  # "mixed-join", "probability-output", "extreme-range"
    nodes: tuple[str, ...]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "tensor": self.tensor,
            "rule": self.rule,
            "nodes": list(self.nodes),
            "reason": self.reason,
        }


def find_protections(
    model: ir.Model,
    ranges: Mapping[str, Any],
    *,
    ratio: float = DEFAULT_RATIO,
    probability_outputs: bool = True,
) -> list[Protection]:
    """Every protection rules (1)-(3) call for; `ranges` maps tensor name to its statistics.

    A range may be a (lo, hi) pair, an object with `lo`/`hi` (ranges.Range) or with
    `min`/`max` (ranges.TensorStats, whose `extreme`/`nonfinite` flags rule (3) reads).
    """
    found: dict[str, Protection] = {}

    def add(p: Protection) -> None:
        found.setdefault(p.tensor, p)

    graph = model.graph
    for value_name, stats in ranges.items():  # rule (3)
        bounds = _bounds(stats)
        flagged = bool(getattr(stats, "extreme", False) or getattr(stats, "nonfinite", 0))
        if bounds is None and not flagged:
            continue
        magnitude = max(abs(bounds[0]), abs(bounds[1])) if bounds else math.inf
        if flagged or not math.isfinite(magnitude) or magnitude >= EXTREME_MAGNITUDE:
            add(
                Protection(
                    value_name,
                    "extreme-range",
                    (),
                    f"(3) range reaches {magnitude:.3g}: a mask or sentinel constant would "
                    "leave no int8 resolution for the real values",
                )
            )
    for node in graph:  # rule (1)
        if node.op_type not in _JOINS or node.domain not in ("", "ai.onnx") or not node.outputs:
            continue
        widths = []
        for value in node.inputs:
            if value is None or value.const_value is not None:
                continue
            bounds = _bounds(ranges.get(value.name or ""))
            if bounds is not None:
                widths.append((_width(bounds), value.name, bounds))
        positive = [w for w in widths if w[0] > 0]
        if len(positive) < 2:
            continue
        wide, narrow = max(positive), min(positive)
        limit = ratio * (ADD_RATIO_FACTOR if node.op_type == "Add" else 1.0)
        if wide[0] > limit * narrow[0]:
            add(
                Protection(
                    node.outputs[0].name or "",
                    "mixed-join",
                    (node.name or "",),
                    f"(1) {node.op_type} joins {wide[1]} {_fmt(wide[2])} with {narrow[1]} "
                    f"{_fmt(narrow[2])}, {wide[0] / narrow[0]:.0f}x apart: output kept float, "
                    "inputs keep their own ranges",
                )
            )
    if probability_outputs:  # rule (2)
        for protection in _probability_paths(graph):
            add(protection)
    return list(found.values())


def float_tensors(protections: Iterable[Protection]) -> set[str]:
    """Tensors that must get no Q/DQ pair."""
    return {p.tensor for p in protections}


def float_nodes(protections: Iterable[Protection]) -> set[str]:
    """Nodes that must run in float."""
    return {n for p in protections for n in p.nodes if n}


def _probability_paths(graph: ir.Graph) -> list[Protection]:
    """Rule (2): walk back from each graph output through layout ops to Sigmoid/Softmax."""
    result = []
    for output in graph.outputs:
        path: list[ir.Node] = []
        sources: list[ir.Node] = []
        stack = [output]
        seen: set[int] = set()
        while stack:
            value = stack.pop()
            node = value.producer()
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            if node.op_type in _PROBABILITY:
                sources.append(node)
            elif node.op_type in _LAYOUT:
                path.append(node)
                data_inputs = node.inputs[:1] if node.op_type not in ("Concat",) else node.inputs
                stack.extend(v for v in data_inputs if v is not None and v.const_value is None)
        if not sources:
            continue
        ops = sorted({s.op_type for s in sources})
        for node in sources + path:
            for value in node.outputs:
                result.append(
                    Protection(
                        value.name or "",
                        "probability-output",
                        (node.name or "",) if node in path else (),
                        f"(2) {'/'.join(ops)} scores reach graph output {output.name!r}: "
                        "kept float so thresholds and rankings are not moved by 1/255 steps",
                    )
                )
    return result


def _bounds(stats: Any) -> tuple[float, float] | None:
    if stats is None:
        return None
    if isinstance(stats, (tuple, list)) and len(stats) == 2:
        lo, hi = stats
    elif hasattr(stats, "lo") and hasattr(stats, "hi"):
        lo, hi = stats.lo, stats.hi
    elif hasattr(stats, "min") and hasattr(stats, "max"):
        if getattr(stats, "observed", True) is False:
            return None
        lo, hi = stats.min, stats.max
    else:
        return None
    lo, hi = float(lo), float(hi)
    if math.isnan(lo) or math.isnan(hi):
        return None
    return lo, hi


def _width(bounds: tuple[float, float]) -> float:
    """The span an affine int8 grid must cover: the range widened to contain zero."""
    return max(bounds[1], 0.0) - min(bounds[0], 0.0)


def _fmt(bounds: tuple[float, float]) -> str:
    return f"[{bounds[0]:.3g}, {bounds[1]:.3g}]"


def constant_range(value: ir.Value) -> tuple[float, float] | None:
    """The range of a constant tensor, for callers that want constants considered too."""
    if value.const_value is None:
        return None
    array = value.const_value.numpy()
    return (float(np.min(array)), float(np.max(array))) if array.size else None
