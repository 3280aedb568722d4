"""The static pass's side of the accuracy-target fix loop: build, measure, re-time.

Why its own module: repair.py decides which fix to try next and knows nothing of
plans or ranges; this module turns its `Choice` into an int8 model (the same plan,
range and insert steps as the pass, build.py, plus bias correction) and measures it
on the held-out feeds with the target's own measure (onnxslim.agreement), so the
figure the loop stops on is the figure the user is shown. After a fix, the latency
guard runs again: a fix must not leave the model slower than float.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxslim.agreement import Assessment, Target, assess
from onnxslim.feeds import Feed
from onnxslim.resolution import FIT_FEEDS, target_roles
from onnxslim.runtime import Session

from .activation_mode import DYNAMIC_REASON, Measure, apply_dynamic, dynamic_candidates
from .bias_correction import correct_biases
from .build import StageProgress, apply_plan, plan_with_ranges
from .collect import CollectConfig, collect_stats
from .latency_guard import Configuration, GuardOutcome, float_configuration, latency_guard
from .layer_noise import RANKED_ROLES, layer_tensors, rank_layers, relative_noise
from .plan import QuantPlan
from .policy import PolicyConfig, make_plan
from .qdq import InsertReport
from .ranges import TensorStats, compute_range
from .repair import Choice, excess, figures, repair, units
from .reservoir import first_feeds
from .rounding import WeightRounding, layer_statistics

FIX_REASON = "returned to float: the accuracy target was missed with it in int8"
_RANK_FEEDS = 8  # held-out feeds of the instrumented run that ranks the layers
_BIAS_FEEDS = 8
_GUARD_FEEDS = 4


@dataclass
class FixContext:
    """What the pass had decided when the fix loop starts."""

    original: ir.Model  # the model as the user gave it: the reference of the target
    prepared: ir.Model
    policy: PolicyConfig
    plan: QuantPlan
    stats: dict[str, TensorStats]
    float_nodes: dict[str, str]
    float_tensors: set[str]
    calib: Any  # re-readable calibration feeds (histograms for other range methods)
    bias_feeds: Any  # the feeds bias correction averages over
    options: Any  # QuantizeStatic
    act_dtype: type
    reduce_range: bool
    report: Any  # QuantizeReport
    progress: StageProgress | None
    guard: bool  # re-run the latency guard after a fix (local target, guard on)
    dynamic_nodes: frozenset[str] = frozenset()  # kept dynamic (activation_mode.py)
    rounding: WeightRounding | None = None  # GPTQ statistics (rounding.py), given or computed
    check: Sequence[Feed] = ()  # the held-out feeds the accuracy target is measured on
    float_on_miss: bool = True  # every fix missed: the float model is the result (False: the
    # closest int8 model, for a caller that judges the result itself: a recipe's back-off)


def target_measure(
    original: ir.Model, feeds: Sequence[Feed], error: float, fit: Sequence[Feed] = ()
) -> Measure:
    """The accuracy target's measure of a candidate against `original` on `feeds`: the
    figure the user is shown (the reference runs once; classifiers' margins also on `fit`,
    the calibration feeds)."""
    reference = _run(original, list(feeds))
    target = Target(error)
    roles = target_roles(original, reference, target, feeds=list(feeds), fit=fit)

    def measure(model: ir.Model) -> Assessment:
        return assess(reference, _run(model, list(feeds)), target=target, roles=roles)

    return measure


def fix_target(
    context: FixContext, start: Configuration
) -> tuple[QuantPlan, ir.Model, InsertReport]:
    """The configuration that meets the target (or the closest found), and the report."""
    clock = time.perf_counter()
    options, report = context.options, context.report
    feeds = list(context.check)
    fit = first_feeds(context.calib, FIT_FEEDS)
    measure = target_measure(context.original, feeds, options.target_error, fit)
    # The pass's own decisions stay: layers it kept float (guard, fusion check) stay float.
    base_float = {**context.plan.skipped, **context.float_nodes}
    histograms: dict[str, TensorStats] = {}
    evaluations = 0

    def build(choice: Choice) -> Configuration:
        nonlocal evaluations
        evaluations += 1
        if context.progress is not None:
            context.progress("fix", evaluations, None)
        floats = dict(base_float)
        dynamic = (context.dynamic_nodes | set(choice.dynamic_nodes)) - set(choice.float_nodes)
        floats.update(dict.fromkeys(dynamic, DYNAMIC_REASON))
        floats.update(dict.fromkeys(choice.float_nodes, FIX_REASON))
        plan, ranges = plan_with_ranges(
            context.prepared,
            context.policy,
            floats,
            set(context.float_tensors),
            context.stats,
            context.calib,
            options,
            context.progress,
            report,
        )
        if choice.per_channel:
            _per_channel(context, plan, floats, choice.per_channel)
        wanted = [t for t in choice.method_map() if t in ranges and t not in histograms]
        if wanted:
            histograms.update(
                collect_stats(
                    context.prepared,
                    context.calib,
                    wanted,
                    histogram=True,
                    config=CollectConfig(limit=options.max_samples),
                )[0]
            )
        for tensor, method in choice.method_map().items():
            if tensor in ranges and tensor in histograms and histograms[tensor].observed:
                ranges[tensor] = compute_range(
                    histograms[tensor], method, percentile=options.percentile
                )
        rounding = _rounding(context) if choice.rounding else context.rounding
        model, insert_report = apply_plan(
            context.prepared, plan, ranges, context.act_dtype, context.reduce_range, rounding
        )
        if plan.nodes and options.bias_correction and context.bias_feeds is not None:
            samples = min(options.max_samples or _BIAS_FEEDS, _BIAS_FEEDS)
            correct_biases(model, context.prepared, context.bias_feeds, samples=samples)
        apply_dynamic(
            model,
            frozenset(dynamic),
            per_channel=options.per_channel,
            reduce_range=context.reduce_range,
            into=insert_report,
        )
        return plan, ranges, model, insert_report

    def evaluate(choice: Choice) -> tuple[Configuration, Assessment]:
        built = build(choice)
        return built, measure(built[2])

    first = measure(start[2])
    report.target_before = {
        "passed": first.passed,
        "outputs": figures(first),
        "units": units(first),
    }
    if first.passed:
        report.target_after = dict(report.target_before)
        report.seconds["fix"] = time.perf_counter() - clock
        return start[0], start[2], start[3]
    layers = layer_tensors(context.prepared, start[0])
    names = {n for inputs, output in layers.values() for n in (*inputs, output)}
    noise = relative_noise(context.prepared, start[2], names, feeds[:_RANK_FEEDS])
    ranked = rank_layers(layers, noise)
    report.fix_ranking = [{"layer": n, "noise": round(v, 6)} for n, v in ranked[:12]]
    order = [n for n, _ in ranked]
    # Layers inside If / Loop bodies cannot be exposed as outputs: unranked, tried last.
    order += [
        n for n, p in start[0].nodes.items() if p.role in RANKED_ROLES and n not in set(order)
    ]
    outcome = repair(
        evaluate,
        (start, first),
        order,
        _range_tensors(start[0], layers),
        method=options.method,
        per_tensor=[] if options.per_channel else order,
        dynamic=[] if options.activations == "static" else _dynamic_capable(context, order),
        rounding=options.weight_rounding == "auto" and context.rounding is None,
    )
    chosen: Configuration = outcome.built
    assessment = outcome.assessment
    report.fixes = [step.to_dict() for step in outcome.steps]
    if context.guard and outcome.choice != Choice() and chosen[0].nodes:
        chosen, assessment = _guard(context, chosen, assessment, outcome.choice, build, measure)
    if not assessment.passed and context.float_on_miss:
        chosen, assessment = _float_model(context, chosen, assessment, measure)
    elif not chosen[0].computes_int8 and not any(
        w.startswith("kept float: ") for w in report.warnings
    ):
        report.warnings.append(
            "kept float: the accuracy target was met only with every layer returned to float "
            f"({len(report.fixes)} fixes tried; --target-error with more points accepts more "
            "loss)"
        )
    report.target_after = {
        "passed": assessment.passed,
        "outputs": figures(assessment),
        "units": units(assessment),
    }
    report.fix_evaluations = evaluations
    report.seconds["fix"] = time.perf_counter() - clock
    return chosen[0], chosen[2], chosen[3]


def _kept_step(kind: str, detail: str, before: Assessment, after: Assessment) -> dict[str, Any]:
    """A fix applied after the loop (the report's form of repair.FixStep, always kept)."""
    return {
        "kind": kind,
        "detail": detail,
        "layers": [],
        "before": figures(before),
        "after": figures(after),
        "units_before": units(before),
        "units_after": units(after),
        "met": after.passed,
        "kept": True,
    }


def _float_model(
    context: FixContext, chosen: Configuration, assessment: Assessment, measure: Any
) -> tuple[Configuration, Assessment]:
    """Every fix tried and the target still missed: the float model (after the clean-up) is
    the result, exit 0, with the reason. A float model that runs is never refused, and an
    int8 model that misses the target is never shipped without saying so: the user who
    wants it anyway asks with --no-fix (exit 1, the model written) or a looser target."""
    plan = QuantPlan(chosen[0].nodes, {}, context.plan.skipped)
    floated = float_configuration(context.prepared, plan, FIX_REASON)
    after = measure(floated[2])
    context.report.fixes.append(
        _kept_step(
            "float model",
            "int8 missed the target after every fix: the float model is the result",
            assessment,
            after,
        )
    )
    context.report.warnings.append(
        f"kept float: int8 missed the accuracy target after every fix ({assessment.message()}); "
        "--target-error with more points accepts more loss, --no-fix keeps int8 and exits 1"
    )
    return floated, after


def _guard(
    context: FixContext,
    chosen: Configuration,
    assessment: Assessment,
    choice: Choice,
    build: Any,
    measure: Any,
) -> tuple[Configuration, Assessment]:
    """The latency guard again on the fixed model: a fix must not make int8 slower than float."""
    floats = {**context.plan.skipped, **context.float_nodes}
    floats.update(dict.fromkeys(choice.float_nodes, FIX_REASON))

    def trial(trial_float: dict[str, str]) -> Configuration:
        extra = tuple(n for n in trial_float if n not in floats)
        return build(dataclasses.replace(choice, float_nodes=choice.float_nodes + extra))

    outcome = latency_guard(
        context.prepared,
        chosen[2],
        chosen[0],
        context.stats,
        first_feeds(context.bias_feeds, _GUARD_FEEDS) if context.bias_feeds is not None else [],
        floats,
        trial,
    )
    context.report.latency_checks.extend({**c, "after_fix": True} for c in outcome.checks)
    if outcome.warning:  # the whole model kept float: say why
        context.report.warnings.append(kept_float_warning(outcome))
    if outcome.chosen is None:
        return chosen, assessment
    after = measure(outcome.chosen[2])
    context.report.fixes.append(
        _kept_step(
            "latency",
            "the fixed model ran slower than float: the latency guard kept more layers float",
            assessment,
            after,
        )
    )
    return outcome.chosen, after


def _rounding(context: FixContext) -> WeightRounding:
    """GPTQ statistics of every layer the pass planned, computed once (the "rounding" fix)."""
    if context.rounding is None:
        feeds = first_feeds(context.bias_feeds or [], _BIAS_FEEDS)
        context.rounding = layer_statistics(
            context.prepared, list(context.plan.nodes), feeds, reduce_range=context.reduce_range
        )
        context.report.seconds["rounding_statistics"] = context.rounding.seconds
    return context.rounding


def _dynamic_capable(context: FixContext, order: Sequence[str]) -> list[str]:
    """The ranked layers still static that ORT's dynamic int8 kernels can take."""
    capable = dynamic_candidates(context.prepared, context.options.exclude)
    return [n for n in order if n in capable and n not in context.dynamic_nodes]


def _per_channel(
    context: FixContext, plan: QuantPlan, floats: dict[str, str], layers: Sequence[str]
) -> None:
    """Give `layers` the weight axes a per-channel plan would (in place)."""
    wide = make_plan(
        context.prepared,
        dataclasses.replace(context.policy, per_channel=True),
        float_nodes=floats,
        float_tensors=context.float_tensors,
    )
    for name in layers:
        if name in plan.nodes and name in wide.nodes:
            plan.nodes[name].weights = dict(wide.nodes[name].weights)


def _range_tensors(
    plan: QuantPlan, layers: dict[str, tuple[list[str], str]]
) -> dict[str, list[str]]:
    """Per layer: the calibrated tensors whose ranges its activations use."""
    result: dict[str, list[str]] = {}
    for layer, (inputs, output) in layers.items():
        names = []
        for tensor in (*inputs, output):
            if tensor in plan.tensors:
                names.append(plan.root(tensor).range_of)
        result[layer] = sorted(set(names))
    return result


def _run(model: ir.Model, feeds: list[Feed]) -> list[dict[str, np.ndarray]]:
    session = Session(model)
    return [session.run(feed) for feed in feeds]


__all__ = ["FixContext", "excess", "fix_target"]


def kept_float_warning(outcome: GuardOutcome) -> str:
    """Why the guard kept the fixed model float: not confirmed faster by a second timing,
    or slower at every step of its ladder."""
    if outcome.checks and outcome.checks[-1].get("confirmation") and outcome.warning:
        return outcome.warning.replace("int8 timed", "the fixed int8 model timed")
    return (
        "kept float: the fixed int8 model ran slower than float on this CPU "
        f"({outcome.checks[0]['ratio']:.2f}x) and none with more layers float was clearly "
        "faster (--no-latency-guard keeps int8, for size)"
    )
