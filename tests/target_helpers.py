"""Emulated targets in tests: skip only where QEMU itself is missing; otherwise a target
that cannot be set up is a failure, not a skip (a broken set-up must not pass CI)."""

from __future__ import annotations

import shutil

import pytest

from onnxslim import targets

QEMU = {"arm64": "qemu-aarch64-static", "x86-avx2": "qemu-x86_64-static"}
QEMU_MISSING = "QEMU user-mode emulation not installed (apt-get install qemu-user-static)"


def qemu_installed(*names: str) -> bool:
    """Whether the QEMU binaries of `names` (all targets by default) are on PATH."""
    return all(shutil.which(QEMU[name]) for name in names or tuple(QEMU))


needs_qemu = pytest.mark.skipif(not qemu_installed(), reason=QEMU_MISSING)


def require_target(name: str) -> None:
    """Set up target `name` if it is not ready; skip without QEMU, fail when set-up fails."""
    if not qemu_installed(name):
        pytest.skip(QEMU_MISSING)
    if targets.status(name).ready:
        return
    try:
        targets.setup(name)
    except targets.TargetUnavailable as exc:
        pytest.fail(f"QEMU is installed but target {name} cannot be set up: {exc}")
    assert targets.status(name).ready, targets.status(name).detail
