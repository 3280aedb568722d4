"""Merging duplicates (identical initializers, nodes that compute the same thing) and
dropping what nothing at run time reads (exporter debug metadata).

All passes cover the main graph, If / Loop / Scan bodies and local functions
(onnx_ir's own CSE looks at the main graph only).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import ClassVar

import onnx_ir as ir

from onnxslim.graphs import iter_graphs
from onnxslim.passes._options import option

# Never merged: two draws of a random op are different values.
_NON_DETERMINISTIC = frozenset(
    {
        "RandomUniform",
        "RandomNormal",
        "RandomUniformLike",
        "RandomNormalLike",
        "Multinomial",
        "Bernoulli",
        "Dropout",
    }
)
# Inputs may be reordered before comparing (IEEE addition and multiplication commute).
_COMMUTATIVE = frozenset(
    {
        "Add",
        "Mul",
        "Sum",
        "Max",
        "Min",
        "Mean",
        "And",
        "Or",
        "Xor",
        "Equal",
        "BitwiseAnd",
        "BitwiseOr",
        "BitwiseXor",
    }
)
# Tensor attributes (Constant values) larger than this are compared by digest.
_INLINE_TENSOR_BYTES = 4096


@dataclasses.dataclass(frozen=True, kw_only=True)
class DeduplicateInitializers(ir.passes.InPlacePass):
    """Merge initializers with identical dtype, shape and contents (each graph on its own)."""

    lossless: ClassVar[bool] = True
    size_limit: int = option(1 << 30, "Skip tensors with more elements than this (hashing cost).")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for graph in model.graphs():
            modified |= _deduplicate_in(graph, self.size_limit)
        return ir.passes.PassResult(model, modified)


def _deduplicate_in(graph: ir.Graph, size_limit: int) -> bool:
    """Hash only tensors that share dtype and shape with another one.

    Reading a memory-mapped weight maps its pages into the process; most weights have
    no twin of the same shape, so grouping first keeps a big model's RSS near its
    graph's size (onnx_ir's pass hashes every initializer).
    """
    boundary = {v.name for v in graph.inputs} | {v.name for v in graph.outputs}
    groups: dict[tuple, list[ir.Value]] = {}
    for value in graph.initializers.values():
        tensor = value.const_value
        if tensor is None or value.name in boundary or tensor.size > size_limit:
            continue
        groups.setdefault((tensor.dtype, tuple(tensor.shape)), []).append(value)
    modified = False
    for values in groups.values():
        if len(values) < 2:
            continue
        canonical: dict[bytes, ir.Value] = {}
        for value in values:
            tensor = value.const_value
            assert tensor is not None
            data = tensor.tobytes()
            digest = hashlib.sha256(data).digest()
            del data
            if isinstance(tensor, ir.ExternalTensor):
                tensor.release()  # unmap: the pages are page cache, not ours to keep
            keep = canonical.setdefault(digest, value)
            if keep is value:
                continue
            ir.convenience.replace_all_uses_with(value, keep)
            graph.initializers.pop(value.name)  # type: ignore[arg-type]
            modified = True
    return modified


@dataclasses.dataclass(frozen=True, kw_only=True)
class EliminateCommonSubexpressions(ir.passes.InPlacePass):
    """Merge nodes that compute the same op on the same inputs with the same attributes."""

    lossless: ClassVar[bool] = True

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for graph in list(iter_graphs(model)):
            modified |= _eliminate_in(graph)
        return ir.passes.PassResult(model, modified)


def _eliminate_in(graph: ir.Graph | ir.Function) -> bool:
    seen: dict[tuple, ir.Node] = {}
    modified = False
    for node in list(graph):
        key = _node_key(node)
        if key is None:
            continue
        existing = seen.get(key)
        if existing is None:
            seen[key] = node
            continue
        _merge(graph, node, existing)
        modified = True
    return modified


def _node_key(node: ir.Node) -> tuple | None:
    """What makes two nodes interchangeable, or None when a node must stay unique."""
    if node.op_type in _NON_DETERMINISTIC and node.domain in ("", "ai.onnx"):
        return None
    if node.op_type == "Identity" and any(v.is_graph_output() for v in node.outputs):
        return None  # merging would only put another Identity in its place
    attributes: list[tuple[str, object, object]] = []  # (name, type, comparable value)
    for name, attr in sorted(node.attributes.items()):
        if attr.is_ref():
            attributes.append((name, "ref", attr.ref_attr_name))
            continue
        if attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
            return None  # bodies are not compared
        value = attr.value
        if attr.type in (ir.AttributeType.INTS, ir.AttributeType.FLOATS, ir.AttributeType.STRINGS):
            value = tuple(value)
        elif attr.type == ir.AttributeType.TENSOR:
            value = _tensor_key(value)
        elif attr.type == ir.AttributeType.TENSORS:
            value = tuple(_tensor_key(t) for t in value)
        elif attr.type in (
            ir.AttributeType.TYPE_PROTO,
            ir.AttributeType.TYPE_PROTOS,
            ir.AttributeType.SPARSE_TENSOR,
            ir.AttributeType.SPARSE_TENSORS,
        ):
            return None
        attributes.append((name, attr.type, value))
    inputs = tuple(id(v) for v in node.inputs)
    if node.op_type in _COMMUTATIVE and node.domain in ("", "ai.onnx"):
        inputs = tuple(sorted(inputs))
    return (
        node.domain,
        node.op_type,
        node.overload,
        node.version,
        len(node.outputs),
        inputs,
        tuple(attributes),
    )


def _tensor_key(tensor: ir.TensorProtocol) -> tuple:
    data = tensor.tobytes()
    digest = data if len(data) <= _INLINE_TENSOR_BYTES else hashlib.sha256(data).digest()
    return (tensor.dtype, tuple(tensor.shape.dims), len(data), digest)


def _merge(graph: ir.Graph | ir.Function, node: ir.Node, existing: ir.Node) -> None:
    """Point `node`'s users at `existing`'s outputs, keeping graph output names."""
    for old, new in zip(node.outputs, existing.outputs, strict=True):
        if not old.is_graph_output():
            continue
        for index, output in enumerate(graph.outputs):
            if output is not old:
                continue
            if new.is_graph_output() or new.is_graph_input():
                # The surviving value already carries another output's name: copy it.
                identity = ir.Node("", "Identity", [new])
                identity.outputs[0].name = old.name
                identity.outputs[0].type, identity.outputs[0].shape = old.type, old.shape
                graph.insert_before(node, identity)
                graph.outputs[index] = identity.outputs[0]
            else:
                graph.outputs[index] = new
                new.name = old.name
    ir.convenience.replace_all_uses_with(list(node.outputs), list(existing.outputs))
    graph.remove(node, safe=True)


@dataclasses.dataclass(frozen=True, kw_only=True)
class StripDebugMetadata(ir.passes.InPlacePass):
    """Drop doc strings and node/value metadata (exporter stack traces, scope names)."""

    lossless: ClassVar[bool] = True

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return ir.passes.PassResult(model, strip_debug_metadata(model))


def drop_shape_annotations(model: ir.Model) -> int:
    """Forget the type and shape of intermediate values (the file's value_info); how many.

    They are derived facts: ONNX Runtime infers every intermediate shape itself when
    the session starts, so a deployable artifact does not need them, and they are
    about a tenth of a small model's file. Graph inputs and outputs keep theirs.
    """
    dropped = 0
    for graph in iter_graphs(model):
        boundary = {id(v) for v in graph.inputs} | {id(v) for v in graph.outputs}
        for node in graph:
            for value in node.outputs:
                if id(value) in boundary or (value.type is None and value.shape is None):
                    continue
                value.type = None
                value.shape = None
                dropped += 1
    return dropped


def strip_debug_metadata(model: ir.Model) -> bool:
    """Drop doc strings and node / value metadata; True when anything was dropped.

    Nothing at run time reads them; torch.onnx writes about 300 bytes per node
    (namespace, class hierarchy, stack trace), half of a small exported model's file.
    Model-level metadata_props (labels, licences, authors, provenance) are kept.
    """
    changed = bool(model.doc_string)
    model.doc_string = None
    for graph in iter_graphs(model):
        changed |= bool(graph.doc_string)
        graph.doc_string = None
        values = list(graph.inputs) + list(graph.outputs)
        if isinstance(graph, ir.Graph):
            values += list(graph.initializers.values())
        for node in graph:
            changed |= bool(node.doc_string) or bool(node.metadata_props)
            node.doc_string = None
            node.metadata_props.clear()
            values += list(node.outputs)
        for value in values:
            changed |= bool(value.doc_string) or bool(value.metadata_props)
            value.doc_string = None
            value.metadata_props.clear()
    return changed
