"""Bits at an accuracy target: the fewest bytes whose palettized model decides like the original.

Uniform 4 bits collapsed a CTC captcha reader (0.89 -> 0.015) while a CNN lost nothing
at 3. So every weight's candidate forms (2..8 bits, one palette per tensor or per
channel, or left float) are clustered and probed once (cluster.py `_candidates`, one
ORT session for every probe), and a byte budget turns into the forms with the least
summed output error (the knapsack of allocate.py). Which budget still meets the target
is decided by the target itself: the workflow hands in `accept` (candidate model ->
onnxslim.agreement.Assessment on held-out feeds) and the ladder of budgets (what
uniform 2, 2.5, 3 ... 8 bits would store, then everything float) is bisected with it.
A trial costs one ORT session on the held-out feeds, and no clustering: the candidates'
values are kept from the probing.

Trials use the k-means palettes without the least-squares refinement, which runs once
on the chosen forms; it lowers each layer's error on the calibration rows but can move
the model's decisions (captcha_crnn: 2.25 points), so it is checked too and undone
when it misses (refine_guard.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx_ir as ir

from onnxslim.passes._run_data import Accept

from .allocate import FLOAT, PER_TENSOR, Form, Table, choose

# Bit widths every weight is tried at (per tensor and per channel); the request's is added.
WIDTHS = (2, 3, 4, 5, 6, 8)
BLAMED = 3  # weights named when the request misses the target


@dataclass(frozen=True)
class Effort:
    """What the target search measures at one `effort` (the option of ClusterWeights)."""

    probe_seconds: float  # every form probed when that takes at most this long
    probe_feeds: int  # the probes' feeds
    refine_feeds: int | None  # the refinement after a search that met the target (0: none)
    exact_limit: int  # candidate forms: values (else histogram bins) of the k-means DP
    refine_seconds: float | None  # ... and no refinement level starts after this long
    sample: int | None  # candidate forms: palettes of bigger groups fitted on this many values


# captcha_crnn (2 cores, loaded): 255 s, of which 141 s refining 23 layers level by level
# (one ORT pass over 24 feeds each) and 35 s probing on 24 feeds; the target was met
# before the refinement, which only adds margin. minilm_l3_paraphrase: 380 of 444 s
# clustering candidate forms, most in the exact DP of per-channel rows (384 values each);
# on 128 bins it is 3x faster at 4 bits, relative weight error 0.00711 for 0.00709.
# open_nsfw_resnet met the target at 2 bits: its refinement has 50+ levels.
EFFORT = {
    "fast": Effort(20.0, 8, 0, 64, 0.0, 1 << 16),
    "default": Effort(40.0, 16, 8, 128, 30.0, 1 << 18),
    "thorough": Effort(240.0, 32, None, 2048, None, None),
}


def target_widths(bits: int) -> tuple[int, ...]:
    """WIDTHS, and the requested width when it is another."""
    return tuple(sorted({*WIDTHS, bits}))


@dataclass
class Found:
    """Where the search ended and what it tried."""

    chosen: list[int]  # one candidate per table row: the written allocation
    budget: int  # its byte budget
    reached: int  # the smallest budget that met the target (-1: none tried did)
    requested: int | None  # the request's budget (the user's --bits), if any
    trials: list[dict[str, Any]] = field(default_factory=list)
    blamed: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget_bytes": self.budget,
            "reached_bytes": self.reached,
            "requested_bytes": self.requested,
            "passed": self.reached >= 0
            and (self.requested is None or self.reached <= self.requested),
            "trials": self.trials,
            "blamed": self.blamed,
        }


def ladder(table: Table, upper: int | None) -> list[int]:
    """Budgets to try, ascending: uniform 2, 2.5, 3 ... 8 bits per tensor (and halfway between
    neighbours: name_romanizer met the target at 6 bits, missed at 5, nothing between),
    10, 12, 16 and 24 bits' worth (8-bit forms and some weights float),
    every weight float, and `upper` (the request) when given."""
    by_width = {}
    for width in WIDTHS:
        picks = [_index(row, Form(width, PER_TENSOR)) for row in table.rows]
        if all(j is not None for j in picks):
            by_width[width] = table.cost([j for j in picks if j is not None])
    widths = sorted(by_width)
    rungs = set(by_width.values())
    for low, high in zip(widths, widths[1:], strict=False):  # halfway: 2.5 .. 5.5, and 7
        rungs.add((by_width[low] + by_width[high]) // 2)
    if widths:  # between every weight at the widest and all float: the knapsack keeps the
        # most sensitive weights float (centerface's 34 dB heads missed at 8 bits everywhere)
        top = by_width[widths[-1]]
        rungs.update(int(top * f) for f in (1.25, 1.5, 2.0, 3.0) if top * f < table.dense_cost)
    rungs.add(table.dense_cost)
    if upper is not None:
        rungs.add(upper)
    return sorted(rungs)


def search(model: ir.Model, table: Table, accept: Accept, *, upper: int | None) -> Found:
    """The smallest budget on the ladder whose allocation meets the target.

    With `upper` (the request's budget) it is tried first and, when it meets the target,
    kept; when it misses, the written allocation stays the request's (the closest to it)
    and the budgets above it are bisected for `reached`, what would have met the target.
    The target is assumed to hold above any budget where it holds.
    """
    budgets = ladder(table, upper)
    found = Found(chosen=list(table.uniform), budget=-1, reached=-1, requested=upper)
    results: dict[int, tuple[list[int], bool]] = {}

    def trial(index: int) -> bool:
        budget = budgets[index]
        if budget >= table.dense_cost:  # every weight float fits: the knapsack's byte
            # rounding could miss a choice that fills the budget exactly
            chosen = [len(row) - 1 for row in table.rows]  # float is each row's last candidate
        else:  # at the request's budget its uniform forms stay in the running
            uniform = table.uniform if budget == upper else None
            chosen = choose(table.rows, budget, table.function_bytes, fallback=uniform)
        assessment = accept(_clustered_copy(model, table, chosen))
        results[index] = (chosen, assessment.passed)
        found.trials.append(
            {
                "budget_bytes": budget,
                "bits_per_weight": table.summary(chosen, budget)["bits_per_weight"],
                "passed": assessment.passed,
                "missed": "" if assessment.passed else assessment.message(),
            }
        )
        if not assessment.passed and budget == upper:
            found.blamed = blame(table, chosen)
        return assessment.passed

    low, high = -1, len(budgets)  # budgets[low] misses (-1: none), budgets[high] meets
    if upper is not None:
        request = budgets.index(upper)
        if trial(request):
            found.chosen, found.budget, found.reached = results[request][0], upper, upper
            return found
        low = request
    while high - low > 1:
        middle = (low + high) // 2
        if trial(middle):
            high = middle
        else:
            low = middle
    if high < len(budgets):
        found.reached = budgets[high]
    if upper is not None:  # the request missed: the model closest to it is the request's
        found.chosen, found.budget = results[budgets.index(upper)][0], upper
    elif high < len(budgets):
        found.chosen, found.budget = results[high][0], budgets[high]
    else:  # nothing met the target, not even every weight float (the check itself is off)
        found.budget = budgets[-1]
        found.chosen = results[len(budgets) - 1][0]
    return found


def blame(table: Table, chosen: Sequence[int]) -> list[dict[str, Any]]:
    """The weights carrying most of the summed measured error of an allocation."""
    picked = [row[j] for row, j in zip(table.rows, chosen, strict=True)]
    total = sum(c.error for c in picked)
    order = sorted(range(len(picked)), key=lambda i: -picked[i].error)[:BLAMED]
    return [
        {
            "weight": table.weights[i].name,
            "form": picked[i].form.label(),
            "error_share": picked[i].error / total if total > 0 else 0.0,
        }
        for i in order
        if picked[i].error > 0
    ]


def _index(row: Sequence[Any], form: Form) -> int | None:
    return next((j for j, c in enumerate(row) if c.form == form), None)


def _clustered_copy(model: ir.Model, table: Table, chosen: Sequence[int]) -> ir.Model:
    """A copy of `model` with each weight's values replaced by its chosen form's (float: kept)."""
    copy = model.clone()
    initializers = copy.graph.initializers
    for weight, row, j in zip(table.weights, table.rows, chosen, strict=True):
        form = row[j].form
        value = initializers.get(weight.name)
        if form.bits == FLOAT or value is None:
            continue
        value.const_value = ir.Tensor(table.palettes[(weight.name, form)].dense(), name=weight.name)
    return copy
