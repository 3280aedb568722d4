"""Calibration and validation data readers (first cut: .npz of stacked samples).

To be completed: folders, images, ORT CalibrationDataReader, iterables, streaming checks.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from onnxslim.errors import DataError
from onnxslim.feeds import Feed


def iter_npz(path: str | Path) -> Iterator[Feed]:
    """Yield one feed per leading-axis index of the arrays in an .npz file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    with np.load(path) as archive:
        names = list(archive.files)
        count = len(archive[names[0]]) if names else 0
        for i in range(count):
            yield {name: archive[name][i] for name in names}
