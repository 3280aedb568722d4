"""Palettized storage that ONNX Runtime runs: packed indices + palette, expanded at session start.

A palettized weight W (shape S, k = 2^bits entries per palette group) is stored as

- its indices, packed to `bits` bits each, in one of these forms:
  * native: an initializer of type UINT4 (bits 4, opset >= 21), UINT2 (bits 2,
    opset >= 25) or UINT8 (bits 8; also any bits when packing is "uint8"), with
    W's shape;
  * lut (one palette, bits 1, 2 or 4, where the opset lacks the native type):
    bytes holding 8/bits indices each, first element in the high bits, and
    `ExpandPacked<bits>(packed, palette, shape)` builds a [256, 8/bits] table of
    palette values per byte value and gathers it by byte: twice as fast at
    session start as unpacking bits (measured on an 11.7M-element tensor:
    +0.26 s over a float initializer against +0.5 s);
  * bit planes (the rest): `bits` is split into planes of 4, 2 and 1 bits
    (7 = 4+2+1, 6 = 4+2, 5 = 4+1, 3 = 2+1), each packed into bytes like the above,
    and `Unpack_<widths>(planes..., shape)` rebuilds int32 indices with BitShift,
    Slice, Cast, Mul, Add (opset >= 11);
- the palette: a flat float tensor [groups * k]; per-channel palettes of float32
  weights as float16, widened by `WidenPalette` (a Cast; half the bytes, and the
  rounding is far below the clustering error); or (int8 grid) int8 [groups, k]
  with a float scale [groups, 1], made flat by `ScalePalette(q, scale)`
  (Cast + Mul + Reshape: no DequantizeLinear, so the float model is not mistaken
  for an already quantized one);
- `Expand(indices, palette)` (all but lut): Gather(palette, Cast<int32>(indices)), or
  `ExpandGrouped(indices, palette, offsets)`, which first adds group x k to each
  index; `offsets` is int32 [C, 1, ...] broadcasting along the channel axis.

The functions are model-local, in the domain `onnxslim.palette`, written with
standard ops only. Every input is an initializer, so ORT inlines them and its
constant folding (optimization level basic and up, the default) replaces each
expansion by a dense initializer once, when the session starts: inference then
runs on ordinary float weights at float speed (the tests check ORT's optimized
graph and the latency). The file holds bits/32 of the float weight plus the
palettes: a float32 weight shrinks about 32/bits times, without zip.

`packed_weights(model)` reads the dense weights back in numpy; `UnpackPalette`
turns the storage back into plain initializers; `PackPalette` stores any
initializer that already holds few distinct values (a model clustered elsewhere,
or the int8 weights `onnxslim quantize` makes from a clustered model) this way,
losslessly.

This module edits models (write, read back, the two passes); how indices are packed
and what a form costs is `packing`, the ONNX functions that expand them `expansion`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import onnx_ir as ir

from onnxslim.graphs import fresh_name
from onnxslim.passes._options import check_choice, option

from .expansion import DOMAIN, ensure_function, unpack_name
from .packing import (
    NATIVE,
    PACKINGS,
    byte_layout,
    format_of,
    pack_plane,
    plane_widths,
    stored_bytes,
    unpack_plane,
)
from .palette import Palettized, distinct, group_offsets
from .weights import channel_axes

_INTEGER_PALETTE = (
    ir.DataType.INT8,
    ir.DataType.UINT8,
    ir.DataType.INT16,
    ir.DataType.UINT16,
    ir.DataType.INT32,
)
STORABLE = (
    ir.DataType.FLOAT,
    ir.DataType.FLOAT16,
    ir.DataType.DOUBLE,
    ir.DataType.BFLOAT16,
) + _INTEGER_PALETTE


def write(
    graph: ir.Graph, model: ir.Model, weight: ir.Value, p: Palettized, *, packing: str = "auto"
) -> ir.Value:
    """Replace the initializer `weight` by the expansion of `p`; returns the value now named so."""
    opset = default_opset(model)
    name = weight.name or "weight"
    kind = format_of(p, opset, packing)
    nodes: list[ir.Node] = []
    palette = _palette_value(graph, name, p, nodes)
    if kind == "lut":
        packed = _initializer(graph, f"{name}.indices{p.bits}b", pack_plane(p.indices, p.bits))
        shape = _initializer(graph, f"{name}.shape", np.array(p.shape, np.int64))
        inputs, op_type = [packed, palette, shape], f"ExpandPacked{p.bits}"
        if p.groups > 1:
            layout = byte_layout(p)
            assert layout is not None
            inputs.append(_initializer(graph, f"{name}.layout", np.array(layout, np.int64)))
            op_type = f"ExpandPackedGrouped{p.bits}"
        expand = ir.node(op_type, inputs, domain=DOMAIN, name=f"palette/{name}")
        return _finish_write(graph, model, weight, expand, nodes, p, opset)
    if kind == "planes":
        planes, widths = [], plane_widths(p.bits)
        remaining = p.bits
        for width in widths:
            remaining -= width
            plane = (p.indices.astype(np.int64) >> remaining) & ((1 << width) - 1)
            planes.append(_initializer(graph, f"{name}.indices{width}b", pack_plane(plane, width)))
        shape = _initializer(graph, f"{name}.shape", np.array(p.shape, np.int64))
        unpack = ir.node(
            unpack_name(widths), [*planes, shape], domain=DOMAIN, name=f"unpack/{name}"
        )
        unpack.outputs[0].dtype = ir.DataType.INT32
        unpack.outputs[0].shape = ir.Shape(p.shape)
        unpack.outputs[0].name = fresh_name(graph, f"{name}.indices")
        nodes.append(unpack)
        indices = unpack.outputs[0]
    elif kind == "uint8":
        indices = _initializer(graph, f"{name}.indices", p.indices.astype(np.uint8))
    else:
        _, dtype, np_type = NATIVE[p.bits]
        indices = _initializer(graph, f"{name}.indices", p.indices.astype(np_type), dtype=dtype)
    inputs = [indices, palette]
    if p.groups > 1:
        offsets = group_offsets(p.shape, p.axis, p.group_size, p.k).astype(np.int32)
        inputs.append(_initializer(graph, f"{name}.offsets", offsets))
    op_type = "ExpandGrouped" if p.groups > 1 else "Expand"
    expand = ir.node(op_type, inputs, domain=DOMAIN, name=f"palette/{name}")
    return _finish_write(graph, model, weight, expand, nodes, p, opset)


def _palette_value(graph: ir.Graph, name: str, p: Palettized, nodes: list[ir.Node]) -> ir.Value:
    """The flat palette: an initializer, or ScalePalette / WidenPalette of one (put in `nodes`)."""
    if p.scale is not None:
        q = _initializer(graph, f"{name}.palette_q", np.ascontiguousarray(p.palette))
        scale = _initializer(
            graph, f"{name}.palette_scale", p.scale.astype(np.float32).reshape(-1, 1)
        )
        helper = ir.node("ScalePalette", [q, scale], domain=DOMAIN, name=f"scale/{name}")
    elif p.palette.dtype == np.float16 and p.dtype == np.float32:
        narrow = _initializer(
            graph, f"{name}.palette16", np.ascontiguousarray(p.palette.reshape(-1))
        )
        helper = ir.node("WidenPalette", [narrow], domain=DOMAIN, name=f"widen/{name}")
    else:
        flat = np.ascontiguousarray(p.palette.reshape(-1).astype(p.dtype))
        return _initializer(graph, f"{name}.palette", flat)
    helper.outputs[0].dtype = ir.DataType.FLOAT
    helper.outputs[0].shape = ir.Shape([p.palette.size])
    helper.outputs[0].name = fresh_name(graph, f"{name}.palette")
    nodes.append(helper)
    return helper.outputs[0]


def _finish_write(
    graph: ir.Graph,
    model: ir.Model,
    weight: ir.Value,
    expand: ir.Node,
    nodes: list[ir.Node],
    p: Palettized,
    opset: int,
) -> ir.Value:
    """Put `nodes` + `expand` in front of the graph and hand `weight`'s readers and name over."""
    name = weight.name or "weight"
    nodes.append(expand)
    out = expand.outputs[0]
    if weight.dtype is not None:
        out.dtype = weight.dtype
    out.shape = ir.Shape(p.shape)
    _insert_front(graph, nodes)
    weight.replace_all_uses_with(out)
    graph.initializers.pop(name, None)
    out.name = name
    for node in nodes:
        ensure_function(model, node.op_type, opset)
    model.opset_imports.setdefault(DOMAIN, 1)
    return out


@dataclasses.dataclass(frozen=True)
class Footprint:
    """What storing one palettized weight adds to a file: its own bytes, the functions it needs."""

    bytes: int  # initializers and nodes, protobuf framing included
    functions: dict[str, int]  # op type -> bytes of its function, paid once per model


def footprint(p: Palettized, name: str, opset: int, packing: str = "auto") -> Footprint:
    """The exact serialized cost of `write` for `p`, measured on a scratch model."""
    placeholder = ir.Value(
        name=name,
        shape=ir.Shape([1]),
        type=ir.TensorType(ir.DataType.from_numpy(p.dtype)),
        const_value=ir.Tensor(np.zeros(1, p.dtype), name=name),
    )
    reader = ir.node("Identity", [placeholder])
    graph = ir.Graph(
        [], reader.outputs, nodes=[reader], initializers=[placeholder], opset_imports={"": opset}
    )
    model = ir.Model(graph, ir_version=10)
    write(graph, model, placeholder, p, packing=packing)
    size = sum(
        _framed(ir.serde.serialize_tensor(v.const_value).ByteSize())
        for v in graph.initializers.values()
        if v.const_value is not None
    )
    size += sum(_framed(ir.serde.serialize_node(n).ByteSize()) for n in graph if n is not reader)
    functions = {
        key[1]: _framed(ir.serde.serialize_function(f).ByteSize())
        for key, f in model.functions.items()
    }
    return Footprint(size, functions)


def _framed(size: int) -> int:
    """A message's bytes inside its parent: field tag + length varint + payload."""
    return 1 + max(1, (size.bit_length() + 6) // 7) + size


def default_opset(model: ir.Model) -> int:
    return int(model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1)))


def expansion_nodes(model: ir.Model) -> list[ir.Node]:
    """The Expand/ExpandGrouped nodes of the main graph."""
    return [
        n
        for n in model.graph
        if n.domain == DOMAIN
        and (n.op_type in ("Expand", "ExpandGrouped") or n.op_type.startswith("ExpandPacked"))
    ]


def read(node: ir.Node) -> np.ndarray | None:
    """The dense tensor an Expand* node makes; None if an input is not constant."""
    if node.op_type.startswith("ExpandPacked"):
        packed, palette, shape = (
            _const(node.inputs[0]),
            _palette_array(node.inputs[1]),
            _const(node.inputs[2]),
        )
        if packed is None or palette is None or shape is None:
            return None
        dims = tuple(int(d) for d in shape)
        width = int(node.op_type.rsplit("d", 1)[-1])  # ExpandPacked<w>, ExpandPackedGrouped<w>
        per_byte = 8 // width
        index = unpack_plane(packed, width, packed.size * per_byte).astype(np.int64)
        if node.op_type.startswith("ExpandPackedGrouped"):
            layout = _const(node.inputs[3])
            if layout is None:
                return None
            run, period, span = (int(v) for v in layout)
            group = (np.arange(packed.size, dtype=np.int64) // run % period) // span
            index = index + np.repeat(group, per_byte) * (1 << width)
        return palette.reshape(-1)[index[: int(np.prod(dims))]].reshape(dims)
    indices = _index_array(node.inputs[0])
    palette = _palette_array(node.inputs[1])
    if indices is None or palette is None:
        return None
    index = indices.astype(np.int64)
    if node.op_type == "ExpandGrouped":
        offsets = _const(node.inputs[2])
        if offsets is None:
            return None
        index = index + offsets.astype(np.int64)
    return palette.reshape(-1)[index]


def packed_weights(model: ir.Model) -> dict[str, np.ndarray]:
    """Dense arrays of the palettized weights of `model`, by weight name."""
    result = {}
    for node in expansion_nodes(model):
        dense = read(node)
        if dense is not None:
            result[node.outputs[0].name or ""] = dense
    return result


@dataclasses.dataclass(frozen=True, kw_only=True)
class PackPalette(ir.passes.InPlacePass):
    """Store initializers holding few distinct values as packed indices + palette (lossless)."""

    lossless: ClassVar[bool] = True
    max_bits: int = option(6, "Pack tensors whose groups hold at most 2^max_bits distinct values.")
    min_elements: int = option(1024, "Leave tensors with fewer elements as they are.")
    min_saving: float = option(
        0.2, "Pack only when the file shrinks by at least this fraction of the tensor."
    )
    packing: str = option(
        "auto",
        "auto: UINT4/UINT2 where the opset has them, else bit planes; bits: always "
        "bit planes; uint8: one byte per index.",
        choices=PACKINGS,
    )

    def __post_init__(self) -> None:
        check_choice(self, "packing")
        if not 1 <= self.max_bits <= 8:
            raise ValueError(f"max_bits must be in 1..8, got {self.max_bits}")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        opset = default_opset(model)
        axes = channel_axes(model)
        protected = {v.name for v in graph.inputs} | {v.name for v in graph.outputs}
        changed = False
        for name, value in list(graph.initializers.items()):
            tensor = value.const_value
            if tensor is None or tensor.dtype not in STORABLE or tensor.size < self.min_elements:
                continue
            if name in protected or not value.uses():
                continue
            array = tensor.numpy()
            best = _best_form(array, axes.get(name), self.max_bits, opset, self.packing)
            if (
                best is None
                or stored_bytes(best, opset, self.packing) > (1 - self.min_saving) * array.nbytes
            ):
                continue
            write(graph, model, value, best, packing=self.packing)
            changed = True
        return ir.passes.PassResult(model, changed)


@dataclasses.dataclass(frozen=True, kw_only=True)
class UnpackPalette(ir.passes.InPlacePass):
    """Turn palettized weights (cluster-weights, pack-palette) back into plain initializers."""

    lossless: ClassVar[bool] = True

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        changed = False
        for node in expansion_nodes(model):
            dense = read(node)
            if dense is None:
                continue
            out = node.outputs[0]
            name = out.name
            helpers = [
                producer
                for v in node.inputs
                if v is not None and (producer := v.producer()) is not None
            ]
            leaves = [v for v in node.inputs if v is not None]
            for helper in helpers:
                leaves.extend(v for v in helper.inputs if v is not None)
            out.name = None
            tensor = ir.Tensor(dense, name=name)
            value = ir.Value(
                name=name,
                shape=ir.Shape(dense.shape),
                type=ir.TensorType(tensor.dtype),
                const_value=tensor,
            )
            graph.register_initializer(value)
            out.replace_all_uses_with(value, replace_graph_outputs=True)
            graph.remove(node, safe=True)
            for helper in helpers:
                if not any(o.uses() for o in helper.outputs):
                    graph.remove(helper, safe=True)
            for leaf in leaves:
                if leaf.name is not None and leaf.name in graph.initializers and not leaf.uses():
                    graph.initializers.pop(leaf.name)
            changed = True
        drop_unused_functions(model)
        return ir.passes.PassResult(model, changed)


def drop_unused_functions(model: ir.Model) -> None:
    """Remove the palette functions (and the domain import) nothing calls any more."""
    called = {n.op_type for n in model.graph if n.domain == DOMAIN}
    for key in [key for key in model.functions if key[0] == DOMAIN and key[1] not in called]:
        del model.functions[key]
    if not called:
        model.opset_imports.pop(DOMAIN, None)


# ---------------------------------------------------------------------------


def _best_form(
    array: np.ndarray, axis: int | None, max_bits: int, opset: int, packing: str
) -> Palettized | None:
    """The smaller exact palettized form: one palette, or one per channel along `axis`."""
    candidates = [distinct(array, None, 1, max_bits)]
    if axis is not None and array.ndim:
        candidates.append(distinct(array, axis, 1, max_bits))
    found = [c for c in candidates if c is not None]
    return min(found, key=lambda c: stored_bytes(c, opset, packing)) if found else None


def _index_array(value: ir.Value | None) -> np.ndarray | None:
    if value is None:
        return None
    if value.const_value is not None:
        return np.asarray(value.const_value.numpy()).astype(np.int64)
    node = value.producer()
    if node is None or node.domain != DOMAIN or not node.op_type.startswith("Unpack_"):
        return None
    widths = tuple(int(w) for w in node.op_type.split("_")[1:])
    arrays = [a for v in node.inputs if (a := _const(v)) is not None]
    if len(arrays) != len(node.inputs):
        return None
    shape = tuple(int(d) for d in arrays[-1])
    count = int(np.prod(shape))
    index = np.zeros(count, np.int64)
    for width, plane in zip(widths, arrays[:-1], strict=True):
        index = (index << width) | unpack_plane(plane, width, count).astype(np.int64)
    return index.reshape(shape)


def _palette_array(value: ir.Value | None) -> np.ndarray | None:
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    node = value.producer()
    if node is not None and node.domain == DOMAIN and node.op_type == "WidenPalette":
        narrow = _const(node.inputs[0])
        return None if narrow is None else narrow.astype(np.float32)
    if node is None or node.domain != DOMAIN or node.op_type != "ScalePalette":
        return None
    q, scale = _const(node.inputs[0]), _const(node.inputs[1])
    if q is None or scale is None:
        return None
    return (q.astype(np.float32) * scale.astype(np.float32)).reshape(-1)


def _const(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def _initializer(
    graph: ir.Graph, base: str, array: np.ndarray, dtype: ir.DataType | None = None
) -> ir.Value:
    name = fresh_name(graph, base)
    tensor = (
        ir.Tensor(array, dtype=dtype, name=name)
        if dtype is not None
        else ir.Tensor(array, name=name)
    )
    value = ir.Value(
        name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype), const_value=tensor
    )
    graph.register_initializer(value)
    return value


def _insert_front(graph: ir.Graph, nodes: Sequence[ir.Node]) -> None:
    first = next(iter(graph), None)
    if first is None:
        graph.extend(nodes)
    else:
        graph.insert_before(first, nodes)
