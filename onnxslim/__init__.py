"""onnxslim: compress ONNX models (clean-up, int8, pruning, clustering), checked on ONNX Runtime."""

from __future__ import annotations

from onnxslim._version import __version__
from onnxslim.api import (
    ModelSummary,
    OptimizeResult,
    ValidationReport,
    inspect,
    optimize,
    run,
    run_model,
    save,
    validate,
)
from onnxslim.errors import (
    DataError,
    GateFailed,
    ModelLoadError,
    OnnxSlimError,
    PassFailed,
    UsageError,
)
from onnxslim.io import load
from onnxslim.pipeline import Pipeline

__all__ = [
    "DataError",
    "GateFailed",
    "ModelLoadError",
    "OnnxSlimError",
    "OptimizeResult",
    "PassFailed",
    "Pipeline",
    "UsageError",
    "load",
    "optimize",
    "save",
    "__version__",
    "ModelSummary",
    "ValidationReport",
    "inspect",
    "run",
    "run_model",
    "validate",
]
