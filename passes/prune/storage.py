"""Sparse storage that ORT runs: a pruned weight's file size shrinks without zip.

Why not ONNX `sparse_initializer`: ORT loads it, but onnx_ir (our IR) drops it on
load and save, and its indices are 64-bit (ORT also takes 32/16-bit linear
indices), so at 50% sparsity it is no smaller than dense: 0.5 x (4 + 4) bytes per
weight against 4. Measured in scripts/bench_prune.py.

What we store instead, per packed weight W (any float dtype):
- `W.values`: the non-zeros in row-major order, plus one trailing 0;
- `W.mask`:   a bitmask of the non-zero positions, 1 bit per element (np.packbits);
- `W.shape`:  the int64 shape;
and W is the output of one call to the model-local function
`onnxslim.sparse.Densify(values, mask, shape)`, written with standard ops only:

    bits  = (mask << [0..7]) >> 7            BitShift x2 (uint8), 8 bits per byte
    bits  = Slice(Reshape(bits, [-1]), 0, numel); as int64
    index = bits * (CumSum(bits, exclusive) - nnz) + nnz
    W     = Reshape(Gather(values, index), shape)

Set positions gather their value, the rest gather the trailing zero. Every input
is an initializer, so ORT inlines the function and constant-folds it when the
session starts (optimization level basic or higher); inference then runs on an
ordinary dense initializer at float speed. At 50% sparsity a float32 weight
costs 0.5 x 4 + 1/8 = 2.125 bytes per element instead of 4.

The packing must be the last step of a pipeline: other passes look for weights as
initializers. `UnpackSparseWeights` turns a packed model back into a dense one.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import onnx_ir as ir

from onnxslim.passes._options import option
from onnxslim.passes.prune._common import store_summary

DOMAIN = "onnxslim.sparse"
FUNCTION = "Densify"
MIN_OPSET = 11  # BitShift, CumSum
_PACKABLE = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16)


def pack(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values with a trailing zero, bitmask) of `array`."""
    flat = array.reshape(-1)
    nonzero = flat != 0
    values = np.concatenate([flat[nonzero], np.zeros(1, dtype=flat.dtype)])
    return values, np.packbits(nonzero)


def densify(values: np.ndarray, mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """numpy mirror of the Densify function."""
    numel = int(np.prod(shape))
    bits = np.unpackbits(mask)[:numel].astype(bool)
    out = np.zeros(numel, dtype=values.dtype)
    out[bits] = values[: int(bits.sum())]
    return out.reshape(shape)


def packed_bytes(array: np.ndarray) -> int:
    """Bytes the packed form stores."""
    nnz = int(np.count_nonzero(array))
    return (nnz + 1) * array.itemsize + -(-array.size // 8) + 8 * array.ndim


def densify_function(opset: int) -> ir.Function:
    """The `onnxslim.sparse.Densify` function over the model's default opset."""
    values = ir.Value(name="values")
    mask = ir.Value(name="mask")
    shape = ir.Value(name="shape")
    nodes: list[ir.Node] = []

    def op(op_type: str, inputs: list[ir.Value], **attributes) -> ir.Value:
        node = ir.node(op_type, inputs, attributes or None, version=None)
        nodes.append(node)
        return node.outputs[0]

    def const(array: np.ndarray) -> ir.Value:
        return op("Constant", [], value=ir.Tensor(array))

    column = op("Reshape", [mask, const(np.array([-1, 1], np.int64))])
    left = op("BitShift", [column, const(np.arange(8, dtype=np.uint8))], direction="LEFT")
    bits = op("BitShift", [left, const(np.array(7, np.uint8))], direction="RIGHT")
    flat = op("Reshape", [bits, const(np.array([-1], np.int64))])
    numel = op("ReduceProd", [shape], keepdims=1)
    cut = op("Slice", [flat, const(np.array([0], np.int64)), numel])
    on = op("Cast", [cut], to=ir.DataType.INT64)
    before = op("CumSum", [on, const(np.array(0, np.int64))], exclusive=1)
    nnz = op("Sub", [op("Size", [values]), const(np.array(1, np.int64))])
    index = op("Add", [op("Mul", [on, op("Sub", [before, nnz])]), nnz])
    dense = op("Reshape", [op("Gather", [values, index], axis=0), shape])
    dense.name = "dense"
    for i, node in enumerate(nodes):
        node.name = f"n{i}"
        for j, out in enumerate(node.outputs):
            if out is not dense:
                out.name = f"t{i}_{j}"
    graph = ir.Graph([values, mask, shape], [dense], nodes=nodes, opset_imports={"": opset})
    return ir.Function(DOMAIN, FUNCTION, graph=graph, attributes=[])


def default_opset(model: ir.Model) -> int:
    return int(model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0)))


@dataclasses.dataclass(frozen=True, kw_only=True)
class PackSparseWeights(ir.passes.InPlacePass):
    """Store sparse float initializers as values + bitmask, expanded by ORT at session start."""

    lossless: ClassVar[bool] = True
    min_elements: int = option(1024, "Leave tensors with fewer elements as they are.")
    min_saving: float = option(0.1, "Pack a tensor only if that saves at least this fraction of its bytes.")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        opset = default_opset(model)
        if opset < MIN_OPSET:
            store_summary(model, storage={"packed": [], "reason": f"opset {opset} < {MIN_OPSET}: "
                                          "BitShift/CumSum unavailable, weights stay dense"})
            return ir.passes.PassResult(model, False)
        graph = model.graph
        inputs = {v.name for v in graph.inputs}
        outputs = {v.name for v in graph.outputs}
        packed: list[dict[str, object]] = []
        first = next(iter(graph), None)
        for name, value in list(graph.initializers.items()):
            tensor = value.const_value
            if tensor is None or tensor.dtype not in _PACKABLE or tensor.size < self.min_elements:
                continue
            if name in inputs or name in outputs or not value.uses():
                continue
            array = tensor.numpy()
            size = packed_bytes(array)
            if size > (1 - self.min_saving) * array.nbytes:
                continue
            values, mask = pack(array)
            parts = [
                _initializer(graph, f"{name}.values", values),
                _initializer(graph, f"{name}.mask", mask),
                _initializer(graph, f"{name}.shape", np.array(array.shape, np.int64)),
            ]
            node = ir.node(FUNCTION, parts, domain=DOMAIN, name=f"densify/{name}")
            if first is not None:
                graph.insert_before(first, node)
            else:
                graph.append(node)
            out = node.outputs[0]
            out.dtype, out.shape = tensor.dtype, ir.Shape(array.shape)
            value.replace_all_uses_with(out)
            graph.initializers.pop(name)
            out.name = name
            packed.append({"name": name, "dense_bytes": int(array.nbytes), "packed_bytes": size})
        if packed:
            key = (DOMAIN, FUNCTION, "")
            if key not in model.functions:
                model.functions[key] = densify_function(opset)
            model.opset_imports.setdefault(DOMAIN, 1)
        store_summary(model, storage={"packed": packed, "reason": ""})
        return ir.passes.PassResult(model, bool(packed))


@dataclasses.dataclass(frozen=True, kw_only=True)
class UnpackSparseWeights(ir.passes.InPlacePass):
    """Turn values + bitmask weights (pack-sparse) back into dense initializers."""

    lossless: ClassVar[bool] = True

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        changed = False
        for node in list(graph):
            if node.domain != DOMAIN or node.op_type != FUNCTION:
                continue
            arrays = [v.const_value.numpy() if v is not None and v.const_value is not None else None
                      for v in node.inputs]
            if any(a is None for a in arrays):
                continue
            values, mask, shape = arrays
            dense = densify(values, mask, tuple(int(d) for d in shape))
            out = node.outputs[0]
            name = out.name
            out.name = None
            value = ir.Value(name=name, shape=ir.Shape(dense.shape), type=ir.TensorType(out.dtype or
                             ir.DataType.from_numpy(dense.dtype)), const_value=ir.Tensor(dense, name=name))
            graph.register_initializer(value)
            out.replace_all_uses_with(value)
            inputs = [v for v in node.inputs if v is not None]
            graph.remove(node, safe=True)
            for v in inputs:
                if not v.uses() and v.name in graph.initializers:
                    graph.initializers.pop(v.name)
            changed = True
        if not any(n.domain == DOMAIN for n in graph):
            model.functions.pop((DOMAIN, FUNCTION, ""), None)
            model.opset_imports.pop(DOMAIN, None)
        return ir.passes.PassResult(model, changed)


def packed_weights(model: ir.Model) -> dict[str, np.ndarray]:
    """Dense arrays of the weights packed in `model`, by weight name (for reports)."""
    result = {}
    for node in model.graph:
        if node.domain == DOMAIN and node.op_type == FUNCTION:
            arrays = [v.const_value.numpy() if v is not None and v.const_value is not None else None
                      for v in node.inputs]
            if all(a is not None for a in arrays):
                result[node.outputs[0].name] = densify(arrays[0], arrays[1], tuple(int(d) for d in arrays[2]))
    return result


def _initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    base, i = name, 1
    while name in graph.initializers:
        name, i = f"{base}_{i}", i + 1
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                     const_value=ir.Tensor(array, name=name))
    graph.register_initializer(value)
    return value
