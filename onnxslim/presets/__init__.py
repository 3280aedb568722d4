"""Recipes shipped with onnxslim: `onnxslim recipes` lists them, `recipes show` prints one.

Each preset is a TOML recipe file beside this module (package data). Presets name no
data files: calibration and evaluation data come from `--calib` / `--eval`.
"""

from __future__ import annotations

import sys
from importlib import resources

from onnxslim.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def names() -> list[str]:
    return sorted(
        p.name[:-5] for p in resources.files(__package__).iterdir() if p.name.endswith(".toml")
    )


def text(name: str) -> str:
    """The preset's recipe file, as shipped (an editable starting point)."""
    if name not in names():
        raise UsageError(f"no preset {name!r}; presets: {', '.join(names())}")
    return resources.files(__package__).joinpath(f"{name}.toml").read_text(encoding="utf-8")


def description(name: str) -> str:
    return str(tomllib.loads(text(name)).get("description", ""))
