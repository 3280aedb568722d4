"""Streaming statistics of activation tensors, and the calibration methods that read them.

Why streaming: calibration sets can be large (ORT's calibrators keep every fetched
tensor and run out of memory, ORT #21979). Here each tensor keeps a running min/max
and one fixed-size histogram, so memory is flat whatever the number of samples, and
feeds of different shapes (variable-length text) are just more values.

The histogram's range grows with the data. Growing never redistributes counts by
guesswork: the new bin width is an integer multiple k of the old one and the new
origin lies on an old bin edge, so every old bin falls wholly inside one new bin
and the merge is exact (it only coarsens resolution by k, at most log2(range
growth) times).

Methods (each returns a `Range`, lo <= 0 <= hi is not enforced here; the
quantizer includes zero when it computes scales):
  minmax      the observed extremes;
  percentile  clip each tail at `percentile` (e.g. 99.99 keeps 99.99 % of values
              at or inside hi and 99.99 % at or inside lo);
  entropy     TensorRT's KL-divergence threshold search: choose the clip that
              minimizes KL(P || Q) between the clipped reference distribution P and
              its `levels`-level quantized version Q; two-sided tensors are folded
              to |x| and searched with half the levels, one-sided tensors use all;
  mse         choose the clip that minimizes the expected squared quantization
              error: clipping error of the values outside plus step^2/12 inside.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

DEFAULT_BINS = 2048
# Values beyond this magnitude are masks or sentinels (finfo.min additive masks,
# -inf paddings), never signal: a tensor carrying them is marked `extreme` and its
# histogram stops (its range would otherwise swallow every bin).
EXTREME_MAGNITUDE = 1e30
METHODS = ("minmax", "percentile", "entropy", "mse")
# Histograms of larger tensors count an evenly strided subset (min/max stay exact):
# 2^16 values per tensor and feed (millions over a calibration set) pin the 99.99th
# percentile to about a bin, at a quarter of the cost of counting every value.
SAMPLE_ELEMENTS = 1 << 16


@dataclass(frozen=True)
class Range:
    """A calibrated float range [lo, hi] of one tensor."""

    lo: float
    hi: float

    def with_zero(self) -> Range:
        """The range widened to contain 0, as affine quantization needs."""
        return Range(min(self.lo, 0.0), max(self.hi, 0.0))


class StreamingHistogram:
    """A fixed number of equal-width bins whose covered range grows exactly by merging."""

    __slots__ = ("bins", "lo", "width", "counts")

    def __init__(self, bins: int = DEFAULT_BINS) -> None:
        if bins < 8:
            raise ValueError("a histogram needs at least 8 bins")
        self.bins = bins
        self.lo = 0.0
        self.width = 0.0  # 0 until the first finite value arrives
        self.counts = np.zeros(bins, dtype=np.int64)

    @property
    def hi(self) -> float:
        return self.lo + self.width * self.bins

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def edges(self) -> np.ndarray:
        return self.lo + self.width * np.arange(self.bins + 1, dtype=np.float64)

    def centers(self) -> np.ndarray:
        return self.lo + self.width * (np.arange(self.bins, dtype=np.float64) + 0.5)

    def add(
        self,
        values: np.ndarray,
        vmin: float | None = None,
        vmax: float | None = None,
        sample: int | None = SAMPLE_ELEMENTS,
    ) -> None:
        """Count finite `values` (any shape); `vmin`/`vmax` may be passed if already known.

        Above `sample` elements, an evenly strided subset is counted, each value
        weighted by the stride (an odd stride, so it cycles through power-of-two
        channel and spatial sizes instead of aliasing with them).
        """
        flat = values.reshape(-1)
        if flat.size == 0:
            return
        if vmin is None or vmax is None:
            vmin, vmax = float(flat.min()), float(flat.max())
        self._cover(vmin, vmax)
        weight = 1
        if sample is not None and flat.size > sample:
            weight = (flat.size + sample - 1) // sample | 1
            flat = flat[::weight]
        scale = 1.0 / self.width
        if flat.dtype == np.float64:
            index = (flat - self.lo) * scale
        else:
            index = np.multiply(flat, np.float32(scale))
            index -= np.float32(self.lo * scale)
        index = np.clip(index, 0, self.bins - 1, out=index).astype(np.intp)
        counts = np.bincount(index, minlength=self.bins)[: self.bins]
        self.counts += counts * weight if weight > 1 else counts

    def _cover(self, vmin: float, vmax: float) -> None:
        """Grow (by exact merging) so that [vmin, vmax] lies inside the bins."""
        if self.width == 0.0:
            span = vmax - vmin
            if span <= 0.0:  # a constant so far: a small range around it
                span = max(abs(vmin), 1.0) * 1e-6
                vmin -= span / 2
            self.lo = vmin
            self.width = span * (1.0 + 1e-6) / self.bins
            return
        if vmin >= self.lo and vmax < self.hi:
            return
        low, high = min(vmin, self.lo), max(vmax, self.hi)
        factor = max(2, math.ceil((high - low) * (1.0 + 1e-9) / (self.width * self.bins)))
        while True:
            span = factor * self.width * self.bins
            # `shift` old bins are added below the old origin; it must keep [low, high] covered.
            least = math.ceil((self.lo - low) / self.width - 1e-9)
            most = math.floor((self.lo + span - high) / self.width + 1e-9)
            if least <= most:
                break
            factor += 1
        # Put the new slack where the data grew: above, below, or on both sides.
        grew_low, grew_high = vmin < self.lo, vmax >= self.hi
        if grew_low and not grew_high:
            shift = most
        elif grew_high and not grew_low:
            shift = least
        else:
            shift = (least + most) // 2
        new_lo = self.lo - shift * self.width
        # Old bin i covers [lo + i w, lo + (i+1) w); it lands in new bin (i + shift) // factor.
        # Computed in floats on bin centres so huge shifts cannot overflow integers.
        old_centres = (np.arange(self.bins, dtype=np.float64) + 0.5 + shift) / factor
        target = np.minimum(old_centres.astype(np.intp), self.bins - 1)
        self.counts = np.bincount(target, weights=self.counts, minlength=self.bins)[
            : self.bins
        ].astype(np.int64)
        self.lo = new_lo
        self.width *= factor


@dataclass(frozen=True)
class Summary:
    """Min, max and shape of one tensor, reduced inside ONNX Runtime (no copy fetched)."""

    min: float
    max: float
    shape: tuple[int, ...]


@dataclass
class TensorStats:
    """Running statistics of one tensor over every batch seen."""

    min: float = math.inf
    max: float = -math.inf
    count: int = 0
    nonfinite: int = 0
    extreme: bool = False
    histogram: StreamingHistogram | None = None
    shapes: set[tuple[int, ...]] = field(default_factory=set)

    @classmethod
    def with_histogram(cls, bins: int = DEFAULT_BINS) -> TensorStats:
        return cls(histogram=StreamingHistogram(bins))

    @property
    def observed(self) -> bool:
        return self.count > 0 and math.isfinite(self.min)

    def update(self, array: np.ndarray | Summary) -> None:
        """Fold one fetched tensor (or its in-runtime Summary) into the statistics."""
        if isinstance(array, Summary):
            self._update_summary(array)
            return
        if array.size == 0:
            return
        if len(self.shapes) < 8:
            self.shapes.add(tuple(array.shape))
        values = array if array.dtype in (np.float32, np.float64) else array.astype(np.float32)
        vmin, vmax = float(values.min()), float(values.max())
        if not (math.isfinite(vmin) and math.isfinite(vmax)):
            finite_mask = np.isfinite(values)
            finite = values[finite_mask]
            self.nonfinite += int(values.size - finite.size)
            self.extreme = True
            if finite.size == 0:
                self.count += int(values.size)
                return
            values = finite
            vmin, vmax = float(values.min()), float(values.max())
        self.count += int(array.size)
        self.min = min(self.min, vmin)
        self.max = max(self.max, vmax)
        if max(abs(vmin), abs(vmax)) >= EXTREME_MAGNITUDE:
            self.extreme = True
        if self.histogram is not None and not self.extreme:
            self.histogram.add(values, vmin, vmax)

    def _update_summary(self, summary: Summary) -> None:
        size = int(np.prod(summary.shape)) if summary.shape else 1
        if size == 0:
            return
        if len(self.shapes) < 8:
            self.shapes.add(tuple(summary.shape))
        self.count += size
        vmin, vmax = summary.min, summary.max
        if not (math.isfinite(vmin) and math.isfinite(vmax)):
            self.extreme = True  # +-inf (NaN is skipped by the runtime's reductions)
            self.nonfinite += 1
            vmin = vmin if math.isfinite(vmin) else self.min
            vmax = vmax if math.isfinite(vmax) else self.max
        self.min = min(self.min, vmin)
        self.max = max(self.max, vmax)
        if math.isfinite(self.min) and max(abs(self.min), abs(self.max)) >= EXTREME_MAGNITUDE:
            self.extreme = True

    def minmax(self) -> Range:
        return Range(self.min, self.max)


def compute_range(
    stats: TensorStats, method: str = "minmax", *, percentile: float = 99.99, levels: int = 256
) -> Range:
    """The clip range of `stats` under `method`; falls back to min/max without a histogram."""
    if method not in METHODS:
        raise ValueError(
            f"unknown calibration method {method!r}; expected one of {', '.join(METHODS)}"
        )
    if not stats.observed:
        raise ValueError("tensor was never observed")
    hist = stats.histogram
    if (
        method == "minmax"
        or hist is None
        or hist.width == 0.0
        or hist.total == 0
        or stats.min == stats.max
    ):
        return stats.minmax()
    if method == "percentile":
        return _percentile_range(stats, hist, percentile)
    if method == "entropy":
        return _entropy_range(stats, hist, levels)
    return _mse_range(stats, hist, levels)


def _percentile_range(stats: TensorStats, hist: StreamingHistogram, percentile: float) -> Range:
    if not 50.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (50, 100], got {percentile}")
    if percentile == 100.0:
        return stats.minmax()
    cdf = np.cumsum(hist.counts, dtype=np.float64)
    cdf /= cdf[-1]
    edges = hist.edges()
    tail = 1.0 - percentile / 100.0

    def quantile(q: float) -> float:
        i = int(np.searchsorted(cdf, q, side="left"))
        i = min(i, hist.bins - 1)
        below = cdf[i - 1] if i > 0 else 0.0
        inside = cdf[i] - below
        frac = (q - below) / inside if inside > 0 else 0.5
        return float(edges[i] + frac * hist.width)

    lo = stats.min if stats.min >= 0.0 else max(stats.min, min(quantile(tail), 0.0))
    hi = stats.max if stats.max <= 0.0 else min(stats.max, max(quantile(1.0 - tail), 0.0))
    return Range(lo, hi)


def _magnitude_histogram(stats: TensorStats, hist: StreamingHistogram) -> tuple[np.ndarray, float]:
    """Counts of |x| on [0, max|x|] with as many bins as `hist`, from bin centres."""
    amax = max(abs(stats.min), abs(stats.max))
    width = amax / hist.bins
    centres = np.abs(hist.centers())
    index = np.minimum((centres / width).astype(np.intp), hist.bins - 1)
    counts = np.bincount(index, weights=hist.counts, minlength=hist.bins)[: hist.bins]
    return counts, width


def _entropy_range(stats: TensorStats, hist: StreamingHistogram, levels: int) -> Range:
    counts, width = _magnitude_histogram(stats, hist)
    two_sided = stats.min < 0.0 < stats.max
    if not two_sided:
        # A one-sided tensor (after ReLU) holds a spike of exact zeros that every clip
        # represents exactly; left in, it dominates P and drives KL to clip far too much.
        counts = counts.copy()
        counts[0] = 0
    target = max(levels // 2, 2) if two_sided else max(levels - 1, 2)
    threshold_bin = kl_threshold_bin(counts, target)
    threshold = threshold_bin * width
    if two_sided:
        return Range(max(stats.min, -threshold), min(stats.max, threshold))
    if stats.min >= 0.0:
        return Range(stats.min, min(stats.max, threshold))
    return Range(max(stats.min, -threshold), stats.max)


def kl_threshold_bin(counts: np.ndarray, target_bins: int, max_candidates: int = 128) -> int:
    """TensorRT's entropy calibration: the number of leading bins to keep.

    For each candidate i, P is counts[:i] with the outliers added to its last bin,
    Q is counts[:i] merged into `target_bins` groups and spread back evenly over each
    group's non-empty bins; the i with the smallest KL(P || Q) wins.
    """
    counts = np.asarray(counts, dtype=np.float64)
    nbins = len(counts)
    nonzero = np.nonzero(counts)[0]
    if len(nonzero) == 0:
        return nbins
    last = int(nonzero[-1]) + 1
    if last <= target_bins:
        return last
    step = max(1, (last - target_bins) // max_candidates)
    candidates = list(range(target_bins, last + 1, step))
    if candidates[-1] != last:
        candidates.append(last)
    suffix = np.concatenate([np.cumsum(counts[::-1])[::-1], [0.0]])
    best_i, best_kl = last, math.inf
    for i in candidates:
        p = counts[:i].copy()
        p[-1] += suffix[i]
        groups = (np.arange(i) * target_bins) // i
        used = counts[:i] > 0
        group_sum = np.bincount(groups, weights=counts[:i], minlength=target_bins)
        group_used = np.bincount(groups, weights=used.astype(np.float64), minlength=target_bins)
        per_bin = np.divide(
            group_sum, group_used, out=np.zeros_like(group_sum), where=group_used > 0
        )
        q = np.where(used, per_bin[groups], 0.0)
        kl = _kl(p, q)
        if kl < best_kl:
            best_i, best_kl = i, kl
    return best_i


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    p_total, q_total = p.sum(), q.sum()
    if p_total <= 0 or q_total <= 0:
        return math.inf
    p = p / p_total
    q = q / q_total
    mask = p > 0
    q_masked = np.where(q[mask] > 0, q[mask], 1e-12)  # P mass where Q has none: heavy penalty
    return float(np.sum(p[mask] * np.log(p[mask] / q_masked)))


def _mse_range(
    stats: TensorStats, hist: StreamingHistogram, levels: int, candidates: int = 96
) -> Range:
    """The clip [lo, hi] minimizing expected squared quantization error, by coordinate descent.

    Each end is searched over `candidates` fractions of its observed extreme with the
    other end fixed (two rounds), so a lone outlier on one side is clipped without
    shrinking the other side.
    """
    lo0, hi0 = min(stats.min, 0.0), max(stats.max, 0.0)
    keep = hist.counts > 0
    centres, counts = hist.centers()[keep], hist.counts[keep].astype(np.float64)
    fractions = np.linspace(1.0 / candidates, 1.0, candidates)
    lo, hi = lo0, hi0
    for _ in range(2):
        if hi0 > 0:
            hi = (
                float(
                    fractions[
                        np.argmin(
                            _mse(centres, counts, np.full(candidates, lo), fractions * hi0, levels)
                        )
                    ]
                )
                * hi0
            )
        if lo0 < 0:
            lo = (
                float(
                    fractions[
                        np.argmin(
                            _mse(centres, counts, fractions * lo0, np.full(candidates, hi), levels)
                        )
                    ]
                )
                * lo0
            )
    return Range(
        max(stats.min, lo) if stats.min < 0 else stats.min,
        min(stats.max, hi) if stats.max > 0 else stats.max,
    )


def _mse(
    centres: np.ndarray, counts: np.ndarray, lo: np.ndarray, hi: np.ndarray, levels: int
) -> np.ndarray:
    """Expected squared error of quantizing the histogram into [lo_k, hi_k], per candidate k."""
    lo, hi = lo[:, None], hi[:, None]
    step = (hi - lo) / max(levels - 1, 1)
    below = np.clip(lo - centres, 0.0, None)
    above = np.clip(centres - hi, 0.0, None)
    inside = (below == 0) & (above == 0)
    error = below**2 + above**2 + np.where(inside, step**2 / 12.0, 0.0)
    return error @ counts
