"""Scales and zero points: the arithmetic of int8 (and int32) parameters, as ORT computes it.

Why its own module: the static, dynamic and weight-only modes and bias correction all
need the same ranges, rounding and saturation; this is numpy only, apart from the
graph surgery in `qdq` that places the parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .ranges import Range

MIN_SCALE = 1e-12


@dataclass(frozen=True)
class QParams:
    """Scale and zero point of one tensor (per tensor when `axis` is None)."""

    scale: np.ndarray  # float32, scalar or 1-D
    zero_point: np.ndarray  # uint8 / int8 / int32, same shape as scale
    axis: int | None = None

    @property
    def dtype(self) -> np.dtype:
        return self.zero_point.dtype


def qrange(
    dtype: np.dtype | type, *, reduce_range: bool = False, symmetric: bool = False
) -> tuple[int, int]:
    """The integer range used for `dtype` (7-bit with `reduce_range`, as ORT does)."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return (0, 127) if reduce_range else (0, 255)
    if dtype == np.int8:
        if reduce_range:
            return (-64, 64)
        return (-127, 127) if symmetric else (-128, 127)
    raise ValueError(f"unsupported quantized type {dtype}")


def activation_qparams(r: Range, dtype: np.dtype | type = np.uint8) -> QParams:
    """Asymmetric parameters covering `r` (widened to contain 0)."""
    r = r.with_zero()
    qmin, qmax = qrange(dtype)
    span = r.hi - r.lo
    if not math.isfinite(span) or span <= 0:
        scale = 1.0
        zero = 0 if np.dtype(dtype) == np.int8 else 0
    else:
        scale = max(span / (qmax - qmin), MIN_SCALE)
        zero = int(np.clip(round(qmin - r.lo / scale), qmin, qmax))
    return QParams(np.array(scale, dtype=np.float32), np.array(zero, dtype=dtype))


def weight_qparams(
    weight: np.ndarray,
    axis: int | None,
    *,
    reduce_range: bool = False,
    dtype: np.dtype | type = np.int8,
) -> QParams:
    """Symmetric parameters (zero point 0) of a weight, per channel along `axis` or per tensor."""
    _, qmax = qrange(dtype, reduce_range=reduce_range, symmetric=True)
    if axis is None:
        amax = np.array(np.max(np.abs(weight)) if weight.size else 0.0, dtype=np.float64)
    else:
        axis = axis % weight.ndim
        reduce = tuple(i for i in range(weight.ndim) if i != axis)
        amax = np.max(np.abs(weight), axis=reduce).astype(np.float64)
    scale = np.where(amax > 0, amax / qmax, 1.0)
    scale = np.maximum(scale, MIN_SCALE).astype(np.float32)
    return QParams(scale, np.zeros(scale.shape, dtype=dtype), axis)


def quantize_array(array: np.ndarray, qp: QParams) -> np.ndarray:
    """round(array / scale) + zero point, saturated, as QuantizeLinear computes it."""
    scale = qp.scale.astype(np.float64)
    zero = qp.zero_point.astype(np.int64)
    if qp.axis is not None and scale.ndim == 1:
        shape = [1] * array.ndim
        shape[qp.axis] = -1
        scale = scale.reshape(shape)
        zero = zero.reshape(shape)
    info = np.iinfo(qp.dtype)
    q = np.rint(array.astype(np.float64) / scale) + zero
    return np.clip(q, info.min, info.max).astype(qp.dtype)


def dequantize_array(q: np.ndarray, qp: QParams) -> np.ndarray:
    """(q - zero point) * scale, as DequantizeLinear computes it."""
    scale = qp.scale.astype(np.float32)
    zero = qp.zero_point.astype(np.int32)
    if qp.axis is not None and scale.ndim == 1:
        shape = [1] * q.ndim
        shape[qp.axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((q.astype(np.int32) - zero) * scale).astype(np.float32)
