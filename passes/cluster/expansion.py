"""The expansion functions: model-local ONNX functions that rebuild a palettized weight.

Why its own module: each stored form needs a function in the `onnxslim.palette`
domain (Expand, ExpandGrouped, ExpandPacked<w>, ExpandPackedGrouped<w>, Unpack_<widths>,
ScalePalette, WidenPalette), written with standard ops only so ORT inlines and
constant-folds them at session start; building those graphs compactly is one job,
apart from choosing forms (`packing`) and editing the model (`storage`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import onnx_ir as ir

DOMAIN = "onnxslim.palette"


class Op(Protocol):
    """`op(op_type, args, **attributes)`: append a node to the function body, return its output."""

    def __call__(self, op_type: str, args: list[ir.Value], **attributes: Any) -> ir.Value: ...


Const = Callable[[np.ndarray], ir.Value]
"""`const(array)`: the body's constant holding `array` (made once per distinct array)."""

Body = Callable[[Op, Const, list[ir.Value]], ir.Value]


def unpack_name(widths: Sequence[int]) -> str:
    """The op type of the function that rebuilds indices from bit planes of `widths`."""
    return "Unpack_" + "_".join(str(w) for w in widths)


def ensure_function(model: ir.Model, op_type: str, opset: int) -> None:
    key = (DOMAIN, op_type, "")
    if key in model.functions:
        return
    if op_type == "Expand":
        function = _function(op_type, ["indices", "palette"], _expand_body, opset)
    elif op_type == "ExpandGrouped":
        function = _function(op_type, ["indices", "palette", "offsets"], _expand_body, opset)
    elif op_type == "ScalePalette":
        function = _function(op_type, ["q", "scale"], _scale_body, opset)
    elif op_type.startswith("ExpandPackedGrouped"):
        width = int(op_type[len("ExpandPackedGrouped") :])
        function = _function(
            op_type,
            ["packed", "palette", "shape", "layout"],
            lambda op, const, inputs: _grouped_lut_body(op, const, inputs, width),
            opset,
        )
    elif op_type.startswith("ExpandPacked"):
        width = int(op_type[len("ExpandPacked") :])
        function = _function(
            op_type,
            ["packed", "palette", "shape"],
            lambda op, const, inputs: _lut_body(op, const, inputs, width),
            opset,
        )
    elif op_type == "WidenPalette":
        function = _function(
            op_type,
            ["narrow"],
            lambda op, const, inputs: op("Cast", inputs, to=ir.DataType.FLOAT),
            opset,
        )
    else:
        widths = tuple(int(w) for w in op_type.split("_")[1:])
        names = [f"plane{w}_{i}" for i, w in enumerate(widths)] + ["shape"]
        function = _function(
            op_type, names, lambda op, const, inputs: _unpack_body(op, const, inputs, widths), opset
        )
    model.functions[key] = function


def _function(name: str, input_names: list[str], body: Body, opset: int) -> ir.Function:
    """A model-local function built by `body(op: Op, const: Const, inputs)`, written compactly: each
    constant once (int64 and float32 scalars and vectors as value_int(s)/value_float(s)),
    unnamed nodes and short value names, since every model that uses it carries it."""
    inputs = [ir.Value(name=n) for n in input_names]
    nodes: list[ir.Node] = []
    constants: dict[tuple[str, tuple[int, ...], bytes], ir.Value] = {}

    def op(op_type: str, args: list[ir.Value], **attributes: Any) -> ir.Value:
        node = ir.node(op_type, args, attributes or None, version=None)
        nodes.append(node)
        return node.outputs[0]

    def const(array: np.ndarray) -> ir.Value:
        array = np.asarray(array)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in constants:
            listed = array.reshape(-1).tolist()
            # value_int(s)/value_float(s) came with opset 12; opset 11 knows only `value`.
            if opset < 12 or array.ndim > 1:
                attribute = {"value": ir.Tensor(array)}
            elif array.dtype == np.int64:
                attribute = {"value_int": listed[0]} if array.ndim == 0 else {"value_ints": listed}
            elif array.dtype == np.float32:
                attribute = (
                    {"value_float": listed[0]} if array.ndim == 0 else {"value_floats": listed}
                )
            else:
                attribute = {"value": ir.Tensor(array)}
            constants[key] = op("Constant", [], **attribute)
        return constants[key]

    result = body(op, const, inputs)
    result.name = "output"
    count = 0
    for node in nodes:
        for out in node.outputs:
            if out is not result:
                out.name = np.base_repr(count, 36).lower()
                count += 1
    graph = ir.Graph(inputs, [result], nodes=nodes, opset_imports={"": opset})
    for node in nodes:
        node.name = ""  # the graph names nodes it gets; the function needs none
    return ir.Function(DOMAIN, name, graph=graph, attributes=[])


def _expand_body(op: Op, const: Const, inputs: list[ir.Value]) -> ir.Value:
    index = op("Cast", [inputs[0]], to=ir.DataType.INT32)
    if len(inputs) > 2:
        index = op("Add", [index, inputs[2]])
    return op("Gather", [inputs[1], index], axis=0)


def _scale_body(op: Op, const: Const, inputs: list[ir.Value]) -> ir.Value:
    values = op("Mul", [op("Cast", [inputs[0]], to=ir.DataType.FLOAT), inputs[1]])
    return op("Reshape", [values, const(np.array([-1], np.int64))])


def _byte_fields(op: Op, const: Const, width: int) -> ir.Value:
    """int64 [256, 8/width]: the indices each byte value holds, first in the high bits."""
    per_byte = 8 // width
    byte_values = op(
        "Range",
        [
            const(np.array(0, np.int64)),
            const(np.array(256, np.int64)),
            const(np.array(1, np.int64)),
        ],
    )
    column = op("Reshape", [byte_values, const(np.array([-1, 1], np.int64))])
    divisors = (2 ** (8 - width * (np.arange(per_byte) + 1))).astype(np.int64)
    return op("Mod", [op("Div", [column, const(divisors)]), const(np.array(1 << width, np.int64))])


def _grouped_lut_body(op: Op, const: Const, inputs: list[ir.Value], width: int) -> ir.Value:
    """The lut with one palette per channel group: a [groups x 256, 8/width] table, and each
    byte gathered at 256 x (its group) + its value, its group computed from `layout`
    (run, period, span) as (q // run % period) // span (see byte_layout)."""
    packed, palette, shape, layout = inputs
    k = 1 << width
    per_byte = 8 // width
    one = const(np.array(1, np.int64))
    fields = _byte_fields(op, const, width)  # [256, pb]
    groups = op("Div", [op("Size", [palette]), const(np.array(k, np.int64))])
    base = op(
        "Mul",
        [op("Range", [const(np.array(0, np.int64)), groups, one]), const(np.array(k, np.int64))],
    )
    base = op("Reshape", [base, const(np.array([-1, 1, 1], np.int64))])
    table = op("Gather", [palette, op("Add", [base, fields])], axis=0)  # [G, 256, pb]
    table = op("Reshape", [table, const(np.array([-1, per_byte], np.int64))])
    position = op("Range", [const(np.array(0, np.int64)), op("Size", [packed]), one])
    run, period, span = (
        op("Gather", [layout, const(np.array(i, np.int64))], axis=0) for i in range(3)
    )
    group = op("Div", [op("Mod", [op("Div", [position, run]), period]), span])
    byte = op("Cast", [packed], to=ir.DataType.INT64)
    index = op("Add", [byte, op("Mul", [group, const(np.array(256, np.int64))])])
    values = op("Gather", [table, index], axis=0)  # [bytes, pb]
    flat = op("Reshape", [values, const(np.array([-1], np.int64))])
    count = op("ReduceProd", [shape], keepdims=1)
    cut = op("Slice", [flat, const(np.array([0], np.int64)), count])
    return op("Reshape", [cut, shape])


def _lut_body(op: Op, const: Const, inputs: list[ir.Value], width: int) -> ir.Value:
    """Packed bytes straight to values: a [256, 8/width] table of palette values per byte value
    (built from the palette by Range/Div/Mod/Gather), gathered by byte. About twice as fast
    at session start as unpacking bits with BitShift, then gathering."""
    packed, palette, shape = inputs
    table = op("Gather", [palette, _byte_fields(op, const, width)], axis=0)  # [256, per_byte]
    values = op("Gather", [table, op("Cast", [packed], to=ir.DataType.INT32)], axis=0)
    flat = op("Reshape", [values, const(np.array([-1], np.int64))])
    count = op("ReduceProd", [shape], keepdims=1)
    cut = op("Slice", [flat, const(np.array([0], np.int64)), count])
    return op("Reshape", [cut, shape])


def _unpack_body(op: Op, const: Const, inputs: list[ir.Value], widths: tuple[int, ...]) -> ir.Value:
    shape = inputs[-1]
    count = op("ReduceProd", [shape], keepdims=1)
    total: ir.Value | None = None
    remaining = sum(widths)
    for plane, width in zip(inputs[:-1], widths, strict=True):
        remaining -= width
        per_byte = 8 // width
        column = op("Reshape", [plane, const(np.array([-1, 1], np.int64))])
        left = op(
            "BitShift",
            [column, const((width * np.arange(per_byte)).astype(np.uint8))],
            direction="LEFT",
        )
        fields = op("BitShift", [left, const(np.array([8 - width], np.uint8))], direction="RIGHT")
        flat = op("Reshape", [fields, const(np.array([-1], np.int64))])
        cut = op("Slice", [flat, const(np.array([0], np.int64)), count])
        value = op("Cast", [cut], to=ir.DataType.INT32)
        if remaining:
            value = op("Mul", [value, const(np.array(1 << remaining, np.int32))])
        total = value if total is None else op("Add", [total, value])
    assert total is not None
    return op("Reshape", [total, shape])
