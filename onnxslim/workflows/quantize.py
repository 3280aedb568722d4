"""Quantize a model in one of three modes and validate the result against the float model.

This is what `onnxslim quantize` and `onnxslim.api.quantize` do: choose the pass for
the mode, run it on a copy (the input is never modified), then run both models on
ONNX Runtime on the same feeds (the --data feeds, else calibration feeds, else
generated ones) for parity (cosine, top-1 agreement), latency (single thread,
interleaved) and, when the data carries a `labels` array, top-1 accuracy of both.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxslim.agreement import DEFAULT_TARGET_ERROR, Assessment, Target
from onnxslim.calibration import FeedSource, FeedStream, open_feeds
from onnxslim.errors import UsageError
from onnxslim.evaluation import model_inputs, read_labelled, time_interleaved, top1_by_model
from onnxslim.feeds import Feed, generate_feeds, input_specs
from onnxslim.graphs import node_count, tensor_bytes
from onnxslim.passes._run_data import NO_DATA, RunData, StageProgress, run_pass
from onnxslim.passes.quantize.prepare import prepare
from onnxslim.passes.quantize.static import (
    REPORT_KEY,
    QuantizeReport,
    QuantizeStatic,
    refuse_quantized,
)
from onnxslim.registry import QUANTIZE_MODES, make_quantize_pass
from onnxslim.runtime import Session, SessionConfig, shared_sessions
from onnxslim.sources import ModelResult
from onnxslim.validation import ValidationReport, validate
from onnxslim.workflows.heldout import check_target, split_data

MODES = tuple(QUANTIZE_MODES)


@dataclass
class QuantizeResult(ModelResult):
    """The quantized model, what the pass decided, and how it compares with the float model."""

    model: ir.Model
    report: QuantizeReport
    validation: ValidationReport | None
    bytes_before: int
    bytes_after: int
    nodes_before: int
    nodes_after: int
    seconds: float
    accuracy: dict[str, float] | None = None  # {"float": .., "quantized": .., "samples": n}
    warnings: list[str] = field(default_factory=list)
    # Median ms of the input, the cleaned-up float model quantization starts from, and int8,
    # timed interleaved on one thread; each step's ratio is against the model before it.
    latency: dict[str, float] | None = None
    target: Assessment | None = None  # every output against the accuracy target, held-out feeds
    # Why the result is the (cleaned) float model: int8 paid nowhere; None when int8 was kept.
    kept_float: str | None = None

    @property
    def size_ratio(self) -> float:
        return self.bytes_after / self.bytes_before if self.bytes_before else 1.0

    @property
    def latency_ratio(self) -> float | None:
        """Quantized median latency over the input model's (below 1: faster)."""
        if self.latency:
            return self.latency["overall_ratio"]
        speedup = getattr(self.validation, "speedup", None) if self.validation is not None else None
        return 1.0 / speedup if speedup else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "report": self.report.to_dict(),
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "size_ratio": self.size_ratio,
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "latency_ratio": self.latency_ratio,
            "latency": self.latency,
            "accuracy": self.accuracy,
            "validation": self.validation.to_dict() if self.validation is not None else None,
            "seconds": self.seconds,
            "warnings": list(self.warnings),
            "target": self.target.to_dict() if self.target is not None else None,
            "kept_float": self.kept_float,
        }


def quantize_model(
    model: ir.Model,
    *,
    mode: str = "static",
    calib: FeedSource | None = None,
    data: FeedSource | None = None,
    validate: bool = True,
    validation_samples: int = 32,
    runs: int = 20,
    threads: int = 1,
    progress: StageProgress | None = None,
    target_error: float | None = DEFAULT_TARGET_ERROR,
    fix: bool = True,
    check: Sequence[Feed] | None = None,
    **options: Any,
) -> QuantizeResult:
    """Quantize (a copy of) `model` and validate it; `options` are the pass's fields.

    With `validate` and a `target_error` (points, onnxslim.agreement), every output is
    measured against the float model on feeds the calibration never saw (`data`, else
    the calibration data's last quarter, held back) into `result.target`. Static int8
    that misses it has the layers responsible fixed (`fix`, passes/quantize/repair.py)
    on those feeds, so the figure reported is the fixed model's. `check`: held-out feeds
    the caller holds (a recipe's back-off, which measures the result itself), fixed on
    with `target_error` and no validation.
    """
    target = Target(target_error) if validate and target_error is not None else None
    if mode == "static":
        if calib is None and not input_specs(model):
            calib = [{}]  # a model without inputs has one possible feed: nothing to ask for
        if calib is None:
            raise UsageError("static quantization needs calibration data (--calib)")
        if isinstance(calib, (str, os.PathLike)):
            # A data file is opened once: the pass calibrates on this stream (its labels
            # ignored) and validation reads it again when no other data is given.
            calib = open_feeds(calib, model, extra="keep")
        split = split_data(model, calib, data) if target is not None else None
        run_data = RunData(feeds=split.fit if split is not None else calib, progress=progress)
        if split is not None and target is not None:
            options.update(fix=fix, target_error=target.error)
            run_data = dataclasses.replace(run_data, check=split.check)
        elif check is not None and target_error is not None:
            # the caller holds the held-out feeds and measures the result (a recipe's back-off)
            options.update(fix=fix, target_error=target_error)
            run_data = dataclasses.replace(run_data, check=check, caller_measures=True)
        else:
            options["fix"] = False
    else:
        run_data = NO_DATA
        if calib is not None and data is None:
            data = calib  # dynamic and weight-only need no calibration; use it to validate
        split = split_data(model, None, data) if target is not None else None
    quantize_pass = make_quantize_pass(mode, **options)
    start = time.perf_counter()
    quantized = model.clone()
    # Static int8 starts from the cleaned float model, prepared once here (a clone of it
    # costs less than preparing again: ORT's optimizer and shape inference on a huge graph).
    cleaned = None
    if isinstance(quantize_pass, QuantizeStatic):
        refuse_quantized(model, quantize_pass.force)
        cleaned, steps = prepare(model)
        quantize_pass.run_prepared(quantized, run_data, (cleaned.clone(), steps))
    else:
        run_pass(quantize_pass, quantized, run_data)
    seconds = time.perf_counter() - start
    report: QuantizeReport = quantized.meta.get(REPORT_KEY) or QuantizeReport(mode)
    result = QuantizeResult(
        quantized,
        report,
        None,
        tensor_bytes(model),
        tensor_bytes(quantized),
        node_count(model),
        node_count(quantized),
        seconds,
        warnings=list(report.warnings),
    )
    # The cleaned float model's weight bytes are what int8 must not exceed (a palettized
    # input stores fewer bytes than the dense weights it runs).
    reference_bytes = tensor_bytes(cleaned) if cleaned is not None else result.bytes_before
    why = _pays_nowhere(report, reference_bytes, result.bytes_after)
    if why is not None:
        # A float model that runs is never refused: the result is the float model after
        # the clean-up quantization starts from (static), with the reason in one line.
        quantized = cleaned if cleaned is not None else model.clone()
        result.model = quantized
        result.bytes_after, result.nodes_after = tensor_bytes(quantized), node_count(quantized)
        result.kept_float = why
        result.warnings = [w for w in result.warnings if not w.startswith("kept float")]
    with shared_sessions():  # each model gets one session for all the checks below
        if validate:
            feeds_source = data if data is not None else calib
            result.validation, result.accuracy, feeds = _validate(
                model, quantized, feeds_source, validation_samples, threads, progress
            )
            if runs:
                result.latency = step_latency(model, cleaned, quantized, feeds, runs, threads)
        if target is not None and split is not None:
            result.target = check_target(model, quantized, split, target)
    return result


def _pays_nowhere(report: QuantizeReport, before: int, after: int) -> str | None:
    """Why int8 pays nowhere for this model (the float model is the result), or None."""
    if not report.quantized_nodes:
        # the last decision that kept the whole model float (the latency guard's, or the
        # fix loop's when int8 missed the target after every fix)
        guard = next((w for w in reversed(report.warnings) if w.startswith("kept float: ")), None)
        if guard is not None:
            return guard.removeprefix("kept float: ")
        return "nothing was quantized: no op of this model has a faster or smaller int8 form here"
    if after > before:
        return (
            f"int8 would hold more weight bytes than the cleaned float model ({after} > {before})"
        )
    return None


def step_latency(
    model: ir.Model,
    cleaned: ir.Model | None,
    quantized: ir.Model,
    feeds: Sequence[Feed],
    runs: int,
    threads: int,
) -> dict[str, float]:
    """Median ms per model, timed interleaved, and each step against the model before it.

    Static int8 starts from a cleaned-up float model (ORT's basic optimizations, Div by
    a constant as Mul, ...); timing it apart books the clean-up's gain to the clean-up,
    so `int8_ratio` is what int8 itself does (above 1: int8 slower than float here).
    """
    config = SessionConfig(threads=threads)
    sessions = {"input": Session(model, config)}
    if cleaned is not None:
        sessions["cleaned"] = Session(cleaned, config)
    sessions["quantized"] = Session(quantized, config)
    times = time_interleaved(sessions, list(feeds)[:8], runs=runs, warmup=3)
    ms = {label: float(np.median(samples)) * 1000 for label, samples in times.items()}
    float_ms = ms.get("cleaned", ms["input"])
    figures = {f"{label}_ms": value for label, value in ms.items()}
    figures["overall_ratio"] = ms["quantized"] / ms["input"]
    figures["int8_ratio"] = ms["quantized"] / float_ms
    if "cleaned" in ms:
        figures["cleanup_ratio"] = ms["cleaned"] / ms["input"]
    return figures


def _validate(
    reference: ir.Model,
    candidate: ir.Model,
    source: FeedSource | None,
    count: int,
    threads: int,
    progress: StageProgress | None,
) -> tuple[ValidationReport, dict[str, float] | None, list[Feed]]:
    """Parity (and accuracy with labels) on `source`'s first `count` feeds, or generated
    ones; returns the feeds too, for timing."""
    feeds = None
    stream = None
    has_labels = False
    if source is not None:  # opened once: its first `count` feeds validate, all of it scores
        if isinstance(source, FeedStream):
            stream = source
        else:
            stream = open_feeds(source, reference, extra="keep")
        head = read_labelled(stream, reference, limit=count)
        feeds, has_labels = head.feeds, head.labelled > 0

    def notify(stage: str, done: int, total: int) -> None:
        if progress is not None:
            progress(stage, done, total)

    if not feeds:
        feeds = generate_feeds(input_specs(reference), 8, seed=0)
    report = validate(
        reference,
        candidate,
        feeds=feeds,
        runs=0,
        threads=threads,
        measure_memory=False,
        atol=1e-2,
        rtol=1e-2,
        progress=notify,
    )
    accuracy = None
    if has_labels and stream is not None:
        accuracy = accuracy_on(reference, candidate, stream, progress=progress)
    return report, accuracy, list(feeds)


def accuracy_on(
    reference: ir.Model,
    candidate: ir.Model,
    source: FeedSource | FeedStream,
    *,
    limit: int | None = None,
    progress: StageProgress | None = None,
) -> dict[str, float] | None:
    """Top-1 accuracy of both models over labelled data, streamed; None unless the first
    output is a classifier's [batch, classes] scores with one label per sample."""
    stream = source if isinstance(source, FeedStream) else None
    if stream is None or limit is not None:
        stream = open_feeds(source, reference, limit=limit, extra="keep")
    models = {"float": reference, "quantized": candidate}
    return top1_by_model(
        models, stream, model_inputs(reference), expected=stream.count, progress=progress
    )
