"""The optional extras ([report]: matplotlib, [ray]: ray): without them, a one-line error
naming the extra, exit 2, before any work and with nothing written."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import MODELS

from onnxslim.cli import main

MODEL = MODELS / "digits_cnn.onnx"


def test_report_without_matplotlib_is_exit_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    out, report = tmp_path / "out.onnx", tmp_path / "report"
    code = main(["run", "lossless", str(MODEL), "-o", str(out), "--report", str(report)])
    err = capsys.readouterr().err
    assert code == 2
    assert "pip install 'onnxslim[report]'" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not report.exists()


def test_run_without_report_needs_no_matplotlib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "out.onnx"
    assert main(["run", "lossless", str(MODEL), "-o", str(out)]) == 0
    assert out.stat().st_size > 0


def test_search_on_ray_without_ray_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    recipe = tmp_path / "grid.toml"
    recipe.write_text('[[pass]]\nname = "cluster"\n[search]\nbits = [2, 4]\n')
    out = tmp_path / "out.onnx"
    assert main(["search", str(recipe), str(MODEL), "-o", str(out), "--ray", "local"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'onnxslim[ray]'" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_the_cli_runs_without_click() -> None:
    """Recent Typer carries its own copy of click and does not install click: a fresh
    `pip install .` has none (ray, in the test extra, brings it). The CLI must not need it,
    and a usage error stays one line, exit 2."""
    code = (
        "import sys; sys.modules['click'] = None\n"
        "from onnxslim.cli import main\n"
        "raise SystemExit(main(['cluster', 'm.onnx', '-o', 'x.onnx', '--bits', '0']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tempfile.gettempdir(),  # not the checkout (its onnxslim/ lacks onnxslim.passes)
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "--bits" in lines[0], done.stderr
