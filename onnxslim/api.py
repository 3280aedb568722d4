"""The Python API: what the CLI does, as functions that return results and never print.

Each function takes a model as users hold it (a path, an onnx.ModelProto, serialized
bytes or an onnx_ir.Model) and hands it to its workflow (onnxslim.workflows); the
results are the workflows' typed result classes, which give the model back as an
onnx_ir.Model (`result.model`), a ModelProto (`result.model_proto()`), bytes
(`result.model_bytes()`) or a file (`result.save(path)`).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx_ir as ir

from onnxslim import io
from onnxslim import tolerance as tolerances
from onnxslim.calibration import FeedSource
from onnxslim.errors import PassFailed, UsageError
from onnxslim.feeds import Feed
from onnxslim.inspection import ModelSummary, inspect_model
from onnxslim.passes.fold import FixInputShapes
from onnxslim.pipeline import Pipeline
from onnxslim.report import RunReport
from onnxslim.report_html import require_matplotlib
from onnxslim.sources import ModelResult, ModelSource, as_model, is_path
from onnxslim.tolerance import Tolerance
from onnxslim.validation import FeedsArg, ProgressCallback, ValidationReport, run_model
from onnxslim.validation import validate as _validate
from onnxslim.workflows import optimize as _optimize
from onnxslim.workflows.cluster import ClusterResult, cluster_model
from onnxslim.workflows.optimize import (
    OptimizeResult,
    default_optimize_pipeline,
    shape_texts,
    validation_feeds,
)
from onnxslim.workflows.prune import PruneResult
from onnxslim.workflows.prune import prune as _prune
from onnxslim.workflows.quantize import QuantizeResult, StageProgress, quantize_model
from onnxslim.workflows.run import Progress, RecipeSpec, run_recipe
from onnxslim.workflows.search import search_recipe

__all__ = [
    "ClusterResult",
    "ModelResult",
    "ModelSource",
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


def optimize(
    source: ModelSource,
    *,
    pipeline: Pipeline | None = None,
    verify: bool = True,
    data: str | os.PathLike[str] | None = None,
    feeds: Sequence[Feed] | None = None,
    input_shapes: Mapping[str, Sequence[int]] | Sequence[str] | None = None,
    max_samples: int | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    keep_metadata: bool = False,
    feed_count: int | None = None,
) -> OptimizeResult:
    """Run the lossless clean-up (or `pipeline`) with each pass guarded on ORT.

    Validation feeds are `feeds` when given, else the first `max_samples` (default 4) of
    `data` (`feed_count=` is its old name),
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
        feed_count=_renamed(max_samples, feed_count, "optimize", "feed_count", "max_samples") or 4,
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
    external_data: bool | None = None,
    external_threshold: int = io.EXTERNAL_THRESHOLD_BYTES,
) -> Path:
    """Save atomically; refuses to write over `source` unless `overwrite`.

    `external_data`: weights in `<name>.data` beside the model (None: when the model
    had external data or its weights pass 2 GB); tensors under `external_threshold`
    bytes stay inline.
    """
    return io.save(
        model,
        path,
        source=source,
        overwrite=overwrite,
        external_data=external_data,
        size_threshold=external_threshold,
    )


def inspect(
    source: ModelSource, *, input_shapes: Mapping[str, tuple[int, ...]] | None = None
) -> ModelSummary:
    """`onnxslim inspect`: opsets, interface, op histogram, parameters, MACs, file size."""
    return inspect_model(_path_or_model(source), input_shapes=input_shapes)


def validate(
    reference: ModelSource,
    candidate: ModelSource,
    *,
    feeds: FeedsArg = None,
    max_samples: int | None = None,
    seed: int = 0,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    tolerance: str | Tolerance = "auto",
    atol: float | None = None,
    rtol: float | None = None,
    runs: int = 20,
    warmup: int = 3,
    threads: int = 1,
    measure_memory: bool = True,
    progress: ProgressCallback | None = None,
    count: int | None = None,
) -> ValidationReport:
    """`onnxslim validate`: both models on ORT CPU on the same feeds; parity, latency, memory.

    `tolerance`: "exact", "float" (allclose at 1e-5), "fp16", "int8" (each output's
    largest error against its own scale; see onnxslim.tolerance) or "auto" (by what
    `candidate` holds); `atol`/`rtol` replace it with numpy's allclose rule. The
    preset used is named in `report.notes`. A failed comparison is `report.passed`
    False, not an exception. `max_samples` caps the feeds read (`count=` is its old name).
    """
    max_samples = _renamed(max_samples, count, "validate", "count", "max_samples")
    reference, candidate = _path_or_model(reference), _path_or_model(candidate)
    if isinstance(tolerance, Tolerance):
        chosen, why = tolerance, "given"
    else:
        look = as_model(candidate) if tolerance == "auto" and atol is rtol is None else None
        chosen, why = tolerances.resolve(tolerance, look, atol, rtol)
    report = _validate(
        reference,
        candidate,
        feeds=feeds,
        count=max_samples,
        seed=seed,
        input_shapes=input_shapes,
        atol=chosen.atol if atol is None else atol,
        rtol=chosen.rtol if rtol is None else rtol,
        runs=runs,
        warmup=warmup,
        threads=threads,
        measure_memory=measure_memory,
        progress=progress,
    )
    tolerances.apply(report, chosen)
    report.notes.append(tolerances.note(chosen, why))
    return report


def _path_or_model(source: ModelSource) -> ir.Model | str | os.PathLike[str]:
    """Paths stay paths (reports name the file); the other forms become an ir.Model."""
    return source if is_path(source) else as_model(source)  # type: ignore[return-value]


def _verify(verify: bool, validate: bool | None, function: str) -> bool:
    """`validate=` was the old name of `verify=` in quantize, prune and cluster."""
    old = _renamed(None, validate, function, "validate", "verify", stacklevel=4)
    return verify if old is None else old


def _renamed(
    new: Any, old: Any, function: str, old_name: str, new_name: str, stacklevel: int = 3
) -> Any:
    """An argument's old name still works this release, with a DeprecationWarning."""
    if old is None:
        return new
    warnings.warn(
        f"onnxslim.{function}({old_name}=...) is deprecated; use {new_name}=...",
        DeprecationWarning,
        stacklevel=stacklevel,
    )
    return old if new is None else new


def _shaped(
    source: ModelSource, input_shapes: Mapping[str, Sequence[int]] | Sequence[str] | None
) -> ir.Model:
    """The model as an onnx_ir.Model, dynamic inputs fixed to `input_shapes` first (on a copy
    when the caller handed in an onnx_ir.Model: theirs is never changed)."""
    model = as_model(source)
    texts = shape_texts(input_shapes)
    if texts:
        model = model.clone() if model is source else model
        FixInputShapes(shapes=texts)(model)
    return model


def quantize(
    source: ModelSource,
    *,
    mode: str = "static",
    calib: FeedSource | None = None,
    data: FeedSource | None = None,
    verify: bool = True,
    progress: StageProgress | None = None,
    input_shapes: Mapping[str, Sequence[int]] | Sequence[str] | None = None,
    validate: bool | None = None,
    **options: Any,
) -> QuantizeResult:
    """Quantize a float model (static int8 calibrated on `calib`, dynamic, or weight-only).

    `calib` / `data`: anything `open_feeds` reads (a path, a folder, an ORT
    CalibrationDataReader, an iterable of feeds). `options` are the fields of
    the mode's pass (QuantizeStatic, QuantizeDynamic, QuantizeWeightOnly). Returns
    a QuantizeResult: the model, the pass report and the validation against the
    float model (parity, latency ratio, accuracy when `data` carries labels);
    `verify=False` skips that check (`validate=` is its old name). Static int8 that
    misses the accuracy target (`target_error`) has the layers responsible fixed on
    the held-out feeds unless `fix=False` (the steps are in `result.report.fixes`).
    `input_shapes` ({"x": (1, 3, 224, 224)} or ["x:1,3,224,224"]) fix dynamic inputs first,
    as in every function that runs the model.
    """
    return quantize_model(
        _shaped(source, input_shapes),
        mode=mode,
        calib=calib,
        data=data,
        validate=_verify(verify, validate, "quantize"),
        progress=progress,
        **options,
    )


def prune(
    source: ModelSource,
    *,
    method: str = "magnitude",
    sparsity: float | None = None,
    calib: FeedSource | None = None,
    eval_data: FeedSource | None = None,
    storage: str = "packed",
    verify: bool = True,
    max_drop: float | None = None,
    runs: int = 50,
    input_shapes: Mapping[str, Sequence[int]] | Sequence[str] | None = None,
    validate: bool | None = None,
    **options: Any,
) -> PruneResult:
    """Prune a trained model with nothing but the model and some data; returns a PruneResult.

    `method`: "magnitude" (unstructured; by default the most sparsity, up to `sparsity`
    or 0.9, that meets the accuracy target `target_error`; allocation="uniform" zeroes
    exactly `sparsity`, default 0.5), "nm"
    (N:M, options `n`, `m`), or "channels" (structured; `sparsity` is the fraction
    of channels removed per group). `calib`: calibration data (anything
    `open_feeds` reads); with it, layers are refit by least squares unless
    `reconstruct=False`. `eval_data` with a `labels` array adds top-1 accuracy.
    `storage="packed"` writes sparse weights as values + bitmask so the file
    shrinks without zip. `options` are the fields of the method's pass
    (MagnitudePruning, NMSparsity, ChannelPruning). `max_drop` (points) fills
    `result.gate`; the API reports it, the CLI exits 1 on failure. `input_shapes` fix
    dynamic inputs first.
    """
    return _prune(
        _shaped(source, input_shapes),
        method=method,
        sparsity=sparsity,
        calib=calib,
        eval_data=eval_data,
        storage=storage,
        validate=_verify(verify, validate, "prune"),
        max_drop=max_drop,
        runs=runs,
        **options,
    )


def cluster(
    source: ModelSource,
    *,
    bits: int | None = None,
    calib: FeedSource | None = None,
    eval_data: FeedSource | None = None,
    verify: bool = True,
    max_drop: float | None = None,
    runs: int = 50,
    strip_metadata: bool = True,
    optimize: bool = True,
    input_shapes: Mapping[str, Sequence[int]] | Sequence[str] | None = None,
    validate: bool | None = None,
    **options: Any,
) -> ClusterResult:
    """Cluster each weight into 2^bits shared values (palettization); returns a ClusterResult.

    By default the fewest bytes that meet the accuracy target `target_error`: bits
    (2..8) and palettes chosen per weight from measured sensitivities, each budget checked
    on held-out feeds; `bits` given is a budget (the bytes uniform `bits` stores) and
    `result.request` says whether it met the target. allocation="uniform": exactly
    `bits` (default 4) in every weight.

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
    `result.gate`; the API reports it, the CLI exits 1 on failure. `input_shapes` fix
    dynamic inputs first.
    """
    return cluster_model(
        _shaped(source, input_shapes),
        bits=bits,
        calib=calib,
        eval_data=eval_data,
        validate_result=_verify(verify, validate, "cluster"),
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
    input_shapes: Mapping[str, Sequence[int]] | Sequence[str] | None = None,
    external_data: bool | None = None,
    external_threshold: int = io.EXTERNAL_THRESHOLD_BYTES,
    image_preprocess: str | None = None,
    notice: Progress | None = None,
) -> RunReport:
    """Apply a recipe (file, preset name, dict or Recipe) to a model: `onnxslim run`.

    Returns the RunReport the CLI writes as report.json (`report.to_dict()`);
    `report.passed` is the gates' verdict and `report.model` the output model.
    With `output`, the model is written (atomically) whether or not the gates
    pass; with `report_dir`, report.json/.md/.html too, also when a pass fails
    (then PassFailed is raised after writing). Bad recipes raise UsageError before
    any work. `calib` / `eval_data` override the recipe's data. `input_shapes`
    ({"x": (1, 3, 224, 224)} or ["x:1,3,224,224"]) fix dynamic inputs first.
    `image_preprocess` (`size=224,224;scale=1/255;...`) overrides the recipe's
    data.image_preprocess for image folders; `notice` gets one line per image folder
    saying the preprocessing applied (also in report.data["image_preprocessing"]).
    """
    path = os.fspath(source) if is_path(source) else None  # type: ignore[arg-type]
    if output is not None and path is not None and io.same_file(path, output) and not overwrite:
        raise UsageError(f"{output}: output is the input model; pass --overwrite to replace it")
    _check_output_folder(output, report_dir)
    if report_dir is not None:
        require_matplotlib()
    try:
        outcome = run_recipe(
            recipe,
            path if path is not None else as_model(source),
            calib=calib,
            eval_data=eval_data,
            progress=progress,
            input_shapes=shape_texts(input_shapes),
            image_preprocess=image_preprocess,
            notice=notice,
        )
    except PassFailed as exc:
        partial = getattr(exc, "report", None)
        if report_dir is not None and partial is not None:
            partial.write(Path(report_dir))
        raise
    report = outcome.report
    if output is not None:
        save(
            outcome.model,
            output,
            source=path,
            overwrite=overwrite,
            external_data=external_data,
            external_threshold=external_threshold,
        )
        report.output["path"] = str(output)
    if report_dir is not None:
        report.write(Path(report_dir))
    return report


def search(
    recipe: RecipeSpec,
    source: ModelSource,
    *,
    output: str | os.PathLike[str] | None = None,
    report_dir: str | os.PathLike[str] | None = None,
    calib: str | None = None,
    eval_data: str | None = None,
    jobs: int | None = None,
    ray_address: str | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    input_shapes: Mapping[str, Sequence[int]] | Sequence[str] | None = None,
    external_data: bool | None = None,
    external_threshold: int = io.EXTERNAL_THRESHOLD_BYTES,
    image_preprocess: str | None = None,
    notice: Progress | None = None,
) -> RunReport:
    """Try the recipe's `[search]` grid and keep the best candidate that passes the gates.

    Candidates run in parallel on local processes (`jobs`), or as Ray tasks when
    `ray_address` is given ("local"/"auto" start a local Ray). Returns the winner's
    RunReport (its `search` section lists every candidate); with no passing
    candidate, the best one by gates passed is returned, `report.passed` False.
    `input_shapes` fix dynamic inputs first (the fixed model goes to the workers).
    `image_preprocess` and `notice` as in `run`. The model may be any form `run` takes
    (the workers read a file: an in-memory model is saved to a temporary folder first).
    """
    path = os.fspath(source) if is_path(source) else None  # type: ignore[arg-type]
    if output is not None and path is not None and io.same_file(path, output) and not overwrite:
        raise UsageError(f"{output}: output is the input model; pass --overwrite to replace it")
    _check_output_folder(output, report_dir)
    if report_dir is not None:
        require_matplotlib()
    with tempfile.TemporaryDirectory(prefix="onnxslim-search-") as folder:
        searched: str | os.PathLike[str] = path if path is not None else ""
        if input_shapes or path is None:  # the workers read a file: give them the model
            fixed = _shaped(source, input_shapes)
            name = Path(path).name if path is not None else "model.onnx"
            searched = io.save(fixed, Path(folder) / name)
        report = search_recipe(
            recipe,
            searched,
            calib=calib,
            eval_data=eval_data,
            jobs=jobs,
            ray_address=ray_address,
            progress=progress,
            image_preprocess=image_preprocess,
            notice=notice,
        )
    report.input["path"] = path  # None for an in-memory model, as in `run`
    if output is not None:
        save(
            report.model,
            output,
            source=path,
            overwrite=overwrite,
            external_data=external_data,
            external_threshold=external_threshold,
        )
        report.output["path"] = str(output)
    if report_dir is not None:
        report.write(Path(report_dir))
    return report


def _check_output_folder(
    output: str | os.PathLike[str] | None, report_dir: str | os.PathLike[str] | None = None
) -> None:
    """Refuse, before the work, output and report folders that cannot be created."""
    if output is not None:
        io.check_output_folder(Path(output).absolute().parent)
    if report_dir is not None:
        io.check_output_folder(report_dir)
