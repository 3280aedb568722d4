"""A palettized tensor: small integer indices into per-group palettes, and how to make one.

`Palettized` is the one representation every step shares: the clustering fills
it, refinement re-fits its palette values, int8 snapping moves them onto a grid,
storage writes it into the graph, and `dense()` is the numpy mirror of what ONNX
Runtime computes from the stored form (so tests compare the two bit for bit).

Groups: with `axis` set, the channels along `axis` are split into runs of
`group_size` channels (the last run may be shorter) and each run has its own
palette, `palette[g]`. With `axis` None there is one palette for the tensor.

Int8 grid: with `scale` set, every palette value is an integer (`palette`, int8)
times its group's scale, so a symmetric int8 quantizer that picks scale =
max|w| / qmax per channel recovers the same integers exactly (see `snap_int8`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from .kmeans import EXACT_LIMIT, Clustering, cluster_many, nearest, optimal_many_widths


@dataclass(frozen=True)
class Palettized:
    """indices (the tensor's shape, values < k) into palette [groups, k] (maybe times scale)."""

    indices: np.ndarray
    palette: np.ndarray  # [groups, k]: float (the tensor's dtype), or int8 with `scale`
    bits: int
    axis: int | None = None
    group_size: int = 1
    scale: np.ndarray | None = None  # float32 [groups]: palette values are palette * scale
    dtype: np.dtype = np.dtype(np.float32)  # the dense tensor's dtype

    @property
    def k(self) -> int:
        return int(self.palette.shape[1])

    @property
    def groups(self) -> int:
        return int(self.palette.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.indices.shape)

    def values(self) -> np.ndarray:
        """The palette as values of the dense dtype, [groups, k]."""
        if self.scale is None:
            return self.palette.astype(self.dtype, copy=False)
        product = self.palette.astype(np.float32) * self.scale.astype(np.float32)[:, None]
        return product.astype(self.dtype, copy=False)

    def group_of_element(self) -> np.ndarray:
        """Group index of every element, broadcastable to the tensor's shape (int64)."""
        return group_offsets(self.shape, self.axis, self.group_size, 1)

    def dense(self) -> np.ndarray:
        """The tensor the stored form expands to (numpy mirror of the ONNX expansion)."""
        flat = self.values().reshape(-1)
        index = self.indices.astype(np.int64) + self.k * self.group_of_element()
        return flat[index]

    def used(self) -> np.ndarray:
        """[groups, k] bool: which entries some element refers to."""
        flat = (self.indices.astype(np.int64) + self.k * self.group_of_element()).reshape(-1)
        return (np.bincount(flat, minlength=self.groups * self.k) > 0).reshape(self.groups, self.k)

    def narrowed(self, dtype: np.dtype | type) -> Palettized:
        """The palette stored in a narrower float type (float16): values rounded once, here."""
        if self.scale is not None or np.dtype(dtype) == self.palette.dtype:
            return self
        return replace(self, palette=self.values().astype(dtype))

    def with_values(self, values: np.ndarray) -> Palettized:
        """The same indices with new float palette values [groups, k] (drops any int8 grid)."""
        return replace(
            self,
            palette=np.asarray(values, dtype=self.dtype).reshape(self.groups, self.k),
            scale=None,
        )


def group_offsets(
    shape: tuple[int, ...], axis: int | None, group_size: int, step: int
) -> np.ndarray:
    """step x (group of each channel along `axis`), shaped to broadcast against `shape` (int64)."""
    if axis is None:
        return np.zeros((), np.int64)
    channels = shape[axis]
    offsets = (np.arange(channels, dtype=np.int64) // group_size) * step
    return offsets.reshape((channels,) + (1,) * (len(shape) - axis - 1))


def channel_slices(
    shape: tuple[int, ...], axis: int | None, group_size: int
) -> list[tuple[slice, ...]]:
    """Index tuples selecting each group's elements."""
    if axis is None:
        return [tuple(slice(None) for _ in shape)]
    result = []
    for start in range(0, shape[axis], group_size):
        index = [slice(None)] * len(shape)
        index[axis] = slice(start, min(start + group_size, shape[axis]))
        result.append(tuple(index))
    return result


def cluster_tensor(
    array: np.ndarray,
    bits: int,
    *,
    axis: int | None = None,
    group_size: int = 1,
    init: str = "optimal",
    seed: int = 0,
    keep_zero: bool | None = None,
    exact_limit: int = EXACT_LIMIT,
    sample: int | None = None,
    importance: np.ndarray | None = None,
) -> tuple[Palettized, bool]:
    """Cluster `array` into 2^bits values per group; (palettized, every group solved exactly).

    `sample`: a group of more values has its palette fitted on that many of them (drawn
    with `seed`), then every value goes to its nearest entry (minilm's 11.7 M-value
    embedding table, clustered at every candidate width, took most of its search).
    `importance` (the array's shape): how much each value's error costs (kmeans.cluster_many).
    """
    slices, groups, fitted, weights = _fitted_groups(
        array, axis, group_size, seed, sample, importance
    )
    results = cluster_many(
        fitted,
        1 << bits,
        init=init,
        seed=seed,
        exact_limit=exact_limit,
        keep_zero=keep_zero,
        importances=weights,
    )
    return _assemble(array, bits, axis, group_size, slices, groups, fitted, results)


def cluster_tensor_widths(
    array: np.ndarray,
    widths: Sequence[int],
    *,
    axis: int | None = None,
    group_size: int = 1,
    seed: int = 0,
    keep_zero: bool | None = None,
    exact_limit: int = EXACT_LIMIT,
    sample: int | None = None,
    importance: np.ndarray | None = None,
) -> dict[int, tuple[Palettized, bool]]:
    """`cluster_tensor(array, bits, init="optimal", ...)` for each bits of `widths`, the same
    results, with the groups, their samples and the DP shared (kmeans.optimal_many_widths)."""
    slices, groups, fitted, weights = _fitted_groups(
        array, axis, group_size, seed, sample, importance
    )
    solved = optimal_many_widths(
        fitted,
        [1 << b for b in widths],
        exact_limit=exact_limit,
        keep_zero=keep_zero,
        importances=weights,
    )
    return {
        b: _assemble(array, b, axis, group_size, slices, groups, fitted, solved[1 << b])
        for b in widths
    }


def _fitted_groups(
    array: np.ndarray,
    axis: int | None,
    group_size: int,
    seed: int,
    sample: int | None,
    importance: np.ndarray | None = None,
) -> tuple[
    list[tuple[slice, ...]], list[np.ndarray], list[np.ndarray], list[np.ndarray | None] | None
]:
    """Each group's slice, values, the values its palette is fitted on (a sample), and
    their importances (None without)."""
    slices = channel_slices(array.shape, axis, group_size)
    groups = [array[where] for where in slices]
    rng = np.random.default_rng(seed)
    fitted, weights = [], []
    for where, g in zip(slices, groups, strict=True):
        weight = importance[where] if importance is not None else None
        if sample is not None and g.size > sample:
            chosen = rng.choice(g.size, sample, replace=False)
            fitted.append(g.reshape(-1)[chosen])
            weights.append(weight.reshape(-1)[chosen] if weight is not None else None)
        else:
            fitted.append(g)
            weights.append(weight)
    return slices, groups, fitted, (weights if importance is not None else None)


def _assemble(
    array: np.ndarray,
    bits: int,
    axis: int | None,
    group_size: int,
    slices: list[tuple[slice, ...]],
    groups: list[np.ndarray],
    fitted: list[np.ndarray],
    results: list[Clustering],
) -> tuple[Palettized, bool]:
    """The Palettized of the groups' clusterings (and whether each was solved exactly)."""
    indices = np.zeros(array.shape, np.uint8 if bits <= 8 else np.uint16)
    palette = np.zeros((len(slices), 1 << bits), dtype=np.float64)
    for g, (where, result) in enumerate(zip(slices, results, strict=True)):
        if fitted[g] is groups[g]:
            palette[g] = result.palette
            indices[where] = result.indices
        else:  # fitted on a sample: every value to its nearest entry
            palette[g] = np.sort(result.palette)
            indices[where] = nearest(palette[g], groups[g]).reshape(groups[g].shape)
    exact = all(r.exact and f is a for r, f, a in zip(results, fitted, groups, strict=True))
    dtype = np.dtype(array.dtype)
    return Palettized(indices, palette.astype(dtype), bits, axis, group_size, dtype=dtype), exact


def reassign(palettized: Palettized, array: np.ndarray) -> Palettized:
    """Each element to the nearest value of its group's palette (after the palette moved)."""
    values = palettized.values().astype(np.float64)
    indices = np.empty_like(palettized.indices)
    for g, where in enumerate(
        channel_slices(palettized.shape, palettized.axis, palettized.group_size)
    ):
        order = np.argsort(values[g], kind="stable")
        ordered = values[g][order]
        bounds = (ordered[1:] + ordered[:-1]) / 2
        position = np.searchsorted(bounds, np.asarray(array[where], dtype=np.float64), side="left")
        indices[where] = order[position]
    return replace(palettized, indices=indices)


def snap_int8(palettized: Palettized, qmax: int = 127) -> Palettized:
    """Palette values onto the symmetric int8 grid of their group: p = q s, s = max|used p| / qmax.

    The largest used magnitude maps to exactly +-qmax, so a per-channel symmetric
    quantizer (scale = max|w| / qmax over the channel) finds the same s and the
    same integers q: quantizing the clustered weight adds no error. That holds
    per channel when each group is one channel, and for the whole tensor when
    there is one group and the quantizer is per-tensor.
    """
    values = palettized.values().astype(np.float64)
    used = palettized.used()
    magnitude = np.where(used, np.abs(values), 0.0).max(axis=1)
    scale = np.where(magnitude > 0, magnitude / qmax, 1.0).astype(np.float32)
    q = np.clip(np.rint(values / scale.astype(np.float64)[:, None]), -qmax, qmax).astype(np.int8)
    return replace(palettized, palette=q, scale=scale)


def distinct(
    array: np.ndarray, axis: int | None, group_size: int, max_bits: int = 8
) -> Palettized | None:
    """The exact palettized form of `array` if each group holds at most 2^max_bits distinct values.

    Lossless: every value keeps its bit pattern (compared as bytes, so -0.0 and
    NaN payloads survive); bits is the fewest that index the largest group.
    """
    slices = channel_slices(array.shape, axis, group_size)
    keys = (
        np.ascontiguousarray(array).view(np.dtype(f"V{array.dtype.itemsize}"))
        if array.dtype.kind == "f"
        else array
    )
    uniques = []
    for where in slices:
        values, inverse = np.unique(keys[where].reshape(-1), return_inverse=True)
        if len(values) > (1 << max_bits):
            return None
        uniques.append((values, inverse))
    width = max(len(values) for values, _ in uniques)
    bits = max(1, math.ceil(math.log2(width))) if width > 1 else 1
    k = 1 << bits
    palette = np.zeros((len(slices), k), dtype=array.dtype)
    indices = np.zeros(array.shape, np.uint8 if bits <= 8 else np.uint16)
    for g, (where, (values, inverse)) in enumerate(zip(slices, uniques, strict=True)):
        as_values = values.view(array.dtype) if array.dtype.kind == "f" else values
        palette[g, : len(values)] = as_values
        palette[g, len(values) :] = as_values[-1]
        indices[where] = inverse.reshape(array[where].shape)
    return Palettized(indices, palette, bits, axis, group_size, dtype=np.dtype(array.dtype))
