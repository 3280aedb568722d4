"""Apply a recipe to a model: each step, measured; the gates; provenance. Never prints.

This is `onnxslim run` and `onnxslim.api.run`. The steps run in order on copies
(the input model is never modified); after each one the model is measured on the
evaluator's feeds (metric, parity against the input, latency ratio), so the report
holds size, accuracy and latency after every step. The written model depends only
on the input, the recipe and the data: timing never decides anything here (the
quantizer's latency guard is off unless a recipe turns it on, which the report
then flags as not reproducible), and the provenance in metadata_props holds no
date and no path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxslim import io
from onnxslim._version import __version__
from onnxslim.agreement import Target
from onnxslim.calibration import FeedSource
from onnxslim.errors import OnnxSlimError, PassFailed, RuntimeFailure, UsageError
from onnxslim.evaluation import Evaluator
from onnxslim.gates import check_gates, quality_gates
from onnxslim.graphs import node_count
from onnxslim.images import resolve_folder
from onnxslim.passes._run_data import RunData
from onnxslim.passes.cluster import UnpackPalette
from onnxslim.passes.fold import FixInputShapes
from onnxslim.passes.quantize.static import QuantizeStatic
from onnxslim.pipeline import Guard, Pipeline, run_pipeline
from onnxslim.recipe import Recipe, Step, load_recipe
from onnxslim.registry import make_pass
from onnxslim.report import RunReport, StepReport, gzip_size
from onnxslim.workflows.accuracy_aware import quantize_accuracy_aware
from onnxslim.workflows.at_target import TargetCheck
from onnxslim.workflows.backoff import Holds, back_off, target_gate
from onnxslim.workflows.cluster import cluster_model
from onnxslim.workflows.heldout import split_data
from onnxslim.workflows.measure import open_once
from onnxslim.workflows.optimize import optimize, validation_feeds
from onnxslim.workflows.prune import prune, prune_model
from onnxslim.workflows.quantize import quantize_model

RecipeSpec = Recipe | str | Path | Mapping[str, Any]

Progress = Callable[[str], None]
HISTOGRAM_BINS = 64


@dataclass
class RunOutcome:
    model: ir.Model
    report: RunReport


def run_recipe(
    recipe: RecipeSpec,
    source: ir.Model | str | os.PathLike[str],
    *,
    calib: str | None = None,
    eval_data: str | None = None,
    progress: Progress | None = None,
    input_shapes: tuple[str, ...] = (),
    image_preprocess: str | None = None,
    notice: Progress | None = None,
) -> RunOutcome:
    """Run `recipe` on `source`; the report says whether every gate passed.

    `input_shapes` (NAME:D1,D2,...) fix dynamic inputs of the input model before
    anything is measured, so generated feeds and every step see those shapes.
    `image_preprocess` overrides the recipe's data.image_preprocess; the
    preprocessing applied to each image folder goes to `notice` (one line each)
    and into the report.

    Raises UsageError for a bad recipe or data (before any step runs) and PassFailed
    when a step fails; a failed gate is not an exception here (see RunReport.passed).
    """
    say = progress or (lambda _m: None)
    recipe = load_recipe(recipe).with_data(calib, eval_data, image_preprocess)
    check_data(recipe)
    tell_deprecations(recipe, notice)
    start = time.perf_counter()
    if isinstance(source, ir.Model):
        model, input_path = source, None
        input_bytes = io.model_to_bytes(model)
    else:
        model, input_path = io.load(source), str(source)
        with open(source, "rb") as handle:
            input_bytes = handle.read()
    if input_shapes:
        model = model if input_path is not None else model.clone()  # never change the caller's
        FixInputShapes(shapes=tuple(input_shapes))(model)
    sources = recipe_data(recipe, model)
    # The calibration data is opened once: every step and the evaluator re-read this stream.
    sources = dataclasses.replace(sources, calib=open_once(model, sources.calib))
    for line in sources.lines():
        (notice or say)(line)
    say("measuring the input model")
    evaluator = Evaluator(
        model,
        eval_data=sources.eval,
        calib=sources.calib,
        eval_limit=recipe.eval_max_samples,
        parity_limit=recipe.measure.parity_feeds,
    )
    report = RunReport.start(recipe, input_path, input_bytes, evaluator)
    if sources.applied:
        report.data["image_preprocessing"] = dict(sources.applied)
    target = Target(recipe.gates.target_error) if recipe.gates.target_error is not None else None
    split = split_data(model, sources.calib, sources.eval) if target is not None else None
    if split is not None:  # the steps never see the feeds the target is measured on
        sources = dataclasses.replace(sources, calib=split.fit)
    check = split.check if split is not None else None

    partial: list[Any] = []  # the outputs so far from step 0, for a failure's report

    def execute(first: int, start: ir.Model, steps: list[Step | None]) -> list[Any]:
        outputs: list[Any] = []
        del partial[first:]
        current = start
        for index in range(first, len(steps)):
            step = steps[index]
            say(f"step {index + 1}/{len(steps)}: {recipe.steps[index].name}")
            if step is None:  # backed off entirely: the model passes through
                outputs.append((current, ({"skipped": "backed off (gates.target_error)"}, [], 0.0)))
                partial.append(outputs[-1])
                continue
            begin = time.perf_counter()
            current, details, warnings = _guarded_step(step, current, recipe, index, sources, check)
            outputs.append((current, (details, warnings, time.perf_counter() - begin)))
            partial.append(outputs[-1])
        return outputs

    try:
        if target is not None and split is not None:
            check_target = TargetCheck(model, split, target)
            backed = back_off(
                model, list(recipe.steps), check_target, target, execute, _holds(recipe, evaluator)
            )
            outputs, ran, assessment = backed.outputs, backed.steps, backed.assessment
            report.data["backoff"] = backed.to_dict()
        else:
            outputs, ran, assessment = execute(0, model, list(recipe.steps)), [], None
    except PassFailed as exc:
        report.steps += _step_reports(evaluator, recipe, partial, [])
        report.status, report.error = "pass failed", str(exc)
        report.seconds = time.perf_counter() - start
        exc.report = report  # type: ignore[attr-defined]
        raise
    report.steps += _step_reports(evaluator, recipe, outputs, ran)
    current = outputs[-1][0] if outputs else model
    add_provenance(current, recipe, input_bytes)
    final_bytes = io.model_to_bytes(current)
    final = report.steps[-1].measurement if report.steps else evaluator.baseline
    say("checking the gates")
    report.gates = check_gates(
        recipe.gates,
        evaluator,
        final,
        size_in=len(input_bytes),
        size_out=len(final_bytes),
        model=current,
        target_feeds=recipe.measure.target_feeds,
    )
    if assessment is not None:
        report.gates.append(target_gate(assessment, report.data.get("backoff", {})))
    report.finish(final_bytes, final, time.perf_counter() - start)
    report.model = current
    return RunOutcome(current, report)


def _holds(recipe: Recipe, evaluator: Evaluator) -> Holds | None:
    """The recipe's quality gates (max_parity_error, max_accuracy_drop) as a back-off
    check: the failed gates' reasons, None when a candidate holds them all."""
    if recipe.gates.max_parity_error is None and recipe.gates.max_accuracy_drop is None:
        return None

    def holds(candidate: ir.Model) -> str | None:
        measured = evaluator.measure(candidate, latency_runs=0)
        missed = [g for g in quality_gates(recipe.gates, evaluator, measured) if not g.passed]
        return "; ".join(f"{g.name}: {g.reason}" for g in missed) or None

    return holds


def _step_reports(
    evaluator: Evaluator, recipe: Recipe, outputs: list[Any], ran: list[Step | None]
) -> list[StepReport]:
    """Each step's output measured (size, nodes, parity, metric, latency)."""
    reports = []
    for index, (current, (details, notes, seconds)) in enumerate(outputs):
        backed = ran[index] if ran else None
        step = backed if backed is not None else recipe.steps[index]
        data = io.model_to_bytes(current)
        measured = evaluator.measure(current, latency_runs=recipe.measure.latency_runs)
        reports.append(
            StepReport(
                index,
                step.name,
                step.kind,
                _public(step.options),
                seconds,
                len(data),
                node_count(current),
                measured,
                details,
                notes,
                gzip_size(data),
            )
        )
    return reports


def _guarded_step(
    step: Step,
    model: ir.Model,
    recipe: Recipe,
    index: int,
    sources: RecipeData,
    check: list[Any] | None,
) -> tuple[ir.Model, dict[str, Any], list[str]]:
    """One step; any failure a PassFailed naming the step (exit 3)."""
    try:
        return _run_step(step, model, recipe, index, sources, check)
    except (PassFailed, RuntimeFailure) as exc:
        text = re.sub(r"^pass '[^']*' failed: ", "", str(exc))
        raise PassFailed(f"pass[{index}] ({step.name}) failed: {text}") from exc
    except OnnxSlimError:
        raise
    except Exception as exc:  # a bug in a pass: exit 3 with the step named
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise PassFailed(
            f"pass[{index}] ({step.name}) failed: {type(exc).__name__}: {text}"
        ) from exc


def add_provenance(model: ir.Model, recipe: Recipe, input_bytes: bytes) -> None:
    """metadata_props: tool version, recipe hash, input hash (no date: bytes stay identical)."""
    model.metadata_props["onnxslim.version"] = __version__
    model.metadata_props["onnxslim.recipe_sha256"] = recipe.sha256()
    model.metadata_props["onnxslim.input_sha256"] = hashlib.sha256(input_bytes).hexdigest()


@dataclass(frozen=True)
class RecipeData:
    """The recipe's data as the steps read it: image folders carry their preprocessing."""

    calib: FeedSource | None
    eval: FeedSource | None
    applied: dict[str, dict[str, str]]  # "data.calib" -> {folder, preprocessing}
    notices: list[str]  # one line per image folder: what is applied, what was guessed

    def lines(self) -> list[str]:
        return list(self.notices)


def recipe_data(recipe: Recipe, model: ir.Model) -> RecipeData:
    """Settle each image folder's preprocessing once, against the model it feeds.

    Refused (UsageError, before any work) when the model contradicts a guess; every
    step, the evaluator and the gates then read the folder with exactly this.
    """
    sources: dict[str, str | os.PathLike[str] | None] = {}
    applied: dict[str, dict[str, str]] = {}
    notices = []
    for key in ("calib", "eval"):
        path = getattr(recipe, key)
        folder = resolve_folder(path, model, recipe.image_preprocess) if path else None
        if folder is not None:
            notices.append(folder.notice(f"data.{key}", recipe.image_preprocess))
            applied[f"data.{key}"] = {
                "folder": str(path),
                "preprocessing": folder.preprocessing.describe(),
            }
        sources[key] = folder if folder is not None else path
    if recipe.image_preprocess is not None and not applied:
        raise UsageError(
            f"{recipe.source}: data.image_preprocess (--image-preprocess) applies to folders "
            "of images; data.calib and data.eval are not"
        )
    return RecipeData(sources["calib"], sources["eval"], applied, notices)


def tell_deprecations(recipe: Recipe, notice: Progress | None) -> None:
    """Old recipe keys still work this release: one line each to `notice` (the CLI prints
    it), or a DeprecationWarning for Python callers, who pass no notice."""
    for note in recipe.deprecations:
        if notice is not None:
            notice(f"warning: {note}")
        else:
            warnings.warn(note, DeprecationWarning, stacklevel=3)


def check_data(recipe: Recipe) -> None:
    """Steps that need calibration data must have it before anything runs."""
    for index, step in enumerate(recipe.steps):
        needs = step.name == "quantize" and step.options.get("mode", "static") == "static"
        if (
            step.name == "quantize"
            and step.options.get("max_drop") is not None
            and recipe.eval is None
        ):
            raise UsageError(
                f"{recipe.source}: pass[{index}].max_drop: accuracy-aware "
                "quantization needs labelled eval data (data.eval or --eval)"
            )
        if needs and recipe.calib is None:
            raise UsageError(
                f"{recipe.source}: pass[{index}] ({step.name}): needs calibration "
                "data: set data.calib in the recipe or pass --calib"
            )


def _public(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k not in ("calib", "check")}


def _run_step(
    step: Step,
    model: ir.Model,
    recipe: Recipe,
    index: int,
    sources: RecipeData,
    check: list[Any] | None = None,
) -> tuple[ir.Model, dict[str, Any], list[str]]:
    options: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in step.options.items()
    }
    calib = options.pop("calib", None) or sources.calib
    if step.name == "optimize":
        result = optimize(model, verify=True, data=sources.calib, feed_count=4)
        if not result.passed:
            raise PassFailed(f"pass[{index}] (optimize): the lossless clean-up moved the outputs")
        changed = [r.name for r in result.result.records if r.status == "changed"]
        warnings = [f"{r.name}: {r.status} ({r.reason})" for r in result.result.rolled_back]
        return result.model, {"changed": changed}, warnings
    if step.name == "quantize":
        return _quantize(model, options, calib, recipe, check)
    if step.name == "prune":
        if recipe.max_samples is not None:
            options.setdefault("calib_count", recipe.max_samples)
        at_target = options.pop("at_target", None)  # a back-off rung (workflows/backoff.py)
        if at_target is not None and check is not None:
            pruned = prune_model(
                model,
                method=options.pop("method", "magnitude"),
                storage=options.pop("storage", "packed"),
                eval_data=check,
                runs=0,
                target_error=at_target,
                **dict(options, allocation="target", calib=calib),
            )
        else:
            pruned = prune(model, calib=calib, validate=False, **options)
        details = {
            "sparsity": pruned.sparsity,
            "layers": [
                {"layer": r.name, "op": r.op_type, "sparsity": r.sparsity, "reduction": r.reduction}
                for r in pruned.layers
            ],
            "refit": pruned.details.get("refit", []),
        }
        return pruned.model, _jsonable(details), list(pruned.warnings)
    if step.name == "cluster":
        strip = bool(options.pop("strip_metadata", True))
        at_target = options.pop("at_target", None)  # a back-off rung (workflows/backoff.py)
        if at_target is not None and check is not None:
            options.pop("bits", None)  # the fewest bytes meeting the target, not a budget
            clustered = cluster_model(
                model,
                calib=calib,
                eval_data=check,
                runs=0,
                target_error=at_target,
                optimize=False,
                strip_metadata=strip,
                **dict(options, allocation="target"),
            )
        else:
            clustered = cluster_model(
                model,
                calib=calib,
                validate_result=False,
                optimize=False,
                strip_metadata=strip,
                **options,
            )
        details = {
            "bits": clustered.bits,
            "weights": clustered.weights,
            "layers": clustered.layers,
            "skipped": clustered.skipped,
            "histogram": weight_histogram(
                model, clustered.model, [w["weight"] for w in clustered.weights]
            ),
        }
        return clustered.model, _jsonable(details), list(clustered.warnings)
    return _registry_pass(step, model, options, calib, sources.calib)


def _quantize(
    model: ir.Model,
    options: dict[str, Any],
    calib: FeedSource | None,
    recipe: Recipe,
    check: list[Any] | None = None,
) -> tuple[ir.Model, dict[str, Any], list[str]]:
    mode = options.pop("mode", "static")
    max_drop = options.pop("max_drop", None)
    fix_target = options.pop("fix_target", None)  # a back-off rung (workflows/backoff.py)
    fixing: dict[str, Any] = {}
    if fix_target is not None and check is not None and mode == "static":
        fixing = {"fix": True, "target_error": fix_target, "check": check}
    options.pop("fix", None)
    warnings = []
    if mode == "static":
        if options.get("latency_guard"):
            warnings.append(
                "latency_guard is on: timing decides which layers stay float, so "
                "the output may differ between runs"
            )
        options.setdefault("latency_guard", False)
        # The same for the activation mode: `auto` times static against run-time int8.
        if options.get("activations") == "auto":
            warnings.append(
                "activations = auto: timing decides which int8 kernels run, so the output "
                "may differ between runs"
            )
        options.setdefault("activations", "static")
        if recipe.max_samples is not None:
            options.setdefault("max_samples", recipe.max_samples)
    if max_drop is not None:
        aware = quantize_accuracy_aware(
            model,
            calib,
            max_drop=max_drop / 100.0,
            eval_data=recipe.eval,  # labelled .npz: no image folder carries labels
            eval_limit=recipe.eval_max_samples,
            options=QuantizeStatic(**options),
        )
        details = {"mode": mode, "accuracy_aware": aware.to_dict()}
        if not aware.met:
            warnings.append(
                f"accuracy-aware: drop {aware.drop * 100:.2f} pt > max_drop "
                f"{max_drop:g} pt even with {len(aware.excluded)} layer(s) float"
            )
        return aware.model, _jsonable(details), warnings
    result = quantize_model(
        model,
        mode=mode,
        calib=calib if mode == "static" else None,
        validate=False,
        **fixing,
        **options,
    )
    report = result.report
    details = {
        "mode": mode,
        "method": report.method,
        "target": report.target,
        "quantized_nodes": len(report.quantized_nodes),
        "quantized_ops": report.quantized_ops,
        "int8_kernels": report.int8_kernels,
        "float_decisions": len(report.skipped),
        "protections": report.protections,
        "samples": report.samples,
    }
    return result.model, _jsonable(details), warnings + list(result.warnings)


def _registry_pass(
    step: Step,
    model: ir.Model,
    options: dict[str, Any],
    calib: FeedSource | None,
    check_data: FeedSource | None,
) -> tuple[ir.Model, dict[str, Any], list[str]]:
    instance = make_pass(step.name, options)
    guard = None
    if getattr(instance, "lossless", False):
        feeds, _ = validation_feeds(model, check_data, count=4)
        guard = Guard(feeds)
    result = run_pipeline(model, Pipeline((instance,)), guard=guard, data=RunData(feeds=calib))
    record = result.records[0]
    if record.status == "rolled back":
        return result.model, record.to_dict(), [f"{step.name}: rolled back ({record.reason})"]
    return result.model, _jsonable({"status": record.status}), []


def weight_histogram(before: ir.Model, after: ir.Model, names: list[str]) -> dict[str, Any]:
    """Histogram of the clustered weights before and after (palettes expanded), same bins."""
    expanded = run_pipeline(after, Pipeline((UnpackPalette(),))).model
    old, new = [], []
    for name in names:
        a, b = before.graph.initializers.get(name), expanded.graph.initializers.get(name)
        if a is None or b is None or a.const_value is None or b.const_value is None:
            continue
        old.append(np.asarray(a.const_value.numpy(), dtype=np.float64).ravel())
        new.append(np.asarray(b.const_value.numpy(), dtype=np.float64).ravel())
    if not old:
        return {}
    x, y = np.concatenate(old), np.concatenate(new)
    edges = np.linspace(min(x.min(), y.min()), max(x.max(), y.max()), HISTOGRAM_BINS + 1)
    return {
        "edges": edges.tolist(),
        "before": np.histogram(x, edges)[0].tolist(),
        "after": np.histogram(y, edges)[0].tolist(),
        "unique_after": int(np.unique(y).size),
        "weights": len(old),
    }


def _jsonable(value: Any) -> Any:
    """Tuples, numpy scalars and arrays as JSON values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
