"""Shape computations onnxscript's constant folder leaves alone, as extra evaluators.

The folder tracks, for int64 values holding dimensions, their content as an ir.Shape
(numbers and named symbols). These evaluators extend that tracking to the patterns
exporters emit around Reshape: Gather of one dimension (a scalar), Unsqueeze of it,
Slice of a shape; a fully numeric result becomes a constant, and a Reshape whose
target is known gets its output shape, so later Shape ops fold or resolve too.
`merge_equal_shape_values` then lets equal shape computations share one value.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxslim.graphs import iter_graphs

State = Any  # onnxscript.optimizer._constant_folding.OptimizerState
Replacement = Any  # onnxscript.optimizer._constant_folding.Replacement


def _int_constant(values: list[int], *, scalar: bool) -> Replacement:
    # onnxscript takes ~1 s to import; the folder that calls this has loaded it already.
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
    if starts is None or ends is None or axes is None or steps is None:
        return None
    if not len(starts) == len(ends) == len(axes) == len(steps) == 1:
        return None
    if axes[0] not in (0, -1) or steps[0] == 0:
        return None
    sliced = list(dims.dims)[slice(starts[0], ends[0], steps[0])]
    if all(isinstance(d, int) for d in sliced):
        return _int_constant([int(d) for d in sliced], scalar=False)
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
        known = math.prod(d for d in dims if isinstance(d, int))
        if known and all(isinstance(d, int) for i, d in enumerate(dims) if i != unknown[0]):
            dims[unknown[0]] = math.prod(int(d) for d in source.dims if isinstance(d, int)) // known
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


SHAPE_EVALUATORS = {
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
