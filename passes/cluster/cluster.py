"""The `cluster-weights` pass: share weights through palettes of 2^bits values (palettization).

Steps, each in its own module:
  1. weights   which float initializers are layer weights, and their channel axis;
  2. kmeans    cluster each tensor, or each group of `group_size` output channels,
               into 2^bits values (optimal 1-D DP by default; zeros kept);
  3. palette   optionally snap the palette onto the int8 grid the quantizer will
               use, so `cluster` then `quantize` keeps both savings exactly;
  4. refine    with calibration data, re-fit the palette values (and biases) by
               least squares so each layer reproduces the original layer's
               outputs, level by level;
  5. storage   write packed indices + palettes that ORT expands at session start.
What was done per weight (errors, sizes, skipped tensors with their reason) is left
in model.meta[SUMMARY_KEY] for the report (the pipeline hands back this model).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, ClassVar

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveInitializersFromInputsPass

from onnxslim.errors import UsageError
from onnxslim.passes._options import check_choice, effort_option, option
from onnxslim.passes._run_data import RunData, TakesData
from onnxslim.passes.prune._common import load_feeds, name_nodes
from onnxslim.passes.prune.layers import lift_constants
from onnxslim.passes.prune.storage import UnpackSparseWeights
from onnxslim.passes.quantize.policy import resolve_target
from onnxslim.probing import WeightProbe

from . import packing as index_packing
from . import refine_guard
from . import storage as palette_storage
from .allocate import FLOAT, PER_TENSOR, Candidate, Form, Table, candidate_forms, choose
from .assign import assign
from .importance import WeightStats, weight_stats
from .kmeans import EXACT_LIMIT, INITS
from .palette import Palettized, cluster_tensor, cluster_tensor_widths, reassign, snap_int8
from .refine import refine_layers
from .target import EFFORT, target_widths
from .target import search as target_search
from .weights import Skipped, Weight, find_weights

SUMMARY_KEY = "onnxslim.cluster"
# (weight, form, probing) -> its clustering and report row (ClusterWeights._cluster)
Clustered = dict[tuple[str, Form | None, bool], tuple[Palettized, dict[str, Any]]]
GRANULARITIES = ("per-tensor", "per-channel-group")
STORAGES = ("palette", "dense")
PALETTE_DTYPES = ("auto", "float32", "float16")
ALLOCATIONS = ("uniform", "mixed", "target")
IMPORTANCES = ("activation", "uniform")
ALLOCATION_FEEDS = 32  # probes need a stable figure, not the whole calibration set
PROBE_SECONDS = 60.0  # above: one probe per weight, the other forms scaled by weight error
MIN_PROBE_FEEDS = 2  # allocation=target: one probe per weight on no fewer feeds
# Candidate forms are clustered on a histogram of at most this many bins (the DP's cost
# grows with bins x palette size); the chosen forms are clustered at exact_limit after.
PROBE_EXACT_LIMIT = 2048
PROBE_LLOYD_BITS = 5
UNSEEN_ERROR = 1e-9  # a weight whose every form probes below this: the probe cannot see it
FULL_SEARCH_ELEMENTS = 250_000  # above: clustering 16 forms per weight dominates; fewer forms
_SNAP_ROUNDS = 4
MIN_VALUES_PER_ENTRY = (
    4  # per-channel-group palettes: channels merge until each group holds this x k
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClusterWeights(TakesData, ir.passes.InPlacePass):
    """Cluster each layer weight into 2^bits shared values, stored as packed indices + palette.

    Its run takes the data (RunData): `feeds`, calibration data (an .npz of stacked
    samples, a folder; API: also a list of feeds) for refinement and the bit
    allocation; for allocation=target, `accept`, `requested` and `probe_feeds`.
    """

    lossless: ClassVar[bool] = False

    bits: int = option(4, "Bits per index: each palette holds 2^bits values (2..8).")
    init: str = option(
        "optimal",
        "optimal: exact 1-D k-means by dynamic programming; kmeans++, density, linear: "
        "Lloyd from that start.",
        choices=INITS,
    )
    granularity: str = option(
        "per-tensor",
        "One palette per tensor, or per group of output channels.",
        choices=GRANULARITIES,
    )
    group_size: int = option(
        1,
        "Output channels sharing one palette (per-channel-group; 1: per channel). Channels "
        "with fewer than 4 x 2^bits values share with their neighbours (not with int8_grid).",
    )
    allocation: str = option(
        "target",
        "uniform: every weight at `bits`; mixed: bits (bits-1 .. bits+2) and granularity "
        "chosen per weight from its measured effect on the outputs, within the bytes "
        "uniform `bits` takes (needs calib); target: the fewest bytes (2..8 bits per weight, "
        "or float) that meet the accuracy target the workflow checks (without a check: "
        "mixed with calib, else uniform).",
        choices=ALLOCATIONS,
    )
    effort: str = effort_option()
    budget: float | None = option(
        None,
        "With allocation=mixed: stored bytes of the clustered weights as a fraction of their "
        "float bytes (None: what uniform `bits` stores).",
    )
    budget_bytes: int | None = option(
        None,
        "With allocation=mixed: the same budget in bytes (weights and expansion functions).",
    )
    min_elements: int | None = option(
        None,
        "Leave weights with fewer elements as they are (None: 256; with allocation=mixed "
        "16, since the allocation keeps float whatever does not pay).",
    )
    exclude: tuple[str, ...] = option(
        (), "Node or weight names (fnmatch patterns) to leave unclustered."
    )
    keep_zero: bool | None = option(
        None,
        "Zero as a palette entry of its own (None: when > 1 % of the weight "
        "is exactly zero, i.e. it was pruned).",
    )
    refine: bool | None = option(
        None, "Re-fit palettes by least squares on calib (default: on with calib)."
    )
    calib_count: int = option(256, "Calibration samples used.")
    max_rows: int = option(8192, "Calibration rows sampled per layer for refinement.")
    ridge: float = option(
        1e-4, "Pull of the refit towards the k-means palette, relative to the input energy."
    )
    int8_grid: bool = option(
        False,
        "Snap palette values onto the int8 grid `onnxslim quantize` will use "
        "(exact with per-channel palettes, group_size 1).",
    )
    reduce_range: bool | None = option(
        None, "With int8_grid: 7-bit grid (None: as the quantizer decides for this CPU)."
    )
    storage: str = option(
        "palette",
        "palette: packed indices + palette (small file); dense: plain float "
        "initializers holding the clustered values.",
        choices=STORAGES,
    )
    packing: str = option(
        "auto",
        "Index packing: auto (UINT4/UINT2 where the opset has them, else bit planes), "
        "bits (always bit planes), uint8 (a byte per index).",
        choices=index_packing.PACKINGS,
    )
    palette_dtype: str = option(
        "auto",
        "auto: float16 palettes when there is one per channel group (float32 weights), else "
        "the weight's type; float32; float16.",
        choices=PALETTE_DTYPES,
    )
    exact_limit: int = option(
        EXACT_LIMIT,
        "Unique values up to which the optimal DP runs on the values "
        "themselves (above: on a histogram of this many bins, then Lloyd).",
    )
    seed: int = option(0, "Seed of k-means++ and row sampling.")
    importance: str = option(
        "activation",
        "How the target search's k-means weighs each value: activation (by the energy of "
        "the input it multiplies on calib, SqueezeLLM) or uniform (every value alike).",
        choices=IMPORTANCES,
    )

    def __post_init__(self) -> None:
        for name in (
            "init",
            "granularity",
            "storage",
            "packing",
            "palette_dtype",
            "allocation",
            "effort",
            "importance",
        ):
            check_choice(self, name)
        if not 1 <= self.bits <= 8:
            raise ValueError(f"bits must be in 1..8, got {self.bits}")
        if self.group_size < 1:
            raise ValueError(f"group_size must be at least 1, got {self.group_size}")
        if self.exact_limit < 16:
            raise ValueError("exact_limit must be at least 16")
        if self.budget is not None and not 0 < self.budget <= 1:
            raise ValueError(f"budget must be a fraction in (0, 1], got {self.budget}")
        if self.budget_bytes is not None and self.budget_bytes < 0:
            raise ValueError(f"budget_bytes must not be negative, got {self.budget_bytes}")
        if (
            self.budget is not None or self.budget_bytes is not None
        ) and self.allocation != "mixed":
            raise ValueError("budget and budget_bytes apply to allocation=mixed")
        if self.budget is not None and self.budget_bytes is not None:
            raise ValueError("give budget or budget_bytes, not both")

    def run(self, model: ir.Model, data: RunData) -> ir.passes.PassResult:
        started = time.perf_counter()
        feeds = load_feeds(data.feeds, self.calib_count, model)
        refine = self.refine if self.refine is not None else feeds is not None
        if refine and feeds is None:
            raise UsageError("palette refinement needs calibration data (calib)")
        notes = prepare(model)
        weights, skipped = find_weights(
            model,
            min_elements=self.smallest_weight(searching=data.accept is not None),
            exclude=self.exclude,
        )
        if not weights:
            _store(
                model,
                self,
                rows=[],
                skipped=skipped,
                layers=[],
                notes=notes,
                seconds=time.perf_counter() - started,
            )
            return ir.passes.PassResult(model, bool(notes))
        qmax = self._qmax()
        forms: dict[str, Form] = {}
        allocation = None
        allocate = self.allocation
        probe_feeds = feeds if feeds is not None else data.probe_feeds
        if allocate == "target" and (data.accept is None or not probe_feeds):
            allocate = "uniform"  # no check handed in (a recipe step): `bits` everywhere
        if allocate == "mixed" and feeds is None:
            raise UsageError("allocation=mixed needs calibration data (calib)")
        # the candidate forms' clusterings: the searched forms are written as they were
        # probed and checked, without clustering them again (Clustered)
        clustered: Clustered = {}
        stats: dict[str, WeightStats] = {}
        if allocate != "uniform":
            assert probe_feeds is not None
            if allocate == "target":
                if self.importance == "activation":
                    feed_count = EFFORT[self.effort].probe_feeds
                    stats = weight_stats(model, weights, list(probe_feeds)[:feed_count])
                forms, allocation = self._allocate_at_target(
                    model, weights, list(probe_feeds), qmax, data, clustered, stats
                )
            else:
                forms, allocation = self._allocate(model, weights, list(probe_feeds), qmax)
            kept = [w for w in weights if forms[w.name].bits == FLOAT]
            skipped += [Skipped(w.name, "kept float by the bit allocation") for w in kept]
            weights = [w for w in weights if forms[w.name].bits != FLOAT]
        original = model.clone() if feeds is not None else None
        palettes: dict[str, Palettized] = {}
        rows: dict[str, dict[str, Any]] = {}
        for weight in weights:
            # the target search checked the probing palettes: the same ones are written
            searched = allocate == "target"
            p, row = self._cluster(
                weight,
                qmax,
                forms.get(weight.name),
                probing=searched,
                memo=clustered,
                stats=stats.get(weight.name),
            )
            palettes[weight.name] = p
            rows[weight.name] = row
            weight.value.const_value = ir.Tensor(p.dense(), name=weight.name)
        layers = []
        before, unrefined = refine_guard.snapshot(model), dict(palettes)
        refine_feeds, refine_seconds = feeds, None
        if feeds is not None and allocation is not None and allocate == "target":
            if allocation.get("search", {}).get("passed"):  # refining only adds margin
                refine_feeds = feeds[: EFFORT[self.effort].refine_feeds]
                refine_seconds = EFFORT[self.effort].refine_seconds
        if refine_feeds and original is not None:
            layers = refine_layers(
                original,
                model,
                palettes,
                refine_feeds,
                ridge=self.ridge,
                max_rows=self.max_rows,
                seed=self.seed,
                refit=refine,
                qmax=qmax,
                pinned_zero=frozenset(name for name, row in rows.items() if row["zero_kept"]),
                seconds=refine_seconds,
            )
        if data.accept is not None and any(layer.refit for layer in layers):
            palettes, layers, checked = refine_guard.guard(
                model, before, unrefined, palettes, layers, data.accept, self._narrow
            )
            notes.append(refine_guard.note(checked))
            if allocation is not None:
                allocation["refinement"] = checked
        opset = palette_storage.default_opset(model)
        if opset < index_packing.MIN_BITSHIFT_OPSET and self.bits < 8 and self.storage == "palette":
            notes.append(
                f"opset {opset}: indices stored one per byte (packing {self.bits}-bit indices "
                f"needs opset {index_packing.MIN_BITSHIFT_OPSET}; "
                "`onnxslim export --opset 18` converts)"
            )
        arrays = {w.name: w for w in weights}
        for name, p in list(palettes.items()):
            p = palettes[name] = self._narrow(p)
            row = rows[name]
            row["palette_dtype"] = str(p.palette.dtype)
            arrays[name].value.const_value = ir.Tensor(p.dense(), name=name)
            row["weight_error"] = _relative_error(row.pop("_original"), p.dense())
            size = index_packing.stored_bytes(p, opset, self.packing)
            if self.storage == "palette" and size < row["dense_bytes"]:
                palette_storage.write(
                    model.graph, model, arrays[name].value, p, packing=self.packing
                )
                row["stored_bytes"], row["index_format"] = (
                    size,
                    index_packing.format_of(p, opset, self.packing),
                )
            else:
                row["stored_bytes"], row["index_format"] = row["dense_bytes"], "dense"
                if self.storage == "palette":
                    row["note"] = f"kept dense: indices + palettes ({size} bytes) are not smaller"
        _store(
            model,
            self,
            rows=list(rows.values()),
            skipped=skipped,
            layers=[r.to_dict() for r in layers],
            notes=notes,
            seconds=time.perf_counter() - started,
            allocation=allocation,
        )
        return ir.passes.PassResult(model, True)

    def _allocate(
        self, model: ir.Model, weights: list[Weight], feeds: list, qmax: int | None
    ) -> tuple[dict[str, Form], dict[str, Any]]:
        """Each weight's form (see allocate.py), from output errors measured on ORT, within
        the byte budget (default: what uniform `bits` stores)."""
        table = self._candidates(model, weights, feeds, qmax)
        budget = table.uniform_cost
        if self.budget is not None:
            budget = int(self.budget * table.dense_cost)
        elif self.budget_bytes is not None:
            budget = self.budget_bytes
        chosen = choose(table.rows, budget, table.function_bytes, fallback=table.uniform)
        return table.forms(chosen), table.summary(chosen, budget)

    def _allocate_at_target(
        self,
        model: ir.Model,
        weights: list[Weight],
        feeds: list,
        qmax: int | None,
        data: RunData,
        memo: Clustered | None = None,
        stats: dict[str, WeightStats] | None = None,
    ) -> tuple[dict[str, Form], dict[str, Any]]:
        """allocation=target: the fewest bytes whose model meets the target (target.py);
        `memo` keeps the candidate forms' clusterings (see _cluster); `stats`: what the data
        says about each weight (importance.py: k-means weights, X^T X for the assignment)."""
        table = self._candidates(
            model,
            weights,
            feeds,
            qmax,
            widths=target_widths(self.bits),
            memo=memo,
            stats=stats,
        )
        upper = table.uniform_cost if data.requested else None
        assert data.accept is not None
        found = target_search(model, table, data.accept, upper=upper)
        summary = table.summary(found.chosen, found.budget)
        summary["search"] = found.to_dict()
        return table.forms(found.chosen), summary

    def _candidates(
        self,
        model: ir.Model,
        weights: list[Weight],
        feeds: list,
        qmax: int | None,
        widths: tuple[int, ...] | None = None,
        memo: Clustered | None = None,
        stats: dict[str, WeightStats] | None = None,
    ) -> Table:
        """Every weight's candidate forms with their bytes and measured output errors.

        Every candidate is probed when that takes at most PROBE_SECONDS and the weights hold
        at most FULL_SEARCH_ELEMENTS values; on bigger models
        each weight is probed once, in its uniform form, and its other forms' errors are
        that figure scaled by their weight error relative to the uniform form's (output
        error grows about linearly with weight error at these small perturbations), and
        fewer forms are clustered (B-1 .. B+1, per tensor or per channel). `widths`: the
        bit widths to try instead of B-1 .. B+2 (allocation=target)."""
        opset = palette_storage.default_opset(model)
        effort = EFFORT[self.effort] if self.allocation == "target" else None
        count = effort.probe_feeds if effort is not None else ALLOCATION_FEEDS
        probe = WeightProbe(model, [w.name for w in weights], feeds[:count])
        forms_per_weight = len(
            candidate_forms(self.bits, channels=64, fixed_group=None, widths=widths)
        )
        probes = len(weights) * forms_per_weight
        elements = sum(w.value.const_value.size for w in weights if w.value.const_value is not None)
        seconds = effort.probe_seconds if effort is not None else PROBE_SECONDS
        measure_all = probes * probe.seconds_per_run <= seconds and elements <= FULL_SEARCH_ELEMENTS
        if not measure_all and effort is not None:
            # one probe per weight is bounded by the effort's seconds too, with fewer feeds:
            # open_nsfw_resnet's 54 probes on 16 feeds were 43 % of its cluster time; the
            # figures only rank the forms, the target check decides
            probe.fit(len(weights), seconds, MIN_PROBE_FEEDS)
        user_group = self.group_size if self.granularity == "per-channel-group" else PER_TENSOR
        table = Table(weights=weights, measure_all=measure_all, feeds=probe.feed_count)
        for weight in weights:
            dense = weight.value.const_value
            assert dense is not None
            channels = dense.shape.numpy()[weight.axis] if weight.axis is not None else None
            forms = candidate_forms(
                self.bits,
                channels=channels,
                fixed_group=user_group if self.int8_grid else None,
                few=not measure_all,
                widths=widths,
            )
            uniform_form = Form(self.bits, user_group if channels else PER_TENSOR)
            if uniform_form not in forms:
                forms.append(uniform_form)
            candidates = []
            known = (stats or {}).get(weight.name)
            if memo is not None:  # forms differing only in bits: one shared DP
                self._cluster_widths(weight, qmax, forms, memo, known)
            palettized = {
                form: self._narrow(
                    self._cluster(weight, qmax, form, probing=True, memo=memo, stats=known)[0]
                )
                for form in forms
            }
            # each form's dense values once, the original's float64 copy once per weight
            # (minilm: 435 dense() and 227 copies of the original for 206 forms); with an
            # importance, the error scaling the unprobed forms is weighted by it too
            weight_error = _RelativeError(dense.numpy(), known.importance if known else None)
            uniform_values = palettized[uniform_form].dense()
            if not measure_all:
                reference = weight_error(uniform_values)
                measured = probe.mean_error({weight.name: uniform_values})
            for form, p in palettized.items():
                values = uniform_values if form == uniform_form else p.dense()
                if measure_all or reference <= 0:
                    error = probe.mean_error({weight.name: values})
                else:
                    error = measured * weight_error(values) / reference
                stored = palette_storage.footprint(p, weight.name, opset, self.packing)
                if self.storage == "dense" or stored.bytes >= dense.nbytes:
                    candidates.append(Candidate(form, int(dense.nbytes), error))  # stored dense
                else:
                    table.function_bytes.update(stored.functions)
                    candidates.append(
                        Candidate(form, stored.bytes, error, frozenset(stored.functions))
                    )
                table.palettes[(weight.name, form)] = p
            if max(c.error for c in candidates) <= UNSEEN_ERROR:
                # The probe saw no change (a weight read inside an If/Loop body, which ORT
                # does not let a feed override): its own relative error stands in, so more
                # bits still rank as safer.
                candidates = [
                    dataclasses.replace(c, error=weight_error(palettized[c.form].dense()))
                    for c in candidates
                ]
            candidates.append(Candidate(Form(FLOAT), int(dense.nbytes), 0.0))
            table.uniform.append(forms.index(uniform_form))
            table.rows.append(candidates)
        return table

    def smallest_weight(self, *, searching: bool) -> int:
        """Elements a weight needs to be clustered (min_elements, or its default);
        `searching`: the run has an accuracy target to meet (data.accept)."""
        if self.min_elements is not None:
            return self.min_elements
        searching = self.allocation == "target" and searching
        return 16 if self.allocation == "mixed" or searching else 256

    def _probe_exact_limit(self, bits: int) -> int:
        """The k-means DP's value limit for a candidate form (at least 4 bins per entry)."""
        limit = PROBE_EXACT_LIMIT
        if self.allocation == "target":
            limit = max(EFFORT[self.effort].exact_limit, 4 << bits)
        return min(self.exact_limit, limit)

    def _narrow(self, p: Palettized) -> Palettized:
        """The palette in the storage type `palette_dtype` asks for."""
        if self.palette_dtype == "float16" or (
            self.palette_dtype == "auto" and p.groups > 1 and p.dtype == np.float32
        ):
            return p.narrowed(np.float16) if p.dtype == np.float32 else p
        return p

    def _qmax(self) -> int | None:
        if not self.int8_grid:
            return None
        reduce_range = self.reduce_range
        if reduce_range is None:
            reduce_range = resolve_target("auto").reduce_range
        return 64 if reduce_range else 127

    def _cluster(
        self,
        weight: Weight,
        qmax: int | None,
        form: Form | None = None,
        probing: bool = False,
        memo: Clustered | None = None,
        stats: WeightStats | None = None,
    ) -> tuple[Palettized, dict[str, Any]]:
        """Weight clustered at the options' bits and granularity, or at `form`'s. `probing`
        (many forms per weight): the DP on a coarser histogram, and Lloyd from k-means++
        from PROBE_LLOYD_BITS up (within a few % of the optimum there, 10x faster).

        `memo`: a clustering at a `form` is kept there and handed back when the same
        weight, form and `probing` come again (the search's chosen forms, written after
        the probes clustered them: minilm_l3_paraphrase clustered 21 of its 206 forms twice).
        `stats`: the weight's k-means weights and X^T X (importance.py; one per weight a run):
        with X^T X the indices are chosen with error feedback (assign.py).
        """
        key = (weight.name, form, probing)
        if memo is not None and form is not None and key in memo:
            p, row = memo[key]
            return p, dict(row)
        p, row = self._clustered(weight, qmax, form, probing, stats)
        if memo is not None and form is not None:
            memo[key] = (p, dict(row))
        return p, row

    def _clustered(
        self,
        weight: Weight,
        qmax: int | None,
        form: Form | None,
        probing: bool,
        stats: WeightStats | None = None,
    ) -> tuple[Palettized, dict[str, Any]]:
        """_cluster's work: the clustering and its report row."""
        tensor = weight.value.const_value
        assert tensor is not None
        array = tensor.numpy()
        bits, axis, group_size, init, exact_limit, sample = self._settings(
            weight, array, qmax, form, probing
        )
        p, exact = cluster_tensor(
            array,
            bits,
            axis=axis,
            group_size=group_size,
            init=init,
            seed=self.seed,
            keep_zero=self.keep_zero,
            exact_limit=exact_limit,
            sample=sample,
            importance=stats.importance if stats else None,
        )
        return self._assigned(*self._finished(weight, array, p, exact, axis, qmax), array, stats)

    def _cluster_widths(
        self,
        weight: Weight,
        qmax: int | None,
        forms: list[Form],
        memo: Clustered,
        stats: WeightStats | None = None,
    ) -> None:
        """The probing clusterings of `forms` into `memo`, forms that differ only in their
        bits (the optimal DP, the same groups, histogram and sample) clustered together
        (palette.cluster_tensor_widths): the same palettes as one by one, a shared DP."""
        tensor = weight.value.const_value
        assert tensor is not None
        array = tensor.numpy()
        together: dict[tuple[Any, ...], list[Form]] = {}
        for form in forms:
            if (weight.name, form, True) in memo:
                continue
            bits, *rest = self._settings(weight, array, qmax, form, True)
            if rest[2] == "optimal":
                together.setdefault(tuple(rest), []).append(form)
        for (axis, group_size, _, exact_limit, sample), shared in together.items():
            if len(shared) < 2:
                continue
            solved = cluster_tensor_widths(
                array,
                [form.bits for form in shared],
                axis=axis,
                group_size=group_size,
                seed=self.seed,
                keep_zero=self.keep_zero,
                exact_limit=exact_limit,
                sample=sample,
                importance=stats.importance if stats else None,
            )
            for form in shared:
                p, row = self._assigned(
                    *self._finished(weight, array, *solved[form.bits], axis, qmax), array, stats
                )
                memo[(weight.name, form, True)] = (p, dict(row))

    def _settings(
        self, weight: Weight, array: np.ndarray, qmax: int | None, form: Form | None, probing: bool
    ) -> tuple[int, int | None, int, str, int, int | None]:
        """bits, axis, group size, init, exact_limit and sample of one clustering."""
        bits = form.bits if form is not None else self.bits
        if form is not None:
            axis = weight.axis if form.group_size != PER_TENSOR else None
            group_size = max(form.group_size, 1)
        else:
            axis = weight.axis if self.granularity == "per-channel-group" else None
            group_size = self.group_size
        if axis is not None and qmax is None and array.ndim:
            # A palette should be backed by MIN_VALUES_PER_ENTRY values per entry on average:
            # channels smaller than that (depthwise 3x3) share a palette with their neighbours.
            per_channel_size = array.size // max(array.shape[axis], 1)
            needed = math.ceil(MIN_VALUES_PER_ENTRY * (1 << bits) / max(per_channel_size, 1))
            group_size = min(max(group_size, needed), array.shape[axis])
        return (
            bits,
            axis,
            group_size,
            "kmeans++" if probing and bits >= PROBE_LLOYD_BITS else self.init,
            self._probe_exact_limit(bits) if probing else self.exact_limit,
            EFFORT[self.effort].sample if probing and self.allocation == "target" else None,
        )

    @staticmethod
    def _assigned(
        p: Palettized, row: dict[str, Any], array: np.ndarray, stats: WeightStats | None
    ) -> tuple[Palettized, dict[str, Any]]:
        """The indices chosen with error feedback where the weight has X^T X (assign.py)."""
        if stats is None or stats.hessian is None:
            return p, row
        return assign(p, array, stats.hessian), row

    def _finished(
        self,
        weight: Weight,
        array: np.ndarray,
        p: Palettized,
        exact: bool,
        axis: int | None,
        qmax: int | None,
    ) -> tuple[Palettized, dict[str, Any]]:
        """The clustering snapped onto the int8 grid (qmax), and its report row."""
        bits = p.bits
        snapped = qmax is not None and p.dtype == np.float32
        if snapped:
            assert qmax is not None
            for _ in range(_SNAP_ROUNDS):  # snapping moves values: re-assign, re-snap until stable
                p = snap_int8(p, qmax)
                moved = reassign(p, array)
                if np.array_equal(moved.indices, p.indices):
                    break
                p = moved
            p = snap_int8(p, qmax)
        zeros = int(np.count_nonzero(array == 0))
        row = {
            "weight": weight.name,
            "readers": weight.readers,
            "ops": weight.ops,
            "shape": list(array.shape),
            "elements": int(array.size),
            "bits": bits,
            "granularity": "per-channel-group" if axis is not None else "per-tensor",
            "palette_size": p.k,
            "groups": p.groups,
            "axis": axis,
            "exact": exact,
            "zero_kept": bool(zeros and np.all((p.dense() == 0) == (array == 0))),
            "sparsity": zeros / array.size if array.size else 0.0,
            "int8_grid": snapped,
            "dense_bytes": int(array.nbytes),
            "_original": array,
        }
        if qmax is not None and not snapped:
            row["note"] = f"{p.dtype} weight: int8 grid applies to float32 only"
        return p, row


def prepare(model: ir.Model) -> list[str]:
    """Make weights plain initializers: expand earlier palettes and sparse packs, lift Constants."""
    notes = []
    if RemoveInitializersFromInputsPass()(model).modified:
        notes.append(
            "weights listed as graph inputs made plain initializers (ORT folds only those)"
        )
    if palette_storage.UnpackPalette()(model).modified:
        notes.append("palettized weights expanded before re-clustering")
    if UnpackSparseWeights()(model).modified:
        notes.append("sparse-packed weights expanded (zeros are kept as a palette entry)")
    if lift_constants(model):
        notes.append("Constant nodes made initializers")
    name_nodes(model)
    return notes


def _relative_error(original: np.ndarray, clustered: np.ndarray) -> float:
    """||W - Wc||^2 / ||W||^2."""
    return _RelativeError(original)(clustered)


class _RelativeError:
    """||W - Wc||^2 / ||W||^2 of many Wc against one W (its float64 copy and energy kept);
    with `importance`, every square weighted by it (the output error's diagonal estimate)."""

    def __init__(self, original: np.ndarray, importance: np.ndarray | None = None) -> None:
        self.original = original.astype(np.float64)
        self.importance = importance
        self.energy = self._sum(self.original * self.original)

    def _sum(self, squares: np.ndarray) -> float:
        if self.importance is None:
            return float(np.sum(squares))
        return float(np.sum(squares * self.importance))

    def __call__(self, clustered: np.ndarray) -> float:
        if self.energy <= 0:
            return 0.0
        return self._sum((self.original - clustered.astype(np.float64)) ** 2) / self.energy


def _store(
    model: ir.Model,
    options: ClusterWeights,
    *,
    rows: list[dict[str, Any]],
    skipped: list,
    layers: list,
    notes: list[str],
    seconds: float,
    allocation: dict[str, Any] | None = None,
) -> None:
    model.meta[SUMMARY_KEY] = {
        "bits": options.bits,
        "allocation": options.allocation,
        "allocated": allocation,
        "init": options.init,
        "granularity": options.granularity,
        "group_size": options.group_size if options.granularity == "per-channel-group" else None,
        "refined": any(layer.get("refit") for layer in layers),
        "int8_grid": options.int8_grid,
        "storage": options.storage,
        "weights": rows,
        "layers": layers,
        "skipped": [s.to_dict() for s in skipped],
        "notes": notes,
        "seconds": seconds,
    }


def summary(model: ir.Model) -> dict[str, Any]:
    """What the last cluster-weights run on `model` recorded (empty if none)."""
    return dict(model.meta.get(SUMMARY_KEY, {}) or {})
