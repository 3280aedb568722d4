"""Keep the palette refinement only when the refined model still meets the accuracy target.

The target search (target.py) judges k-means palettes; the least-squares refinement
(refine.py) runs once afterwards and lowers each layer's error on the calibration
rows, but not always the model's: on the captcha CRNN it moved the CTC decisions
2.25 points past the target while the unrefined palettes lost none (exit 1 after a
search that had passed). So with a check handed in, the refined model is checked once
more; when it misses, every weight goes back to its unrefined palette (and every
bias to its value before the refit) and that model is checked too. The unrefined
model is kept when it meets the target; when both miss, the refined one (lower
layer errors) is kept and the workflow's final check reports the miss.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from .palette import Palettized
from .refine import LayerError
from .target import Accept

Snapshot = dict[str, ir.TensorProtocol | None]


def snapshot(model: ir.Model) -> Snapshot:
    """Every initializer's current tensor (refinement replaces tensors, never mutates them)."""
    return {name: value.const_value for name, value in model.graph.initializers.items()}


def guard(
    model: ir.Model,
    before: Snapshot,
    unrefined: Mapping[str, Palettized],
    refined: dict[str, Palettized],
    layers: Sequence[LayerError],
    accept: Accept,
    narrow: Callable[[Palettized], Palettized],
) -> tuple[dict[str, Palettized], list[LayerError], dict[str, Any]]:
    """The palettes and layer records to keep, and what was checked (see the module doc).

    `model` holds the refined dense weights on entry and the kept ones on return;
    `narrow` is the palette storage type, applied before checking so each check sees
    the values the file will hold.
    """
    kept = {name: narrow(p) for name, p in refined.items()}
    _set_dense(model, kept)
    refined_state = snapshot(model)
    refined_check = accept(model)
    report: dict[str, Any] = {"refined_passed": refined_check.passed, "kept": "refined"}
    if refined_check.passed:
        return kept, list(layers), report
    report["refined_missed"] = refined_check.message()
    _restore(model, before)
    fallback = {name: narrow(p) for name, p in unrefined.items()}
    _set_dense(model, fallback)
    unrefined_check = accept(model)
    report["unrefined_passed"] = unrefined_check.passed
    if unrefined_check.passed:
        report["kept"] = "unrefined"
        undone = [dataclasses.replace(r, error_after=r.error_before, refit=False) for r in layers]
        return fallback, undone, report
    report["unrefined_missed"] = unrefined_check.message()
    _restore(model, refined_state)  # both miss: back to the refined weights and biases
    return kept, list(layers), report


def note(report: Mapping[str, Any]) -> str:
    """One line for the run's notes."""
    if report["kept"] == "unrefined":
        return (
            "palette refinement undone: the refined model missed the target "
            f"({report['refined_missed']}); the unrefined palettes meet it"
        )
    if report["refined_passed"]:
        return "palette refinement kept: the refined model meets the target"
    return (
        "palette refinement kept although the refined model misses the target: "
        f"the unrefined palettes miss it too ({report['unrefined_missed']})"
    )


def _set_dense(model: ir.Model, palettes: Mapping[str, Palettized]) -> None:
    initializers = model.graph.initializers
    for name, p in palettes.items():
        value = initializers.get(name)
        if value is not None:
            value.const_value = ir.Tensor(p.dense(), name=name)


def _restore(model: ir.Model, before: Snapshot) -> None:
    """Initializers as in `before`; biases the refit added go back to the zeros they began as."""
    for name, value in model.graph.initializers.items():
        if name in before:
            value.const_value = before[name]
        elif value.const_value is not None:
            array = value.const_value.numpy()
            value.const_value = ir.Tensor(np.zeros_like(array), name=name)
