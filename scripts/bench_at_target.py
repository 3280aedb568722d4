"""Default `onnxslim prune` / `cluster` on one model: compression reached, target, exit, time.

    python scripts/bench_at_target.py MODEL prune|cluster [extra CLI options]

MODEL is models/<name> (digits_*) or a devmodel id (~/.cache/devmodels; 32 realistic
calibration feeds from ../shared/devmodels/inputs.make_feeds, seed 0). Prints one JSON
line: exit code, wall time and CPU time of the whole command, the target figures, and the
sparsity or bits per weight reached with the search's trials.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEVMODELS = Path.home() / ".cache" / "devmodels"
WORK = Path(tempfile.gettempdir()) / "onnxslim-bench-at-target"


def calib_file(model_id: str, n: int = 32) -> Path:
    """Realistic calibration feeds for a devmodel, written once: one stacked .npz, or a
    folder of one .npz per feed when the feeds' shapes differ (rxnmap's graphs)."""
    path, folder = WORK / f"{model_id}.calib.npz", WORK / f"{model_id}.calib"
    if path.exists() or folder.exists():
        return path if path.exists() else folder
    sys.path.insert(0, str(REPO.parent / "shared" / "devmodels"))
    from inputs import make_feeds  # type: ignore[import-not-found]

    feeds = make_feeds(model_id, n, seed=0)
    if all(f[k].shape == feeds[0][k].shape for f in feeds for k in feeds[0]):
        np.savez(path, **{k: np.stack([f[k] for f in feeds]) for k in feeds[0]})
        return path
    folder.mkdir()
    for i, feed in enumerate(feeds):
        np.savez(folder / f"feed_{i}.npz", **feed)
    return folder


def run(command: str, model: Path, calib: Path, extra: list[str]) -> dict:
    out = WORK / f"{model.stem}.{command}.onnx"
    started = time.time()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    process = subprocess.run(
        ["onnxslim", command, str(model), "-o", str(out), "--calib", str(calib)]
        + ["--runs", "0", "--json", "--overwrite", *extra],
        capture_output=True,
        text=True,
    )
    seconds = round(time.time() - started, 1)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds of the command (user + system): less at the mercy of other jobs than wall
    cpu = round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1)
    load = round(os.getloadavg()[0], 1)
    try:
        report = json.loads(process.stdout)
    except json.JSONDecodeError:
        return {
            "exit": process.returncode,
            "seconds": seconds,
            "cpu_seconds": cpu,
            "err": process.stderr[-400:],
        }
    outputs = (report.get("target") or {}).get("outputs", [])
    row = {
        "exit": process.returncode,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "load_after": load,
        "target": [(o["name"], o["role"], o["value"], o["unit"], o["passed"]) for o in outputs],
        "raw_ratio": report["size"]["raw_ratio"],
        "err": process.stderr.strip().splitlines()[-1][:300] if process.returncode else "",
    }
    search = report.get("search")
    if command == "prune":
        row["sparsity"] = report["sparsity"]
        row["trials"] = search and [(t["sparsity"], t["passed"]) for t in search["trials"]]
    else:
        row["bits_per_weight"] = report["bits_per_weight"]
        row["trials"] = search and [
            (round(t["bits_per_weight"], 2), t["passed"]) for t in search["trials"]
        ]
    return row


def main() -> None:
    name, command, extra = sys.argv[1], sys.argv[2], sys.argv[3:]
    WORK.mkdir(exist_ok=True)
    if name.startswith("digits"):
        model, calib = REPO / "models" / f"{name}.onnx", REPO / "models" / f"{name}.calib.npz"
    else:
        model, calib = DEVMODELS / f"{name}.onnx", calib_file(name)
    print(json.dumps({"model": name, "cmd": command, **run(command, model, calib, extra)}))


if __name__ == "__main__":
    main()
