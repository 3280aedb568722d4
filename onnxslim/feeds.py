"""Input specifications of a model, and generated inputs when the user gives no data.

Generated feeds are deterministic (seeded) and respect what the graph says of each
input: its dtype, its fixed dimensions, and for integer inputs that index a Gather,
the size of the table they index, so an embedding model is fed valid token ids.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from onnxslim.errors import UsageError

Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class InputSpec:
    """What a model expects on one input; `None` or a string marks a free dimension."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...] | None
    index_bound: int | None = None  # exclusive upper bound for integer ids, when known

    def describe(self) -> str:
        dims = (
            "?"
            if self.shape is None
            else "[" + ",".join(str(d) if d is not None else "?" for d in self.shape) + "]"
        )
        return f"{self.dtype} {dims}"


def input_specs(model: ir.Model) -> list[InputSpec]:
    """The graph inputs that need feeding (initializers listed as inputs excluded)."""
    specs = []
    for value in model.graph.inputs:
        if value.name in model.graph.initializers:
            continue
        dtype = value.dtype.numpy() if value.dtype is not None else np.dtype(np.float32)
        shape = None
        if value.shape is not None:
            shape = tuple(
                d if isinstance(d, int) else (str(d) if d.value else None) for d in value.shape
            )
        specs.append(InputSpec(value.name or "", dtype, shape, _index_bound(value)))
    return specs


def parse_input_shapes(texts: list[str] | None) -> dict[str, tuple[int, ...]]:
    """Parse `NAME:1,3,224,224` options into a name -> shape mapping."""
    shapes: dict[str, tuple[int, ...]] = {}
    for text in texts or []:
        name, sep, dims = text.rpartition(":")
        if not sep or not name:
            raise UsageError(f"--input-shape {text!r}: expected NAME:D1,D2,...")
        try:
            shapes[name] = tuple(int(d) for d in dims.split(",") if d.strip())
        except ValueError as exc:
            raise UsageError(f"--input-shape {text!r}: dimensions must be integers") from exc
        if any(d <= 0 for d in shapes[name]):
            raise UsageError(f"--input-shape {text!r}: dimensions must be positive")
    return shapes


def concrete_shape(
    spec: InputSpec, overrides: Mapping[str, tuple[int, ...]] | None = None, free_dim: int = 1
) -> tuple[int, ...]:
    """A runnable shape for `spec`: the override if given, free dimensions set to `free_dim`."""
    if overrides and spec.name in overrides:
        return tuple(overrides[spec.name])
    if spec.shape is None:
        raise UsageError(f"input {spec.name!r} has no declared shape; give one with --input-shape")
    return tuple(d if isinstance(d, int) and d > 0 else free_dim for d in spec.shape)


def generate_feeds(
    specs: list[InputSpec],
    count: int,
    *,
    seed: int = 0,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> list[Feed]:
    """`count` deterministic random feeds: normal floats, bounded integer ids, random bools."""
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        feed: Feed = {}
        for spec in specs:
            shape = concrete_shape(spec, shapes)
            kind = spec.dtype.kind
            if kind == "f":
                feed[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
            elif kind in "iu":
                high = spec.index_bound if spec.index_bound else 4
                feed[spec.name] = rng.integers(0, max(high, 1), size=shape).astype(spec.dtype)
            elif kind == "b":
                feed[spec.name] = rng.random(shape) < 0.5
            else:
                raise UsageError(
                    f"input {spec.name!r}: cannot generate data of type {spec.dtype}; give --data"
                )
        feeds.append(feed)
    return feeds


def _index_bound(value: ir.Value) -> int | None:
    """Smallest table size among Gather/Embedding uses of `value` as indices."""
    bounds = []
    for node, index in value.uses():
        if node.op_type == "Gather" and node.domain == "" and index == 1:
            table = node.inputs[0]
            axis = node.attributes.get_int("axis", 0)
            if table is not None and table.shape is not None and isinstance(table.shape[axis], int):
                bounds.append(table.shape[axis])
    return min(bounds) if bounds else None
