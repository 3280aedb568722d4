"""Streaming range statistics: exact histogram growth, flat memory, and the four methods."""

from __future__ import annotations

import numpy as np
import pytest

from onnxslim.passes.quantize.ranges import (
    METHODS,
    StreamingHistogram,
    TensorStats,
    compute_range,
    kl_threshold_bin,
)


def test_growing_histogram_equals_numpy_histogram_on_final_edges():
    rng = np.random.default_rng(0)
    hist = StreamingHistogram(64)
    seen = []
    for i in range(40):  # ranges drift both ways and grow
        batch = (rng.standard_normal(500) * (1 + 0.2 * i) + (-1) ** i * 0.3 * i).astype(np.float64)
        hist.add(batch)
        seen.append(batch)
    values = np.concatenate(seen)
    reference, _ = np.histogram(values, bins=hist.edges())
    assert hist.total == values.size
    assert np.array_equal(reference, hist.counts)
    assert hist.lo <= values.min() and values.max() < hist.hi
    # Slack stays bounded: the data span at least a quarter of the bins.
    assert (values.max() - values.min()) >= 0.25 * (hist.hi - hist.lo)


def test_constant_then_huge_values_do_not_overflow():
    hist = StreamingHistogram(32)
    hist.add(np.array([1.0, 1.0]))
    hist.add(np.array([1e20, -5.0]))
    assert hist.total == 4 and hist.lo <= -5.0 and hist.hi > 1e20


def test_stats_memory_is_fixed_size():
    stats = TensorStats.with_histogram(256)
    rng = np.random.default_rng(1)
    for n in (3, 50, 7, 1000):  # different shapes, as variable-length feeds give
        stats.update(rng.standard_normal((2, n)).astype(np.float32))
    assert stats.histogram is not None and stats.histogram.counts.shape == (256,)
    assert stats.count == 2 * (3 + 50 + 7 + 1000)


def test_mask_constants_mark_tensor_extreme_and_keep_true_min():
    stats = TensorStats.with_histogram()
    stats.update(np.array([[0.0, 1.0, np.finfo(np.float32).min]], np.float32))
    stats.update(np.array([np.inf, 2.0], np.float32))
    assert stats.extreme and stats.nonfinite == 1
    assert stats.max == 2.0 and stats.min < -1e38


@pytest.mark.parametrize("method", METHODS)
def test_methods_on_gaussian_clip_sensibly(method):
    rng = np.random.default_rng(2)
    stats = TensorStats.with_histogram()
    for _ in range(10):
        stats.update(rng.standard_normal(20000).astype(np.float32))
    r = compute_range(stats, method)
    assert stats.min <= r.lo < 0 < r.hi <= stats.max
    if method != "minmax":
        assert r.hi < stats.max and r.lo > stats.min  # every clipping method clips the tails
        assert 2.0 < r.hi and r.lo < -2.0  # but keeps the bulk of N(0, 1)


@pytest.mark.parametrize("method", METHODS)
def test_one_sided_tensor_keeps_zero_floor(method):
    rng = np.random.default_rng(3)
    stats = TensorStats.with_histogram()
    for _ in range(5):
        stats.update(np.maximum(rng.standard_normal(10000), 0).astype(np.float32))
    r = compute_range(stats, method)
    assert r.lo == 0.0 and 0.5 < r.hi <= stats.max


def test_percentile_matches_numpy_quantile():
    rng = np.random.default_rng(4)
    values = rng.laplace(size=200000).astype(np.float32)
    stats = TensorStats.with_histogram()
    for chunk in np.array_split(values, 13):
        stats.update(chunk)
    r = compute_range(stats, "percentile", percentile=99.9)
    width = (stats.max - stats.min) / 2048 * 4  # growth may coarsen bins up to 4x
    assert abs(r.hi - np.quantile(values, 0.999)) < width + 1e-3
    assert abs(r.lo - np.quantile(values, 0.001)) < width + 1e-3


def test_rare_outlier_is_clipped_by_entropy_and_percentile():
    rng = np.random.default_rng(5)
    stats = TensorStats.with_histogram()
    for _ in range(5):
        stats.update(np.concatenate([rng.standard_normal(50000), [80.0]]).astype(np.float32))
    for method in ("entropy", "percentile"):
        assert compute_range(stats, method).hi < 20.0, method
    assert compute_range(stats, "minmax").hi == 80.0


def test_mse_range_has_lowest_quantization_error_among_methods():
    rng = np.random.default_rng(6)
    values = rng.laplace(size=100000).astype(np.float32)  # long tails on both sides
    stats = TensorStats.with_histogram()
    stats.update(values)

    def error(r):
        step = (r.hi - r.lo) / 255
        q = np.clip(np.round((values - r.lo) / step), 0, 255) * step + r.lo
        return float(np.mean((q - values) ** 2))

    errors = {m: error(compute_range(stats, m)) for m in METHODS}
    assert errors["mse"] <= min(errors.values()) * 1.05, errors
    assert errors["mse"] < 0.95 * errors["minmax"], errors


def test_kl_threshold_keeps_everything_when_few_bins_are_used():
    counts = np.zeros(2048)
    counts[:100] = 1
    assert kl_threshold_bin(counts, 128) == 100


def test_bad_method_and_percentile_are_value_errors():
    stats = TensorStats.with_histogram()
    stats.update(np.arange(10, dtype=np.float32))
    with pytest.raises(ValueError):
        compute_range(stats, "nope")
    with pytest.raises(ValueError):
        compute_range(stats, "percentile", percentile=20)
