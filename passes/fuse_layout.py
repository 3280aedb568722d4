"""Merge or cancel chains of layout ops: Transpose, Reshape, Squeeze, Unsqueeze, Cast.

Numbered cases:

1. Transpose(Transpose(x, p), q) -> Transpose(x, [p[i] for i in q]); nothing at all
   when that is the identity. A Transpose with the identity perm goes too.
2. Reshape(S(x), shape) -> Reshape(x, shape) where S is any op that only reshapes
   (Reshape, Flatten, Squeeze, Unsqueeze): element order is unchanged, so only the
   final shape matters. The final shape must be a constant without 0 entries
   (a 0 copies a dimension of S's output, which x may not have), unless the outer
   Reshape sets allowzero=1 (then 0 is a literal size).
3. Unsqueeze(Unsqueeze(x, a), b) -> Unsqueeze(x, c): the inserted axes compose.
   Squeeze(Unsqueeze(x, a), a) -> x and Unsqueeze(Squeeze(x, a), a) -> x (Squeeze
   only accepts size-1 axes, so re-inserting them restores x exactly).
4. Squeeze / Unsqueeze of Reshape(x, shape) -> Reshape(x, shape') with the size-1
   entries removed or inserted, when `shape` is a constant without 0 entries and the
   squeezed entries are literally 1.
5. Cast(Cast(x, T1), T2) -> Cast(x, T2) when every value of x's type is exactly
   representable in T1 (a widening cast loses nothing, so the second cast sees the
   same numbers); no Cast at all when T2 is x's own type. A Cast to x's own type goes.
   Narrowing chains (float32 -> float16 -> float32) round, and are kept.

6. Concat(..., Concat(a, b), ...) on the same axis -> Concat(..., a, b, ...) when
   only the outer Concat reads the inner one; a Concat of n Unsqueezes on its own
   axis (stacking equal-shaped tensors) -> one Reshape of the Concat of the inputs.
7. Transposes move down through elementwise ops and reductions (fuse_transpose) until
   they meet their inverse and cancel by case 1.

Axes given as negative numbers are used only when the rank is known. An inner node
read by other nodes stays for them; the outer node is rewired to x either way, so
the count of nodes never grows.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from onnxslim.passes.fuse_common import (
    Namer,
    Scope,
    add_constant,
    can_replace,
    const_array,
    in_scope,
    int_list,
    is_internal,
    is_op,
    remove_dead,
    replace_value,
)
from onnxslim.passes.fuse_transpose import sink_transpose

_SHAPE_ONLY = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


def fuse_layout_chains(scope: Scope, namer: Namer) -> int:
    rules: dict[str, Callable[[Scope, Namer, ir.Node], bool]] = {
        "Transpose": _transpose,
        "Reshape": _reshape,
        "Unsqueeze": _unsqueeze,
        "Squeeze": _squeeze,
        "Cast": _cast,
        "Concat": _concat,
    }
    count = 0
    for node in list(scope):
        if (
            not in_scope(node, scope)
            or node.domain not in ("", "ai.onnx")
            or node.op_type not in rules
        ):
            continue
        if node.inputs and node.inputs[0] is not None and rules[node.op_type](scope, namer, node):
            count += 1
        elif (
            node.op_type == "Transpose"
            and in_scope(node, scope)
            and sink_transpose(scope, namer, node)
        ):
            count += 1
    return count


def _drop(scope: Scope, node: ir.Node, replacement: ir.Value) -> bool:
    """Remove `node`, its readers reading `replacement`; then its inputs' dead producers.

    When `node`'s output is returned under a name `replacement` cannot take (a graph
    input, an outer-scope value), `node` becomes an Identity of `replacement` instead.
    """
    inner = node.inputs[0].producer() if node.inputs[0] is not None else None
    if not can_replace(node.outputs[0], replacement, scope):
        if node.op_type == "Identity":
            return False
        feeders = [p for v in node.inputs if v is not None and (p := v.producer()) is not None]
        for name in list(node.attributes):
            del node.attributes[name]
        node.replace_input_with(0, replacement)
        node.resize_inputs(1)
        node.op_type = "Identity"
        for use in list(node.outputs[0].uses()):  # only the returned name needs the Identity
            use.node.replace_input_with(use.idx, replacement)
        remove_dead(scope, feeders)
        return True
    replace_value(node.outputs[0], replacement)
    scope.remove(node, safe=True)
    if inner is not None:
        remove_dead(scope, [inner])
    return True


def _rewire(scope: Scope, node: ir.Node, x: ir.Value) -> None:
    """Make `node` read x instead of its first input; drop the bypassed producer if dead."""
    inner = node.inputs[0].producer()  # type: ignore[union-attr]
    node.replace_input_with(0, x)
    if inner is not None:
        remove_dead(scope, [inner])


def _rank(value: ir.Value | None) -> int | None:
    return None if value is None or value.shape is None else len(value.shape)


# --------------------------------------------------------------------------- case 1


def _perm(node: ir.Node) -> list[int] | None:
    perm = node.attributes.get_ints("perm", None)
    if perm is not None:
        return list(perm)
    rank = _rank(node.inputs[0])
    return None if rank is None else list(range(rank))[::-1]


def _transpose(scope: Scope, namer: Namer, node: ir.Node) -> bool:
    del namer
    q = _perm(node)
    if q is None:
        return False
    if q == list(range(len(q))):
        return _drop(scope, node, node.inputs[0])  # type: ignore[arg-type]
    inner = node.inputs[0].producer()  # type: ignore[union-attr]
    if not is_op(inner, "Transpose") or inner.inputs[0] is None:
        return False
    p = _perm(inner)
    if p is None or len(p) != len(q):
        return False
    composed = [p[i] for i in q]
    x = inner.inputs[0]
    if composed == list(range(len(composed))):
        return _drop(scope, node, x)
    node.attributes["perm"] = ir.AttrInt64s("perm", composed)
    _rewire(scope, node, x)
    return True


# --------------------------------------------------------------------------- case 2


def _reshape(scope: Scope, namer: Namer, node: ir.Node) -> bool:
    if len(node.inputs) < 2:
        return False
    if _own_dims_shape(scope, namer, node):
        return True
    inner = node.inputs[0].producer()  # type: ignore[union-attr]
    if not is_op(inner, *_SHAPE_ONLY) or inner.inputs[0] is None:
        return False
    shape = int_list(node.inputs[1])
    if shape is None or (0 in shape and not node.attributes.get_int("allowzero", 0)):
        return False
    _rewire(scope, node, inner.inputs[0])
    return True


def _own_dims_shape(scope: Scope, namer: Namer, node: ir.Node) -> bool:
    """Case 2b: a target shape assembled at run time from the data's own dimensions.

    Reshape(x, Concat(Unsqueeze(Gather(Shape(x), j)), ..., 12, 64)) is how exporters spell
    "keep dims j, split the last": an entry that reads x's dimension j at position j
    becomes 0 (copy that dimension), and a single entry left dynamic becomes -1 (the
    one dimension Reshape infers, which is exactly that value since the original
    reshape was valid). The shape becomes a constant and the Shape/Gather/Unsqueeze/
    Concat arithmetic goes."""
    x, target = node.inputs[0], node.inputs[1]
    concat = target.producer() if target is not None else None
    if x is None or not is_op(concat, "Concat") or concat.attributes.get_int("axis", 0) != 0:
        return False
    if node.attributes.get_int("allowzero", 0):
        return False
    entries: list[int | tuple[ir.Value, int] | None] = []
    for part in concat.inputs:
        values = int_list(part)
        if values is not None:
            entries.extend(values)
            continue
        dim = _dim_of(part)
        if dim is None:
            return False
        entries.append(dim)
    rank = _rank(x)
    new: list[int | None] = []
    for j, entry in enumerate(entries):
        if isinstance(entry, int):
            new.append(entry)
            continue
        source, index = entry  # type: ignore[misc]
        if index < 0 and rank is not None:
            index += rank
        new.append(0 if source is x and index == j else None)
    unknown = [j for j, v in enumerate(new) if v is None]
    if len(unknown) > 1 or (unknown and -1 in new):
        return False
    if unknown:
        new[unknown[0]] = -1
    constant = add_constant(
        scope,
        np.array(new, np.int64),
        namer.fresh(f"{(target.name if target is not None else None) or 'shape'}_const"),
        before=node,
    )
    node.replace_input_with(1, constant)
    remove_dead(scope, [concat])
    return True


def _dim_of(value: ir.Value | None) -> tuple[ir.Value, int] | None:
    """(x, i) when `value` is the 1-element vector [x.shape[i]] built from Shape(x)."""
    node = value.producer() if value is not None else None
    if is_op(node, "Unsqueeze"):
        axes = _axes(node)
        inner = node.inputs[0].producer() if node.inputs[0] is not None else None
        if axes not in ([0], [-1]) or not is_op(inner, "Gather"):
            return None
        index = const_array(inner.inputs[1])
        if index is None or index.ndim != 0:
            return None
        node = inner
    elif is_op(node, "Gather"):
        index = const_array(node.inputs[1])
        if index is None or index.shape != (1,):
            return None
    else:
        return None
    if node.attributes.get_int("axis", 0) != 0:
        return None
    shape = node.inputs[0].producer() if node.inputs[0] is not None else None
    if not is_op(shape, "Shape") or shape.inputs[0] is None or "end" in shape.attributes:
        return None
    start = shape.attributes.get_int("start", 0)
    position = int(index.reshape(-1)[0])
    if start < 0 or (start > 0 and position < 0):
        return None
    return shape.inputs[0], position + start


# --------------------------------------------------------------------------- case 3 and 4


def _axes(node: ir.Node) -> list[int] | None:
    """The axes of a Squeeze/Unsqueeze (attribute before opset 13, input after)."""
    if "axes" in node.attributes:
        return list(node.attributes.get_ints("axes", []) or [])
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        return int_list(node.inputs[1])
    return None


def _normalized(axes: list[int], rank: int | None) -> list[int] | None:
    if all(a >= 0 for a in axes):
        return sorted(axes)
    if rank is None:
        return None
    return sorted(a + rank if a < 0 else a for a in axes)


def _set_axes(scope: Scope, namer: Namer, node: ir.Node, axes: list[int]) -> None:
    if "axes" in node.attributes or len(node.inputs) < 2:
        node.attributes["axes"] = ir.AttrInt64s("axes", axes)
        return
    value = add_constant(
        scope,
        np.array(axes, dtype=np.int64),
        namer.fresh(f"{node.name or 'unsqueeze'}_axes"),
        before=node,
    )
    old = node.inputs[1]
    node.replace_input_with(1, value)
    if old is not None and old.producer() is not None:
        remove_dead(scope, [old.producer()])  # type: ignore[list-item]


def _out_rank_unsqueeze(node: ir.Node, axes: list[int]) -> int | None:
    rank = _rank(node.inputs[0])
    return None if rank is None else rank + len(axes)


def _unsqueeze(scope: Scope, namer: Namer, node: ir.Node) -> bool:
    b = _axes(node)
    inner = node.inputs[0].producer()  # type: ignore[union-attr]
    if b is None or inner is None or inner.inputs[0] is None:
        return False
    out_rank = _rank(node.outputs[0]) or _out_rank_unsqueeze(node, b)
    b_n = _normalized(b, out_rank)
    if b_n is None:
        return False
    if is_op(inner, "Unsqueeze"):
        a = _axes(inner)
        a_n = None if a is None else _normalized(a, _rank(inner.outputs[0]))
        if a_n is None:
            return False
        # Position p of the middle tensor lands on the p-th final index not in b.
        free = [i for i in range(len(b_n) + max(a_n + [-1]) + 1 + len(b_n)) if i not in b_n]
        merged = sorted(set(b_n) | {free[p] for p in a_n})
        _rewire(scope, node, inner.inputs[0])
        _set_axes(scope, namer, node, merged)
        return True
    if is_op(inner, "Squeeze"):
        a = _axes(inner)
        a_n = None if a is None else _normalized(a, _rank(inner.inputs[0]))
        if a_n is not None and a_n == b_n:
            return _drop(scope, node, inner.inputs[0])
        return False
    if is_op(inner, "Reshape") and is_internal(node.inputs[0], node):  # type: ignore[arg-type]
        shape = int_list(inner.inputs[1]) if len(inner.inputs) > 1 else None
        if shape is None or 0 in shape or bool(inner.attributes.get_int("allowzero", 0)):
            return False
        b_n = _normalized(b, len(shape) + len(b))
        if b_n is None:
            return False
        new_shape = list(shape)
        for axis in b_n:
            new_shape.insert(axis, 1)
        return _as_reshape(scope, namer, node, inner.inputs[0], new_shape)
    return False


def _squeeze(scope: Scope, namer: Namer, node: ir.Node) -> bool:
    b = _axes(node)
    inner = node.inputs[0].producer()  # type: ignore[union-attr]
    if b is None or inner is None or inner.inputs[0] is None:
        return False
    if is_op(inner, "Unsqueeze"):
        a = _axes(inner)
        rank = _rank(inner.outputs[0])
        a_n = None if a is None else _normalized(a, rank)
        b_n = _normalized(b, rank)
        if a_n is not None and a_n == b_n:
            return _drop(scope, node, inner.inputs[0])
        return False
    if is_op(inner, "Reshape") and is_internal(node.inputs[0], node):  # type: ignore[arg-type]
        shape = int_list(inner.inputs[1]) if len(inner.inputs) > 1 else None
        if shape is None or 0 in shape or bool(inner.attributes.get_int("allowzero", 0)):
            return False
        b_n = _normalized(b, len(shape))
        if b_n is None or any(shape[axis] != 1 for axis in b_n):
            return False
        return _as_reshape(
            scope, namer, node, inner.inputs[0], [d for i, d in enumerate(shape) if i not in b_n]
        )
    return False


def _as_reshape(scope: Scope, namer: Namer, node: ir.Node, x: ir.Value, shape: list[int]) -> bool:
    """Replace `node` (a Squeeze/Unsqueeze of a Reshape) by one Reshape of x (case 4)."""
    if shape.count(-1) > 1:
        return False
    target = add_constant(
        scope,
        np.array(shape, dtype=np.int64),
        namer.fresh(f"{node.name or 'reshape'}_shape"),
        before=node,
    )
    reshape = ir.Node("", "Reshape", [x, target], num_outputs=1, name=node.name or None)
    scope.insert_before(node, reshape)
    reshape.outputs[0].shape = node.outputs[0].shape
    reshape.outputs[0].type = node.outputs[0].type
    if not can_replace(node.outputs[0], reshape.outputs[0], scope):
        scope.remove(reshape, safe=True)
        remove_dead(scope, [target.producer()] if target.producer() is not None else [])  # type: ignore[list-item]
        return False
    inner = node.inputs[0].producer()  # type: ignore[union-attr]
    replace_value(node.outputs[0], reshape.outputs[0])
    scope.remove(node, safe=True)
    if inner is not None:
        remove_dead(scope, [inner])
    return True


# --------------------------------------------------------------------------- case 5

_INT_BITS = {
    ir.DataType.INT8: (True, 8),
    ir.DataType.INT16: (True, 16),
    ir.DataType.INT32: (True, 32),
    ir.DataType.INT64: (True, 64),
    ir.DataType.UINT8: (False, 8),
    ir.DataType.UINT16: (False, 16),
    ir.DataType.UINT32: (False, 32),
    ir.DataType.UINT64: (False, 64),
}
# Significand bits (implicit bit included) and exponent range rank of each float type.
_FLOAT_BITS = {
    ir.DataType.FLOAT16: (11, 1),
    ir.DataType.BFLOAT16: (8, 2),
    ir.DataType.FLOAT: (24, 2),
    ir.DataType.DOUBLE: (53, 3),
}


def exact_cast(src: ir.DataType, dst: ir.DataType) -> bool:
    """Whether every value of `src` is exactly representable in `dst`."""
    if src == dst:
        return True
    if src == ir.DataType.BOOL:
        return dst in _INT_BITS or dst in _FLOAT_BITS
    if src in _INT_BITS:
        signed, bits = _INT_BITS[src]
        if dst in _INT_BITS:
            dst_signed, dst_bits = _INT_BITS[dst]
            if signed and not dst_signed:
                return False
            return dst_bits > bits or (dst_bits == bits and signed == dst_signed)
        if dst in _FLOAT_BITS:
            return _FLOAT_BITS[dst][0] >= bits - (1 if signed else 0)
        return False
    if src in _FLOAT_BITS and dst in _FLOAT_BITS:
        (s_man, s_exp), (d_man, d_exp) = _FLOAT_BITS[src], _FLOAT_BITS[dst]
        return d_man >= s_man and d_exp >= s_exp
    return False


def _cast(scope: Scope, namer: Namer, node: ir.Node) -> bool:
    del namer
    to = node.attributes.get_int("to", None)
    x = node.inputs[0]
    if to is None or x is None:
        return False
    target = ir.DataType(to)
    if x.dtype is not None and x.dtype == target:
        return _drop(scope, node, x)
    inner = x.producer()
    if not is_op(inner, "Cast") or inner.inputs[0] is None:
        return False
    source = inner.inputs[0].dtype
    middle = inner.attributes.get_int("to", None)
    if source is None or middle is None or not exact_cast(source, ir.DataType(middle)):
        return False
    if source == target:
        return _drop(scope, node, inner.inputs[0])
    _rewire(scope, node, inner.inputs[0])
    return True


# --------------------------------------------------------------------------- case 6


def _concat(scope: Scope, namer: Namer, node: ir.Node) -> bool:
    axis = node.attributes.get_int("axis", None)
    if axis is None:
        return False
    rank = _rank(node.outputs[0])
    if _stack_as_reshape(scope, namer, node, axis):
        return True
    merged: list[ir.Value | None] = []
    inner_nodes = []
    for value in node.inputs:
        inner = value.producer() if value is not None else None
        if (
            is_op(inner, "Concat")
            and value is not None
            and is_internal(value, node)
            and _same_axis(inner.attributes.get_int("axis", None), axis, rank)
        ):
            merged.extend(inner.inputs)
            inner_nodes.append(inner)
        else:
            merged.append(value)
    if not inner_nodes:
        return False
    node.resize_inputs(len(merged))
    for i, value in enumerate(merged):
        node.replace_input_with(i, value)
    remove_dead(scope, inner_nodes)
    return True


def _stack_as_reshape(scope: Scope, namer: Namer, node: ir.Node, axis: int) -> bool:
    """Case 6b: Concat(Unsqueeze(a1, k), ..., Unsqueeze(an, k), axis=k) stacks equal-shaped
    tensors; Concat(a1, ..., an, axis=k) has the same elements in the same order, so one
    Reshape to the stacked shape replaces the n Unsqueezes."""
    inputs = list(node.inputs)
    if len(inputs) < 2 or any(v is None for v in inputs):
        return False
    sources = []
    for value in inputs:
        if value is None:  # checked above; narrows the type
            return False
        inner = value.producer()
        if not is_op(inner, "Unsqueeze") or not is_internal(value, node) or inner.inputs[0] is None:
            return False
        sources.append((inner, inner.inputs[0]))
    shapes = {tuple(src.shape) if src.shape is not None else None for _, src in sources}
    if len(shapes) != 1 or None in shapes:
        return False
    base = next(iter(shapes))
    out_rank = len(base) + 1  # type: ignore[arg-type]
    k = axis + out_rank if axis < 0 else axis
    if not 0 <= k < len(base):  # type: ignore[arg-type]
        return False  # stacking on a new last axis interleaves elements: not a Concat
    for inner, _ in sources:
        axes = _axes(inner)
        if axes is None or _normalized(axes, out_rank) != [k]:
            return False
    dims = [d if isinstance(d, int) else -1 for d in base]  # type: ignore[union-attr]
    target = dims[:k] + [len(sources)] + dims[k:]
    if target.count(-1) > 1:
        return False
    concat = ir.Node(
        "",
        "Concat",
        [src for _, src in sources],
        attributes=[ir.AttrInt64("axis", k)],
        num_outputs=1,
        name=namer.node(node.name),
    )
    concat.outputs[0].name = namer.fresh(f"{node.outputs[0].name or 'concat'}_flat")
    scope.insert_before(node, concat)
    shape = add_constant(
        scope,
        np.array(target, np.int64),
        namer.fresh(f"{node.outputs[0].name}_stacked"),
        before=node,
    )
    # The Concat node becomes the Reshape, so its output (and name) stays where it is.
    node.attributes.pop("axis", None)
    node.resize_inputs(2)
    node.replace_input_with(0, concat.outputs[0])
    node.replace_input_with(1, shape)
    node.op_type = "Reshape"
    remove_dead(scope, [inner for inner, _ in sources])
    return True


def _same_axis(a: int | None, b: int, rank: int | None) -> bool:
    if a is None:
        return False
    if a == b:
        return True
    return rank is not None and (a % rank) == (b % rank)
