"""onnxslim.workflows.heldout: which feeds the pass fits on and which the target is measured on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir

from onnxslim.agreement import Target
from onnxslim.workflows import heldout


def _data(path: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(path, x=rng.standard_normal((n, 3, 8)).astype(np.float32))
    return path


def test_held_out_count() -> None:
    counts = [heldout.held_out_count(n) for n in (4, 15, 16, 32, 100, 5000)]
    assert counts == [0, 0, 8, 8, 25, 256]


def test_last_quarter_held_back_from_calibration(mlp_path: Path, tmp_path: Path) -> None:
    model = ir.load(mlp_path)
    calib = _data(tmp_path / "calib.npz", 40)
    stacked = np.load(calib)["x"]
    split = heldout.split_data(model, calib, None)
    assert split.held_back == 10 and len(split.check) == 10
    assert len(split.fit) == 30
    fit = list(split.fit)
    assert len(fit) == 30 and np.array_equal(fit[-1]["x"], stacked[29])
    assert np.array_equal(split.check[0]["x"], stacked[30])
    assert "last 10 of 40 feeds, held back" in split.description


def test_few_feeds_measured_in_sample_and_said_so(mlp_path: Path, tmp_path: Path) -> None:
    model = ir.load(mlp_path)
    split = heldout.split_data(model, _data(tmp_path / "c.npz", 10), None)
    assert split.held_back == 0 and len(split.check) == 10
    assert "none held back" in split.description


def test_evaluation_data_used_as_given(mlp_path: Path, tmp_path: Path) -> None:
    model = ir.load(mlp_path)
    calib = _data(tmp_path / "c.npz", 40)
    split = heldout.split_data(model, calib, _data(tmp_path / "e.npz", 12, seed=1))
    assert split.fit == calib and split.held_back == 0 and len(split.check) == 12
    generated = heldout.split_data(model, None, None)
    assert generated.fit is None and "generated" in generated.description


def test_list_of_feeds_split_too(mlp_path: Path) -> None:
    model = ir.load(mlp_path)
    rng = np.random.default_rng(2)
    feeds = [{"x": rng.standard_normal((3, 8)).astype(np.float32)} for _ in range(20)]
    split = heldout.split_data(model, feeds, None)
    assert split.held_back == 8 and len(list(split.fit)) == 12


def test_check_target_on_a_copy_and_a_damaged_model(mlp_path: Path, tmp_path: Path) -> None:
    model = ir.load(mlp_path)
    split = heldout.split_data(model, _data(tmp_path / "c.npz", 32), None)
    same = heldout.check_target(model, model.clone(), split, Target())
    assert same.passed and all(f.value == 0 for f in same.figures)
    damaged = model.clone()
    w2 = damaged.graph.initializers["w2"]
    w2.const_value = ir.tensor(-w2.const_value.numpy(), name="w2")
    result = heldout.check_target(model, damaged, split, Target())
    assert not result.passed
    assert result.missed[0].name == "y" and result.missed[0].value > 10
