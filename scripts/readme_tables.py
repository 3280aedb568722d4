"""README.md's results table of the presets on the example models, regenerated from real runs.

    python scripts/readme_tables.py            # print the table as the code makes it now
    python scripts/readme_tables.py --check    # exit 1 when README.md's table differs
    python scripts/readme_tables.py --write    # replace README.md's table with it

Each row is what `onnxslim run PRESET models/NAME.onnx -o OUT --calib
models/NAME.calib.npz --eval models/NAME.eval.npz` writes and measures (through
`onnxslim.api.run`, the function that command calls): file and gzip bytes, top-1 on
the evaluation set, parity error, and the exit code (0 gates passed, 1 one failed).
The written model is byte-for-byte reproducible (no timing decides it), so the file
bytes are the same on every machine with the same onnx/onnxruntime; gzip bytes, top-1
and parity can move with the CPU's int8 choices (7-bit weights without VNNI), which
is why the caption names the CPU. tests/test_readme_examples.py checks the file bytes.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
README = REPO / "README.md"
PRESETS = ("lossless", "mobile-int8", "mobile-int8-pruned", "palettized-4bit")
EXAMPLES = ("digits_cnn", "digits_transformer", "digits_lstm", "digits_detector", "digits_gated")
HEADER = "| model | preset | file bytes | gzip bytes | top-1 (eval, {n}) | parity error | exit |"
CAPTION_START = "Measured on the example models"


@dataclass(frozen=True)
class Row:
    model: str
    preset: str
    bytes_in: int
    bytes_out: int
    gzip_in: int
    gzip_out: int
    top1_in: float | None
    top1_out: float | None
    parity: float
    exit_code: int

    def markdown(self) -> str:
        smaller = round(100 * (1 - self.bytes_out / self.bytes_in))
        return (
            f"| {self.model} | {self.preset} | {self.bytes_in:,} -> {self.bytes_out:,} "
            f"({smaller}% smaller) | {self.gzip_in:,} -> {self.gzip_out:,} | "
            f"{_top1(self.top1_in)} -> {_top1(self.top1_out)} | {self.parity:.3g} | "
            f"{self.exit_code} |"
        )


def _top1(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def run_row(model: str, preset: str, folder: Path, *, latency: bool = True) -> Row:
    """One `onnxslim run PRESET` on models/MODEL.onnx; `latency=False` skips the timing
    (which the table does not show and which never changes the written model)."""
    from onnxslim import api, presets

    recipe: str | Path = preset
    if not latency:
        recipe = folder / f"{preset}.toml"
        recipe.write_text(presets.text(preset) + "\n[measure]\nlatency_runs = 0\n")
    report = api.run(
        recipe,
        MODELS / f"{model}.onnx",
        output=folder / f"{model}.{preset}.onnx",
        calib=str(MODELS / f"{model}.calib.npz"),
        eval_data=str(MODELS / f"{model}.eval.npz"),
    )
    data = report.to_dict()
    source, out = data["input"], data["output"]
    return Row(
        model,
        preset,
        source["bytes"],
        out["bytes"],
        source["gzip_bytes"],
        out["gzip_bytes"],
        source.get("top1"),
        out.get("top1"),
        out["parity_error"],
        0 if report.passed else 1,
    )


def eval_samples(model: str = EXAMPLES[0]) -> int:
    import numpy as np

    with np.load(MODELS / f"{model}.eval.npz") as data:
        return len(data["labels"])


def cpu_note() -> str:
    """The CPU's int8-relevant features, as the caption states them."""
    import os

    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    vnni = " VNNI" if {"avx512_vnni", "avx_vnni"} & flags else ""
    return f"{os.cpu_count()}-core x86-64 with {isa}{vnni}"


def table(rows: list[Row]) -> list[str]:
    return [
        HEADER.format(n=eval_samples()),
        "|---|---|---|---|---|---|---|",
        *(row.markdown() for row in rows),
    ]


def caption() -> str:
    return (
        f"{CAPTION_START} (`--calib NAME.calib.npz --eval NAME.eval.npz`,\n"
        f"the presets' gates, {cpu_note()}; `python scripts/readme_tables.py --write`):"
    )


def readme_table(text: str) -> tuple[int, int]:
    """Line span [start, end) of README's results table, caption included."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(CAPTION_START))
    head = next(i for i in range(start, len(lines)) if lines[i].startswith("| model | preset |"))
    end = head
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return start, end


def parse_rows(text: str) -> dict[tuple[str, str], list[str]]:
    """README's table as {(model, preset): cells}."""
    start, end = readme_table(text)
    rows = {}
    for line in text.splitlines()[start:end]:
        if not line.startswith("| ") or line.startswith(("| model", "|---")):
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[(cells[0], cells[1])] = cells
    return rows


def all_rows(*, latency: bool = True) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="readme_tables_") as tmp:
        return [
            run_row(model, preset, Path(tmp), latency=latency)
            for model in EXAMPLES
            for preset in PRESETS
        ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--check", action="store_true", help="exit 1 if README.md differs")
    action.add_argument("--write", action="store_true", help="rewrite README.md's table")
    args = parser.parse_args()
    new = [*caption().splitlines(), "", *table(all_rows())]
    text = README.read_text(encoding="utf-8")
    start, end = readme_table(text)
    lines = text.splitlines()
    old = lines[start:end]
    if args.write:
        README.write_text("\n".join([*lines[:start], *new, *lines[end:]]) + "\n", encoding="utf-8")
        print(f"README.md: table rewritten ({len(new)} lines)")
        return 0
    if args.check:
        diff = list(difflib.unified_diff(old, new, "README.md", "generated", lineterm=""))
        print("\n".join(diff) or "README.md's table matches")
        return 1 if diff else 0
    print("\n".join(new))
    return 0


if __name__ == "__main__":
    sys.exit(main())
