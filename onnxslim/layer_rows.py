"""How a Conv, Gemm or MatMul input becomes the rows a least-squares refit multiplies.

A layer computes Y = X W^T (+ b) once its input is laid out as rows X whose columns
line up with the flattened weight W.reshape(out, -1): a Conv's unfolded patches
(per group), a MatMul's input vectors. activations.py captures those rows on ONNX
Runtime; this module only knows the geometry.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from numpy.lib.stride_tricks import sliding_window_view


@dataclass(frozen=True)
class LayerGeometry:
    """How a layer's input tensor turns into rows that multiply W.reshape(out, -1).T."""

    node_name: str
    op_type: str
    input_name: str
    output_name: str
    groups: int = 1
    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    pads: tuple[int, ...] | None = None  # begin..., end...; None with auto_pad
    auto_pad: str = "NOTSET"
    trans_a: bool = False

    def row_count(self, x: np.ndarray) -> int:
        """Number of rows (output positions) this input yields."""
        if self.op_type == "Conv":
            return int(x.shape[0] * math.prod(self._conv_out(x.shape)[0]))
        if self.op_type == "Gemm":
            return int(x.shape[1] if self.trans_a else x.shape[0])
        return int(math.prod(x.shape[:-1])) if x.ndim > 1 else 1

    def rows(self, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Input rows at `positions` (indices into the flattened output positions): [R, K]."""
        if self.op_type == "Conv":
            return self._conv_rows(x, positions)
        if self.op_type == "Gemm":
            matrix = x.T if self.trans_a else x
            return np.asarray(matrix)[positions]
        return np.asarray(x).reshape(-1, x.shape[-1])[positions]

    def targets(self, y: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Output rows at `positions`: [R, out]."""
        if self.op_type == "Conv":
            return np.moveaxis(y, 1, -1).reshape(-1, y.shape[1])[positions]
        return np.asarray(y).reshape(-1, y.shape[-1])[positions]

    def _conv_out(
        self, shape: Sequence[int]
    ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """Output spatial shape and (begin, end) pads for an input of `shape`."""
        spatial = tuple(shape[2:])
        nd = len(spatial)
        effective = [(k - 1) * d + 1 for k, d in zip(self.kernel, self.dilations, strict=False)]
        if self.pads is not None and self.auto_pad in ("NOTSET", ""):
            begin, end = self.pads[:nd], self.pads[nd:]
        elif self.auto_pad == "VALID":
            begin = end = (0,) * nd
        else:
            begin_l, end_l = [], []
            for size, s, e in zip(spatial, self.strides, effective, strict=False):
                out = -(-size // s)
                total = max((out - 1) * s + e - size, 0)
                small, large = total // 2, total - total // 2
                begin_l.append(small if self.auto_pad == "SAME_UPPER" else large)
                end_l.append(large if self.auto_pad == "SAME_UPPER" else small)
            begin, end = tuple(begin_l), tuple(end_l)
        out_spatial = tuple(
            (size + b + e - eff) // s + 1
            for size, b, e, eff, s in zip(
                spatial, begin, end, effective, self.strides, strict=False
            )
        )
        return out_spatial, tuple(begin), tuple(end)

    def _conv_rows(self, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        out_spatial, begin, end = self._conv_out(x.shape)
        nd = len(out_spatial)
        padded = np.pad(x, [(0, 0), (0, 0)] + list(zip(begin, end, strict=False)))
        effective = tuple(
            (k - 1) * d + 1 for k, d in zip(self.kernel, self.dilations, strict=False)
        )
        windows = sliding_window_view(padded, effective, axis=tuple(range(2, 2 + nd)))
        index = np.unravel_index(positions, (x.shape[0], *out_spatial))
        starts = tuple(index[1 + i] * self.strides[i] for i in range(nd))
        # Advanced indices split by a slice: the sampled-row axis comes first -> [R, C, *effective].
        patches = windows[(index[0], slice(None)) + starts]
        patches = patches[
            (slice(None), slice(None)) + tuple(slice(None, None, d) for d in self.dilations)
        ]
        return patches.reshape(len(positions), -1)


def layer_geometry(node: ir.Node, output_name: str | None = None) -> LayerGeometry | None:
    """The row geometry of a Conv, Gemm or MatMul node; None for anything else.

    `output_name` overrides where targets are read (for example the Add that
    carries a MatMul's bias).
    """
    if node.domain not in ("", "ai.onnx") or not node.inputs or node.inputs[0] is None:
        return None
    x = node.inputs[0]
    out = output_name or node.outputs[0].name
    if x.name is None or out is None:  # rows are read by value name
        return None
    name = node.name or out
    if node.op_type == "Conv":
        weight = node.inputs[1]
        shape = _static_shape(weight)
        if shape is None or len(shape) < 3:
            return None
        nd = len(shape) - 2
        attrs = node.attributes
        kernel = tuple(attrs.get_ints("kernel_shape") or shape[2:])
        pads = attrs.get_ints("pads")
        auto_pad = attrs.get_string("auto_pad", "NOTSET") or "NOTSET"
        return LayerGeometry(
            node_name=name,
            op_type="Conv",
            input_name=x.name,
            output_name=out,
            groups=attrs.get_int("group", 1),
            kernel=kernel,
            strides=tuple(attrs.get_ints("strides") or (1,) * nd),
            dilations=tuple(attrs.get_ints("dilations") or (1,) * nd),
            pads=tuple(pads)
            if pads is not None
            else (None if auto_pad not in ("NOTSET", "") else (0,) * (2 * nd)),
            auto_pad=auto_pad,
        )
    if node.op_type == "Gemm":
        return LayerGeometry(
            node_name=name,
            op_type="Gemm",
            input_name=x.name,
            output_name=out,
            trans_a=bool(node.attributes.get_int("transA", 0)),
        )
    if node.op_type == "MatMul":
        return LayerGeometry(node_name=name, op_type="MatMul", input_name=x.name, output_name=out)
    return None


def _static_shape(value: ir.Value | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    if value.const_value is not None:
        return tuple(value.const_value.shape.numpy())
    if value.shape is not None:
        dims = tuple(d for d in value.shape if isinstance(d, int))
        if len(dims) == len(value.shape):
            return dims
    return None
