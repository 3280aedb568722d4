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
                there its Q/DQ would only cost time; repeat until all fuse.
The result and a report (model.meta[REPORT_KEY]) are what the API and CLI show.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import onnx
import onnx_ir as ir

from onnxslim.errors import DataError, OnnxSlimError, PassFailed, UsageError
from onnxslim.evaluation import latency_ratio
from onnxslim.passes._options import check_choice, data_field, option

from .bias_correction import static_hook as bias_correction_hook
from .collect import CollectConfig, FeedSource, collect_stats
from .policy import (
    KERNEL_TARGETS,
    PolicyConfig,
    QuantPlan,
    Target,
    detect_target,
    make_plan,
    quantized_ops_in,
    resolve_target,
)
from .prepare import prepare
from .qdq import InsertReport, QParams, insert_qdq, tensor_params
from .ranges import METHODS, Range, TensorStats, compute_range

REPORT_KEY = "onnxslim.quantize_report"
ACTIVATION_TYPES = ("auto", "uint8", "int8")
# progress(stage, done, total): stage is "calibrate" (runs over the data) or "check".
StageProgress = Callable[[str, int, int | None], None]
_INT8_KERNELS = (
    "QLinearConv",
    "QLinearMatMul",
    "QGemm",
    "MatMulIntegerToFloat",
    "QLinearAdd",
    "QLinearMul",
    "QLinearConcat",
    "QLinearAveragePool",
    "QLinearGlobalAveragePool",
    "QLinearSigmoid",
    "QLinearLeakyRelu",
    "DynamicQuantizeMatMul",
    "MatMulInteger",
    "ConvInteger",
    "MatMulNBits",
    "DynamicQuantizeLSTM",
)
_NOT_FUSED = "ORT did not fuse it into an int8 kernel (its Q/DQ would only add time)"


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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantizeStatic(ir.passes.InPlacePass):
    """Static int8 quantization (QDQ) calibrated on data, fused by ORT into integer kernels."""

    lossless: ClassVar[bool] = False

    calib: Any = data_field(
        "Calibration data: .npz/.npy file, folder, images (path), or any feed iterable / "
        "ORT CalibrationDataReader through the API."
    )
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
    force: bool = option(False, "Quantize even if the model already holds quantized ops.")

    def __post_init__(self) -> None:
        for name in ("method", "target", "activation_type"):
            check_choice(self, name)
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {self.percentile}")
        if self.max_samples is not None and self.max_samples <= 0:
            raise ValueError("max_samples must be positive")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return self.run_with(model)

    def run_with(
        self, model: ir.Model, progress: StageProgress | None = None
    ) -> ir.passes.PassResult:
        """The pass's run, with calibration progress reported to `progress` (an argument of
        the run, not an option: the pass manager's plain call reports none)."""
        if self.calib is None:
            raise UsageError("quantize-static needs calibration data (calib = path or feeds)")
        quantized, report = quantize_static(model, self.calib, self, progress=progress)
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
    progress: StageProgress | None = None,
) -> tuple[ir.Model, QuantizeReport]:
    """A new static-int8 model of `model` (left untouched), and the report."""
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
    prepared, prep = prepare(model)
    report.prepare_steps, report.warnings = prep.steps, list(prep.warnings)
    report.seconds["prepare"] = time.perf_counter() - clock

    source = _feeds(calib, prepared)
    reservoir = _Reservoir(source, keep=64) if _one_shot(source) else None
    if reservoir is not None:
        source = reservoir
    clock = time.perf_counter()
    widest = make_plan(prepared, policy)
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
        from .protect import find_protections
        from .protect import float_nodes as protected_nodes
        from .protect import float_tensors as protected_tensors

        protections = find_protections(prepared, stats)
        report.protections = [p.to_dict() for p in protections]
        float_tensors |= protected_tensors(protections)
        for name in protected_nodes(protections):
            float_nodes[name] = "protected: range cannot share one int8 scale"
    plan, ranges = _plan_with_ranges(
        prepared, policy, float_nodes, float_tensors, stats, source, options, progress, report
    )
    result, insert_report = _apply(prepared, plan, ranges, act_dtype, reduce_range)
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
            result, insert_report = _apply(prepared, plan, ranges, act_dtype, reduce_range)
    report.seconds["check"] = time.perf_counter() - clock

    if options.latency_guard and plan.nodes and local:
        clock = time.perf_counter()
        guarded = _latency_guard(
            prepared,
            result,
            plan,
            stats,
            _sample_feeds(reservoir, source),
            policy,
            float_nodes,
            float_tensors,
            options,
            act_dtype,
            reduce_range,
            progress,
            report,
        )
        if guarded is not None:
            plan, ranges, result, insert_report = guarded
            if plan.nodes and options.check_fusion:
                try:
                    report.int8_kernels = find_unfused(result, plan, insert_report)[1]
                except OnnxSlimError:
                    report.int8_kernels = {}
            elif not plan.nodes:
                report.int8_kernels = {}
        report.seconds["latency_guard"] = time.perf_counter() - clock
    # One-shot sources (generators, readers) cannot be read again: reuse the first feeds kept.
    if not any(p.role in ("compute", "embedding", "island") for p in plan.nodes.values()):
        # Nothing pays in int8 here: hand back the model as it came, not its prepared form.
        plan, result, insert_report = (
            QuantPlan({}, {}, dict(plan.skipped)),
            model.clone(),
            InsertReport(),
        )
    reusable = reservoir.kept if reservoir is not None else source
    if plan.nodes and options.bias_correction:
        # Bias correction averages each layer's output shift: 8 feeds estimate it as
        # well as 64 did on the corpus, at an eighth of its float + int8 passes.
        reusable = _first_feeds(reusable, _BIAS_CORRECTION_FEEDS)
        bias_correction_hook(result, prepared, reusable, options, report)  # bias_correction.py

    members = {
        n: p
        for n, p in plan.nodes.items()
        if p.role in ("compute", "island", "embedding", "shared")
    }
    report.quantized_nodes = sorted(members)
    report.quantized_ops = dict(Counter(p.op_type for p in members.values()))
    report.skipped = dict(sorted(plan.skipped.items()))
    report.weight_bytes_before = insert_report.weight_bytes_before
    report.weight_bytes_after = insert_report.weight_bytes_after
    return result, report


def _plan_with_ranges(
    prepared: ir.Model,
    policy: PolicyConfig,
    float_nodes: dict[str, str],
    float_tensors: set[str],
    stats: dict[str, TensorStats],
    calib: FeedSource,
    options: QuantizeStatic,
    progress: StageProgress | None,
    report: QuantizeReport,
) -> tuple[QuantPlan, dict[str, Range]]:
    """A plan under the current constraints, with a range for each of its tensors.

    A re-plan may need a tensor the first calibration pass did not watch: it is
    calibrated now, or, when the data can be read only once, kept float.
    """
    # Each round either calibrates tensors not yet watched or keeps float those never
    # seen (a branch no feed took); both sets only grow, so this ends.
    while True:
        plan = make_plan(prepared, policy, float_nodes=float_nodes, float_tensors=float_tensors)
        ranges = _ranges(plan, stats, options)
        needed = plan.range_tensors()
        absent = [n for n in needed if n not in stats]
        if absent:
            try:
                more, _ = _calibrate(prepared, calib, absent, options, progress)
                stats.update(more)
            except DataError as exc:
                report.warnings.append(f"{len(absent)} tensor(s) left float: {exc}")
                float_tensors.update(absent)
            continue
        unobserved = [n for n in needed if n not in ranges]
        if not unobserved:
            return plan, ranges
        if set(unobserved) <= float_tensors:
            raise PassFailed("quantize-static: could not settle on a plan with calibrated ranges")
        float_tensors.update(unobserved)


def _apply(
    prepared: ir.Model,
    plan: QuantPlan,
    ranges: Mapping[str, Range],
    act_dtype: type,
    reduce_range: bool,
) -> tuple[ir.Model, InsertReport]:
    params: dict[str, QParams] = tensor_params(plan, ranges, act_dtype)
    trial = prepared.clone()
    insert_report = insert_qdq(
        trial, plan, params, reduce_range=reduce_range, activation_dtype=act_dtype
    )
    return trial, insert_report


def _ranges(
    plan: QuantPlan, stats: Mapping[str, TensorStats], options: QuantizeStatic
) -> dict[str, Range]:
    ranges: dict[str, Range] = {}
    for name in plan.range_tensors():
        s = stats.get(name)
        if s is None or not s.observed:
            continue
        ranges[name] = compute_range(s, options.method, percentile=options.percentile)
    return ranges


def _calibrate(
    model: ir.Model,
    calib: FeedSource,
    names: list[str],
    options: QuantizeStatic,
    progress: StageProgress | None,
) -> tuple[dict[str, TensorStats], int]:
    def report(done: int, total: int | None) -> None:
        if progress is not None:
            progress("calibrate", done, total)

    stats, count = collect_stats(
        model,
        calib,
        names,
        histogram=options.method != "minmax",
        progress=report,
        config=CollectConfig(limit=options.max_samples),
    )
    if count == 0:
        raise DataError("calibration data holds no feeds")
    return stats, count


def _feeds(calib: FeedSource, model: ir.Model) -> Any:
    """Checked feeds through the engine's readers when they are available."""
    from onnxslim import calibration

    opener = getattr(calibration, "open_feeds", None)
    if (
        opener is None
        or callable(calib)
        and not hasattr(calib, "__iter__")
        and not hasattr(calib, "get_next")
    ):
        return calib
    return opener(calib, model, extra="ignore")


# MAC counts below which layers are kept float, tried in turn while int8 is slower.
_LADDER = (1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22, 1 << 62)  # the last: every layer
_GUARD_FEEDS = 4
# A configuration is accepted at once below this ratio; between it and 1.0 (timing noise
# on a busy machine is a few percent) the ladder goes on looking for a clearly faster one.
_GUARD_TARGET = 0.97


def _sample_feeds(reservoir: _Reservoir | None, source: Any) -> list[dict[str, np.ndarray]]:
    from itertools import islice

    if reservoir is not None:
        return reservoir.kept[:_GUARD_FEEDS]
    try:
        return list(islice(iter(source), _GUARD_FEEDS))
    except DataError:
        return []


def node_macs(model: ir.Model, plan: QuantPlan, stats: Mapping[str, TensorStats]) -> dict[str, int]:
    """Multiply-accumulates per feed of each quantized Conv/MatMul/Gemm, from calibrated shapes."""
    from .policy import const_array

    macs: dict[str, int] = {}
    for node in model.graph.all_nodes():
        node_plan = plan.nodes.get(node.name or "")
        if node_plan is None or node_plan.role != "compute" or node.inputs[0] is None:
            continue
        observed = stats.get(node.inputs[0].name or "")
        shapes = observed.shapes if observed is not None else set()
        if not shapes:
            continue
        shape = max(shapes, key=lambda sh: int(np.prod(sh)))
        weight = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
        if weight is None:
            continue
        if node.op_type == "Conv" and len(shape) >= 3:
            strides = node.attributes.get_ints("strides", None) or [1] * (len(shape) - 2)
            positions = int(np.prod(shape)) // max(shape[1], 1) // max(int(np.prod(strides)), 1)
            macs[node.name or ""] = positions * int(np.prod(weight.shape))
        elif node.op_type == "Gemm" or node.op_type == "MatMul":
            rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            macs[node.name or ""] = rows * int(np.prod(weight.shape[-2:]))
    return macs


def _latency_guard(
    prepared: ir.Model,
    result: ir.Model,
    plan: QuantPlan,
    stats: dict[str, TensorStats],
    feeds: list[dict[str, np.ndarray]],
    policy: PolicyConfig,
    float_nodes: dict[str, str],
    float_tensors: set[str],
    options: QuantizeStatic,
    act_dtype: type,
    reduce_range: bool,
    progress: StageProgress | None,
    report: QuantizeReport,
) -> tuple[QuantPlan, dict[str, Range], ir.Model, InsertReport] | None:
    """Keep the smallest layers float, step by step, while the int8 model is slower than float.

    Per-op overheads (QuantizeLinear, layout changes) do not shrink with the layer,
    so small layers lose in int8; MAC thresholds rise until the model is not slower.
    Returns the chosen configuration, or None when the first one is kept.
    """
    if not feeds:
        return None
    ratio = latency_ratio(prepared, result, feeds)
    report.latency_checks = [{"threshold_macs": 0, "ratio": round(ratio, 3)}]
    if ratio <= _GUARD_TARGET:
        return None
    macs = node_macs(prepared, plan, stats)
    best: tuple[float, tuple[QuantPlan, dict[str, Range], ir.Model, InsertReport] | None] = (
        ratio,
        None,
    )
    previous: set[str] = set()
    for step, threshold in enumerate(_LADDER):
        small = {name for name, count in macs.items() if count < threshold}
        if not small or small == previous:
            continue
        previous = small
        trial_float = dict(float_nodes)
        reason = (
            f"too small for int8 to pay here (< {threshold} MACs; int8 model was slower)"
            if threshold < _LADDER[-1]
            else "int8 model was slower than float here"
        )
        for name in small:
            trial_float.setdefault(name, reason)
        trial_plan, trial_ranges = _plan_with_ranges(
            prepared, policy, trial_float, set(float_tensors), stats, [], options, progress, report
        )
        trial, trial_report = _apply(prepared, trial_plan, trial_ranges, act_dtype, reduce_range)
        ratio = latency_ratio(prepared, trial, feeds)
        report.latency_checks.append(
            {"threshold_macs": threshold, "ratio": round(ratio, 3), "float_layers": len(small)}
        )
        if progress is not None:
            progress("latency", step + 1, len(_LADDER))
        if ratio < best[0]:
            best = (ratio, (trial_plan, trial_ranges, trial, trial_report))
        if ratio <= _GUARD_TARGET:
            break
    first = report.latency_checks[0]["ratio"]
    chosen = best[1]
    if best[0] > 1.0:  # nothing tried is as fast as float: keep it all float
        skipped = dict(plan.skipped)
        skipped.update({name: "int8 model was slower than float here" for name in plan.nodes})
        chosen = (QuantPlan({}, {}, skipped), {}, prepared.clone(), InsertReport())
    if chosen is not None and not any(
        p.role in ("compute", "embedding") for p in chosen[0].nodes.values()
    ):
        report.warnings.append(
            f"kept float: int8 ran {first:.2f}x the float time on this CPU, its layers are too "
            "small for int8 kernels to pay for their overheads (--no-latency-guard quantizes "
            "anyway, for size)"
        )
    return chosen


_BIAS_CORRECTION_FEEDS = 8


def _first_feeds(source: Any, count: int) -> list[dict[str, np.ndarray]]:
    from itertools import islice

    try:
        return list(islice(iter(source), count))
    except DataError:
        return []


def _one_shot(source: Any) -> bool:
    """True for sources that can be read only once (generators, readers without rewind)."""
    from collections.abc import Iterator

    return isinstance(source, Iterator) or bool(getattr(source, "_once", False))


class _Reservoir:
    """A one-shot feed source that keeps its first `keep` feeds for the steps after calibration."""

    def __init__(self, source: Any, keep: int) -> None:
        self._source = source
        self._keep = keep
        self._read = False
        self._once = True  # collect.py reads it in one pass
        self.kept: list[dict[str, np.ndarray]] = []

    def __iter__(self) -> Any:
        if self._read:
            raise DataError(
                "the calibration data can be read only once (an iterator or a reader); "
                "pass a list, a file or a folder to read it more than once"
            )
        self._read = True
        for feed in self._source:
            if len(self.kept) < self._keep:
                self.kept.append(feed)
            yield feed


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


def find_unfused(
    model: ir.Model, plan: QuantPlan, report: InsertReport
) -> tuple[set[str], dict[str, int]]:
    """Planned nodes that ORT's optimized graph still runs in float; its int8 kernel counts."""
    from onnxslim.runtime import ort_optimized

    optimized = ort_optimized(model, "all", load_external_data=False)
    graphs = list(_proto_graphs(optimized.graph))
    kernels = Counter(n.op_type for g in graphs for n in g.node if n.op_type in _INT8_KERNELS)
    producers = {out: n for g in graphs for n in g.node for out in n.output}
    dq_sources = {n.input[0] for g in graphs for n in g.node if n.op_type == "DequantizeLinear"}
    unfused: set[str] = set()
    # (a) A weight still behind a DequantizeLinear: its readers were not fused.
    still = {q for q in report.weights if q in dq_sources}
    if still:
        for node in model.graph.all_nodes():
            if (
                node.op_type == "DequantizeLinear"
                and node.inputs[0] is not None
                and node.inputs[0].name in still
            ):
                for user, _ in node.outputs[0].uses():
                    if user.name in plan.nodes:
                        unfused.add(user.name or "")
    # (b) A planned node still there under its own name and op type, reading a DequantizeLinear.
    for g in graphs:
        for n in g.node:
            node_plan = plan.nodes.get(n.name)
            if (
                node_plan is None
                or node_plan.role in ("embedding", "absorbed")
                or n.op_type != node_plan.op_type
            ):
                continue
            if any(
                producers.get(i) is not None and producers[i].op_type == "DequantizeLinear"
                for i in n.input
            ):
                unfused.add(n.name)
    return unfused, dict(sorted(kernels.items()))


def _proto_graphs(graph: onnx.GraphProto) -> Iterable[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _proto_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _proto_graphs(sub)
