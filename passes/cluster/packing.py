"""How palette indices are packed, and what each stored form costs in bytes.

Why its own module: choosing a form (native UINT4/UINT2, uint8, byte lut, bit planes)
and counting its bytes is pure arithmetic on a `Palettized` tensor; the allocator
and the cluster pass ask it for sizes of forms they never write, and `storage` and
`read` share its bit-plane packing with the ONNX functions that undo it.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx_ir as ir

from .palette import Palettized

PACKINGS = ("auto", "bits", "uint8")
MIN_BITSHIFT_OPSET = 11
NATIVE = {4: (21, ir.DataType.UINT4, ml_dtypes.uint4), 2: (25, ir.DataType.UINT2, ml_dtypes.uint2)}


def plane_widths(bits: int) -> tuple[int, ...]:
    """bits as a sum of 4, 2 and 1 (widths that tile a byte), largest first."""
    widths = []
    for width in (4, 2, 1):
        while bits >= width:
            widths.append(width)
            bits -= width
    return tuple(widths)


def pack_plane(values: np.ndarray, width: int) -> np.ndarray:
    """uint8 bytes holding `values` (each < 2^width), 8/width per byte, first in the high bits."""
    per_byte = 8 // width
    flat = values.reshape(-1).astype(np.uint8)
    padded = np.zeros(-(-flat.size // per_byte) * per_byte, np.uint8)
    padded[: flat.size] = flat
    fields = padded.reshape(-1, per_byte)
    shifts = (8 - width * (np.arange(per_byte) + 1)).astype(np.uint8)
    return np.bitwise_or.reduce(fields << shifts, axis=1).astype(np.uint8)


def unpack_plane(packed: np.ndarray, width: int, count: int) -> np.ndarray:
    """numpy mirror of the Unpack body for one plane."""
    per_byte = 8 // width
    shifts = (width * np.arange(per_byte)).astype(np.uint8)
    left = (packed.reshape(-1, 1) << shifts).astype(np.uint8)
    return (left >> np.uint8(8 - width)).reshape(-1)[:count]


def index_format(
    bits: int, opset: int, packing: str = "auto", grouped: bool = False, byte_aligned: bool = False
) -> str:
    """How `bits`-bit indices are stored at `opset`: uint8, uint4, uint2, lut or planes.

    `byte_aligned` (grouped palettes): every byte's indices share a palette group (see
    `byte_layout`), so the grouped lut applies."""
    if bits == 8 or packing == "uint8" or opset < MIN_BITSHIFT_OPSET:
        return "uint8"
    if packing == "auto" and bits in NATIVE and opset >= NATIVE[bits][0]:
        return f"uint{bits}"
    if packing == "auto" and bits in (1, 2, 4) and (not grouped or byte_aligned):
        return "lut"
    return "planes"


def format_of(p: Palettized, opset: int, packing: str = "auto") -> str:
    """index_format for the palettized tensor `p`."""
    grouped = p.groups > 1
    aligned = grouped and p.bits in (1, 2, 4) and byte_layout(p) is not None
    return index_format(p.bits, opset, packing, grouped, aligned)


def byte_layout(p: Palettized) -> tuple[int, int, int] | None:
    """(run, period, span) such that the palette group of packed byte q is
    (q // run % period) // span, when all 8/bits indices of every byte share a group
    (the grouped lut's condition); None when some byte straddles two groups."""
    if p.axis is None or p.groups == 1 or 8 % p.bits:
        return None
    per_byte = 8 // p.bits
    channels = p.shape[p.axis]
    inner = int(np.prod(p.shape[p.axis + 1 :], dtype=np.int64))
    if inner % per_byte == 0:  # a byte never leaves one channel
        return inner // per_byte, channels, p.group_size
    if p.axis == 0 and (p.group_size * inner) % per_byte == 0:  # groups are contiguous runs
        return p.group_size * inner // per_byte, p.groups, 1
    if inner == 1 and channels % per_byte == 0 and p.group_size % per_byte == 0:  # last axis
        return 1, channels // per_byte, p.group_size // per_byte
    return None


def stored_bytes(p: Palettized, opset: int, packing: str = "auto") -> int:
    """Bytes the stored form of `p` takes (indices, palette, scale, offsets or layout)."""
    n = int(np.prod(p.shape))
    kind = format_of(p, opset, packing)
    if kind == "uint8":
        size = n
    elif kind in ("uint4", "uint2"):
        size = -(-n * p.bits // 8)
    else:
        size = sum(-(-n * w // 8) for w in plane_widths(p.bits)) + 8 * len(p.shape)
    size += p.palette.size * p.palette.dtype.itemsize
    if p.scale is not None:
        size += p.scale.size * 4
    if p.groups > 1 and p.axis is not None:  # groups > 1 only along an axis
        size += 24 if kind == "lut" else 4 * p.shape[p.axis]
    return size
