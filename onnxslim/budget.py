"""Time and memory budgets for anything that executes a model on ONNX Runtime.

A valid ONNX file can hang or exhaust the machine: a Loop whose condition never
turns false, a ConstantOfShape / Expand / Range / Tile to terabytes. Both are caught
in-process, without a child process per run (whose start-up and model transfer would
cost more than most runs):
- time: a watchdog thread sets the run's `RunOptions.terminate` at the deadline;
  ORT checks it between nodes and inside Loop iterations, so the run ends with a
  status we recognise;
- memory: the process's address-space limit (RLIMIT_AS) is lowered to its current
  size plus the budget while ORT creates a session or runs, so an oversized
  allocation fails inside ORT (a status, not the OOM killer) and the limit is put
  back afterwards. A stricter limit already set (by a caller's sandbox) is kept.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import onnxruntime as ort

try:
    import resource
except ImportError:  # not on Windows: no memory ceiling there
    resource = None  # type: ignore[assignment]

# A single run of a model on a handful of generated or user inputs; minutes means a hang.
DEFAULT_RUN_SECONDS = 120.0
# Share of the memory available when a run starts that it may add on top of the process.
DEFAULT_MEMORY_SHARE = 0.8
_MIN_MEMORY = 1 << 30


@dataclass(frozen=True, kw_only=True)
class Budget:
    """What one ORT run may take: `seconds` of wall time, `memory` bytes of address space
    on top of the process (None: `DEFAULT_MEMORY_SHARE` of the memory then available).
    `seconds=None` or `memory=0` turns that limit off."""

    seconds: float | None = DEFAULT_RUN_SECONDS
    memory: int | None = None

    def memory_bytes(self) -> int | None:
        if self.memory is not None:
            return self.memory or None
        available = _available_memory()
        return max(int(available * DEFAULT_MEMORY_SHARE), _MIN_MEMORY) if available else None


def budget_problem(message: str, budget: Budget, what: str) -> str | None:
    """The one-line reason when an ORT error `message` is a breached budget, else None."""
    if "terminate flag" in message:
        return (
            f"the model did not finish {what} within {budget.seconds:g} s "
            "(an endless Loop or an oversized input?); a budget protects every run"
        )
    lowered = message.lower()
    # ORT's own size checks ("Tile output tensor would require more than 4294967296 bytes")
    # are the same bomb caught earlier
    markers = ("failed to allocate", "bad_alloc", "memoryerror", "would require more than")
    if any(marker in lowered for marker in markers):
        limit = budget.memory_bytes()
        amount = f"{limit / 1e9:.1f} GB" if limit else "the available memory"
        return f"the model needed more than {amount} of memory for {what} (a tensor bomb?)"
    return None


class _Watchdog:
    """One daemon thread that sets `terminate` on runs past their deadline.

    It polls every `_POLL` seconds instead of being woken per run: a wake-up costs a
    GIL hand-over per run (about 0.1 ms measured), which would distort latency
    figures of small models; the deadline is met within `_POLL`. The thread ends
    after a minute without runs and is started again by the next one."""

    _POLL = 0.25

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[int, tuple[float, ort.RunOptions]] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._last_seen = 0.0

    def add(self, options: ort.RunOptions, seconds: float) -> int:
        token = next(self._ids)
        now = time.monotonic()
        with self._lock:
            self._runs[token] = (now + seconds, options)
            self._last_seen = now
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="onnxslim-watchdog")
                self._thread.daemon = True
                self._thread.start()
        return token

    def remove(self, token: int) -> None:
        with self._lock:
            self._runs.pop(token, None)

    def _loop(self) -> None:
        while True:
            time.sleep(self._POLL)
            now = time.monotonic()
            with self._lock:
                for token, (deadline, options) in list(self._runs.items()):
                    if deadline <= now:
                        options.terminate = True
                        del self._runs[token]
                if not self._runs and now - self._last_seen > 60.0:
                    self._thread = None
                    return


_WATCHDOG = _Watchdog()


@contextlib.contextmanager
def watchdog(options: ort.RunOptions, seconds: float | None) -> Iterator[None]:
    """Terminate the run using `options` if it is still going after `seconds`."""
    if not seconds:
        yield
        return
    token = _WATCHDOG.add(options, seconds)
    try:
        yield
    finally:
        _WATCHDOG.remove(token)


_ceiling_lock = threading.Lock()
_ceiling_depth = 0


@contextlib.contextmanager
def address_space_ceiling(extra: int | None) -> Iterator[None]:
    """Limit the process to its current address space plus `extra` bytes (outermost call
    only; nested calls and platforms without RLIMIT_AS run unlimited by this)."""
    global _ceiling_depth
    if not extra or resource is None:
        yield
        return
    with _ceiling_lock:
        _ceiling_depth += 1
        outer = _ceiling_depth == 1
    previous = None
    try:
        if outer:
            soft, hard = resource.getrlimit(resource.RLIMIT_AS)
            size = _address_space()
            if size is not None:
                limit = size + extra
                if hard != resource.RLIM_INFINITY:
                    limit = min(limit, hard)
                if soft == resource.RLIM_INFINITY or soft > limit:
                    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
                    previous = (soft, hard)
        yield
    finally:
        if previous is not None:
            resource.setrlimit(resource.RLIMIT_AS, previous)
        with _ceiling_lock:
            _ceiling_depth -= 1


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _address_space() -> int | None:
    """The process's virtual size in bytes (Linux /proc), None elsewhere."""
    try:
        fd = os.open("/proc/self/statm", os.O_RDONLY)
        try:
            return int(os.read(fd, 128).split()[0]) * _PAGE
        finally:
            os.close(fd)
    except (OSError, ValueError, IndexError):
        return None


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo", "rb") as meminfo:
            for line in meminfo:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
