"""Fix the layers responsible when static int8 misses the accuracy target, cheapest fix first.

The target (onnxslim.agreement) is measured label-free on held-out feeds. When the
int8 model misses it, the layers are ranked by the noise each adds (one
instrumented run, layer_noise.py) and fixed in order of what a fix costs at run time:

  1. range     the offenders' activation tensors take another calibration method
               (percentile, mse, entropy: each tried on all of them, the one with
               the smallest measured output error kept); free at run time;
  2. channels  per-channel weight scales where the run chose per-tensor; free on ORT;
  3. rounding  every planned layer's weights rounded to minimise its output error (GPTQ,
               rounding.py): free at run time, seconds of numpy;
  4. dynamic   MatMul / Gemm / LSTM offenders take their activation range from each run
               (ORT's dynamic int8 kernels): int8 weights kept, a little time per run;
  5. float     the fewest top-ranked layers returned to float: sets of 1, 2, 4, ...
               of the ranking (galloping) until one meets the target, then a
               bisection to the smallest such prefix; then halves, quarters, ... of
               it are dropped again while the target holds without them (the
               ranking is a cheap estimate, the measurement decides).

Every step is measured on the same held-out feeds with the same measure the user
sees, and the loop stops at the first configuration that meets the target. It knows
nothing of the pass: `evaluate(choice)` builds and measures one configuration.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from onnxslim.agreement import Assessment

ALTERNATIVE_METHODS = ("percentile", "mse", "entropy")
OFFENDERS = 16  # at most this many top-ranked layers get a range or granularity fix
SHRINK_BUDGET = 6  # measurements spent dropping layers the ranking put in needlessly
_BETTER = 0.98  # a fix is kept when it cuts the excess by at least 2 %


@dataclass(frozen=True)
class Choice:
    """One configuration the loop tries, on top of the pass's own decisions."""

    float_nodes: tuple[str, ...] = ()
    methods: tuple[tuple[str, str], ...] = ()  # (range tensor, calibration method)
    per_channel: tuple[str, ...] = ()  # layers whose weights get per-channel scales
    dynamic_nodes: tuple[str, ...] = ()  # layers whose activations are quantized at run time
    rounding: bool = False  # weights rounded by GPTQ (rounding.py) instead of to nearest

    def method_map(self) -> dict[str, str]:
        return dict(self.methods)


@dataclass
class FixStep:
    """One fix tried: what, on which layers, and the output error before and after."""

    kind: str  # "range", "per-channel", "rounding", "dynamic" or "float"
    detail: str
    layers: list[str]
    before: dict[str, float]  # output -> figure (points, or dB for SQNR)
    after: dict[str, float]
    met: bool
    kept: bool
    # Each figure's unit: one output's worst part can change between before and after
    # (the scores in points, then the boxes in dB), so both are recorded.
    units_before: dict[str, str] = field(default_factory=dict)
    units_after: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "detail": self.detail,
            "layers": list(self.layers),
            "before": {k: _json(v) for k, v in self.before.items()},
            "after": {k: _json(v) for k, v in self.after.items()},
            "units_before": dict(self.units_before),
            "units_after": dict(self.units_after),
            "met": self.met,
            "kept": self.kept,
        }


@dataclass
class RepairOutcome:
    """The configuration chosen (the best measured), its assessment and the steps."""

    choice: Choice
    built: Any
    assessment: Assessment
    steps: list[FixStep] = field(default_factory=list)
    evaluations: int = 0

    @property
    def met(self) -> bool:
        return self.assessment.passed


Evaluate = Callable[[Choice], tuple[Any, Assessment]]


def excess(assessment: Assessment) -> float:
    """How far the worst gated output is from its target: <= 1 meets it.

    Points: value / limit; SQNR: the error amplitude over the one the limit allows,
    10^((limit - value) / 20). One scale, so fixes of different outputs compare.
    """
    worst = 0.0
    for figure in assessment.figures:
        if figure.feeds:
            continue
        if figure.unit == "dB":
            if math.isnan(figure.value):
                return math.inf
            ratio = 10 ** ((figure.limit - min(figure.value, 1e6)) / 20.0)
        elif figure.limit > 0:
            ratio = figure.value / figure.limit
        else:
            ratio = 0.0 if figure.value <= 0 else math.inf
        worst = max(worst, ratio)
    return worst


def figures(assessment: Assessment) -> dict[str, float]:
    """Each gated output's figure, for the report."""
    return {f.name: round(f.value, 3) for f in assessment.figures if not f.feeds}


def units(assessment: Assessment) -> dict[str, str]:
    """The unit of each figure of `figures`: "points" (lower is better) or "dB" (higher)."""
    return {f.name: f.unit for f in assessment.figures if not f.feeds}


def repair(
    evaluate: Evaluate,
    start: tuple[Any, Assessment],
    ranked: Sequence[str],
    tensors: Mapping[str, Sequence[str]],
    *,
    method: str,
    per_tensor: Sequence[str] = (),
    dynamic: Sequence[str] = (),
    rounding: bool = False,
) -> RepairOutcome:
    """Fix the top of `ranked` (layers, most suspect first) until the target is met.

    `tensors[layer]` are the range tensors a range fix changes; `per_tensor` the
    layers whose weights could take per-channel scales; `dynamic` the layers ORT's
    dynamic int8 kernels can take; `rounding` whether GPTQ rounding may be tried;
    `method` the run's own calibration method (not tried again).
    """
    best = RepairOutcome(Choice(), start[0], start[1])
    if best.met or not ranked:
        return best
    score = excess(best.assessment)
    offenders = list(ranked[:OFFENDERS])

    def attempt(choice: Choice) -> tuple[Any, Assessment]:
        best.evaluations += 1
        return evaluate(choice)

    # 1. Ranges: one method at a time on every offender's tensors; the best one kept.
    names = sorted({t for layer in offenders for t in tensors.get(layer, ())})
    trials: list[tuple[float, str, Choice, tuple[Any, Assessment]]] = []
    for alternative in ALTERNATIVE_METHODS:
        if alternative == method or not names:
            continue
        choice = replace(best.choice, methods=tuple((n, alternative) for n in names))
        built = attempt(choice)
        trials.append((excess(built[1]), alternative, choice, built))
        if built[1].passed:
            break
    if trials:
        value, alternative, choice, built = min(trials, key=lambda t: t[0])
        kept = value < score * _BETTER
        best.steps.append(
            _step(
                "range",
                f"{alternative} ranges on {len(names)} tensors",
                offenders,
                best,
                built,
                kept,
            )
        )
        if kept:
            best.choice, best.built, best.assessment, score = choice, built[0], built[1], value
        if best.met:
            return best

    # 2-4. Per-channel weights where the run chose per-tensor; weights rounded for each
    # layer's output error (GPTQ), every layer at once; run-time activation ranges for the
    # offenders the dynamic kernels take. Each is kept when it cuts the excess.
    candidates = [layer for layer in offenders if layer in set(per_tensor)]
    capable = [layer for layer in offenders if layer in set(dynamic)]
    steps: list[tuple[str, str, list[str], Callable[[Choice], Choice]]] = [
        ("per-channel", "per-channel weight scales", candidates,
         lambda c: replace(c, per_channel=tuple(candidates))),
        ("rounding", "GPTQ weight rounding", ["every int8 layer"] if rounding else [],
         lambda c: replace(c, rounding=True)),
        ("dynamic", "activations quantized at run time", capable,
         lambda c: replace(c, dynamic_nodes=tuple(capable))),
    ]  # fmt: skip
    for kind, detail, layers, change in steps:
        if not layers:
            continue
        choice = change(best.choice)
        built = attempt(choice)
        value = excess(built[1])
        kept = value < score * _BETTER
        best.steps.append(_step(kind, detail, layers, best, built, kept))
        if kept:
            best.choice, best.built, best.assessment, score = choice, built[0], built[1], value
        if best.met:
            return best

    # 5. Float: the shortest prefix of the ranking that meets the target.
    base = best.choice
    measured: dict[int, tuple[Any, Assessment]] = {}

    def prefix(count: int) -> tuple[Any, Assessment]:
        if count not in measured:
            floats = tuple(dict.fromkeys(base.float_nodes + tuple(ranked[:count])))
            measured[count] = attempt(replace(base, float_nodes=floats))
        return measured[count]

    low, high, count = 0, None, 1
    while count < len(ranked):
        if prefix(count)[1].passed:
            high = count
            break
        low, count = count, count * 2
    if high is None:
        high = len(ranked)
        if not prefix(high)[1].passed:  # even every ranked layer float misses
            worst = min(measured.items(), key=lambda kv: excess(kv[1][1]))
            _take(best, "float", worst[0], ranked, base, worst[1], score)
            return best
    while high - low > 1:
        middle = (low + high) // 2
        if prefix(middle)[1].passed:
            high = middle
        else:
            low = middle
    chosen = list(ranked[:high])
    built = prefix(high)

    def floated(layers: list[str]) -> tuple[Any, Assessment] | None:
        trial = attempt(
            replace(base, float_nodes=tuple(dict.fromkeys(base.float_nodes + tuple(layers))))
        )
        return trial if trial[1].passed else None

    chosen, built = shrink(chosen, built, floated, SHRINK_BUDGET)
    choice = replace(base, float_nodes=tuple(dict.fromkeys(base.float_nodes + tuple(chosen))))
    best.steps.append(
        _step("float", f"{len(chosen)} layer(s) returned to float", chosen, best, built, True)
    )
    best.choice, best.built, best.assessment = choice, built[0], built[1]
    return best


def shrink(
    chosen: list[str],
    built: tuple[Any, Assessment],
    passes: Callable[[list[str]], tuple[Any, Assessment] | None],
    budget: int,
) -> tuple[list[str], tuple[Any, Assessment]]:
    """Drop chunks of `chosen` (halves, then quarters, ... then single layers) while the
    target holds without them, within `budget` measurements (delta debugging)."""
    size = max(1, len(chosen) // 2)
    while budget > 0 and len(chosen) > 1:
        start = len(chosen) - size  # the least suspect end first
        while start >= 0 and budget > 0 and len(chosen) > 1:
            fewer = chosen[:start] + chosen[start + size :]
            if fewer:
                budget -= 1
                trial = passes(fewer)
                if trial is not None:
                    chosen, built = fewer, trial
            start -= size
        if size == 1:
            break
        size = max(1, size // 2)
    return chosen, built


def _take(
    best: RepairOutcome,
    kind: str,
    count: int,
    ranked: Sequence[str],
    base: Choice,
    built: tuple[Any, Assessment],
    score: float,
) -> None:
    """Record the float step that came closest; keep it when it improved the excess."""
    layers = list(ranked[:count])
    kept = excess(built[1]) < score * _BETTER
    best.steps.append(
        _step(kind, f"{len(layers)} layer(s) returned to float", layers, best, built, kept)
    )
    if kept:
        floats = tuple(dict.fromkeys(base.float_nodes + tuple(layers)))
        best.choice = replace(base, float_nodes=floats)
        best.built, best.assessment = built


def _step(
    kind: str,
    detail: str,
    layers: Sequence[str],
    best: RepairOutcome,
    built: tuple[Any, Assessment],
    kept: bool,
) -> FixStep:
    return FixStep(
        kind,
        detail,
        list(layers),
        figures(best.assessment),
        figures(built[1]),
        built[1].passed,
        kept,
        units(best.assessment),
        units(built[1]),
    )


def _json(value: float) -> float | str | None:
    if math.isfinite(value):
        return value
    return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
