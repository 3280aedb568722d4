"""One-dimensional k-means: the palette of one weight tensor (or one channel group).

Weights are scalars, so clustering them is 1-D k-means, where two things hold that
do not hold in higher dimensions:

- **The optimum is computable.** Sorted, every cluster is a run of consecutive
  values, so the best k clusters come from a dynamic programme over the sorted
  points (Wang & Song's Ckmeans.1d.dp; Groenlund et al. 2017):

      D[c][i] = min_{c <= j <= i}  D[c-1][j-1] + cost(j, i)

  where cost(j, i) is the weighted sum of squared deviations of points j..i,
  O(1) from prefix sums. The best j is non-decreasing in i, so each row is
  solved by divide and conquer in O(n log n) instead of O(n^2): each level of
  the recursion evaluates every pending middle point at once (numpy), about n
  candidates per level, log2(n) levels, k rows.
- **Duplicates collapse.** The DP runs on the sorted *unique* values with their
  counts as weights, exactly, up to `dp_points(k)` unique values: `exact_limit`
  (default 2^15) for k <= 16, fewer for more clusters (k x points <= 2^19, so
  2^11 points for k = 256), which bounds the time of one DP to about a second.
  Above that it runs on a histogram of that many bins (half equal-width, half
  equal-mass; each bin a point at its members' mean, weighted by their count),
  optimal up to the binning, then Lloyd iterations on the real values correct
  the binning (they never raise the cost). `Clustering.exact` says which ran.
  The palette groups of one tensor (per-channel palettes) run through the DP
  together: one numpy call per DP step for all of them.

The other initialisations (linear, k-means++, density) seed Lloyd iterations, run
on the same weighted points (Lloyd in 1-D: boundaries are midpoints between
sorted centres, so assignment is one searchsorted).

Sparsity: when a tensor has many exact zeros (a pruned weight), zero is kept as
a palette entry of its own and the non-zeros are clustered into the other k-1
entries, so every zero stays zero and no non-zero becomes one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

INITS = ("optimal", "kmeans++", "density", "linear")
EXACT_LIMIT = 1 << 15  # unique values above which the DP runs on a histogram
DP_BUDGET = 1 << 19  # k x points of one DP: 16 clusters on 2^15 points, 256 on 2^11
SPARSE_FRACTION = 0.01  # zeros above this fraction get their own palette entry
LLOYD_ITERATIONS = 100
POLISH_ITERATIONS = 20  # Lloyd steps on the real values after clustering a histogram
DP_TABLE_BYTES = 64 << 20  # argmin table of one batched DP (int32, k x points)
IMPORTANCE_FLOOR = 1e-3  # of the mean importance, added to every value's: none weighs nothing


@dataclass(frozen=True)
class Clustering:
    """A palette of exactly k values and, per input value, the index of its entry."""

    palette: np.ndarray  # float64 [k], ascending
    indices: np.ndarray  # int64, same shape as the input
    exact: bool  # the DP ran on the values themselves (not on a histogram, not Lloyd)

    def values(self) -> np.ndarray:
        return self.palette[self.indices]


def cluster_1d(
    values: np.ndarray,
    k: int,
    *,
    init: str = "optimal",
    seed: int = 0,
    exact_limit: int = EXACT_LIMIT,
    keep_zero: bool | None = None,
    importance: np.ndarray | None = None,
) -> Clustering:
    """Cluster `values` (any shape) into `k` shared values.

    `keep_zero`: zero as its own entry (None: when more than 1 % of the values are
    exactly zero). The palette always has k entries; when there are fewer distinct
    values than k, the extra entries repeat the last one and stay unused. `importance`:
    each value's weight in the squared error (see cluster_many).
    """
    return cluster_many(
        [values],
        k,
        init=init,
        seed=seed,
        exact_limit=exact_limit,
        keep_zero=keep_zero,
        importances=[importance],
    )[0]


def cluster_many(
    arrays: Sequence[np.ndarray],
    k: int,
    *,
    init: str = "optimal",
    seed: int = 0,
    exact_limit: int = EXACT_LIMIT,
    keep_zero: bool | None = None,
    importances: Sequence[np.ndarray | None] | None = None,
) -> list[Clustering]:
    """`cluster_1d` on each array (the palette groups of one tensor); the DPs run batched.

    `importances[i]` (the array's shape, >= 0): each value weighs that much in its
    cluster's squared error (sensitivity-weighted k-means, SqueezeLLM): the palette moves
    towards the values whose error costs most. Assignment stays to the nearest entry,
    which minimises each value's own weighted error whatever its weight.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if init not in INITS:
        raise ValueError(f"init {init!r}: expected one of {', '.join(INITS)}")
    importance_of = importances if importances is not None else [None] * len(arrays)
    jobs = [
        _job(np.asarray(a), k, init, exact_limit, keep_zero, w)
        for a, w in zip(arrays, importance_of, strict=True)
    ]
    pending = [j for j in jobs if j.centers is None]
    if init == "optimal":
        for size in sorted({j.k for j in pending}):
            same = [j for j in pending if j.k == size]
            solved = optimal_centers_many([j.points for j in same], [j.weights for j in same], size)
            for job, centers in zip(same, solved, strict=True):
                job.centers = centers
    else:
        for index, job in enumerate(pending):
            start = _initial(job.points, job.weights, job.k, init, seed + index)
            job.centers = lloyd(job.points, job.weights, start)
    for job in pending:
        if job.binned:  # Lloyd on the real values corrects the binning (it never raises the cost)
            assert job.centers is not None  # every pending job got its centers above
            job.centers = lloyd(job.unique, job.counts, job.centers, iterations=POLISH_ITERATIONS)
    return [_finish(job, np.shape(a)) for job, a in zip(jobs, arrays, strict=True)]


def optimal_many_widths(
    arrays: Sequence[np.ndarray],
    ks: Sequence[int],
    *,
    exact_limit: int = EXACT_LIMIT,
    keep_zero: bool | None = None,
    importances: Sequence[np.ndarray | None] | None = None,
) -> dict[int, list[Clustering]]:
    """`cluster_many(arrays, k, init="optimal", ...)` for every k of `ks`, the same results,
    sharing what does not depend on k: each array's unique values (and its histogram when
    the DP takes as many points for every k), and the DP itself: its row c is the best c+1
    clusters of every prefix whatever the final k, so one DP to the largest k is backtracked
    for each (a weight's 2-, 3- and 4-bit palettes per channel: 15 DP rows, not 25).
    The same optimum; bit for bit in the tests and on the devmodels compared (digits_lstm,
    captcha_crnn, open_nsfw_resnet). The sets batched into one DP can differ from one k at
    a time (chunks cut for the largest k, arrays that need fewer ks batched apart), which
    moves a set's prefix sums by float rounding only. `importances`: as in cluster_many."""
    ks = sorted(set(ks))
    if not ks or ks[0] < 2:
        raise ValueError(f"optimal_many_widths needs k >= 2, got {ks}")
    limits = {dp_points(k - 1, exact_limit) for k in ks} | {dp_points(k, exact_limit) for k in ks}
    if len(limits) > 1:  # the DP takes a different histogram at some k: each k on its own
        return {
            k: cluster_many(
                arrays, k, exact_limit=exact_limit, keep_zero=keep_zero, importances=importances
            )
            for k in ks
        }
    jobs: dict[int, list[_Job]] = {k: [] for k in ks}
    importance_of = importances if importances is not None else [None] * len(arrays)
    for a, w in zip(arrays, importance_of, strict=True):
        first = _job(np.asarray(a), ks[0], "optimal", exact_limit, keep_zero, w)
        jobs[ks[0]].append(first)
        for k in ks[1:]:
            jobs[k].append(_job_like(first, k))
    # one DP per array over every k its jobs still need (sets needing the same ks together)
    wanted: dict[int, list[_Job]] = {}
    for k in ks:
        for index, job in enumerate(jobs[k]):
            if job.centers is None:
                wanted.setdefault(index, []).append(job)
    batches: dict[tuple[int, ...], list[int]] = {}
    for index, pending in wanted.items():
        sizes = tuple(job.k for job in pending)
        if len(pending[0].points) <= max(sizes):  # as many points as clusters: one by one
            for job in pending:
                job.centers = optimal_centers_many([job.points], [job.weights], job.k)[0]
            continue
        batches.setdefault(sizes, []).append(index)
    for sizes, indices in batches.items():
        chunks: list[list[int]] = [[]]
        held = 0
        for i in indices:  # the argmin table (k x points, int32) within DP_TABLE_BYTES
            length = len(wanted[i][0].points)
            if chunks[-1] and (held + length) * max(sizes) * 4 > DP_TABLE_BYTES:
                chunks.append([])
                held = 0
            chunks[-1].append(i)
            held += length
        for chunk in chunks:
            points = [wanted[i][0].points for i in chunk]
            weights = [wanted[i][0].weights for i in chunk]
            for i, centers in zip(chunk, _dp_sizes(points, weights, sizes), strict=True):
                for job, c in zip(wanted[i], centers, strict=True):
                    job.centers = c
    result = {}
    for k in ks:
        for job in jobs[k]:
            if job.binned:  # Lloyd on the real values corrects the binning, as cluster_many
                assert job.centers is not None
                job.centers = lloyd(
                    job.unique, job.counts, job.centers, iterations=POLISH_ITERATIONS
                )
        result[k] = [_finish(job, np.shape(a)) for job, a in zip(jobs[k], arrays, strict=True)]
    return result


def nearest(palette: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of the nearest entry of the ascending `palette` for each value (ties: the lower)."""
    palette = np.asarray(palette, dtype=np.float64)
    if len(palette) == 1:
        return np.zeros(np.shape(values), np.int64)
    bounds = (palette[1:] + palette[:-1]) / 2
    return np.searchsorted(bounds, values, side="left").astype(np.int64)


def sse(values: np.ndarray, clustering: Clustering) -> float:
    """Sum of squared differences between the values and their palette entries."""
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    return float(np.sum((flat - clustering.values().reshape(-1)) ** 2))


def dp_points(k: int, exact_limit: int = EXACT_LIMIT) -> int:
    """Points the DP takes for k clusters: `exact_limit`, fewer for large k (time ~ k x points)."""
    return int(min(exact_limit, max(1024, DP_BUDGET // k)))


# ---------------------------------------------------------------------------


@dataclass
class _Job:
    """One array on its way through cluster_many."""

    flat: np.ndarray
    zeros: np.ndarray | None  # mask of exact zeros when zero keeps its own entry
    k: int  # clusters for the (non-zero) values
    points: np.ndarray  # sorted unique values, or histogram bin means
    weights: np.ndarray
    unique: np.ndarray
    counts: np.ndarray
    binned: bool = False
    centers: np.ndarray | None = None


def _job(
    values: np.ndarray,
    k: int,
    init: str,
    exact_limit: int,
    keep_zero: bool | None,
    importance: np.ndarray | None = None,
) -> _Job:
    flat = values.astype(np.float64).reshape(-1)
    if flat.size and not np.all(np.isfinite(flat)):
        raise ValueError("values hold NaN or infinity")
    zeros = flat == 0
    if keep_zero is None:
        keep_zero = bool(flat.size and zeros.mean() > SPARSE_FRACTION)
    split = bool(keep_zero and k >= 2 and zeros.any() and not zeros.all())
    data = flat[~zeros] if split else flat
    size = k - 1 if split else k
    if importance is None:
        unique, counts = np.unique(data, return_counts=True)
        counts = counts.astype(np.float64)
    else:  # each unique value weighs its elements' importance (floored: none weighs nothing)
        weight = np.asarray(importance, dtype=np.float64).reshape(-1)
        weight = weight[~zeros] if split else weight
        floor = IMPORTANCE_FLOOR * float(np.mean(weight)) if weight.size else 0.0
        unique, inverse = np.unique(data, return_inverse=True)
        counts = np.bincount(inverse.reshape(-1), np.maximum(weight, 0.0) + floor, len(unique))
        if not np.all(counts > 0):  # every importance zero: plain counts
            counts = np.bincount(inverse.reshape(-1), minlength=len(unique)).astype(np.float64)
    job = _Job(flat, zeros if split else None, size, unique, counts, unique, counts)
    if len(unique) <= size:
        job.centers = _pad(unique, size) if len(unique) else np.zeros(size)
        return job
    limit = dp_points(size, exact_limit) if init == "optimal" else exact_limit
    if len(unique) > limit:
        job.points, job.weights = _histogram(unique, counts, limit)
        job.binned = True
    return job


def _job_like(job: _Job, k: int) -> _Job:
    """`_job` of the same values at another k (the caller checked that the DP takes as many
    points at both): the unique values and histogram are shared, not recomputed."""
    size = k - 1 if job.zeros is not None else k
    other = _Job(job.flat, job.zeros, size, job.points, job.weights, job.unique, job.counts)
    other.binned = job.binned
    if len(job.unique) <= size:
        other.points, other.weights, other.binned = job.unique, job.counts, False
        other.centers = _pad(job.unique, size) if len(job.unique) else np.zeros(size)
    return other


def _finish(job: _Job, shape: tuple[int, ...]) -> Clustering:
    assert job.centers is not None
    rest = np.sort(job.centers)
    if job.zeros is None:
        return Clustering(rest, nearest(rest, job.flat).reshape(shape), not job.binned)
    slot = int(np.searchsorted(rest, 0.0))  # where zero goes in the ascending palette
    palette = np.insert(rest, slot, 0.0)
    indices = np.full(job.flat.size, slot, np.int64)
    near = nearest(rest, job.flat[~job.zeros])
    indices[~job.zeros] = near + (near >= slot)
    return Clustering(palette, indices.reshape(shape), not job.binned)


def _pad(points: np.ndarray, k: int) -> np.ndarray:
    points = np.sort(np.asarray(points, dtype=np.float64))
    if len(points) >= k:
        return points[:k]
    return np.concatenate([points, np.full(k - len(points), points[-1] if len(points) else 0.0)])


def _histogram(points: np.ndarray, weights: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted weighted points merged into at most `bins` bins, each at its members' mean.

    Half the edges are equally spaced (resolution in the sparse tails, where the
    outlying weights that matter most sit), half at equal mass (resolution where
    the values crowd).
    """
    half = max(bins // 2, 1)
    cdf = np.cumsum(weights) / np.sum(weights)
    edges = np.union1d(
        np.linspace(points[0], points[-1], half + 1),
        np.interp(np.linspace(0, 1, half + 1), cdf, points),
    )
    which = np.clip(np.searchsorted(edges, points, side="right") - 1, 0, len(edges) - 2)
    mass = np.bincount(which, weights, len(edges) - 1)
    total = np.bincount(which, weights * points, len(edges) - 1)
    keep = mass > 0
    return total[keep] / mass[keep], mass[keep]


def _initial(points: np.ndarray, weights: np.ndarray, k: int, init: str, seed: int) -> np.ndarray:
    if init == "linear":
        return np.linspace(points[0], points[-1], k)
    if init == "density":  # weighted quantiles at (i + 1/2) / k: dense regions get more centres
        cdf = np.cumsum(weights) / np.sum(weights)
        return np.interp((np.arange(k) + 0.5) / k, cdf, points)
    rng = np.random.default_rng(seed)  # k-means++ (Arthur & Vassilvitskii), weighted
    centers = [points[rng.choice(len(points), p=weights / weights.sum())]]
    distance = (points - centers[0]) ** 2
    for _ in range(1, k):
        mass = weights * distance
        total = mass.sum()
        if total <= 0:
            break
        chosen = points[rng.choice(len(points), p=mass / total)]
        centers.append(chosen)
        distance = np.minimum(distance, (points - chosen) ** 2)
    return _pad(np.array(centers), k)


def lloyd(
    points: np.ndarray,
    weights: np.ndarray,
    centers: np.ndarray,
    *,
    iterations: int = LLOYD_ITERATIONS,
    tol: float = 1e-9,
) -> np.ndarray:
    """Weighted Lloyd on sorted 1-D points; an empty cluster moves to the worst-served point."""
    centers = np.sort(np.asarray(centers, dtype=np.float64))
    k = len(centers)
    scale = max(float(points[-1] - points[0]), 1e-300)
    for _ in range(iterations):
        which = nearest(centers, points)
        mass = np.bincount(which, weights, k)
        total = np.bincount(which, weights * points, k)
        new = np.where(mass > 0, total / np.where(mass > 0, mass, 1), centers)
        empty = np.flatnonzero(mass == 0)
        if len(empty):
            error = weights * (points - new[which]) ** 2
            for index, point in zip(empty, np.argsort(error)[::-1][: len(empty)], strict=False):
                new[index] = points[point]
        new = np.sort(new)
        moved = float(np.max(np.abs(new - centers)))
        centers = new
        if moved <= tol * scale and not len(empty):
            break
    return centers


def optimal_centers(points: np.ndarray, weights: np.ndarray, k: int) -> np.ndarray:
    """The k centres minimising the weighted within-cluster sum of squares (sorted points)."""
    return optimal_centers_many([points], [weights], k)[0]


def optimal_centers_many(
    point_sets: Sequence[np.ndarray], weight_sets: Sequence[np.ndarray], k: int
) -> list[np.ndarray]:
    """`optimal_centers` of several independent sorted point sets, their DP rows run together.

    The sets are laid end to end with common prefix sums (each set centred on its
    own mean: a segment never crosses a set, so a per-set shift changes nothing),
    and each DP step advances all of them in the same numpy calls. Sets go in
    chunks so the argmin table (k x points, int32) stays within DP_TABLE_BYTES.
    """
    result: list[np.ndarray] = [np.empty(0)] * len(point_sets)
    chunk: list[int] = []
    size = 0

    def flush() -> None:
        solved = _dp([point_sets[i] for i in chunk], [weight_sets[i] for i in chunk], k)
        for i, centers in zip(chunk, solved, strict=True):
            result[i] = centers

    for index, points in enumerate(point_sets):
        if len(points) <= k:
            result[index] = _pad(points, k)
            continue
        if chunk and (size + len(points)) * k * 4 > DP_TABLE_BYTES:
            flush()
            chunk, size = [], 0
        chunk.append(index)
        size += len(points)
    if chunk:
        flush()
    return result


def _dp(
    point_sets: Sequence[np.ndarray], weight_sets: Sequence[np.ndarray], k: int
) -> list[np.ndarray]:
    return [centers[0] for centers in _dp_sizes(point_sets, weight_sets, (k,))]


def _dp_sizes(
    point_sets: Sequence[np.ndarray], weight_sets: Sequence[np.ndarray], sizes: Sequence[int]
) -> list[list[np.ndarray]]:
    """The optimal centres of every set for each k of `sizes` (ascending), from one DP to
    the largest: row c does not depend on the final k."""
    k = max(sizes)
    lengths = np.array([len(p) for p in point_sets])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    ends = starts + lengths  # exclusive
    pairs = zip(point_sets, weight_sets, strict=True)
    x = np.concatenate([p - _mean(p, w) for p, w in pairs])
    w = np.concatenate(weight_sets).astype(np.float64)
    N = len(x)
    W = np.concatenate([[0.0], np.cumsum(w)])
    S = np.concatenate([[0.0], np.cumsum(w * x)])
    Q = np.concatenate([[0.0], np.cumsum(w * x * x)])
    first = np.repeat(starts, lengths)  # each point's set start
    after = np.arange(N) + 1
    s = S[after] - S[first]
    previous = Q[after] - Q[first] - s * s / (W[after] - W[first])  # one cluster over start..i
    table = np.zeros((k, N), np.int32)  # table[c][i]: first point of the last of c+1 clusters
    for c in range(1, k):
        # D[c][i] = min_j previous[j-1] + Q[i+1] - Q[j] - (S[i+1] - S[j])^2 / (W[i+1] - W[j])
        base = np.full(N + 1, np.inf)
        base[1:] = previous - Q[1:]  # base[j] = previous[j-1] - Q[j]
        current = np.full(N, np.inf)
        _row(base, S, W, Q, current, table[c], starts + c, ends - 1, starts + c, ends - 1, N)
        previous = current
    result = []
    for points, weights, start, end in zip(point_sets, weight_sets, starts, ends, strict=True):
        per_size = []
        for size in sizes:
            bounds = []
            i = int(end) - 1
            for c in range(size - 1, 0, -1):
                j = int(table[c][i])
                bounds.append((j - start, i - start))
                i = j - 1
            bounds.append((0, i - start))
            centers = [_mean(points[a : b + 1], weights[a : b + 1]) for a, b in bounds]
            per_size.append(np.sort(np.array(centers)))
        result.append(per_size)
    return result


def _mean(points: np.ndarray, weights: np.ndarray) -> float:
    """np.average(points, weights=weights) of float64 arrays, the same operations without its
    checks: called once per cluster of every palette group (rxnmap: 512k calls, 6 % of its
    cluster command in np.average's overhead)."""
    return float(np.multiply(points, weights).sum() / weights.sum())


def _row(
    base: np.ndarray,
    S: np.ndarray,
    W: np.ndarray,
    Q: np.ndarray,
    current: np.ndarray,
    argmin: np.ndarray,
    ilo: np.ndarray,
    ihi: np.ndarray,
    jlo: np.ndarray,
    jhi: np.ndarray,
    sentinel: int,
) -> None:
    """One DP row by divide and conquer: every pending middle point of every set at once."""
    while len(ilo):
        mid = (ilo + ihi) // 2
        lengths = np.minimum(jhi, mid) - jlo + 1
        offsets = np.zeros(len(mid), np.int64)
        np.cumsum(lengths[:-1], out=offsets[1:])
        segment = np.repeat(np.arange(len(mid)), lengths)
        j = np.arange(int(offsets[-1] + lengths[-1])) + np.repeat(jlo - offsets, lengths)
        end = mid + 1
        diff = np.repeat(S[end], lengths) - S[j]
        value = (
            base[j] + np.repeat(Q[end], lengths) - diff * diff / (np.repeat(W[end], lengths) - W[j])
        )
        best = np.minimum.reduceat(value, offsets)
        position = np.where(value == best[segment], j, sentinel)
        chosen = np.minimum.reduceat(position, offsets)
        current[mid] = best
        argmin[mid] = chosen
        left = ilo < mid
        right = mid < ihi
        ilo, ihi, jlo, jhi = (
            np.concatenate([ilo[left], end[right]]),
            np.concatenate([mid[left] - 1, ihi[right]]),
            np.concatenate([jlo[left], chosen[right]]),
            np.concatenate([chosen[left], jhi[right]]),
        )
