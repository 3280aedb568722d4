"""Shapes and constants: fix input dimensions, then fold what is computable ahead of time.

Folding wraps onnxscript's constant folder (the ONNX project's own: node-level shape
inference that keeps symbolic dimensions symbolic, partial evaluation of Shape /
Gather / Concat on shapes, If with a constant condition inlined, subgraphs and local
functions visited) and adds the size rule its element-count limits do not give:

1. A folded constant is never bigger than `size_limit` bytes.
2. A folded constant is never bigger than the constant inputs it frees (inputs that
   only this node used) plus `growth_limit` bytes. Shape vectors and scalars fit in
   that allowance; Tile, ConstantOfShape, Expand, Range or a broadcasting Add that
   would blow a few bytes up into megabytes do not (onnx-simplifier #178, #272), and
   neither does a Mul on a weight that other nodes still need, which would store
   the weight twice (OnnxSlim #190: 500 MB in, 2.5 GB out).
3. Quantize/Dequantize ops are never folded: folding DequantizeLinear on an int8
   weight stores it as float again, four times the bytes and no longer int8. Nor are
   random ops (Bernoulli, training-mode Dropout, Random*): one draw is not the op.

The rule is checked twice: before evaluating, from the shape the folder inferred
(so a 4 GB ConstantOfShape is never even allocated), and after, on the real array.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import sys
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common

from onnxslim.graphs import iter_graphs
from onnxslim.passes._options import option
from onnxslim.passes.fold_shapes import SHAPE_EVALUATORS, Replacement, merge_equal_shape_values
from onnxslim.passes.input_shapes import (
    FixInputShapes,
    check_input_shapes,
    graph_values,
    resolved_input_shapes,
)

# FixInputShapes and friends live in input_shapes.py; importers still find them here.
__all__ = [
    "FixInputShapes",
    "FoldConstants",
    "check_input_shapes",
    "drop_added_annotations",
    "freed_bytes",
    "predicted_output_bytes",
    "quiet_onnxscript",
    "remember_annotations",
    "resolved_input_shapes",
]

# Ops whose result is much bigger than their inputs: folded only when the output
# size is known before evaluation.
_GENERATORS = frozenset(
    {"ConstantOfShape", "Tile", "Expand", "Range", "Resize", "Upsample", "OneHot", "EyeLike", "Pad"}
)
# Folding these would undo quantization, or bake one random draw into the model
# (Dropout only reaches this check in training mode; at inference it becomes Identity).
_NEVER_FOLD = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "Bernoulli",
        "Dropout",
        "RandomUniform",
        "RandomNormal",
        "RandomUniformLike",
        "RandomNormalLike",
        "Multinomial",
    }
)
_MAX_SWEEPS = 3
# Ops whose output has the type and shape of input 0: typed here, without a round trip
# through onnx's node-level shape inference (serialize, infer, deserialize: ~0.2 ms a
# node, most of the pass on a 300k-node chain).
_SAME_AS_INPUT = frozenset(
    {
        "Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "BitwiseNot", "Ceil",
        "Celu", "Clip", "Cos", "Cosh", "Elu", "Erf", "Exp", "Floor", "Gelu", "HardSigmoid",
        "HardSwish", "Hardmax", "Identity", "LeakyRelu", "Log", "LogSoftmax", "Mish", "Neg",
        "Not", "Reciprocal", "Relu", "Round", "Selu", "Shrink", "Sigmoid", "Sign", "Sin",
        "Sinh", "Softmax", "Softplus", "Softsign", "Sqrt", "Tan", "Tanh", "ThresholdedRelu",
    }
)  # fmt: skip
_ELEMENTWISE_BINARY = frozenset({"Add", "Sub", "Mul", "Div"})
# A node with more inputs than this is detached in one step before it is replaced:
# onnx_ir's Node.replace_input_with copies the input tuple, so detaching input by
# input is quadratic (a Sum of 5,000 initializers: 16 s of 21 s).
_WIDE = 64


@dataclasses.dataclass(frozen=True, kw_only=True)
class FoldConstants(ir.passes.InPlacePass):
    """Fold constant subexpressions and shape computations, never growing the model.

    Symbolic dimensions stay symbolic: Shape(x)[1] folds only where that dimension
    is a number. Constant nodes become initializers (in subgraphs too), so folded
    values are deduplicated and counted like the other weights.
    """

    lossless: ClassVar[bool] = True
    size_limit: int = option(1 << 20, "Largest folded constant, in bytes.")
    growth_limit: int = option(
        1024,
        "Bytes a folded constant may exceed the constants it frees by "
        "(room for shape vectors and scalars).",
    )

    def __post_init__(self) -> None:
        if self.size_limit < 0 or self.growth_limit < 0:
            raise ValueError("size_limit and growth_limit must be >= 0")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        with quiet_onnxscript():
            for _ in range(_MAX_SWEEPS):
                result = _folder_class()(self.size_limit, self.growth_limit)(model)
                merged = merge_equal_shape_values(model, result.symbolic_value_map)
                if not (result.modified or merged):
                    break
                modified = True
            modified |= common.LiftConstantsToInitializersPass(
                lift_all_constants=True, size_limit=0
            )(model).modified
            if modified:
                common.RemoveUnusedNodesPass()(model)
        _drop_folding_metadata(model)
        return ir.passes.PassResult(model, modified)


@functools.cache
def _folder_class() -> type:
    """onnxscript's folder, subclassed on first use (importing onnxscript takes a while)."""
    from onnxscript.optimizer import _constant_folding  # ~1 s import: on first fold only

    class BoundedFolder(_constant_folding.FoldConstantsPass):
        """onnxscript's folder with the byte rule of this module's docstring."""

        def __init__(self, size_limit: int, growth_limit: int) -> None:
            super().__init__(
                shape_inference=True,
                input_size_limit=sys.maxsize,
                output_size_limit=sys.maxsize,
                should_fold=self._should_fold,
            )
            self.size_limit = size_limit
            self.growth_limit = growth_limit

        def acceptable(self, out_bytes: int, node: ir.Node) -> bool:
            """Rule 1 and 2: small enough, and not bigger than what it frees plus the allowance."""
            return (
                out_bytes <= self.size_limit and out_bytes <= freed_bytes(node) + self.growth_limit
            )

        def _should_fold(self, node: ir.Node) -> bool:
            if node.op_type in _NEVER_FOLD:
                return False
            predicted = predicted_output_bytes(node)
            if predicted is None:
                if node.op_type in _GENERATORS:
                    return False
                inputs = sum(
                    v.const_value.nbytes
                    for v in node.inputs
                    if v is not None and v.const_value is not None
                )
                return inputs <= self.size_limit  # bounded work; the result is checked again
            return self.acceptable(predicted, node)

        def process_node(self, node: ir.Node, is_function: bool) -> Replacement | None:
            replacement = super().process_node(node, is_function)
            if replacement is None and node.domain == "" and node.graph is not None:
                evaluate = SHAPE_EVALUATORS.get(node.op_type)
                if evaluate is not None:
                    replacement = evaluate(node, self._state)
            return replacement

        def _do_inference(self, node: ir.Node) -> None:
            if not infer_elementwise(node):
                super()._do_inference(node)

        def replace_node(
            self, node: ir.Node, replacement: Replacement, root: ir.Graph | ir.Function
        ) -> None:
            if len(node.inputs) > _WIDE:
                inputs = [v for v in node.inputs if v is not None]
                detach_inputs(node)
                super().replace_node(node, replacement, root)
                for value in inputs:  # what the base class would have cleared
                    if value.is_initializer() and not value.uses() and not value.is_graph_output():
                        value.graph.initializers.pop(value.name)  # type: ignore[union-attr,arg-type]
                return
            super().replace_node(node, replacement, root)

        def _prepare_folded_tensor(
            self, node: ir.Node, output_name: str, output_array: np.ndarray | Any
        ) -> ir.Tensor | None:
            tensor = super()._prepare_folded_tensor(node, output_name, output_array)
            if tensor is None or not self.acceptable(int(tensor.nbytes), node):
                return None
            return tensor

    return BoundedFolder


def infer_elementwise(node: ir.Node) -> bool:
    """Type and shape an elementwise node's output from its input; False if not that simple.

    Unary ops in _SAME_AS_INPUT take input 0's; Add/Sub/Mul/Div take the shape both
    operands share, or the tensor operand's when the other is a scalar of the same type.
    Only missing annotations are filled; the folder's inference handles everything else.
    """
    if node.domain not in ("", "ai.onnx") or len(node.outputs) != 1 or not node.inputs:
        return False
    source = node.inputs[0]
    if node.op_type in _ELEMENTWISE_BINARY and len(node.inputs) == 2:
        other = node.inputs[1]
        if source is None or other is None or source.shape is None or other.shape is None:
            return False
        if source.dtype is None or source.dtype != other.dtype:
            return False
        source_shape, other_shape = source.shape, other.shape
        if len(source_shape) == 0:
            source, other = other, source
            source_shape, other_shape = other_shape, source_shape
        if not (len(other_shape) == 0 or tuple(other_shape.dims) == tuple(source_shape.dims)):
            return False
        if not source_shape.is_static() and tuple(other_shape.dims) == tuple(source_shape.dims):
            if any(isinstance(d, ir.SymbolicDim) and d.value is None for d in source_shape.dims):
                return False  # two unknown dims need not be equal
    elif node.op_type not in _SAME_AS_INPUT:
        return False
    if source is None or source.dtype is None or source.shape is None:
        return False
    output = node.outputs[0]
    if output.dtype is None:
        output.dtype = source.dtype
    if output.shape is None:
        output.shape = ir.Shape(source.shape.dims)
    return True


def detach_inputs(node: ir.Node) -> None:
    """Drop every input of `node` in one pass (onnx_ir's per-input way is quadratic).

    Uses onnx_ir internals (Node._inputs, Value._remove_usage); tests/test_fold_contract.py
    pins them, so an onnx_ir upgrade that changes them fails there first.
    """
    for index, value in enumerate(node.inputs):
        if value is not None:
            value._remove_usage(node, index)  # noqa: SLF001
    node._inputs = ()  # noqa: SLF001


def freed_bytes(node: ir.Node) -> int:
    """Bytes of the constant inputs that `node` frees once it is folded.

    An input only `node` uses is freed whole. An input shared with other nodes that
    will all fold too (every input constant, output size known: the exporters' LSTM
    gate reordering slices one weight four ways) is freed for the part the others'
    outputs do not take: folding the last of them drops the input, so the group
    never stores more than the input held.
    """
    total = 0
    for value in {v for v in node.inputs if v is not None}:
        if value.const_value is None or value.is_graph_input() or value.is_graph_output():
            continue
        others = {use.node for use in value.uses() if use.node is not node}
        if not others:
            total += int(value.const_value.nbytes)
            continue
        taken = [_folded_bytes(other) for other in others]
        if all(size is not None for size in taken):
            total += max(0, int(value.const_value.nbytes) - sum(taken))  # type: ignore[arg-type]
    return total


def _folded_bytes(node: ir.Node) -> int | None:
    """Output bytes of a node that will fold (all inputs constant, size known), else None."""
    if node.op_type in _NEVER_FOLD or node.op_type in _GENERATORS or len(node.outputs) != 1:
        return None
    if any(v is not None and v.const_value is None for v in node.inputs):
        return None
    return predicted_output_bytes(node)


def predicted_output_bytes(node: ir.Node) -> int | None:
    """Bytes of `node`'s first output if its size is known before evaluating it."""
    if not node.outputs:
        return None
    output = node.outputs[0]
    dtype = output.dtype
    shape = output.shape
    dims: list[int] | None = None
    if shape is not None and all(isinstance(d, int) for d in shape.dims):
        dims = [int(d) for d in shape.dims]  # type: ignore[arg-type]
    else:
        dims = _generator_dims(node)
        if node.op_type == "ConstantOfShape" and dtype is None:
            value = node.attributes.get("value")
            dtype = value.as_tensor().dtype if value is not None else ir.DataType.FLOAT
    if dims is None:
        return None
    if dtype is None:
        dtype = node.inputs[0].dtype if node.inputs and node.inputs[0] is not None else None
    itemsize = dtype.itemsize if dtype is not None else 8
    return int(math.ceil(math.prod(dims) * itemsize))


def _generator_dims(node: ir.Node) -> list[int] | None:
    """Output dimensions of size-generating ops whose inputs are constants."""

    def const(index: int) -> np.ndarray | None:
        if index >= len(node.inputs) or node.inputs[index] is None:
            return None
        tensor = node.inputs[index].const_value  # type: ignore[union-attr]
        return None if tensor is None else tensor.numpy()

    def static_shape(index: int) -> list[int] | None:
        value = node.inputs[index] if index < len(node.inputs) else None
        if value is None or value.shape is None or not value.shape.is_static():
            return None
        return [int(d) for d in value.shape.dims]  # type: ignore[arg-type]

    op = node.op_type
    try:
        if op == "ConstantOfShape":
            shape = const(0)
            return None if shape is None else [int(d) for d in shape.reshape(-1)]
        if op == "Tile":
            data, repeats = static_shape(0), const(1)
            if data is None or repeats is None:
                return None
            return [d * int(r) for d, r in zip(data, repeats.reshape(-1), strict=True)]
        if op == "Expand":
            data, shape = static_shape(0), const(1)
            if data is None or shape is None:
                return None
            return list(np.broadcast_shapes(tuple(data), tuple(int(d) for d in shape.reshape(-1))))
        if op == "Range":
            start, limit, delta = const(0), const(1), const(2)
            if start is None or limit is None or delta is None or float(delta) == 0:
                return None
            return [max(int(math.ceil((float(limit) - float(start)) / float(delta))), 0)]
    except (ValueError, TypeError, OverflowError):
        return None
    return None


def _drop_folding_metadata(model: ir.Model) -> None:
    """onnxscript records which values a constant was folded from; that is noise in the file."""
    from onnxscript.optimizer import FOLDED_FROM_KEY as key  # loaded by the fold already

    for graph in iter_graphs(model):
        values: list[ir.Value] = list(graph.inputs)
        if isinstance(graph, ir.Graph):
            values.extend(graph.initializers.values())
        for node in graph:
            values.extend(node.outputs)
        for value in values:
            if value._metadata_props and key in value._metadata_props:  # noqa: SLF001 (avoid creating dicts)
                del value._metadata_props[key]


@contextlib.contextmanager
def quiet_onnxscript() -> Iterator[None]:
    """onnxscript logs every refused evaluation as a warning; our report says what changed."""
    loggers = [
        lg
        for lg in map(logging.getLogger, ("onnxscript", "onnx_ir"))
        if lg.getEffectiveLevel() > logging.INFO
    ]  # --debug still sees everything
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


# ------------------------------------------------ annotations the input did not have
# Folding infers a type and shape for every value; the no-op rules and fusions use
# them. Saved, they become value_info entries the input did not carry (tens of KB on a
# large graph), so a whole-model run drops the ones it added.

_ANNOTATED = "onnxslim.annotated_in_input"


def remember_annotations(model: ir.Model) -> None:
    """Mark the values that carry a type or shape in the model as given."""
    for value in graph_values(model):
        if value.type is not None or value.shape is not None:
            value.meta[_ANNOTATED] = True


def drop_added_annotations(model: ir.Model) -> int:
    """Clear type and shape of intermediate values not marked by remember_annotations."""
    dropped = 0
    for value in graph_values(model):
        if value.is_graph_input() or value.is_graph_output() or value.const_value is not None:
            continue
        if value.meta.get(_ANNOTATED) or (value.type is None and value.shape is None):
            continue
        value.type = None
        value.shape = None
        dropped += 1
    return dropped
