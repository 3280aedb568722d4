"""Fold what follows or precedes a convolution into its weights and pads.

Numbered cases (the code refers back to them):

1. BatchNormalization(Conv(x, W, B)) -> Conv(x, W', B'), likewise ConvTranspose.
   With s = gamma / sqrt(var + eps) per output channel:
   W' = W * s (along the output-channel axis), B' = (B - mean) * s + beta.
2. Conv(x, W, B) op c, where c is a constant that varies at most along the channel
   axis of the output (shape [C,1,1], [1,C,1,1], [C] for a 1-D conv, a scalar...):
   Mul: W' = W * c, B' = B * c;  Div: W' = W / c, B' = B / c;
   Add: B' = B + c;  Sub (conv - c): B' = B - c.
   Chains (the Sub/Mul/Add form of an unfused BatchNorm) fold one node at a time.
3. Conv(x * c) with c per input channel (or scalar): W'[o, i] = W[o, i] * c[i].
   Conv(x + c) with c per input channel and no padding: B' = B + sum_{i,k} W[o,i,k] c[i]
   (padding would see 0, not c, at the border, so padded convs are left alone).
4. Conv(Pad(x)) -> Conv(x, pads=conv pads + pad amounts) when the Pad is constant
   mode, value 0, spatial axes only, non-negative. Pooling takes it too:
   AveragePool with count_include_pad=1 (or no pads of its own, then it becomes 1),
   MaxPool when the pad value is -inf, or when the Pad is edge mode narrower than the
   kernel (dilation 1): every window reaching into the padding then also holds the
   border element the padding repeats, so its maximum is unchanged. ceil_mode must
   be 0: with it, the output size depends on where the padding sits.

Arithmetic is done in float64 and stored in the weight's dtype, so the fused
weights are within float rounding of the original computation. Every case needs
the weights to be owned by the fused node (see fuse_common, rule 2) and the
intermediate value to be read by the next node only.
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
    owned_constant,
    remove_dead,
    replace_value,
    set_constant,
    sole_user,
)

_CONVS = ("Conv", "ConvTranspose")


# --------------------------------------------------------------------------- shared


def _out_channels(conv: ir.Node, weight: np.ndarray) -> int:
    if conv.op_type == "Conv":
        return int(weight.shape[0])
    group = conv.attributes.get_int("group", 1)
    return int(weight.shape[1]) * group


def _scale_out_channels(conv: ir.Node, weight: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """W * scale[o] along the output-channel axis (Conv: axis 0, ConvTranspose: grouped axis 1)."""
    if conv.op_type == "Conv":
        return weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
    group = conv.attributes.get_int("group", 1)
    cin, cout_g = weight.shape[0], weight.shape[1]
    w = weight.reshape((group, cin // group, cout_g) + weight.shape[2:])
    s = scale.reshape((group, 1, cout_g) + (1,) * (weight.ndim - 2))
    return (w * s).reshape(weight.shape)


class _ConvWeights:
    """The weight and bias of a conv, checked to be constants only the conv reads."""

    def __init__(self, conv: ir.Node):
        self.conv = conv
        self.weight = weight = owned_constant(conv, 1)
        has_bias = len(conv.inputs) > 2 and conv.inputs[2] is not None
        self.bias = owned_constant(conv, 2) if has_bias else None
        self.ok = (
            self.weight is not None
            and self.weight.dtype.kind == "f"
            and self.weight.ndim >= 3
            and (not has_bias or self.bias is not None)
        )
        if weight is not None and self.ok and conv.op_type == "ConvTranspose":
            group = conv.attributes.get_int("group", 1)
            self.ok = group > 0 and weight.shape[0] % group == 0
        self.channels = _out_channels(conv, weight) if weight is not None and self.ok else 0
        if self.ok and self.bias is not None:
            self.ok = self.bias.shape == (self.channels,)

    @property
    def dtype(self) -> np.dtype:
        """The weight's dtype (asked only when `ok`, so there is a weight)."""
        assert self.weight is not None
        return self.weight.dtype

    def current_bias(self) -> np.ndarray:
        assert self.weight is not None
        return (
            self.bias if self.bias is not None else np.zeros(self.channels, dtype=self.weight.dtype)
        ).astype(np.float64)

    def store(
        self, scope: Scope, namer: Namer, weight: np.ndarray | None, bias: np.ndarray
    ) -> None:
        assert self.weight is not None
        dtype = self.weight.dtype
        weight_value, bias_value = self.conv.inputs[1], _input(self.conv, 2)
        if weight is not None:
            assert weight_value is not None  # owned_constant read the weight there
            set_constant(weight_value, weight.astype(dtype))
        if self.bias is not None:
            assert bias_value is not None  # and the bias
            set_constant(bias_value, bias.astype(dtype))
        else:
            name = namer.fresh(f"{self.conv.name or self.conv.op_type}_bias")
            value = add_constant(scope, bias.astype(dtype), name, before=self.conv)
            if len(self.conv.inputs) < 3:
                self.conv.resize_inputs(3)
            self.conv.replace_input_with(2, value)


def _per_channel(array: np.ndarray, rank: int, channels: int, axis: int = 1) -> np.ndarray | None:
    """`array` as a [channels] vector if, broadcast against a rank-`rank` tensor, it varies
    at most along `axis` and does not grow the tensor; None otherwise."""
    if array.ndim > rank or array.dtype.kind != "f":
        return None
    shape = (1,) * (rank - array.ndim) + array.shape
    if any(d != 1 for i, d in enumerate(shape) if i != axis) or shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(array.reshape(-1).astype(np.float64), (channels,)).copy()


def _bypass(scope: Scope, node: ir.Node, replacement: ir.Value) -> bool:
    """Drop `node` (one output), its users reading `replacement` instead."""
    if not can_replace(node.outputs[0], replacement, scope):
        return False
    feeders = [v.producer() for v in node.inputs if v is not None and v is not replacement]
    replace_value(node.outputs[0], replacement)
    scope.remove(node, safe=True)
    remove_dead(scope, [f for f in feeders if f is not None])
    return True


# --------------------------------------------------------------------------- case 1


def fuse_conv_batchnorm(scope: Scope, namer: Namer) -> int:
    count = 0
    for bn in list(scope):
        if not in_scope(bn, scope) or not is_op(bn, "BatchNormalization") or len(bn.inputs) < 5:
            continue
        if (
            bn.attributes.get_int("training_mode", 0)
            or bn.attributes.get_int("spatial", 1) != 1
            or any(o.uses() or o.is_graph_output() for o in bn.outputs[1:])
        ):
            continue
        conv = bn.inputs[0].producer() if bn.inputs[0] is not None else None
        if not is_op(conv, *_CONVS) or not is_internal(conv.outputs[0], bn):
            continue
        params = [const_array(v) for v in bn.inputs[1:5]]
        if any(p is None or p.dtype.kind != "f" for p in params):
            continue
        weights = _ConvWeights(conv)
        if not weights.ok or any(p.size != weights.channels for p in params):  # type: ignore[union-attr]
            continue
        gamma, beta, mean, var = (p.reshape(-1).astype(np.float64) for p in params)  # type: ignore[union-attr]
        eps = bn.attributes.get_float("epsilon", 1e-5)
        scale = gamma / np.sqrt(var + eps)
        if not can_replace(bn.outputs[0], conv.outputs[0], scope):
            continue
        new_weight = _scale_out_channels(conv, weights.weight.astype(np.float64), scale)  # type: ignore[union-attr]
        weights.store(scope, namer, new_weight, (weights.current_bias() - mean) * scale + beta)
        _bypass(scope, bn, conv.outputs[0])
        count += 1
    return count


# --------------------------------------------------------------------------- case 2


def fuse_conv_affine(scope: Scope, namer: Namer) -> int:
    count = 0
    for node in list(scope):
        if (
            not in_scope(node, scope)
            or not is_op(node, "Mul", "Div", "Add", "Sub")
            or len(node.inputs) != 2
        ):
            continue
        for conv_side in (0, 1):
            if conv_side == 1 and node.op_type in ("Div", "Sub"):
                break
            side = node.inputs[conv_side]
            conv = side.producer() if side is not None else None
            if not is_op(conv, *_CONVS) or not is_internal(conv.outputs[0], node):
                continue
            if _fold_affine(scope, namer, conv, node, node.inputs[1 - conv_side]):
                count += 1
                break
    count += _fuse_input_affine(scope, namer)
    return count


def _fold_affine(
    scope: Scope, namer: Namer, conv: ir.Node, node: ir.Node, operand: ir.Value | None
) -> bool:
    array = const_array(operand)
    weights = _ConvWeights(conv)
    if array is None or not weights.ok:
        return False
    c = _per_channel(array, weights.weight.ndim, weights.channels)  # type: ignore[union-attr]
    if c is None or (node.op_type == "Div" and not np.all(c != 0)):
        return False
    if not can_replace(node.outputs[0], conv.outputs[0], scope):
        return False
    weight = weights.weight.astype(np.float64)  # type: ignore[union-attr]
    bias = weights.current_bias()
    if node.op_type in ("Mul", "Div"):
        factor = c if node.op_type == "Mul" else 1.0 / c
        scaled = _scale_out_channels(conv, weight, factor)
        new_weight: np.ndarray | None = scaled
        bias = bias * factor
        if weights.bias is None:  # a zero bias stays zero: do not add one
            set_constant(_weight_value(conv), scaled.astype(weights.dtype))
            return _bypass(scope, node, conv.outputs[0])
    else:
        new_weight = None
        bias = bias + c if node.op_type == "Add" else bias - c
    weights.store(scope, namer, new_weight, bias)
    return _bypass(scope, node, conv.outputs[0])


# --------------------------------------------------------------------------- case 3


def _fuse_input_affine(scope: Scope, namer: Namer) -> int:
    count = 0
    for conv in list(scope):
        if not in_scope(conv, scope) or not is_op(conv, "Conv") or conv.inputs[0] is None:
            continue
        pre = conv.inputs[0].producer()
        if (
            not is_op(pre, "Mul", "Add")
            or len(pre.inputs) != 2
            or not is_internal(pre.outputs[0], conv)
        ):
            continue
        weights = _ConvWeights(conv)
        if not weights.ok:
            continue
        group = conv.attributes.get_int("group", 1)
        cin = weights.weight.shape[1] * group  # type: ignore[union-attr]
        for side in (0, 1):
            c_array = const_array(pre.inputs[1 - side])
            x = pre.inputs[side]
            if c_array is None or x is None or const_array(x) is not None:
                continue
            c = _per_channel(c_array, weights.weight.ndim, cin)  # type: ignore[union-attr]
            if c is None:
                continue
            # x must already have all cin channels: a [N,1,H,W] x would be broadcast by the op.
            x_channels = x.shape[1] if x.shape is not None and len(x.shape) > 1 else None
            if c_array.size != 1 and x_channels != cin:
                continue
            weight = weights.weight.astype(np.float64)  # type: ignore[union-attr]
            cout = weight.shape[0]
            # Input channel of W[o, i]: (o // (cout // group)) * cin_g + i.
            cin_g = weight.shape[1]
            channel = (np.arange(cout)[:, None] // (cout // group)) * cin_g + np.arange(cin_g)[
                None, :
            ]
            per_weight = c[channel].reshape((cout, cin_g) + (1,) * (weight.ndim - 2))
            if pre.op_type == "Mul":
                set_constant(_weight_value(conv), (weight * per_weight).astype(weights.dtype))
            else:
                if not _unpadded(conv):
                    continue
                shift = (weight * per_weight).reshape(cout, -1).sum(axis=1)
                weights.store(scope, namer, None, weights.current_bias() + shift)
            conv.replace_input_with(0, x)
            scope.remove(pre, safe=True)
            remove_dead(
                scope,
                [p for v in pre.inputs if v is not None and (p := v.producer()) is not None],
            )
            count += 1
            break
    return count


def _unpadded(conv: ir.Node) -> bool:
    auto_pad = conv.attributes.get_string("auto_pad", "NOTSET")
    if auto_pad == "VALID":
        return True
    if auto_pad != "NOTSET":
        return False
    return all(p == 0 for p in conv.attributes.get_ints("pads", []) or [])


# --------------------------------------------------------------------------- case 4


def fuse_pad(scope: Scope, namer: Namer) -> int:
    del namer
    count = 0
    for pad in list(scope):
        if not in_scope(pad, scope) or not is_op(pad, "Pad") or pad.inputs[0] is None:
            continue
        spec = _pad_spec(pad)
        if spec is None:
            continue
        amounts, value = spec
        out = pad.outputs[0]
        users = [use.node for use in out.uses()]
        if not users or out.is_graph_output() or any(use.idx != 0 for use in out.uses()):
            continue
        updates = [_pad_target(user, amounts, value) for user in users]
        if any(u is None for u in updates):
            continue
        for user, attrs in zip(users, updates, strict=False):
            for attr in attrs:  # type: ignore[union-attr]
                user.attributes[attr.name] = attr
            user.replace_input_with(0, pad.inputs[0])
        feeders = [p for v in pad.inputs[1:] if v is not None and (p := v.producer()) is not None]
        scope.remove(pad, safe=True)
        remove_dead(scope, feeders)
        count += 1
    return count


def _pad_spec(pad: ir.Node) -> tuple[list[int], float | str] | None:
    """(pads in [begin..., end...] form over every axis, pad value or "edge") of a Pad."""
    mode = pad.attributes.get_string("mode", "constant")
    if mode not in ("constant", "edge"):
        return None
    x = pad.inputs[0]
    rank = len(x.shape) if x is not None and x.shape is not None else None
    if len(pad.inputs) > 1:  # opset >= 11: pads, constant_value, axes are inputs
        pads = int_list(pad.inputs[1])
        value = 0.0
        if len(pad.inputs) > 2 and pad.inputs[2] is not None:
            array = const_array(pad.inputs[2])
            if array is None or array.size != 1:
                return None
            value = float(array.reshape(()))
        axes = None
        if len(pad.inputs) > 3 and pad.inputs[3] is not None:
            axes = int_list(pad.inputs[3])
            if axes is None:
                return None
    else:
        pads = list(pad.attributes.get_ints("pads", []) or []) or None
        value = pad.attributes.get_float("value", 0.0)
        axes = None
    if pads is None or len(pads) % 2:
        return None
    if mode == "edge":
        value = "edge"  # type: ignore[assignment]
    if axes is None:
        return pads, value
    if rank is None:
        return None
    full = [0] * (2 * rank)
    for i, axis in enumerate(axes):
        axis = axis + rank if axis < 0 else axis
        full[axis], full[axis + rank] = pads[i], pads[i + len(axes)]
    return full, value


def _pad_target(node: ir.Node, amounts: list[int], value: float | str) -> list[ir.Attr] | None:
    """The attributes `node` needs to absorb the padding, or None when it cannot."""
    if not is_op(node, "Conv", "AveragePool", "MaxPool") or any(a < 0 for a in amounts):
        return None
    rank = len(amounts) // 2
    if rank < 3 or amounts[0] or amounts[1] or amounts[rank] or amounts[rank + 1]:
        return None
    spatial = amounts[2:rank] + amounts[rank + 2 :]
    auto_pad = node.attributes.get_string("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID"):
        return None
    own = list(node.attributes.get_ints("pads", []) or []) if auto_pad == "NOTSET" else []
    own = own or [0] * len(spatial)
    if len(own) != len(spatial):
        return None
    attrs = [
        ir.AttrInt64s("pads", [a + b for a, b in zip(own, spatial, strict=False)]),
        ir.AttrString("auto_pad", "NOTSET"),
    ]
    if node.op_type == "Conv":
        return attrs if value == 0.0 else None
    if node.attributes.get_int("ceil_mode", 0):
        return None
    if node.op_type == "MaxPool":
        if len(node.outputs) != 1:
            return None
        if value == float("-inf"):
            return attrs
        # Edge padding repeats the border element, which every window that reaches into
        # the padding also contains when the padding is narrower than the (undilated) kernel.
        kernel = list(node.attributes.get_ints("kernel_shape", []) or [])
        dilations = list(node.attributes.get_ints("dilations", []) or []) or [1] * len(kernel)
        rank = len(spatial) // 2
        if (
            value == "edge"
            and len(kernel) == rank
            and all(d == 1 for d in dilations)
            and not any(own)
            and all(spatial[i] < kernel[i] and spatial[i + rank] < kernel[i] for i in range(rank))
        ):
            return attrs
        return None
    if value != 0.0:
        return None
    if node.attributes.get_int("count_include_pad", 0):
        return attrs
    if any(own):  # its own pads are excluded from the average, the Pad's were not
        return None
    return attrs + [ir.AttrInt64("count_include_pad", 1)]


__all__ = ["fuse_conv_affine", "fuse_conv_batchnorm", "fuse_pad", "sole_user"]


def _input(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if index < len(node.inputs) else None


def _weight_value(conv: ir.Node) -> ir.Value:
    """The weight input of a conv whose weight `_ConvWeights` found constant."""
    value = conv.inputs[1]
    assert value is not None
    return value
