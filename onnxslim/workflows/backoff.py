"""A recipe held to the accuracy target: measured once at the end, the step that broke it
backed off (`gates.target_error`, the `mobile-int8-pruned` and `palettized-4bit` presets).

Each lossy step of a recipe (prune, cluster, quantize) runs without a check of its
own; the composed result is what the user ships, so the target (onnxslim.agreement,
the measure `prune` / `cluster` / `quantize` use) is measured once, on the final model
against the input, on held-out feeds (workflows/heldout.py: the steps never see them).
When it misses:

1. Blame. The output of every lossy step is measured against the input, in order
   (one ORT session each on the held-out feeds): the first that misses broke the
   target. When each step alone is within it, the last one did (the sum broke it).
2. Back off that step one rung, gentlest first, and run it and the steps after it again:
   prune (magnitude) and cluster: their own search at the target (the most sparsity up
   to the step's, the fewest bytes at 2..8 bits per weight or float, that meets the
   target against the step's input: `prune` / `cluster` by default), at the whole
   target, then half, then a quarter of it, then (prune) the step's sparsity x 0.75,
   x 0.5, x 0.25, then the step skipped; other prune methods: sparsity x 0.75, x 0.5,
   x 0.25, then skipped; quantize (static): its own fix loop
   (passes/quantize/repair.py: ranges, per-channel, layers back to float) held to half
   the target, then a quarter, then float. A step whose rungs are spent passes the
   blame to the lossy step before it (then after it); no step is skipped while
   another can still give ground.
3. Measure the final model again; repeat until it meets the target, and the recipe's
   other quality gates (max_parity_error, max_accuracy_drop: a trial meeting the target
   but failing one is blamed and backed off the same way), or every rung is
   spent (at most MAX_TRIALS runs). A miss keeps the trial closest to the target (by
   the fix loop's `excess`) and the `target_error` gate fails: exit 1, the model written.

The report's `data.backoff` lists every trial: the options changed, the blamed step, the
final figure, met or not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import onnx_ir as ir

from onnxslim.agreement import Assessment, Target
from onnxslim.gates import GateResult
from onnxslim.passes.quantize.repair import excess
from onnxslim.recipe import Step

LOSSY = ("prune", "cluster", "quantize")
MAX_TRIALS = 8
PRUNE_FACTORS = (0.75, 0.5, 0.25)

# Runs steps[start:] from `model` (a None step is skipped: its input passes through) and
# returns each one's model and what the caller keeps for its report.
Execute = Callable[[int, ir.Model, list[Step | None]], list[tuple[ir.Model, Any]]]
Check = Callable[[ir.Model], Assessment]
# Why a candidate fails the recipe's other quality gates (max_parity_error, ...), None when
# it holds them: a trial that meets the target but not these is backed off further.
Holds = Callable[[ir.Model], str | None]


def ladder(step: Step, target: Target) -> list[Step | None]:
    """The gentler forms of a lossy step, least back-off first; None: the step skipped.

    prune (magnitude) and cluster first run their own search at the target (the most
    compression whose output meets it against the step's input, `at_target` points;
    the step's sparsity is its upper bound, its bits are not a budget), at the whole
    target, then half and a quarter of it: what is left for the steps after them;
    prune then gives up sparsity by fixed factors (a recipe's max_parity_error can ask
    for less than the target does).
    """
    options = dict(step.options)
    rungs: list[Step | None] = []
    shares = (1.0, 0.5, 0.25)
    if step.name == "prune" and options.get("method", "magnitude") == "magnitude":
        rungs += [Step(step.name, dict(options, at_target=target.error * x)) for x in shares]
    if step.name == "prune":
        key = "ratio" if options.get("method") == "channels" else "sparsity"
        value = float(options.get(key, 0.5))
        for factor in PRUNE_FACTORS:
            if round(value * factor, 4) >= 0.01:
                rungs.append(Step(step.name, dict(options, **{key: round(value * factor, 4)})))
    elif step.name == "cluster":
        rungs += [Step(step.name, dict(options, at_target=target.error * x)) for x in shares]
    elif step.name == "quantize" and options.get("mode", "static") == "static":
        for share in shares[1:]:
            rungs.append(Step(step.name, dict(options, fix_target=target.error * share)))
    rungs.append(None)
    return rungs


def describe(step: Step | None, original: Step) -> str:
    """`prune at the target (1 pt)`, `quantize fix loop at 0.5 pt`, `prune skipped`, ..."""
    if step is None:
        return f"{original.name} skipped"
    if "at_target" in step.options:
        return f"{step.name} at the target ({step.options['at_target']:g} pt)"
    if "fix_target" in step.options:
        return f"{step.name} fix loop at {step.options['fix_target']:g} pt"
    changed = {k: v for k, v in step.options.items() if original.options.get(k) != v}
    text = " ".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in changed.items()
    )
    return f"{step.name} {text}".strip()


@dataclass
class Trial:
    changed: str  # what this trial backed off ("as written" for the first)
    blamed: str | None  # the step the previous trial blamed
    assessment: Assessment
    excess: float
    kept: bool = False
    gate_miss: str | None = None  # the recipe's other quality gate this trial failed

    @property
    def passed(self) -> bool:
        return self.assessment.passed and self.gate_miss is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "blamed": self.blamed,
            "passed": self.passed,
            "excess": round(self.excess, 4),
            "kept": self.kept,
            "figures": [f.text() for f in self.assessment.figures],
            **({"gate_miss": self.gate_miss} if self.gate_miss else {}),
        }


@dataclass
class Backoff:
    """The steps as finally run (None: skipped), their outputs, and every trial."""

    steps: list[Step | None]
    outputs: list[tuple[ir.Model, Any]]
    kept: Trial
    trials: list[Trial] = field(default_factory=list)

    @property
    def assessment(self) -> Assessment:
        return self.kept.assessment

    @property
    def passed(self) -> bool:
        return self.kept.passed

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_error": self.assessment.target.error,
            "feeds": self.assessment.feeds,
            "passed": self.passed,
            "trials": [t.to_dict() for t in self.trials],
        }


def back_off(
    model: ir.Model,
    steps: list[Step],
    check: Check,
    target: Target,
    execute: Execute,
    holds: Holds | None = None,
) -> Backoff:
    """Run `steps` on `model`, then back off until the final model meets `target` (and
    the recipe's other quality gates, `holds`).

    `check(candidate)` measures a candidate against `model` (workflows/at_target.py
    TargetCheck on the held-out feeds).
    """

    def trial(changed: str, blamed: str | None, candidate: ir.Model) -> Trial:
        assessment = check(candidate)
        miss = holds(candidate) if holds is not None and assessment.passed else None
        return Trial(changed, blamed, assessment, excess(assessment), gate_miss=miss)

    current: list[Step | None] = list(steps)
    ladders = {i: ladder(s, target) for i, s in enumerate(steps) if s.name in LOSSY}
    outputs = execute(0, model, current)
    trials = [trial("as written", None, outputs[-1][0] if outputs else model)]
    best = Backoff(list(current), outputs, trials[0])
    while not trials[-1].passed and len(trials) < MAX_TRIALS:
        index = _blame(outputs, current, lambda m: not trial("", None, m).passed)
        if index is None:
            break
        index = _with_rungs(index, ladders)
        if index is None:
            break
        current[index] = ladders[index].pop(0)
        start_model = outputs[index - 1][0] if index > 0 else model
        outputs = outputs[:index] + execute(index, start_model, current)
        latest = trial(describe(current[index], steps[index]), steps[index].name, outputs[-1][0])
        trials.append(latest)
        if latest.passed or (not best.passed and _closer(latest, best.kept)):
            best = Backoff(list(current), list(outputs), latest)
    for each in trials:
        each.kept = each is best.kept
    best.trials = trials
    return best


def _closer(trial: Trial, than: Trial) -> bool:
    """A trial that meets the target beats one that does not; then the smaller excess."""
    return (trial.assessment.passed, -trial.excess) > (than.assessment.passed, -than.excess)


def _blame(
    outputs: list[tuple[ir.Model, Any]],
    current: list[Step | None],
    fails: Callable[[ir.Model], bool],
) -> int | None:
    """The first lossy step whose output misses the target (or a quality gate); else the
    last lossy step."""
    lossy = [i for i, s in enumerate(current) if s is not None and s.name in LOSSY]
    for i in lossy[:-1]:
        if fails(outputs[i][0]):
            return i
    return lossy[-1] if lossy else None


def _with_rungs(index: int, ladders: dict[int, list[Step | None]]) -> int | None:
    """Whose rung comes next: `index` when it has one that keeps the step; else the nearest
    lossy step before it, then after it, with such a rung; only then a step skipped
    (`index` first), so no step is dropped while another can still give ground."""
    order = list(range(index, -1, -1)) + sorted(i for i in ladders if i > index)
    keeps = next((i for i in order if ladders.get(i) and ladders[i][0] is not None), None)
    return keeps if keeps is not None else next((i for i in order if ladders.get(i)), None)


def target_gate(assessment: Assessment, backoff: dict[str, Any]) -> GateResult:
    """The `target_error` gate: the final model's worst output against the target."""
    trials = backoff.get("trials", [])
    changed = [t["changed"] for t in trials[1:]]
    kept = next((t["changed"] for t in trials if t.get("kept")), None)
    how = ""
    if changed:
        how = f"; backed off in {len(changed)} trial(s) ({', '.join(changed)})"
        if kept:
            how += f", kept: {kept}"
    return GateResult(
        "target_error",
        1.0,
        round(excess(assessment), 4),  # the worst output over its limit: <= 1 meets it
        assessment.passed,
        f"target {assessment.target.error:g} point(s): {assessment.message()} "
        f"(on {assessment.feeds}){how}",
    )
