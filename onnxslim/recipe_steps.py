"""A recipe step's options checked against the pass catalogue (registry.py).

A `[[pass]]` table names a high-level step (optimize, quantize, prune, cluster: the
CLI commands' options) or any pass of the catalogue. `check_step` builds the step's
pass once, without data, so an unknown option, a value of the wrong JSON type or a
value the pass refuses is a UsageError naming the key before any work starts. The
option names and their types come from the pass classes' dataclass fields, the same
fields `onnxslim passes` and the CLI read (tests/test_catalogue.py).

recipe.py parses the document around the steps (data, gates, measure, search).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from onnxslim.errors import UsageError
from onnxslim.passes._run_data import TakesData
from onnxslim.registry import (
    CLUSTER_PASS,
    PRUNE_METHODS,
    PRUNE_STORAGE,
    QUANTIZE_MODES,
    available_passes,
    make_cluster_pass,
    make_pass,
    make_prune_pass,
    make_quantize_pass,
    pass_class,
    prune_pass_class,
    quantize_pass_class,
)
from onnxslim.suggest import did_you_mean

STEPS = ("optimize", "quantize", "prune", "cluster")
# A step's own data (a path read in place of the recipe's [data]): not an option of its
# pass, which takes data as an argument of its run (passes/_run_data.py).
DATA_KEYS = ("calib",)
# Options of the high-level steps that are not fields of their pass classes.
STEP_EXTRAS: dict[str, dict[str, Any]] = {
    "quantize": {"mode": "static", "max_drop": None},
    "prune": {"method": "magnitude", "sparsity": 0.5, "storage": "packed"},
    "cluster": {"bits": 4, "strip_metadata": True},
    "optimize": {},
}


@dataclass(frozen=True)
class Step:
    """One entry of the recipe's `[[pass]]` list: a name and its options (JSON values)."""

    name: str
    options: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.name if self.name in STEPS else "pass"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.options}


def check_step(step: Step, where: str, index: int) -> None:
    """Build the step's pass once (without data) so bad options fail before any work."""
    key = f"pass[{index}]"
    options = step.options
    if step.name in STEPS:
        extras = STEP_EXTRAS[step.name]
        classes = _step_classes(step, where, key)
        known = set(extras) | {f.name for cls in classes for f in dataclasses.fields(cls) if f.init}
        if any(issubclass(cls, TakesData) for cls in classes):
            known |= set(DATA_KEYS)
        unknown_keys(options, sorted(known), where, f"{key}.", what=f"option of {step.name}")
        for name, default in extras.items():
            if name in options:
                _check_value(options[name], default, None, where, f"{key}.{name}")
        fields = {f.name: f for cls in classes for f in dataclasses.fields(cls)}
        for name, value in options.items():
            if name in fields and name not in extras:
                f = fields[name]
                _check_value(value, f.default, f.metadata.get("choices"), where, f"{key}.{name}")
        if step.name == "quantize" and options.get("max_drop") is not None:
            if options.get("mode", "static") != "static":
                raise UsageError(f"{where}: {key}.max_drop: accuracy-aware mode needs mode static")
        try:
            _build(step)
        except UsageError as exc:
            raise UsageError(f"{where}: {key} ({step.name}): {exc}") from None
        return
    cls = available_passes().get(step.name)
    if cls is None:
        raise UsageError(
            f"{where}: {key}.name: unknown pass {step.name!r}; expected one of "
            f"{', '.join(STEPS)} or a pass `onnxslim passes` lists"
            f"{did_you_mean(step.name, [*STEPS, *available_passes()])}"
        )
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    data_keys = DATA_KEYS if issubclass(cls, TakesData) else ()
    unknown_keys(
        options, sorted([*fields, *data_keys]), where, f"{key}.", what=f"option of {step.name}"
    )
    for name, value in options.items():
        spec = fields.get(name)
        if spec is not None:
            _check_value(value, spec.default, spec.metadata.get("choices"), where, f"{key}.{name}")
    try:
        make_pass(
            step.name,
            {
                k: tuple(v) if isinstance(v, list) else v
                for k, v in options.items()
                if k not in data_keys
            },
        )
    except UsageError as exc:
        raise UsageError(f"{where}: {key} ({step.name}): {exc}") from None


def _step_classes(step: Step, where: str, key: str) -> list[type]:
    options = step.options
    if step.name == "quantize":
        mode = options.get("mode", "static")
        if mode not in QUANTIZE_MODES:
            bad_value(where, f"{key}.mode", f"one of {', '.join(QUANTIZE_MODES)}", mode)
        return [quantize_pass_class(mode)]
    if step.name == "prune":
        method = options.get("method", "magnitude")
        if method not in PRUNE_METHODS:
            bad_value(where, f"{key}.method", f"one of {', '.join(PRUNE_METHODS)}", method)
        return [prune_pass_class(method)]
    if step.name == "cluster":
        return [pass_class(CLUSTER_PASS)]
    return []


def _build(step: Step) -> None:
    """Construct the step's pass with its options (the pass's own checks run here)."""
    options: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in step.options.items()
    }
    classes = _step_classes(step, "", "")
    if classes and issubclass(classes[0], TakesData):  # data: the run hands it to the pass
        for name in DATA_KEYS:
            options.pop(name, None)
    if step.name == "quantize":
        mode = options.pop("mode", "static")
        options.pop("max_drop", None)
        make_quantize_pass(mode, **options)
    elif step.name == "prune":
        method = options.pop("method", "magnitude")
        sparsity = options.pop("sparsity", 0.5)
        storage = options.pop("storage", "packed")
        if storage not in PRUNE_STORAGE:
            raise UsageError(
                f"storage: expected one of {', '.join(PRUNE_STORAGE)}, got {storage!r}"
            )
        if not 0 <= sparsity < 1:
            raise UsageError(f"sparsity: expected 0 <= S < 1, got {sparsity}")
        if method == "channels":
            options.setdefault("ratio", sparsity)
        elif method == "magnitude":
            options.setdefault("sparsity", sparsity)
        make_prune_pass(method, **options)
    elif step.name == "cluster":
        options.pop("strip_metadata", None)
        make_cluster_pass(**options)


def _check_value(value: Any, default: Any, choices: Any, where: str, key: str) -> None:
    """The value's JSON type must match the option's default (bool, number, string, list)."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            bad_value(where, key, "true or false", value)
    elif isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            bad_value(where, key, "a number", value)
        if (
            isinstance(default, int)
            and not isinstance(default, bool)
            and isinstance(value, float)
            and not value.is_integer()
        ):
            bad_value(where, key, "an integer", value)
    elif isinstance(default, str):
        if not isinstance(value, str):
            bad_value(where, key, "a string", value)
    elif isinstance(default, (tuple, frozenset)):
        if not isinstance(value, list):
            bad_value(where, key, "a list", value)
    if choices is not None and value not in choices:
        bad_value(where, key, f"one of {', '.join(map(str, choices))}", value)


def unknown_keys(
    table: Mapping[str, Any],
    known: Any,
    where: str,
    prefix: str,
    what: str = "key",
    old: Any = (),
) -> None:
    """Every unknown key of `table` at once, each with its closest known key; `old` names
    are accepted (they warn elsewhere) but neither listed nor suggested."""
    known = list(known)
    bad = [
        f"{prefix}{key}: unknown {what}{did_you_mean(str(key), known)}"
        for key in table
        if key not in known and key not in old
    ]
    if bad:
        raise UsageError(f"{where}: {'; '.join(bad)} (expected one of {', '.join(known)})")


def bad_value(where: str, key: str, expected: str, value: Any) -> None:
    raise UsageError(f"{where}: {key}: expected {expected}, got {json.dumps(value, default=str)}")
