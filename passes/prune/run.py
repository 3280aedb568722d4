"""Prune a model with one method and report what it cost and what it bought.

What `onnxslim prune` and `onnxslim.api.prune` do: build the pass for the method
(magnitude, nm, channels), run it and the sparse packing as a guarded pipeline on
a copy of the model (the input is never modified), then measure on ONNX Runtime
against the original: per-layer sparsity and channels, file size raw and gzipped,
session start time, latency (single thread, interleaved, ORT_ENABLE_ALL), parity,
and top-1 accuracy of both models when the evaluation data carries `labels`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import onnx_ir as ir
import onnxruntime as ort

from onnxslim.agreement import DEFAULT_TARGET_ERROR, Assessment, Target
from onnxslim.errors import UsageError
from onnxslim.feeds import Feed
from onnxslim.heldout import check_target, split_data
from onnxslim.io import model_to_bytes
from onnxslim.pipeline import Guard, PassRecord, Pipeline, run_pipeline
from onnxslim.validation import resolve_feeds, validate

from ._common import summary
from .channels import ChannelPruning
from .magnitude import MagnitudePruning
from .nm import NMSparsity
from .report import LayerRow, Sizes, labelled, layer_table, model_sizes, overall_sparsity, top1
from .storage import PackSparseWeights

METHODS = ("magnitude", "nm", "channels")
STORAGE = ("packed", "dense")
PARITY_FEEDS = 64


@dataclass
class PruneResult:
    """The pruned model and its report."""

    model: ir.Model
    method: str
    options: dict[str, Any]
    records: list[PassRecord]
    layers: list[LayerRow]
    sparsity: float  # over all weighted layers: 1 - nonzero after / weights before
    size_before: Sizes
    size_after: Sizes
    session_ms: dict[str, float]
    validation: Any | None  # onnxslim.validation.ValidationReport
    accuracy: dict[str, float] | None  # {"original", "pruned", "drop_points", "samples"}
    details: dict[
        str, Any
    ]  # the passes' summary: refit errors, skipped layers, channel groups, storage
    seconds: float
    gate: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    target: Assessment | None = None  # every output against the accuracy target, held-out feeds

    @property
    def latency_ratio(self) -> float | None:
        """Original median latency over the pruned model's (above 1: pruned is faster)."""
        return self.validation.speedup if self.validation is not None else None

    @property
    def drop_points(self) -> float | None:
        """Accuracy lost in points (labels), else top-1 disagreement with the original in points."""
        if self.accuracy is not None:
            return self.accuracy["drop_points"]
        if self.validation is not None and self.validation.outputs:
            agreement = self.validation.outputs[0].top1_agreement
            return None if agreement is None else 100.0 * (1.0 - agreement)
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "options": {k: v for k, v in self.options.items() if k != "calib"},
            "passes": [r.to_dict() for r in self.records],
            "layers": [r.to_dict() for r in self.layers],
            "sparsity": self.sparsity,
            "size": {
                "before": self.size_before.to_dict(),
                "after": self.size_after.to_dict(),
                "raw_ratio": self.size_after.raw / self.size_before.raw,
                "gzip_ratio": self.size_after.gzip / self.size_before.gzip,
            },
            "session_ms": self.session_ms,
            "latency_ratio": self.latency_ratio,
            "validation": self.validation.to_dict() if self.validation is not None else None,
            "accuracy": self.accuracy,
            "drop_points": self.drop_points,
            "details": self.details,
            "gate": self.gate,
            "seconds": self.seconds,
            "warnings": list(self.warnings),
            "target": self.target.to_dict() if self.target is not None else None,
        }


def make_prune_pass(method: str, **options: Any) -> ir.passes.PassBase:
    """The pass for `method` with `options` (its dataclass fields); unknown ones: UsageError."""
    classes = {"magnitude": MagnitudePruning, "nm": NMSparsity, "channels": ChannelPruning}
    if method not in classes:
        raise UsageError(f"method {method!r}: expected one of {', '.join(METHODS)}")
    cls = classes[method]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UsageError(
            f"prune --method {method}: option(s) {', '.join(unknown)} do not apply; "
            f"known: {', '.join(sorted(known))}"
        )
    try:
        return cls(**options)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"prune --method {method}: {exc}") from exc


def prune_model(
    model: ir.Model,
    *,
    method: str = "magnitude",
    storage: str = "packed",
    eval_data: Any = None,
    validate_result: bool = True,
    runs: int = 50,
    max_drop: float | None = None,
    target_error: float | None = DEFAULT_TARGET_ERROR,
    **options: Any,
) -> PruneResult:
    """Prune `model` (not modified) with `method`; see the module docstring for what is measured.

    With `validate_result` and a `target_error` (points, onnxslim.agreement), every
    output is measured against the original on feeds the refits never saw (`eval_data`,
    else the calibration data's last quarter, held back) into `result.target`.
    """
    if storage not in STORAGE:
        raise UsageError(f"storage {storage!r}: expected one of {', '.join(STORAGE)}")
    start = time.perf_counter()
    target = Target(target_error) if validate_result and target_error is not None else None
    calib = options.get("calib")
    split = split_data(model, calib, eval_data) if target is not None else None
    if split is not None and calib is not None:
        options["calib"] = split.fit
    prune_pass = make_prune_pass(method, **options)
    check_feeds = _parity_feeds(model, eval_data, calib)
    guard = Guard(check_feeds) if validate_result else None
    # Two pipelines: each run clones the model, and a clone does not carry model.meta,
    # where a pass leaves its summary.
    result = run_pipeline(model, Pipeline((prune_pass,)), guard=guard)
    details = summary(result.model)
    if storage == "packed":
        packing = run_pipeline(result.model, Pipeline((PackSparseWeights(),)), guard=guard)
        details.update(summary(packing.model))
        result.records += packing.records
        result.model = packing.model
    pruned = result.model
    rows = layer_table(model, pruned)
    report = PruneResult(
        model=pruned,
        method=method,
        options=dict(options, storage=storage),
        records=result.records,
        layers=rows,
        sparsity=overall_sparsity(rows),
        size_before=model_sizes(model),
        size_after=model_sizes(pruned),
        session_ms={},
        validation=None,
        accuracy=None,
        details=details,
        seconds=0.0,
    )
    report.warnings += [f"{r.name}: {r.status} ({r.reason})" for r in result.rolled_back]
    if validate_result:
        report.session_ms = {
            "original": session_start_ms(model),
            "pruned": session_start_ms(pruned),
        }
        report.validation = validate(
            model,
            pruned,
            feeds=check_feeds,
            runs=runs,
            warmup=5,
            measure_memory=False,
            atol=1e-3,
            rtol=1e-3,
        )
        if eval_data is not None:
            data = labelled(eval_data, model)
            if data is not None:
                original_acc, pruned_acc = top1([model, pruned], *data)
                report.accuracy = {
                    "original": original_acc,
                    "pruned": pruned_acc,
                    "drop_points": 100.0 * (original_acc - pruned_acc),
                    "samples": float(len(data[1])),
                }
    if target is not None and split is not None:
        report.target = check_target(model, pruned, split, target)
    if max_drop is not None:
        drop = report.drop_points
        if drop is None:
            raise UsageError(
                "--max-drop needs labelled --eval data or a classifier-shaped first output"
            )
        report.gate = {"max_drop": max_drop, "drop_points": drop, "passed": drop <= max_drop + 1e-9}
    report.seconds = time.perf_counter() - start
    return report


def session_start_ms(model: ir.Model, repeats: int = 3) -> float:
    """Fastest of `repeats` ORT session creations from the serialized model (ORT_ENABLE_ALL), in ms.

    This is where packed sparse weights are expanded, so it is their whole cost.
    """
    data = model_to_bytes(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        best = min(best, (time.perf_counter() - t) * 1000)
    return best


def _parity_feeds(model: ir.Model, eval_data: Any, calib: Any) -> list[Feed]:
    """Feeds for the guard and parity figures: eval data, else calibration data, else generated."""
    source = eval_data if eval_data is not None else calib
    feeds, _, _ = resolve_feeds(model, source, count=PARITY_FEEDS if source is not None else 8)
    return feeds
