"""Benchmark `onnxslim optimize` against OnnxSlim and onnx-simplifier.

For each model: node count before and after each tool (subgraphs and local functions
included), file size after, wall time of the tool's command line, and whether the
outputs still match the original on ONNX Runtime (same feeds, graph optimizations
disabled so the graph itself is compared). A tool that crashes, times out or moves
an output by more than 1e-5 relative (max |diff| / max |reference|) is a FAIL.

Each peer runs in its own virtual environment, created on first use under
~/.cache/onnxslim-bench/venvs: the PyPI package `onnxslim` (OnnxSlim) has the same
import name as this project, so it can never share an interpreter with us. Our side
runs `onnxslim optimize` (the registry's DEFAULT_OPTIMIZE, each pass guarded on
ORT) in the interpreter running this script. All three are timed the same way:
one subprocess per model, interpreter start-up included.

    python scripts/bench_optimize.py                       # exported corpus + models/
    python scripts/bench_optimize.py --corpus devmodels    # ../shared/devmodels (fetched)
    python scripts/bench_optimize.py --models resnet_mini,bert_mini --out results.json

The exported corpus comes from scripts/export_corpus.py (run it first).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[1]
CACHE = Path("~/.cache/onnxslim-bench").expanduser()
CORPUS = CACHE / "corpus"
VENVS = CACHE / "venvs"
DEVMODELS = Path(os.environ.get("DEVMODELS_DIR", "~/.cache/devmodels")).expanduser()
DEVMODELS_CODE = REPO.parent / "shared" / "devmodels"
RTOL = 1e-5

# Peers, pinned: name -> (venv folder, pip requirements, console script).
PEERS = {
    "OnnxSlim": ("onnxslim-peer", ["onnxslim==0.1.98", "onnxruntime"], "onnxslim"),
    "onnxsim": ("onnxsim-peer", ["onnxsim==0.8.1", "onnxruntime"], "onnxsim"),
}
TOOLS = ("ours", *PEERS)

_OURS = (
    "import sys; from onnxslim.cli import main; "
    "sys.exit(main(['optimize', sys.argv[1], '-o', sys.argv[2]]))"
)


@dataclass
class ToolResult:
    status: str = "ok"  # ok, crash, timeout, FAIL (parity)
    nodes: int | None = None
    bytes: int | None = None
    seconds: float | None = None
    max_rel: float | None = None
    message: str = ""


@dataclass
class ModelResult:
    name: str
    source: str
    nodes_before: int
    bytes_before: int
    tools: dict[str, ToolResult] = field(default_factory=dict)


# --------------------------------------------------------------------------- environments


def peer_command(tool: str) -> list[str]:
    """The peer's console script, creating its virtual environment on first use."""
    folder, requirements, script = PEERS[tool]
    venv = VENVS / folder
    exe = venv / "bin" / script
    if not exe.is_file():
        print(f"creating {venv} ({' '.join(requirements)}) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *requirements], check=True
        )
    return [str(exe)]


def tool_command(tool: str, src: Path, dst: Path) -> list[str]:
    if tool == "ours":
        return [sys.executable, "-c", _OURS, str(src), str(dst)]
    return [*peer_command(tool), str(src), str(dst)]


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")),
        [],
    )
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in text.splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    wanted = [
        f
        for f in flags
        if f.startswith(("avx2", "avx512", "avx_vnni", "amx")) or f in ("fma", "f16c")
    ]
    shown = " ".join(sorted(set(wanted))) or "none of avx2/avx512/vnni"
    return f"{model}; {os.cpu_count()} cpus; flags: {shown}"


# --------------------------------------------------------------------------- models and feeds


@dataclass
class Model:
    name: str
    path: Path
    source: str
    feeds: list[dict[str, np.ndarray]]


def count_nodes(proto: onnx.ModelProto) -> int:
    """Nodes in the graph, every nested subgraph and every local function."""

    def in_graph(graph: onnx.GraphProto) -> int:
        return sum(
            1
            + sum(
                in_graph(g)
                for a in n.attribute
                for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs))
            )
            for n in graph.node
        )

    total = in_graph(proto.graph)
    for function in proto.functions:
        total += sum(
            1
            + sum(
                in_graph(g)
                for a in n.attribute
                for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs))
            )
            for n in function.node
        )
    return total


def file_bytes(path: Path) -> int:
    """The model file plus any external-data files it references."""
    total = path.stat().st_size
    proto = onnx.load(str(path), load_external_data=False)
    locations = set()
    for tensor in onnx.external_data_helper._get_all_tensors(proto):
        for entry in tensor.external_data:
            if entry.key == "location":
                locations.add(entry.value)
    for location in locations:
        data = path.parent / location
        if data.is_file():
            total += data.stat().st_size
    return total


def _stacked_feeds(npz: Path, input_names: list[str], count: int) -> list[dict[str, np.ndarray]]:
    with np.load(npz) as data:
        names = [n for n in input_names if n in data.files]
        if len(names) != len(input_names):
            return []
        size = min(len(data[n]) for n in names)
        return [{n: np.asarray(data[n][i]) for n in names} for i in range(min(size, count))]


def _generated_feeds(path: Path, count: int) -> list[dict[str, np.ndarray]]:
    from onnxslim import io as slim_io
    from onnxslim.feeds import generate_feeds, input_specs

    return generate_feeds(input_specs(slim_io.load(path)), count, seed=0)


def _input_names(path: Path) -> list[str]:
    proto = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    return [i.name for i in proto.graph.input if i.name not in inits]


def corpus_models(selected: set[str]) -> list[Model]:
    models = []
    manifest = CORPUS / "manifest.json"
    names = sorted(json.loads(manifest.read_text())["models"]) if manifest.is_file() else []
    for name in names:
        path = CORPUS / f"{name}.onnx"
        if (selected and name not in selected) or not path.is_file():
            continue
        feeds = _stacked_feeds(CORPUS / f"{name}.feeds.npz", _input_names(path), 1)
        feeds += _generated_feeds(path, 1)
        models.append(Model(name, path, "export_corpus", feeds))
    for path in sorted((REPO / "models").glob("*.onnx")):
        name = path.stem
        if selected and name not in selected:
            continue
        feeds = []
        for suffix in (".eval.npz", ".calib.npz"):
            if (path.parent / f"{name}{suffix}").is_file():
                feeds = _stacked_feeds(path.parent / f"{name}{suffix}", _input_names(path), 2)
                break
        models.append(Model(name, path, "models/", feeds or _generated_feeds(path, 2)))
    return models


def devmodels_models(selected: set[str]) -> list[Model]:
    manifest = DEVMODELS / "manifest.json"
    if not manifest.is_file():
        print(f"devmodels not fetched ({DEVMODELS}); run ../shared/devmodels/fetch.py")
        return []
    sys.path.insert(0, str(DEVMODELS_CODE))
    from inputs import make_feeds  # type: ignore[import-not-found]

    models = []
    for entry in json.loads(manifest.read_text())["models"]:
        path = DEVMODELS / f"{entry['id']}.onnx"
        if (selected and entry["id"] not in selected) or not path.is_file():
            continue
        models.append(Model(entry["id"], path, "devmodels", make_feeds(entry["id"], 2, seed=0)))
    return models


# --------------------------------------------------------------------------- running


def output_names(path: Path) -> list[str]:
    return [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]


def run_outputs(path: Path, feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return [session.run(None, {n: f[n] for n in names}) for f in feeds]


def max_relative_error(
    reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]], names: list[str]
) -> tuple[float, str]:
    """(max |cand - ref| / max |ref| over every output and feed, why it is infinite if it is).

    Integer and boolean outputs must match exactly."""
    worst = 0.0
    for ref_outputs, cand_outputs in zip(reference, candidate, strict=False):
        if len(ref_outputs) != len(cand_outputs):
            return float("inf"), f"{len(cand_outputs)} outputs instead of {len(ref_outputs)}"
        for name, ref, cand in zip(names, ref_outputs, cand_outputs, strict=False):
            ref, cand = np.asarray(ref), np.asarray(cand)
            if ref.shape != cand.shape:
                return float("inf"), f"output {name!r} has shape {cand.shape}, expected {ref.shape}"
            if ref.dtype.kind not in "fc":
                if not np.array_equal(ref, cand):
                    return float("inf"), f"integer output {name!r} differs"
                continue
            r, c = ref.astype(np.float64), cand.astype(np.float64)
            same = (np.isnan(r) & np.isnan(c)) | (np.isinf(r) & (r == c))
            diff = np.where(same, 0.0, np.abs(r - c))
            if np.isnan(diff).any():
                return float(
                    "inf"
                ), f"output {name!r} has NaN where the original has a number (or inf)"
            scale = float(np.max(np.abs(np.where(np.isfinite(r), r, 0.0)), initial=0.0))
            err = float(np.max(diff, initial=0.0))
            worst = max(worst, err / scale if scale > 0 else (0.0 if err == 0 else float("inf")))
    return worst, ""


def run_tool(
    tool: str, model: Model, reference: list[list[np.ndarray]], work: Path, timeout: float
) -> ToolResult:
    out = work / f"{model.name}.{tool}.onnx"
    command = tool_command(tool, model.path, out)
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return ToolResult(
            "timeout", seconds=time.perf_counter() - start, message=f"over {timeout:.0f}s"
        )
    seconds = time.perf_counter() - start
    if proc.returncode != 0 or not out.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        return ToolResult(
            "crash",
            seconds=seconds,
            message=(tail[-1] if tail else f"exit {proc.returncode}")[:200],
        )
    result = ToolResult(seconds=seconds)
    try:
        result.nodes = count_nodes(onnx.load(str(out), load_external_data=False))
        result.bytes = file_bytes(out)
        result.max_rel, result.message = max_relative_error(
            reference, run_outputs(out, model.feeds), output_names(model.path)
        )
    except Exception as exc:  # a result ORT cannot run is a failure, not a benchmark crash
        result.status, result.message = (
            "FAIL",
            f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}",
        )
        return result
    if not result.max_rel <= RTOL:
        result.status = "FAIL"
        result.message = result.message or f"max relative error {result.max_rel:.1e}"
    return result


def bench(models: list[Model], tools: list[str], timeout: float) -> list[ModelResult]:
    results = []
    with tempfile.TemporaryDirectory(prefix="onnxslim-bench-") as tmp:
        work = Path(tmp)
        for model in models:
            proto = onnx.load(str(model.path), load_external_data=False)
            row = ModelResult(model.name, model.source, count_nodes(proto), file_bytes(model.path))
            del proto
            reference = run_outputs(model.path, model.feeds)
            for tool in tools:
                row.tools[tool] = run_tool(tool, model, reference, work, timeout)
                for leftover in work.glob(f"{model.name}.{tool}.onnx*"):
                    leftover.unlink()
            results.append(row)
            print(format_row(row, tools), flush=True)
    return results


# --------------------------------------------------------------------------- report


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}MB" if n >= 1e5 else f"{n / 1e3:.1f}kB"


def _cell(r: ToolResult) -> str:
    if r.status in ("crash", "timeout"):
        return f"{r.status.upper():>6} {'':>9} {r.seconds or 0:6.1f}s {'':>9}"
    parity = "FAIL" if r.status == "FAIL" else "ok"
    rel = f"{r.max_rel:.0e}" if r.max_rel is not None and np.isfinite(r.max_rel) else "inf"
    nodes = r.nodes if r.nodes is not None else "-"
    return f"{nodes:>6} {_size(r.bytes):>9} {r.seconds:6.1f}s {parity:>4} {rel:>5}"


def header(tools: list[str]) -> str:
    cells = "".join(f" | {t + ': nodes size time parity':^38}" for t in tools)
    return f"{'model':26s} {'nodes':>6} {'size':>9}{cells}"


def format_row(row: ModelResult, tools: list[str]) -> str:
    cells = "".join(f" | {_cell(row.tools[t]):38s}" for t in tools)
    return f"{row.name[:26]:26s} {row.nodes_before:6d} {_size(row.bytes_before):>9}{cells}"


def summary(results: list[ModelResult], tools: list[str]) -> list[str]:
    lines = []
    for tool in tools:
        rs = [r.tools[tool] for r in results]
        ok = [r for r in rs if r.status == "ok"]
        failed = [
            f"{m.name} ({m.tools[tool].status})" for m in results if m.tools[tool].status != "ok"
        ]
        lines.append(
            f"{tool:9s} total {sum(r.seconds or 0 for r in rs):7.1f}s  ok {len(ok)}/{len(rs)}  "
            f"failures: {', '.join(failed) or 'none'}"
        )
    if "ours" in tools and "OnnxSlim" in tools:
        ours = sum(r.tools["ours"].seconds or 0 for r in results)
        slim = sum(r.tools["OnnxSlim"].seconds or 0 for r in results)
        lines.append(
            f"wall time ours/OnnxSlim: {ours / slim:.2f}x"
            if slim
            else "wall time ours/OnnxSlim: n/a"
        )
    peers = [t for t in tools if t != "ours"]
    if "ours" in tools and peers:
        wins = ties = behind = 0
        behind_names = []
        for r in results:
            counts = [
                r.tools[p].nodes
                for p in peers
                if r.tools[p].status == "ok" and r.tools[p].nodes is not None
            ]
            mine = r.tools["ours"].nodes if r.tools["ours"].status == "ok" else None
            if mine is None:
                behind += 1
                behind_names.append(f"{r.name} (ours {r.tools['ours'].status})")
                continue
            best = min(counts) if counts else None
            if best is None or mine < best:
                wins += 1
            elif mine == best:
                ties += 1
            else:
                behind += 1
                behind_names.append(f"{r.name} ({mine} vs {best})")
        lines.append(
            f"node count vs best working peer: fewer {wins}, equal {ties}, more {behind}"
            + (f": {', '.join(behind_names)}" if behind_names else "")
        )
        mine_total = sum(r.tools["ours"].nodes or 0 for r in results)
        best_total = sum(
            min(
                [r.tools[p].nodes for p in peers if r.tools[p].status == "ok" and r.tools[p].nodes]
                or [r.nodes_before]
            )
            for r in results
        )
        lines.append(
            f"total nodes: before {sum(r.nodes_before for r in results)}, ours {mine_total}, "
            f"best peer per model {best_total}"
        )
    for r in results:
        for tool in tools:
            if r.tools[tool].status != "ok":
                lines.append(f"{tool} on {r.name}: {r.tools[tool].status}: {r.tools[tool].message}")
    lines.append(f"CPU: {cpu_flags()}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated model names (default: all)")
    parser.add_argument(
        "--corpus",
        choices=("export", "devmodels", "all"),
        default="export",
        help="export: scripts/export_corpus.py output + models/; devmodels: the shared corpus",
    )
    parser.add_argument(
        "--tools", default=",".join(TOOLS), help=f"comma-separated subset of {', '.join(TOOLS)}"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per tool per model")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    selected = {m for m in args.models.split(",") if m}
    tools = [t for t in args.tools.split(",") if t]
    unknown = [t for t in tools if t not in TOOLS]
    if unknown:
        parser.error(f"unknown tool(s) {', '.join(unknown)}")
    models: list[Model] = []
    if args.corpus in ("export", "all"):
        models += corpus_models(selected)
    if args.corpus in ("devmodels", "all"):
        models += devmodels_models(selected)
    if not models:
        print(
            "no models found: run scripts/export_corpus.py (or fetch the devmodels)",
            file=sys.stderr,
        )
        return 2
    for tool in tools:
        if tool != "ours":
            peer_command(tool)
    print(
        f"parity: ORT CPU, graph optimizations off, "
        f"FAIL if max|diff|/max|ref| > {RTOL:g} or not runnable"
    )
    print(header(tools))
    results = bench(models, tools, args.timeout)
    lines = summary(results, tools)
    print("\n".join(lines))
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "cpu": cpu_flags(),
                    "python": sys.version.split()[0],
                    "summary": lines,
                    "models": [
                        {**asdict(r), "tools": {t: asdict(v) for t, v in r.tools.items()}}
                        for r in results
                    ],
                },
                indent=1,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
