"""Run one command on one fuzz case in a capped child, and judge what it did.

A worker (`python scripts/fuzz_judge.py --serve`) imports onnxslim once, then forks
a child per job: the child sets RLIMIT_AS, runs in its own process group, its own
working folder and TMPDIR, with stdout/stderr to files, calls the CLI's `main` (or
execs a peer tool); on exit 0 another capped child checks what it wrote (onnx.checker
and an ONNX Runtime session), so the tool's CPU seconds are its own: on a 300,000-node
graph ORT's session for that check alone takes 17-24 CPU s. The worker kills the group
at the timeout and compares the case folder before and after. Forking a warm interpreter costs
milliseconds where a fresh `onnxslim` process costs seconds of imports.

The time limit is CPU seconds (RLIMIT_CPU: a loaded machine does not turn slow runs
into hangs), with a wall-time backstop (`wall`, default 6x) for runs that block.

ONNX Runtime's own share (`ort_sessions`, see SESSIONS): on a valid case, the worker
first measures in another capped child what ORT alone needs to open the model and run
it once (`ort_cpu`), and the run's limit is `timeout + k x ort_cpu`, k the sessions the
command must open on different models (the input's reference and its output's check).
The limit stays `timeout` for our own work: a 300,000-node chain that ORT needs 19 CPU s
to open is not a hang of ours at 40 s, a tool that spends 31 s of its own is. The record
keeps both verdicts: `verdict` under that limit, `verdict_fixed` under `timeout` alone.

Verdicts that pass: `ok` (exit 0, loadable output, input not invalid) and `refused`
(exit 2, no traceback, nothing written). Everything else is a defect; see `judge`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import resource
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fuzz_build import SECRET_MARKER

PASS = ("ok", "refused")
WRITES = {"optimize", "quantize", "prune", "cluster", "export", "run"}
# Written into the temp folder by `import onnxruntime` itself in a fresh process (a
# 51-byte id, kept on purpose): every peer run left it, our forked runs import ORT first.
ORT_STATE = {".ses"}
COMMANDS = ("optimize", "inspect", "validate", "quantize", "prune", "cluster", "export", "run")
# The ORT sessions each command must open on different models, which the CPU limit allows
# for on top of `timeout` (k above): the input model's (the reference every check compares
# with, or validate's REF) and the output's (the check of what is written, or validate's
# CAND); a peer optimizer is judged as optimize. inspect opens none. The other sessions a
# command opens (feed search, held-out check, latency) are on one of those two models, so
# they are ours to share, not ORT's cost.
SESSIONS = {command: 2 for command in COMMANDS} | {"inspect": 0}


def command_argv(command: str, model: str, case_dir: str, calib: bool) -> list[str]:
    """Our CLI's arguments for `command` on `model` (outputs go to ./out)."""
    if command == "inspect":
        return ["inspect", model]
    if command == "validate":
        return ["validate", model, model, "--runs", "0", "--no-memory", "--max-samples", "2"]
    if command == "export":
        return ["export", model, "-o", "out/model.ort"]
    if command == "run":
        return ["run", "lossless", model, "-o", "out/model.onnx"]
    argv = [command, model, "-o", "out/model.onnx"]
    if command == "quantize" and calib:
        argv += ["--calib", str(Path(case_dir) / "calib.npz")]
    return argv


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> content hash (links by target) of everything in a case folder."""
    state: dict[str, str] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            rel = str(path.relative_to(folder))
            if path.is_symlink():
                state[rel] = "link:" + os.readlink(path)
            elif path.is_file():
                state[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            elif not path.is_dir():
                state[rel] = "special"
    return state


def _check_outputs(out: Path) -> str:
    """'' when every written model passes onnx.checker and loads in ORT, else why not."""
    import onnx  # already imported by the CLI in this process
    import onnxruntime as ort

    models = sorted(p for p in out.rglob("*") if p.suffix in (".onnx", ".ort"))
    if not models:
        return "no model written"
    for path in models:
        try:
            options = ort.SessionOptions()
            options.log_severity_level = 4
            if path.suffix == ".onnx":
                onnx.checker.check_model(str(path))
                graph = onnx.load(str(path), load_external_data=False).graph
                if len(graph.initializer) >= 20_000 or len(graph.node) >= 100_000:
                    # ORT's default options drop each initializer with a linear search
                    # (44 CPU s on a 100,000-initializer output, past this child's limit):
                    # loading is checked the way onnxslim's heavy-graph sessions load.
                    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
                    scratch = out.parent / "judge"  # neither the output nor TMPDIR
                    scratch.mkdir(exist_ok=True)
                    options.optimized_model_filepath = str(scratch / "check.onnx")
            ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # the reason is the verdict's detail
            text = str(exc).splitlines()[0][:200] if str(exc) else ""
            return f"{path.name}: {type(exc).__name__}: {text}"
    return ""


def _cap(job: dict[str, Any], cpu_factor: int = 1, cpu_limit: float | None = None) -> None:
    """In a forked child: its own process group, the memory cap and the CPU-second cap.
    CPU seconds, not wall time, decide a hang: a loaded machine must not fail a run.
    SIGXCPU at the limit, SIGKILL a second later."""
    os.setpgid(0, 0)
    cap = int(job["mem_mb"]) << 20
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    cpu = math.ceil(cpu_limit if cpu_limit is not None else job["timeout"]) * cpu_factor
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))


def _ort_once(model: Path, scratch: Path) -> None:
    """Open `model` in ORT the cheapest way it knows (no graph optimization, initializers
    kept: what onnxslim's sessions over heavy graphs do) and run it once on random inputs;
    raises when ORT cannot."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from fuzz_build import random_feed

    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.optimized_model_filepath = str(scratch / "ort-optimized.onnx")
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    proto = onnx.load(str(model), load_external_data=False)
    inits = {t.name for t in proto.graph.initializer}
    rng = np.random.default_rng(0)
    feeds = {vi.name: random_feed(vi, rng) for vi in proto.graph.input if vi.name not in inits}
    session.run(None, feeds)


def ort_cpu(job: dict[str, Any]) -> float | None:
    """CPU seconds ORT alone needs to open the job's model and run it once, measured in a
    child under the job's own caps (`timeout` CPU s); None when it cannot within them."""
    scratch = Path(tempfile.mkdtemp(prefix="fuzzort-", dir=job.get("scratch")))
    try:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _cap(job)
                _ort_once(Path(job["case_dir"]) / "model.onnx", scratch)
                code = 0
            except BaseException:  # ORT's refusal: no allowance
                pass
            os._exit(code)
        _, status, usage = os.wait4(pid, 0)
    finally:
        _remove(scratch)
    if os.waitstatus_to_exitcode(status) != 0:
        return None
    return round(usage.ru_utime + usage.ru_stime, 2)


_ORT_CPU: dict[str, float | None] = {}  # case folder -> ort_cpu, per worker


def cpu_limit(job: dict[str, Any]) -> tuple[float, float | None]:
    """The run's CPU limit and ORT's measured share (None: not measured or not allowed)."""
    sessions = int(job.get("ort_sessions", 0))
    if not sessions:
        return float(job["timeout"]), None
    if job["case_dir"] not in _ORT_CPU:
        _ORT_CPU[job["case_dir"]] = ort_cpu(job)
    share = _ORT_CPU[job["case_dir"]]
    return float(job["timeout"]) + sessions * (share or 0.0), share


def _child(job: dict[str, Any], run_dir: Path, limit: float) -> None:
    """In the forked child: cap, isolate, run, check; never returns."""
    code = 1
    try:
        _cap(job, cpu_limit=limit)
        os.chdir(run_dir)
        os.environ["TMPDIR"] = str(run_dir / "tmp")
        tempfile.tempdir = None
        for fd, name in ((1, "stdout"), (2, "stderr")):
            handle = os.open(run_dir / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(handle, fd)
            os.close(handle)
        if job.get("exec"):
            os.execv(job["exec"][0], job["exec"])
        from onnxslim.cli import main

        code = main(job["argv"])
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # anything escaping main is a traceback in the verdict
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        code = 1
    os._exit(code if isinstance(code, int) else 1)


def _check_written(job: dict[str, Any], run_dir: Path) -> None:
    """Check what a run wrote in another capped child, ours and the peers' alike (a peer
    execs its own tool, so nothing can follow its run in that child)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            _cap(job, cpu_factor=2)  # the judge's own session, not the tool's time
            (run_dir / "check.txt").write_text(_check_outputs(run_dir / "out") or "ok")
            code = 0
        except BaseException:  # no check.txt: judged "no output check ran"
            pass
        os._exit(code)
    os.waitpid(pid, 0)


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Fork, wait up to the timeout, collect what the verdict needs."""
    run_dir = Path(tempfile.mkdtemp(prefix="fuzzrun-", dir=job.get("scratch")))
    (run_dir / "out").mkdir()
    (run_dir / "tmp").mkdir()
    case_dir = Path(job["case_dir"])
    limit, share = cpu_limit(job)
    before = snapshot(case_dir)
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(job, run_dir, limit)
    timed_out = False
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() - start > (job.get("wall") or 6 * limit):
            timed_out = True
            for target in (
                lambda: os.killpg(pid, signal.SIGKILL),
                lambda: os.kill(pid, signal.SIGKILL),
            ):
                try:
                    target()
                except OSError:
                    pass
            _, status, usage = os.wait4(pid, 0)
            break
        time.sleep(0.02)
    seconds = time.monotonic() - start
    if not timed_out and status == 0 and job["command"] in WRITES:
        _check_written(job, run_dir)
    stderr = (run_dir / "stderr").read_bytes() if (run_dir / "stderr").exists() else b""
    stdout = (run_dir / "stdout").read_bytes() if (run_dir / "stdout").exists() else b""
    outputs = sorted(str(p.relative_to(run_dir / "out")) for p in (run_dir / "out").rglob("*"))
    leaked = SECRET_MARKER in stderr or SECRET_MARKER in stdout
    for path in (run_dir / "out").rglob("*"):
        if path.is_file() and not path.is_symlink() and SECRET_MARKER in path.read_bytes():
            leaked = True
    check = (run_dir / "check.txt").read_text() if (run_dir / "check.txt").exists() else None
    result = {
        "exit": os.waitstatus_to_exitcode(status),
        "timeout": timed_out,
        "seconds": round(seconds, 2),
        "cpu": round(usage.ru_utime + usage.ru_stime, 2),
        "cpu_limit": limit,
        "cpu_limit_fixed": job["timeout"],
        "ort_cpu": share,
        "maxrss_mb": round(usage.ru_maxrss / 1024),
        "stderr": stderr.decode("utf-8", "replace")[-3000:],
        "outputs": outputs,
        "check": check,
        "leaked": leaked,
        "changed": snapshot(case_dir) != before,
        "leftover_tmp": sorted(os.listdir(run_dir / "tmp")),
    }
    _remove(run_dir)
    return result


def _remove(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


def fixed_verdict(verdict: str, result: dict[str, Any]) -> str:
    """The verdict under the fixed limit (`timeout` CPU s, no share for ORT): a run that
    passed only thanks to ORT's share is a hang there."""
    fixed = result.get("cpu_limit_fixed", result["cpu_limit"])
    if verdict != "hang" and result.get("cpu", 0) >= fixed:
        return "hang"
    return verdict


def judge(
    expect: str, command: str, result: dict[str, Any], *, peer: bool = False
) -> tuple[str, str]:
    """(verdict, detail) for one run; see the module docstring for what passes."""
    stderr = result["stderr"]
    lines = [line for line in stderr.splitlines() if line.strip()]
    last = lines[-1][:200] if lines else ""
    code = result["exit"]
    if result["timeout"]:
        return "hang", f"killed after {result['seconds']} s of wall time"
    # Only RLIMIT_CPU sends SIGXCPU (rusage can read a little under the limit when it does);
    # a SIGKILL is the limit's hard second only when the CPU time reached it.
    if code == -signal.SIGXCPU or (
        code == -signal.SIGKILL and result.get("cpu", 0) >= result["cpu_limit"]
    ):
        return "hang", f"CPU limit: {result['cpu']} s"
    if result["leaked"]:
        return "escape", "secret bytes outside the model folder reached the output"
    if result["changed"]:
        return "input-changed", "the case folder changed"
    leftover = [name for name in result["leftover_tmp"] if name not in ORT_STATE]
    if leftover:
        return "leftover", f"temp files left: {leftover[:3]}"
    memory = any(k in stderr for k in ("MemoryError", "bad_alloc", "out of memory"))
    if code < 0:
        return ("memory" if memory else "crash"), f"signal {-code}; {last}"
    if "Traceback (most recent call last)" in stderr and not peer:
        return "traceback", last
    if code == 0:
        if command in WRITES and result["check"] != "ok":
            return "bad-output", result["check"] or "no output check ran"
        if expect == "invalid":
            return "accepted-invalid", "exit 0 on invalid input"
        return "ok", ""
    if result["outputs"]:
        return "partial-write", f"exit {code} but wrote {result['outputs'][:3]}"
    if memory:
        return "memory", last
    if expect == "valid":
        return "refused-valid", f"exit {code}: {last}"
    if code == 2 or (peer and code != 0):
        return "refused", last
    if code == 3:
        return "internal-error", last
    return f"exit-{code}", last


def serve() -> None:
    """Worker loop: one JSON job per stdin line, one JSON result per stdout line."""
    import onnxslim.cli  # noqa: F401  (warm imports before forking)

    out = sys.stdout
    for line in sys.stdin:
        job = json.loads(line)
        try:
            result = run_job(job)
        except Exception as exc:  # a worker-side failure is reported, not fatal
            result = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps({"id": job["id"], **result}) + "\n")
        out.flush()


class Pool:
    """`size` warm workers; `map` runs jobs on them and yields (job, result) as they finish."""

    def __init__(self, size: int) -> None:
        import subprocess

        script = str(Path(__file__).resolve())
        self.workers = [
            subprocess.Popen(
                [sys.executable, script, "--serve"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                bufsize=1,
            )
            for _ in range(size)
        ]

    def map(self, jobs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        import selectors

        pending = list(reversed(jobs))
        busy: dict[int, dict[str, Any]] = {}
        selector = selectors.DefaultSelector()
        for index, worker in enumerate(self.workers):
            selector.register(worker.stdout, selectors.EVENT_READ, index)  # type: ignore[arg-type]

        def feed(index: int) -> None:
            if pending:
                job = pending.pop()
                busy[index] = job
                self.workers[index].stdin.write(json.dumps(job) + "\n")  # type: ignore[union-attr]
                self.workers[index].stdin.flush()  # type: ignore[union-attr]

        for index in range(len(self.workers)):
            feed(index)
        while busy:
            for key, _ in selector.select():
                index = key.data
                line = self.workers[index].stdout.readline()  # type: ignore[union-attr]
                if not line:
                    raise RuntimeError(f"fuzz worker {index} died")
                job = busy.pop(index)
                yield job, json.loads(line)
                feed(index)
        selector.close()

    def close(self) -> None:
        for worker in self.workers:
            worker.stdin.close()  # type: ignore[union-attr]
            worker.wait(timeout=30)


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
