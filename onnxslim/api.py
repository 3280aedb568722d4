"""The Python API: what the CLI does, as functions that return results and never print.

Each function takes a model or a path and hands it to its workflow
(onnxslim.workflows); the results are the workflows' typed result classes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx_ir as ir

from onnxslim import io
from onnxslim.calibration import FeedSource
from onnxslim.errors import PassFailed, UsageError
from onnxslim.feeds import Feed
from onnxslim.inspection import ModelSummary, inspect_model
from onnxslim.pipeline import Pipeline
from onnxslim.report import RunReport
from onnxslim.validation import ValidationReport, run_model, validate
from onnxslim.workflows import optimize as _optimize
from onnxslim.workflows.cluster import ClusterResult, cluster_model
from onnxslim.workflows.optimize import (
    OptimizeResult,
    default_optimize_pipeline,
    validation_feeds,
)
from onnxslim.workflows.prune import PruneResult
from onnxslim.workflows.prune import prune as _prune
from onnxslim.workflows.quantize import QuantizeResult, StageProgress, quantize_model
from onnxslim.workflows.run import Progress, RecipeSpec, run_recipe
from onnxslim.workflows.search import search_recipe

__all__ = [
    "ClusterResult",
    "ModelSummary",
    "OptimizeResult",
    "PruneResult",
    "QuantizeResult",
    "RunReport",
    "ValidationReport",
    "cluster",
    "default_optimize_pipeline",
    "inspect",
    "optimize",
    "prune",
    "quantize",
    "run",
    "run_model",
    "save",
    "search",
    "validate",
    "validation_feeds",
]

ModelSource = ir.Model | str | os.PathLike[str]


def as_model(source: ModelSource) -> ir.Model:
    """Load `source` if it is a path; models are used as given."""
    return source if isinstance(source, ir.Model) else io.load(source)


def optimize(
    source: ModelSource,
    *,
    pipeline: Pipeline | None = None,
    verify: bool = True,
    data: str | os.PathLike[str] | None = None,
    feeds: Sequence[Feed] | None = None,
    input_shapes: Mapping[str, Sequence[int]] | Sequence[str] | None = None,
    feed_count: int = 4,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    keep_metadata: bool = False,
) -> OptimizeResult:
    """Run the lossless clean-up (or `pipeline`) with each pass guarded on ORT.

    Validation feeds are `feeds` when given, else the first `feed_count` of `data`,
    else generated. `input_shapes` ({"x": (1, 3, 224, 224)} or ["x:1,3,224,224"])
    fixes dynamic input dimensions first (the fix-input-shapes pass) so shapes
    propagate and fold; generated feeds then take those shapes, and given feeds
    must have them. `result.passed` is False when the final model's outputs moved
    beyond tolerance from the original's (the CLI then writes nothing, exit 1).
    `keep_metadata` leaves out strip-debug-metadata (exporter stack traces and scope
    names stay in the file).
    """
    return _optimize.optimize(
        as_model(source),
        pipeline=pipeline,
        verify=verify,
        data=data,
        feeds=feeds,
        input_shapes=input_shapes,
        feed_count=feed_count,
        atol=atol,
        rtol=rtol,
        keep_metadata=keep_metadata,
    )


def save(
    model: ir.Model,
    path: str | os.PathLike[str],
    *,
    source: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Save atomically; refuses to write over `source` unless `overwrite`."""
    return io.save(model, path, source=source, overwrite=overwrite)


# `onnxslim validate`, `onnxslim inspect` and running a model, on a path or an ir.Model
# (defined beside their reports; re-exported here so the API mirrors the CLI).
# `run_model` (a model on ORT) is imported above; `run` is the recipe runner below.
inspect = inspect_model


def quantize(
    source: ModelSource,
    *,
    mode: str = "static",
    calib: FeedSource | None = None,
    data: FeedSource | None = None,
    validate: bool = True,
    progress: StageProgress | None = None,
    **options: Any,
) -> QuantizeResult:
    """Quantize a float model (static int8 calibrated on `calib`, dynamic, or weight-only).

    `calib` / `data`: anything `open_feeds` reads (a path, a folder, an ORT
    CalibrationDataReader, an iterable of feeds). `options` are the fields of
    the mode's pass (QuantizeStatic, QuantizeDynamic, QuantizeWeightOnly). Returns
    a QuantizeResult: the model, the pass report and the validation against the
    float model (parity, latency ratio, accuracy when `data` carries labels).
    """
    return quantize_model(
        as_model(source),
        mode=mode,
        calib=calib,
        data=data,
        validate=validate,
        progress=progress,
        **options,
    )


def prune(
    source: ModelSource,
    *,
    method: str = "magnitude",
    sparsity: float = 0.5,
    calib: FeedSource | None = None,
    eval_data: FeedSource | None = None,
    storage: str = "packed",
    validate: bool = True,
    max_drop: float | None = None,
    runs: int = 50,
    **options: Any,
) -> PruneResult:
    """Prune a trained model with nothing but the model and some data; returns a PruneResult.

    `method`: "magnitude" (unstructured; `sparsity` is the fraction zeroed), "nm"
    (N:M, options `n`, `m`), or "channels" (structured; `sparsity` is the fraction
    of channels removed per group). `calib`: calibration data (anything
    `open_feeds` reads); with it, layers are refit by least squares unless
    `reconstruct=False`. `eval_data` with a `labels` array adds top-1 accuracy.
    `storage="packed"` writes sparse weights as values + bitmask so the file
    shrinks without zip. `options` are the fields of the method's pass
    (MagnitudePruning, NMSparsity, ChannelPruning). `max_drop` (points) fills
    `result.gate`; the API reports it, the CLI exits 1 on failure.
    """
    return _prune(
        as_model(source),
        method=method,
        sparsity=sparsity,
        calib=calib,
        eval_data=eval_data,
        storage=storage,
        validate=validate,
        max_drop=max_drop,
        runs=runs,
        **options,
    )


def cluster(
    source: ModelSource,
    *,
    bits: int = 4,
    calib: FeedSource | None = None,
    eval_data: FeedSource | None = None,
    validate: bool = True,
    max_drop: float | None = None,
    runs: int = 50,
    strip_metadata: bool = True,
    optimize: bool = True,
    **options: Any,
) -> ClusterResult:
    """Cluster each weight into 2^bits shared values (palettization); returns a ClusterResult.

    The result stores packed indices + palettes that ONNX Runtime expands once at
    session start (file about bits/32 of the float weights, float speed). `calib`
    (anything `open_feeds` reads) turns on least-squares palette refinement unless
    `refine=False`; `eval_data` with a `labels` array adds top-1 accuracy.
    `options` are the fields of ClusterWeights (init, granularity, group_size,
    int8_grid, min_elements, exclude, packing, storage, allocation="mixed" with
    budget or budget_bytes, ...); `max_size=<bytes>` picks bits and palettes per
    weight so that the file fits (allocation="mixed"). `strip_metadata`
    drops exporter debug metadata (node stack traces); `optimize` runs the lossless
    clean-up first (BatchNorm folded into Conv). `max_drop` (points) fills
    `result.gate`; the API reports it, the CLI exits 1 on failure.
    """
    return cluster_model(
        as_model(source),
        bits=bits,
        calib=calib,
        eval_data=eval_data,
        validate_result=validate,
        runs=runs,
        max_drop=max_drop,
        strip_metadata=strip_metadata,
        optimize=optimize,
        **options,
    )


def run(
    recipe: RecipeSpec,
    source: ModelSource,
    *,
    output: str | os.PathLike[str] | None = None,
    report_dir: str | os.PathLike[str] | None = None,
    calib: str | None = None,
    eval_data: str | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> RunReport:
    """Apply a recipe (file, preset name, dict or Recipe) to a model: `onnxslim run`.

    Returns the RunReport the CLI writes as report.json (`report.to_dict()`);
    `report.passed` is the gates' verdict and `report.model` the output model.
    With `output`, the model is written (atomically) whether or not the gates
    pass; with `report_dir`, report.json/.md/.html too, also when a pass fails
    (then PassFailed is raised after writing). Bad recipes raise UsageError before
    any work. `calib` / `eval_data` override the recipe's data.
    """
    if (
        output is not None
        and not isinstance(source, ir.Model)
        and io.same_file(source, output)
        and not overwrite
    ):
        raise UsageError(f"{output}: output is the input model; pass --overwrite to replace it")
    _check_output_folder(output)
    try:
        outcome = run_recipe(recipe, source, calib=calib, eval_data=eval_data, progress=progress)
    except PassFailed as exc:
        partial = getattr(exc, "report", None)
        if report_dir is not None and partial is not None:
            partial.write(report_dir)
        raise
    report = outcome.report
    if output is not None:
        save(
            outcome.model,
            output,
            source=None if isinstance(source, ir.Model) else source,
            overwrite=overwrite,
        )
        report.output["path"] = str(output)
    if report_dir is not None:
        report.write(report_dir)
    return report


def search(
    recipe: RecipeSpec,
    source: str | os.PathLike[str],
    *,
    output: str | os.PathLike[str] | None = None,
    report_dir: str | os.PathLike[str] | None = None,
    calib: str | None = None,
    eval_data: str | None = None,
    jobs: int | None = None,
    ray_address: str | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> RunReport:
    """Try the recipe's `[search]` grid and keep the best candidate that passes the gates.

    Candidates run in parallel on local processes (`jobs`), or as Ray tasks when
    `ray_address` is given ("local"/"auto" start a local Ray). Returns the winner's
    RunReport (its `search` section lists every candidate); with no passing
    candidate, the best one by gates passed is returned, `report.passed` False.
    """
    if output is not None and io.same_file(source, output) and not overwrite:
        raise UsageError(f"{output}: output is the input model; pass --overwrite to replace it")
    _check_output_folder(output)
    report = search_recipe(
        recipe,
        source,
        calib=calib,
        eval_data=eval_data,
        jobs=jobs,
        ray_address=ray_address,
        progress=progress,
    )
    if output is not None:
        save(report.model, output, source=source, overwrite=overwrite)
        report.output["path"] = str(output)
    if report_dir is not None:
        report.write(report_dir)
    return report


def _check_output_folder(output: str | os.PathLike[str] | None) -> None:
    """Refuse a missing output folder before the work, not after it."""
    if output is not None and not Path(output).absolute().parent.is_dir():
        raise UsageError(f"{Path(output).parent}: output folder does not exist")
