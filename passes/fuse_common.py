"""What every fusion needs: constants, safe rewiring, new weights, graph walking.

The fusions work on onnx_ir directly, in every graph of a model: the main graph,
If/Loop/Scan bodies (nested) and local functions. Three rules keep them safe:

1. A constant is an initializer that is not also a graph input (IR < 4 models
   list initializers as inputs, and a caller may override them), or the output of
   a Constant node. Tensors are never modified in place: they may be memory-mapped
   and shared with the model the pipeline keeps for roll-back. A new tensor
   replaces the old one.
2. A weight is rewritten only when the node being fused is its sole user
   (`owned_constant`); a weight shared outside the match blocks the fusion, so a
   fusion never alters another node's weight and never copies a weight (which is
   how a model grows instead of shrinking).
3. A value that a graph returns keeps its name: the value that replaces it takes
   the name over (`replace_value`), and a rewrite that cannot keep it is skipped.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeGuard

import numpy as np
import onnx_ir as ir

from onnxslim.graphs import iter_graphs

Scope = ir.Graph | ir.Function
ONNX_DOMAINS = ("", "ai.onnx")


def is_op(node: ir.Node | None, *op_types: str) -> TypeGuard[ir.Node]:
    """True for a node of the default ONNX domain whose op type is one of `op_types`."""
    return node is not None and node.domain in ONNX_DOMAINS and node.op_type in op_types


def producer(value: ir.Value | None) -> ir.Node | None:
    return None if value is None else value.producer()


def opset_version(model: ir.Model) -> int:
    """The default-domain opset the model imports (0 when it imports none)."""
    versions = [v for d, v in model.opset_imports.items() if d in ONNX_DOMAINS]
    return max(versions) if versions else 0


def home(scope: Scope) -> ir.Graph:
    """The graph whose nodes a scope holds (a function keeps its nodes in an inner graph)."""
    return scope.graph if isinstance(scope, ir.Function) else scope


def in_scope(node: ir.Node | None, scope: Scope) -> bool:
    """Whether `node` still belongs to `scope` (not removed by an earlier rewrite)."""
    return node is not None and node.graph is home(scope)


def scopes(model: ir.Model) -> list[Scope]:
    """Every graph and function, listed up front so rewriting cannot disturb the walk."""
    return list(iter_graphs(model))


# --------------------------------------------------------------------------- constants


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's contents when it is a constant (rule 1), else None."""
    if value is None or value.is_graph_input():
        return None
    node = value.producer()
    if node is not None:
        if not is_op(node, "Constant"):
            return None
        tensor = _constant_node_tensor(node)
        return None if tensor is None else tensor
    if value.const_value is None or not value.is_initializer():
        return None
    try:
        return value.const_value.numpy()
    except Exception:  # unreadable external data, unknown dtype: not a usable constant
        return None


def _constant_node_tensor(node: ir.Node) -> np.ndarray | None:
    attrs = node.attributes
    if "value" in attrs:
        try:
            return attrs["value"].as_tensor().numpy()
        except Exception:
            return None
    if "value_float" in attrs:
        return np.array(attrs["value_float"].as_float(), dtype=np.float32)
    if "value_floats" in attrs:
        return np.array(list(attrs["value_floats"].as_floats()), dtype=np.float32)
    if "value_int" in attrs:
        return np.array(attrs["value_int"].as_int(), dtype=np.int64)
    if "value_ints" in attrs:
        return np.array(list(attrs["value_ints"].as_ints()), dtype=np.int64)
    return None


def scalar(value: ir.Value | None) -> float | None:
    """The single number a constant holds (any shape with one element), else None."""
    array = const_array(value)
    if array is None or array.size != 1 or array.dtype.kind not in "fiu":
        return None
    return float(array.reshape(()))


def int_list(value: ir.Value | None) -> list[int] | None:
    array = const_array(value)
    if array is None or array.dtype.kind not in "iu" or array.ndim > 1:
        return None
    return [int(v) for v in array.reshape(-1)]


def close(a: float | None, b: float, rel: float = 1e-5) -> bool:
    return a is not None and math.isfinite(a) and abs(a - b) <= rel * abs(b)


def sole_user(value: ir.Value) -> ir.Node | None:
    """The one node that reads `value`, if exactly one does and no graph returns it."""
    uses = value.uses()
    if len(uses) != 1 or value.is_graph_output():
        return None
    return next(iter(uses)).node


def is_internal(value: ir.Value, consumer: ir.Node) -> bool:
    """`value` is read only by `consumer` (once) and is not returned by any graph."""
    return sole_user(value) is consumer


def owned_constant(node: ir.Node, index: int) -> np.ndarray | None:
    """Input `index` of `node` when it is a constant only this node reads (rule 2)."""
    if index >= len(node.inputs):
        return None
    value = node.inputs[index]
    if value is None or sole_user(value) is not node:
        return None
    if any(n is node and i != index for n, i in value.uses()):
        return None
    return const_array(value)


def set_constant(value: ir.Value, array: np.ndarray) -> None:
    """Give an owned constant new contents: a new tensor for an initializer or Constant node."""
    tensor = ir.tensor(np.ascontiguousarray(array), name=value.name)
    node = value.producer()
    if node is not None:  # a Constant node: its attribute is the source of truth
        for name in list(node.attributes):
            del node.attributes[name]
        node.attributes["value"] = ir.AttrTensor("value", tensor)
    value.const_value = tensor
    value.shape = ir.Shape(array.shape)
    value.dtype = tensor.dtype


class Namer:
    """Fresh value names, unique across the whole model (subgraphs share one namespace)."""

    def __init__(self, model: ir.Model):
        self._taken: set[str] = set()
        self._nodes: set[str] = set()
        for scope in scopes(model):
            for value in _scope_values(scope):
                if value.name:
                    self._taken.add(value.name)
            self._nodes.update(node.name for node in scope if node.name)

    def node(self, hint: str | None) -> str | None:
        """A node name no other node has (ONNX Runtime refuses duplicates), or None."""
        if not hint:
            return None
        name, i = hint, 1
        while name in self._nodes:
            name = f"{hint}_{i}"
            i += 1
        self._nodes.add(name)
        return name

    def fresh(self, hint: str) -> str:
        hint = hint or "fused"
        name, i = hint, 1
        while name in self._taken:
            name = f"{hint}_{i}"
            i += 1
        self._taken.add(name)
        return name


def _scope_values(scope: Scope) -> Iterator[ir.Value]:
    yield from scope.inputs
    if isinstance(scope, ir.Graph):
        yield from scope.initializers.values()
    for node in scope:
        yield from node.outputs


def add_constant(scope: Scope, array: np.ndarray, name: str, before: ir.Node) -> ir.Value:
    """A new constant visible to `before`: a graph initializer, or a Constant node in a function."""
    tensor = ir.tensor(np.ascontiguousarray(array), name=name)
    if isinstance(scope, ir.Graph):
        value = ir.Value(
            name=name,
            shape=ir.Shape(array.shape),
            type=ir.TensorType(tensor.dtype),
            const_value=tensor,
        )
        scope.register_initializer(value)
        return value
    node = ir.Node("", "Constant", [], attributes=[ir.AttrTensor("value", tensor)], num_outputs=1)
    node.outputs[0].name = name
    node.outputs[0].const_value = tensor
    node.outputs[0].shape = ir.Shape(array.shape)
    node.outputs[0].dtype = tensor.dtype
    scope.insert_before(before, node)
    return node.outputs[0]


# --------------------------------------------------------------------------- rewiring


def can_replace(old: ir.Value, new: ir.Value, scope: Scope) -> bool:
    """Whether `old` can be swapped for `new` while every graph output keeps its name."""
    if not old.is_graph_output():
        return True
    node = new.producer()
    return in_scope(node, scope) and not new.is_graph_output() and not new.is_graph_input()


def replace_value(old: ir.Value, new: ir.Value) -> None:
    """Point every user of `old` (graph outputs included) at `new`, which inherits old's name."""
    if old.is_graph_output() or (new.name is None and new.producer() is not None):
        # A new node's output takes over the old name: unique, and readable in the result.
        name = old.name
        old.name = None
        new.name = name
        if new.shape is None:
            new.shape = old.shape
        if new.type is None:
            new.type = old.type
    old.replace_all_uses_with(new, replace_graph_outputs=True)


def remove_dead(scope: Scope, nodes: Iterable[ir.Node]) -> None:
    """Remove the given nodes once nothing reads them, then producers that only fed them."""
    pending = [n for n in nodes if in_scope(n, scope)]
    while pending:
        node = pending.pop()
        if not in_scope(node, scope) or any(
            out.uses() or out.is_graph_output() for out in node.outputs
        ):
            continue
        feeders = [v.producer() for v in node.inputs if v is not None]
        scope.remove(node, safe=True)
        pending.extend(f for f in feeders if f is not None and in_scope(f, scope))
        # A node whose users were removed later in the list may be dead now too.
        pending.extend(n for n in nodes if in_scope(n, scope) and n not in pending)


def new_node(
    op_type: str,
    inputs: Sequence[ir.Value | None],
    attributes: Sequence[ir.Attr] = (),
    *,
    name: str | None = None,
    domain: str = "",
) -> ir.Node:
    return ir.Node(
        domain, op_type, list(inputs), attributes=list(attributes), num_outputs=1, name=name
    )


def rank_of(value: ir.Value | None) -> int | None:
    """The value's rank when the graph states it or its producer fixes it."""
    if value is None:
        return None
    if value.shape is not None:
        return len(value.shape)
    node = value.producer()
    if node is None or node.domain not in ONNX_DOMAINS:
        return None
    if node.op_type in ("Flatten", "Gemm"):
        return 2
    if node.op_type == "Reshape":
        shape = int_list(node.inputs[1]) if len(node.inputs) > 1 else None
        return None if shape is None else len(shape)
    if node.op_type in (
        "Relu",
        "Sigmoid",
        "Tanh",
        "Cast",
        "Identity",
        "Neg",
        "Abs",
        "Clip",
        "Gelu",
        "Erf",
    ):
        return rank_of(node.inputs[0])
    return None


def static_shape(value: ir.Value | None) -> tuple[int, ...] | None:
    """The value's shape when every dimension is a known integer."""
    if value is None or value.shape is None:
        return None
    dims = []
    for dim in value.shape:
        if not isinstance(dim, int):
            return None
        dims.append(dim)
    return tuple(dims)


def fixpoint(model: ir.Model, rewrite_scope, max_rounds: int = 8) -> int:  # type: ignore[no-untyped-def]
    """Apply `rewrite_scope(scope) -> count` to every scope until nothing changes."""
    total = 0
    for _ in range(max_rounds):
        count = sum(rewrite_scope(scope) for scope in scopes(model))
        total += count
        if not count:
            break
    return total
