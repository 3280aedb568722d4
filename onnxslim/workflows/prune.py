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
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxslim.agreement import DEFAULT_TARGET_ERROR, Assessment, Target
from onnxslim.calibration import FeedSource
from onnxslim.errors import UsageError
from onnxslim.passes._run_data import RunData
from onnxslim.passes.prune._common import summary
from onnxslim.passes.prune.layers import LAYER_OPS, find_layers, resolve_initializer
from onnxslim.passes.prune.storage import PackSparseWeights, packed_weights
from onnxslim.pipeline import Guard, PassRecord, Pipeline, run_pipeline
from onnxslim.registry import PRUNE_METHODS, PRUNE_STORAGE, make_prune_pass
from onnxslim.runtime import shared_sessions
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

METHODS = tuple(PRUNE_METHODS)
STORAGE = PRUNE_STORAGE
# The default search's upper bound: no sparsity given, the most that meets the target.
TARGET_MAX_SPARSITY = 0.9
LOSSLESS_FEEDS = 4  # feeds the lossless packing is checked on


@dataclass(frozen=True)
class LayerRow:
    """One weighted layer before and after pruning."""

    name: str
    op_type: str
    shape_before: tuple[int, ...]
    shape_after: tuple[int, ...] | None  # None: the layer is gone
    elements_before: int
    nonzero_after: int
    sparsity: float  # zeros / elements, of the pruned weight
    reduction: float  # 1 - nonzero_after / elements_before: what the layer lost, channels included

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def layer_table(original: ir.Model, pruned: ir.Model) -> list[LayerRow]:
    """Per-layer figures, layers matched by their output value (passes may name unnamed nodes;
    they never rename values); packed weights are unpacked first."""
    packed = packed_weights(pruned)
    after: dict[str, np.ndarray] = {}
    for node in pruned.graph:
        if node.op_type in LAYER_OPS and len(node.inputs) > 1 and node.inputs[1] is not None:
            source = resolve_initializer(node.inputs[1]) or _through_identity(node.inputs[1])
            if source.name is not None and source.name in packed:
                after[node.outputs[0].name or ""] = packed[source.name]
            elif source.const_value is not None:
                after[node.outputs[0].name or ""] = source.const_value.numpy()
    rows = []
    for layer in find_layers(original)[0]:
        before = layer.array()
        pruned_w = after.get(layer.node.outputs[0].name or "")
        if pruned_w is None:
            rows.append(
                LayerRow(
                    layer.name, layer.op_type, tuple(before.shape), None, before.size, 0, 1.0, 1.0
                )
            )
            continue
        nonzero = int(np.count_nonzero(pruned_w))
        rows.append(
            LayerRow(
                layer.name,
                layer.op_type,
                tuple(before.shape),
                tuple(pruned_w.shape),
                int(before.size),
                nonzero,
                1.0 - nonzero / pruned_w.size if pruned_w.size else 0.0,
                1.0 - nonzero / before.size if before.size else 0.0,
            )
        )
    return rows


def _through_identity(value: ir.Value) -> ir.Value:
    """The value an Identity chain starts from: a weight shared through Identity nodes and
    packed is the unpacking's output (rxnmap's 8 uses of one block: 53 of 61 layers were
    counted as removed, 93 % "sparsity" reported where the search reached 50 %)."""
    for _ in range(16):
        producer = value.producer()
        if producer is None or producer.op_type != "Identity" or producer.inputs[0] is None:
            break
        value = producer.inputs[0]
    return value


def overall_sparsity(rows: Sequence[LayerRow]) -> float:
    """Weights removed or zeroed over all weighted layers, relative to the original count."""
    total = sum(r.elements_before for r in rows)
    kept = sum(r.nonzero_after for r in rows)
    return 1.0 - kept / total if total else 0.0


@dataclass
class PruneResult(Compared, ModelResult):
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
    validation: ValidationReport | None
    accuracy: dict[str, float] | None  # {"original", "pruned", "drop_points", "samples"}
    details: dict[
        str, Any
    ]  # the passes' summary: refit errors, skipped layers, channel groups, storage
    seconds: float
    gate: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    target: Assessment | None = None  # every output against the accuracy target, held-out feeds
    # allocation=target with a sparsity the user asked for: {"sparsity", "reached" (the most
    # that met the target in the search), "passed" (the written model, at the request, met
    # it), "blamed" (the layers carrying most of the error at the request)}
    request: dict[str, Any] | None = None

    @property
    def search(self) -> dict[str, Any] | None:
        """What the target search tried (allocation=target), else None."""
        return self.details.get("search")

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
            "search": self.search,
            "request": self.request,
        }


def prune_model(
    model: ir.Model,
    *,
    method: str = "magnitude",
    storage: str = "packed",
    eval_data: FeedSource | None = None,
    validate_result: bool = True,
    runs: int = 50,
    max_drop: float | None = None,
    target_error: float | None = DEFAULT_TARGET_ERROR,
    requested: bool = False,
    **options: Any,
) -> PruneResult:
    """Prune `model` (not modified) with `method`; see the module docstring for what is measured.

    allocation=target (magnitude): the pass searches the most sparsity up to `sparsity`
    meeting the target, each candidate checked on the held-out feeds (TargetCheck);
    with `requested` (the user gave the sparsity), reaching less fills `result.request`
    with the layers that broke the target at the request.

    With `validate_result` and a `target_error` (points, onnxslim.agreement), every
    output is measured against the original on feeds the refits never saw (`eval_data`,
    else the calibration data's last quarter, held back) into `result.target`.
    """
    if storage not in STORAGE:
        raise UsageError(f"storage {storage!r}: expected one of {', '.join(STORAGE)}")
    start = time.perf_counter()
    target = Target(target_error) if validate_result and target_error is not None else None
    given = options.pop("calib", None)
    # The user's data is opened once: the pass, the held-out split and the parity
    # feeds read the calibration stream; the check, parity and top-1 the evaluation data.
    calib = open_once(model, given)
    evaluation = read_evaluation(model, eval_data, whole=validate_result)
    with shared_sessions():  # both feed plans probe the same model: one session
        split = split_data(model, calib, evaluation) if target is not None else None
        check_feeds = parity_feeds(model, evaluation, calib)
    data = RunData(feeds=split.fit if split is not None and calib is not None else calib)
    searching = method == "magnitude" and options.get("allocation") == "target"
    if searching and target is not None and split is not None:
        data = dataclasses.replace(
            data,
            accept=TargetCheck(model, split, target),
            requested=requested,
            # without calibration data the sensitivities run on the check's feeds: they
            # only rank the layers
            probe_feeds=split.check if calib is None else None,
        )
    prune_pass = make_prune_pass(method, **options)
    # The lossy pass runs unguarded: validate() below measures its parity on these feeds
    # (a guard ran both models on them once more, 20 s of open_nsfw_resnet's 137 s); the
    # lossless packing is checked on a few of them.
    guard = Guard(check_feeds[:LOSSLESS_FEEDS]) if validate_result else None
    # Two pipelines: each run clones the model, and a clone does not carry model.meta,
    # where a pass leaves its summary.
    result = run_pipeline(model, Pipeline((prune_pass,)), data=data)
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
        options=dict(options, storage=storage, calib=given)
        if given is not None
        else dict(options, storage=storage),
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
    with shared_sessions():  # one session per model for parity and the target check
        if validate_result:
            measured = compare(
                model, pruned, "pruned", feeds=check_feeds, eval_data=evaluation, runs=runs
            )
            report.session_ms, report.validation = measured.session_ms, measured.validation
            report.accuracy = measured.accuracy
        report.target = final_target(data.accept, model, pruned, split, target)
    searched = report.search
    if requested and searched is not None:
        reached = float(searched["reached"])
        report.request = {
            "sparsity": float(searched["requested"]),
            "reached": reached,  # the most that met the target
            "passed": report.target is None or report.target.passed,
            "blamed": searched.get("blamed", []),
        }
    if max_drop is not None:
        report.gate = report.drop_gate(max_drop)
    report.seconds = time.perf_counter() - start
    return report


def prune(
    model: ir.Model,
    *,
    method: str = "magnitude",
    sparsity: float | None = None,
    calib: FeedSource | None = None,
    eval_data: FeedSource | None = None,
    storage: str = "packed",
    validate: bool = True,
    max_drop: float | None = None,
    runs: int = 50,
    **options: Any,
) -> PruneResult:
    """`onnxslim prune` / `api.prune`: `sparsity` goes to the method's own option
    (ratio of channels, fraction of weights); `calib` turns on the refit.

    magnitude prunes at the target by default (allocation="target"): the most sparsity
    up to `sparsity` (None: TARGET_MAX_SPARSITY) that meets the accuracy target;
    allocation="uniform" / "sensitivity" prune exactly `sparsity` (None: 0.5).
    """
    requested = sparsity is not None
    if method == "magnitude":
        options.setdefault("allocation", "target")
        checked = validate and options.get("target_error", DEFAULT_TARGET_ERROR) is not None
        searching = (
            options["allocation"] == "target" and checked and options.get("scope") != "global"
        )
        default = TARGET_MAX_SPARSITY if searching else 0.5
        options.setdefault("sparsity", default if sparsity is None else sparsity)
    elif method == "channels":
        options.setdefault("ratio", 0.5 if sparsity is None else sparsity)
    if calib is not None:
        options["calib"] = calib
    return prune_model(
        model,
        method=method,
        storage=storage,
        eval_data=eval_data,
        validate_result=validate,
        runs=runs,
        max_drop=max_drop,
        requested=requested,
        **options,
    )
