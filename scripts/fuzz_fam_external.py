"""Fuzz family `external`: external data that escapes the model folder or lies.

The corpus root holds `secret.bin` (outside every case folder); a tool that follows
a `../`, absolute path or symlink reads it, and its marker bytes then show up in
what the tool writes or prints. Two cases keep their data inside the folder and are
valid: they must be accepted.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from fuzz_build import SECRET_NAME, Case, mlp, save, write_calib

# (location, offset, length) per case; None leaves the key out.
Entry = tuple[str, int | None, int | None]


def _external(
    model: onnx.ModelProto, location: str, offset: int | None, length: int | None
) -> None:
    """Point initializer w2 (16x4 float, 256 bytes) at external data."""
    t = next(t for t in model.graph.initializer if t.name == "w2")
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    del t.external_data[:]
    for key, val in (("location", location), ("offset", offset), ("length", length)):
        if val is not None:
            entry = t.external_data.add()
            entry.key, entry.value = key, str(val)


def _case(
    case_id: str,
    expect: str,
    note: str,
    entry: Entry,
    setup: str = "",
) -> tuple:
    def write(folder: Path) -> bool:
        model = mlp(4)
        weights = next(t for t in model.graph.initializer if t.name == "w2").raw_data
        location, offset, length = entry
        secret = folder.parent.parent / SECRET_NAME  # corpus root: outside every case folder
        location = location.replace("{SECRET}", str(secret))
        _external(model, location, offset, length)
        save(model, folder)
        if setup == "data":
            (folder / "weights.bin").write_bytes(weights)
        elif setup == "subdir":
            (folder / "sub").mkdir(exist_ok=True)
            (folder / "sub" / "weights.bin").write_bytes(weights)
        elif setup == "short":
            (folder / "weights.bin").write_bytes(weights[:100])
        elif setup == "link-file":
            os.symlink(os.path.relpath(secret, folder), folder / "weights.bin")
        elif setup == "link-dir":
            os.symlink(os.path.relpath(secret.parent, folder), folder / "up")
        elif setup == "link-abs":
            os.symlink(secret, folder / "weights.bin")
        elif setup == "dir":
            (folder / "weights.bin").mkdir(exist_ok=True)
        elif setup == "fifo":
            os.mkfifo(folder / "weights.bin")
        return write_calib(model, folder / "calib.npz")

    return Case(case_id, "external", expect, note), write


def cases(rng: np.random.Generator) -> Iterator[tuple]:
    """Escapes, links, bad offsets and lengths, missing files, two valid layouts."""
    listed = [
        ("inside", "valid", "external data beside the model", ("weights.bin", 0, 256), "data"),
        (
            "inside-sub",
            "valid",
            "external data in a subfolder",
            ("sub/weights.bin", None, None),
            "subdir",
        ),
        ("dotdot", "invalid", "location ../../secret.bin", ("../../" + SECRET_NAME, 0, 256), ""),
        (
            "dotdot-inner",
            "invalid",
            "location sub/../../../secret.bin",
            ("sub/../../../" + SECRET_NAME, 0, 256),
            "subdir",
        ),
        ("absolute", "invalid", "absolute location of the secret", ("{SECRET}", 0, 256), ""),
        ("absolute-etc", "invalid", "location /etc/passwd", ("/etc/passwd", 0, 256), ""),
        ("dev-zero", "invalid", "location /dev/zero, 64 GB", ("/dev/zero", 0, 1 << 36), ""),
        (
            "proc-environ",
            "invalid",
            "location /proc/self/environ",
            ("/proc/self/environ", 0, 256),
            "",
        ),
        (
            "symlink-file",
            "invalid",
            "weights.bin is a link to the secret",
            ("weights.bin", 0, 256),
            "link-file",
        ),
        (
            "symlink-abs",
            "invalid",
            "weights.bin is an absolute link out",
            ("weights.bin", 0, 256),
            "link-abs",
        ),
        (
            "symlink-dir",
            "invalid",
            "up/ is a link to the folder above",
            ("up/" + SECRET_NAME, 0, 256),
            "link-dir",
        ),
        (
            "offset-past-end",
            "invalid",
            "offset past the end of the file",
            ("weights.bin", 4096, 256),
            "data",
        ),
        (
            "length-past-end",
            "invalid",
            "length past the end of the file",
            ("weights.bin", 0, 100000),
            "data",
        ),
        (
            "file-short",
            "invalid",
            "file shorter than the tensor",
            ("weights.bin", None, None),
            "short",
        ),
        (
            "length-wrong",
            "invalid",
            "length not the tensor's size",
            ("weights.bin", 0, 128),
            "data",
        ),
        ("offset-negative", "invalid", "negative offset", ("weights.bin", -8, 256), "data"),
        ("offset-text", "invalid", "non-numeric offset", ("weights.bin", None, None), "data-text"),
        ("missing-file", "invalid", "the data file does not exist", ("weights.bin", 0, 256), ""),
        ("no-location", "invalid", "external data without a location", ("", 0, 256), "data"),
        ("location-dir", "invalid", "location is a folder", ("weights.bin", 0, 256), "dir"),
        (
            "location-fifo",
            "invalid",
            "location is a FIFO (a read blocks)",
            ("weights.bin", 0, 256),
            "fifo",
        ),
        (
            "location-model",
            "invalid",
            "location is the model file itself",
            ("model.onnx", 0, 256),
            "",
        ),
        ("location-nul", "invalid", "location with a NUL byte", ("weights\0.bin", 0, 256), "data"),
        ("location-home", "invalid", "location ~/.bashrc", ("~/.bashrc", 0, 256), ""),
        ("location-url", "invalid", "location is a URL", ("file:///etc/passwd", 0, 256), ""),
    ]
    for case_id, expect, note, entry, setup in listed:
        if setup == "data-text":
            yield _text_offset_case(case_id, expect, note)
            continue
        yield _case(case_id, expect, note, entry, setup)


def _text_offset_case(case_id: str, expect: str, note: str) -> tuple:
    inner_id, inner_expect, inner_note = case_id, expect, note
    base_case, base_write = _case(
        inner_id, inner_expect, inner_note, ("weights.bin", 0, 256), "data"
    )

    def write(folder: Path) -> bool:
        calib = base_write(folder)
        model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
        t = next(t for t in model.graph.initializer if t.name == "w2")
        t.external_data[1].value = "twelve"
        (folder / "model.onnx").write_bytes(model.SerializeToString())
        return calib

    return base_case, write
