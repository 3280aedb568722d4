"""MatMul + Add -> Gemm, where Gemm means the same thing.

Cases:

1. Add(MatMul(A, B), C) -> Gemm(A, B, C) when A and B are known to be 2-D (Gemm
   takes matrices only; a 3-D MatMul stays as it is rather than growing two
   Reshapes), the elements are floating point, and C is a constant whose shape
   broadcasts to the [M, N] result without growing it ([N], [1, N], [M, N], a scalar).
2. A Transpose(perm=[1, 0]) feeding A or B that nothing else reads becomes transA /
   transB.
3. Add(Gemm(A, B), C) where the Gemm has no C of its own: the constant becomes its C
   (beta applies to C, so only beta == 1 qualifies).
4. A of rank > 2 (a transformer's [batch, seq, K] activations) with a constant B [K, N]
   and a bias along N: Reshape(A, [-1, K]) -> Gemm -> Reshape back. That adds a node
   per MatMul, so it is done only where the Reshapes vanish into their neighbours and
   the count drops: MatMuls that read the same A share one Reshape, a Reshape that
   produces A is replaced by the new one, and a Reshape that reads the result takes
   the Gemm output directly. Decided per group of MatMuls sharing A; the Reshape back
   needs the static leading dimensions unless a Reshape reads the result.

No weight is modified (B and C are used as they are), so a weight shared with other
nodes stays shared: nothing is copied.
"""

from __future__ import annotations

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
    new_node,
    rank_of,
    remove_dead,
    replace_value,
    set_constant,
    sole_user,
    static_shape,
)

_GEMM_TYPES = {ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16, ir.DataType.BFLOAT16}


def fuse_matmul_add(scope: Scope, namer: Namer) -> int:
    count = _fuse_batched(scope, namer)
    for add in list(scope):
        if not in_scope(add, scope) or not is_op(add, "Add") or len(add.inputs) != 2:
            continue
        for side in (0, 1):
            product, bias = add.inputs[side], add.inputs[1 - side]
            node = product.producer() if product is not None else None
            if node is None or not is_internal(product, add):  # type: ignore[arg-type]
                continue
            c = const_array(bias)
            if c is None or c.dtype.kind != "f":
                continue
            if is_op(node, "MatMul") and _matmul_to_gemm(scope, node, add, bias, c):  # type: ignore[arg-type]
                count += 1
                break
            if is_op(node, "Gemm") and _gemm_take_bias(scope, node, add, bias, c):  # type: ignore[arg-type]
                count += 1
                break
    return count


def _bias_fits(c: np.ndarray, m: int | None, n: int | None) -> bool:
    """C broadcasts to [M, N] without growing it (case 1)."""
    if c.ndim > 2:
        return False
    shape = (1,) * (2 - c.ndim) + c.shape
    rows_ok = shape[0] == 1 or (m is not None and shape[0] == m)
    cols_ok = shape[1] == 1 or (n is not None and shape[1] == n)
    # A bias that is 1 along N while N > 1 still fits; one that is larger than the result does not.
    return rows_ok and cols_ok


def _dim(value: ir.Value | None, axis: int) -> int | None:
    if value is None or value.shape is None or len(value.shape) <= axis:
        return None
    dim = value.shape[axis]
    return dim if isinstance(dim, int) else None


def _untransposed(value: ir.Value, matmul: ir.Node) -> tuple[ir.Value, int, ir.Node | None]:
    """(input, trans flag, Transpose node absorbed) for a Gemm operand (case 2)."""
    node = value.producer()
    if is_op(node, "Transpose") and is_internal(value, matmul) and node.inputs[0] is not None:
        perm = node.attributes.get_ints("perm", None)
        if (perm is not None and list(perm) == [1, 0]) or (
            perm is None and rank_of(node.inputs[0]) == 2
        ):
            return node.inputs[0], 1, node
    return value, 0, None


def _matmul_to_gemm(
    scope: Scope, matmul: ir.Node, add: ir.Node, bias: ir.Value, c: np.ndarray
) -> bool:
    a, b = matmul.inputs
    if a is None or b is None or rank_of(a) != 2 or rank_of(b) != 2:
        return False
    if a.dtype is not None and a.dtype not in _GEMM_TYPES:
        return False
    if b.dtype is not None and b.dtype not in _GEMM_TYPES:
        return False
    if c.dtype != (a.dtype.numpy() if a.dtype is not None else c.dtype):
        return False
    m, n = _dim(matmul.outputs[0], 0) or _dim(a, 0), _dim(matmul.outputs[0], 1) or _dim(b, 1)
    b_array = const_array(b)
    if b_array is not None and b_array.ndim == 2:
        n = int(b_array.shape[1])
    if not _bias_fits(c, m, n):
        return False
    a_in, trans_a, ta = _untransposed(a, matmul)
    b_in, trans_b, tb = _untransposed(b, matmul)
    attrs: list[ir.Attr] = []
    if trans_a:
        attrs.append(ir.AttrInt64("transA", 1))
    if trans_b:
        attrs.append(ir.AttrInt64("transB", 1))
    gemm = new_node("Gemm", [a_in, b_in, bias], attrs, name=matmul.name or None)
    scope.insert_before(add, gemm)
    gemm.outputs[0].shape = add.outputs[0].shape
    gemm.outputs[0].type = add.outputs[0].type
    if not can_replace(add.outputs[0], gemm.outputs[0], scope):
        scope.remove(gemm, safe=True)
        return False
    replace_value(add.outputs[0], gemm.outputs[0])
    scope.remove(add, safe=True)
    remove_dead(scope, [n for n in (matmul, ta, tb) if n is not None])
    return True


def _gemm_take_bias(
    scope: Scope, gemm: ir.Node, add: ir.Node, bias: ir.Value, c: np.ndarray
) -> bool:
    if len(gemm.inputs) > 2 and gemm.inputs[2] is not None:
        return False
    if gemm.attributes.get_float("beta", 1.0) != 1.0:
        return False
    a = gemm.inputs[0]
    if a is not None and a.dtype is not None and c.dtype != a.dtype.numpy():
        return False
    out = gemm.outputs[0]
    if not _bias_fits(c, _dim(out, 0), _dim(out, 1)):
        # Without the result's shape, only a scalar or a row as wide as B's output fits for sure.
        b = const_array(gemm.inputs[1])
        trans_b = gemm.attributes.get_int("transB", 0)
        n = None if b is None or b.ndim != 2 else int(b.shape[0] if trans_b else b.shape[1])
        if not _bias_fits(c, None, n):
            return False
    if not can_replace(add.outputs[0], out, scope):
        return False
    if len(gemm.inputs) < 3:
        gemm.resize_inputs(3)
    gemm.replace_input_with(2, bias)
    replace_value(add.outputs[0], out)
    scope.remove(add, safe=True)
    return True


# --------------------------------------------------------------------------- case 4


class _Batched:
    """One Add(MatMul(A, W), c) with A of rank > 2, and what converting it costs."""

    def __init__(
        self, add: ir.Node, matmul: ir.Node, bias: ir.Value, c: np.ndarray, weight: np.ndarray
    ):
        self.add, self.matmul, self.bias, self.c, self.weight = add, matmul, bias, c, weight
        consumer = sole_user(add.outputs[0])
        shape = (
            int_list(consumer.inputs[1])
            if is_op(consumer, "Reshape") and len(consumer.inputs) > 1
            else None
        )
        self.consumer = (
            consumer
            if shape is not None
            and consumer is not None
            and (0 not in shape or bool(consumer.attributes.get_int("allowzero", 0)))
            else None
        )
        a_shape = static_shape(matmul.inputs[0])
        self.out_shape = None if a_shape is None else [*a_shape[:-1], int(weight.shape[1])]

    @property
    def post_cost(self) -> int:
        return 0 if self.consumer is not None else 1


def _batched_candidate(add: ir.Node) -> _Batched | None:
    if not is_op(add, "Add") or len(add.inputs) != 2:
        return None
    for side in (0, 1):
        product, bias = add.inputs[side], add.inputs[1 - side]
        matmul = product.producer() if product is not None else None
        if not is_op(matmul, "MatMul") or not is_internal(product, add):  # type: ignore[arg-type]
            continue
        a, b = matmul.inputs
        weight, c = const_array(b), const_array(bias)
        rank = rank_of(a)
        if weight is None or c is None or weight.ndim != 2 or rank is None or rank < 3:
            continue
        if (
            weight.dtype.kind != "f"
            or c.dtype != weight.dtype
            or (a is not None and a.dtype is not None and a.dtype not in _GEMM_TYPES)
        ):
            continue
        n = int(weight.shape[1])
        if (
            c.ndim > rank
            or any(d != 1 for d in c.shape[:-1])
            or (c.ndim and c.shape[-1] not in (1, n))
        ):
            continue
        if c.ndim > 1 and sole_user(bias) is not add:  # type: ignore[arg-type]
            continue  # would need a flattened copy of a bias others read
        candidate = _Batched(add, matmul, bias, c, weight)  # type: ignore[arg-type]
        if candidate.consumer is None and candidate.out_shape is None:
            continue
        return candidate
    return None


def _fuse_batched(scope: Scope, namer: Namer) -> int:
    groups: dict[int, list[_Batched]] = {}
    for node in list(scope):
        candidate = _batched_candidate(node)
        if candidate is not None:
            groups.setdefault(id(candidate.matmul.inputs[0]), []).append(candidate)
    count = 0
    for group in groups.values():
        a = group[0].matmul.inputs[0]
        assert a is not None
        inner = a.producer()
        readers = {id(use.node) for use in a.uses()}
        merges_pre = (
            is_op(inner, "Reshape")
            and not a.is_graph_output()
            and readers == {id(c.matmul) for c in group}
            and inner.inputs[0] is not None
        )
        cost = len(group) + (0 if merges_pre else 1) + sum(c.post_cost for c in group)
        if cost >= 2 * len(group):
            continue
        source = inner.inputs[0] if merges_pre else a  # type: ignore[union-attr]
        k = int(group[0].weight.shape[0])
        target = add_constant(
            scope,
            np.array([-1, k], np.int64),
            namer.fresh(f"{a.name or 'matmul'}_2d_shape"),
            before=group[0].matmul,
        )
        flat = ir.Node("", "Reshape", [source, target], num_outputs=1)
        flat.outputs[0].name = namer.fresh(f"{a.name or 'matmul'}_2d")
        scope.insert_before(group[0].matmul, flat)
        for candidate in group:
            count += _convert_batched(scope, namer, candidate, flat.outputs[0])
        if merges_pre:
            remove_dead(scope, [inner])  # type: ignore[list-item]
    return count


def _convert_batched(scope: Scope, namer: Namer, cand: _Batched, flat: ir.Value) -> int:
    if cand.c.ndim > 1:
        set_constant(cand.bias, cand.c.reshape(-1))
    gemm = new_node("Gemm", [flat, cand.matmul.inputs[1], cand.bias], name=cand.matmul.name or None)
    gemm.outputs[0].name = namer.fresh(f"{cand.add.outputs[0].name or 'gemm'}_2d")
    scope.insert_before(cand.add, gemm)
    out = cand.add.outputs[0]
    if cand.consumer is not None:
        cand.consumer.replace_input_with(0, gemm.outputs[0])
    else:
        assert cand.out_shape is not None
        shape = add_constant(
            scope,
            np.array(cand.out_shape, np.int64),
            namer.fresh(f"{out.name or 'gemm'}_shape"),
            before=cand.add,
        )
        back = ir.Node("", "Reshape", [gemm.outputs[0], shape], num_outputs=1)
        scope.insert_before(cand.add, back)
        back.outputs[0].shape, back.outputs[0].type = out.shape, out.type
        if not can_replace(
            out, back.outputs[0], scope
        ):  # returned by a graph and not renamable: keep the Add
            raise AssertionError("unreachable: the Reshape is in this scope")
        replace_value(out, back.outputs[0])
    scope.remove(cand.add, safe=True)
    remove_dead(scope, [cand.matmul])
    return 1
