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
  the model's input shape.

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
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Literal, Protocol, Union, runtime_checkable

import numpy as np
import onnx_ir as ir

from onnxslim.errors import DataError, UsageError
from onnxslim.feeds import Feed, InputSpec, input_specs


@runtime_checkable
class CalibrationDataReaderLike(Protocol):
    """What ONNX Runtime's `CalibrationDataReader` offers: `get_next()` until None."""

    def get_next(self) -> Mapping[str, Any] | None: ...


FeedSource = Union[str, os.PathLike, CalibrationDataReaderLike, Iterable[Mapping[str, Any]]]
"""Anything `open_feeds` reads: a path (.npz, .npy, folder), an ORT reader, an iterable of dicts."""

ExtraPolicy = Literal["error", "ignore", "keep"]

ARRAY_SUFFIXES = (".npz", ".npy")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


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
    the model's input shape. `extra` says what to do with arrays that are not
    model inputs: "error" (default), "ignore" (drop them, e.g. an eval file's
    `labels`), or "keep" (pass them through unchecked). Nothing heavy is read
    here, only headers and file lists, so errors in them surface at once.
    """
    if limit is not None and limit < 0:
        raise UsageError(f"limit must be >= 0, got {limit}")
    if extra not in ("error", "ignore", "keep"):
        raise UsageError(f"extra must be 'error', 'ignore' or 'keep', got {extra!r}")
    specs, optional = _specs_of(model_or_specs)
    common = dict(specs=specs, optional=optional, extra=extra, limit=limit)
    if isinstance(source, (str, os.PathLike)):
        return _open_path(Path(source), specs, image_preprocessing, common)
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
    samples = _StackedArrays(Path(path))
    yield from samples.iterate()


# --- checks ----------------------------------------------------------------------------------


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
    for axis, (want, have) in enumerate(zip(spec.shape, shape)):
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


def _specs_of(
    model_or_specs: ir.Model | Sequence[InputSpec] | None,
) -> tuple[list[InputSpec] | None, frozenset[str]]:
    """The inputs to check, and inputs that may be fed but need not be (initializer defaults)."""
    if model_or_specs is None:
        return None, frozenset()
    if isinstance(model_or_specs, ir.Model):
        graph = model_or_specs.graph
        optional = frozenset(v.name for v in graph.inputs if v.name in graph.initializers)
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
    count = len(items) if isinstance(items, Sequence) or hasattr(items, "__len__") else None
    description = "given feeds" if isinstance(items, Sequence) else f"given {type(items).__name__}"
    return FeedStream(
        lambda: iter(items), description=description, count=count, once=once, **common
    )


# --- sources: files and folders --------------------------------------------------------------


def _open_path(
    path: Path,
    specs: list[InputSpec] | None,
    image_preprocessing: ImagePreprocessing | str | None,
    common: dict[str, Any],
) -> FeedStream:
    if not path.exists():
        raise DataError(f"{path}: data file or folder not found")
    if path.is_dir():
        return _open_folder(path, specs, image_preprocessing, common)
    suffix = path.suffix.lower()
    if suffix in (".npz", ".npy"):
        stacked = _StackedArrays(
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
                yield _OriginFeed(_read_array_file(file, single), str(file))

        return FeedStream(read, description=str(folder), count=len(arrays), once=False, **common)
    if images:
        reader = _ImageReader(folder, images, specs, image_preprocessing)
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


class _OriginFeed(dict):
    """A feed that knows which file it came from, so errors can name the file."""

    def __init__(self, arrays: Mapping[str, np.ndarray], origin: str) -> None:
        super().__init__(arrays)
        self.origin = origin


def _single_input(specs: list[InputSpec] | None, where: Path) -> str:
    if specs is None or len(specs) != 1:
        count = "an unknown number of" if specs is None else str(len(specs))
        raise DataError(
            f"{where}: .npy data holds one array per sample, but the model has {count} inputs; "
            "use .npz files with one array named after each input"
        )
    return specs[0].name


def _read_array_file(file: Path, single_input: str | None) -> dict[str, np.ndarray]:
    try:
        if file.suffix.lower() == ".npy":
            assert single_input is not None
            return {single_input: np.load(file, allow_pickle=False)}
        with np.load(file, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{file}: cannot read ({_first_line(exc)})") from exc


def _natural_key(name: str) -> tuple[Any, ...]:
    """sample_2 before sample_10."""
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name))


@dataclass
class _Member:
    name: str  # input name
    entry: str  # zip member name ('' for a .npy file)
    dtype: np.dtype
    shape: tuple[int, ...]
    fortran: bool


class _StackedArrays:
    """Arrays stacked on a leading sample axis, read one sample at a time.

    For .npz, each member is opened as a zip stream and read row by row, so a
    deflated archive is decompressed incrementally and memory holds one sample.
    (Fortran-ordered arrays, whose rows are not contiguous, are the exception:
    they are loaded whole once per pass.) A .npy file is memory-mapped.
    """

    def __init__(self, path: Path, single_input: str | None = None) -> None:
        self.path = path
        self.members: list[_Member] = []
        try:
            if path.suffix.lower() == ".npy":
                if not path.is_file():
                    raise DataError(f"{path}: data file not found")
                with open(path, "rb") as fp:
                    member = _read_header(fp, single_input or path.stem, "", str(path))
                self.members.append(member)
            else:
                if not path.is_file():
                    raise DataError(f"{path}: data file not found")
                with zipfile.ZipFile(path) as archive:
                    for entry in archive.namelist():
                        if not entry.endswith(".npy"):
                            continue
                        with archive.open(entry) as fp:
                            self.members.append(
                                _read_header(fp, entry[:-4], entry, f"{path}:{entry}")
                            )
        except (OSError, zipfile.BadZipFile, EOFError, ValueError) as exc:
            raise DataError(f"{path}: cannot read ({_first_line(exc)})") from exc
        if not self.members:
            raise DataError(f"{path}: holds no arrays")
        counts = {m.name: (m.shape[0] if m.shape else None) for m in self.members}
        for m in self.members:
            if not m.shape:
                raise DataError(
                    f"{path}: array {m.name!r} is a scalar; each array needs a leading sample "
                    "axis (array[i] is the feed of sample i)"
                )
        if len(set(counts.values())) > 1:
            listing = ", ".join(f"{k!r}: {v}" for k, v in counts.items())
            raise DataError(f"{path}: arrays disagree on the number of samples ({listing})")
        self.count = self.members[0].shape[0]

    def check_against(
        self, specs: Sequence[InputSpec], optional: frozenset[str], extra: ExtraPolicy
    ) -> None:
        """Headers against the model's inputs, before reading any sample."""
        by_name = {m.name: m for m in self.members}
        for spec in specs:
            if spec.name not in by_name:
                raise DataError(
                    f"{self.path}: no array for input {spec.name!r} (expects {spec.describe()} per "
                    f"sample, stacked on a new leading axis); arrays: "
                    f"{', '.join(repr(n) for n in by_name)}"
                )
            member = by_name[spec.name]
            check_array(
                spec,
                member.dtype,
                member.shape[1:],
                f"{self.path}: array {spec.name!r} (per sample, after the leading axis)",
            )
        names = {s.name for s in specs}
        if extra == "error":
            for name in by_name:
                if name not in names and name not in optional:
                    raise DataError(
                        f"{self.path}: array {name!r} is not an input of the model (inputs: "
                        f"{', '.join(repr(s.name) for s in specs)})"
                    )

    def iterate(self) -> Iterator[Mapping[str, np.ndarray]]:
        if self.path.suffix.lower() == ".npy":
            member = self.members[0]
            array = np.load(self.path, mmap_mode="r", allow_pickle=False)
            for i in range(self.count):
                yield {member.name: np.array(array[i])}
            return
        with zipfile.ZipFile(self.path) as archive:
            readers = [_RowReader(archive, m, self.path) for m in self.members]
            try:
                for i in range(self.count):
                    yield {r.member.name: r.row(i) for r in readers}
            finally:
                for r in readers:
                    r.close()


class _RowReader:
    """Sequential rows of one .npz member."""

    def __init__(self, archive: zipfile.ZipFile, member: _Member, path: Path) -> None:
        self.member = member
        self._path = path
        self._whole: np.ndarray | None = None
        self._fp = archive.open(member.entry)
        _read_header(self._fp, member.name, member.entry, str(path))
        if member.fortran:
            self._whole = _read_rest(self._fp, member)
        self._row_shape = member.shape[1:]
        self._row_bytes = int(np.prod(self._row_shape, dtype=np.int64)) * member.dtype.itemsize

    def row(self, index: int) -> np.ndarray:
        if self._whole is not None:
            return np.array(self._whole[index])
        out = np.empty(self._row_shape, dtype=self.member.dtype)
        view = memoryview(out.reshape(-1).view(np.uint8)) if self._row_bytes else memoryview(b"")
        filled = 0
        while filled < self._row_bytes:
            got = self._fp.readinto(view[filled:])
            if not got:
                raise DataError(
                    f"{self._path}: array {self.member.name!r} ends early at sample {index} "
                    "(file truncated?)"
                )
            filled += got
        return out

    def close(self) -> None:
        self._fp.close()


def _read_rest(fp: Any, member: _Member) -> np.ndarray:
    data = fp.read()
    return np.frombuffer(data, dtype=member.dtype).reshape(member.shape, order="F")


def _read_header(fp: Any, name: str, entry: str, where: str) -> _Member:
    from numpy.lib import format as npformat

    version = npformat.read_magic(fp)
    if version == (1, 0):
        shape, fortran, dtype = npformat.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, fortran, dtype = npformat.read_array_header_2_0(fp)
    else:  # 3.0 differs only in header encoding; numpy has no public reader for it
        shape, fortran, dtype = npformat._read_array_header(fp, version)  # noqa: SLF001
    if dtype.hasobject:
        raise DataError(
            f"{where}: array {name!r} holds Python objects; only numeric arrays are read"
        )
    return _Member(name, entry, np.dtype(dtype), tuple(int(d) for d in shape), bool(fortran))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


# --- images ----------------------------------------------------------------------------------

_LAYOUTS = ("NCHW", "NHWC")
_ORDERS = ("RGB", "BGR")
_RESIZE = ("stretch", "crop")


@dataclass(frozen=True)
class ImagePreprocessing:
    """How an image file becomes a model input.

    pixel values (0..255) -> `* scale` -> `(x - mean) / std` per channel -> `layout`,
    after resizing to `size` (height, width): "stretch" resizes directly, "crop"
    scales the shorter side to fit and center-crops. `order` is the channel order
    the model was trained with; one-channel models read images as grayscale.
    Fields left None come from the model's input shape (size, layout, channels)
    and dtype (scale: 1/255 for float inputs, 1 for integer inputs).
    """

    size: tuple[int, int] | None = None
    layout: str | None = None
    scale: float | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    order: str = "RGB"
    resize: str = "stretch"
    channels: int | None = None
    batch: bool | None = None  # add a leading batch axis of 1; None: when the model's rank says so

    def __post_init__(self) -> None:
        if self.layout is not None and self.layout not in _LAYOUTS:
            raise UsageError(f"image layout must be NCHW or NHWC, got {self.layout!r}")
        if self.order not in _ORDERS:
            raise UsageError(f"image channel order must be RGB or BGR, got {self.order!r}")
        if self.resize not in _RESIZE:
            raise UsageError(f"image resize must be 'stretch' or 'crop', got {self.resize!r}")
        if self.size is not None and (len(self.size) != 2 or min(self.size) <= 0):
            raise UsageError(
                f"image size must be two positive integers (height, width), got {self.size}"
            )
        if self.scale is not None and not self.scale > 0:
            raise UsageError(f"image scale must be positive, got {self.scale}")
        if any(s == 0 for s in self.std):
            raise UsageError("image std must not contain 0")
        if self.channels is not None and self.channels not in (1, 3):
            raise UsageError(f"image channels must be 1 or 3, got {self.channels}")

    @classmethod
    def parse(cls, text: str) -> ImagePreprocessing:
        """Parse the CLI form: `size=224,224;layout=NCHW;scale=0.00392;mean=0.485,0.456,0.406;
        std=0.229,0.224,0.225;order=RGB;resize=crop` (any subset, any order)."""
        values: dict[str, Any] = {}
        for part in re.split(r"[;\s]+", text.strip()):
            if not part:
                continue
            key, sep, value = part.partition("=")
            key = key.strip().lower()
            if not sep or not value:
                raise UsageError(f"image preprocessing {part!r}: expected key=value")
            try:
                if key == "size":
                    dims = _floats(value, int)
                    values["size"] = (dims[0], dims[0]) if len(dims) == 1 else tuple(dims)
                elif key in ("mean", "std"):
                    values[key] = tuple(_floats(value, float))
                elif key == "scale":
                    values["scale"] = _fraction(value)
                elif key in ("layout", "order"):
                    values[key] = value.strip().upper()
                elif key == "resize":
                    values["resize"] = value.strip().lower()
                elif key == "channels":
                    values["channels"] = int(value)
                else:
                    raise UsageError(
                        f"image preprocessing: unknown key {key!r} "
                        "(known: size, layout, scale, mean, std, order, resize, channels)"
                    )
            except ValueError as exc:
                raise UsageError(f"image preprocessing {part!r}: {exc}") from exc
        return cls(**values)

    def describe(self) -> str:
        parts = []
        if self.size:
            parts.append(f"size={self.size[0]},{self.size[1]}")
        if self.layout:
            parts.append(f"layout={self.layout}")
        if self.scale is not None:
            parts.append(f"scale={self.scale:g}")
        parts.append("mean=" + ",".join(f"{m:g}" for m in self.mean))
        parts.append("std=" + ",".join(f"{s:g}" for s in self.std))
        parts.append(f"order={self.order}")
        parts.append(f"resize={self.resize}")
        return ";".join(parts)


def parse_image_preprocessing(text: str | None) -> ImagePreprocessing | None:
    """The `--image-preprocess` option: None stays None (infer everything from the model)."""
    return None if text is None else ImagePreprocessing.parse(text)


def _floats(text: str, kind: type) -> list:
    items = [t for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError("no numbers")
    return [kind(t) for t in items]


def _fraction(text: str) -> float:
    """`0.00392` or `1/255`."""
    num, sep, den = text.partition("/")
    return float(num) / float(den) if sep else float(num)


@dataclass
class _ImageReader:
    folder: Path
    files: list[str]  # names inside `folder`
    specs: list[InputSpec] | None
    given: ImagePreprocessing | str | None
    preprocessing: ImagePreprocessing = field(init=False)

    def __post_init__(self) -> None:
        try:
            import PIL.Image  # noqa: F401
        except ImportError as exc:
            raise DataError(
                f"{self.folder}: reading images needs Pillow (pip install 'onnxslim[images]')"
            ) from exc
        given = self.given
        if isinstance(given, str):
            given = ImagePreprocessing.parse(given)
        if self.specs is None or len(self.specs) != 1:
            count = "unknown" if self.specs is None else len(self.specs)
            raise DataError(
                f"{self.folder}: an image folder feeds a model with one input; this model has "
                f"{count} inputs"
            )
        self.spec = self.specs[0]
        self.preprocessing = _resolve(given or ImagePreprocessing(), self.spec, self.folder)

    def iterate(self) -> Iterator[Mapping[str, np.ndarray]]:
        for name in self.files:
            file = self.folder / name
            yield _OriginFeed({self.spec.name: self.load(file)}, str(file))

    def load(self, file: Path) -> np.ndarray:
        import PIL.Image

        p = self.preprocessing
        assert p.size is not None and p.layout is not None and p.scale is not None
        try:
            with PIL.Image.open(file) as image:
                image = image.convert("L" if p.channels == 1 else "RGB")
                image = _resize(image, p.size, p.resize)
                pixels = np.asarray(image, dtype=np.float32)
        except (OSError, ValueError, PIL.Image.DecompressionBombError) as exc:
            raise DataError(f"{file}: cannot read as an image ({_first_line(exc)})") from exc
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        if p.order == "BGR" and pixels.shape[2] == 3:
            pixels = pixels[:, :, ::-1]
        x = pixels * np.float32(p.scale)
        x = (x - np.asarray(p.mean, np.float32)) / np.asarray(p.std, np.float32)
        if p.layout == "NCHW":
            x = x.transpose(2, 0, 1)
        if p.batch:
            x = x[None]
        dtype = self.spec.dtype
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            x = np.clip(np.rint(x), info.min, info.max)
        return np.ascontiguousarray(x.astype(dtype))


def _resize(image: Any, size: tuple[int, int], mode: str) -> Any:
    import PIL.Image

    height, width = size
    if mode == "crop":
        factor = max(width / image.width, height / image.height)
        scaled = (
            max(width, round(image.width * factor)),
            max(height, round(image.height * factor)),
        )
        image = image.resize(scaled, PIL.Image.Resampling.BILINEAR)
        left, top = (image.width - width) // 2, (image.height - height) // 2
        return image.crop((left, top, left + width, top + height))
    if image.size != (width, height):
        image = image.resize((width, height), PIL.Image.Resampling.BILINEAR)
    return image


def _resolve(given: ImagePreprocessing, spec: InputSpec, folder: Path) -> ImagePreprocessing:
    """Fill the fields left None from the model's input."""
    shape = spec.shape
    if spec.dtype.kind not in "fiu":
        raise DataError(
            f"{folder}: input {spec.name!r} is {spec.dtype}; images feed numeric inputs"
        )
    if shape is not None and len(shape) not in (3, 4):
        raise DataError(
            f"{folder}: input {spec.name!r} expects {spec.describe()}; images feed inputs of "
            "rank 4 (NCHW/NHWC) or 3 (CHW/HWC)"
        )
    batch = given.batch if given.batch is not None else (shape is None or len(shape) == 4)
    dims = list(shape[1:] if shape is not None and len(shape) == 4 else shape or [None] * 3)
    layout = given.layout
    if layout is None:
        first, last = dims[0], dims[2]
        if first in (1, 3) and last not in (1, 3):
            layout = "NCHW"
        elif last in (1, 3) and first not in (1, 3):
            layout = "NHWC"
        else:
            raise DataError(
                f"{folder}: cannot tell the layout of input {spec.name!r} ({spec.describe()}); "
                "state it with layout=NCHW or layout=NHWC"
            )
    channel, height, width = (
        (dims[0], dims[1], dims[2]) if layout == "NCHW" else (dims[2], dims[0], dims[1])
    )
    size = given.size
    if size is None:
        if not (isinstance(height, int) and isinstance(width, int)):
            raise DataError(
                f"{folder}: input {spec.name!r} ({spec.describe()}) has no fixed height and width; "
                "state them with size=H,W"
            )
        size = (height, width)
    channels = given.channels or (channel if channel in (1, 3) else 3)
    scale = given.scale if given.scale is not None else (1 / 255 if spec.dtype.kind == "f" else 1.0)
    for label, values in (("mean", given.mean), ("std", given.std)):
        if len(values) not in (1, channels):
            raise UsageError(
                f"image {label} has {len(values)} values; the model takes {channels} channels"
            )
    return ImagePreprocessing(
        size=tuple(size),
        layout=layout,
        scale=scale,
        mean=given.mean,
        std=given.std,
        order=given.order,
        resize=given.resize,
        channels=channels,
        batch=batch,
    )
