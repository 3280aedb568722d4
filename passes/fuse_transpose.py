"""Move Transposes down through layout-agnostic ops until they cancel or vanish.

Models converted from channels-last frameworks wrap every convolution in a pair
of Transposes (NHWC -> NCHW -> NHWC) with bias, BatchNorm-as-Mul/Add and
activations in between. Moving each Transpose past the ops after it brings it
next to the inverse Transpose of the next layer, where the two cancel (layout
case 1), and leaves the per-channel constants right after the Conv, where
fuse-conv-affine folds them into its weights.

A Transpose t = Transpose(x, p) read by exactly one node u moves below u when:

1. u is elementwise on one tensor (Relu, Sigmoid, Clip with scalar bounds, Cast, ...):
   u(t(x)) = t(u(x)).
2. u is Add/Sub/Mul/Div/Pow/Max/Min/PRelu with a constant c on the other side:
   t(x) + c = t(x + c') with c' = transpose(c at rank r, inverse(p)). c' replaces c
   when u is c's only reader, else it is a new (small, <= 4096 elements) constant.
3. u is such a binary op whose other input is another single-use Transpose with
   the same perm: t(a) + t(b) = t(a + b), one Transpose instead of two.
4. u is a Reduce* over constant axes with keepdims=0 whose kept axes stay in order:
   the reduction reads x over the permuted axes and no Transpose is left at all.

And one move up: Transpose(Pad(x)) -> Pad(Transpose(x)) with the pads permuted,
when a Conv or pooling reads the Transpose, so fuse-pad can fold the Pad into it.

None of these adds a node; each either keeps the count (the Transpose moved) or
lowers it, so repeating them terminates.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxslim.passes.fuse_common import (
    Namer,
    Scope,
    add_constant,
    const_array,
    home,
    in_scope,
    int_list,
    is_op,
    remove_dead,
    set_constant,
    sole_user,
)

UNARY = frozenset(
    {
        "Relu",
        "LeakyRelu",
        "Sigmoid",
        "HardSigmoid",
        "HardSwish",
        "Tanh",
        "Elu",
        "Selu",
        "Celu",
        "Softplus",
        "Softsign",
        "Exp",
        "Log",
        "Neg",
        "Abs",
        "Sqrt",
        "Reciprocal",
        "Floor",
        "Ceil",
        "Round",
        "Sign",
        "Erf",
        "Not",
        "Sin",
        "Cos",
        "Cast",
        "Gelu",
        "Mish",
        "ThresholdedRelu",
        "IsNaN",
        "IsInf",
        "Clip",
    }
)
BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "PRelu"})
REDUCE = frozenset(
    {
        "ReduceMean",
        "ReduceSum",
        "ReduceMax",
        "ReduceMin",
        "ReduceProd",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSumExp",
        "ReduceSumSquare",
    }
)
_COPY_LIMIT = 4096


def perm_of(node: ir.Node) -> list[int] | None:
    perm = node.attributes.get_ints("perm", None)
    return None if perm is None else list(perm)


def _inverse(perm: list[int]) -> list[int]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return inv


def sink_transpose(scope: Scope, namer: Namer, t: ir.Node) -> bool:
    """Move `t` down as far as the cases allow (or a Pad above it down); whether anything moved."""
    moved = False
    current: ir.Node | None = t
    while current is not None and in_scope(current, scope):
        step = _sink_once(scope, namer, current)
        if step is False:
            break
        moved = True
        current = step if isinstance(step, ir.Node) else None
    return moved


def _sink_once(scope: Scope, namer: Namer, t: ir.Node) -> ir.Node | bool:
    """One move: the Transpose that now carries the layout, True if it is gone, False if stuck."""
    perm = perm_of(t)
    x = t.inputs[0]
    if perm is None or x is None:
        return False
    if _hoist_over_pad(scope, namer, t, perm):
        return True
    u = sole_user(t.outputs[0])
    if u is None or u.domain not in ("", "ai.onnx") or len(u.outputs) != 1:
        return False
    op = u.op_type
    if op in UNARY and u.inputs[0] is t.outputs[0]:
        if any(
            (array := const_array(v)) is None or array.size != 1
            for v in u.inputs[1:]
            if v is not None
        ):
            return False
        u.replace_input_with(0, x)
        return _move_below(scope, namer, t, u, perm)
    if op in BINARY and len(u.inputs) == 2:
        side = 0 if u.inputs[0] is t.outputs[0] else 1
        other = u.inputs[1 - side]
        if other is None:
            return False
        partner = other.producer()
        if (
            is_op(partner, "Transpose")
            and partner is not t
            and perm_of(partner) == perm
            and sole_user(other) is u
            and partner.inputs[0] is not None
        ):
            u.replace_input_with(side, x)
            u.replace_input_with(1 - side, partner.inputs[0])
            scope.remove(partner, safe=True)
            return _move_below(scope, namer, t, u, perm)
        c = const_array(other)
        if c is None or c.ndim > len(perm) or (op == "PRelu" and side != 0):
            return False
        moved = np.transpose(c.reshape((1,) * (len(perm) - c.ndim) + c.shape), _inverse(perm))
        if sole_user(other) is u and sum(1 for use in other.uses() if use.node is u) == 1:
            set_constant(other, moved)
        elif moved.size <= _COPY_LIMIT:
            u.replace_input_with(
                1 - side, add_constant(scope, moved, namer.fresh(f"{other.name or 'const'}_t"), u)
            )
        else:
            return False
        u.replace_input_with(side, x)
        return _move_below(scope, namer, t, u, perm)
    if op in REDUCE:
        return _absorb_into_reduce(scope, namer, t, u, perm)
    return False


def _move_below(scope: Scope, namer: Namer, t: ir.Node, u: ir.Node, perm: list[int]) -> ir.Node:
    """`u` now reads x directly; put a Transpose(perm) after it, take over u's readers, drop t."""
    out = u.outputs[0]
    shape, out_type = out.shape, out.type
    uses = list(out.uses())
    moved = ir.Node(
        "",
        "Transpose",
        [out],
        attributes=[ir.AttrInt64s("perm", perm)],
        num_outputs=1,
        name=t.name or None,
    )
    scope.insert_after(u, moved)
    new = moved.outputs[0]
    new.type = out_type
    new.shape = shape
    if shape is not None and len(shape) == len(perm):
        dims: list[int | ir.SymbolicDim | None] = [None] * len(perm)
        for i, p in enumerate(perm):
            dims[p] = shape[i]
        out.shape = ir.Shape(dims)
    graph = home(scope)
    returned = [i for i, v in enumerate(graph.outputs) if v is out]
    for use in uses:
        use.node.replace_input_with(use.idx, new)
    if returned:
        name = out.name
        out.name = namer.fresh(f"{name}_{'untransposed'}")
        new.name = name
        for i in returned:
            graph.outputs[i] = new
    else:
        new.name = namer.fresh(f"{out.name or 'x'}_transposed")
    scope.remove(t, safe=True)
    return moved


def _absorb_into_reduce(
    scope: Scope, namer: Namer, t: ir.Node, u: ir.Node, perm: list[int]
) -> bool:
    """Case 4: Reduce(Transpose(x, p), axes A, keepdims=0) -> Reduce(x, p[A]) when the kept
    axes keep their order (no Transpose needed after)."""
    if u.attributes.get_int("keepdims", 1) != 0 or u.inputs[0] is not t.outputs[0]:
        return False
    rank = len(perm)
    if "axes" in u.attributes:
        axes = list(u.attributes.get_ints("axes", []) or [])
    elif len(u.inputs) > 1 and u.inputs[1] is not None:
        axes = int_list(u.inputs[1])  # type: ignore[assignment]
    else:
        return False
    if not axes:
        return False
    axes = [a + rank if a < 0 else a for a in axes]
    new_axes = sorted(perm[a] for a in axes)
    kept = [perm[i] for i in range(rank) if i not in axes]
    if kept != sorted(kept):
        return False
    if "axes" in u.attributes:
        u.attributes["axes"] = ir.AttrInt64s("axes", new_axes)
    else:
        old = u.inputs[1]
        u.replace_input_with(
            1, add_constant(scope, np.array(new_axes, np.int64), namer.fresh("reduce_axes"), u)
        )
        if old is not None and old.producer() is not None:
            remove_dead(scope, [old.producer()])  # type: ignore[list-item]
    u.replace_input_with(0, t.inputs[0])
    scope.remove(t, safe=True)
    return True


def _hoist_over_pad(scope: Scope, namer: Namer, t: ir.Node, perm: list[int]) -> bool:
    """Transpose(Pad(x)) -> Pad(Transpose(x)) when a Conv/pool reads the Transpose."""
    pad = t.inputs[0].producer() if t.inputs[0] is not None else None
    if not is_op(pad, "Pad") or sole_user(pad.outputs[0]) is not t or pad.inputs[0] is None:
        return False
    if not is_op(sole_user(t.outputs[0]), "Conv", "AveragePool", "MaxPool"):
        return False
    if len(pad.inputs) < 2 or (len(pad.inputs) > 3 and pad.inputs[3] is not None):
        return False
    pads_value = pad.inputs[1]
    pads = int_list(pads_value)
    rank = len(perm)
    if pads_value is None or pads is None or len(pads) != 2 * rank:
        return False
    begins, ends = pads[:rank], pads[rank:]
    permuted = [begins[p] for p in perm] + [ends[p] for p in perm]
    x = pad.inputs[0]
    if sole_user(pads_value) is pad:
        set_constant(pads_value, np.array(permuted, np.int64))
    else:
        pad.replace_input_with(
            1, add_constant(scope, np.array(permuted, np.int64), namer.fresh("pads_t"), pad)
        )
    # Rewire: t reads x, the Pad reads t, the Conv reads the Pad.
    reader_uses = list(t.outputs[0].uses())
    t.replace_input_with(0, x)
    pad.replace_input_with(0, t.outputs[0])
    for use in reader_uses:
        use.node.replace_input_with(use.idx, pad.outputs[0])
    graph = home(scope)
    graph.remove(t, safe=False)
    graph.insert_before(pad, t)
    pad_out, t_out = pad.outputs[0], t.outputs[0]
    pad_out.shape, t_out.shape = t_out.shape, None
    return in_scope(t, scope)
