"""Checks a model file must pass before any work: onnx.checker plus our own.

onnx_ir reads what it is given: two initializers of one name become one, a segmented
tensor or a raw_data shorter than its dims surfaces later as a numpy error deep in a
pass, a model whose declared output shape contradicts its graph is "repaired"
silently. So a model is checked once at load and refused with one line (exit 2):
- onnx.checker, with `full_check` (strict shape and type inference) below
  `FULL_CHECK_BYTES`, which takes under a second on the devmodels (85 MB);
- our own, on the proto before anything is allocated: segmented tensors, raw_data
  whose length does not match dims and dtype (sizes computed, never allocated),
  typed value fields (float_data, ...) empty or of the wrong length for the dims,
  string tensors that are not UTF-8.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import onnx
from onnx import TensorProto

from onnxslim.errors import ModelLoadError, PassFailed

FULL_CHECK_BYTES = 256_000_000
# Checker rules waived (the checks it skips after them are run on the proto instead):
# a `shape` on every main-graph input/output type (ONNX Runtime and the exporters accept
# a missing one: rank unknown); external data files that are symbolic links (io's own
# check_external_data accepts links that stay inside the model's folder).
_WAIVED = ("Field 'shape' of 'type' is required but missing", "but it is a symbolic link")
_BITS: dict[int, int] = {
    TensorProto.FLOAT: 32,
    TensorProto.UINT8: 8,
    TensorProto.INT8: 8,
    TensorProto.UINT16: 16,
    TensorProto.INT16: 16,
    TensorProto.INT32: 32,
    TensorProto.INT64: 64,
    TensorProto.BOOL: 8,
    TensorProto.FLOAT16: 16,
    TensorProto.DOUBLE: 64,
    TensorProto.UINT32: 32,
    TensorProto.UINT64: 64,
    TensorProto.COMPLEX64: 64,
    TensorProto.COMPLEX128: 128,
    TensorProto.BFLOAT16: 16,
    TensorProto.FLOAT8E4M3FN: 8,
    TensorProto.FLOAT8E4M3FNUZ: 8,
    TensorProto.FLOAT8E5M2: 8,
    TensorProto.FLOAT8E5M2FNUZ: 8,
    TensorProto.UINT4: 4,
    TensorProto.INT4: 4,
}


_VALUE_FIELDS = (
    "float_data",
    "int32_data",
    "string_data",
    "int64_data",
    "double_data",
    "uint64_data",
)


def check_proto(proto: onnx.ModelProto, path: Path) -> None:
    """Our structural checks on every tensor of the model, subgraphs and functions included,
    and the order of the nodes (onnx_ir's clone fails on a graph read before it is written)."""
    _check_text(proto, path)
    newest = onnx.defs.onnx_opset_version()
    for opset in proto.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version > newest:
            raise ModelLoadError(
                f"{path}: imports ONNX opset {opset.version}; the newest this onnx knows is "
                f"{newest}, so no operator of the model can be checked or run"
            )
    _check_order(proto.graph, [], path)
    if not proto.graph.output:
        # onnx.checker and ORT's loader accept it, but ORT cannot run it and every command
        # would end in "At least one output should be requested" or an empty model.
        raise ModelLoadError(f"{path}: the graph has no outputs, so it computes nothing")
    for kind, values in (("input", proto.graph.input), ("output", proto.graph.output)):
        for value in values:
            if value.type.HasField("tensor_type") and not value.type.tensor_type.elem_type:
                raise ModelLoadError(
                    f"{path}: graph {kind} {value.name!r} has element type UNDEFINED "
                    "(ONNX Runtime cannot load it)"
                )
    for where, tensor in _tensors(proto):
        name = f"{path}: tensor {tensor.name or where!r}"
        if tensor.HasField("segment"):
            raise ModelLoadError(f"{name} is segmented; segmented tensors are not supported")
        if any(d < 0 for d in tensor.dims):
            raise ModelLoadError(f"{name} has a negative dimension {list(tensor.dims)}")
        if tensor.data_location == TensorProto.EXTERNAL:
            continue  # checked against its file by io.check_external_data
        elements = math.prod(tensor.dims)
        if tensor.HasField("raw_data") and tensor.data_type in _BITS:
            needed = (elements * _BITS[tensor.data_type] + 7) // 8
            if len(tensor.raw_data) != needed:
                raise ModelLoadError(
                    f"{name}: raw_data holds {len(tensor.raw_data)} bytes but dims "
                    f"{list(tensor.dims)} of its type need {needed}"
                )
        problem = _typed_data_problem(tensor, elements)
        if problem:
            raise ModelLoadError(f"{name}: {problem}")
        if tensor.data_type == TensorProto.STRING:
            for value in tensor.string_data:
                try:
                    value.decode("utf-8")
                except UnicodeDecodeError:
                    raise ModelLoadError(f"{name} holds a string that is not UTF-8") from None


def _typed_data_problem(tensor: TensorProto, elements: int) -> str | None:
    """Why a tensor without raw_data does not hold the values its dims declare, or None.

    A tensor whose dims claim elements but carries no data at all (dims [2**20] * 3, or
    dims whose product overflows int64) reaches an allocation in whoever reads it."""
    if tensor.HasField("raw_data") or elements == 0:
        return None
    held = sum(len(getattr(tensor, field)) for field in _VALUE_FIELDS)
    if held == 0:
        return f"dims {list(tensor.dims)} declare {elements:,} elements but it carries no data"
    expected = _typed_counts(tensor.data_type, elements)
    if expected and held not in expected:
        return f"holds {held:,} values but dims {list(tensor.dims)} declare {elements:,} elements"
    return None


def _typed_counts(data_type: int, elements: int) -> set[int]:
    """Accepted lengths of the typed value field (empty: not checked). Complex numbers take
    two values; sub-byte types are packed into int32_data (unpacked also accepted)."""
    if data_type in (TensorProto.COMPLEX64, TensorProto.COMPLEX128):
        return {2 * elements}
    bits = _BITS.get(data_type)
    if bits is None:
        return set() if data_type != TensorProto.STRING else {elements}
    if bits < 8:
        per_value = 8 // bits
        return {elements, (elements + per_value - 1) // per_value}
    return {elements}


def _check_text(proto: onnx.ModelProto, path: Path) -> None:
    """Text fields that are not UTF-8 come back from protobuf as bytes (ONNX is proto2) and
    fail later in whatever joins or serializes them (inspect exited 3 on a flipped bit in
    producer_name). Checked: model, graph, function and value names and metadata; node
    names, op types and outputs in `_check_order` (inputs must match an earlier output)."""
    texts: list[object] = [proto.producer_name, proto.producer_version, proto.domain]
    texts += [proto.doc_string, *(o.domain for o in proto.opset_import)]
    texts += [text for prop in proto.metadata_props for text in (prop.key, prop.value)]
    for function in proto.functions:
        texts += [function.name, function.domain, *function.input, *function.output]
    for graph in _graphs(proto):
        texts += [graph.name, graph.doc_string]
        texts += [v.name for v in (*graph.input, *graph.output, *graph.value_info)]
        texts += [t.name for t in graph.initializer]
    if not all(isinstance(text, str) for text in texts):
        raise ModelLoadError(f"{path}: a name or metadata string is not UTF-8 text")


def _check_order(graph: onnx.GraphProto, outer: list[set[str]], path: Path) -> None:
    """Every node input and graph output is a graph input, an initializer, an outer-scope
    name or the output of an earlier node: one linear sweep, subgraphs seeing the scopes
    above them (a Loop body output nobody computes made onnx_ir's clone fail: exit 3)."""
    known = {v.name for v in graph.input}
    known.update(t.name for t in graph.initializer)
    known.update(t.values.name for t in graph.sparse_initializer)
    for index, node in enumerate(graph.node):
        if not (isinstance(node.name, str) and isinstance(node.op_type, str)):
            raise ModelLoadError(f"{path}: a node's name or op type is not UTF-8 text")
        for name in node.input:
            if name and name not in known and not any(name in scope for scope in outer):
                raise ModelLoadError(
                    f"{path}: graph {graph.name!r} is not topologically sorted: node "
                    f"{node.name or node.op_type + ' #' + str(index)!r} reads {name!r} before "
                    "any node produces it (out of order, a cycle, or a dangling input)"
                )
        if node.attribute:
            scopes = [*outer, known]
            for attr in node.attribute:
                for sub in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
                    _check_order(sub, scopes, path)
        for name in node.output:
            if not isinstance(name, str):
                raise ModelLoadError(f"{path}: a node output name is not UTF-8 text")
            if name:
                known.add(name)
    for value in graph.output:
        if value.name not in known and not any(value.name in scope for scope in outer):
            raise ModelLoadError(
                f"{path}: graph {graph.name!r} output {value.name!r} is computed by no node "
                "and is no input, initializer or outer-scope value"
            )


def run_checker(path: Path, size: int, proto: onnx.ModelProto) -> None:
    """onnx.checker on the file (external data resolved beside it), one line when it fails.

    When the only complaint is a waived rule, the checker stops there, so the strict
    shape and type inference it would have run is run on `proto` directly."""
    full = size < FULL_CHECK_BYTES
    try:
        onnx.checker.check_model(str(path), full_check=full)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        text = _first_line(exc)
        if not any(w in text for w in _WAIVED):
            raise ModelLoadError(f"{path}: invalid ONNX model ({text})") from exc
        if full:
            _strict_inference(proto, path)
    except Exception as exc:  # the checker raises others on malformed files
        raise ModelLoadError(f"{path}: invalid ONNX model ({_first_line(exc)})") from exc


def check_written(staged: Path, target: Path) -> None:
    """The file about to be renamed onto `target` passes onnx.checker (structure, types,
    schemas; no shape inference): what a run checked in memory must also hold for the
    bytes written. A failure is our defect: nothing is written (exit 3)."""
    try:
        onnx.checker.check_model(str(staged))
    except Exception as exc:
        text = _first_line(exc)
        if any(w in text for w in _WAIVED):
            return
        raise PassFailed(
            f"{target}: the model to be written fails onnx.checker ({text}); nothing written"
        ) from exc


def _strict_inference(proto: onnx.ModelProto, path: Path) -> None:
    """What the checker skipped: each node against its schema, then strict inference."""
    context = onnx.checker.C.CheckerContext()
    context.ir_version = proto.ir_version
    context.opset_imports = {o.domain: o.version for o in proto.opset_import}
    lexical = onnx.checker.C.LexicalScopeContext()
    try:
        for node in proto.graph.node:
            if not any(a.HasField("g") or a.graphs for a in node.attribute):
                onnx.checker.check_node(node, context, lexical)  # subgraphs need outer names
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except Exception as exc:
        raise ModelLoadError(f"{path}: invalid ONNX model ({_first_line(exc)})") from exc


def _tensors(proto: onnx.ModelProto) -> Iterator[tuple[str, TensorProto]]:
    for graph in _graphs(proto):
        for tensor in graph.initializer:
            yield "initializer", tensor
        for sparse in graph.sparse_initializer:
            yield "sparse initializer", sparse.values
        for node in graph.node:
            yield from _attribute_tensors(node)
    for function in proto.functions:
        for node in function.node:
            yield from _attribute_tensors(node)


def _attribute_tensors(node: onnx.NodeProto) -> Iterator[tuple[str, TensorProto]]:
    for attr in node.attribute:
        if attr.HasField("t"):
            yield f"{node.op_type} attribute {attr.name}", attr.t
        for tensor in attr.tensors:
            yield f"{node.op_type} attribute {attr.name}", tensor


def _graphs(proto: onnx.ModelProto) -> Iterator[onnx.GraphProto]:
    """The main graph, every subgraph and every function's subgraphs, iteratively."""
    stack = [proto.graph]
    stack.extend(
        g
        for f in proto.functions
        for n in f.node
        for a in n.attribute
        for g in (*([a.g] if a.HasField("g") else []), *a.graphs)
    )
    while stack:
        graph = stack.pop()
        yield graph
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("g"):
                    stack.append(attr.g)
                stack.extend(attr.graphs)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
