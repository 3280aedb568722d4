"""Stacked .npz/.npy sample files, streamed one sample at a time.

Why its own module: calibration sets grow to thousands of samples; reading an .npz
member row by row through its zip stream (stored or deflated alike) keeps one sample
in memory, and that needs the .npy header parsing and row reading that live here.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from numpy.lib import format as npformat

from onnxslim.errors import DataError, first_line
from onnxslim.feed_checks import ExtraPolicy, check_array
from onnxslim.feeds import InputSpec


def read_array_file(file: Path, single_input: str | None) -> dict[str, np.ndarray]:
    try:
        if file.suffix.lower() == ".npy":
            assert single_input is not None
            return {single_input: np.load(file, allow_pickle=False)}
        with np.load(file, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{file}: cannot read ({first_line(exc)})") from exc


@dataclass
class Member:
    name: str  # input name
    entry: str  # zip member name ('' for a .npy file)
    dtype: np.dtype
    shape: tuple[int, ...]
    fortran: bool


class StackedArrays:
    """Arrays stacked on a leading sample axis, read one sample at a time.

    For .npz, each member is opened as a zip stream and read row by row, so a
    deflated archive is decompressed incrementally and memory holds one sample.
    (Fortran-ordered arrays, whose rows are not contiguous, are the exception:
    they are loaded whole once per pass.) A .npy file is memory-mapped.
    """

    def __init__(self, path: Path, single_input: str | None = None) -> None:
        self.path = path
        self.members: list[Member] = []
        try:
            if path.suffix.lower() == ".npy":
                if not path.is_file():
                    raise DataError(f"{path}: data file not found")
                with open(path, "rb") as fp:
                    self.members.append(_read_header(fp, single_input or path.stem, "", str(path)))
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
            raise DataError(f"{path}: cannot read ({first_line(exc)})") from exc
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

    def iterate(self) -> Iterator[dict[str, np.ndarray]]:
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

    def __init__(self, archive: zipfile.ZipFile, member: Member, path: Path) -> None:
        self.member = member
        self._path = path
        self._whole: np.ndarray | None = None
        fp = archive.open(member.entry)
        assert isinstance(fp, io.BufferedIOBase)  # a ZipExtFile: readinto() fills rows in place
        self._fp = fp
        _read_header(self._fp, member.name, member.entry, str(path))
        if member.fortran:
            self._whole = _read_rest(self._fp, member)
        self._row_shape = member.shape[1:]
        self._row_bytes = int(np.prod(self._row_shape, dtype=np.int64)) * member.dtype.itemsize

    def row(self, index: int) -> np.ndarray:
        if self._whole is not None:
            return np.array(self._whole[index])
        out = np.empty(self._row_shape, dtype=self.member.dtype)
        view = out.reshape(-1).view(np.uint8).data
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


def _read_rest(fp: IO[bytes], member: Member) -> np.ndarray:
    data = fp.read()
    return np.frombuffer(data, dtype=member.dtype).reshape(member.shape, order="F")


def _read_header(fp: IO[bytes], name: str, entry: str, where: str) -> Member:
    version = npformat.read_magic(fp)
    if version == (1, 0):
        shape, fortran, dtype = npformat.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, fortran, dtype = npformat.read_array_header_2_0(fp)
    else:  # 3.0 differs only in header encoding; numpy has no public reader (nor stub) for it
        read_header = npformat._read_array_header  # type: ignore[attr-defined]
        shape, fortran, dtype = read_header(fp, version)
    if dtype.hasobject:
        raise DataError(
            f"{where}: array {name!r} holds Python objects; only numeric arrays are read"
        )
    return Member(name, entry, np.dtype(dtype), tuple(int(d) for d in shape), bool(fortran))
