"""The CLI's options and the recipe keys are checked against the passes' own options.

A pass declares each option once, as a dataclass field with its default, help and
choices (passes/_options). A command flag that configures a pass must be one of
those fields under the same name (or a declared rename), with the same default, and
its help must name every choice the field allows; a flag that is no field must be
one of the workflow's own (data, output, reporting). A recipe step accepts every
field of its pass and refuses a key that is none.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from onnxslim.cli.cluster import cluster_command
from onnxslim.cli.prune import prune_command
from onnxslim.cli.quantize import quantize_command
from onnxslim.errors import UsageError
from onnxslim.recipe import parse_document
from onnxslim.registry import (
    CLUSTER_PASS,
    PRUNE_METHODS,
    QUANTIZE_MODES,
    pass_class,
    pass_fields,
    prune_pass_class,
    quantize_pass_class,
)

# Flags of the workflow itself: data, output, reporting, the gate; no pass reads them.
WORKFLOW_FLAGS = {
    "model",
    "output",
    "calib",
    "data",
    "eval_data",
    "verify",
    "force",
    "overwrite",
    "json_output",
    "max_drop",
    "target_error",
    "runs",
    "mode",
    "method",
    "storage",
    "nm",
    "sparsity",
    "budget",
    "max_size",
    "mixed",
    "optimize",
    "keep_metadata",
    "external_data",
    "external_threshold",
    "image_preprocess",
    "input_shape",  # fixes symbolic dims before any pass (FixInputShapes), like optimize's
}
# CLI name -> (pass option, how the flag's default maps onto the option's).
RENAMED: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "per_tensor": ("per_channel", lambda v: not v),
    "weight_bits": ("bits", lambda v: v),
    "per_channel_groups": ("group_size", lambda v: v),
    "int8": ("int8_grid", lambda v: v),
    "requantize": ("force", lambda v: v),
}


def _cli_options(command: Callable[..., Any]) -> dict[str, Any]:
    """Parameter name -> Typer's OptionInfo/ArgumentInfo, read from the signature."""
    return {name: p.default for name, p in inspect.signature(command).parameters.items()}


def _fields(classes: Iterable[type]) -> dict[str, dataclasses.Field[Any]]:
    found: dict[str, dataclasses.Field[Any]] = {}
    for cls in classes:
        for name, field in pass_fields(cls).items():
            found.setdefault(name, field)
    return found


def _check(command: Callable[..., Any], classes: list[type]) -> list[str]:
    fields = _fields(classes)
    problems = []
    for name, info in _cli_options(command).items():
        option, convert = RENAMED.get(name, (name, lambda v: v))
        field = fields.get(option)
        if field is None:
            if name not in WORKFLOW_FLAGS:
                problems.append(f"--{name}: neither a pass option nor a workflow flag")
            continue
        default = getattr(info, "default", None)
        default = tuple(default) if isinstance(default, list) else default
        if default is not None and default is not ... and convert(default) != field.default:
            problems.append(f"--{name}: default {default!r}, the pass's {field.default!r}")
        for choice in field.metadata.get("choices") or ():
            if str(choice) not in (getattr(info, "help", "") or ""):
                problems.append(f"--{name}: help does not name the choice {choice!r}")
    return problems


def test_quantize_flags_are_the_passes_options() -> None:
    classes = [quantize_pass_class(mode) for mode in QUANTIZE_MODES]
    assert _check(quantize_command, classes) == []


def test_prune_flags_are_the_passes_options() -> None:
    classes = [prune_pass_class(method) for method in PRUNE_METHODS]
    assert _check(prune_command, classes) == []


def test_cluster_flags_are_the_passes_options() -> None:
    problems = _check(cluster_command, [pass_class(CLUSTER_PASS)])
    assert problems == []


def test_the_check_catches_a_drifted_default() -> None:
    """The check can fail: a flag whose default differs from its option's is reported."""
    import typer

    def drifted(percentile: float = typer.Option(99.9, "--percentile", help="")) -> None: ...

    assert _check(drifted, [quantize_pass_class("static")]) == [
        "--percentile: default 99.9, the pass's 99.99"
    ]


def _recipe(step: dict[str, Any]) -> None:
    parse_document({"pass": [step]}, source="recipe.toml", base=Path("."))


def _value(field: dataclasses.Field[Any]) -> Any:
    default = field.default
    return list(default) if isinstance(default, tuple) else default


@pytest.mark.parametrize(
    "step, classes",
    [
        *(({"name": "quantize", "mode": m}, [quantize_pass_class(m)]) for m in QUANTIZE_MODES),
        *(({"name": "prune", "method": m}, [prune_pass_class(m)]) for m in PRUNE_METHODS),
        ({"name": "cluster"}, [pass_class(CLUSTER_PASS)]),
    ],
    ids=lambda v: "-".join(str(x) for x in v.values()) if isinstance(v, dict) else "",
)
def test_recipe_steps_take_every_option_of_their_pass(
    step: dict[str, Any], classes: list[type]
) -> None:
    for name, field in _fields(classes).items():
        if field.metadata.get("internal") or field.metadata.get("data") or field.default is None:
            continue  # data comes from [data]; None defaults have no type to write
        _recipe({**step, name: _value(field)})
    with pytest.raises(UsageError, match="no_such_option"):
        _recipe({**step, "no_such_option": 1})
