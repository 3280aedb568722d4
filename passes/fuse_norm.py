"""Written-out GELU and LayerNorm subgraphs -> the single ONNX op.

Exporters and hand-written modules spell these in many orders (x * 0.5 * (...),
0.5 * (x * (...)), Div by sqrt(2) or Mul by 1/sqrt(2), Pow(x, 3) or x * x * x,
scale before or after the division...). Instead of one pattern per spelling, the
matcher reads a subgraph of Mul / Div / Pow / Sqrt / Reciprocal / Add / Sub nodes as
algebra: a product `coef * x^p * y^q ...` (`_Product`) or a polynomial in x
(`_polynomial`), and compares that with the formula.

1. GELU, erf form: 0.5 * x * (1 + erf(x / sqrt(2)))  -> Gelu(x)                  (opset >= 20)
2. GELU, tanh form: 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))
                                                    -> Gelu(x, approximate="tanh") (opset >= 20)
   With `contrib`, models below opset 20 get com.microsoft Gelu / FastGelu instead
   (onnxruntime-only ops: off by default, mobile builds may lack them).
3. LayerNorm: mean = ReduceMean(x, trailing axes); d = x - mean;
   var = ReduceMean(d^2); y = scale * d / sqrt(var + eps) + bias
                                                    -> LayerNormalization(x, scale, bias,
                                                       axis, epsilon)          (opset >= 17)

Constants are compared with a relative tolerance of 1e-5 (exporters print
sqrt(2/pi) with 7-10 digits). Every node of a match other than its last must be read
only inside the match; x itself may have other readers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from onnxslim.passes.fuse_common import (
    Namer,
    Scope,
    add_constant,
    can_replace,
    close,
    const_array,
    in_scope,
    int_list,
    is_op,
    new_node,
    remove_dead,
    replace_value,
    scalar,
    sole_user,
    static_shape,
)

_FLOATS = {ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16, ir.DataType.BFLOAT16}
_MAX_DEPTH = 12


# --------------------------------------------------------------------------- algebra


@dataclass
class _Product:
    """coef * prod(var ** power), with the nodes it was read from."""

    coef: np.ndarray
    powers: dict[int, float] = field(default_factory=dict)
    nodes: list[ir.Node] = field(default_factory=list)

    def times(self, other: _Product, sign: float = 1.0) -> _Product:
        powers = dict(self.powers)
        for key, p in other.powers.items():
            powers[key] = powers.get(key, 0.0) + sign * p
        coef = self.coef * (other.coef if sign > 0 else 1.0 / other.coef)
        return _Product(coef, {k: v for k, v in powers.items() if v != 0}, self.nodes + other.nodes)

    def power(self, exponent: float) -> _Product:
        return _Product(
            self.coef**exponent, {k: v * exponent for k, v in self.powers.items()}, list(self.nodes)
        )


def _product(
    value: ir.Value | None, variables: dict[int, ir.Value], depth: int = 0
) -> _Product | None:
    """Read `value` as coef * prod(variables ** p) through Mul/Div/Pow/Sqrt/Reciprocal nodes."""
    if value is None or depth > _MAX_DEPTH:
        return None
    for key, var in variables.items():
        if value is var:
            return _Product(np.array(1.0), {key: 1.0})
    array = const_array(value)
    if array is not None:
        if array.dtype.kind != "f" and array.dtype.kind not in "iu":
            return None
        return _Product(array.astype(np.float64))
    node = value.producer()
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type in ("Mul", "Div") and len(node.inputs) == 2:
        left = _product(node.inputs[0], variables, depth + 1)
        right = _product(node.inputs[1], variables, depth + 1) if left is not None else None
        if left is None or right is None:
            return None
        if node.op_type == "Div" and np.any(right.coef == 0):
            return None
        result = left.times(right, 1.0 if node.op_type == "Mul" else -1.0)
    elif node.op_type == "Pow" and len(node.inputs) == 2:
        exponent = scalar(node.inputs[1])
        base = _product(node.inputs[0], variables, depth + 1)
        if exponent is None or base is None:
            return None
        result = base.power(exponent)
    elif node.op_type in ("Sqrt", "Reciprocal"):
        base = _product(node.inputs[0], variables, depth + 1)
        if base is None:
            return None
        result = base.power(0.5 if node.op_type == "Sqrt" else -1.0)
    else:
        return None
    result.nodes.append(node)
    return result


def _polynomial(
    value: ir.Value | None, x: ir.Value, depth: int = 0
) -> tuple[dict[float, float], list[ir.Node]] | None:
    """Read `value` as sum(coef * x^power) through Add/Sub/Mul/Div-by-constant/Pow nodes."""
    if value is None or depth > _MAX_DEPTH:
        return None
    if value is x:
        return {1.0: 1.0}, []
    c = scalar(value)
    if c is not None:
        return {0.0: c}, []
    if const_array(value) is not None:
        return None
    node = value.producer()
    if not is_op(node, "Add", "Sub", "Mul", "Div", "Pow") or len(node.inputs) != 2:
        return None
    op = node.op_type
    left = _polynomial(node.inputs[0], x, depth + 1)
    if left is None:
        return None
    if op == "Pow":
        exponent = scalar(node.inputs[1])
        if exponent is None or exponent != int(exponent) or not 1 <= exponent <= 4:
            return None
        terms = {0.0: 1.0}
        for _ in range(int(exponent)):
            terms = _multiply(terms, left[0])
        return terms, left[1] + [node]
    right = _polynomial(node.inputs[1], x, depth + 1)
    if right is None:
        return None
    nodes = left[1] + right[1] + [node]
    if op in ("Add", "Sub"):
        terms = dict(left[0])
        sign = 1.0 if op == "Add" else -1.0
        for power, coef in right[0].items():
            terms[power] = terms.get(power, 0.0) + sign * coef
        return terms, nodes
    if op == "Mul":
        return _multiply(left[0], right[0]), nodes
    if set(right[0]) != {0.0} or right[0][0.0] == 0:  # Div: only by a constant
        return None
    return {p: c / right[0][0.0] for p, c in left[0].items()}, nodes


def _multiply(a: dict[float, float], b: dict[float, float]) -> dict[float, float]:
    out: dict[float, float] = {}
    for pa, ca in a.items():
        for pb, cb in b.items():
            out[pa + pb] = out.get(pa + pb, 0.0) + ca * cb
    return out


def _contained(nodes: list[ir.Node], root: ir.Node, scope: Scope) -> bool:
    """Every node but `root` is read only by nodes of the match and returned by no graph."""
    members = set(map(id, nodes))
    for node in nodes:
        if not in_scope(node, scope):
            return False
        if node is root:
            continue
        for out in node.outputs:
            if out.is_graph_output() or any(id(use.node) not in members for use in out.uses()):
                return False
    return True


def _replace_root(scope: Scope, root: ir.Node, fused: ir.Node, nodes: list[ir.Node]) -> bool:
    scope.insert_before(root, fused)
    fused.outputs[0].shape = root.outputs[0].shape
    fused.outputs[0].type = root.outputs[0].type
    if not can_replace(root.outputs[0], fused.outputs[0], scope):
        scope.remove(fused, safe=True)
        return False
    replace_value(root.outputs[0], fused.outputs[0])
    remove_dead(scope, nodes)
    return True


# --------------------------------------------------------------------------- GELU

_SQRT_HALF = 1.0 / math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def fuse_gelu(scope: Scope, namer: Namer, *, domain: str) -> int:
    """Cases 1 and 2; `domain` "" emits the ONNX op, "com.microsoft" the contrib ops."""
    del namer
    count = 0
    for node in list(scope):
        if not in_scope(node, scope) or not is_op(node, "Erf", "Tanh") or node.inputs[0] is None:
            continue
        match = _gelu_at(node)
        if match is None:
            continue
        x, root, nodes, approximate = match
        if not _contained(nodes, root, scope):
            continue
        if domain == "":
            attrs = [ir.AttrString("approximate", "tanh")] if approximate else []
            fused = new_node("Gelu", [x], attrs, name=root.name or None)
        else:
            fused = new_node(
                "FastGelu" if approximate else "Gelu", [x], name=root.name or None, domain=domain
            )
        if _replace_root(scope, root, fused, nodes):
            count += 1
    return count


def _gelu_at(inner: ir.Node) -> tuple[ir.Value, ir.Node, list[ir.Node], bool] | None:
    """The GELU around an Erf or Tanh node: (x, last node, all nodes, tanh form?)."""
    argument = inner.inputs[0]
    tanh = inner.op_type == "Tanh"
    for x in _candidates(argument, tanh):
        if x.dtype is not None and x.dtype not in _FLOATS:
            continue
        poly = _polynomial(argument, x)
        if poly is None:
            continue
        terms, arg_nodes = poly
        if tanh:
            ok = (
                set(terms) == {1.0, 3.0}
                and close(terms[1.0], _SQRT_2_OVER_PI)
                and close(terms[3.0], _SQRT_2_OVER_PI * 0.044715)
            )
        else:
            ok = set(terms) == {1.0} and close(terms[1.0], _SQRT_HALF)
        if not ok:
            continue
        one_plus = sole_user(inner.outputs[0])
        if not is_op(one_plus, "Add") or len(one_plus.inputs) != 2:
            continue
        other = one_plus.inputs[1] if one_plus.inputs[0] is inner.outputs[0] else one_plus.inputs[0]
        if not close(scalar(other), 1.0):
            continue
        # Climb through the Mul/Div chain above (1 + erf) until it reads 0.5 * x * (1 + erf).
        value = one_plus.outputs[0]
        for _ in range(4):
            user = sole_user(value)
            if not is_op(user, "Mul", "Div"):
                break
            value = user.outputs[0]
            found = _product(value, {0: x, 1: one_plus.outputs[0]})
            if found is None or found.coef.size != 1:
                break
            if found.powers == {0: 1.0, 1: 1.0} and close(float(found.coef.reshape(())), 0.5):
                nodes = arg_nodes + [inner, one_plus] + found.nodes
                return x, user, _unique(nodes), tanh
    return None


def _candidates(argument: ir.Value | None, tanh: bool) -> list[ir.Value]:
    """Values that could be the GELU input x, read off the inner argument's subgraph:
    the non-constant side of x / sqrt(2) (erf), the base of x^3 or x * x (tanh)."""
    node = argument.producer() if argument is not None else None
    if not tanh:
        if is_op(node, "Mul", "Div"):
            return [v for v in node.inputs if v is not None and const_array(v) is None]
        return []
    found: list[ir.Value] = []
    stack = [(argument, 0)]
    while stack:
        value, depth = stack.pop()
        node = value.producer() if value is not None else None
        if depth > 8 or not is_op(node, "Mul", "Div", "Add", "Sub", "Pow") or len(node.inputs) != 2:
            continue
        a, b = node.inputs
        if (
            (node.op_type == "Pow" or (node.op_type == "Mul" and a is b))
            and a is not None
            and a not in found
        ):
            found.append(a)
        stack.extend((v, depth + 1) for v in (a, b) if v is not None and const_array(v) is None)
    return found


def _unique(nodes: list[ir.Node]) -> list[ir.Node]:
    seen: set[int] = set()
    return [n for n in nodes if not (id(n) in seen or seen.add(id(n)))]  # type: ignore[func-returns-value]


# --------------------------------------------------------------------------- LayerNorm


def fuse_layernorm(scope: Scope, namer: Namer) -> int:
    count = 0
    for node in list(scope):
        if not in_scope(node, scope) or not is_op(node, "ReduceMean") or node.inputs[0] is None:
            continue
        match = _layernorm_at(node)
        if match is None:
            continue
        x, root, nodes, axis, eps, scale, bias = match
        if not _contained(nodes, root, scope):
            continue
        dtype = x.dtype.numpy() if x.dtype is not None else np.dtype(np.float32)
        base = namer.fresh(f"{root.name or 'layernorm'}")
        inputs = [
            x,
            _reuse(nodes, scale, dtype)
            or add_constant(scope, scale.astype(dtype), f"{base}_scale", before=root),
        ]
        if bias is not None:
            inputs.append(
                _reuse(nodes, bias, dtype)
                or add_constant(scope, bias.astype(dtype), f"{base}_bias", before=root)
            )
        attrs = [ir.AttrInt64("axis", axis), ir.AttrFloat32("epsilon", eps)]
        fused = new_node("LayerNormalization", inputs, attrs, name=root.name or None)
        if _replace_root(scope, root, fused, nodes):
            count += 1
        else:
            remove_dead(scope, [v.producer() for v in inputs[1:] if v.producer() is not None])
    return count


def _reuse(nodes: list[ir.Node], array: np.ndarray, dtype: np.dtype) -> ir.Value | None:
    """A constant the match already reads that holds exactly `array` (a shared gamma stays
    shared instead of being copied once per LayerNorm)."""
    wanted = array.astype(dtype)
    for node in nodes:
        for value in node.inputs:
            found = const_array(value)
            if (
                found is not None
                and found.dtype == wanted.dtype
                and found.shape == wanted.shape
                and np.array_equal(found, wanted)
            ):
                return value
    return None


def _reduce_axes(node: ir.Node) -> list[int] | None:
    if node.attributes.get_int("keepdims", 1) != 1:
        return None
    if "axes" in node.attributes:
        return list(node.attributes.get_ints("axes", []) or [])
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        return int_list(node.inputs[1])
    return None


def _trailing_axis(axes: list[int], rank: int | None) -> int | None:
    """The first normalized axis when `axes` are the last len(axes) axes (negative form)."""
    if not axes:
        return None
    if rank is not None:
        axes = [a - rank if a >= 0 else a for a in axes]
    if sorted(axes) != list(range(-len(axes), 0)):
        return None
    return -len(axes)


def _layernorm_at(mean_node: ir.Node):  # type: ignore[no-untyped-def]
    x = mean_node.inputs[0]
    if x is None or x.dtype not in _FLOATS:  # the scale and bias are made in x's dtype
        return None
    axes = _reduce_axes(mean_node)
    rank = len(x.shape) if x.shape is not None else None
    axis = None if axes is None else _trailing_axis(axes, rank)
    if axis is None:
        return None
    mean = mean_node.outputs[0]
    # Every reader of the mean computes d = x - mean.
    centered = [use.node for use in mean.uses()]
    if (
        not centered
        or mean.is_graph_output()
        or any(
            not is_op(n, "Sub") or n.inputs[0] is not x or n.inputs[1] is not mean for n in centered
        )
    ):
        return None
    d_values = [n.outputs[0] for n in centered]
    for search in d_values:
        for use in search.uses():
            square = use.node
            sq = _product(square.outputs[0], {0: search}) if is_op(square, "Mul", "Pow") else None
            if (
                sq is None
                or sq.powers != {0: 2.0}
                or sq.coef.size != 1
                or float(sq.coef.reshape(())) != 1.0
            ):
                continue
            var_node = sole_user(square.outputs[0])
            if not is_op(var_node, "ReduceMean") or _reduce_axes(var_node) is None:
                continue
            if _trailing_axis(_reduce_axes(var_node), rank) != axis:  # type: ignore[arg-type]
                continue
            add_eps = sole_user(var_node.outputs[0])
            if not is_op(add_eps, "Add") or len(add_eps.inputs) != 2:
                continue
            eps_value = (
                add_eps.inputs[1] if add_eps.inputs[0] is var_node.outputs[0] else add_eps.inputs[0]
            )
            eps = scalar(eps_value)
            if eps is None or eps < 0:
                continue
            found = _normalized_root(d_values, add_eps.outputs[0])
            if found is None:
                continue
            root, product, tail = found
            nodes = _unique(
                [mean_node, *centered, square, var_node, add_eps, *product.nodes, *tail]
            )
            scale_bias = _scale_and_bias(product.coef, tail, x, axis)
            if scale_bias is None:
                continue
            scale, bias = scale_bias
            return x, root, nodes, axis, eps, scale, bias
    return None


def _normalized_root(d_values: list[ir.Value], var_eps: ir.Value):  # type: ignore[no-untyped-def]
    """Climb from a centered value d to the highest node reading coef * d / sqrt(var + eps)."""
    for d in d_values:
        for use in d.uses():
            value, best = use.node.outputs[0], None
            for _ in range(5):
                variables = {i: v for i, v in enumerate(d_values)}
                variables[len(d_values)] = var_eps
                product = _product(value, variables)
                if product is not None:
                    d_power = sum(p for k, p in product.powers.items() if k < len(d_values))
                    if (
                        d_power == 1.0
                        and product.powers.get(len(d_values)) == -0.5
                        and len(product.powers) == 2
                    ):
                        producer = value.producer()
                        best = (producer, product) if producer is not None else best
                user = sole_user(value)
                if not is_op(user, "Mul", "Div", "Sqrt", "Reciprocal"):
                    break
                value = user.outputs[0]
            if best is None:
                continue
            root, product = best
            tail: list[ir.Node] = []
            add = sole_user(root.outputs[0])
            if is_op(add, "Add") and len(add.inputs) == 2:
                tail = [add]
                root = add
            return root, product, tail
    return None


def _scale_and_bias(
    coef: np.ndarray, tail: list[ir.Node], x: ir.Value, axis: int
) -> tuple[np.ndarray, np.ndarray | None] | None:
    """Scale and bias as arrays of the normalized shape, or None if they vary elsewhere."""
    k = -axis
    shape = static_shape(x)
    normalized = shape[-k:] if shape is not None else None
    bias = None
    if tail:
        add = tail[0]
        operand = [v for v in add.inputs if v is not None and const_array(v) is not None]
        if len(operand) != 1:
            return None
        bias = const_array(operand[0]).astype(np.float64)  # type: ignore[union-attr]
    arrays = [a for a in (coef, bias) if a is not None]
    if normalized is None:
        # Take the normalized dims from the constants when they spell them out.
        full = [a for a in arrays if a.ndim >= k and all(d > 1 for d in a.shape[-k:])]
        if not full:
            return None
        normalized = tuple(full[0].shape[-k:])
    out: list[np.ndarray | None] = []
    for array in (coef, bias):
        if array is None:
            out.append(None)
            continue
        if array.ndim > (len(shape) if shape is not None else k) and any(
            d != 1 for d in array.shape[:-k]
        ):
            return None
        lead = array.shape[:-k] if array.ndim > k else ()
        if any(d != 1 for d in lead):
            return None
        tail_shape = array.shape[-k:] if array.ndim >= k else (1,) * (k - array.ndim) + array.shape
        if any(t not in (1, n) for t, n in zip(tail_shape, normalized, strict=False)):
            return None
        out.append(np.broadcast_to(array.reshape(tail_shape), normalized).copy())
    scale, shift = out
    assert scale is not None  # coef is an array
    return scale, shift
