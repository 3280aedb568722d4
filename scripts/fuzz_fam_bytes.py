"""Fuzz family `bytes`: random bytes, truncations and single-bit flips of valid models.

A mutant that still parses, passes onnx.checker (full check) and loads in ONNX
Runtime is a legal model with odd values ("either"); anything else is "invalid".
The label is "auto" until the case is written (fuzz_corpus classifies it then).
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from fuzz_build import Case, cnn, mlp, write_calib


def classify(data: bytes) -> str:
    """'either' when onnx and ORT both take the bytes as a model, else 'invalid'."""
    try:
        model = onnx.load_from_string(data)
        onnx.checker.check_model(model, full_check=True)
        options = ort.SessionOptions()
        options.log_severity_level = 4
        ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception:  # any refusal by the references makes the bytes invalid input
        return "invalid"
    return "either"


def _bytes_case(case_id: str, data: bytes, note: str, calib_from: onnx.ModelProto | None) -> tuple:
    def write(folder: Path) -> bool:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.onnx").write_bytes(data)
        return calib_from is not None and write_calib(calib_from, folder / "calib.npz")

    return Case(case_id, "bytes", "auto", note), write


def cases(rng: np.random.Generator, flips: int = 90, cuts: int = 30) -> Iterator[tuple]:
    """Random blobs, text, gzip, truncations, trailing junk and bit flips."""
    for size in (0, 1, 2, 7, 64, 1000, 65536):
        yield _bytes_case(f"random-{size}", rng.bytes(size), f"{size} random bytes", None)
    yield _bytes_case("text", b"this is not a model\n", "plain text", None)
    yield _bytes_case("zeros-4k", bytes(4096), "4096 zero bytes", None)
    yield _bytes_case("ff-4k", b"\xff" * 4096, "4096 0xff bytes", None)
    bases = {"mlp": mlp(1), "cnn": cnn(2)}
    for name, model in bases.items():
        data = model.SerializeToString()
        yield _bytes_case(f"{name}-gzip", gzip.compress(data), "gzip of a valid model", None)
        yield _bytes_case(
            f"{name}-junk", data + rng.bytes(33), "valid model + 33 junk bytes", model
        )
        yield _bytes_case(f"{name}-twice", data + data, "a valid model written twice", model)
        for offset in sorted(set(rng.integers(1, len(data), cuts).tolist())):
            yield _bytes_case(
                f"{name}-cut{offset}", data[:offset], f"truncated at {offset}/{len(data)}", model
            )
        # Flips: a dense sweep of the header (field tags, lengths) and random body offsets.
        offsets = list(range(0, min(len(data), 40)))
        offsets += rng.integers(0, len(data), flips - len(offsets)).tolist()
        for offset in sorted(set(offsets)):
            bit = int(rng.integers(0, 8))
            mutated = bytearray(data)
            mutated[offset] ^= 1 << bit
            yield _bytes_case(
                f"{name}-flip{offset}.{bit}",
                bytes(mutated),
                f"bit {bit} of byte {offset} flipped",
                model,
            )
