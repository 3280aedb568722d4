"""Sparse storage that ORT runs: a pruned model's file shrinks without zip.

Why not ONNX `sparse_initializer`: ORT loads it, but onnx_ir (our IR) drops it on
load and save, and its indices are 64-bit (ORT also takes 32-bit linear indices),
so at 50% sparsity it is no smaller than dense: 0.5 x (4 + 4) bytes per weight
against 4 (scripts/bench_prune.py measures it).

What we store instead: the sparse weights of one dtype, flattened and
concatenated into one blob (split into blobs of at most BLOB_ELEMENTS), as
- `values`: the non-zeros in order, plus one trailing 0;
- `mask`:   a bitmask of the non-zero positions, 1 bit per element (np.packbits);
- `nnz`:    the number of non-zeros (int64 scalar);
and the weights are rebuilt by a dozen standard ops (nodes named
`onnxslim.sparse/<blob>/...`):

    bits  = (Reshape(mask, [-1, 1]) << [0..7]) >> 7      BitShift x2, uint8
    on    = Cast(Reshape(bits, [-1]), int64)
    index = on * (CumSum(on, exclusive) - nnz) + nnz
    flat  = Gather(values, index)

(set positions gather their value, the rest the trailing zero), then one Split
of `flat` into the weights and one Reshape per weight, which keeps its name.
Every input is an initializer, so ORT constant-folds it all at session start
(optimization level basic or higher); inference then runs on ordinary dense
initializers, at float speed. At 50% sparsity a float32 weight costs
0.5 x 4 + 1/8 = 2.125 bytes per element instead of 4. ORT folds node by node at a
fixed cost each, so one blob per dtype (not one expansion per weight) and plain
nodes (a model-local function measured ~10 ms slower to start: ORT inlines it
first) keep the session-start cost small.

The packing must be the last step of a pipeline: other passes look for weights as
initializers. `UnpackSparseWeights` turns a packed model back into a dense one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import onnx_ir as ir

from onnxslim.passes._options import option
from onnxslim.passes.prune._common import store_summary

DOMAIN = "onnxslim.sparse"
MIN_OPSET = 11  # BitShift, CumSum
BLOB_ELEMENTS = 1 << 23  # bounds the int64 index array ORT builds while folding (64 MiB)
_PACKABLE = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16)


def pack(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values with a trailing zero, bitmask) of `array`."""
    flat = array.reshape(-1)
    nonzero = flat != 0
    values = np.concatenate([flat[nonzero], np.zeros(1, dtype=flat.dtype)])
    return values, np.packbits(nonzero)


def densify(values: np.ndarray, mask: np.ndarray, numel: int | None = None) -> np.ndarray:
    """numpy mirror of the expansion: the flat dense vector (8 x len(mask) long, or numel)."""
    bits = np.unpackbits(mask).astype(bool)
    out = np.zeros(len(bits), dtype=values.dtype)
    out[bits] = values[: int(bits.sum())]
    return out if numel is None else out[:numel]


def packed_bytes(array: np.ndarray) -> int:
    """Bytes the packed form stores for `array` (its share of a blob)."""
    return int(np.count_nonzero(array)) * array.itemsize + -(-array.size // 8) + 8 * array.ndim + 16


def default_opset(model: ir.Model) -> int:
    return int(model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0)))


@dataclasses.dataclass(frozen=True, kw_only=True)
class PackSparseWeights(ir.passes.InPlacePass):
    """Store sparse float initializers as values + bitmask, expanded by ORT at session start."""

    lossless: ClassVar[bool] = True
    min_elements: int = option(1024, "Leave tensors with fewer elements as they are.")
    min_saving: float = option(
        0.1, "Pack a tensor only if that saves at least this fraction of its bytes."
    )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        opset = default_opset(model)
        if opset < MIN_OPSET:
            store_summary(
                model,
                storage={
                    "packed": [],
                    "reason": f"opset {opset} < {MIN_OPSET}: "
                    "BitShift/CumSum unavailable, weights stay dense",
                },
            )
            return ir.passes.PassResult(model, False)
        graph = model.graph
        fixed = {v.name for v in graph.inputs} | {v.name for v in graph.outputs}
        chosen: dict[ir.DataType, list[tuple[str, np.ndarray]]] = {}
        for name, value in graph.initializers.items():
            tensor = value.const_value
            if tensor is None or tensor.dtype not in _PACKABLE or tensor.size < self.min_elements:
                continue
            if name in fixed or not value.uses():
                continue
            array = tensor.numpy()
            if packed_bytes(array) <= (1 - self.min_saving) * array.nbytes:
                chosen.setdefault(tensor.dtype, []).append((name, array))
        packed = []
        first = next(iter(graph), None)
        for dtype, weights in chosen.items():
            for blob, members in enumerate(_blobs(weights)):
                prefix = f"{DOMAIN}/{dtype.name.lower()}{blob}"
                _emit_blob(graph, prefix, members, first, opset)
                packed += [
                    {"name": n, "dense_bytes": int(a.nbytes), "packed_bytes": packed_bytes(a)}
                    for n, a in members
                ]
        store_summary(model, storage={"packed": packed, "reason": ""})
        return ir.passes.PassResult(model, bool(packed))


def _blobs(weights: list[tuple[str, np.ndarray]]) -> Iterator[list[tuple[str, np.ndarray]]]:
    current: list[tuple[str, np.ndarray]] = []
    size = 0
    for name, array in weights:
        if current and size + array.size > BLOB_ELEMENTS:
            yield current
            current, size = [], 0
        current.append((name, array))
        size += array.size
    if current:
        yield current


def _shared_constants(graph: ir.Graph) -> dict[str, ir.Value]:
    """The small constants every expansion uses, as initializers (cheaper than Constant nodes)."""
    arrays: dict[str, np.ndarray] = {
        "column": np.array([-1, 1], np.int64),
        "shifts": np.arange(8, dtype=np.uint8),
        "seven": np.array(7, np.uint8),
        "flat": np.array([-1], np.int64),
        "axis": np.array(0, np.int64),
    }
    result = {}
    for key, array in arrays.items():
        name = f"{DOMAIN}.{key}"
        result[key] = (
            graph.initializers[name]
            if name in graph.initializers
            else _initializer(graph, name, array)
        )
    return result


def _emit_blob(
    graph: ir.Graph,
    prefix: str,
    members: list[tuple[str, np.ndarray]],
    before: ir.Node | None,
    opset: int,
) -> None:
    """Replace `members` by the expansion, Split and Reshape nodes inserted before `before`."""
    flat = np.concatenate([a.reshape(-1) for _, a in members])
    values, mask = pack(flat)
    padding = 8 * len(mask) - flat.size
    c = _shared_constants(graph)
    nnz = _initializer(graph, f"{prefix}.nnz", np.array(len(values) - 1, np.int64))
    nodes: list[ir.Node] = []

    def op(op_type: str, inputs: list[ir.Value], step: str, **attributes: Any) -> ir.Value:
        node = ir.node(op_type, inputs, attributes or None, name=f"{prefix}/{step}")
        nodes.append(node)
        return node.outputs[0]

    column = op("Reshape", [_initializer(graph, f"{prefix}.mask", mask), c["column"]], "column")
    bits = op(
        "BitShift",
        [op("BitShift", [column, c["shifts"]], "left", direction="LEFT"), c["seven"]],
        "right",
        direction="RIGHT",
    )
    on = op("Cast", [op("Reshape", [bits, c["flat"]], "bits")], "on", to=ir.DataType.INT64)
    before_count = op("CumSum", [on, c["axis"]], "cumsum", exclusive=1)
    index = op("Add", [op("Mul", [on, op("Sub", [before_count, nnz], "sub")], "mul"), nnz], "index")
    dense = op("Gather", [_initializer(graph, f"{prefix}.values", values), index], "gather", axis=0)
    sizes = [a.size for _, a in members] + ([padding] if padding else [])
    split_inputs = [dense]
    attributes: dict[str, int | list[int]] = {"axis": 0}
    if opset >= 13:
        split_inputs.append(_initializer(graph, f"{prefix}.split", np.array(sizes, np.int64)))
    else:
        attributes["split"] = sizes
    split = ir.node(
        "Split", split_inputs, attributes, num_outputs=len(sizes), name=f"{prefix}/split"
    )
    nodes.append(split)
    for (name, array), part in zip(members, split.outputs, strict=False):
        shape = _initializer(graph, f"{prefix}.{name}.shape", np.array(array.shape, np.int64))
        reshape = ir.node("Reshape", [part, shape], name=f"{prefix}/{name}")
        old = graph.initializers[name]
        out = reshape.outputs[0]
        out.dtype, out.shape = old.const_value.dtype, ir.Shape(array.shape)  # type: ignore[union-attr]
        old.replace_all_uses_with(out)
        graph.initializers.pop(name)
        out.name = name
        nodes.append(reshape)
    for node in nodes:
        if before is not None:
            graph.insert_before(before, node)
        else:
            graph.append(node)


def _expansions(graph: ir.Graph) -> Iterator[tuple[str, ir.Node]]:
    """(blob prefix, its Split node) for every packed blob of the graph."""
    for node in graph:
        name = node.name or ""
        if node.op_type == "Split" and name.startswith(DOMAIN + "/") and name.endswith("/split"):
            yield name[: -len("/split")], node


def _unpacked(
    graph: ir.Graph, prefix: str, split: ir.Node
) -> dict[str, tuple[ir.Node, np.ndarray]] | None:
    """{weight name: (its Reshape node, dense array)} of one blob, from its initializers."""
    values, mask = (graph.initializers.get(f"{prefix}.{key}") for key in ("values", "mask"))
    if values is None or values.const_value is None or mask is None or mask.const_value is None:
        return None
    flat = densify(values.const_value.numpy(), mask.const_value.numpy())
    if (
        len(split.inputs) > 1
        and split.inputs[1] is not None
        and split.inputs[1].const_value is not None
    ):
        sizes = [int(s) for s in split.inputs[1].const_value.numpy()]
    else:
        sizes = list(split.attributes.get_ints("split", []))
    result: dict[str, tuple[ir.Node, np.ndarray]] = {}
    offset = 0
    for size, part in zip(sizes, split.outputs, strict=False):
        for reshape, _ in part.uses():
            target = reshape.inputs[1] if reshape.op_type == "Reshape" else None
            shape = target.const_value if target is not None else None
            if shape is not None:
                result[reshape.outputs[0].name or ""] = (
                    reshape,
                    flat[offset : offset + size].reshape([int(d) for d in shape.numpy()]),
                )
        offset += size
    return result


@dataclasses.dataclass(frozen=True, kw_only=True)
class UnpackSparseWeights(ir.passes.InPlacePass):
    """Turn values + bitmask weights (pack-sparse) back into dense initializers."""

    lossless: ClassVar[bool] = True

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        changed = False
        for prefix, split in list(_expansions(graph)):
            weights = _unpacked(graph, prefix, split)
            if weights is None:
                continue
            for name, (reshape, array) in weights.items():
                out = reshape.outputs[0]
                out.name = None
                value = ir.Value(
                    name=name,
                    shape=ir.Shape(array.shape),
                    type=ir.TensorType(out.dtype or ir.DataType.from_numpy(array.dtype)),
                    const_value=ir.Tensor(array, name=name),
                )
                graph.register_initializer(value)
                out.replace_all_uses_with(value)
            doomed = [n for n in graph if (n.name or "").startswith(prefix + "/")]
            inputs = [v for n in doomed for v in n.inputs if v is not None and v.is_initializer()]
            graph.remove(doomed, safe=True)
            for v in inputs:
                if v.name is not None and not v.uses() and v.name in graph.initializers:
                    graph.initializers.pop(v.name)
            changed = True
        return ir.passes.PassResult(model, changed)


def packed_weights(model: ir.Model) -> dict[str, np.ndarray]:
    """Dense arrays of the weights packed in `model`, by weight name (for reports)."""
    result: dict[str, np.ndarray] = {}
    for prefix, split in _expansions(model.graph):
        result.update(
            {
                name: array
                for name, (_, array) in (_unpacked(model.graph, prefix, split) or {}).items()
            }
        )
    return result


def _initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    base, i = name, 1
    while name in graph.initializers:
        name, i = f"{base}_{i}", i + 1
    value = ir.Value(
        name=name,
        shape=ir.Shape(array.shape),
        type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
        const_value=ir.Tensor(array, name=name),
    )
    graph.register_initializer(value)
    return value
