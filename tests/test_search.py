"""`onnxslim search`: a grid of recipe variants on local processes and on a local Ray;
the winner is the smallest passing candidate and its bytes are what `run` writes."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from conftest import MODELS

from onnxslim import api
from onnxslim.cli import main

NAME = "digits_cnn"


def grid_recipe(tmp_path: Path, gates: str = "max_accuracy_drop = 1.0\n") -> Path:
    path = tmp_path / "search.toml"
    path.write_text(f"""
description = "palette bits"
[data]
calib = "{MODELS / f"{NAME}.calib.npz"}"
eval = "{MODELS / f"{NAME}.eval.npz"}"
max_samples = 16
eval_max_samples = 200
[[pass]]
name = "optimize"
[[pass]]
name = "cluster"
bits = 4
[gates]
{gates}
[measure]
latency_runs = 3
[search]
objective = "smallest"
bits = [2, 4]
""")
    return path


def test_search_on_local_processes_keeps_the_smallest_passing(tmp_path: Path) -> None:
    recipe = grid_recipe(tmp_path)
    out, report_dir = tmp_path / "best.onnx", tmp_path / "report"
    assert (
        main(
            [
                "search",
                str(recipe),
                str(MODELS / f"{NAME}.onnx"),
                "-o",
                str(out),
                "--report",
                str(report_dir),
                "--jobs",
                "2",
            ]
        )
        == 0
    )
    data = json.loads((report_dir / "report.json").read_text())
    search = data["search"]
    assert len(search["candidates"]) == 2 and all(c["passed"] for c in search["candidates"])
    sizes = {c["index"]: c["file_bytes"] for c in search["candidates"]}
    assert search["winner"] == min(sizes, key=sizes.get) == 0
    assert search["winner_config"] == {"cluster.bits": 2}
    assert data["output"]["bytes"] == out.stat().st_size == sizes[0]
    html = (report_dir / "report.html").read_text()
    assert "id='pareto'" in html and html.count("<svg") >= 3
    # The winner is byte for byte what `run` writes for its configuration.
    winner = tmp_path / "winner.toml"
    winner.write_text(recipe.read_text().replace("bits = 4", "bits = 2").split("[search]")[0])
    api.run(winner, MODELS / f"{NAME}.onnx", output=tmp_path / "run.onnx")
    assert (tmp_path / "run.onnx").read_bytes() == out.read_bytes()


def test_search_with_no_passing_candidate_is_exit_1_and_still_writes(
    tmp_path: Path, capsys
) -> None:
    recipe = grid_recipe(tmp_path, "max_accuracy_drop = 1.0\nmin_size_reduction = 0.99\n")
    out, report_dir = tmp_path / "best.onnx", tmp_path / "report"
    assert (
        main(
            [
                "search",
                str(recipe),
                str(MODELS / f"{NAME}.onnx"),
                "-o",
                str(out),
                "--report",
                str(report_dir),
                "--jobs",
                "1",
                "--input-shape",  # search runs the model: it takes --input-shape and --data
                "input:1,1,16,16",
                "--data",
                str(MODELS / f"{NAME}.eval.npz"),
            ]
        )
        == 1
    )
    assert out.is_file()
    dims = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 1, 16, 16]
    data = json.loads((report_dir / "report.json").read_text())
    assert not data["passed"] and data["search"]["note"].startswith("no candidate passed")
    assert all("min_size_reduction" in c["reason"] for c in data["search"]["candidates"])
    assert "min_size_reduction" in capsys.readouterr().err


def test_search_without_grid_is_a_usage_error(tmp_path: Path, capsys) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text('[[pass]]\nname = "optimize"\n')
    assert (
        main(["search", str(recipe), str(MODELS / f"{NAME}.onnx"), "-o", str(tmp_path / "o.onnx")])
        == 2
    )
    assert "no [search] table" in capsys.readouterr().err


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_search_through_a_local_ray(tmp_path: Path) -> None:
    import ray  # in the test extra: a broken install fails here instead of skipping

    # search starts (and stops) the local Ray itself, from wherever pytest runs: from a
    # checkout its workers must still import the installed package, not ./onnxslim
    report = api.search(
        grid_recipe(tmp_path),
        MODELS / f"{NAME}.onnx",
        output=tmp_path / "ray.onnx",
        ray_address="local",
        jobs=2,
    )
    assert not ray.is_initialized()
    assert report.passed and report.search["winner_config"] == {"cluster.bits": 2}
    local = api.search(
        grid_recipe(tmp_path), MODELS / f"{NAME}.onnx", output=tmp_path / "local.onnx", jobs=1
    )
    assert (tmp_path / "ray.onnx").read_bytes() == (tmp_path / "local.onnx").read_bytes()
    assert (
        local.search["candidates"][0]["file_bytes"] == report.search["candidates"][0]["file_bytes"]
    )


def test_grid_is_every_combination_with_aliases(tmp_path: Path) -> None:
    from onnxslim.recipe import load_recipe
    from onnxslim.workflows.search import candidates, variant

    recipe = load_recipe(
        {
            "data": {"calib": str(MODELS / f"{NAME}.calib.npz")},
            "pass": [
                {"name": "optimize"},
                {"name": "prune", "storage": "dense"},
                {"name": "quantize"},
            ],
            "search": {
                "objective": "fastest",
                "sparsity": [0.3, 0.5],
                "calibration": ["minmax", "entropy"],
                "keep_float": [[], ["Gemm"]],
            },
        }
    )
    grid = candidates(recipe)
    assert len(grid) == 8 and grid[0] == {
        "prune.sparsity": 0.3,
        "quantize.method": "minmax",
        "quantize.exclude": [],
    }
    chosen = variant(recipe, grid[-1])
    assert chosen.steps[1].options["sparsity"] == 0.5 and not chosen.search
    assert chosen.steps[2].options == {"method": "entropy", "exclude": ["Gemm"]}
    assert recipe.search["objective"] == "fastest"


def test_search_where_every_candidate_fails_a_pass_is_exit_3(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    from test_run_recipe import ExplodingPass

    from onnxslim import registry

    monkeypatch.setitem(registry.BUILTIN_PASSES, "explode", ExplodingPass)
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        '[[pass]]\nname = "cluster"\n[[pass]]\nname = "explode"\n'
        "[measure]\nlatency_runs = 0\n[search]\nbits = [2, 4]\n"
    )
    out = tmp_path / "o.onnx"
    assert (
        main(
            ["search", str(recipe), str(MODELS / "digits_lstm.onnx"), "-o", str(out), "--jobs", "1"]
        )
        == 3
    )
    assert "every candidate failed" in capsys.readouterr().err and not out.exists()
