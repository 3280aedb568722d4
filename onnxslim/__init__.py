"""onnxslim: compress ONNX models (clean-up, int8, pruning, clustering), checked on ONNX Runtime."""

from __future__ import annotations

from onnxslim._version import __version__
from onnxslim.api import (
    ClusterResult,
    ModelSummary,
    OptimizeResult,
    PruneResult,
    QuantizeResult,
    RunReport,
    ValidationReport,
    cluster,
    inspect,
    optimize,
    prune,
    quantize,
    run,
    run_model,
    save,
    search,
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
from onnxslim.images import ImageFolder, ImagePreprocessing
from onnxslim.io import load
from onnxslim.pipeline import Pipeline

__all__ = [
    "DataError",
    "GateFailed",
    "ImageFolder",
    "ImagePreprocessing",
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
    "ClusterResult",
    "PruneResult",
    "QuantizeResult",
    "RunReport",
    "cluster",
    "inspect",
    "prune",
    "quantize",
    "run",
    "search",
    "run_model",
    "validate",
]
