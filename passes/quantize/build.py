"""Plan, range and insert one static-int8 configuration: the steps every re-plan repeats.

Why its own module: the static pass, its latency guard and the accuracy-target fix
loop (fix_glue.py) all build configurations the same way (a plan under the current
float decisions, a range per planned tensor, Q/DQ inserted into a clone of the
prepared model); keeping them here lets the fix loop use them without importing
the pass. `options` is the pass's QuantizeStatic (method, percentile, max_samples).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import onnx_ir as ir

from onnxslim.errors import DataError, PassFailed
from onnxslim.passes._run_data import StageProgress

from .collect import CollectConfig, FeedSource, collect_stats
from .plan import QuantPlan
from .policy import PolicyConfig, make_plan
from .qdq import InsertReport, insert_qdq, tensor_params
from .qparams import QParams
from .ranges import Range, TensorStats, compute_range
from .rounding import WeightRounding


def plan_with_ranges(
    prepared: ir.Model,
    policy: PolicyConfig,
    float_nodes: dict[str, str],
    float_tensors: set[str],
    stats: dict[str, TensorStats],
    calib: FeedSource,
    options: Any,
    progress: StageProgress | None,
    report: Any,
) -> tuple[QuantPlan, dict[str, Range]]:
    """A plan under the current constraints, with a range for each of its tensors.

    A re-plan may need a tensor the first calibration pass did not watch: it is
    calibrated now, or, when the data can be read only once, kept float.
    """
    # Each round either calibrates tensors not yet watched or keeps float those never
    # seen (a branch no feed took); both sets only grow, so this ends.
    while True:
        plan = make_plan(prepared, policy, float_nodes=float_nodes, float_tensors=float_tensors)
        ranges = ranges_for(plan, stats, options)
        needed = plan.range_tensors()
        absent = [n for n in needed if n not in stats]
        if absent:
            try:
                more, _ = calibrate(prepared, calib, absent, options, progress)
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


def apply_plan(
    prepared: ir.Model,
    plan: QuantPlan,
    ranges: Mapping[str, Range],
    act_dtype: type,
    reduce_range: bool,
    rounding: WeightRounding | None = None,
) -> tuple[ir.Model, InsertReport]:
    params: dict[str, QParams] = tensor_params(plan, ranges, act_dtype)
    trial = prepared.clone()
    insert_report = insert_qdq(
        trial,
        plan,
        params,
        reduce_range=reduce_range,
        activation_dtype=act_dtype,
        rounding=rounding,
    )
    return trial, insert_report


def ranges_for(plan: QuantPlan, stats: Mapping[str, TensorStats], options: Any) -> dict[str, Range]:
    ranges: dict[str, Range] = {}
    for name in plan.range_tensors():
        s = stats.get(name)
        if s is None or not s.observed:
            continue
        ranges[name] = compute_range(s, options.method, percentile=options.percentile)
    return ranges


def calibrate(
    model: ir.Model,
    calib: FeedSource,
    names: list[str],
    options: Any,
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
