"""The Python API: what the CLI does, as functions that return results and never print."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx_ir as ir

from onnxslim import io
from onnxslim.calibration import FeedSource, ImagePreprocessing, open_feeds
from onnxslim.errors import DataError, PassFailed, UsageError
from onnxslim.feed_search import plan_feeds
from onnxslim.feeds import Feed, generate_feeds, input_specs, parse_input_shapes
from onnxslim.inspection import ModelSummary, inspect_model
from onnxslim.passes.cleanup import StripDebugMetadata
from onnxslim.passes.fold import (
    FixInputShapes,
    drop_added_annotations,
    remember_annotations,
    resolved_input_shapes,
)
from onnxslim.pipeline import Guard, Pipeline, PipelineResult, run_pipeline
from onnxslim.registry import DEFAULT_OPTIMIZE
from onnxslim.validation import ValidationReport, run_model, validate

__all__ = [
    "ModelSummary",
    "OptimizeResult",
    "ValidationReport",
    "cluster",
    "inspect",
    "optimize",
    "prune",
    "quantize",
    "run",
    "run_model",
    "save",
    "search",
    "validate",
]

ModelSource = ir.Model | str | os.PathLike[str]
logger = logging.getLogger("onnxslim")


@dataclass
class OptimizeResult:
    model: ir.Model
    pipeline: Pipeline
    result: PipelineResult
    verified_on: str  # "generated inputs", "DATA (N feeds)", or "not verified"
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """False when the result's outputs moved beyond tolerance from the original's."""
        return self.result.passed


def as_model(source: ModelSource) -> ir.Model:
    """Load `source` if it is a path; models are used as given."""
    return source if isinstance(source, ir.Model) else io.load(source)


def validation_feeds(
    model: ir.Model,
    data: FeedSource | None,
    *,
    count: int = 4,
    seed: int = 0,
    image_preprocessing: ImagePreprocessing | str | None = None,
) -> tuple[list[Feed], str]:
    """Feeds to check parity on: the user's data when given, generated inputs otherwise.

    `data` is anything `open_feeds` reads (.npz, folder, reader, iterable); each
    feed is checked against the model's inputs, and arrays that are not inputs
    (an eval file's `labels`) are dropped.
    """
    if data is not None:
        stream = open_feeds(
            data, model, limit=count, image_preprocessing=image_preprocessing, extra="ignore"
        )
        feeds = list(stream)
        return feeds, f"{stream.description} ({len(feeds)} feeds)"
    return generate_feeds(input_specs(model), count, seed=seed), f"generated inputs ({count} feeds)"


def default_optimize_pipeline() -> Pipeline:
    """The lossless clean-up `onnxslim optimize` runs when no recipe is given."""
    return Pipeline.from_names(DEFAULT_OPTIMIZE)


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
    model = as_model(source)
    pipeline = pipeline or default_optimize_pipeline()
    if keep_metadata:
        pipeline = Pipeline(
            tuple(p for p in pipeline.passes if not isinstance(p, StripDebugMetadata))
        )
    shape_texts = _shape_texts(input_shapes)
    if shape_texts:
        pipeline = Pipeline((FixInputShapes(shapes=shape_texts), *pipeline.passes))
    # Feeds must have the shapes the model will be fixed to, wherever the fix comes from.
    fixed = [t for p in pipeline.passes if isinstance(p, FixInputShapes) for t in p.shapes]
    generation_shapes = resolved_input_shapes(model, parse_input_shapes(fixed)) if fixed else None
    guard = None
    verified_on = "not verified"
    if verify:
        if feeds is not None:
            feeds = list(feeds)
            verified_on = f"given feeds ({len(feeds)})"
        elif data is not None:
            feeds, verified_on = validation_feeds(model, data, count=feed_count)
        else:
            plan = plan_feeds(model, feed_count, shapes=generation_shapes)
            feeds, verified_on = plan.feeds, plan.description
            if feeds is None:  # made-up inputs never fail a lossless run: go on unchecked
                logger.warning("outputs not checked: %s", plan.problem)
                verified_on = "not verified (no generated input ran)"
        for feed in feeds if generation_shapes and feeds else ():
            for name, shape in generation_shapes.items():  # type: ignore[union-attr]
                if name in feed and tuple(feed[name].shape) != tuple(shape):
                    raise DataError(
                        f"validation feed {name!r} has shape {list(feed[name].shape)}, "
                        f"but --input-shape fixes it to {list(shape)}"
                    )
        guard = Guard(list(feeds), atol=atol, rtol=rtol) if feeds is not None else None
    remember_annotations(model)
    result = run_pipeline(model, pipeline, guard=guard, rollback_failures=verify)
    drop_added_annotations(result.model)  # inferred value_info would only grow the file
    return OptimizeResult(result.model, pipeline, result, verified_on)


def _shape_texts(shapes: Mapping[str, Sequence[int]] | Sequence[str] | None) -> tuple[str, ...]:
    if not shapes:
        return ()
    if isinstance(shapes, Mapping):
        return tuple(
            f"{name}:{','.join(str(int(d)) for d in dims)}" for name, dims in shapes.items()
        )
    return tuple(shapes)


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
    calib: Any = None,
    data: Any = None,
    validate: bool = True,
    progress: Any = None,
    **options: Any,
) -> Any:
    """Quantize a float model (static int8 calibrated on `calib`, dynamic, or weight-only).

    `calib` / `data`: anything `open_feeds` reads (a path, a folder, an ORT
    CalibrationDataReader, an iterable of feeds). `options` are the fields of
    the mode's pass (QuantizeStatic, QuantizeDynamic, QuantizeWeightOnly). Returns
    a QuantizeResult: the model, the pass report and the validation against the
    float model (parity, latency ratio, accuracy when `data` carries labels).
    """
    from onnxslim.passes.quantize.run import quantize_model

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
    calib: Any = None,
    eval_data: Any = None,
    storage: str = "packed",
    validate: bool = True,
    max_drop: float | None = None,
    runs: int = 50,
    **options: Any,
) -> Any:
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
    from onnxslim.passes.prune.run import prune_model

    if method == "channels":
        options.setdefault("ratio", sparsity)
    elif method == "magnitude":
        options.setdefault("sparsity", sparsity)
    if calib is not None:
        options["calib"] = calib
    return prune_model(
        as_model(source),
        method=method,
        storage=storage,
        eval_data=eval_data,
        validate_result=validate,
        runs=runs,
        max_drop=max_drop,
        **options,
    )


def cluster(
    source: ModelSource,
    *,
    bits: int = 4,
    calib: Any = None,
    eval_data: Any = None,
    validate: bool = True,
    max_drop: float | None = None,
    runs: int = 50,
    strip_metadata: bool = True,
    optimize: bool = True,
    **options: Any,
) -> Any:
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
    from onnxslim.passes.cluster.run import cluster_model

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
    recipe: Any,
    source: ModelSource,
    *,
    output: str | os.PathLike[str] | None = None,
    report_dir: str | os.PathLike[str] | None = None,
    calib: str | None = None,
    eval_data: str | None = None,
    overwrite: bool = False,
    progress: Any = None,
) -> Any:
    """Apply a recipe (file, preset name, dict or Recipe) to a model: `onnxslim run`.

    Returns the RunReport the CLI writes as report.json (`report.to_dict()`);
    `report.passed` is the gates' verdict and `report.model` the output model.
    With `output`, the model is written (atomically) whether or not the gates
    pass; with `report_dir`, report.json/.md/.html too, also when a pass fails
    (then PassFailed is raised after writing). Bad recipes raise UsageError before
    any work. `calib` / `eval_data` override the recipe's data.
    """
    from onnxslim.runner import run_recipe

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
    recipe: Any,
    source: str | os.PathLike[str],
    *,
    output: str | os.PathLike[str] | None = None,
    report_dir: str | os.PathLike[str] | None = None,
    calib: str | None = None,
    eval_data: str | None = None,
    jobs: int | None = None,
    ray_address: str | None = None,
    overwrite: bool = False,
    progress: Any = None,
) -> Any:
    """Try the recipe's `[search]` grid and keep the best candidate that passes the gates.

    Candidates run in parallel on local processes (`jobs`), or as Ray tasks when
    `ray_address` is given ("local"/"auto" start a local Ray). Returns the winner's
    RunReport (its `search` section lists every candidate); with no passing
    candidate, the best one by gates passed is returned, `report.passed` False.
    """
    from onnxslim.search import search_recipe

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
