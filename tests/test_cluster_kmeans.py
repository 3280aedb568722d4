"""1-D k-means (passes/cluster/kmeans.py): the DP is optimal, batching is neutral, zeros stay."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from onnxslim.passes.cluster.kmeans import (
    INITS,
    cluster_1d,
    cluster_many,
    lloyd,
    optimal_centers,
    optimal_centers_many,
    sse,
)
from onnxslim.passes.cluster.palette import cluster_tensor, distinct, reassign, snap_int8


def brute_force_sse(values: np.ndarray, k: int) -> float:
    """Best k-clustering of sorted 1-D values by trying every split into contiguous runs."""
    xs = np.sort(values)
    best = np.inf
    for cuts in itertools.combinations(range(1, len(xs)), k - 1):
        best = min(best, sum(float(((run - run.mean()) ** 2).sum()) for run in np.split(xs, cuts)))
    return best


def test_optimal_equals_brute_force_on_tiny_inputs():
    rng = np.random.default_rng(0)
    for _ in range(60):
        n = int(rng.integers(3, 11))
        k = int(rng.integers(1, n))
        values = rng.normal(size=n) * rng.choice([1e-3, 1.0, 1e3])
        result = cluster_1d(values, k, init="optimal")
        assert result.exact
        assert sse(values, result) == pytest.approx(brute_force_sse(values, k), rel=1e-9, abs=1e-12)


def test_optimal_with_duplicates_and_weights_equals_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(20):
        values = rng.integers(-4, 5, size=12).astype(np.float64)
        k = int(rng.integers(1, 5))
        result = cluster_1d(values, k, keep_zero=False)  # integers hold zeros: not a pruned tensor
        assert sse(values, result) == pytest.approx(brute_force_sse(values, k), abs=1e-9)


@pytest.mark.parametrize("k", [2, 4, 16])
def test_dp_never_worse_than_lloyd(k):
    rng = np.random.default_rng(k)
    for trial in range(3):
        values = np.concatenate([rng.standard_t(3, 2000), rng.normal(3, 0.1, 300)])
        optimal = sse(values, cluster_1d(values, k, init="optimal"))
        for init in INITS[1:]:
            other = sse(values, cluster_1d(values, k, init=init, seed=trial))
            assert optimal <= other * (1 + 1e-12), (init, optimal, other)


def test_batched_dp_equals_one_by_one():
    rng = np.random.default_rng(2)
    sets = [np.sort(rng.normal(size=n)) for n in (40, 7, 300, 18)]
    weights = [rng.integers(1, 5, size=len(s)).astype(np.float64) for s in sets]
    batched = optimal_centers_many(sets, weights, 6)
    for points, w, centers in zip(sets, weights, batched, strict=True):
        np.testing.assert_allclose(centers, optimal_centers(points, w, 6), rtol=1e-12, atol=1e-12)


def test_histogram_path_is_close_to_exact_and_beats_kmeanspp():
    rng = np.random.default_rng(3)
    values = rng.standard_t(4, 20000)
    exact = cluster_1d(values, 16, exact_limit=1 << 15)
    binned = cluster_1d(values, 16, exact_limit=512)
    assert exact.exact and not binned.exact
    assert sse(values, binned) <= sse(values, exact) * 1.01
    assert sse(values, binned) <= sse(values, cluster_1d(values, 16, init="kmeans++"))


def test_fewer_distinct_values_than_k_are_kept_exactly():
    values = np.array([0.5, -1.0, 0.5, 2.0, -1.0])
    result = cluster_1d(values, 16)
    assert len(result.palette) == 16
    np.testing.assert_array_equal(result.values(), values)


def test_zero_is_its_own_cluster_for_a_pruned_tensor():
    rng = np.random.default_rng(4)
    w = rng.normal(size=(64, 64))
    w[rng.random(w.shape) < 0.6] = 0.0
    w[0, 0] = 1e-4  # a tiny non-zero must not become zero
    for init in INITS:
        result = cluster_1d(w, 8, init=init)
        np.testing.assert_array_equal(result.values() == 0, w == 0)
        assert np.count_nonzero(result.palette == 0) == 1


def test_dense_tensor_gets_no_forced_zero_entry():
    values = np.random.default_rng(5).normal(size=1000) + 3.0
    assert 0.0 not in cluster_1d(values, 4).palette


def test_bad_values_and_k():
    with pytest.raises(ValueError, match="NaN"):
        cluster_1d(np.array([1.0, np.nan, 2.0]), 2)
    with pytest.raises(ValueError, match="k must"):
        cluster_1d(np.ones(4), 0)
    with pytest.raises(ValueError, match="init"):
        cluster_many([np.ones(4)], 2, init="random")


def test_lloyd_reseeds_empty_clusters():
    points = np.array([0.0, 0.1, 0.2, 10.0, 10.1])
    centers = lloyd(points, np.ones(5), np.array([0.1, 50.0, 60.0]))
    assert (
        len(np.unique(centers)) == 3 and centers.max() <= 10.1
    )  # no centre left at its far-away start
    assigned = centers[np.argmin(np.abs(points[:, None] - centers[None, :]), axis=1)]
    assert float(np.sum((points - assigned) ** 2)) < 0.03


def test_per_channel_palettes_and_int8_snap():
    rng = np.random.default_rng(6)
    w = (rng.normal(size=(6, 5, 3, 3)) * rng.uniform(0.1, 3, size=(6, 1, 1, 1))).astype(np.float32)
    p, exact = cluster_tensor(w, 3, axis=0, group_size=2)
    assert exact and p.groups == 3 and p.k == 8
    for g in range(3):  # each group of two channels uses only its own palette
        np.testing.assert_array_equal(np.isin(p.dense()[2 * g : 2 * g + 2], p.values()[g]), True)
    single, _ = cluster_tensor(w, 3)
    assert np.sum((p.dense() - w) ** 2) <= np.sum((single.dense() - w) ** 2)
    snapped = snap_int8(
        reassign(snap_int8(cluster_tensor(w, 3, axis=0, group_size=1)[0], 127), w), 127
    )
    dense = snapped.dense()
    for c in range(6):  # a per-channel symmetric int8 quantizer recovers the same integers exactly
        scale = np.float32(np.abs(dense[c]).max() / 127)
        q = np.rint(dense[c] / scale)
        np.testing.assert_array_equal(q.astype(np.float32) * scale, dense[c])
        assert len(np.unique(q)) <= 8


def test_distinct_is_lossless_and_minimal():
    rng = np.random.default_rng(7)
    values = np.array([-0.0, 0.0, 1.5, np.float32(1e-30)], np.float32)
    w = values[rng.integers(0, 4, size=(10, 12))]
    p = distinct(w, None, 1)
    assert p is not None and p.bits == 2
    np.testing.assert_array_equal(
        p.dense().view(np.uint32), w.view(np.uint32)
    )  # -0.0 kept bit for bit
    assert distinct(rng.normal(size=600).astype(np.float32), None, 1, max_bits=8) is None


def test_palette_fitted_on_a_sample_assigns_every_value_to_its_nearest_entry() -> None:
    """--effort: a big group's palette is fitted on a sample (10x faster on minilm's
    embedding table, error within a few %)."""
    from onnxslim.passes.cluster.palette import cluster_tensor

    w = np.random.default_rng(4).normal(size=(200, 64)).astype(np.float32)
    full, _ = cluster_tensor(w, 3)
    sampled, exact = cluster_tensor(w, 3, sample=2048)
    assert not exact
    values = sampled.values()[0]
    assert np.all(np.diff(values) >= 0)
    dense = sampled.dense()
    nearest_by_hand = values[np.abs(w[..., None] - values).argmin(-1)]
    np.testing.assert_allclose(dense, nearest_by_hand, rtol=0, atol=1e-6)
    error = lambda d: float(np.sum((d - w) ** 2))  # noqa: E731
    assert error(dense) <= 1.05 * error(full.dense())


def test_segment_mean_is_numpy_average_to_the_bit() -> None:
    """The DP's cluster means skip np.average's checks, not its arithmetic: palettes stay
    exactly what they were."""
    from onnxslim.passes.cluster.kmeans import _mean

    rng = np.random.default_rng(7)
    for _ in range(200):
        n = int(rng.integers(1, 4000))
        points = rng.standard_normal(n) * 10.0 ** float(rng.integers(-3, 3))
        weights = rng.integers(1, 50, n).astype(np.float64)
        assert _mean(points, weights) == np.average(points, weights=weights)


@pytest.mark.parametrize("axis", [None, 0])
def test_widths_clustered_together_are_the_ones_clustered_one_by_one(axis: int | None) -> None:
    """One DP to the largest palette, backtracked for each width, with the groups' unique
    values and histograms shared: the same palettes and indices as one width at a time
    (pruned zeros kept as their own entry, a sample for the big group, exact and binned)."""
    from onnxslim.passes.cluster.palette import cluster_tensor_widths

    rng = np.random.default_rng(11)
    array = rng.standard_normal((24, 300)).astype(np.float32)
    array[:, :90] = 0.0  # 30 % zeros: keep_zero splits them off
    array[3] = 0.5  # a channel of one value: fewer unique values than clusters
    for exact_limit, sample in ((128, None), (4096, None), (128, 1000)):
        together = cluster_tensor_widths(
            array, [2, 3, 4], axis=axis, exact_limit=exact_limit, sample=sample
        )
        for bits in (2, 3, 4):
            alone, exact = cluster_tensor(
                array, bits, axis=axis, exact_limit=exact_limit, sample=sample
            )
            shared, shared_exact = together[bits]
            assert np.array_equal(shared.palette, alone.palette)
            assert np.array_equal(shared.indices, alone.indices) and shared_exact == exact
