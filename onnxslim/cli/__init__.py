"""Command-line entry point: dispatch to the command modules, map errors to exit codes.

Exit codes: 0 ok, 1 a quality gate or parity check failed, 2 bad usage or input,
3 a pass failed. Errors are one line on stderr; `--debug` shows the traceback.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import onnxruntime
import typer

from onnxslim.cli import cluster as _cluster  # noqa: F401
from onnxslim.cli import export as _export  # noqa: F401
from onnxslim.cli import inspect_cmd as _inspect  # noqa: F401
from onnxslim.cli import optimize as _optimize  # noqa: F401  (registers commands)
from onnxslim.cli import passes as _passes  # noqa: F401
from onnxslim.cli import prune as _prune  # noqa: F401
from onnxslim.cli import quantize as _quantize  # noqa: F401
from onnxslim.cli import run as _run  # noqa: F401  (run, search, recipes)
from onnxslim.cli import targets as _targets  # noqa: F401
from onnxslim.cli import validate as _validate  # noqa: F401
from onnxslim.cli._app import app, clashing_distribution, err
from onnxslim.errors import OnnxSlimError

# Usage errors and aborts as Typer raises them: recent Typer carries its own copy of click
# (and does not install click), older Typer raises click's own.
_USAGE_ERRORS: tuple[type[Exception], ...] = ()
_ABORTS: tuple[type[BaseException], ...] = (typer.Abort,)
try:
    from typer._click import exceptions as _typer_click

    _USAGE_ERRORS += (_typer_click.ClickException,)  # its Abort is typer.Abort
except ImportError:
    pass
try:
    from click import exceptions as _click
except ImportError:  # not installed with recent Typer
    pass
else:
    _USAGE_ERRORS += (_click.ClickException,)
    _ABORTS += (_click.Abort,)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns (and exits with) the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if debug:  # accepted anywhere on the line, not only before the command
        args = ["--debug", *(a for a in args if a != "--debug")]
    clash = clashing_distribution()
    if clash:
        sys.stderr.write(f"warning: {clash}\n")
    try:
        # Not standalone: usage errors (a bad option value, an unknown option) come back
        # here to be printed as one line like every other error, not as a Typer box.
        with cli_logging(debug):
            returned = app(args=args, prog_name="onnxslim", standalone_mode=False)
        code = returned if isinstance(returned, int) else 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except _USAGE_ERRORS as exc:
        code = int(getattr(exc, "exit_code", 2))
        if type(exc).__name__ != "NoArgsIsHelpError":  # that one has printed the help
            _report(_usage_line(exc), debug)
    except _ABORTS:
        err.print("aborted")
        code = 1
    except OnnxSlimError as exc:
        code = exc.exit_code
        _report(f"error: {exc}", debug)
    except KeyboardInterrupt:
        err.print("interrupted")
        code = 130
    except MemoryError:
        _report("error: out of memory", debug)
        code = 3
    except Exception as exc:  # a bug: still one line unless --debug
        _report(
            f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
            "(run with --debug for the traceback)",
            debug,
        )
        code = 3
    if argv is None:
        sys.exit(code)
    return code


def _usage_line(exc: Any) -> str:
    """`error: Invalid value for '--bits': ... (onnxslim cluster --help)` in one line."""
    message = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    return f"error: {message}{where}"


def _report(message: str, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    sys.stderr.write(message.rstrip() + "\n")


class _StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is at the time (pytest and rich swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:  # logging must never break a command
            self.handleError(record)


_LIBRARY_LOGGERS = ("onnx_ir", "onnxscript", "onnx", "onnxruntime")


@contextmanager
def cli_logging(debug: bool) -> Iterator[None]:
    """While a command runs: library chatter (onnx_ir's "Skipped deduplication of
    initializer ...", ORT warnings) stays off stderr unless --debug; errors still show.
    Everything is put back afterwards, so calling main() from Python leaves no trace."""
    root = logging.getLogger()
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in (*_LIBRARY_LOGGERS, "onnxslim")]
    saved = [(lg, lg.level) for lg in loggers]
    for lg in loggers[:-1]:
        lg.setLevel(logging.INFO if debug else logging.ERROR)
    loggers[-1].setLevel(logging.DEBUG if debug else logging.WARNING)
    root.addHandler(handler)
    _ort_severity(1 if debug else 3)
    try:
        yield
    finally:
        root.removeHandler(handler)
        for lg, level in saved:
            lg.setLevel(level)
        _ort_severity(2)  # onnxruntime's default: warnings


def _ort_severity(level: int) -> None:
    try:
        onnxruntime.set_default_logger_severity(level)
    except Exception:  # logging setup must never stop the CLI
        pass
