"""The data options of a command: image folders get one stated, printed preprocessing.

Why here and not deep in the readers: a folder of pictures becomes model input only
through a preprocessing (size, scale, mean/std, channel order) that is easy to get
silently wrong. The command settles it once, before any work, against the model
the data feeds: refused (exit 2, naming what to pass) when the model contradicts
the guess, printed as one line on stderr otherwise, recorded in the JSON report,
and handed down as an `ImageFolder`, so every later reading uses exactly it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import onnx_ir as ir
import typer

from onnxslim import io
from onnxslim.cli._app import err
from onnxslim.errors import UsageError
from onnxslim.images import ImageFolder, ImagePreprocessing, image_files, resolve_folder
from onnxslim.passes.fold import FixInputShapes

IMAGE_PREPROCESS = typer.Option(
    None,
    "--image-preprocess",
    metavar="KEY=VALUE;...",
    help="How image files become input, e.g. 'size=224,224;scale=1/255;"
    "mean=0.485,0.456,0.406;std=0.229,0.224,0.225;order=RGB;resize=crop' (keys: size, "
    "layout, scale, mean, std, order, resize, channels). Unstated keys are guessed from "
    "the model's input; a guess the model contradicts is refused.",
)


class DataOptions:
    """Resolves a command's data paths against its model; remembers what it applied."""

    def __init__(
        self, model: Path, image_preprocess: str | None, input_shapes: list[str] | None = None
    ) -> None:
        self.given = ImagePreprocessing.parse(image_preprocess) if image_preprocess else None
        self._model_path = model
        self._input_shapes = tuple(input_shapes or ())
        self._model: ir.Model | None = None
        self._folders: dict[Path, ImageFolder] = {}
        self.applied: dict[str, dict[str, str]] = {}  # option -> {folder, preprocessing}

    def source(self, path: str | Path | None, option: str) -> str | os.PathLike[str] | None:
        """`path` as the command passes it on: an image folder becomes an ImageFolder."""
        if path is None:
            return None
        folder = Path(path)
        if not image_files(folder):
            return path
        key = folder.resolve()
        if key not in self._folders:
            resolved = resolve_folder(folder, self._load(), self.given)
            assert resolved is not None  # image_files found pictures in it
            self._folders[key] = resolved
            err.print(resolved.notice(option, self.given), markup=False, highlight=False)
        self.applied[option] = {
            "folder": str(path),
            "preprocessing": self._folders[key].preprocessing.describe(),
        }
        return self._folders[key]

    def check_used(self) -> None:
        """--image-preprocess with no image folder to apply it to is a mistake: say so."""
        if self.given is not None and not self.applied:
            raise UsageError(
                "--image-preprocess applies to folders of images; no data option of this "
                "command names one"
            )

    def record(self) -> dict[str, Any]:
        """What goes into the JSON report (nothing when no image folder was read)."""
        return {"image_preprocessing": dict(self.applied)} if self.applied else {}

    def _load(self) -> ir.Model:
        if self._model is None:
            model = io.load(self._model_path)
            if self._input_shapes:  # the shapes the command fixes before feeding the model
                FixInputShapes(shapes=self._input_shapes)(model)
            self._model = model
        return self._model
