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

No weight is modified (B and C are used as they are), so a weight shared with other
nodes stays shared: nothing is copied.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxslim.passes.fuse_common import (
    Namer,
    Scope,
    can_replace,
    const_array,
    in_scope,
    is_internal,
    is_op,
    new_node,
    rank_of,
    remove_dead,
    replace_value,
)

_GEMM_TYPES = {ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16, ir.DataType.BFLOAT16}


def fuse_matmul_add(scope: Scope, namer: Namer) -> int:
    del namer
    count = 0
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
    if is_op(node, "Transpose") and is_internal(value, matmul) and node.inputs[0] is not None:  # type: ignore[union-attr]
        perm = node.attributes.get_ints("perm", None)  # type: ignore[union-attr]
        if (perm is not None and list(perm) == [1, 0]) or (perm is None and rank_of(node.inputs[0]) == 2):  # type: ignore[union-attr]
            return node.inputs[0], 1, node  # type: ignore[union-attr, return-value]
    return value, 0, None


def _matmul_to_gemm(scope: Scope, matmul: ir.Node, add: ir.Node, bias: ir.Value, c: np.ndarray) -> bool:
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


def _gemm_take_bias(scope: Scope, gemm: ir.Node, add: ir.Node, bias: ir.Value, c: np.ndarray) -> bool:
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
