"""Elimination: nodes that do nothing, chains that collapse, and everything unused.

Each pass covers the main graph, every If / Loop / Scan body (nested) and local
functions. The no-op rules are numbered; the code refers back to them.

No-op rules (`eliminate-no-ops`): the node's first output equals its first input,
so its users read the input instead (through Identity elimination, which keeps
graph output names).

 1. Dropout at inference: opset 7-11 always; opset 12+ without `training_mode`,
    with `training_mode` constant False, or with ratio constant 0. Its mask output
    must be unused.
 2. Cast / CastLike to the type the input already has.
 3. Reshape to the same shape: same rank, and each target entry is the input's own
    dimension (a number equal to it, 0 without allowzero) with at most one -1 left.
 4. Flatten to the same shape (rank-2 input flattened at axis 1, or static shapes).
 5. Transpose with the identity permutation.
 6. Pad by zero on every side.
 7. Slice of the full range on every sliced axis: step 1, start 0, end at least the
    dimension (or at least 2**31-1 when the dimension is symbolic).
 8. Expand to a shape that broadcasts to the input's own shape (every target
    dimension 1 or equal to the input's).
 9. Concat, Sum, Max, Min, Mean of a single input; Split into a single output.
10. Tile with all repeats 1.
11. Add / Sub of exact zeros, Mul / Div / Pow by exact ones, when the constant does
    not broadcast the input to a bigger shape.
12. Cast(Cast(x, A), B) reads x directly when x -> A is exact (a widening: every
    value of x's type is a value of A), e.g. float16 -> float32 -> int32; when B is
    x's own type the pair then disappears under rule 2.
13. RNN / GRU / LSTM inputs that hold their default, all zeros (bias, initial_h,
    initial_c, peepholes), are dropped: exporters build zero states from the batch
    size (Shape -> Concat -> Expand), a computation that then goes away.

onnxscript's rewrite rules add the chain collapses: Reshape(Reshape(x)),
Transpose(Transpose(x)) (identity or one Transpose), Unsqueeze(Unsqueeze(x)) and
Reshape(Squeeze(x), [-1]) of 1-D x. Its cast_cast_rule is left out on purpose:
double -> float -> float16 rounds twice, double -> float16 once (rule 12 keeps only
the exact chains).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common

from onnxslim.graphs import iter_graphs
from onnxslim.passes.fold import quiet_onnxscript
from onnxslim.passes.unused import RemoveInitializerInputs, RemoveUnused

# RemoveUnused and RemoveInitializerInputs live in unused.py; importers still find them here.
__all__ = [
    "EliminateIdentity",
    "EliminateNoOps",
    "RemoveInitializerInputs",
    "RemoveUnused",
    "eliminate_identities",
]

_INT32_MAX = 2**31 - 1
_MAX_SWEEPS = 4

GraphLike = ir.Graph | ir.Function


# The ops the chain rules start their match from: a graph without any is not searched
# (the rewriter tries every rule on every node, most of the pass on a 300k-node chain).
_CHAIN_ROOTS = frozenset({"Reshape", "Transpose", "Unsqueeze"})


@functools.cache
def _chain_rules() -> Any:
    """onnxscript's chain rules (imported on first use: onnxscript takes a while to import)."""
    # onnxscript takes ~1 s to import; only graphs with layout chains reach the rules.
    from onnxscript.rewriter import RewriteRuleSet
    from onnxscript.rewriter.rules import common as rules

    return RewriteRuleSet(
        [
            rules.reshape_reshape_rule,
            rules.transpose_transpose_rule,
            rules.unsqueeze_unsqueeze_rule,
            rules.squeeze_reshape_1d_rule,
        ]
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class EliminateNoOps(ir.passes.InPlacePass):
    """Remove nodes that do nothing (Identity, Dropout, same-type Cast, ...) and collapse chains."""

    lossless: ClassVar[bool] = True

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        opset = model.opset_imports.get("", 1)
        with quiet_onnxscript():
            for _ in range(_MAX_SWEEPS):
                changed = roots = False
                graphs = list(iter_graphs(model))  # one walk of the model per sweep
                for graph in graphs:
                    _propagate_constants(graph)
                    for node in list(graph):
                        roots |= node.op_type in _CHAIN_ROOTS
                        changed |= _apply_rules(graph, node, opset)
                if roots:
                    changed |= bool(_chain_rules().apply_to_model(model))
                changed |= eliminate_identities(model, graphs)
                if not changed:
                    break
                modified = True
                common.RemoveUnusedNodesPass()(model)
            if modified:  # chain rules build their new axes/shapes as Constant nodes
                common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
        return ir.passes.PassResult(model, modified)


@dataclasses.dataclass(frozen=True, kw_only=True)
class EliminateIdentity(ir.passes.InPlacePass):
    """Bypass Identity nodes, keeping graph output names intact."""

    lossless: ClassVar[bool] = True

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return ir.passes.PassResult(model, eliminate_identities(model))


def eliminate_identities(model: ir.Model, graphs: list[GraphLike] | None = None) -> bool:
    """onnx_ir's identity elimination, minus its one unsafe case.

    y = Identity(x): users of y read x. When y is a graph output, x takes y's name,
    so x must not be a graph input, initializer or another graph output (onnx_ir
    renames x then, and the graph ends with one value listed twice, the other
    output's name lost).
    """
    modified = False
    for graph in list(iter_graphs(model)) if graphs is None else graphs:
        for node in list(graph):
            if node.op_type != "Identity" or node.domain != "" or len(node.inputs) != 1:
                continue
            source, output = node.inputs[0], node.outputs[0]
            if source is None:
                continue
            was_output = output.is_graph_output()
            if was_output and (
                source.is_graph_input()
                or source.is_graph_output()
                or source.is_initializer()
                or (producer := source.producer()) is None
                or producer.graph is not node.graph
            ):
                # The node stays to carry the output's name (an outer-scope value cannot
                # take it either); the other readers of y can still read x.
                for use in list(output.uses()):
                    use.node.replace_input_with(use.idx, source)
                    modified = True
                continue
            if source.type is None:
                source.type = output.type
            if source.shape is None:
                source.shape = output.shape
            ir.convenience.replace_all_uses_with(output, source, replace_graph_outputs=True)
            if was_output:
                source.name = output.name
            graph.remove(node, safe=True)
            modified = True
    return modified


def _apply_rules(graph: GraphLike, node: ir.Node, opset: int) -> bool:
    if node.domain not in ("", "ai.onnx") or node.graph is None:
        return False
    if node.op_type == "Cast" and _skip_exact_widening(node):  # rule 12
        return True
    if node.op_type in _RNN_ZERO_DEFAULTS:  # rule 13
        return _drop_zero_defaults(node)
    rule = _NO_OPS.get(node.op_type)
    if rule is None or not node.inputs or node.inputs[0] is None:
        return False
    if any(out.uses() or out.is_graph_output() for out in node.outputs[1:]):
        return False
    version = node.version or opset
    try:
        if not rule(node, version):
            return False
    except (ValueError, TypeError, IndexError, OverflowError):
        return False
    _replace_with_identity(graph, node)
    return True


def _replace_with_identity(graph: GraphLike, node: ir.Node) -> None:
    """Turn `node` into Identity(input 0); Identity elimination then bypasses it."""
    identity = ir.Node("", "Identity", [node.inputs[0]], name=node.name)
    ir.convenience.replace_nodes_and_values(
        graph, node, [node], [identity], [node.outputs[0]], [identity.outputs[0]]
    )


# ---------------------------------------------------------------- helpers


def _const(node: ir.Node, index: int) -> np.ndarray | None:
    if index >= len(node.inputs) or node.inputs[index] is None:
        return None
    tensor = ir.convenience.get_const_tensor(node.inputs[index])  # type: ignore[arg-type]
    if tensor is None:
        return None
    return tensor.numpy()


def _dims(value: ir.Value | None) -> tuple[int | ir.SymbolicDim, ...] | None:
    if value is None or value.shape is None:
        return None
    return tuple(value.shape.dims)


def _propagate_constants(graph: GraphLike) -> None:
    """Give Constant node outputs their const_value (onnxscript's rules read it)."""
    from onnxscript.optimizer import basic_constant_propagation  # ~1 s import, deferred

    basic_constant_propagation(graph)


# ---------------------------------------------------------------- rules 1-11


def _dropout(node: ir.Node, version: int) -> bool:  # rule 1
    if version < 7:
        return node.attributes.get_int("is_test", 0) == 1
    if version < 12:
        return True
    training = _const(node, 2)
    if (
        len(node.inputs) < 3
        or node.inputs[2] is None
        or (training is not None and not training.any())
    ):
        return True
    ratio = _const(node, 1)
    return ratio is not None and ratio.size == 1 and float(ratio.reshape(-1)[0]) == 0.0


def _cast(node: ir.Node, version: int) -> bool:  # rule 2
    source = node.inputs[0].dtype  # type: ignore[union-attr]
    target = node.attributes.get_int("to")
    return source is not None and target is not None and int(source) == target


def _cast_like(node: ir.Node, version: int) -> bool:  # rule 2
    source, target = node.inputs[0].dtype, node.inputs[1].dtype  # type: ignore[union-attr]
    return source is not None and source == target


def _reshape(node: ir.Node, version: int) -> bool:  # rule 3
    dims, target = _dims(node.inputs[0]), _const(node, 1)
    if dims is None or target is None or target.ndim != 1 or len(dims) != target.size:
        return False
    allowzero = node.attributes.get_int("allowzero", 0) == 1
    free = 0
    for dim, entry in zip(dims, target.tolist(), strict=True):
        if entry == -1:
            free += 1
        elif entry == 0 and not allowzero:
            continue
        elif not (isinstance(dim, int) and dim == entry):
            return False
    return free <= 1


def _flatten(node: ir.Node, version: int) -> bool:  # rule 4
    dims = _dims(node.inputs[0])
    if dims is None:
        return False
    axis = node.attributes.get_int("axis", 1)
    axis = axis + len(dims) if axis < 0 else axis
    if len(dims) == 2 and axis == 1:
        return True
    if not all(isinstance(d, int) for d in dims):
        return False
    sizes = [int(d) for d in dims if isinstance(d, int)]
    outer = int(np.prod(sizes[:axis], dtype=np.int64))
    inner = int(np.prod(sizes[axis:], dtype=np.int64))
    return tuple(dims) == (outer, inner)


def _transpose(node: ir.Node, version: int) -> bool:  # rule 5
    perm = node.attributes.get_ints("perm")
    if perm is None:
        dims = _dims(node.inputs[0])
        return dims is not None and len(dims) <= 1
    return list(perm) == list(range(len(perm)))


def _pad(node: ir.Node, version: int) -> bool:  # rule 6
    pads = node.attributes.get_ints("pads") if version < 11 else _const(node, 1)
    return pads is not None and not np.any(np.asarray(pads))


def _slice(node: ir.Node, version: int) -> bool:  # rule 7
    dims = _dims(node.inputs[0])
    if dims is None:
        return False
    # attribute ints before opset 10, constant inputs (numpy arrays) after
    starts: Any
    ends: Any
    axes: Any
    steps: Any
    if version < 10:
        starts = node.attributes.get_ints("starts")
        ends = node.attributes.get_ints("ends")
        axes = node.attributes.get_ints("axes")
        steps = None
    else:
        starts, ends, axes, steps = _const(node, 1), _const(node, 2), None, None
        if len(node.inputs) > 3 and node.inputs[3] is not None:
            axes = _const(node, 3)
            if axes is None:
                return False
        if len(node.inputs) > 4 and node.inputs[4] is not None:
            steps = _const(node, 4)
            if steps is None:
                return False
    if starts is None or ends is None:
        return False
    starts_l, ends_l = (
        np.asarray(starts).reshape(-1).tolist(),
        np.asarray(ends).reshape(-1).tolist(),
    )
    axes_l = list(range(len(starts_l))) if axes is None else np.asarray(axes).reshape(-1).tolist()
    steps_l = [1] * len(starts_l) if steps is None else np.asarray(steps).reshape(-1).tolist()
    if not len(starts_l) == len(ends_l) == len(axes_l) == len(steps_l):
        return False
    for start, end, axis, step in zip(starts_l, ends_l, axes_l, steps_l, strict=True):
        if step != 1:
            return False
        dim = dims[axis]
        if isinstance(dim, int):
            if not (start == 0 or start <= -dim) or end < dim:
                return False
        elif start != 0 or end < _INT32_MAX:
            return False
    return True


def _expand(node: ir.Node, version: int) -> bool:  # rule 8
    dims, target = _dims(node.inputs[0]), _const(node, 1)
    if dims is None or target is None or target.ndim != 1 or target.size > len(dims):
        return False
    aligned = dims[len(dims) - target.size :]
    return all(
        t == 1 or (isinstance(d, int) and d == t)
        for d, t in zip(aligned, target.tolist(), strict=True)
    )


def _single_input(node: ir.Node, version: int) -> bool:  # rule 9
    return len(node.inputs) == 1


def _split(node: ir.Node, version: int) -> bool:  # rule 9
    return len(node.outputs) == 1


def _tile(node: ir.Node, version: int) -> bool:  # rule 10
    repeats = _const(node, 1)
    return repeats is not None and bool(np.all(repeats == 1))


def _neutral(value: float, commutative: bool) -> Callable[[ir.Node, int], bool]:  # rule 11
    def rule(node: ir.Node, version: int) -> bool:
        if len(node.inputs) != 2:
            return False
        candidates = [(0, 1), (1, 0)] if commutative else [(0, 1)]
        for keep, other in candidates:
            constant = _const(node, other)
            data = node.inputs[keep]
            if constant is None or data is None or constant.size == 0:
                continue
            if constant.dtype.kind not in "fiub" or not np.all(constant == value):
                continue
            if data.dtype is not None and node.inputs[other].dtype not in (None, data.dtype):  # type: ignore[union-attr]
                continue
            if _broadcast_keeps_shape(_dims(data), constant.shape):
                if keep == 1:  # forward input 1: move it to position 0 first
                    _swap_inputs(node)
                return True
        return False

    return rule


def _broadcast_keeps_shape(
    dims: tuple[int | ir.SymbolicDim, ...] | None, shape: tuple[int, ...]
) -> bool:
    if not shape:
        return True  # a scalar never changes the other operand's shape
    if dims is None or len(shape) > len(dims):
        return False
    aligned = dims[len(dims) - len(shape) :]
    return all(
        s == 1 or (isinstance(d, int) and d == s) for d, s in zip(aligned, shape, strict=True)
    )


def _swap_inputs(node: ir.Node) -> None:
    a, b = node.inputs[0], node.inputs[1]
    node.replace_input_with(0, b)
    node.replace_input_with(1, a)


_NO_OPS: dict[str, Callable[[ir.Node, int], bool]] = {
    "Dropout": _dropout,
    "Cast": _cast,
    "CastLike": _cast_like,
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Transpose": _transpose,
    "Pad": _pad,
    "Slice": _slice,
    "Expand": _expand,
    "Concat": _single_input,
    "Sum": _single_input,
    "Max": _single_input,
    "Min": _single_input,
    "Mean": _single_input,
    "Split": _split,
    "Tile": _tile,
    "Add": _neutral(0, commutative=True),
    "Sub": _neutral(0, commutative=False),
    "Mul": _neutral(1, commutative=True),
    "Div": _neutral(1, commutative=False),
    "Pow": _neutral(1, commutative=False),
}


# ---------------------------------------------------------------- rule 12

_D = ir.DataType
_EXACT_WIDENING: dict[ir.DataType, frozenset[ir.DataType]] = {
    _D.BOOL: frozenset(
        {
            _D.INT8,
            _D.UINT8,
            _D.INT16,
            _D.UINT16,
            _D.INT32,
            _D.UINT32,
            _D.INT64,
            _D.UINT64,
            _D.FLOAT16,
            _D.BFLOAT16,
            _D.FLOAT,
            _D.DOUBLE,
        }
    ),
    _D.UINT8: frozenset(
        {
            _D.INT16,
            _D.UINT16,
            _D.INT32,
            _D.UINT32,
            _D.INT64,
            _D.UINT64,
            _D.FLOAT16,
            _D.BFLOAT16,
            _D.FLOAT,
            _D.DOUBLE,
        }
    ),
    _D.INT8: frozenset(
        {_D.INT16, _D.INT32, _D.INT64, _D.FLOAT16, _D.BFLOAT16, _D.FLOAT, _D.DOUBLE}
    ),
    _D.UINT16: frozenset({_D.INT32, _D.UINT32, _D.INT64, _D.UINT64, _D.FLOAT, _D.DOUBLE}),
    _D.INT16: frozenset({_D.INT32, _D.INT64, _D.FLOAT, _D.DOUBLE}),
    _D.UINT32: frozenset({_D.INT64, _D.UINT64, _D.DOUBLE}),
    _D.INT32: frozenset({_D.INT64, _D.DOUBLE}),
    _D.FLOAT16: frozenset({_D.FLOAT, _D.DOUBLE}),
    _D.BFLOAT16: frozenset({_D.FLOAT, _D.DOUBLE}),
    _D.FLOAT: frozenset({_D.DOUBLE}),
}


def _skip_exact_widening(node: ir.Node) -> bool:
    """Rule 12: make Cast(Cast(x, A), B) read x when x -> A loses nothing."""
    inner_out = node.inputs[0] if node.inputs else None
    inner = inner_out.producer() if inner_out is not None else None
    if (
        inner is None
        or inner.op_type != "Cast"
        or inner.domain != ""
        or inner.graph is not node.graph
    ):
        return False
    source = inner.inputs[0]
    middle = inner.attributes.get_int("to")
    if source is None or source.dtype is None or middle is None:
        return False
    if ir.DataType(middle) not in _EXACT_WIDENING.get(source.dtype, frozenset()):
        return False
    node.replace_input_with(0, source)
    return True


# ---------------------------------------------------------------- rule 13

# Optional inputs whose default is all zeros: B, initial_h, (initial_c, P for LSTM).
_RNN_ZERO_DEFAULTS = {"RNN": (3, 5), "GRU": (3, 5), "LSTM": (3, 5, 6, 7)}
# Ops whose output is all zeros when their data input (0) is, whatever the other inputs.
_ZERO_PRESERVING = frozenset(
    {
        "Expand",
        "Tile",
        "Slice",
        "Reshape",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Identity",
        "Flatten",
        "Cast",
        "Gather",
        "Pad",
    }
)


def _drop_zero_defaults(node: ir.Node) -> bool:
    changed = False
    for index in _RNN_ZERO_DEFAULTS[node.op_type]:
        if (
            index < len(node.inputs)
            and (initial := node.inputs[index]) is not None
            and _all_zeros(initial)
        ):
            node.replace_input_with(index, None)
            changed = True
    return changed


def _all_zeros(value: ir.Value, depth: int = 8) -> bool:
    """True when `value` is known to hold only zeros (a constant, or built from one)."""
    tensor = ir.convenience.get_const_tensor(value)
    if tensor is not None:
        array = tensor.numpy()
        return array.size > 0 and array.dtype.kind in "fiub" and not np.any(array)
    producer = value.producer()
    if producer is None or depth == 0 or producer.domain != "":
        return False
    if producer.op_type == "ConstantOfShape":
        attr = producer.attributes.get("value")
        return attr is None or (not attr.is_ref() and not np.any(attr.as_tensor().numpy()))
    if producer.op_type == "Pad":
        fill = producer.inputs[2] if len(producer.inputs) > 2 else None
        if fill is not None and not _all_zeros(fill, depth - 1):
            return False
        if producer.attributes.get_string("mode", "constant") != "constant":
            return False
    if producer.op_type == "Concat":
        return all(v is not None and _all_zeros(v, depth - 1) for v in producer.inputs)
    if producer.op_type in _ZERO_PRESERVING and producer.inputs and producer.inputs[0] is not None:
        return _all_zeros(producer.inputs[0], depth - 1)
    return False
