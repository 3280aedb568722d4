"""scripts/peak_rss.py: a benchmark's child reports its own peak RSS, not the benchmark's.

wait4 on a direct child carries the parent's high-water mark across fork and exec
(a child running `pass` reported 413 MB under a 400 MB parent); the launcher fixes it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
from conftest import REPO

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/status").is_file(), reason="needs Linux /proc (VmHWM)"
)
PARENT_MB = 300


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("peak_rss", REPO / "scripts" / "peak_rss.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["peak_rss"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_child_peak_is_its_own_under_a_big_parent() -> None:
    peak_rss = load_script()
    ballast = bytearray(PARENT_MB << 20)
    ballast[::4096] = b"x" * len(ballast[::4096])  # resident, not just reserved
    idle = [sys.executable, "-c", "pass"]
    holds = [sys.executable, "-c", "b = bytearray(150 << 20); b[::4096] = b'x' * len(b[::4096])"]

    # The artefact this replaces: the idle child "peaks" above the parent's ballast.
    assert peak_rss.naive_wait4_peak(idle) > PARENT_MB << 20

    idle_run = peak_rss.run_measured(idle)
    assert idle_run.returncode == 0
    assert idle_run.floor_bytes > 0
    assert idle_run.peak_bytes < 60 << 20, idle_run  # an interpreter, not the parent's 300 MB

    holding = peak_rss.run_measured(holds)
    assert 150 << 20 < holding.peak_bytes < 210 << 20, holding
    del ballast


def test_exit_code_and_timeout_come_through() -> None:
    peak_rss = load_script()
    failed = peak_rss.run_measured([sys.executable, "-c", "raise SystemExit(3)"])
    assert failed.returncode == 3 and not failed.timed_out
    slow = peak_rss.run_measured([sys.executable, "-c", "import time; time.sleep(30)"], timeout=1)
    assert slow.timed_out and slow.seconds < 10
