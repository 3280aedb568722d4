"""Feed every fuzz case to every command that reads a model, and judge each run.

    python scripts/fuzz.py                       # whole corpus, every command, 2 workers
    python scripts/fuzz.py --commands optimize,inspect --family bombs --jobs 1
    python scripts/fuzz.py --sample 20 --peers   # 20 cases per family, OnnxSlim and onnxsim too

The corpus is generated first when absent (scripts/fuzz_corpus.py). Each run is a
child with a memory cap (RLIMIT_AS, --mem-mb) and a timeout, in its own temp
folder (scripts/fuzz_judge.py); prints a table of command x verdict and every
defect. `--peers` runs OnnxSlim (PyPI `onnxslim`) and onnx-simplifier on the same
cases as an `optimize`, each from its own virtual environment (created on first use
under ~/.cache/onnxslim-bench/venvs, shared with scripts/bench_optimize.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fuzz_corpus  # noqa: E402
from fuzz_build import Case  # noqa: E402
from fuzz_judge import (  # noqa: E402
    COMMANDS,
    PASS,
    SESSIONS,
    Pool,
    command_argv,
    fixed_verdict,
    judge,
)

VENVS = Path("~/.cache/onnxslim-bench/venvs").expanduser()
PEERS = {
    "OnnxSlim": ("onnxslim-peer", ["onnxslim==0.1.98", "onnxruntime"], "onnxslim"),
    "onnxsim": ("onnxsim-peer", ["onnxsim==0.8.1", "onnxruntime"], "onnxsim"),
}


def peer_exe(tool: str) -> str:
    """The peer's console script, its venv created on first use."""
    folder, requirements, script = PEERS[tool]
    venv = VENVS / folder
    exe = venv / "bin" / script
    if not exe.is_file():
        print(f"creating {venv} ({' '.join(requirements)}) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *requirements],
            check=True,
            timeout=1800,
        )
    return str(exe)


def sample(cases: list[Case], per_family: int, seed: int = 0, heavy: bool = False) -> list[Case]:
    """Up to `per_family` cases of each family, seeded; heavy cases only if asked."""
    rng = np.random.default_rng(seed)
    chosen: list[Case] = []
    for family in dict.fromkeys(c.family for c in cases):
        members = [c for c in cases if c.family == family and (heavy or not c.heavy)]
        if len(members) > per_family:
            picks = sorted(rng.choice(len(members), per_family, replace=False).tolist())
            members = [members[i] for i in picks]
        chosen.extend(members)
    return chosen


def make_jobs(
    root: Path,
    cases: list[Case],
    commands: list[str],
    *,
    timeout: float,
    mem_mb: int,
    scratch: str | None = None,
    wall: float | None = None,
    ort_share: bool = True,
) -> list[dict[str, Any]]:
    """One job per case x command (peer names run the peer as an optimizer). With
    `ort_share`, a valid case's CPU limit adds ORT's own cost of the sessions the command
    must open (fuzz_judge.SESSIONS); `verdict_fixed` keeps the verdict without it."""
    jobs = []
    for case in cases:
        case_dir = root / case.path
        model = str(case_dir / "model.onnx")
        for command in commands:
            job: dict[str, Any] = {
                "id": f"{case.path}:{command}",
                "case": case.path,
                "expect": "either" if command in case.either_for else case.expect,
                "command": command,
                "case_dir": str(case_dir),
                "timeout": timeout,
                "mem_mb": mem_mb,
                "scratch": scratch,
            }
            if wall:
                job["wall"] = wall
            if ort_share and job["expect"] == "valid":
                job["ort_sessions"] = SESSIONS.get(command, SESSIONS["optimize"])
            if command in PEERS:
                job["exec"] = [peer_exe(command), model, "out/model.onnx"]
                job["command"] = "optimize"  # judged as an optimizer
                job["tool"] = command
            else:
                job["argv"] = command_argv(command, model, str(case_dir), case.calib)
            jobs.append(job)
    return jobs


def run(
    jobs: list[dict[str, Any]], workers: int, progress: bool = False, sink: Path | None = None
) -> list[dict[str, Any]]:
    """Run the jobs; each record has the job, the raw result, verdict and detail. With
    `sink`, each record is also appended there as one JSON line when it finishes, so an
    interrupted run keeps what it measured (`--resume` skips those runs)."""
    pool = Pool(workers)
    stream = sink.open("a") if sink else None
    records = []
    try:
        for done, (job, result) in enumerate(pool.map(jobs), 1):
            if "error" in result:
                verdict, detail = "worker-error", result["error"]
            else:
                verdict, detail = judge(job["expect"], job["command"], result, peer="tool" in job)
            fixed = verdict if "error" in result else fixed_verdict(verdict, result)
            records.append(
                {**job, **result, "verdict": verdict, "verdict_fixed": fixed, "detail": detail}
            )
            if stream:
                stream.write(json.dumps(records[-1]) + "\n")
                stream.flush()
            if progress and (verdict not in PASS or done % 50 == 0):
                print(f"[{done}/{len(jobs)}] {job['id']} {verdict} {detail[:100]}", flush=True)
    finally:
        pool.close()
        if stream:
            stream.close()
    return records


def tool_of(record: dict[str, Any]) -> str:
    return record.get("tool") or record["command"]


def summary(records: list[dict[str, Any]]) -> str:
    """Markdown table: tool/command x verdict counts, passes first."""
    tools = list(dict.fromkeys(tool_of(r) for r in records))
    counts = Counter((tool_of(r), r["verdict"]) for r in records)
    verdicts = list(PASS) + sorted({r["verdict"] for r in records} - set(PASS))
    head = (
        "| command | runs | pass | "
        + " | ".join(verdicts)
        + " | pass, fixed cap | max s | cpu s | max ORT s |"
    )
    rows = [head, "|" + "---|" * (len(verdicts) + 7)]
    for tool in tools:
        mine = [r for r in records if tool_of(r) == tool]
        passed = sum(r["verdict"] in PASS for r in mine)
        cells = [str(counts.get((tool, v), 0) or "") for v in verdicts]
        passed_fixed = sum(r.get("verdict_fixed", r["verdict"]) in PASS for r in mine)
        slowest = max(r.get("seconds", 0) for r in mine)
        cpu = sum(r.get("cpu", 0) for r in mine)
        ort = max((r.get("ort_cpu") or 0 for r in mine), default=0)
        rows.append(
            f"| {tool} | {len(mine)} | {passed} | "
            + " | ".join(cells)
            + f" | {passed_fixed} | {slowest:.0f} | {cpu:.0f} | {ort:.1f} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=fuzz_corpus.DEFAULT_ROOT)
    parser.add_argument("--commands", default=",".join(COMMANDS))
    parser.add_argument("--family", action="append")
    parser.add_argument("--case", action="append", help="only these case paths (family/id)")
    parser.add_argument("--sample", type=int, default=0, help="cases per family (0: all)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=30.0, help="CPU seconds per run")
    parser.add_argument(
        "--no-ort-share",
        action="store_true",
        help="the CPU limit is --timeout alone, also on valid cases whose ORT sessions cost "
        "most of it (default: plus k x ORT's own CPU to open and run the case, see fuzz_judge)",
    )
    parser.add_argument("--mem-mb", type=int, default=4096)
    parser.add_argument(
        "--wall",
        type=float,
        help="wall-time backstop per run, seconds (default 6x --timeout); raise it on a "
        "loaded machine, where a run under its CPU limit can pass 6x in wall time",
    )
    parser.add_argument("--peers", action="store_true")
    parser.add_argument("--peers-sample", type=int, default=0, help="peers on N cases per family")
    parser.add_argument("--json", type=Path, help="write every record here")
    parser.add_argument(
        "--jsonl", type=Path, help="append each record here as it finishes (kept on interrupt)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="skip the runs already in --jsonl, report all"
    )
    args = parser.parse_args()
    if not (args.corpus / "manifest.json").is_file():
        fuzz_corpus.generate(args.corpus)
    cases = fuzz_corpus.load_manifest(args.corpus)
    if args.family:
        cases = [c for c in cases if c.family in args.family]
    if args.case:
        cases = [c for c in cases if c.path in args.case]
    if args.sample:
        cases = sample(cases, args.sample, heavy=True)
    commands = args.commands.split(",")
    limits: dict[str, Any] = {
        "timeout": args.timeout,
        "mem_mb": args.mem_mb,
        "wall": args.wall,
        "ort_share": not args.no_ort_share,
    }
    jobs = make_jobs(args.corpus, cases, commands, **limits)
    if args.peers:
        peer_cases = (
            sample(cases, args.peers_sample, seed=1, heavy=True) if args.peers_sample else cases
        )
        jobs += make_jobs(args.corpus, peer_cases, list(PEERS), **limits)
        commands += list(PEERS)
    print(f"{len(cases)} cases x {len(commands)} commands = {len(jobs)} runs", flush=True)
    earlier: list[dict[str, Any]] = []
    if args.resume and args.jsonl and args.jsonl.is_file():
        earlier = [json.loads(line) for line in args.jsonl.read_text().splitlines() if line]
        done = {(r["id"], r.get("tool")) for r in earlier}
        jobs = [j for j in jobs if (j["id"], j.get("tool")) not in done]
        print(f"resuming: {len(earlier)} runs already measured, {len(jobs)} to go", flush=True)
    start = time.monotonic()
    records = earlier + run(jobs, args.jobs, progress=True, sink=args.jsonl)
    print(
        f"\n{len(records)} runs in {time.monotonic() - start:.0f} s "
        f"(CPU limit {args.timeout:.0f} s, cap {args.mem_mb} MB, {args.jobs} workers)\n"
    )
    print(summary(records))
    defects = [r for r in records if r["verdict"] not in PASS]
    print(f"\n{len(defects)} defects:")
    for r in sorted(defects, key=lambda r: (tool_of(r), r["verdict"], r["case"])):
        print(
            f"  {tool_of(r):9s} {r['verdict']:16s} {r['case']:34s} [{r['expect']}] "
            f"{r['detail'][:150]}"
        )
    shared = [
        r for r in records if r["verdict"] in PASS and r.get("verdict_fixed", "hang") not in PASS
    ]
    if shared:
        print(f"\n{len(shared)} runs pass only with ORT's share of the CPU limit:")
        for r in shared:
            print(
                f"  {tool_of(r):9s} {r['case']:34s} {r['cpu']:.1f} CPU s, limit "
                f"{r['cpu_limit']:.1f} = {r['cpu_limit_fixed']:.0f} + "
                f"{r.get('ort_sessions', 0)} x ORT {r.get('ort_cpu') or 0:.1f}"
            )
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
