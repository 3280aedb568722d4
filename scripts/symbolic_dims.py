"""Real models with symbolic dimensions through `optimize` and `quantize --mode dynamic` on the
default path (no --input-shape, no --data): which ran their check on generated inputs, on which
sizes, and which had it skipped and why.

    python scripts/symbolic_dims.py                       # devmodels + models/*.onnx
    python scripts/symbolic_dims.py --models a.onnx b.onnx --timeout 600

Each run is a fresh `onnxslim` process with a timeout, writing into a temporary folder
(removed afterwards). The table gives, per model: its free input dimensions, then per
command the exit code, wall seconds and what the run said about its check (the
generated sizes it used, or the one-line reason it was skipped).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx

REPO = Path(__file__).resolve().parents[1]
DEVMODELS = Path("~/.cache/devmodels").expanduser()
# Static int8 needs calibration data by design (exit 2 without --calib); the data-free
# quantization is the dynamic mode.
COMMANDS = (("optimize",), ("quantize", "--mode", "dynamic"))


def free_dims(path: Path) -> str:
    """`name[batch,3,h,w]` for every input with a dimension that is not a positive int."""
    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    parts = []
    for value in model.graph.input:
        if value.name in inits or not value.type.HasField("tensor_type"):
            continue
        dims = [
            str(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else d.dim_param or "?"
            for d in value.type.tensor_type.shape.dim
        ]
        if any(not d.isdigit() for d in dims):
            parts.append(f"{value.name}[{','.join(dims)}]")
    return " ".join(parts) or "none"


def what_the_check_did(text: str) -> str:
    """The run's own words about its check: the generated sizes, or why it was skipped."""
    skipped = re.search(r"outputs not checked: (.*)", text)
    if skipped:
        return "skipped: " + skipped.group(1).strip()[:220]
    sizes = re.search(r"generated inputs \((\d+ feeds(?:, [^)]*)?)\)", text)
    if sizes:
        return f"checked on generated inputs ({sizes.group(1)})"
    error = [line for line in text.splitlines() if line.startswith("error:")]
    if error:
        return error[-1][:220]
    return "checked" if "wrote" in text else text.strip().splitlines()[-1][:220] if text else ""


def run(command: tuple[str, ...], model: Path, timeout: float) -> tuple[int | str, float, str]:
    folder = Path(tempfile.mkdtemp(prefix="symdims-"))
    argv = ["onnxslim", command[0], str(model), "-o", str(folder / "out.onnx"), *command[1:]]
    start = time.monotonic()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        code: int | str = done.returncode
        text = done.stdout + done.stderr
    except subprocess.TimeoutExpired:
        code, text = "timeout", ""
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return code, time.monotonic() - start, text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", type=Path)
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()
    models = args.models or sorted(DEVMODELS.glob("*.onnx")) + sorted(REPO.glob("models/*.onnx"))
    print("| model | free input dims | command | exit | s | check |")
    print("|---|---|---|---|---|---|")
    for model in models:
        dims = free_dims(model)
        for command in COMMANDS:
            code, seconds, text = run(command, model, args.timeout)
            print(
                f"| {model.name} | {dims} | {' '.join(command)} | {code} | {seconds:.0f} | "
                f"{what_the_check_did(text).replace('|', '/')} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
