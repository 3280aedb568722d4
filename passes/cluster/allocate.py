"""Mixed-precision palettes: bits and palette granularity chosen per weight under a byte budget.

One bit width for every layer wastes bytes: a few layers (the first conv, a
detector's box head, a tiny projection) carry most of the output error while the
big middle layers barely notice 3 bits. Allocation measures, for every weight and
every candidate form (bits B-1 .. B+2, one palette per tensor or per 1, 4 or 16
output channels, or left float), the model's output error on calibration feeds with only
that weight clustered so (one ORT session for all probes, onnxslim.probing), then
picks one form per weight minimising the summed error under the byte budget:
a multiple-choice knapsack, solved exactly by dynamic programming over the budget
in small byte units. Costs are the exact serialized bytes of each stored form
(storage.footprint), and the expansion functions a form needs (about 1 kB each for
bit-plane unpacking) are paid once per model, which on a small model decides
whether mixing widths pays at all. The budget defaults to what uniform `bits` would store, so
the mixed model is never bigger than the uniform one, and it never has a larger
summed error, since the uniform choice is one of the feasible solutions.

Errors of different weights are assumed to add up, which holds at the small
per-weight perturbations a sensible budget leads to (the same assumption as
pruning's sparsity allocation, passes/prune/allocation.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FLOAT = 0  # Form.bits of the weight left as it is
PER_TENSOR = 0  # Form.group_size of one palette per tensor
GROUP_SIZES = (1, 4, 16)  # output channels per palette probed besides one per tensor
FEW_MAX_CHANNELS = 4096  # big models: no per-channel forms above this many channels
PER_CHANNEL_MAX_BITS = 4  # allocation=target: per-channel palettes probed up to this width
BUDGET_UNITS = 5_000  # resolution of the knapsack: budget / this, in whole bytes
# Up to this many distinct expansion-function sets every combination is tried; above
# (2^sets knapsacks would dominate the search), functions are dropped one at a time.
EXACT_FUNCTION_SETS = 8


@dataclass(frozen=True)
class Form:
    """How one weight is stored: `bits` per index (FLOAT: not clustered) and `group_size`
    output channels per palette (PER_TENSOR: one palette for the tensor)."""

    bits: int
    group_size: int = 0

    def label(self) -> str:
        if self.bits == FLOAT:
            return "float"
        if self.group_size == PER_TENSOR:
            return f"{self.bits}b per-tensor"
        channels = "channel" if self.group_size == 1 else f"{self.group_size}-channels"
        return f"{self.bits}b per-{channels}"


@dataclass(frozen=True)
class Candidate:
    form: Form
    cost: int  # bytes on disk: the weight's initializers and nodes
    error: float  # model output error with only this weight in this form
    functions: frozenset[str] = frozenset()  # expansion functions it needs (paid once per model)

    def to_dict(self) -> dict[str, object]:
        return {"form": self.form.label(), "bytes": self.cost, "error": self.error}


@dataclass
class Table:
    """Every weight's candidates (the FLOAT form last), as the allocations choose from them."""

    weights: Sequence[Any]  # cluster.weights.Weight, in row order
    measure_all: bool  # every form probed (else one probe per weight, scaled)
    feeds: int  # probe feeds
    rows: list[list[Candidate]] = field(default_factory=list)
    uniform: list[int] = field(default_factory=list)  # the uniform `bits` form of each row
    function_bytes: dict[str, int] = field(default_factory=dict)
    # each probed form's palettes (cluster.palette.Palettized), reused by trials and the result
    palettes: dict[tuple[str, Form], Any] = field(default_factory=dict)

    def cost(self, chosen: Sequence[int]) -> int:
        """Bytes of one candidate per row, the expansion functions they need paid once."""
        picked = [row[j] for row, j in zip(self.rows, chosen, strict=True)]
        functions = frozenset().union(*(c.functions for c in picked))
        return sum(c.cost for c in picked) + sum(self.function_bytes[f] for f in functions)

    @property
    def uniform_cost(self) -> int:
        return self.cost(self.uniform)

    @property
    def dense_cost(self) -> int:
        return sum(row[-1].cost for row in self.rows)

    def forms(self, chosen: Sequence[int]) -> dict[str, Form]:
        return {
            w.name: row[j].form for w, row, j in zip(self.weights, self.rows, chosen, strict=True)
        }

    def summary(self, chosen: Sequence[int], budget: int) -> dict[str, Any]:
        """The report's view of an allocation: bytes and summed errors against uniform."""
        picked = [row[j] for row, j in zip(self.rows, chosen, strict=True)]
        uniform = [row[j] for row, j in zip(self.rows, self.uniform, strict=True)]
        elements = sum(w.value.const_value.size for w in self.weights)
        chosen_bytes = self.cost(chosen)
        return {
            "budget_bytes": budget,
            "chosen_bytes": chosen_bytes,
            "chosen_error": sum(c.error for c in picked),
            "uniform_bytes": self.uniform_cost,
            "uniform_error": sum(c.error for c in uniform),
            "float_bytes": self.dense_cost,
            "bits_per_weight": 8.0 * chosen_bytes / elements if elements else 0.0,
            "probe_feeds": self.feeds,
            "errors": "measured per form" if self.measure_all else "one probe per weight, scaled",
            "weights": [
                {"weight": w.name, "form": c.form.label(), "candidates": [x.to_dict() for x in t]}
                for w, c, t in zip(self.weights, picked, self.rows, strict=True)
            ],
        }


def candidate_forms(
    bits: int,
    *,
    channels: int | None,
    fixed_group: int | None,
    few: bool = False,
    widths: Sequence[int] | None = None,
) -> list[Form]:
    """Forms to probe around `bits`: B-1 .. B+2 (within 2..8) times one palette per tensor or
    per 1, 4 or 16 output channels (`channels`: the weight's, None without a channel axis;
    `fixed_group`: only that granularity, e.g. per channel for the int8 grid). `few`: for
    big models, where clustering every form dominates: B-1 .. B+1, per tensor or channel,
    and per tensor only above FEW_MAX_CHANNELS channels (an embedding table's rows).
    `widths`: these bit widths instead, per tensor, and per channel up to
    PER_CHANNEL_MAX_BITS (allocation=target: wider palettes per channel buy little and
    cost the most to cluster)."""
    if widths is not None:
        few = True
        forms = candidate_forms(bits, channels=channels, fixed_group=fixed_group, few=True)
        groups = sorted({f.group_size for f in forms})
        return [
            Form(b, g)
            for b in widths
            for g in groups
            if g == PER_TENSOR or fixed_group is not None or b <= PER_CHANNEL_MAX_BITS
        ]
    else:
        top = bits + 1 if few else bits + 2
        widths = sorted({b for b in range(bits - 1, top + 1) if 2 <= b <= 8} | {bits})
    if fixed_group is not None:
        groups = [fixed_group if channels else PER_TENSOR]
    elif not channels:
        groups = [PER_TENSOR]
    else:
        sizes = () if few and channels > FEW_MAX_CHANNELS else (1,) if few else GROUP_SIZES
        groups = [PER_TENSOR, *(g for g in sizes if g < channels)]
    return [Form(b, g) for b in widths for g in groups]


def choose(
    candidates: Sequence[Sequence[Candidate]],
    budget: int,
    function_bytes: Mapping[str, int],
    fallback: Sequence[int] | None = None,
) -> list[int]:
    """Index of one candidate per weight: least summed error, bytes (functions included) <= budget.

    The expansion functions a form needs are paid once per model, which couples the
    weights; every combination of the candidates' function sets is tried (up to
    EXACT_FUNCTION_SETS sets; above, all allowed, then one function dropped at a time while
    that lowers the error), each a knapsack over the budget left after its functions.
    `fallback` (the uniform choice) is kept unless something better fits; with no fallback
    and nothing fitting, each weight takes its cheapest candidate.
    """

    def total(chosen: Sequence[int]) -> tuple[int, float]:
        picked = [options[j] for options, j in zip(candidates, chosen, strict=True)]
        functions = frozenset().union(*(c.functions for c in picked))
        size = sum(c.cost for c in picked) + sum(function_bytes.get(f, 0) for f in functions)
        return size, sum(c.error for c in picked)

    best: tuple[float, list[int]] | None = None
    if fallback is not None and total(fallback)[0] <= budget:
        best = (total(fallback)[1], list(fallback))
    sets = sorted({c.functions for options in candidates for c in options}, key=sorted)
    tried: set[frozenset[str]] = set()

    def attempt(allowed: frozenset[str]) -> list[int] | None:
        """Knapsack with `allowed` functions paid up front; the best so far kept in `best`."""
        nonlocal best
        if allowed in tried:
            return None
        tried.add(allowed)
        left = budget - sum(function_bytes.get(f, 0) for f in allowed)
        for _ in range(4):  # rounding to byte units can overshoot by a few units: tighten
            chosen = _knapsack(candidates, left, allowed)
            if chosen is None:
                return None
            size, error = total(chosen)
            if size <= budget:
                if best is None or error < best[0]:
                    best = (error, chosen)
                return chosen
            left -= size - budget
        return None

    if len(sets) <= EXACT_FUNCTION_SETS:
        for mask in range(1 << len(sets)):
            attempt(frozenset().union(*(s for i, s in enumerate(sets) if mask >> i & 1)))
    else:  # 2^sets knapsacks would dominate: drop functions one at a time while it helps
        allowed = frozenset().union(*sets)
        attempt(allowed)
        improved = True
        while improved and allowed:
            improved = False
            for name in sorted(allowed):
                before = best[0] if best is not None else math.inf
                attempt(allowed - {name})
                if best is not None and best[0] < before:
                    allowed, improved = allowed - {name}, True
                    break
    if best is None:
        return [min(range(len(o)), key=lambda j: o[j].cost) for o in candidates]
    return best[1]


def _knapsack(
    candidates: Sequence[Sequence[Candidate]], budget: int, allowed: frozenset[str]
) -> list[int] | None:
    """Least summed error with summed cost <= budget using only `allowed` functions, costs
    rounded to units of budget / BUDGET_UNITS bytes (the caller checks the exact total)."""
    if budget < 0:
        return None
    unit = max(1, budget // BUDGET_UNITS)
    slots = budget // unit
    best = np.full(slots + 1, np.inf)
    best[0] = 0.0
    picks = np.zeros((len(candidates), slots + 1), np.int16)
    for i, options in enumerate(candidates):
        after = np.full(slots + 1, np.inf)
        pick = np.zeros(slots + 1, np.int16)
        for j, candidate in enumerate(options):
            units = round(candidate.cost / unit)
            if units > slots or not candidate.functions <= allowed:
                continue
            shifted = np.full(slots + 1, np.inf)
            shifted[units:] = best[: slots + 1 - units] + candidate.error
            better = shifted < after
            after[better] = shifted[better]
            pick[better] = j
        best, picks[i] = after, pick
    if not np.isfinite(best).any():
        return None
    slot = int(np.argmin(best))
    chosen = []
    for i in range(len(candidates) - 1, -1, -1):
        j = int(picks[i, slot])
        chosen.append(j)
        slot -= round(candidates[i][j].cost / unit)
    return chosen[::-1]
