"""One exception hierarchy; the CLI maps each class to an exit code.

0 success, 1 a quality gate or parity check failed, 2 bad usage or bad input,
3 a pass failed. The API raises these and never prints.
"""

from __future__ import annotations


class OnnxSlimError(Exception):
    """Root of every error onnxslim raises on purpose."""

    exit_code: int = 3


class UsageError(OnnxSlimError):
    """Bad usage or bad input: a missing file, a model that is not ONNX, data that does not fit."""

    exit_code = 2


class ModelLoadError(UsageError):
    """The input model cannot be read, or refers to data it must not."""


class DataError(UsageError):
    """Calibration or validation data does not fit the model."""


class BudgetExceeded(UsageError):
    """Running the model took more time or memory than its budget (an endless Loop, a
    tensor bomb): bad input, not a crash."""


class GateFailed(OnnxSlimError):
    """A quality gate or a parity check failed; the result may still have been written."""

    exit_code = 1

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report


class PassFailed(OnnxSlimError):
    """A pass raised or produced a model ONNX Runtime cannot run."""

    exit_code = 3


class RuntimeFailure(OnnxSlimError):
    """ONNX Runtime refused to create a session or to run a model."""

    exit_code = 3


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type's name): for one-line errors."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
