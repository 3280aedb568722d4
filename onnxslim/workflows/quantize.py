"""Quantize a model in one of three modes and validate the result against the float model.

This is what `onnxslim quantize` and `onnxslim.api.quantize` do: choose the pass for
the mode, run it on a copy (the input is never modified), then run both models on
ONNX Runtime on the same feeds (the --data feeds, else calibration feeds, else
generated ones) for parity (cosine, top-1 agreement), latency (single thread,
interleaved) and, when the data carries a `labels` array, top-1 accuracy of both.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import onnx_ir as ir

from onnxslim.calibration import FeedSource, FeedStream, open_feeds
from onnxslim.errors import UsageError
from onnxslim.evaluation import model_inputs, read_labelled, top1_by_model
from onnxslim.graphs import node_count, tensor_bytes
from onnxslim.passes.quantize.static import REPORT_KEY, QuantizeReport, QuantizeStatic
from onnxslim.registry import QUANTIZE_MODES, make_quantize_pass
from onnxslim.validation import ValidationReport, validate

MODES = tuple(QUANTIZE_MODES)
StageProgress = Callable[[str, int, int | None], None]


@dataclass
class QuantizeResult:
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

    @property
    def size_ratio(self) -> float:
        return self.bytes_after / self.bytes_before if self.bytes_before else 1.0

    @property
    def latency_ratio(self) -> float | None:
        """Quantized median latency over float (below 1: faster)."""
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
            "accuracy": self.accuracy,
            "validation": self.validation.to_dict() if self.validation is not None else None,
            "seconds": self.seconds,
            "warnings": list(self.warnings),
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
    **options: Any,
) -> QuantizeResult:
    """Quantize (a copy of) `model` and validate it; `options` are the pass's fields."""
    if mode == "static":
        if calib is None:
            raise UsageError("static quantization needs calibration data (--calib)")
        if isinstance(calib, (str, os.PathLike)):
            # A data file is opened once: the pass calibrates on this stream (its labels
            # ignored) and validation reads it again when no other data is given.
            calib = open_feeds(calib, model, extra="keep")
        options["calib"] = calib
    elif calib is not None and data is None:
        data = calib  # dynamic and weight-only need no calibration; use it to validate
    quantize_pass = make_quantize_pass(mode, **options)
    start = time.perf_counter()
    quantized = model.clone()
    if isinstance(quantize_pass, QuantizeStatic):
        quantize_pass.run_with(quantized, progress=progress)
    else:
        quantize_pass(quantized)
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
    if not report.quantized_nodes and not any(w.startswith("kept float") for w in report.warnings):
        result.warnings.append(
            "nothing was quantized: no op of this model has a faster or smaller int8 form here"
        )
    if result.bytes_after > result.bytes_before:
        result.warnings.append(
            f"the result holds more weight bytes than the input "
            f"({result.bytes_after} > {result.bytes_before})"
        )
    if validate:
        feeds_source = data if data is not None else calib
        result.validation, result.accuracy = _validate(
            model, quantized, feeds_source, validation_samples, runs, threads, progress
        )
    return result


def _validate(
    reference: ir.Model,
    candidate: ir.Model,
    source: FeedSource | None,
    count: int,
    runs: int,
    threads: int,
    progress: StageProgress | None,
) -> tuple[ValidationReport, dict[str, float] | None]:
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

    report = validate(
        reference,
        candidate,
        feeds=feeds,
        count=None if feeds else 8,
        runs=runs,
        threads=threads,
        measure_memory=False,
        atol=1e-2,
        rtol=1e-2,
        progress=notify,
    )
    accuracy = None
    if has_labels and stream is not None:
        accuracy = accuracy_on(reference, candidate, stream, progress=progress)
    return report, accuracy


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
