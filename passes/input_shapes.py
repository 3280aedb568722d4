"""Fix dynamic input dimensions to given sizes, and check sizes against the model.

`--input-shape NAME:1,3,224,224` pins free dimensions before folding, so shapes
propagate; the same check tells the workflows which runnable shape each input gets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import ClassVar

import onnx_ir as ir

from onnxslim.errors import UsageError
from onnxslim.feeds import parse_input_shapes
from onnxslim.graphs import iter_graphs
from onnxslim.passes._options import option


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
            for value in graph_values(model):
                if value.shape is None:
                    continue
                renamed = [
                    named.get(d.value, d) if isinstance(d, ir.SymbolicDim) and d.value else d
                    for d in value.shape.dims
                ]
                if tuple(renamed) != tuple(value.shape.dims):
                    value.shape = ir.Shape(renamed)
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
        name = value.name or ""
        if name in model.graph.initializers or value.shape is None:
            continue
        if name in shapes:
            resolved[name] = tuple(shapes[name])
            continue
        resolved[name] = tuple(
            d if isinstance(d, int) else named.get(d.value, free_dim) if d.value else free_dim
            for d in value.shape.dims
        )
    return resolved


def graph_values(model: ir.Model) -> Iterator[ir.Value]:
    """Every value of the main graph and its subgraphs (functions have their own dim names)."""
    for graph in iter_graphs(model):
        if isinstance(graph, ir.Function):
            continue
        yield from graph.inputs
        for node in graph:
            yield from node.outputs


def _shape_text(shape: ir.Shape) -> str:
    return (
        "[" + ",".join(str(d) if isinstance(d, int) else (d.value or "?") for d in shape.dims) + "]"
    )
