"""Input specifications of a model, and generated inputs when the user gives no data.

Generated feeds are deterministic (seeded) and respect what the graph says of each
input: its dtype, its fixed dimensions, and for integer inputs that index a Gather,
the size of the table they index, so an embedding model is fed valid token ids.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from onnxslim.errors import UsageError

Feed = dict[str, np.ndarray]
logger = logging.getLogger("onnxslim")
# One generated feed may not take more than this (a declared [2**40] input is refused
# before allocation); `max_bytes` raises it.
DEFAULT_FEED_BYTES = 1 << 30


class FeedTooLarge(UsageError):
    """A generated feed would exceed the size ceiling; nothing was allocated."""


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
        try:
            dtype = value.dtype.numpy() if value.dtype is not None else np.dtype(np.float32)
        except TypeError:  # UNDEFINED and types numpy has no form for
            dtype = np.dtype(np.float32)
        shape = None
        if value.shape is not None:
            shape = tuple(_dim(value.name or "", axis, d) for axis, d in enumerate(value.shape))
        specs.append(InputSpec(value.name or "", dtype, shape, _index_bound(value)))
    return specs


def _dim(name: str, axis: int, dim: object) -> int | str | None:
    """A declared dimension; a negative one is read as free, with a warning."""
    if isinstance(dim, int):
        if dim < 0:
            logger.warning(
                "input %r declares dimension %d at axis %d; read as free", name, dim, axis
            )
            return None
        return dim
    value = getattr(dim, "value", None)
    return str(value) if value else None


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
    max_bytes: int = DEFAULT_FEED_BYTES,
) -> list[Feed]:
    """`count` deterministic random feeds: normal floats, bounded integer ids, random bools,
    short strings. The size of one feed is estimated first: over `max_bytes` it is a
    FeedTooLarge error naming the input, before anything is allocated."""
    resolved = {spec.name: concrete_shape(spec, shapes) for spec in specs}
    check_feed_size(specs, resolved, max_bytes)
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        feeds.append({spec.name: _random_array(spec, resolved[spec.name], rng) for spec in specs})
    return feeds


def feed_bytes(spec: InputSpec, shape: tuple[int, ...]) -> int:
    """Bytes one generated array of `spec` at `shape` takes (strings: 16 per element)."""
    itemsize = 16 if spec.dtype.kind in "OUS" else max(spec.dtype.itemsize, 1)
    return math.prod(shape) * itemsize


def check_feed_size(
    specs: list[InputSpec], shapes: Mapping[str, tuple[int, ...]], max_bytes: int
) -> None:
    """FeedTooLarge when one feed at `shapes` would need more than `max_bytes`."""
    sizes = {s.name: feed_bytes(s, tuple(shapes[s.name])) for s in specs}
    if sum(sizes.values()) > max_bytes:
        name = max(sizes, key=sizes.__getitem__)
        raise FeedTooLarge(
            f"input {name!r}: a generated {next(s.dtype for s in specs if s.name == name)} "
            f"{list(shapes[name])} needs {_human(sizes[name])}, over the "
            f"{_human(max_bytes)} ceiling for generated inputs; give --data or --input-shape"
        )


def _random_array(spec: InputSpec, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    kind = spec.dtype.kind
    if kind == "f" or spec.dtype.name == "bfloat16":
        return np.asarray(rng.standard_normal(shape)).astype(spec.dtype)
    if kind in "iu":
        high = spec.index_bound if spec.index_bound else 4
        return np.asarray(rng.integers(0, max(high, 1), size=shape)).astype(spec.dtype)
    if kind == "b":
        return np.asarray(rng.random(shape) < 0.5)  # a scalar would be np.bool_, which ORT refuses
    if kind in "OUS":
        words = np.array(["a", "onnx", "slim", "model", "0"], dtype=object)
        return np.asarray(words[rng.integers(0, len(words), size=shape)], dtype=object)
    raise UsageError(f"input {spec.name!r}: cannot generate data of type {spec.dtype}; give --data")


def _human(size: float) -> str:
    """Binary units, labelled as such (MiB, not "MB"), as inspect and validate print them."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if size < 1024 or unit == "PiB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} bytes"


def _index_bound(value: ir.Value) -> int | None:
    """Smallest table size among Gather/Embedding uses of `value` as indices."""
    bounds: list[int] = []
    for node, index in value.uses():
        if node.op_type == "Gather" and node.domain == "" and index == 1:
            table = node.inputs[0]
            axis = node.attributes.get_int("axis", 0)
            if (
                table is None
                or table.shape is None
                or not -len(table.shape) <= axis < len(table.shape)
            ):
                continue  # a hostile axis must not crash feed generation
            size = table.shape[axis]
            if isinstance(size, int):
                bounds.append(size)
    return min(bounds) if bounds else None
