"""scripts/bench_task.py's tool list: every tool it names reaches a worker that exists.

A tool listed in bench_task but not among bench_quantize_workers' choices only fails after
the peer's venv is built, in a cell of the table ("exit 2: invalid choice"); these checks
catch it without the peers (they are not test dependencies).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from conftest import REPO

SCRIPTS = REPO / "scripts"


def load_script(name: str) -> ModuleType:
    if str(SCRIPTS) not in sys.path:  # bench_task imports its siblings by name
        sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench_task() -> ModuleType:
    return load_script("bench_task")


@pytest.fixture(scope="module")
def workers() -> ModuleType:
    return load_script("bench_quantize_workers")


def test_every_peer_tool_has_a_worker(bench_task: ModuleType, workers: ModuleType) -> None:
    peer_tools = [
        t
        for t in bench_task.TOOLS + bench_task.NAMED_TOOLS
        if t not in bench_task.ONNXSLIM_COMMANDS
    ]
    assert {"quark-adaquant", "aimet-seqmse", "quark-adaround", "aimet-adaround"} <= set(peer_tools)
    for tool in peer_tools:
        args = workers.make_parser().parse_args(
            [bench_task.worker_of(tool), "--model", "m", "--calib-file", "c"]
            + ["--out", "o", "--result", "r"]
        )
        assert args.worker == bench_task.worker_of(tool)


def test_onnxslim_tools_have_a_command(bench_task: ModuleType) -> None:
    ours = [t for t in bench_task.TOOLS + bench_task.NAMED_TOOLS if t.startswith("onnxslim")]
    assert sorted(ours) == sorted(bench_task.ONNXSLIM_COMMANDS)


@pytest.mark.parametrize(
    ("tool", "venv"),
    [
        ("quark-adaquant", "quark"),
        ("aimet-seqmse", "aimet"),
        ("quark-adaround", "quark"),
        ("nncf", "nncf"),
        ("ort-static", ""),
        ("onnxslim-int8", ""),
    ],
)
def test_each_tool_runs_in_its_peers_venv(bench_task: ModuleType, tool: str, venv: str) -> None:
    assert bench_task.peer_of(tool) == venv


def test_the_weight_rounding_tools_are_asked_for_by_name(bench_task: ModuleType) -> None:
    """Minutes per model each: never in the default run."""
    for tool in ("quark-adaquant", "aimet-seqmse", "quark-adaround", "aimet-adaround"):
        assert tool in bench_task.NAMED_TOOLS and tool not in bench_task.TOOLS


def test_an_unknown_tool_exits_2_with_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "bench_task.py"), "--tools", "onnxslim,quark-adaqant"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown tool quark-adaqant" in lines[0]
    assert "quark-adaquant" in lines[0] and "aimet-seqmse" in lines[0]  # the known ones listed


def test_reuse_only_scores_what_is_there_and_runs_nothing(
    bench_task: ModuleType, tmp_path: Path
) -> None:
    """--reuse-only: a slow tool that timed out in the folder is not run again."""
    case = bench_task.Case("m", tmp_path / "m.onnx", "classify", tmp_path / "c.npz", [], "", "")
    (tmp_path / "m.aimet-seqmse.onnx").write_bytes(b"")
    kept = bench_task.quantize("aimet-seqmse", case, tmp_path, {}, 1.0, reuse="only")
    assert kept.path == tmp_path / "m.aimet-seqmse.onnx" and kept.note == "reused"
    for tool in ("quark-adaquant", "onnxslim"):  # no venv given, no model: nothing may run
        missing = bench_task.quantize(tool, case, tmp_path, {}, 1.0, reuse="only")
        assert missing.path is None and "--reuse-only" in missing.note


def test_reuse_only_needs_a_folder(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "bench_task.py"), "--reuse-only"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 2 and "--reuse-only needs --work" in done.stderr
