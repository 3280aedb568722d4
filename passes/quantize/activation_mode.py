"""Calibrated or run-time activation ranges for MatMul / Gemm / LSTM, chosen by measurement.

Why: on transformer encoders ORT's dynamic int8 MatMul (DynamicQuantizeMatMul: the
activation's range taken from each run) beat every static recipe in accuracy and in
speed, on AVX2 and on VNNI CPUs (notes/transformer-int8.md); static QDQ leaves LSTM
float, where a dynamic int8 LSTM on top of a static model made a CNN+LSTM reader
1.3-1.5x faster at no loss (notes/int8-speed.md, rule 6). On a conv model's classifier
Gemm the static kernel can be the faster one. Which wins depends on the model and on
the CPU's kernels, so the static pass builds up to three configurations,

  static     the calibrated plan as it is (LSTM float);
  recurrent  the same with every LSTM dynamic;
  dynamic    MatMul / Gemm with a constant weight and LSTM dynamic, the rest static;

times them against the float model here (interleaved, one thread), measures each
against the accuracy target on the held-out feeds, and keeps the fastest that meets
the target (within timing noise, the most accurate of the fastest; a run-time mode only
when it beats float here, and as the faster one only 10 % under static's time). Without
timing (a target that is not this CPU) it keeps `recurrent`: float LSTM is never the
faster.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx_ir as ir

from onnxslim.agreement import Assessment
from onnxslim.evaluation import latency_ratios
from onnxslim.feeds import Feed
from onnxslim.graphs import iter_graphs

from .bias_correction import static_hook as bias_correction_hook
from .build import apply_plan, plan_with_ranges
from .dynamic_rewrite import MS_DOMAIN, rewrite_dynamic, why_not_dynamic
from .latency_guard import Configuration
from .policy import PolicyConfig, matches
from .qdq import InsertReport, WeightQuantizer
from .ranges import TensorStats
from .repair import excess
from .rounding import WeightRounding

ACTIVATION_MODES = ("auto", "static", "dynamic")
DYNAMIC_REASON = "int8 with its activations quantized at run time (dynamic)"
_NOISE = 1.03  # ratios within 3 % are a tie on a busy machine: accuracy decides
_CLEAR = 0.9  # a run-time mode is faster than static only 10 % under its time
_TIMING_SECONDS = 2.0

Build = Callable[[frozenset[str]], Configuration]
"""The static configuration with these nodes taken out of the plan and made dynamic."""
Measure = Callable[[ir.Model], Assessment]


@dataclass
class ModeOutcome:
    """The configuration kept, the nodes it runs dynamic, and what was measured."""

    configuration: Configuration
    dynamic: frozenset[str]
    mode: str
    trials: list[dict[str, Any]] = field(default_factory=list)
    warning: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"chosen": self.mode, "dynamic_nodes": len(self.dynamic), "trials": self.trials}


@dataclass
class ModeInputs:
    """What the static pass had when the mode is chosen: enough to build a mixed model."""

    prepared: ir.Model
    policy: PolicyConfig
    float_nodes: dict[str, str]
    float_tensors: set[str]
    stats: dict[str, TensorStats]
    bias_feeds: list[Feed]
    act_dtype: type
    rounding: WeightRounding | None = None  # GPTQ up front (rounding.py)


def settle_activation_mode(
    static: Configuration,
    inputs: ModeInputs,
    options: Any,
    *,
    reduce_range: bool,
    timed: bool,
    timing_feeds: list[Feed],
    measure: Measure | None,
    report: Any,
) -> ModeOutcome:
    """The static pass's step: candidates, choice, and the report's `activation_mode`."""
    clock = time.perf_counter()
    mode = options.activations
    candidates = {} if mode == "static" else dynamic_candidates(inputs.prepared, options.exclude)
    outcome = choose_mode(
        static,
        candidates,
        _mixed_builder(static, inputs, options, reduce_range, report),
        mode=mode,
        reference=inputs.prepared,
        feeds=timing_feeds,
        timed=timed and bool(timing_feeds),
        measure=measure,
    )
    report.activation_mode = outcome.to_dict()
    if outcome.warning is not None:
        report.warnings.append(outcome.warning)
    report.seconds["activation_mode"] = time.perf_counter() - clock
    return outcome


def _mixed_builder(
    static: Configuration, inputs: ModeInputs, options: Any, reduce_range: bool, report: Any
) -> Build:
    """Build: the static plan with `names` out of it (bias-corrected like the pass's own
    model), then those nodes rewritten to their dynamic kernels."""
    base = {**static[0].skipped, **inputs.float_nodes}

    def build(names: frozenset[str]) -> Configuration:
        floats = {**base, **dict.fromkeys(names, DYNAMIC_REASON)}
        plan, ranges = plan_with_ranges(
            inputs.prepared,
            inputs.policy,
            floats,
            set(inputs.float_tensors),
            inputs.stats,
            [],
            options,
            None,
            report,
        )
        model, inserted = apply_plan(
            inputs.prepared, plan, ranges, inputs.act_dtype, reduce_range, inputs.rounding
        )
        if plan.nodes:
            bias_correction_hook(model, inputs.prepared, inputs.bias_feeds, options, report)
        apply_dynamic(
            model, names, per_channel=options.per_channel, reduce_range=reduce_range, into=inserted
        )
        return plan, ranges, model, inserted

    return build


def dynamic_candidates(model: ir.Model, exclude: Sequence[str] = ()) -> dict[str, str]:
    """Node name -> "recurrent" (LSTM) or "matmul" (MatMul / Gemm) for every node whose
    constant float32 weights the dynamic kernels can take."""
    found: dict[str, str] = {}
    for graph in iter_graphs(model):
        if not isinstance(graph, ir.Graph):
            continue
        for node in graph:
            if node.domain not in ("", "ai.onnx") or not node.name:
                continue
            if exclude and matches(node, exclude):
                continue
            if node.op_type in ("LSTM", "MatMul", "Gemm") and not why_not_dynamic(node):
                found[node.name] = "recurrent" if node.op_type == "LSTM" else "matmul"
    return found


def apply_dynamic(
    model: ir.Model,
    names: frozenset[str],
    *,
    per_channel: bool,
    reduce_range: bool,
    into: InsertReport | None = None,
) -> list[str]:
    """Rewrite the named (still float) nodes of `model` to their dynamic int8 kernels, in
    place; the names rewritten (a node the kernel cannot take stays float). Their weight
    bytes are added to `into`."""
    if not names:
        return []
    quantizer = WeightQuantizer(model, reduce_range=reduce_range)
    done: list[str] = []
    for graph in [g for g in iter_graphs(model) if isinstance(g, ir.Graph)]:
        for node in list(graph):
            if node.name in names and node.domain in ("", "ai.onnx"):
                why = rewrite_dynamic(
                    node, quantizer, per_channel=per_channel, reduce_range=reduce_range
                )
                if not why:
                    done.append(node.name or "")
    if done:
        model.opset_imports.setdefault(MS_DOMAIN, 1)
    quantizer.finish(model)
    if into is not None:
        into.weight_bytes_before += quantizer.report.weight_bytes_before
        into.weight_bytes_after += quantizer.report.weight_bytes_after
        into.dynamic_nodes.extend(done)
    return sorted(done)


def choose_mode(
    static: Configuration,
    candidates: dict[str, str],
    build: Build,
    *,
    mode: str,
    reference: ir.Model,
    feeds: Sequence[Feed],
    timed: bool,
    measure: Measure | None,
) -> ModeOutcome:
    """The activation mode to keep (see the module docstring)."""
    recurrent = frozenset(n for n, g in candidates.items() if g == "recurrent")
    everything = frozenset(candidates)
    if mode == "static" or not candidates:
        return ModeOutcome(static, frozenset(), "static")
    if mode == "dynamic":
        return ModeOutcome(build(everything), everything, "dynamic")
    options: dict[str, tuple[Configuration, frozenset[str]]] = {"static": (static, frozenset())}
    if recurrent:
        options["recurrent"] = (build(recurrent), recurrent)
    if everything != recurrent:
        options["dynamic"] = (build(everything), everything)
    if not timed:
        kept = "recurrent" if recurrent else "static"
        configuration, dynamic = options[kept]
        return ModeOutcome(
            configuration,
            dynamic,
            kept,
            warning=(
                f"activation mode {kept!r} chosen without timing (the target is not this CPU); "
                "--activations static or dynamic to choose"
            )
            if everything != recurrent
            else None,
        )
    timed_models = {k: v[0][2] for k, v in options.items()}
    if not static[0].computes_int8:
        del timed_models["static"]  # the float model itself (the latency guard's verdict)
    timed_ratios = latency_ratios(
        reference, timed_models, feeds, budget_seconds=_TIMING_SECONDS, warmup=5
    )
    ratios = {"static": 1.0, **timed_ratios}
    trials: list[dict[str, Any]] = []
    scores: dict[str, Score] = {}
    for name, (configuration, dynamic) in options.items():
        trial: dict[str, Any] = {
            "mode": name,
            "dynamic_nodes": len(dynamic),
            "latency_ratio": round(ratios[name], 3),
        }
        if measure is not None:
            assessment = measure(configuration[2])
            scores[name] = Score(assessment.passed, excess(assessment), _worst_sqnr(assessment))
            trial.update(
                passed=assessment.passed,
                excess=round(scores[name].excess, 4),
                sqnr_db=round(scores[name].sqnr_db, 2),
            )
        trials.append(trial)
    kept = _pick(ratios, scores)
    configuration, dynamic = options[kept]
    return ModeOutcome(configuration, dynamic, kept, trials)


@dataclass(frozen=True)
class Score:
    """One mode against the target: met, how far (repair.excess), the worst output's SQNR."""

    passed: bool
    excess: float
    sqnr_db: float  # continuous, so it separates modes that the decision counts tie


def _pick(ratios: dict[str, float], scores: dict[str, Score]) -> str:
    """The fastest mode that meets the target; within timing noise of it, the one with the
    least output noise. When none meets it, the nearest (the fix loop goes on from there)."""
    # A run-time mode must beat float here; the static one was vetted by the latency guard.
    ratios = {n: r for n, r in ratios.items() if n == "static" or r < 1.0}
    scores = {n: s for n, s in scores.items() if n in ratios}
    if scores and not any(s.passed for s in scores.values()):
        return min(scores, key=lambda n: (scores[n].excess, -scores[n].sqnr_db, ratios[n]))
    passing = [n for n in ratios if not scores or scores[n].passed]
    fastest = min(ratios[n] for n in passing)
    if "static" in passing and fastest > ratios["static"] * _CLEAR:
        # no clear speed win over static: timing noise must not flip the mode; the
        # measured noise may (a mode as fast as static and quieter)
        if not scores:
            return "static"
        fastest = ratios["static"]
    tied = [n for n in passing if ratios[n] <= fastest * _NOISE]
    return min(tied, key=lambda n: (-scores[n].sqnr_db if scores else 0.0, ratios[n]))


def _worst_sqnr(assessment: Assessment) -> float:
    """The lowest SQNR (dB) over the outputs the assessment measured one on (inf: none)."""
    values = [
        float(f.detail["sqnr_db"])
        for f in assessment.figures
        if isinstance(f.detail, dict) and isinstance(f.detail.get("sqnr_db"), (int, float))
    ]
    return min((-math.inf if math.isnan(v) else v for v in values), default=math.inf)
