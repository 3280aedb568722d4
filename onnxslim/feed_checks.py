"""A feed against the model's inputs: the one check every data reader shares.

Why its own module: the stream (`calibration`), the stacked-array reader (`npz_stream`,
which checks headers before reading a sample) and validation all compare a feed, or
an array's header, with an `InputSpec`; one implementation keeps their messages the
same (input name, what was expected, what came, which sample).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from onnxslim.errors import DataError
from onnxslim.feeds import Feed, InputSpec

ExtraPolicy = Literal["error", "ignore", "keep"]
"""Arrays that are not model inputs: "error", "ignore" (drop them), "keep" (pass them through)."""


def check_feed(
    feed: Any,
    specs: Sequence[InputSpec] | None,
    *,
    where: str,
    extra: ExtraPolicy = "error",
    optional: frozenset[str] = frozenset(),
) -> Feed:
    """`feed` as a dict of arrays fit for the model, or a DataError saying what does not fit."""
    if not isinstance(feed, Mapping):
        raise DataError(
            f"{where}: expected a mapping of input name -> array, got {type(feed).__name__}"
        )
    if specs is None:
        return {str(k): _as_array(v, str(k), where) for k, v in feed.items()}
    names = {spec.name for spec in specs}
    for spec in specs:
        if spec.name not in feed:
            raise DataError(
                f"{where}: missing input {spec.name!r} (expects {spec.describe()}); "
                f"got {_listing(feed)}"
            )
    unknown = [k for k in feed if k not in names and k not in optional]
    if unknown and extra == "error":
        raise DataError(
            f"{where}: {unknown[0]!r} is not an input of the model (inputs: "
            f"{', '.join(repr(s.name) for s in specs)})"
        )
    checked: Feed = {}
    for spec in specs:
        array = _as_array(feed[spec.name], spec.name, where)
        check_array(spec, array.dtype, array.shape, where)
        checked[spec.name] = array
    for name in feed:
        if name in optional or (extra == "keep" and name not in names):
            checked[str(name)] = feed[name]
    return checked


def check_array(spec: InputSpec, dtype: np.dtype, shape: tuple[int, ...], where: str) -> None:
    """Dtype, rank and fixed dimensions of one array against its input spec."""
    got = f"got {dtype} {list(shape)}"
    expects = f"input {spec.name!r} expects {spec.describe()}"
    if not _dtype_fits(spec.dtype, dtype):
        hint = ""
        if dtype.kind == spec.dtype.kind or {dtype.kind, spec.dtype.kind} <= set("fiub"):
            hint = f" (convert with .astype(np.{spec.dtype.name}))"
        raise DataError(f"{where}: {expects}, {got}{hint}")
    if spec.shape is None:
        return
    if len(shape) != len(spec.shape):
        hint = (
            " (missing the batch axis? add one with array[None])"
            if len(shape) + 1 == len(spec.shape)
            else ""
        )
        raise DataError(
            f"{where}: {expects}, {got}: rank {len(shape)} instead of {len(spec.shape)}{hint}"
        )
    for axis, (want, have) in enumerate(zip(spec.shape, shape, strict=True)):  # ranks equal
        if isinstance(want, int) and want > 0 and want != have:
            raise DataError(f"{where}: {expects}, {got}: axis {axis} is {have}, must be {want}")


def _dtype_fits(want: np.dtype, have: np.dtype) -> bool:
    if want.kind in "OUS":  # string inputs: any string-like array
        return have.kind in "OUS"
    return want == have


def _as_array(value: Any, name: str, where: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, np.generic):
        return np.asarray(value)
    if hasattr(value, "__array__") or isinstance(value, (list, tuple, int, float, bool)):
        try:
            return np.asarray(value)
        except Exception as exc:  # noqa: BLE001  (ragged lists and the like)
            raise DataError(f"{where}: input {name!r} is not an array ({exc})") from exc
    raise DataError(f"{where}: input {name!r} is a {type(value).__name__}, expected a numpy array")


def _listing(feed: Mapping[str, Any]) -> str:
    if not feed:
        return "no arrays"
    return "arrays " + ", ".join(repr(k) for k in feed)


class OriginFeed(dict):
    """A feed that knows which file it came from, so errors can name the file."""

    def __init__(self, arrays: Mapping[str, np.ndarray], origin: str) -> None:
        super().__init__(arrays)
        self.origin = origin
