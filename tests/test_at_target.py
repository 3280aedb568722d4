"""prune and cluster at the accuracy target: by default the most compression that meets it,
found by the target itself; a request beyond it exits 1 naming the layers that broke it."""

from __future__ import annotations

from pathlib import Path

import pytest

from onnxslim import api
from onnxslim.cli import main

MODELS = Path(__file__).resolve().parents[1] / "models"


def _files(name: str) -> tuple[Path, Path]:
    model, calib = MODELS / f"{name}.onnx", MODELS / f"{name}.calib.npz"
    if not (model.is_file() and calib.is_file()):
        pytest.skip(f"models/{name} not generated (scripts/make_models.py)")
    return model, calib


def test_prune_by_default_reaches_the_most_sparsity_the_target_allows() -> None:
    model, calib = _files("digits_cnn")
    result = api.prune(model, calib=calib, runs=0)
    search = result.search
    assert search is not None and result.target is not None and result.target.passed
    assert result.request is None  # nothing was asked for
    # the bound was found by the target: a trial above what was reached missed it
    missed = [t["sparsity"] for t in search["trials"] if not t["passed"]]
    assert missed and min(missed) > search["reached"] >= 0.5
    assert result.sparsity >= 0.45  # layers under min_elements stay dense
    layers = result.details["sensitivity"]
    assert len({round(v["allocated"], 3) for v in layers.values()}) > 1  # not uniform


def test_prune_request_beyond_the_target_exits_1_and_names_the_layers(
    tmp_path: Path, capsys
) -> None:
    model, calib = _files("digits_cnn")
    out = tmp_path / "p90.onnx"
    code = main(
        ["prune", str(model), "-o", str(out), "--sparsity", "0.9", "--calib", str(calib)]
        + ["--no-reconstruct", "--runs", "0"]  # the refit rescues 0.9 on this model
    )
    error = " ".join(capsys.readouterr().err.split())
    assert code == 1 and out.is_file()
    assert "accuracy target missed: logits (classifier)" in error
    assert "--sparsity 0.9 breaks it at" in error and "of the measured error" in error
    assert "met it in the search" in error


def test_cluster_by_default_spends_the_fewest_bytes_that_meet_the_target() -> None:
    model, calib = _files("digits_lstm")
    result = api.cluster(model, calib=calib, runs=0)
    search = result.search
    assert search is not None and result.target is not None and result.target.passed
    assert result.request is None
    trials = search["trials"]
    assert any(not t["passed"] for t in trials)  # a smaller budget was tried and missed
    assert search["budget_bytes"] == min(t["budget_bytes"] for t in trials if t["passed"])
    assert 2.0 <= result.bits_per_weight <= 8.0
    assert result.size_after.raw < 0.35 * result.size_before.raw
