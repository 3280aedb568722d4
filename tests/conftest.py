"""Shared fixtures: small models built with onnx.helper, and the devmodels corpus."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
# `python -m pytest` puts the checkout first on sys.path, where onnxslim/ lacks its pass
# library (passes/ is mapped to onnxslim.passes at install time): test what is installed.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO]
MODELS = REPO / "models"
DEVMODELS_CACHE = Path(os.environ.get("DEVMODELS_DIR", "~/.cache/devmodels")).expanduser()
DEVMODELS_CODE = REPO.parent / "shared" / "devmodels"


def python_m_onnxslim(
    *args: object, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m onnxslim ARGS` in a fresh interpreter, the way a shell runs it."""
    return subprocess.run(
        [sys.executable, "-m", "onnxslim", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        # Not the checkout: `python -m` puts the working folder first on sys.path, and the
        # checkout's onnxslim/ lacks its pass library (passes/ installs as onnxslim.passes).
        cwd=tempfile.gettempdir(),
        env={**os.environ, **(env or {})},
    )


def devmodels() -> list[dict]:
    """The corpus manifest entries whose model file is present; empty when not fetched."""
    manifest = DEVMODELS_CACHE / "manifest.json"
    if not manifest.is_file():
        return []
    models = json.loads(manifest.read_text())["models"]
    return [m for m in models if (DEVMODELS_CACHE / f"{m['id']}.onnx").is_file()]


def devmodel_params() -> list:
    """pytest parameters over the corpus, or one skipped parameter saying how to fetch it."""
    models = devmodels()
    if not models:
        return [
            pytest.param(
                None,
                marks=pytest.mark.skip(
                    reason="model corpus not fetched; run ../shared/devmodels/fetch.py"
                ),
            )
        ]
    return [pytest.param(m, id=m["id"]) for m in models]


def devmodel_feeds(model_id: str, n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Realistic feeds from the corpus' own generator."""
    if str(DEVMODELS_CODE) not in sys.path:
        sys.path.insert(0, str(DEVMODELS_CODE))
    from inputs import make_feeds  # type: ignore[import-not-found]

    return make_feeds(model_id, n, seed=seed)


def make_mlp(path: Path, *, hidden: int = 16, seed: int = 0) -> Path:
    """x[N,8] -> MatMul -> Add -> Relu -> Identity -> MatMul -> y[N,4], with a duplicate weight."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((8, hidden)).astype(np.float32)
    b1 = rng.standard_normal(hidden).astype(np.float32)
    w2 = rng.standard_normal((hidden, 4)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"], name="mm1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="add1"),
        helper.make_node("Relu", ["h1"], ["h2"], name="relu"),
        helper.make_node("Identity", ["h2"], ["h3"], name="id"),
        helper.make_node("MatMul", ["h3", "w2"], ["y"], name="mm2"),
        helper.make_node("MatMul", ["h3", "w2_copy"], ["unused"], name="dead"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(b1, "b1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(w2.copy(), "w2_copy"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def mlp_path(tmp_path: Path) -> Path:
    return make_mlp(tmp_path / "mlp.onnx")
