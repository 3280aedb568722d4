"""Quality gates of a recipe, checked on the final model against the input model.

Every gate gives a value, a threshold, a verdict and a reason. No gate passes
silently: a metric that cannot be measured fails, except `metric = "auto"` on a
model without a classifier output when `max_parity_error` is set (that gate then
carries the quality check, and the report says so). A target that is not set up
fails with the command that sets it up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import onnx_ir as ir

from onnxslim import targets
from onnxslim.cross_target import validate_on_targets
from onnxslim.errors import OnnxSlimError
from onnxslim.evaluation import Evaluator, Measurement, _relative_error
from onnxslim.recipe import Gates

# A target passes when the output model computes there what it computes here.
TARGET_TOLERANCE = 1e-2


@dataclass
class GateResult:
    name: str
    threshold: Any
    value: Any
    passed: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "threshold": self.threshold,
            "value": self.value,
            "passed": self.passed,
            "reason": self.reason,
        }


def accuracy_drop(
    metric: str, baseline: Measurement, final: Measurement
) -> tuple[str | None, float | None]:
    """(metric used, drop in points) for `metric` (auto: top1 with labels, else agreement)."""
    if metric in ("auto", "top1") and baseline.top1 is not None and final.top1 is not None:
        return "top1", 100.0 * (baseline.top1 - final.top1)
    if metric in ("auto", "agreement") and final.agreement is not None:
        return "agreement", 100.0 * (1.0 - final.agreement)
    return None, None


def quality_gates(gates: Gates, evaluator: Evaluator, final: Measurement) -> list[GateResult]:
    """The gates on what the model computes (max_accuracy_drop, max_parity_error): cheap to
    measure (no latency, no target device), so a recipe's back-off holds every trial to
    them as well as to its accuracy target."""
    results: list[GateResult] = []
    if gates.max_accuracy_drop is not None:
        used, drop = accuracy_drop(gates.metric, evaluator.baseline, final)
        limit = gates.max_accuracy_drop
        if drop is not None:
            results.append(
                GateResult(
                    f"max_accuracy_drop ({used})",
                    limit,
                    round(drop, 6),
                    drop <= limit + 1e-9,
                    f"{used} drop {drop:.2f} pt "
                    f"{'<=' if drop <= limit + 1e-9 else '>'} {limit:g} pt"
                    + (
                        ""
                        if drop <= limit + 1e-9
                        else f" (output {evaluator.classifier_output!r}); next: quantize with "
                        f"max_drop = {limit:g} (accuracy-aware: the most sensitive layers stay "
                        "float), exclude the layers before that output, or a looser "
                        "max_accuracy_drop"
                    ),
                )
            )
        elif gates.metric == "auto" and gates.max_parity_error is not None:
            results.append(
                GateResult(
                    "max_accuracy_drop (n/a)",
                    limit,
                    None,
                    True,
                    "no classifier output to score: max_parity_error carries the quality check",
                )
            )
        else:
            need = (
                "labelled eval data (a `labels` array) and a [batch, classes] first output"
                if gates.metric != "agreement"
                else "a [batch, classes] first output"
            )
            results.append(
                GateResult(
                    f"max_accuracy_drop ({gates.metric})",
                    limit,
                    None,
                    False,
                    f"metric {gates.metric} not measurable: needs {need}",
                )
            )
    if gates.max_parity_error is not None:
        error, limit = final.parity_error, gates.max_parity_error
        worst = f" ({final.worst_output!r})" if final.worst_output else ""
        hint = (
            ""
            if error <= limit
            else f"; next: keep the layers that feed{worst or ' it'} float (quantize exclude = "
            "[...]), a gentler step (more bits, less sparsity), or a looser max_parity_error"
        )
        results.append(
            GateResult(
                "max_parity_error",
                limit,
                error,
                error <= limit,
                f"worst output{worst} relative RMS error {error:.3g} "
                f"{'<=' if error <= limit else '>'} {limit:g}{hint}",
            )
        )
    return results


def check_gates(
    gates: Gates,
    evaluator: Evaluator,
    final: Measurement,
    *,
    size_in: int,
    size_out: int,
    model: ir.Model | None = None,
    target_feeds: int = 4,
) -> list[GateResult]:
    results = quality_gates(gates, evaluator, final)
    if gates.min_size_reduction is not None:
        reduction = 1.0 - size_out / size_in if size_in else 0.0
        limit = gates.min_size_reduction
        results.append(
            GateResult(
                "min_size_reduction",
                limit,
                round(reduction, 6),
                reduction >= limit,
                f"{size_in:,} -> {size_out:,} bytes: {reduction:.1%} smaller "
                f"({'>=' if reduction >= limit else '<'} {limit:.1%})",
            )
        )
    if gates.max_latency_ratio is not None:
        ratio, limit = final.latency_ratio, gates.max_latency_ratio
        if ratio is None:
            results.append(
                GateResult(
                    "max_latency_ratio",
                    limit,
                    None,
                    False,
                    "latency not measured (measure.latency_runs = 0)",
                )
            )
        else:
            results.append(
                GateResult(
                    "max_latency_ratio",
                    limit,
                    round(ratio, 4),
                    ratio <= limit,
                    f"latency {ratio:.2f}x the input's "
                    f"({'<=' if ratio <= limit else '>'} {limit:g}x)",
                )
            )
    if gates.targets and model is not None:
        results += target_gates(
            gates.targets, evaluator, model, target_feeds, gates.max_parity_error
        )
    return results


def target_gates(
    names: Sequence[str],
    evaluator: Evaluator,
    model: ir.Model,
    feeds: int,
    max_parity_error: float | None,
) -> list[GateResult]:
    """Run input and output models on each emulated target (onnxslim.cross_target)."""
    results = []
    for name in names:
        gate = f"target {name}"
        state = targets.status(name)
        if not state.ready:
            results.append(
                GateResult(
                    gate, TARGET_TOLERANCE, None, False, f"target not available: {state.detail}"
                )
            )
            continue
        try:
            (report,) = validate_on_targets(
                evaluator.reference, model, [name], evaluator.feeds[:feeds], atol=1e-2, rtol=1e-2
            )
        except OnnxSlimError as exc:
            results.append(GateResult(gate, TARGET_TOLERANCE, None, False, f"failed: {exc}"))
            continue
        drift = max(
            (_relative_error(p.snr_db) for p in report.candidate_host_vs_target), default=0.0
        )
        there = max((_relative_error(p.snr_db) for p in report.on_target), default=0.0)
        ok = drift <= TARGET_TOLERANCE and (max_parity_error is None or there <= max_parity_error)
        results.append(
            GateResult(
                gate,
                TARGET_TOLERANCE,
                {"host_vs_target": drift, "parity_on_target": there},
                ok,
                f"output model there vs here: relative error {drift:.3g} (<= {TARGET_TOLERANCE:g} "
                f"needed); against the input model there: {there:.3g}"
                + (f" (<= {max_parity_error:g} needed)" if max_parity_error is not None else "")
                + f"; {report.feeds} feeds",
            )
        )
    return results
