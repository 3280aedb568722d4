"""The `quantize-static` pass: calibrated int8 QDQ that ONNX Runtime runs on integer kernels.

Steps (each in its own module):
  1. prepare    fold BatchNorm/constants, Div -> Mul, unique names, types (prepare.py);
  2. plan       which nodes and tensors to quantize, for the target CPU (policy.py);
  3. calibrate  stream the calibration feeds through ORT once, keeping running
                min/max and histograms of the planned tensors (collect.py, ranges.py);
  4. protect    tensors one int8 scale cannot carry stay float: mask constants,
                mixed-range joins, probability outputs (protect.py); re-plan;
  5. insert     Q/DQ pairs, int8 weights, int32 biases (qdq.py);
  6. check      ask ORT for its optimized graph (written to a temporary folder) and
                put back to float every node ORT did not fuse into an int8 kernel:
                there its Q/DQ would only cost time; repeat until all fuse
                (fusion_check.py);
  7. guard      while the int8 model runs slower than float here, keep the smallest
                layers float (latency_guard.py).
The result and a report (model.meta[REPORT_KEY]) are what the API and CLI show.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import onnx_ir as ir

from onnxslim.agreement import DEFAULT_TARGET_ERROR
from onnxslim.calibration import CalibrationDataReaderLike, open_feeds
from onnxslim.errors import OnnxSlimError, UsageError
from onnxslim.evaluation import latency_ratios
from onnxslim.feeds import Feed
from onnxslim.passes._options import check_choice, option
from onnxslim.passes._run_data import RunData, StageProgress, TakesData
from onnxslim.resolution import FIT_FEEDS

from .activation_mode import (
    ACTIVATION_MODES,
    ModeInputs,
    dynamic_candidates,
    settle_activation_mode,
)
from .bias_correction import static_hook as bias_correction_hook
from .build import apply_plan as _apply
from .build import calibrate as _calibrate
from .build import plan_with_ranges as _plan_with_ranges
from .collect import FeedSource
from .fix_glue import FixContext, fix_target, target_measure
from .fusion_check import find_unfused
from .kernel_check import kernel_timings, slow_layers
from .latency_guard import Configuration, latency_guard
from .plan import QuantPlan
from .policy import (
    KERNEL_TARGETS,
    PolicyConfig,
    Target,
    detect_target,
    make_plan,
    quantized_ops_in,
    resolve_target,
)
from .prepare import PrepareReport, missing_int8_kernels, prepare
from .protect import find_protections
from .protect import float_nodes as protected_nodes
from .protect import float_tensors as protected_tensors
from .qdq import InsertReport
from .ranges import METHODS, TensorStats
from .reservoir import Reservoir, first_feeds, one_shot
from .rounding import ROUNDINGS, WeightRounding, layer_statistics

REPORT_KEY = "onnxslim.quantize_report"
ACTIVATION_TYPES = ("auto", "uint8", "int8")
_NOT_FUSED = "ORT did not fuse it into an int8 kernel (its Q/DQ would only add time)"
_GUARD_FEEDS = 4  # feeds the latency guard times on
_BIAS_CORRECTION_FEEDS = 8
_ROUNDING_FEEDS = 8  # feeds whose layer inputs give GPTQ its statistics (rounding.py)


@dataclass
class QuantizeReport:
    """What a quantization run decided and measured (JSON-ready through `to_dict`)."""

    mode: str
    target: str = ""
    activation_type: str = ""
    weight_type: str = "int8"
    reduce_range: bool = False
    per_channel: bool = True
    method: str = ""
    samples: int = 0
    quantized_nodes: list[str] = field(default_factory=list)
    quantized_ops: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    protections: list[dict[str, Any]] = field(default_factory=list)
    int8_kernels: dict[str, int] = field(default_factory=dict)  # ORT's optimized graph
    weight_bytes_before: int = 0
    weight_bytes_after: int = 0
    prepare_steps: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    latency_checks: list[dict[str, Any]] = field(default_factory=list)
    # Each planned conv's kernel alone, float and int8, on this CPU (kernel_check.py).
    kernel_checks: list[dict[str, Any]] = field(default_factory=list)
    # The accuracy-target fix loop (repair.py): each fix tried, the output figures before
    # the loop and after it, the layers it ranked first, and the builds it measured.
    fixes: list[dict[str, Any]] = field(default_factory=list)
    target_before: dict[str, Any] = field(default_factory=dict)
    target_after: dict[str, Any] = field(default_factory=dict)
    fix_ranking: list[dict[str, Any]] = field(default_factory=list)
    fix_evaluations: int = 0
    # Calibrated or run-time activation ranges for MatMul / Gemm / LSTM (activation_mode.py).
    activation_mode: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantizeStatic(TakesData, ir.passes.InPlacePass):
    """Static int8 quantization (QDQ) calibrated on data, fused by ORT into integer kernels.

    Its run takes the data (RunData): `feeds`, the calibration data (.npz/.npy file,
    folder, images, or any feed iterable / ORT CalibrationDataReader); `check`, held-out
    feeds the accuracy target is measured on (without them nothing is fixed); `progress`.
    """

    lossless: ClassVar[bool] = False

    method: str = option(
        "minmax",
        "Calibration method: minmax keeps outliers (transformer activations need "
        "them); percentile, mse and entropy clip the tails.",
        choices=METHODS,
    )
    percentile: float = option(99.99, "Percentile kept by --method percentile (each tail).")
    target: str = option(
        "auto",
        "CPU the int8 types are chosen for.",
        choices=KERNEL_TARGETS,
    )
    activation_type: str = option(
        "auto", "Activation type (auto: from the target).", choices=ACTIVATION_TYPES
    )
    per_channel: bool = option(True, "Per-channel weight scales (else per tensor).")
    reduce_range: bool | None = option(
        None, "7-bit weights for x86 without VNNI (None: from the target)."
    )
    exclude: tuple[str, ...] = option(
        (), "Keep these float: node names, op types or regular expressions."
    )
    keep_float_outputs: bool = option(False, "Nodes producing graph outputs stay float.")
    weight_rounding: str = option(
        "auto",
        "Weight rounding: nearest, gptq (each layer's output error minimised with its input "
        "statistics, rounding.py), or auto: gptq only as a fix when the target is missed.",
        choices=ROUNDINGS,
    )
    activations: str = option(
        "auto",
        "MatMul / Gemm / LSTM activations: calibrated (static), quantized at run time "
        "(dynamic), or auto: whichever measures faster here within the accuracy target.",
        choices=ACTIVATION_MODES,
    )
    quantize_depthwise: bool = option(
        False, "Quantize depthwise Conv too (slower than float on ORT CPU)."
    )
    max_samples: int | None = option(None, "Use at most this many calibration feeds.")
    protect: bool = option(
        True, "Keep float the tensors one int8 scale cannot carry (masks, mixed ranges)."
    )
    bias_correction: bool = option(
        True, "Correct each int8 layer's mean output shift (bias_correction.py)."
    )
    latency_guard: bool = option(
        True,
        "While the int8 model runs slower than float here, keep the smallest "
        "layers float (timed interleaved, one thread).",
    )
    check_fusion: bool = option(True, "Put back to float what ORT does not fuse into int8 kernels.")
    kernel_check: bool = option(
        False,
        "With the latency guard: time each Conv alone in float and int8 here and keep float "
        "those whose int8 kernel is slower, when the whole model then runs faster. Off by "
        "default: on task_yolov8 it makes int8 pay, and the 8-feed held-out check then lets "
        "through models that lose 2-3 points (docs/benchmarks.md).",
    )
    fix: bool = option(
        True,
        "When the int8 model misses the accuracy target on the held-out feeds, fix the "
        "layers responsible, cheapest first: other ranges, per-channel weights, float.",
    )
    target_error: float | None = option(
        DEFAULT_TARGET_ERROR,
        "Accuracy target in points (onnxslim.agreement) the fixes aim at; None: no fixing.",
    )
    force: bool = option(False, "Quantize even if the model already holds quantized ops.")

    def __post_init__(self) -> None:
        for name in ("method", "target", "activation_type", "activations", "weight_rounding"):
            check_choice(self, name)
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {self.percentile}")
        if self.max_samples is not None and self.max_samples <= 0:
            raise ValueError("max_samples must be positive")

    def run(self, model: ir.Model, data: RunData) -> ir.passes.PassResult:
        """The pass's run on the workflow's data (calibration feeds, held-out check feeds,
        progress: arguments of the run, not options)."""
        return self.run_prepared(model, data)

    def run_prepared(
        self,
        model: ir.Model,
        data: RunData,
        prepared: tuple[ir.Model, PrepareReport] | None = None,
    ) -> ir.passes.PassResult:
        """`run`, with `prepare(model)` already computed by the caller (a model of its own,
        which this run may modify), so a huge graph is not prepared twice."""
        if data.feeds is None:
            raise UsageError("quantize-static needs calibration data (calib = path or feeds)")
        quantized, report = quantize_static(
            model,
            data.feeds,
            self,
            check=data.check,
            progress=data.progress,
            float_on_miss=not data.caller_measures,
            ready=prepared,
        )
        replace_contents(model, quantized)
        model.meta[REPORT_KEY] = report
        return ir.passes.PassResult(model, modified=bool(report.quantized_nodes))


def replace_contents(model: ir.Model, source: ir.Model) -> None:
    """Make `model` hold `source`'s graph (in-place passes must modify the model given)."""
    model.graph = source.graph  # the opset imports live on the graph
    model.ir_version = max(model.ir_version, source.ir_version)
    model.functions.clear()
    model.functions.update(source.functions)


def refuse_quantized(model: ir.Model, force: bool) -> None:
    ops = quantized_ops_in(model)
    if ops and not force:
        raise UsageError(
            f"model is already quantized (it holds {', '.join(ops[:4])}); "
            "quantizing it again would only lose accuracy (force to override)"
        )


def resolve_types(options: QuantizeStatic) -> tuple[Target, str, bool]:
    target = resolve_target(options.target)
    activation = (
        target.activation_type if options.activation_type == "auto" else options.activation_type
    )
    reduce_range = (
        target.reduce_range if options.reduce_range is None else bool(options.reduce_range)
    )
    return target, activation, reduce_range


def quantize_static(
    model: ir.Model,
    calib: FeedSource,
    options: QuantizeStatic | None = None,
    *,
    check: Sequence[Feed] | None = None,
    progress: StageProgress | None = None,
    float_on_miss: bool = True,
    ready: tuple[ir.Model, PrepareReport] | None = None,
) -> tuple[ir.Model, QuantizeReport]:
    """A new static-int8 model of `model` (left untouched), and the report; `check`: the
    held-out feeds the accuracy target is measured on (without them nothing is fixed);
    `float_on_miss`: when the fixes cannot meet the target the float model is the result
    (False: the closest int8 model, for a caller that judges the result itself); `ready`
    is `prepare(model)` when the caller has it already."""
    options = options or QuantizeStatic()
    refuse_quantized(model, options.force)
    target, activation, reduce_range = resolve_types(options)
    report = QuantizeReport(
        "static",
        target=target.name,
        activation_type=activation,
        reduce_range=reduce_range,
        per_channel=options.per_channel,
        method=options.method,
    )
    act_dtype = np.uint8 if activation == "uint8" else np.int8
    policy = PolicyConfig(
        activation_type=activation,
        per_channel=options.per_channel,
        reduce_range=reduce_range,
        exclude=tuple(options.exclude),
        keep_float_outputs=options.keep_float_outputs,
        quantize_depthwise=options.quantize_depthwise,
    )
    clock = time.perf_counter()
    prepared, prep = prepare(model) if ready is None else ready
    report.prepare_steps, report.warnings = prep.steps, list(prep.warnings)
    report.seconds["prepare"] = time.perf_counter() - clock
    missing = missing_int8_kernels(prepared)
    if missing is not None:  # a float model that runs is never refused: it is kept
        report.warnings.append(f"kept float: {missing}")
        return model.clone(), report

    widest = make_plan(prepared, policy)
    if not _int8_could_pay(prepared, widest, options):
        # What the end of this function concludes after calibrating, the fusion check, the
        # latency guard and a held-out session (28 CPU s on bombs/inits-100k): no plan
        # narrower than the widest can hold a layer that pays, so the model comes back.
        report.skipped = dict(sorted(widest.skipped.items()))
        return model.clone(), report
    source = _feeds(calib, prepared)
    reservoir = Reservoir(source, keep=64) if one_shot(source) else None
    if reservoir is not None:
        source = reservoir
    clock = time.perf_counter()
    wanted = sorted(
        set(widest.range_tensors()) | _extra_tensors(prepared, widest, eager=reservoir is not None)
    )
    stats: dict[str, TensorStats] = {}
    if wanted:
        stats, report.samples = _calibrate(prepared, source, wanted, options, progress)
    report.seconds["calibrate"] = time.perf_counter() - clock

    clock = time.perf_counter()
    float_tensors = {name for name, s in stats.items() if s.extreme or not s.observed}
    float_nodes: dict[str, str] = {}
    if options.protect:
        protections = find_protections(prepared, stats)
        report.protections = [p.to_dict() for p in protections]
        float_tensors |= protected_tensors(protections)
        for name in protected_nodes(protections):
            float_nodes[name] = "protected: range cannot share one int8 scale"
    plan, ranges = _plan_with_ranges(
        prepared, policy, float_nodes, float_tensors, stats, source, options, progress, report
    )
    rounding = _up_front_rounding(prepared, plan, reservoir, source, options, reduce_range)
    result, insert_report = _apply(prepared, plan, ranges, act_dtype, reduce_range, rounding)
    report.seconds["insert"] = time.perf_counter() - clock

    clock = time.perf_counter()
    # ORT's fusions and speed are measured on this machine's kernels: for another target
    # they would answer the wrong question (S8 activations rarely fuse on x86, say).
    local = target.name == detect_target()
    if not local and (options.check_fusion or options.latency_guard):
        report.warnings.append(
            f"target {target.name} is not this CPU ({detect_target()}): fusion check and latency "
            "guard skipped; validate on the target (onnxslim validate --target ...)"
        )
    if options.check_fusion and plan.nodes and local:
        for _ in range(4):
            try:
                unfused, kernels = find_unfused(result, plan, insert_report)
            except OnnxSlimError as exc:  # e.g. ORT cannot write a model that large
                report.warnings.append(f"fusion check skipped: {exc}")
                break
            report.int8_kernels = kernels
            if not unfused:
                break
            float_nodes.update({name: _NOT_FUSED for name in unfused})
            plan, ranges = _plan_with_ranges(
                prepared,
                policy,
                float_nodes,
                float_tensors,
                stats,
                source,
                options,
                progress,
                report,
            )
            result, insert_report = _apply(
                prepared, plan, ranges, act_dtype, reduce_range, rounding
            )
    report.seconds["check"] = time.perf_counter() - clock

    guard_warning: str | None = None
    if options.latency_guard and plan.nodes and local:
        clock = time.perf_counter()
        guard_feeds = first_feeds(reservoir.kept if reservoir is not None else source, _GUARD_FEEDS)

        def trial(trial_float: dict[str, str]) -> Configuration:
            trial_plan, trial_ranges = _plan_with_ranges(
                prepared,
                policy,
                trial_float,
                set(float_tensors),
                stats,
                [],
                options,
                progress,
                report,
            )
            trial_model, trial_report = _apply(
                prepared, trial_plan, trial_ranges, act_dtype, reduce_range, rounding
            )
            return trial_plan, trial_ranges, trial_model, trial_report

        checked: Configuration | None = None
        if options.kernel_check:
            checked = _kernel_check(
                prepared,
                (plan, ranges, result, insert_report),
                stats,
                act_dtype,
                float_nodes,
                trial,
                guard_feeds,
                report,
            )
        if checked is not None:
            plan, ranges, result, insert_report = checked
            if options.check_fusion:
                report.int8_kernels = _ort_kernels(result, plan, insert_report)

        def step_done(done: int, total: int) -> None:
            if progress is not None:
                progress("latency", done, total)

        outcome = latency_guard(
            prepared,
            result,
            plan,
            stats,
            guard_feeds,
            float_nodes,
            trial,
            step_done,
        )
        report.latency_checks.extend(outcome.checks)
        guard_warning = outcome.warning
        if outcome.warning is not None:
            report.warnings.append(outcome.warning)
        guarded = outcome.chosen
        if guarded is not None:
            plan, ranges, result, insert_report = guarded
            if plan.nodes and options.check_fusion:
                report.int8_kernels = _ort_kernels(result, plan, insert_report)
            elif not plan.nodes:
                report.int8_kernels = {}
        report.seconds["latency_guard"] = time.perf_counter() - clock
    reusable = reservoir.kept if reservoir is not None else source
    calib_again = reusable
    # Bias correction averages each layer's output shift: 8 feeds estimate it as well
    # as 64 did on the corpus, at an eighth of its float + int8 passes.
    bias_feeds = first_feeds(reusable, _BIAS_CORRECTION_FEEDS)
    if plan.nodes and options.bias_correction:
        bias_correction_hook(result, prepared, bias_feeds, options, report)  # bias_correction.py
    measure = None
    if check and options.target_error is not None:
        fit = first_feeds(reusable, FIT_FEEDS)
        measure = target_measure(model, list(check), options.target_error, fit)
    mode = settle_activation_mode(
        (plan, ranges, result, insert_report),
        ModeInputs(
            prepared, policy, float_nodes, float_tensors, stats, bias_feeds, act_dtype, rounding
        ),
        options,
        reduce_range=reduce_range,
        timed=local,
        timing_feeds=first_feeds(reusable, _GUARD_FEEDS),
        measure=measure,
        report=report,
    )
    plan, ranges, result, insert_report = mode.configuration
    if mode.dynamic and options.check_fusion and local:  # the static kernels and the dynamic
        report.int8_kernels = _ort_kernels(result, plan, insert_report)
    if mode.dynamic and guard_warning in report.warnings:
        report.warnings.remove(guard_warning)  # "kept float": the dynamic layers pay
    if not mode.dynamic and not any(
        p.role in ("compute", "embedding", "island") for p in plan.nodes.values()
    ):
        # Nothing pays in int8 here: hand back the model as it came, not its prepared form.
        plan, result, insert_report = (
            QuantPlan({}, {}, dict(plan.skipped)),
            model.clone(),
            InsertReport(),
        )
    if (plan.nodes or mode.dynamic) and options.fix and measure is not None:
        context = FixContext(
            model,
            prepared,
            policy,
            plan,
            stats,
            float_nodes,
            float_tensors,
            calib_again,
            bias_feeds,
            options,
            act_dtype,
            reduce_range,
            report,
            progress,
            local and options.latency_guard,
            dynamic_nodes=mode.dynamic,
            rounding=rounding,
            check=tuple(check or ()),
            float_on_miss=float_on_miss,
        )
        plan, result, insert_report = fix_target(context, (plan, {}, result, insert_report))
        if report.fixes and options.check_fusion and local:  # what ORT runs after the fixes
            report.int8_kernels = _ort_kernels(result, plan, insert_report)

    members = {
        n: p
        for n, p in plan.nodes.items()
        if p.role in ("compute", "island", "embedding", "shared")
    }
    dynamic_ops = {  # the mode's and the fix loop's (activation_mode.py, repair.py)
        n.name or "": n.op_type
        for n in prepared.graph.all_nodes()
        if n.name in set(insert_report.dynamic_nodes)
    }
    report.quantized_nodes = sorted([*members, *dynamic_ops])
    report.quantized_ops = dict(
        Counter([*(p.op_type for p in members.values()), *dynamic_ops.values()])
    )
    report.skipped = {n: why for n, why in sorted(plan.skipped.items()) if n not in dynamic_ops}
    report.weight_bytes_before = insert_report.weight_bytes_before
    report.weight_bytes_after = insert_report.weight_bytes_after
    return result, report


def _int8_could_pay(prepared: ir.Model, widest: QuantPlan, options: QuantizeStatic) -> bool:
    """Whether some layer could end up int8: a compute, embedding or island member of the
    widest plan (later plans only add float nodes, so their members are a subset of its
    members), or a layer the dynamic kernels take when the activation mode may pick them."""
    if any(p.role in ("compute", "embedding", "island") for p in widest.nodes.values()):
        return True
    return options.activations != "static" and bool(dynamic_candidates(prepared, options.exclude))


def _kernel_check(
    prepared: ir.Model,
    current: Configuration,
    stats: dict[str, TensorStats],
    act_dtype: type[np.integer],
    float_nodes: dict[str, str],
    trial: Callable[[dict[str, str]], Configuration],
    feeds: list[Feed],
    report: QuantizeReport,
) -> Configuration | None:
    """The configuration with the convs whose int8 kernel is slower than float here kept
    float (kernel_check.py), when the whole model then runs faster (a float layer between
    int8 ones costs a Q/DQ pair; both timed interleaved); None: keep `current`. Updates
    `float_nodes` with the layers it kept float."""
    if not feeds:
        return None
    timings = kernel_timings(prepared, current[0], stats, act_dtype)
    report.kernel_checks = [t.to_dict() for t in timings]
    slow = {n: why for n, why in slow_layers(timings).items() if n not in float_nodes}
    if not slow:
        return None
    candidate = trial({**float_nodes, **slow})
    ratios = latency_ratios(prepared, {"all": current[2], "slow float": candidate[2]}, feeds)
    report.latency_checks.append(
        {
            "kernel_check": sorted(slow),
            "ratio": round(ratios["all"], 3),
            "ratio_slow_float": round(ratios["slow float"], 3),
        }
    )
    if ratios["slow float"] >= ratios["all"]:
        return None
    float_nodes.update(slow)
    return candidate


def _ort_kernels(model: ir.Model, plan: QuantPlan, inserted: InsertReport) -> dict[str, int]:
    """The int8 kernels in ORT's optimized graph of `model` ({} when ORT cannot write it)."""
    try:
        return find_unfused(model, plan, inserted)[1]
    except OnnxSlimError:
        return {}


def _up_front_rounding(
    prepared: ir.Model,
    plan: QuantPlan,
    reservoir: Reservoir | None,
    source: Any,
    options: QuantizeStatic,
    reduce_range: bool,
) -> WeightRounding | None:
    """GPTQ statistics for every planned layer when `weight_rounding="gptq"` (else the fix
    loop computes them only if the target is missed)."""
    if options.weight_rounding != "gptq" or not plan.nodes:
        return None
    feeds = first_feeds(reservoir.kept if reservoir is not None else source, _ROUNDING_FEEDS)
    return layer_statistics(prepared, list(plan.nodes), feeds, reduce_range=reduce_range)


def _feeds(calib: FeedSource, model: ir.Model) -> Any:
    """Checked feeds through the engine's readers; a feed factory (a bare callable) as it is."""
    if isinstance(calib, (str, os.PathLike, Iterable, CalibrationDataReaderLike)):
        return open_feeds(calib, model, extra="ignore")
    if callable(calib):
        return calib  # collect.py calls it for a fresh iterator on each pass
    return open_feeds(calib, model, extra="ignore")  # a DataError naming what came


def _extra_tensors(model: ir.Model, plan: QuantPlan, *, eager: bool) -> set[str]:
    """Tensors watched besides the plan's: inputs and outputs of joins (the protections
    compare them), inputs of Conv/MatMul/Gemm (their shapes give the layers' MACs),
    and, when the data can be read only once (`eager`), what a re-plan
    could need: inputs of absorbed activations, outputs of shared-scale ops. A
    re-readable source gets a second, smaller pass for those only if a re-plan asks."""
    names: set[str] = set()
    by_name = (
        {n.name: n for n in model.graph.all_nodes()} if hasattr(model.graph, "all_nodes") else {}
    )
    for name, node_plan in plan.nodes.items():
        node = by_name.get(name)
        if node is None:
            continue
        if node_plan.role == "compute" and node.inputs[0] is not None:
            names.add(node.inputs[0].name or "")  # its shape sizes the layer for the latency guard
        if not eager:
            continue
        if node_plan.role == "absorbed" and node.inputs[0] is not None:
            names.add(node.inputs[0].name or "")
        if node_plan.role == "shared":  # needs its own range if the op ends up float
            names.update(o.name for o in node.outputs if o.name)
    for node in model.graph:
        if node.op_type in ("Concat", "Add") and node.domain in ("", "ai.onnx"):
            for value in node.inputs:
                if (
                    value is not None
                    and value.name
                    and value.const_value is None
                    and value.dtype == ir.DataType.FLOAT
                    and not value.is_graph_input()
                ):
                    names.add(value.name)
            out = node.outputs[0]
            if out.dtype == ir.DataType.FLOAT and out.name:
                names.add(out.name)
    names.discard("")
    return names
