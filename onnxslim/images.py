"""Image folders as model inputs: how a picture file becomes a feed.

Why its own module: the preprocessing (size, layout, scale, mean/std, channel order,
resize mode), its text form for the CLI, and its inference from the model's input
shape are one job apart from reading arrays; Pillow is imported only when a folder
of images is actually read.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxslim.errors import DataError, UsageError, first_line
from onnxslim.feed_checks import OriginFeed
from onnxslim.feeds import InputSpec, input_specs
from onnxslim.image_checks import doubts

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

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
    Fields left None are guessed: size, layout and channels from the model's input
    shape, scale 1/255 (float inputs) or 1 (integer inputs), mean 0, std 1, order RGB;
    a guess the model contradicts (`image_checks`) is refused, not made.
    """

    size: tuple[int, int] | None = None
    layout: str | None = None
    scale: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    order: str | None = None
    resize: str = "stretch"
    channels: int | None = None
    batch: bool | None = None  # add a leading batch axis of 1; None: when the model's rank says so

    def __post_init__(self) -> None:
        if self.layout is not None and self.layout not in _LAYOUTS:
            raise UsageError(f"image layout must be NCHW or NHWC, got {self.layout!r}")
        if self.order is not None and self.order not in _ORDERS:
            raise UsageError(f"image channel order must be RGB or BGR, got {self.order!r}")
        if self.resize not in _RESIZE:
            raise UsageError(f"image resize must be 'stretch' or 'crop', got {self.resize!r}")
        if self.size is not None and (len(self.size) != 2 or min(self.size) <= 0):
            raise UsageError(
                f"image size must be two positive integers (height, width), got {self.size}"
            )
        if self.scale is not None and not self.scale > 0:
            raise UsageError(f"image scale must be positive, got {self.scale}")
        if any(s == 0 for s in self.std or ()):
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
        """The `--image-preprocess` text of the fields set (parse(describe()) gives it back)."""
        parts = []
        if self.size:
            parts.append(f"size={self.size[0]},{self.size[1]}")
        if self.layout:
            parts.append(f"layout={self.layout}")
        if self.scale is not None:
            inverse = 1 / self.scale
            exact = abs(inverse - round(inverse)) < 1e-9 * inverse and round(inverse) > 1
            parts.append(f"scale=1/{round(inverse)}" if exact else f"scale={self.scale:g}")
        if self.mean is not None:
            parts.append("mean=" + ",".join(f"{m:g}" for m in self.mean))
        if self.std is not None:
            parts.append("std=" + ",".join(f"{s:g}" for s in self.std))
        if self.order is not None:
            parts.append(f"order={self.order}")
        parts.append(f"resize={self.resize}")
        if self.channels is not None:
            parts.append(f"channels={self.channels}")
        return ";".join(parts)

    def stated(self) -> frozenset[str]:
        """The fields given (not left to the guess)."""
        names = ("size", "layout", "scale", "mean", "std", "order", "channels")
        return frozenset(n for n in names if getattr(self, n) is not None)


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
class ImageReader:
    folder: Path
    files: list[str]  # names inside `folder`
    specs: list[InputSpec] | None
    given: ImagePreprocessing | str | None
    model: ir.Model | None = None  # for the checks of `image_checks` (None: dtype only)
    preprocessing: ImagePreprocessing = field(init=False)

    def __post_init__(self) -> None:
        try:
            import PIL.Image  # noqa: F401  (optional extra [images]: only image folders)
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
        self.preprocessing = resolve(
            given or ImagePreprocessing(), self.spec, self.folder, self.model
        )

    def iterate(self) -> Iterator[Mapping[str, np.ndarray]]:
        for name in self.files:
            file = self.folder / name
            yield OriginFeed({self.spec.name: self.load(file)}, str(file))

    def load(self, file: Path) -> np.ndarray:
        import PIL.Image  # optional extra [images], checked in __post_init__

        p = self.preprocessing
        assert p.size is not None and p.layout is not None and p.scale is not None
        try:
            with PIL.Image.open(file) as image:
                image = image.convert("L" if p.channels == 1 else "RGB")
                image = _resize(image, p.size, p.resize)
                pixels = np.asarray(image, dtype=np.float32)
        except (OSError, ValueError, PIL.Image.DecompressionBombError) as exc:
            raise DataError(f"{file}: cannot read as an image ({first_line(exc)})") from exc
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        assert p.mean is not None and p.std is not None
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
    import PIL.Image  # optional extra [images]: only image folders need it

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


def resolve(
    given: ImagePreprocessing, spec: InputSpec, folder: Path, model: ir.Model | None = None
) -> ImagePreprocessing:
    """Fill the fields left None from the model's input; refuse a guess it contradicts."""
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
    _refuse_doubtful(given, spec, folder, model)
    for label, values in (("mean", given.mean), ("std", given.std)):
        if values is not None and len(values) not in (1, channels):
            raise UsageError(
                f"image {label} has {len(values)} values; the model takes {channels} channels"
            )
    return ImagePreprocessing(
        size=size,
        layout=layout,
        scale=scale,
        mean=given.mean if given.mean is not None else (0.0,),
        std=given.std if given.std is not None else (1.0,),
        order=given.order or "RGB",
        resize=given.resize,
        channels=channels,
        batch=batch,
    )


def _refuse_doubtful(
    given: ImagePreprocessing, spec: InputSpec, folder: Path, model: ir.Model | None
) -> None:
    """One line naming the evidence and what to state, when a needed guess is doubtful."""
    found = doubts(model, spec.name, spec.dtype)
    stated = given.stated()
    open_doubts = [d for d in found if not set(d.fields) <= stated]
    if open_doubts:  # every reason and one setting to pass, so one round fixes it
        reasons = "; ".join(dict.fromkeys(d.reason for d in open_doubts))
        settings: dict[str, str] = {}
        for doubt in open_doubts:
            for item in doubt.suggestion.split(";"):
                settings.setdefault(item.partition("=")[0], item)
        suggestion = ";".join(settings.values())
        raise UsageError(
            f"{folder}: will not guess the image preprocessing: {reasons}; state it with "
            f"--image-preprocess '{suggestion}' (data.image_preprocess in a recipe, "
            "onnxslim.ImageFolder(folder, '...') in Python)"
        )


@dataclass(frozen=True)
class ImageFolder:
    """A folder of images with the preprocessing to apply: a data source that is also a path.

    Why a path too (`os.fspath` gives the folder): code that only passes data along,
    or names it in a report, keeps working, while `calibration.open_feeds` reads it
    with this preprocessing. Fields left None are guessed (and checked) against the
    model the folder is opened with. From Python:
    `onnxslim.quantize(model, calib=onnxslim.ImageFolder("imgs", "scale=1;order=BGR"))`.
    """

    folder: Path
    preprocessing: ImagePreprocessing = field(default_factory=ImagePreprocessing)

    def __post_init__(self) -> None:  # accept a str path and the CLI's text form too
        object.__setattr__(self, "folder", Path(self.folder))
        if isinstance(self.preprocessing, str):
            object.__setattr__(self, "preprocessing", ImagePreprocessing.parse(self.preprocessing))

    def __fspath__(self) -> str:
        return str(self.folder)

    def __str__(self) -> str:
        return str(self.folder)

    def describe(self) -> str:
        return f"{self.folder}: {self.preprocessing.describe()}"

    def notice(self, option: str, given: ImagePreprocessing | str | None) -> str:
        """The one line a command prints: what it applies, and which values were guesses."""
        if isinstance(given, str):
            given = ImagePreprocessing.parse(given)
        p = self.preprocessing
        taken = {"size", "layout", "channels"} | ({"order"} if p.channels == 1 else set())
        guessed = sorted(p.stated() - (given.stated() if given else frozenset()) - taken)
        how = f"; guessed: {', '.join(guessed)}" if guessed else ""
        return f"{option} {self.folder}: images read as {p.describe()}{how}"


def image_files(folder: Path) -> list[str]:
    """Names of the image files directly in `folder` (unsorted; none when not a folder)."""
    if not folder.is_dir():
        return []
    with os.scandir(folder) as entries:
        return [
            e.name
            for e in entries
            if not e.name.startswith(".")
            and e.is_file()
            and e.name.lower().endswith(IMAGE_SUFFIXES)
        ]


def resolve_folder(
    folder: str | os.PathLike[str],
    model: ir.Model,
    given: ImagePreprocessing | str | None = None,
) -> ImageFolder | None:
    """The image folder with every preprocessing field fixed for `model` (None: not images).

    What a command prints and records before any work, and what it passes on, so
    every later reading uses exactly these settings and no later guess can differ.
    """
    path = Path(folder)
    files = image_files(path)
    if not files:
        return None
    if isinstance(given, str):
        given = ImagePreprocessing.parse(given)
    reader = ImageReader(path, files, input_specs(model), given, model)
    return ImageFolder(path, reader.preprocessing)
