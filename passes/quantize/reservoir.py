"""Calibration data that can be read only once, and the feeds kept from it.

Why its own module: after calibration the latency guard and bias correction need a
few feeds again; a generator or a reader without rewind cannot give them twice, so
the first ones are kept while calibration streams the rest. Which sources are
one-shot, and how a few feeds are taken from any source, belong with that.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

import numpy as np

from onnxslim.errors import DataError

Feed = dict[str, np.ndarray]


def first_feeds(source: Iterable[Feed], count: int) -> list[Feed]:
    """Up to `count` feeds from the start of `source`; none when it cannot be read again."""
    try:
        return list(islice(iter(source), count))
    except DataError:
        return []


def one_shot(source: Any) -> bool:
    """True for sources that can be read only once (generators, readers without rewind)."""
    return isinstance(source, Iterator) or bool(getattr(source, "_once", False))


class Reservoir:
    """A one-shot feed source that keeps its first `keep` feeds for the steps after calibration."""

    def __init__(self, source: Iterable[Feed], keep: int) -> None:
        self._source = source
        self._keep = keep
        self._read = False
        self._once = True  # collect.py reads it in one pass
        self.kept: list[Feed] = []

    def __iter__(self) -> Iterator[Feed]:
        if self._read:
            raise DataError(
                "the calibration data can be read only once (an iterator or a reader); "
                "pass a list, a file or a folder to read it more than once"
            )
        self._read = True
        for feed in self._source:
            if len(self.kept) < self._keep:
                self.kept.append(feed)
            yield feed
