"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization"): a float rewrite.

Why: a depthwise-separable block often has a few output channels whose weights are
100x larger than the rest, so one per-tensor scale (or one activation scale over
all channels) leaves most channels with a handful of int8 levels. For two layers
joined by a positively homogeneous activation f (f(x / s) = f(x) / s for s > 0),

    y = W2 · f(W1 x + b1)  ==  (W2 S) · f(S^-1 W1 x + S^-1 b1)

for any positive diagonal S over the channels between them. Choosing, per channel c,

    s_c = sqrt(r1_c / r2_c)      r1_c = max|W1[c, ...]|,  r2_c = max|W2[:, c, ...]|

makes both ranges equal to sqrt(r1_c * r2_c): the first layer's output channels and
the second layer's input channels get balanced ranges. Chains of three or more
layers are equalized pair by pair, repeated until the scales settle.

Supported pairs (rule cases, referred to in the code):
  (1) Conv -> [act] -> Conv, any `group` on either side (depthwise included);
  (2) Gemm -> [act] -> Gemm with constant B (transB honoured);
  [act] is nothing, Relu, LeakyRelu, or PRelu with a constant slope: all
  positively homogeneous. Clip/Relu6 and everything else are NOT (clip(x/s, 0, 6)
  != clip(x, 0, 6)/s), so such pairs are left alone and reported.
Refused, with a reason: a weight shared by another node, an intermediate tensor
with another consumer or that is a graph output, non-constant weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_ir as ir

from onnxslim.passes._options import option

_HOMOGENEOUS = {"Relu", "LeakyRelu", "PRelu"}
_NOT_HOMOGENEOUS = {
    "Clip",
    "Relu6",
    "HardSigmoid",
    "HardSwish",
    "Sigmoid",
    "Tanh",
    "Elu",
    "Selu",
    "Gelu",
    "Softplus",
    "Mish",
    "Swish",
}
_LAYERS = {"Conv", "Gemm"}


@dataclass
class LayerPair:
    """Two layers joined by a positively homogeneous activation (or nothing)."""

    first: ir.Node
    second: ir.Node
    activation: ir.Node | None

    @property
    def label(self) -> str:
        return (
            f"{self.first.name or self.first.op_type} -> {self.second.name or self.second.op_type}"
        )


@dataclass
class EqualizeReport:
    """Pairs equalized, pairs refused with a reason, and the range balance achieved."""

    equalized: list[str] = dataclasses.field(default_factory=list)
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    iterations: int = 0


def find_pairs(graph: ir.Graph) -> tuple[list[LayerPair], list[tuple[str, str]]]:
    """Equalizable pairs in `graph`, and refused candidate pairs with the reason."""
    pairs: list[LayerPair] = []
    skipped: list[tuple[str, str]] = []
    for node in graph:
        if node.op_type not in _LAYERS or node.domain not in ("", "ai.onnx"):
            continue
        found = _follow(node)
        if isinstance(found, str):
            if found:
                skipped.append((node.name or node.op_type, found))
            continue
        reason = _refusal(found)
        if reason:
            skipped.append((found.label, reason))
        else:
            pairs.append(found)
    return pairs, skipped


def equalize_graph(
    graph: ir.Graph, *, iterations: int = 20, tolerance: float = 1e-4
) -> EqualizeReport:
    """Equalize every supported pair of `graph` in place; returns what was done."""
    pairs, skipped = find_pairs(graph)
    report = EqualizeReport(skipped=skipped)
    if not pairs:
        return report
    arrays = _load_arrays(pairs)
    for report.iterations in range(1, iterations + 1):
        largest_change = 0.0
        for pair in pairs:
            scale = _pair_scale(pair, arrays)
            if scale is None:
                continue
            _apply_scale(pair, scale, arrays)
            largest_change = max(largest_change, float(np.max(np.abs(np.log(scale)))))
        if largest_change < tolerance:
            break
    _store_arrays(arrays)
    report.equalized = [p.label for p in pairs]
    return report


@dataclasses.dataclass(frozen=True, kw_only=True)
class CrossLayerEqualization(ir.passes.InPlacePass):
    """Balance per-channel weight ranges of Conv/Gemm pairs (outputs unchanged up to rounding)."""

    lossless: ClassVar[bool] = True
    iterations: int = option(
        20, "Maximum sweeps over chains of pairs (stops early when scales settle)."
    )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        report = equalize_graph(model.graph, iterations=self.iterations)
        model.graph.meta["onnxslim.equalize"] = report
        return ir.passes.PassResult(model, bool(report.equalized))


# --- pattern matching ---------------------------------------------------------------


def _single_consumer(value: ir.Value) -> ir.Node | None | str:
    """The only consumer of `value`, or a reason why there is not exactly one."""
    if value.is_graph_output():
        return "intermediate tensor is a graph output"
    users = {id(node): node for node, _ in value.uses()}
    if len(users) != 1 or len(list(value.uses())) != 1:
        return "intermediate tensor has several consumers" if users else ""
    return next(iter(users.values()))


def _follow(node: ir.Node) -> LayerPair | str:
    """The pair starting at `node`, or a reason ("" when nothing follows at all)."""
    if len(node.outputs) != 1:
        return ""
    nxt = _single_consumer(node.outputs[0])
    if not isinstance(nxt, ir.Node):
        return nxt or ""
    activation = None
    if nxt.op_type in _HOMOGENEOUS:
        activation = nxt
        nxt = _single_consumer(nxt.outputs[0])
        if not isinstance(nxt, ir.Node):
            return nxt or ""
    elif nxt.op_type in _NOT_HOMOGENEOUS:
        after = _single_consumer(nxt.outputs[0]) if nxt.outputs else None
        if isinstance(after, ir.Node) and after.op_type == node.op_type:
            return f"{nxt.op_type} between the layers is not positively homogeneous"
        return ""
    if nxt.op_type != node.op_type or nxt.domain not in ("", "ai.onnx"):
        return ""
    if nxt.inputs[0] is not (activation.outputs[0] if activation else node.outputs[0]):
        return "intermediate tensor is not the data input of the second layer"
    return LayerPair(node, nxt, activation)


def _refusal(pair: LayerPair) -> str:
    for layer in (pair.first, pair.second):
        weight = layer.inputs[1]
        if weight is None or weight.const_value is None:
            return f"{layer.name}: weight is not a constant"
        if len(list(weight.uses())) != 1:
            return f"{layer.name}: weight {weight.name!r} is shared with another node"
        if layer.op_type == "Gemm" and bool(layer.attributes.get_int("transA", 0)):
            return f"{layer.name}: Gemm with transA"
    bias = _input(pair.first, 2)
    if bias is not None and (bias.const_value is None or len(list(bias.uses())) != 1):
        return f"{pair.first.name}: bias is not a constant used only here"
    if pair.first.op_type == "Gemm" and bias is not None and bias.const_value is not None:
        if bias.const_value.numpy().size not in (
            1,
            _out_channels(pair.first, bias.const_value.numpy()),
        ):
            return f"{pair.first.name}: bias is not per output channel"
    act = pair.activation
    if act is not None and act.op_type == "PRelu":
        slope = _input(act, 1)
        if slope is None or slope.const_value is None:
            return "PRelu slope is not a constant"
    first_weight = _input(pair.first, 1)
    if pair.first.op_type == "Conv" and (first_weight is None or len(first_weight.shape or ()) < 3):
        return "Conv weight has unknown rank"
    return ""


def _input(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if len(node.inputs) > index else None


def _out_channels(node: ir.Node, _: np.ndarray | None = None) -> int:
    weight = node.inputs[1].const_value.numpy()  # type: ignore[union-attr]
    if node.op_type == "Gemm":
        return weight.shape[0] if node.attributes.get_int("transB", 0) else weight.shape[1]
    return weight.shape[0]


# --- the arithmetic ---------------------------------------------------------------------

Arrays = dict[int, tuple[ir.Value, np.ndarray]]


def _load_arrays(pairs: list[LayerPair]) -> Arrays:
    """Float64 working copies of every weight/bias touched, keyed by value identity."""
    arrays: Arrays = {}
    for pair in pairs:
        for value in (pair.first.inputs[1], _input(pair.first, 2), pair.second.inputs[1]):
            if value is not None and id(value) not in arrays:
                arrays[id(value)] = (value, value.const_value.numpy().astype(np.float64))  # type: ignore[union-attr]
    return arrays


def _store_arrays(arrays: Arrays) -> None:
    for value, array in arrays.values():
        dtype = value.const_value.numpy().dtype  # type: ignore[union-attr]
        value.const_value = ir.tensor(array.astype(dtype), name=value.name)


def _first_rows(pair: LayerPair, arrays: Arrays) -> np.ndarray:
    """First layer's weight as [channels, everything else] (a view when possible)."""
    weight = arrays[id(pair.first.inputs[1])][1]
    if pair.first.op_type == "Gemm" and not pair.first.attributes.get_int("transB", 0):
        return weight.T
    return weight.reshape(weight.shape[0], -1)


def _second_columns(pair: LayerPair, arrays: Arrays) -> list[np.ndarray]:
    """Per intermediate channel c, a view of the second layer's weights that read c."""
    weight = arrays[id(pair.second.inputs[1])][1]
    layer = pair.second
    if layer.op_type == "Gemm":
        return [
            weight[:, c] if layer.attributes.get_int("transB", 0) else weight[c, :]
            for c in range(
                weight.shape[1] if layer.attributes.get_int("transB", 0) else weight.shape[0]
            )
        ]
    groups = layer.attributes.get_int("group", 1)
    out_per_group = weight.shape[0] // groups
    in_per_group = weight.shape[1]
    return [
        weight[
            (c // in_per_group) * out_per_group : (c // in_per_group + 1) * out_per_group,
            c % in_per_group,
        ]
        for c in range(in_per_group * groups)
    ]


def _pair_scale(pair: LayerPair, arrays: Arrays) -> np.ndarray | None:
    rows = _first_rows(pair, arrays)
    columns = _second_columns(pair, arrays)
    if rows.shape[0] != len(columns):
        return None
    r1 = np.max(np.abs(rows), axis=1)
    r2 = np.array([np.max(np.abs(col)) if col.size else 0.0 for col in columns])
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.sqrt(r1 / r2)
    # Dead channels (all-zero weights on either side) are left as they are.
    return np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)


def _apply_scale(pair: LayerPair, scale: np.ndarray, arrays: Arrays) -> None:
    """W1[c] /= s_c, b1[c] /= s_c, W2[:, c] *= s_c; PRelu slopes are unaffected."""
    rows = _first_rows(pair, arrays)
    rows /= scale[:, None]
    bias = _input(pair.first, 2)
    if bias is not None:
        b = arrays[id(bias)][1]
        if b.size == scale.size:
            b.reshape(-1)[:] /= scale
        else:  # a broadcast scalar Gemm bias: make it per channel
            value = arrays[id(bias)][0]
            arrays[id(bias)] = (value, np.broadcast_to(b.reshape(-1), scale.shape) / scale)
    for c, column in enumerate(_second_columns(pair, arrays)):
        column *= scale[c]


def iter_equalized_ranges(graph: ir.Graph) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Per pair: label, first-layer output-channel ranges, second-layer input-channel ranges."""
    pairs, _ = find_pairs(graph)
    arrays = _load_arrays(pairs)
    for pair in pairs:
        rows = _first_rows(pair, arrays)
        columns = _second_columns(pair, arrays)
        yield (
            pair.label,
            np.max(np.abs(rows), axis=1),
            np.array([np.max(np.abs(col)) for col in columns]),
        )
