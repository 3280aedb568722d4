"""The Typer application and what every command shares: consoles, JSON output, warnings."""

from __future__ import annotations

import json
import sys
from importlib import metadata
from typing import Any

import onnx
import onnxruntime
import typer
from rich.console import Console
from typer.core import TyperArgument, TyperOption

from onnxslim._version import __version__

app = typer.Typer(
    name="onnxslim",
    help="Compress ONNX models (clean-up, int8, pruning, clustering) and validate them on "
    "ONNX Runtime.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Tables and JSON go to stdout; progress, logs and errors to stderr.
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

# The distribution name (pyproject [project] name): import and command names stay
# `onnxslim`, the distribution differs from PyPI's unrelated OnnxSlim graph simplifier.
DISTRIBUTION = "onnxslim-edge"
_OUR_SUMMARY = "ONNX-centric model compressor"


def print_json(data: Any) -> None:
    """Machine-readable output: one JSON document on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def warn(message: str) -> None:
    """One yellow line on stderr (deprecations, doubtful guesses)."""
    err.print(f"[yellow]warning:[/] {message}", markup=True, highlight=False)


def deprecated(old: str, new: str, command: str) -> None:
    """The old spelling still works this release; say once what replaces it."""
    warn(f"`{command} {old}` is deprecated and will be removed in the next release; use {new}")


def version_text() -> str:
    return (
        f"onnxslim {__version__} (distribution {DISTRIBUTION}; onnx {onnx.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, Python {sys.version.split()[0]})"
    )


def _print_version(value: bool) -> None:
    if value:
        sys.stdout.write(version_text() + "\n")
        raise typer.Exit(0)


def clashing_distribution() -> str | None:
    """A one-line warning when PyPI's OnnxSlim (distribution `onnxslim`) is installed here.

    Both install the `onnxslim` import package and command, so one overwrites the
    other's files; an old install of this project under that name is not a clash.
    """
    for dist in metadata.distributions(name="onnxslim"):
        summary = (dist.metadata.get_all("Summary") or [""])[0]
        if not summary.startswith(_OUR_SUMMARY):
            break
    else:
        return None
    return (
        f"PyPI's OnnxSlim {dist.version} (distribution `onnxslim`) is installed in this "
        f"environment and shares the `onnxslim` package and command with {DISTRIBUTION}; "
        "install them in separate virtual environments"
    )


@app.callback()
def root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the version (and onnx, onnxruntime, Python versions) and exit.",
    ),
) -> None:
    """onnxslim command line."""


# Recent Typer shows Python types as placeholders (`<str>`, `<int range>`, `<list[str]>`);
# --help reads better with one convention, the upper-case words our own metavars use
# (PATH, N, POINTS, BYTES, NAME:D1,D2,...).
_PLACEHOLDERS = {
    "str": "TEXT",
    "path": "PATH",
    "int": "INTEGER",
    "int range": "INTEGER",
    "float": "FLOAT",
    "float range": "FLOAT",
    "list[str]": "TEXT",
}


def _placeholder(shown: str | None) -> str | None:
    if shown and shown.startswith("<") and shown.endswith(">"):
        inner = shown[1:-1]
        return _PLACEHOLDERS.get(inner, inner.upper())
    return shown


def _flag_type(self: TyperOption, ctx: Any) -> str | None:
    """Flags take no value: show no `<bool>` placeholder in --help (Typer >= 0.16 does)."""
    return None if self.is_flag else _placeholder(_option_type(self, ctx))


def _argument_type(self: TyperArgument, ctx: Any) -> str | None:
    return _placeholder(_arg_type(self, ctx))


_option_type = TyperOption.display_type_rich
TyperOption.display_type_rich = _flag_type  # type: ignore[method-assign]
_arg_type = TyperArgument.display_type_rich
TyperArgument.display_type_rich = _argument_type  # type: ignore[method-assign, assignment, unused-ignore]
