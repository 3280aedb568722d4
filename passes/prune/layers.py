"""Which weights a pruning pass may touch, and how each one maps onto a matrix.

A prunable layer is a Conv, ConvTranspose, Gemm or MatMul of the main graph whose
weight is a float initializer (reached directly or through Identity nodes). Its
weight is viewed as a matrix [out, in_flat] whose columns follow the layer's
input rows (see onnxslim.activations), so masks, least squares and storage all
speak one layout. Every layer that is skipped gets a reason.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common

from onnxslim.graphs import fresh_name
from onnxslim.layer_rows import layer_geometry

FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16)
LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass
class Layer:
    """One weighted layer of the graph."""

    node: ir.Node
    weight: ir.Value  # the initializer holding the weight
    bias: ir.Value | None  # Conv B / Gemm C / the constant of a MatMul's Add
    bias_node: ir.Node | None  # the Add carrying a MatMul's bias
    output: ir.Value  # the layer's output, bias included
    uses: int  # nodes reading the weight initializer

    @property
    def name(self) -> str:
        return self.node.name or self.node.outputs[0].name or self.weight.name or "?"

    @property
    def weight_name(self) -> str:
        """The weight initializer's name (an initializer always has one)."""
        name = self.weight.name
        assert name is not None
        return name

    @property
    def op_type(self) -> str:
        return self.node.op_type

    @property
    def groups(self) -> int:
        return (
            self.node.attributes.get_int("group", 1)
            if self.op_type in ("Conv", "ConvTranspose")
            else 1
        )

    @property
    def trans_b(self) -> bool:
        return self.op_type == "Gemm" and bool(self.node.attributes.get_int("transB", 0))

    @property
    def shared(self) -> bool:
        return self.uses > 1

    def array(self) -> np.ndarray:
        assert self.weight.const_value is not None
        return self.weight.const_value.numpy()

    def bias_array(self) -> np.ndarray | None:
        if self.bias is None or self.bias.const_value is None:
            return None
        return self.bias.const_value.numpy()

    # The matrix view: rows are output channels, columns the flattened input rows.
    def to_matrix(self, w: np.ndarray) -> np.ndarray:
        if self.op_type == "Conv":
            return w.reshape(w.shape[0], -1)
        if self.op_type == "ConvTranspose":  # [C_in, C_out/g, k...]: outputs on axis 1
            return np.moveaxis(w, 1, 0).reshape(w.shape[1], -1)
        if self.trans_b:
            return w
        return w.T

    def from_matrix(self, m: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        if self.op_type == "Conv":
            return m.reshape(shape)
        if self.op_type == "ConvTranspose":
            moved = (shape[1], shape[0], *shape[2:])
            return np.moveaxis(m.reshape(moved), 0, 1)
        if self.trans_b:
            return m
        return m.T

    def input_channel_view(self, w: np.ndarray) -> np.ndarray:
        """The weight as [..., C_in] with the input-channel axis last (for N:M groups)."""
        if self.op_type == "Conv":
            return np.moveaxis(w, 1, -1)
        if self.op_type == "ConvTranspose":
            return np.moveaxis(w, 0, -1)
        return w if self.trans_b else w.T

    def from_input_channel_view(self, v: np.ndarray) -> np.ndarray:
        if self.op_type == "Conv":
            return np.moveaxis(v, -1, 1)
        if self.op_type == "ConvTranspose":
            return np.moveaxis(v, -1, 0)
        return v if self.trans_b else v.T

    def set_weight(self, w: np.ndarray) -> None:
        """Replace the weight's contents (same initializer, so sharing is kept)."""
        old = self.weight.const_value
        assert old is not None
        self.weight.const_value = ir.Tensor(
            np.ascontiguousarray(w.astype(old.dtype.numpy(), copy=False)), name=self.weight.name
        )
        self.weight.shape = ir.Shape(w.shape)

    def set_bias(self, b: np.ndarray) -> None:
        """Replace the bias, adding one (Conv B, Gemm C) when the layer had none."""
        if self.bias is not None and self.bias.const_value is not None:
            old = self.bias.const_value
            self.bias.const_value = ir.Tensor(
                b.reshape(old.shape.numpy()).astype(old.dtype.numpy()), name=self.bias.name
            )
            return
        graph = self.node.graph
        assert graph is not None and self.op_type in ("Conv", "Gemm")
        dtype = (
            self.weight.const_value.dtype.numpy()
            if self.weight.const_value is not None
            else np.dtype(np.float32)
        )
        name = fresh_name(graph, f"{self.weight.name}_bias")
        value = ir.Value(
            name=name,
            shape=ir.Shape(b.shape),
            type=ir.TensorType(ir.DataType.from_numpy(dtype)),
            const_value=ir.Tensor(b.astype(dtype), name=name),
        )
        graph.register_initializer(value)
        if len(self.node.inputs) < 3:
            self.node.resize_inputs(3)
        self.node.replace_input_with(2, value)
        self.bias = value

    def can_have_bias(self) -> bool:
        if self.bias is not None:
            return (
                self.bias.const_value is not None
                and self.bias.const_value.size == self.out_channels
            )
        if self.op_type == "Gemm":
            return self.node.attributes.get_float("beta", 1.0) == 1.0
        return self.op_type == "Conv"

    @property
    def out_channels(self) -> int:
        weight = self.weight.const_value
        assert weight is not None  # find_layers keeps only layers with a constant weight
        shape = weight.shape.numpy()
        if self.op_type == "Conv":
            return int(shape[0])
        if self.op_type == "ConvTranspose":
            return int(shape[1]) * self.groups
        return int(shape[0] if self.trans_b else shape[1])


@dataclass(frozen=True)
class Skipped:
    name: str
    op_type: str
    reason: str


def lift_constants(model: ir.Model) -> bool:
    """Turn Constant nodes into initializers so their tensors can be pruned like weights."""
    return common.LiftConstantsToInitializersPass(size_limit=16)(model).modified


def resolve_initializer(value: ir.Value | None) -> ir.Value | None:
    """The initializer behind `value`, following Identity nodes; None if not constant."""
    seen = 0
    while value is not None and seen < 16:
        if value.is_initializer() and value.const_value is not None:
            return value
        producer = value.producer()
        if (
            producer is None
            or producer.op_type != "Identity"
            or producer.domain not in ("", "ai.onnx")
        ):
            return None
        value = producer.inputs[0]
        seen += 1
    return None


def find_layers(
    model: ir.Model,
    *,
    min_elements: int = 0,
    exclude: Iterable[str] = (),
    ops: Iterable[str] = LAYER_OPS,
) -> tuple[list[Layer], list[Skipped]]:
    """Weighted layers of the main graph, and the ones passed over with their reason."""
    patterns = tuple(exclude)
    wanted = set(ops)
    layers: list[Layer] = []
    skipped: list[Skipped] = []
    for node in model.graph:
        if node.op_type not in wanted or node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
            continue
        label = node.name or node.outputs[0].name or node.op_type
        weight = resolve_initializer(node.inputs[1])
        if weight is None:
            if node.op_type != "MatMul":  # MatMul of two activations is not a layer
                skipped.append(Skipped(label, node.op_type, "weight is not a constant initializer"))
            continue
        tensor = weight.const_value
        assert tensor is not None
        if tensor.dtype not in FLOAT_TYPES:
            skipped.append(
                Skipped(label, node.op_type, f"weight type {tensor.dtype.name} is not float")
            )
            continue
        if node.op_type in ("Gemm", "MatMul") and len(tensor.shape) != 2:
            skipped.append(
                Skipped(label, node.op_type, f"weight of rank {len(tensor.shape)} (only 2-D)")
            )
            continue
        if node.op_type == "MatMul" and resolve_initializer(node.inputs[0]) is not None:
            skipped.append(Skipped(label, node.op_type, "constant first operand"))
            continue
        if node.op_type == "Gemm" and bool(node.attributes.get_int("transA", 0)):
            skipped.append(Skipped(label, node.op_type, "transA=1"))
            continue
        if any(fnmatch.fnmatchcase(n, p) for p in patterns for n in (label, weight.name or "")):
            skipped.append(Skipped(label, node.op_type, "excluded"))
            continue
        if tensor.size < min_elements:
            skipped.append(
                Skipped(
                    label, node.op_type, f"{tensor.size} elements < min_elements {min_elements}"
                )
            )
            continue
        bias, bias_node, output = _bias_of(node)
        layers.append(Layer(node, weight, bias, bias_node, output, uses=len(weight.uses())))
    return layers, skipped


def _bias_of(node: ir.Node) -> tuple[ir.Value | None, ir.Node | None, ir.Value]:
    out = node.outputs[0]
    if node.op_type in ("Conv", "ConvTranspose", "Gemm"):
        bias = resolve_initializer(node.inputs[2]) if len(node.inputs) > 2 else None
        return bias, None, out
    # MatMul: a following Add with a constant [N] operand is its bias.
    uses = list(out.uses())
    if len(uses) == 1 and not out.is_graph_output():
        add, index = uses[0]
        if add.op_type == "Add" and add.domain in ("", "ai.onnx") and len(add.inputs) == 2:
            other = resolve_initializer(add.inputs[1 - index])
            n = (
                node.inputs[1].shape[-1]
                if node.inputs[1] is not None and node.inputs[1].shape
                else None
            )
            if (
                other is not None
                and other.const_value is not None
                and other.const_value.size == n
                and other.const_value.shape[-1] == n
                and len(other.uses()) == 1
            ):
                return other, add, add.outputs[0]
    return None, None, out


def sparsity(w: np.ndarray) -> float:
    return float(np.count_nonzero(w == 0) / w.size) if w.size else 0.0


# --- refits: what prune's reconstruction and cluster's refinement share -------------------


def refit_refusal(layer: Layer, original: ir.Model, max_columns: int) -> str:
    """Why `layer` cannot be refit by least squares on the original's activations, or ""
    (a shared weight, no static shape, normal equations over `max_columns`, a Gemm C that
    is no per-output bias, an output the original does not compute)."""
    if layer.shared:
        return f"weight shared by {layer.uses} nodes"
    if layer_geometry(layer.node) is None:
        return "no static weight shape"
    w = layer.weight.const_value
    assert w is not None
    columns = (
        int(np.prod(w.shape.numpy()[1:]))
        if layer.op_type == "Conv"
        else int(w.size // layer.out_channels)
    )
    if columns + 1 > max_columns:
        return f"{columns} input columns > {max_columns - 1} (normal equations too large)"
    if layer.op_type == "Gemm":
        c = layer.node.inputs[2] if len(layer.node.inputs) > 2 else None
        if c is not None and (
            layer.bias is None
            or layer.bias.const_value is None
            or layer.bias.const_value.size != layer.out_channels
        ):
            return "Gemm C is not a per-output bias"
    if layer.output.name not in value_names(original):
        return f"output {layer.output.name!r} not in the original model"
    return ""


def refit_levels(model: ir.Model, names: Sequence[str]) -> list[list[str]]:
    """Layers grouped so none depends on another of its group; groups in dependency order
    (a group's inputs are final once the groups before it are refit)."""
    wanted = set(names)
    depth: dict[str, int] = {}
    level_of: dict[str, int] = {}
    for node in model.graph:
        d = max((depth.get(v.name or "", 0) for v in node.inputs if v is not None), default=0)
        if node.name in wanted:
            d += 1
            level_of[node.name or ""] = d
        for out in node.outputs:
            depth[out.name or ""] = d
    levels: dict[int, list[str]] = {}
    for name in names:
        levels.setdefault(level_of[name], []).append(name)
    return [levels[k] for k in sorted(levels)]


def value_names(model: ir.Model) -> set[str]:
    """Names of the main graph's inputs and node outputs."""
    names = {v.name for v in model.graph.inputs if v.name is not None}
    for node in model.graph:
        names.update(o.name for o in node.outputs if o.name is not None)
    return names
