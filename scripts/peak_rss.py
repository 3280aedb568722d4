"""Peak RSS of a child process alone, for the benchmarks.

Why not `os.wait4(...).ru_maxrss` on a child of the benchmark: Linux keeps the
largest RSS a process ever had across fork and exec, and the forked child starts as a
copy of its parent, so a child that runs `pass` reports the benchmark's own peak (a
benchmark holding 400 MB saw 413 MB for every tool). Here a fresh, tiny launcher
(`python -I -S`, about 10 MB) forks and execs the command and reads `wait4` itself:
the figure is then max(launcher, command), i.e. the command's own peak whenever it
is above the launcher's floor, which is reported beside it.

    python scripts/peak_rss.py [--parent-mb 400]   # the measured before/after check
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

# Runs in a fresh interpreter with no site packages: only os, sys and json imported.
_LAUNCHER = r"""
import json, os, sys
def hwm():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0
result, command = sys.argv[1], sys.argv[2:]
floor = hwm()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(command[0], command)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(result, "w") as f:
    json.dump({"peak": usage.ru_maxrss * 1024, "floor": floor}, f)
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


@dataclass(frozen=True)
class Measured:
    """Exit code, wall seconds and peak RSS of one command run alone."""

    returncode: int
    seconds: float
    peak_bytes: int  # 0 when the run timed out
    floor_bytes: int  # the launcher's own peak: figures at or below it mean "at most this"
    timed_out: bool = False

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20 if self.peak_bytes else float("nan")


def run_measured(
    command: list[str],
    *,
    stdout: IO[str] | int | None = None,
    stderr: IO[str] | int | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> Measured:
    """Run `command` under the tiny launcher; its peak RSS is the command's own."""
    with tempfile.TemporaryDirectory(prefix="peak_rss_") as folder:
        result = Path(folder) / "rss.json"
        launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(result), *command]
        start = time.perf_counter()
        process = subprocess.Popen(
            launcher, stdout=stdout, stderr=stderr, env=env, start_new_session=True
        )
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the launcher's own group: it and the command
            process.wait()
            return Measured(process.returncode, time.perf_counter() - start, 0, 0, True)
        seconds = time.perf_counter() - start
        if not result.is_file():  # the launcher itself failed
            return Measured(code, seconds, 0, 0)
        figures = json.loads(result.read_text())
        return Measured(code, seconds, int(figures["peak"]), int(figures["floor"]))


def naive_wait4_peak(command: list[str]) -> int:
    """The old way, kept only to show the artefact: wait4 on a direct child of this process."""
    process = subprocess.Popen(command)
    _, _, usage = os.wait4(process.pid, 0)
    return usage.ru_maxrss * 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--parent-mb", type=int, default=400, help="memory this process holds first"
    )
    args = parser.parse_args()
    ballast = bytearray(args.parent_mb << 20)
    ballast[::4096] = b"x" * len(ballast[::4096])  # touch every page: resident
    idle = [sys.executable, "-c", "pass"]
    holds = [sys.executable, "-c", "b = bytearray(200 << 20); b[::4096] = b'x' * len(b[::4096])"]
    for label, command in (("python -c pass", idle), ("python holding 200 MB", holds)):
        old = naive_wait4_peak(command) / 2**20
        new = run_measured(command)
        print(
            f"{label:<22} parent holds {args.parent_mb} MB: wait4 on a direct child "
            f"{old:.0f} MB; launcher {new.peak_mb:.0f} MB (floor {new.floor_bytes / 2**20:.0f} MB)"
        )
    del ballast
    return 0


if __name__ == "__main__":
    sys.exit(main())
