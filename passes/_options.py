"""Pass options: dataclass fields that carry their own help text.

The CLI (`onnxslim passes`), recipes and docs all read the same field metadata,
so an option is documented exactly once, where it is declared.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def option(default: Any, help: str, *, choices: tuple[Any, ...] | None = None) -> Any:
    """Declare a pass option with its default and one-line help."""
    metadata: dict[str, Any] = {"help": help}
    if choices is not None:
        metadata["choices"] = choices
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple or frozenset default: pass configurations are frozen")
    return dataclasses.field(default=default, metadata=metadata)


EFFORTS = ("fast", "default", "thorough")


def effort_option() -> Any:
    """The `effort` option of the searches at the accuracy target (prune, cluster)."""
    return option(
        "default",
        "allocation=target: how much the search measures (probe feeds, forms, refit rows): "
        "fast, default (minutes on a devmodel), thorough; the target check decides either way.",
        choices=EFFORTS,
    )


def check_choice(owner: object, name: str) -> None:
    """Raise ValueError when a field declared with `choices` holds another value."""
    field = next(f for f in dataclasses.fields(owner) if f.name == name)  # type: ignore[arg-type]
    value = getattr(owner, name)
    choices = field.metadata.get("choices")
    if choices is not None and value not in choices:
        raise ValueError(f"{name}={value!r}: expected one of {', '.join(map(str, choices))}")
