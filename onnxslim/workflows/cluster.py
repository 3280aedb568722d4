"""Cluster a model and report what it cost and what it bought.

What `onnxslim cluster` and `onnxslim.api.cluster` do: run the lossless clean-up
of `onnxslim optimize` (BatchNorm folded into Conv, constants folded; guarded on
ORT), then the cluster-weights pass, on a copy of the model (the input is never
modified), optionally drop the exporter's debug metadata (`strip_debug_metadata`)
and the intermediate value_info where ORT is measured to optimize to the same graph
without it (`value_info_droppable`), check the result with
onnx.checker, then measure on ONNX Runtime against the original: per-weight and
per-layer errors, file size raw and gzipped, session start time (where the
palettes are expanded), latency (single thread, interleaved, ORT_ENABLE_ALL),
parity, and top-1 accuracy of both models when the evaluation data has `labels`.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import onnx
import onnx_ir as ir

from onnxslim.agreement import DEFAULT_TARGET_ERROR, Assessment, Target
from onnxslim.calibration import FeedSource
from onnxslim.errors import UsageError
from onnxslim.feeds import Feed
from onnxslim.graphs import tensor_bytes
from onnxslim.passes._run_data import RunData
from onnxslim.passes.cleanup import drop_shape_annotations, strip_debug_metadata
from onnxslim.passes.cluster.cluster import ClusterWeights, prepare, summary
from onnxslim.passes.cluster.weights import find_weights
from onnxslim.pipeline import PassRecord, Pipeline, PipelineResult, run_pipeline
from onnxslim.registry import make_cluster_pass
from onnxslim.runtime import ort_optimized, shared_sessions
from onnxslim.sources import ModelResult
from onnxslim.validation import ValidationReport
from onnxslim.workflows.at_target import TargetCheck, final_target
from onnxslim.workflows.heldout import split_data
from onnxslim.workflows.measure import (
    Compared,
    Sizes,
    compare,
    model_sizes,
    open_once,
    parity_feeds,
    read_evaluation,
)
from onnxslim.workflows.optimize import optimize as optimize_model

VALUE_INFO_CHECK_BYTES = 200_000_000
DOMAIN_IMPORT_BYTES = 24  # the palette domain's opset import, which the pass adds
CHECKER_LIMIT_BYTES = 1_500_000_000
DEFAULT_BITS = 4  # the palette width of uniform and mixed allocations when none is given
_INTERNAL = ("accept", "probe_feeds", "requested", "calib")


@dataclass
class ClusterResult(Compared, ModelResult):
    """The clustered model and its report."""

    model: ir.Model
    options: dict[str, Any]
    records: list[PassRecord]
    weights: list[dict[str, Any]]  # per clustered tensor: shape, groups, bits, errors, bytes
    layers: list[
        dict[str, Any]
    ]  # per layer: output error on calibration rows before/after refinement
    skipped: list[dict[str, str]]
    notes: list[str]
    size_before: Sizes
    size_after: Sizes
    size_before_stripped: Sizes | None  # the original without debug metadata: like for like
    session_ms: dict[str, float]
    validation: ValidationReport | None
    accuracy: dict[str, float] | None  # {"original", "clustered", "drop_points", "samples"}
    checker: str  # "ok" or onnx.checker's complaint
    seconds: float
    gate: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    allocation: dict[str, Any] | None = None  # allocation=mixed: budget, errors, each weight's form
    target: Assessment | None = None  # every output against the accuracy target, held-out feeds
    # allocation=target with --bits / a budget asked for: {"bits", "passed", "blamed", ...};
    # not passed when that budget missed the target (exit 1; the model at the request written)
    request: dict[str, Any] | None = None

    @property
    def bits(self) -> int:
        return int(self.options["bits"])

    @property
    def search(self) -> dict[str, Any] | None:
        """What the target search tried (allocation=target), else None."""
        return (self.allocation or {}).get("search")

    @property
    def bits_per_weight(self) -> float:
        """Stored bits per element of the clustered tensors (palettes and framing included)."""
        elements = sum(w["elements"] for w in self.weights)
        return 8.0 * sum(w["stored_bytes"] for w in self.weights) / elements if elements else 32.0

    @property
    def weight_ratio(self) -> float:
        """Stored bytes of the clustered tensors over their float bytes."""
        dense = sum(w["dense_bytes"] for w in self.weights)
        return sum(w["stored_bytes"] for w in self.weights) / dense if dense else 1.0

    def to_dict(self) -> dict[str, Any]:
        sizes = {
            "before": self.size_before.to_dict(),
            "after": self.size_after.to_dict(),
            "raw_ratio": self.size_after.raw / self.size_before.raw,
            "gzip_ratio": self.size_after.gzip / self.size_before.gzip,
            "weight_ratio": self.weight_ratio,
        }
        if self.size_before_stripped is not None:
            sizes["before_stripped"] = self.size_before_stripped.to_dict()
            sizes["raw_ratio_stripped"] = self.size_after.raw / self.size_before_stripped.raw
        return {
            "bits": self.bits,
            "palette_size": 1 << self.bits,
            "bits_per_weight": self.bits_per_weight,
            "options": {k: v for k, v in self.options.items() if k not in _INTERNAL},
            "passes": [r.to_dict() for r in self.records],
            "weights": self.weights,
            "layers": self.layers,
            "skipped": self.skipped,
            "notes": self.notes,
            "size": sizes,
            "session_ms": self.session_ms,
            "latency_ratio": self.latency_ratio,
            "validation": self.validation.to_dict() if self.validation is not None else None,
            "accuracy": self.accuracy,
            "drop_points": self.drop_points,
            "checker": self.checker,
            "gate": self.gate,
            "allocation": self.allocation,
            "seconds": self.seconds,
            "warnings": list(self.warnings),
            "target": self.target.to_dict() if self.target is not None else None,
            "search": self.search,
            "request": self.request,
        }


def cluster_model(
    model: ir.Model,
    *,
    bits: int | None = None,
    calib: FeedSource | None = None,
    eval_data: FeedSource | None = None,
    validate_result: bool = True,
    runs: int = 50,
    max_drop: float | None = None,
    strip_metadata: bool = True,
    optimize: bool = True,
    max_size: int | None = None,
    target_error: float | None = DEFAULT_TARGET_ERROR,
    **options: Any,
) -> ClusterResult:
    """Cluster `model` (not modified); see the module docstring for what is measured.

    By default (allocation="target") the fewest bytes that meet the target: bits (2..8)
    and palettes per weight from measured sensitivities, each budget checked on the
    held-out feeds (TargetCheck); a `bits` given is a budget (what uniform `bits`
    stores), and when it misses the target `result.request` names the weights that
    broke it (the model at the budget is the result). allocation="uniform" / "mixed":
    exactly `bits` (default DEFAULT_BITS), or within its bytes.

    `max_size` (bytes): the file the result may take at most; it sets allocation=mixed
    and the weights' budget to what the rest of the file leaves (see `_fit_to_size`).
    With `validate_result` and a `target_error` (points, onnxslim.agreement), every
    output is measured against the original on feeds the refits never saw (`eval_data`,
    else the calibration data's last quarter, held back) into `result.target`.
    """
    start = time.perf_counter()
    requested = bits is not None
    bits = DEFAULT_BITS if bits is None else bits
    if max_size is not None:
        if options.get("allocation", "mixed") not in ("mixed", "target"):
            raise UsageError("cluster: a size target needs allocation=mixed")
        options = dict(options, allocation="mixed")
    options.setdefault("allocation", "target")
    target = Target(target_error) if validate_result and target_error is not None else None
    given = calib
    # The user's data is opened once: the pass, the held-out split and the parity
    # feeds read the calibration stream; the check, parity and top-1 the evaluation data.
    calib = open_once(model, given)
    evaluation = read_evaluation(model, eval_data, whole=validate_result)
    # The clean-up's check runs on the user's data when there is some (generated feeds
    # can take a branch or a shape the user's model never sees).
    has_data = eval_data is not None or calib is not None
    with shared_sessions():  # both feed plans probe the same model: one session
        split = split_data(model, calib, evaluation) if target is not None else None
        # Read once: the clean-up's check takes the first 4, the final comparison all.
        wanted = has_data or validate_result
        check_feeds = parity_feeds(model, evaluation, calib) if wanted else None
    data = RunData(feeds=split.fit if split is not None else calib)
    if options["allocation"] == "target" and target is not None and split is not None:
        data = dataclasses.replace(
            data,
            accept=TargetCheck(model, split, target),
            requested=requested or options.get("budget") is not None,
            # without calibration data the sensitivities run on the check's feeds: they
            # only rank the forms
            probe_feeds=split.check if calib is None else None,
        )
    cluster_pass = make_cluster_pass(bits=bits, **options)
    assert isinstance(cluster_pass, ClusterWeights)
    user_feeds = check_feeds[:4] if has_data and check_feeds is not None else None
    cleaned, cleanup_notes = _clean_up(model, user_feeds) if optimize else (model, [])
    drop_value_info = strip_metadata and value_info_droppable(cleaned)
    if max_size is not None:
        result = _fit_to_size(
            cleaned, cluster_pass, data, max_size, strip_metadata, drop_value_info
        )
    else:
        result = run_pipeline(cleaned, Pipeline((cluster_pass,)), data=data)
    clustered = result.model
    details = summary(clustered)
    details["notes"] = cleanup_notes + list(details.get("notes", []))
    if strip_metadata:
        _strip(clustered, drop_value_info)
        stripped_original = model.clone()
        _strip(stripped_original, drop_value_info)
        if drop_value_info:
            details["notes"].append(
                "intermediate value_info dropped (ORT optimizes to the same graph without it)"
            )
    report = ClusterResult(
        model=clustered,
        options=dict(
            options, bits=bits, calib=given, strip_metadata=strip_metadata, optimize=optimize
        ),
        records=result.records,
        weights=details.get("weights", []),
        layers=details.get("layers", []),
        skipped=details.get("skipped", []),
        notes=details.get("notes", []),
        size_before=model_sizes(model),
        size_after=model_sizes(clustered),
        size_before_stripped=model_sizes(stripped_original) if strip_metadata else None,
        session_ms={},
        validation=None,
        accuracy=None,
        checker=check(clustered),
        seconds=0.0,
        allocation=details.get("allocated"),
    )
    if report.checker not in ("ok", "skipped (over the 2 GB protobuf limit)"):
        report.warnings.append(f"onnx.checker: {report.checker}")
    if not report.weights:
        allocated = report.allocation or {}
        if allocated.get("weights"):  # candidates were weighed: float won on bytes and error
            why = "every weight is smaller or as small in float than in a palette form that fits"
        else:
            why = "no float layer weight of at least min_elements"
        report.warnings.append(f"nothing was clustered: {why}")
    for row in report.weights:
        if row.get("note"):
            report.warnings.append(f"{row['weight']}: {row['note']}")
    with shared_sessions():  # one session per model for parity and the target check
        if validate_result:
            assert check_feeds is not None
            measured = compare(
                model, clustered, "clustered", feeds=check_feeds, eval_data=evaluation, runs=runs
            )
            report.session_ms, report.validation = measured.session_ms, measured.validation
            report.accuracy = measured.accuracy
        report.target = final_target(data.accept, model, clustered, split, target)
    searched = report.search
    if searched is not None and searched.get("requested_bytes") is not None:
        report.request = {
            "bits": bits,
            "budget_bytes": searched["requested_bytes"],
            "reached_bytes": searched["reached_bytes"],
            "passed": report.target is None or report.target.passed,
            "blamed": searched.get("blamed", []),
        }
    if max_size is not None:
        report.allocation = dict(report.allocation or {}, max_size=max_size)
        if report.size_after.raw > max_size:
            report.warnings.append(
                f"{report.size_after.raw:,} bytes: over the size target {max_size:,} "
                "(even the cheapest form of every weight does not fit)"
            )
    if max_drop is not None:
        report.gate = report.drop_gate(max_drop)
    report.seconds = time.perf_counter() - start
    return report


def _strip(model: ir.Model, value_info: bool = False) -> None:
    """Drop debug metadata, and with `value_info` the intermediate shape annotations."""
    strip_debug_metadata(model)
    if value_info:
        drop_shape_annotations(model)


def value_info_droppable(model: ir.Model) -> bool:
    """Whether ORT optimizes the model into the same graph without its intermediate value_info.

    Some fusions read it (without it digits_transformer loses its SkipLayerNormalization),
    so it is dropped only where ORT's optimized graph is measured to stay the same.
    Models above VALUE_INFO_CHECK_BYTES keep it (the check would cost two sessions).
    """
    if tensor_bytes(model) > VALUE_INFO_CHECK_BYTES:
        return False
    bare = model.clone()
    if not drop_shape_annotations(bare):
        return False
    try:
        return _optimized_ops(model) == _optimized_ops(bare)
    except Exception:  # a model ORT cannot optimize keeps what it has
        return False


def _optimized_ops(model: ir.Model) -> Counter[tuple[str, str]]:
    graph = ort_optimized(model, load_external_data=False).graph
    return Counter((n.domain, n.op_type) for n in graph.node)


def _fit_to_size(
    model: ir.Model,
    cluster_pass: ClusterWeights,
    data: RunData,
    max_size: int,
    strip_metadata: bool,
    drop_value_info: bool,
) -> PipelineResult:
    """Run `cluster_pass` with the weights' budget the rest of the file leaves under max_size.

    The rest (graph, weights too small to cluster, metadata that stays) is measured on
    the model with the clustered weights' initializers taken out; the pass then spends
    the remaining bytes on the weights and their expansion functions. Framing bytes
    the estimate misses are taken back in one more run if the file came out over.
    """
    scratch = model.clone()
    prepare(scratch)
    weights, _ = find_weights(
        scratch,
        min_elements=cluster_pass.smallest_weight(searching=data.accept is not None),
        exclude=cluster_pass.exclude,
    )
    for weight in weights:
        scratch.graph.initializers.pop(weight.name, None)
    if strip_metadata:
        _strip(scratch, drop_value_info)
    budget = max(0, max_size - model_sizes(scratch).raw - DOMAIN_IMPORT_BYTES)
    for _ in range(2):
        result = run_pipeline(
            model, Pipeline((dataclasses.replace(cluster_pass, budget_bytes=budget),)), data=data
        )
        final = result.model.clone()
        if strip_metadata:
            _strip(final, drop_value_info)
        over = model_sizes(final).raw - max_size
        if over <= 0 or budget == 0:
            break
        budget = max(0, budget - over)
    return result


def _clean_up(model: ir.Model, feeds: list[Feed] | None = None) -> tuple[ir.Model, list[str]]:
    """The lossless clean-up of `onnxslim optimize` (guarded on ORT): clustering sees final weights.

    Folding BatchNormalization into its Conv first matters twice: the palettes then
    describe the weights ORT actually multiplies with (it folds BatchNorm at load
    anyway), and the BatchNorm parameter vectors leave the file.
    """
    # Metadata is the caller's choice (stripped after clustering), not the clean-up's.
    cleaned = optimize_model(model, verify=True, keep_metadata=True, feeds=feeds)
    changed = [r.name for r in cleaned.result.records if r.status == "changed"]
    if not cleaned.passed:
        return model, ["lossless clean-up skipped: its result moved the outputs"]
    if not changed:
        return model, []
    return cleaned.model, [f"lossless clean-up first: {', '.join(changed)}"]


def check(model: ir.Model) -> str:
    """onnx.checker's verdict on the model (full check, shape inference included)."""
    if tensor_bytes(model) > CHECKER_LIMIT_BYTES:
        return "skipped (over the 2 GB protobuf limit)"
    try:
        onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    except Exception as exc:  # the checker raises several types
        return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    return "ok"
