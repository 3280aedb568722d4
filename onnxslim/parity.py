"""Compare two models' outputs: the figures every validation and guard reports.

Errors accumulate over all feeds. `max_rel` is the largest absolute error divided
by the largest magnitude of the reference output (scale-relative, so values near
zero do not blow it up); `passed` is numpy's allclose rule,
|cand - ref| <= atol + rtol * |ref| for every element, and exact equality for
integer and boolean outputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from onnxslim.outputs import is_classifier_output


@dataclass(frozen=True)
class OutputParity:
    """Agreement of one output over every feed compared."""

    name: str
    max_abs: float
    max_rel: float
    cosine: float
    snr_db: float
    top1_agreement: float | None
    mismatched: int
    elements: int
    passed: bool

    def to_dict(self) -> dict[str, object]:
        return {k: _json_float(v) for k, v in asdict(self).items()}


class _Accumulator:
    def __init__(self, name: str, atol: float, rtol: float) -> None:
        self.name, self.atol, self.rtol = name, atol, rtol
        self.max_abs = 0.0
        self.ref_scale = 0.0
        self.dot = self.ref_sq = self.cand_sq = self.err_sq = 0.0
        self.top1_hits = self.top1_total = 0
        self.mismatched = self.elements = 0
        self.exact = True

    def add(self, ref: np.ndarray, cand: np.ndarray) -> None:
        if ref.shape != cand.shape:
            raise ValueError(
                f"output {self.name!r}: shape {cand.shape} differs from reference {ref.shape}"
            )
        self.elements += ref.size
        if ref.dtype.kind not in "biufc" or cand.dtype.kind not in "biufc":
            # strings and objects: equal or not (a string output cannot become a number)
            differ = int(np.count_nonzero(ref != cand))
            self.mismatched += differ
            self.max_abs = max(self.max_abs, math.inf if differ else 0.0)
            return
        if ref.dtype.kind not in "fc" or cand.dtype.kind not in "fc":
            self.mismatched += int(np.count_nonzero(ref != cand))
            self.max_abs = max(
                self.max_abs,
                float(
                    np.max(np.abs(ref.astype(np.float64) - cand.astype(np.float64)), initial=0.0)
                ),
            )
            self.ref_scale = max(
                self.ref_scale, float(np.max(np.abs(ref.astype(np.float64)), initial=0.0))
            )
            return
        self.exact = False
        r = ref.astype(np.float64)
        c = cand.astype(np.float64)
        both_nan = np.isnan(r) & np.isnan(c)
        same_inf = np.isinf(r) & (r == c)
        diff = np.where(both_nan | same_inf, 0.0, np.abs(r - c))
        diff = np.where(np.isnan(diff), np.inf, diff)
        finite_r = np.where(np.isfinite(r), r, 0.0)
        finite_c = np.where(np.isfinite(c), c, 0.0)
        self.max_abs = max(self.max_abs, float(np.max(diff, initial=0.0)))
        self.ref_scale = max(self.ref_scale, float(np.max(np.abs(finite_r), initial=0.0)))
        self.mismatched += int(np.count_nonzero(diff > self.atol + self.rtol * np.abs(finite_r)))
        self.dot += float(np.sum(finite_r * finite_c))
        self.ref_sq += float(np.sum(finite_r * finite_r))
        self.cand_sq += float(np.sum(finite_c * finite_c))
        self.err_sq += float(np.sum(np.where(np.isfinite(diff), diff, 0.0) ** 2))
        if is_classifier_output(self.name, r.shape, ref.dtype):
            self.top1_hits += int(np.count_nonzero(np.argmax(r, -1) == np.argmax(c, -1)))
            self.top1_total += int(np.prod(r.shape[:-1]))

    def result(self) -> OutputParity:
        if self.exact:
            cosine = 1.0 if self.mismatched == 0 else float("nan")
            snr = math.inf if self.mismatched == 0 else float("nan")
        else:
            denom = math.sqrt(self.ref_sq * self.cand_sq)
            cosine = (
                self.dot / denom if denom > 0 else (1.0 if self.ref_sq == self.cand_sq else 0.0)
            )
            snr = (
                math.inf
                if self.err_sq == 0
                else 10 * math.log10(max(self.ref_sq, 1e-300) / self.err_sq)
            )
        max_rel = (
            self.max_abs / self.ref_scale
            if self.ref_scale > 0
            else (0.0 if self.max_abs == 0 else math.inf)
        )
        top1 = self.top1_hits / self.top1_total if self.top1_total else None
        return OutputParity(
            self.name,
            self.max_abs,
            max_rel,
            cosine,
            snr,
            top1,
            self.mismatched,
            self.elements,
            self.mismatched == 0,
        )


def compare_outputs(
    reference: Sequence[Mapping[str, np.ndarray]],
    candidate: Sequence[Mapping[str, np.ndarray]],
    *,
    atol: float = 1e-5,
    rtol: float = 1e-5,
) -> list[OutputParity]:
    """Per-output parity of `candidate` against `reference`, feed by feed."""
    if len(reference) != len(candidate):
        raise ValueError("reference and candidate were run on different numbers of feeds")
    if not reference:
        return []
    comparer = OutputComparer(list(reference[0]), atol=atol, rtol=rtol)
    for ref_outputs, cand_outputs in zip(reference, candidate, strict=True):
        comparer.add(ref_outputs, cand_outputs)
    return comparer.results()


class OutputComparer:
    """compare_outputs one feed at a time, so a long validation need not keep every output."""

    def __init__(self, names: Sequence[str], *, atol: float = 1e-5, rtol: float = 1e-5) -> None:
        self.names = list(names)
        self._accumulators = {n: _Accumulator(n, atol, rtol) for n in self.names}

    def add(self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]) -> None:
        """Fold one feed's outputs in; raises ValueError on a missing output or a shape change."""
        missing = [n for n in self.names if n not in candidate]
        if missing:
            raise ValueError(f"candidate model lacks output(s) {', '.join(missing)}")
        for name in self.names:
            self._accumulators[name].add(np.asarray(reference[name]), np.asarray(candidate[name]))

    def results(self) -> list[OutputParity]:
        return [acc.result() for acc in self._accumulators.values()]


def _json_float(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value
