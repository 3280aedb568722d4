"""Calibration and validation data: one protocol, many sources, streamed and checked.

Everything that feeds a model (calibration, validation, evaluation) reads through
`open_feeds(source, model)`, which returns a `FeedStream`: an iterable of feeds
(input name -> numpy array). The sources it accepts:

- an ONNX Runtime `CalibrationDataReader` (anything with `get_next()`), used unchanged:
  `get_next()` until it returns None;
- any Python iterable of dicts (a list, a generator, ...);
- an `.npz` file whose arrays hold N samples stacked on a new leading axis
  (`array[i]` is one feed for that input), or an `.npy` file the same way for a
  single-input model;
- a folder of `.npz` files (one feed each, arrays named after the inputs) or of
  `.npy` files (one feed each, single-input models);
- a folder of images, with a stated `ImagePreprocessing`, or one inferred from
  the model's input shape (refused when the model contradicts the guess), or an
  `images.ImageFolder` (a folder with its preprocessing, what the CLI passes on).

This module is the stream and the dispatch on the kind of source; the readers it
dispatches to live in `npz_stream` (stacked arrays) and `images` (picture folders),
and the check of each feed against the model's inputs in `feed_checks`.

Why streaming: calibration sets grow to thousands of samples, and every reader
here holds one sample at a time. An `.npz` member is read row by row through the
zip stream (stored or deflated alike), never loaded whole.

Why strict checks: a float64 array or a missing batch axis fails deep inside ONNX
Runtime with a message that names neither the sample nor the file; here every
feed is checked against the model's inputs first, and the error names the input,
what was expected, what came, and which sample.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from itertools import islice
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import onnx_ir as ir

from onnxslim.errors import DataError, UsageError
from onnxslim.feed_checks import ExtraPolicy, OriginFeed, check_feed
from onnxslim.feeds import Feed, InputSpec, input_specs
from onnxslim.images import (
    IMAGE_SUFFIXES,
    ImageFolder,
    ImagePreprocessing,
    ImageReader,
)
from onnxslim.npz_stream import StackedArrays, read_array_file


@runtime_checkable
class CalibrationDataReaderLike(Protocol):
    """What ONNX Runtime's `CalibrationDataReader` offers: `get_next()` until None."""

    def get_next(self) -> Mapping[str, Any] | None: ...


FeedSource = str | os.PathLike[str] | CalibrationDataReaderLike | Iterable[Mapping[str, Any]]
"""Anything `open_feeds` reads: a path (.npz, .npy, folder), an ORT reader, an iterable of dicts."""

ARRAY_SUFFIXES = (".npz", ".npy")


# --- the stream ------------------------------------------------------------------------------


class FeedStream:
    """Checked feeds from one source; iterate it (again, when the source allows).

    `count` is the number of feeds when known before reading (files, folders,
    sequences, readers with `len()`), else None; `len()` works only when known.
    """

    def __init__(
        self,
        open_iter: Callable[[], Iterator[Mapping[str, Any]]],
        *,
        description: str,
        count: int | None,
        specs: Sequence[InputSpec] | None,
        optional: frozenset[str],
        extra: ExtraPolicy,
        limit: int | None,
        once: bool,
    ) -> None:
        self._open = open_iter
        self.description = description
        self.count = count if limit is None or count is None else min(count, limit)
        self._specs = specs
        self._optional = optional
        self._extra = extra
        self._limit = limit
        self._once = once
        self._iterated = False

    def __len__(self) -> int:
        if self.count is None:
            raise TypeError(f"{self.description}: number of feeds not known before reading")
        return self.count

    def __iter__(self) -> Iterator[Feed]:
        if self._once and self._iterated:
            raise DataError(
                f"{self.description} can be read only once (an iterator or a reader without "
                "rewind()); pass a list, a file or a folder to read the data more than once"
            )
        self._iterated = True
        return self._checked()

    def __repr__(self) -> str:
        return f"FeedStream({self.description!r}, count={self.count})"

    def _checked(self) -> Iterator[Feed]:
        if self._limit == 0:
            return
        raw = self._open()
        if self._limit is not None:
            raw = islice(raw, self._limit)
        seen = 0
        for index, feed in enumerate(raw):
            where = getattr(feed, "origin", None) or f"{self.description}, sample {index}"
            yield check_feed(
                feed, self._specs, where=where, extra=self._extra, optional=self._optional
            )
            seen += 1
        if seen == 0:
            raise DataError(f"{self.description}: holds no samples")


def open_feeds(
    source: FeedSource,
    model_or_specs: ir.Model | Sequence[InputSpec] | None,
    *,
    limit: int | None = None,
    image_preprocessing: ImagePreprocessing | str | None = None,
    extra: ExtraPolicy = "error",
) -> FeedStream:
    """Open `source` as a stream of feeds checked against the model's inputs.

    `limit` caps the number of feeds. `image_preprocessing` applies to image
    folders (a dataclass or its `key=value;...` text); unset fields come from
    the model's input shape, and a guess the model contradicts is refused
    (UsageError naming what to state; see `image_checks`). An `images.ImageFolder`
    source carries its own preprocessing. `extra` says what to do with arrays that are not
    model inputs: "error" (default), "ignore" (drop them, e.g. an eval file's
    `labels`), or "keep" (pass them through unchecked). Nothing heavy is read
    here, only headers and file lists, so errors in them surface at once.
    """
    if limit is not None and limit < 0:
        raise UsageError(f"limit must be >= 0, got {limit}")
    if extra not in ("error", "ignore", "keep"):
        raise UsageError(f"extra must be 'error', 'ignore' or 'keep', got {extra!r}")
    specs, optional = _specs_of(model_or_specs)
    model = model_or_specs if isinstance(model_or_specs, ir.Model) else None
    common = dict(specs=specs, optional=optional, extra=extra, limit=limit)
    if isinstance(source, ImageFolder):  # a folder that carries its preprocessing
        return _open_folder(source.folder, specs, source.preprocessing, common, model)
    if isinstance(source, (str, os.PathLike)):
        return _open_path(Path(source), specs, image_preprocessing, common, model)
    if isinstance(source, Mapping):
        raise DataError(
            "a single mapping is ambiguous as a data source: pass a list of feeds ([feed]) "
            "or save stacked samples to an .npz file"
        )
    if isinstance(source, CalibrationDataReaderLike) and callable(
        getattr(source, "get_next", None)
    ):
        return _open_reader(source, common)
    if isinstance(source, Iterable):
        return _open_iterable(source, common)
    raise DataError(
        f"cannot read feeds from a {type(source).__name__}: give an .npz file, a folder, a "
        "CalibrationDataReader or an iterable of dicts"
    )


def read_feeds(
    source: FeedSource,
    model_or_specs: ir.Model | Sequence[InputSpec] | None,
    *,
    limit: int | None = None,
    **options: Any,
) -> list[Feed]:
    """All feeds of `source` in a list: for small sets only (validation, tests)."""
    return list(open_feeds(source, model_or_specs, limit=limit, **options))


def iter_npz(path: str | os.PathLike[str]) -> Iterator[Feed]:
    """Unchecked feeds of a stacked .npz file, streamed (kept for older callers)."""
    samples = StackedArrays(Path(path))
    yield from samples.iterate()


def _specs_of(
    model_or_specs: ir.Model | Sequence[InputSpec] | None,
) -> tuple[list[InputSpec] | None, frozenset[str]]:
    """The inputs to check, and inputs that may be fed but need not be (initializer defaults)."""
    if model_or_specs is None:
        return None, frozenset()
    if isinstance(model_or_specs, ir.Model):
        graph = model_or_specs.graph
        optional = frozenset(
            v.name for v in graph.inputs if v.name is not None and v.name in graph.initializers
        )
        return input_specs(model_or_specs), optional
    return list(model_or_specs), frozenset()


# --- sources: Python objects -----------------------------------------------------------------


def _open_reader(reader: CalibrationDataReaderLike, common: dict[str, Any]) -> FeedStream:
    """ORT reader: get_next() until None; a second pass needs its rewind()."""
    state = {"passes": 0}
    rewind = getattr(reader, "rewind", None)

    def read() -> Iterator[Mapping[str, Any]]:
        if state["passes"] and callable(rewind):
            rewind()
        state["passes"] += 1
        while (feed := reader.get_next()) is not None:
            yield feed

    try:
        count = len(reader)  # type: ignore[arg-type]
    except (TypeError, NotImplementedError, AttributeError):
        count = None
    name = type(reader).__name__
    return FeedStream(
        read,
        description=f"{name} (CalibrationDataReader)",
        count=count,
        once=not callable(rewind),
        **common,
    )


def _open_iterable(items: Iterable[Mapping[str, Any]], common: dict[str, Any]) -> FeedStream:
    once = iter(items) is items  # an iterator or generator: consumed by reading
    count = len(items) if isinstance(items, Sized) else None  # Sized: anything with __len__
    description = "given feeds" if isinstance(items, Sequence) else f"given {type(items).__name__}"
    if isinstance(items, FeedStream):  # a stream the workflow opened names its file
        description = items.description
    return FeedStream(
        lambda: iter(items), description=description, count=count, once=once, **common
    )


# --- sources: files and folders --------------------------------------------------------------


def _open_path(
    path: Path,
    specs: list[InputSpec] | None,
    image_preprocessing: ImagePreprocessing | str | None,
    common: dict[str, Any],
    model: ir.Model | None,
) -> FeedStream:
    if not path.exists():
        raise DataError(f"{path}: data file or folder not found")
    if path.is_dir():
        return _open_folder(path, specs, image_preprocessing, common, model)
    suffix = path.suffix.lower()
    if suffix in (".npz", ".npy"):
        stacked = StackedArrays(
            path, single_input=_single_input(specs, path) if suffix == ".npy" else None
        )
        if specs is not None:
            stacked.check_against(specs, common["optional"], common["extra"])
        return FeedStream(
            stacked.iterate, description=str(path), count=stacked.count, once=False, **common
        )
    raise DataError(
        f"{path}: unsupported data file; give an .npz (samples stacked on axis 0), an .npy, "
        "or a folder of .npz/.npy files or images"
    )


def _open_folder(
    folder: Path,
    specs: list[InputSpec] | None,
    image_preprocessing: ImagePreprocessing | str | None,
    common: dict[str, Any],
    model: ir.Model | None,
) -> FeedStream:
    # File names only (str, not Path: the listing is the one thing that grows with the
    # number of samples), in natural order so sample_2 comes before sample_10.
    with os.scandir(folder) as entries:
        names = [e.name for e in entries if not e.name.startswith(".") and e.is_file()]
    arrays = sorted((n for n in names if n.lower().endswith(ARRAY_SUFFIXES)), key=_natural_key)
    images = sorted((n for n in names if n.lower().endswith(IMAGE_SUFFIXES)), key=_natural_key)
    del names
    if arrays and images:
        raise DataError(
            f"{folder}: holds both array files ({arrays[0]}, ...) and images "
            f"({images[0]}, ...); keep one kind per folder"
        )
    if arrays:
        single = None
        if any(n.lower().endswith(".npy") for n in arrays):
            single = _single_input(specs, folder)

        def read() -> Iterator[Mapping[str, Any]]:
            for name in arrays:
                file = folder / name
                yield OriginFeed(read_array_file(file, single), str(file))

        return FeedStream(read, description=str(folder), count=len(arrays), once=False, **common)
    if images:
        reader = ImageReader(folder, images, specs, image_preprocessing, model)
        return FeedStream(
            reader.iterate,
            description=f"{folder} ({reader.preprocessing.describe()})",
            count=len(images),
            once=False,
            **common,
        )
    raise DataError(
        f"{folder}: no .npz, .npy or image files ({', '.join(IMAGE_SUFFIXES)}) in this folder"
    )


def _single_input(specs: list[InputSpec] | None, where: Path) -> str:
    if specs is None or len(specs) != 1:
        count = "an unknown number of" if specs is None else str(len(specs))
        raise DataError(
            f"{where}: .npy data holds one array per sample, but the model has {count} inputs; "
            "use .npz files with one array named after each input"
        )
    return specs[0].name


def _natural_key(name: str) -> tuple[Any, ...]:
    """sample_2 before sample_10."""
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name))
