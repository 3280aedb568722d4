"""The task models' decoding for tests: scripts/task_metrics.py (numpy only), loaded by path.

The benchmark (scripts/bench_task.py) and the tests score with the same code, so a test
threshold means what the benchmark's table means.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
TASKS = {
    "task_yolov8": "detect",
    "task_dbnet": "text-detect",
    "task_crnn": "ctc",
    "task_mobilenetv3": "classify",
}


def task_metrics() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "task_metrics", REPO / "scripts" / "task_metrics.py"
    )
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def eval_inputs(name: str) -> np.ndarray:
    """The committed evaluation images as the model's float input (uint8 / 255)."""
    with np.load(MODELS / f"{name}.eval.npz") as data:
        return data["images"].astype(np.float32) / 255.0


def run(model_bytes_or_path: bytes | str | Path, inputs: np.ndarray, batch: int = 16) -> np.ndarray:
    """The model's first output on `inputs`, in batches, on ORT's CPU EP."""
    import onnxruntime as ort

    source = (
        str(model_bytes_or_path) if isinstance(model_bytes_or_path, Path) else model_bytes_or_path
    )
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate(
        [session.run(None, {name: inputs[i : i + batch]})[0] for i in range(0, len(inputs), batch)]
    )
