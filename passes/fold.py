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

from onnxslim.errors import UsageError
from onnxslim.feeds import parse_input_shapes
from onnxslim.graphs import iter_graphs
from onnxslim.passes._options import option

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


@dataclasses.dataclass(frozen=True, kw_only=True)
class FixInputShapes(ir.passes.InPlacePass):
    """Fix dynamic input dimensions to given sizes so shapes propagate and fold.

    A named dimension fixed on one input is fixed wherever the model uses that name
    (value shapes of the main graph and subgraphs). A shape that contradicts a fixed
    dimension, a wrong rank or an unknown input name is a usage error.
    """

    lossless: ClassVar[bool] = True
    shapes: tuple[str, ...] = option(
        (), "Input shapes as NAME:D1,D2,... (what --input-shape takes)."
    )

    def __post_init__(self) -> None:
        parse_input_shapes(list(self.shapes))  # raises UsageError on bad text

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        shapes = parse_input_shapes(list(self.shapes))
        named = check_input_shapes(model, shapes)
        modified = False
        inputs = {v.name: v for v in model.graph.inputs}
        for name, dims in shapes.items():
            value = inputs[name]
            if value.shape is None or tuple(value.shape.dims) != dims:
                value.shape = ir.Shape(dims)
                modified = True
        if named:
            for value in _graph_values(model):
                if value.shape is None:
                    continue
                dims = [
                    named.get(d.value, d) if isinstance(d, ir.SymbolicDim) else d
                    for d in value.shape.dims
                ]
                if tuple(dims) != tuple(value.shape.dims):
                    value.shape = ir.Shape(dims)
                    modified = True
        return ir.passes.PassResult(model, modified)


def check_input_shapes(model: ir.Model, shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """Check `shapes` against the model's inputs; return named dimension -> fixed size.

    Raises UsageError for an unknown input, a wrong rank, a size that contradicts a
    fixed dimension, or one dimension name given two different sizes.
    """
    inputs = {v.name: v for v in model.graph.inputs if v.name not in model.graph.initializers}
    named: dict[str, int] = {}
    for name, dims in shapes.items():
        value = inputs.get(name)
        if value is None:
            raise UsageError(
                f"--input-shape {name}: the model has no input {name!r} "
                f"(inputs: {', '.join(map(str, inputs)) or 'none'})"
            )
        if value.shape is None:
            continue
        if len(value.shape) != len(dims):
            raise UsageError(
                f"--input-shape {name}: rank {len(dims)} given, the model declares "
                f"rank {len(value.shape)} {_shape_text(value.shape)}"
            )
        for axis, (declared, size) in enumerate(zip(value.shape.dims, dims, strict=True)):
            if isinstance(declared, int):
                if declared != size:
                    raise UsageError(
                        f"--input-shape {name}: dimension {axis} is fixed to {declared} "
                        f"in the model, {size} given"
                    )
            elif declared.value is not None:
                if named.setdefault(declared.value, size) != size:
                    raise UsageError(
                        f"--input-shape: dimension {declared.value!r} given both "
                        f"{named[declared.value]} and {size}"
                    )
    return named


def resolved_input_shapes(
    model: ir.Model, shapes: dict[str, tuple[int, ...]], free_dim: int = 1
) -> dict[str, tuple[int, ...]]:
    """Every input's runnable shape once `shapes` are fixed (checked like FixInputShapes does).

    Inputs not named in `shapes` but sharing a named dimension with one that is
    take its size too; what stays free becomes `free_dim`, as in generated feeds.
    """
    named = check_input_shapes(model, shapes)
    resolved: dict[str, tuple[int, ...]] = {}
    for value in model.graph.inputs:
        if value.name in model.graph.initializers or value.shape is None:
            continue
        if value.name in shapes:
            resolved[value.name] = tuple(shapes[value.name])
            continue
        resolved[value.name] = tuple(
            d if isinstance(d, int) else named.get(d.value, free_dim) if d.value else free_dim
            for d in value.shape.dims
        )
    return resolved


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
                merged = merge_equal_shape_values(model, result.symbolic_value_map)  # type: ignore[attr-defined]
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
    from onnxscript.optimizer import _constant_folding

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
                evaluate = _SHAPE_EVALUATORS.get(node.op_type)
                if evaluate is not None:
                    replacement = evaluate(node, self._state)
            return replacement

        def _prepare_folded_tensor(
            self, node: ir.Node, output_name: str, output_array: np.ndarray | Any
        ) -> ir.Tensor | None:
            tensor = super()._prepare_folded_tensor(node, output_name, output_array)
            if tensor is None or not self.acceptable(int(tensor.nbytes), node):
                return None
            return tensor

    return BoundedFolder


# ------------------------------------------------ shape computations onnxscript leaves alone
# The folder tracks, for int64 values holding dimensions, their content as an ir.Shape
# (numbers and named symbols). These evaluators extend that tracking to the patterns
# exporters emit around Reshape: Gather of one dimension (a scalar), Unsqueeze of it,
# Slice of a shape; a fully numeric result becomes a constant, and a Reshape whose
# target is known gets its output shape, so later Shape ops fold or resolve too.

State = Any  # onnxscript.optimizer._constant_folding.OptimizerState
Replacement = Any  # onnxscript.optimizer._constant_folding.Replacement


def _int_constant(values: list[int], *, scalar: bool) -> Replacement:
    from onnxscript.optimizer._constant_folding import Replacement

    array = np.array(values[0] if scalar else values, dtype=np.int64)
    node = ir.Node("", "Constant", [], [ir.AttrTensor("value", ir.tensor(array))])
    return Replacement([node.outputs[0]], [node])


def _rank(value: ir.Value | None) -> int | None:
    return None if value is None or value.shape is None else len(value.shape)


def _const_ints(value: ir.Value | None) -> list[int] | None:
    if value is None or value.const_value is None:
        return None
    array = value.const_value.numpy()
    return [int(v) for v in array.reshape(-1)] if array.dtype.kind in "iu" else None


def _gather_dim(node: ir.Node, state: State) -> Replacement | None:
    """Gather(shape, scalar i): dimension i, a constant when it is a number."""
    if len(node.inputs) != 2 or node.attributes.get_int("axis", 0) != 0:
        return None
    dims, index = state.get_shape_value(node.inputs[0]), _const_ints(node.inputs[1])
    if dims is None or index is None or len(index) != 1 or _rank(node.inputs[1]) != 0:
        return None
    if not -len(dims) <= index[0] < len(dims):
        return None
    dim = dims[index[0]]
    if isinstance(dim, int):
        return _int_constant([dim], scalar=True)
    state.set_sym_value(node.outputs[0], ir.Shape([dim]))
    return None


def _unsqueeze_dim(node: ir.Node, state: State) -> Replacement | None:
    """Unsqueeze(scalar dimension, [0]): the same dimension as a 1-element vector."""
    axes = _const_ints(node.inputs[1]) if len(node.inputs) > 1 else node.attributes.get_ints("axes")
    dims = state.get_shape_value(node.inputs[0])
    if dims is None or _rank(node.inputs[0]) != 0 or axes is None or list(axes) not in ([0], [-1]):
        return None
    state.set_sym_value(node.outputs[0], dims)
    return None


def _slice_shape(node: ir.Node, state: State) -> Replacement | None:
    """Slice of a shape vector with constant bounds."""
    dims = state.get_shape_value(node.inputs[0]) if node.inputs else None
    if dims is None or _rank(node.inputs[0]) != 1 or len(node.inputs) < 3:
        return None
    starts, ends = _const_ints(node.inputs[1]), _const_ints(node.inputs[2])
    axes = (
        _const_ints(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else [0]
    )
    steps = (
        _const_ints(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else [1]
    )
    if (
        None in (starts, ends, axes, steps)
        or not len(starts) == len(ends) == len(axes) == len(steps) == 1
    ):
        return None
    if axes[0] not in (0, -1) or steps[0] == 0:  # type: ignore[index]
        return None
    sliced = list(dims.dims)[slice(starts[0], ends[0], steps[0])]  # type: ignore[index]
    if all(isinstance(d, int) for d in sliced):
        return _int_constant([int(d) for d in sliced], scalar=False)  # type: ignore[arg-type]
    state.set_sym_value(node.outputs[0], ir.Shape(sliced))
    return None


def _reshape_output_shape(node: ir.Node, state: State) -> Replacement | None:
    """Reshape to a known target: give the output that shape (0 copies, -1 stays unknown)."""
    if len(node.inputs) != 2 or node.inputs[0] is None:
        return None
    target = state.get_shape_value(node.inputs[1])
    source = node.inputs[0].shape
    if target is None:
        return None
    allowzero = node.attributes.get_int("allowzero", 0) == 1
    dims: list[int | ir.SymbolicDim] = []
    for axis, dim in enumerate(target.dims):
        if isinstance(dim, int) and dim == 0 and not allowzero:
            if source is None or axis >= len(source):
                return None
            dims.append(source[axis])
        elif isinstance(dim, int) and dim == -1:
            dims.append(ir.SymbolicDim(None))
        else:
            dims.append(dim)
    unknown = [i for i, d in enumerate(dims) if isinstance(d, ir.SymbolicDim) and d.value is None]
    if len(unknown) == 1 and source is not None and source.is_static():
        known = math.prod(int(d) for d in dims if isinstance(d, int))  # type: ignore[arg-type]
        if known and all(isinstance(d, int) for i, d in enumerate(dims) if i != unknown[0]):
            dims[unknown[0]] = math.prod(int(d) for d in source.dims) // known  # type: ignore[arg-type]
    output = node.outputs[0]
    current = output.shape
    if current is not None and len(current) == len(dims):
        dims = [_better_dim(c, d) for c, d in zip(current.dims, dims, strict=True)]
    if current is None or tuple(current.dims) != tuple(dims):
        output.shape = ir.Shape(dims)
    return None


def _better_dim(
    current: int | ir.SymbolicDim, computed: int | ir.SymbolicDim
) -> int | ir.SymbolicDim:
    """A number beats a name, a name traced from the inputs beats an unknown."""
    if isinstance(current, int):
        return current
    if isinstance(computed, int) or computed.value is not None:
        return computed
    return current


_SHAPE_EVALUATORS = {
    "Gather": _gather_dim,
    "Unsqueeze": _unsqueeze_dim,
    "Slice": _slice_shape,
    "Reshape": _reshape_output_shape,
}


def merge_equal_shape_values(model: ir.Model, symbolic: dict[ir.Value, Any]) -> bool:
    """Let later shape computations reuse an earlier value with the same content.

    Two int64 values whose tracked content is the same list of numbers and named
    dimensions hold the same data at run time (a named dimension is one unknown
    size wherever it appears), so each graph keeps the first and the rest read it.
    """
    modified = False
    for graph in iter_graphs(model):
        first: dict[tuple, ir.Value] = {}
        for node in list(graph):
            for value in node.outputs:
                content = symbolic.get(value)
                if not isinstance(content, ir.Shape) or value.dtype != ir.DataType.INT64:
                    continue
                rank = _rank(value)
                if rank not in (0, 1) or (rank == 0 and len(content) != 1):
                    continue
                if any(isinstance(d, ir.SymbolicDim) and d.value is None for d in content.dims):
                    continue
                key = (
                    rank,
                    tuple(d if isinstance(d, int) else ("sym", d.value) for d in content.dims),
                )
                earlier = first.setdefault(key, value)
                if earlier is value or value.is_graph_output():
                    continue
                if value.uses():
                    value.replace_all_uses_with(earlier)
                    modified = True
    return modified


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


def _graph_values(model: ir.Model) -> Iterator[ir.Value]:
    """Every value of the main graph and its subgraphs (functions have their own dim names)."""
    for graph in iter_graphs(model):
        if isinstance(graph, ir.Function):
            continue
        yield from graph.inputs
        for node in graph:
            yield from node.outputs


def _drop_folding_metadata(model: ir.Model) -> None:
    """onnxscript records which values a constant was folded from; that is noise in the file."""
    from onnxscript.optimizer._constant_folding import FOLDED_FROM_KEY as key

    for graph in iter_graphs(model):
        values: list[ir.Value] = list(graph.inputs)
        if isinstance(graph, ir.Graph):
            values.extend(graph.initializers.values())
        for node in graph:
            values.extend(node.outputs)
        for value in values:
            if value._metadata_props and key in value._metadata_props:  # noqa: SLF001 (avoid creating dicts)
                del value._metadata_props[key]


def _shape_text(shape: ir.Shape) -> str:
    return (
        "[" + ",".join(str(d) if isinstance(d, int) else (d.value or "?") for d in shape.dims) + "]"
    )


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
    for value in _graph_values(model):
        if value.type is not None or value.shape is not None:
            value.meta[_ANNOTATED] = True


def drop_added_annotations(model: ir.Model) -> int:
    """Clear type and shape of intermediate values not marked by remember_annotations."""
    dropped = 0
    for value in _graph_values(model):
        if value.is_graph_input() or value.is_graph_output() or value.const_value is not None:
            continue
        if value.meta.get(_ANNOTATED) or (value.type is None and value.shape is None):
            continue
        value.type = None
        value.shape = None
        dropped += 1
    return dropped
