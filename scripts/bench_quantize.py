"""Benchmark static int8 quantization: onnxslim against onnxruntime and NNCF, in one run.

    python scripts/bench_quantize.py [--models digits_cnn,captcha_crnn,...] [--calib 100]

Per model, each tool quantizes the same float model from the same calibration
samples, each in its own subprocess (so wall time and peak RSS are that tool's
alone; RSS from a tiny launcher's wait4, see scripts/peak_rss.py: wait4 on a direct
child of this process reported this process's own peak):
  onnxslim        onnxslim's static quantizer with its defaults (what `onnxslim quantize
                  --calib DATA --no-verify` runs: load, quantize_static, save);
  onnxslim+acc    the accuracy-aware mode (max drop 0.01) with the model's own metric
                  (scripts/model_metrics.py) passed as a callable through the API,
                  for models with a labelled evaluation set;
  ort             onnxruntime.quantization.quantize_static, QDQ, per_channel=True,
                  MinMax, after quant_pre_process (other settings at ORT's defaults);
  nncf            nncf.quantize on the ONNX model, run in its own virtual environment
                  (~/.cache/onnxslim-bench/venvs/nncf; created with pip when absent).
Then, in this process: the metric of the float model and of each int8 model,
file size, latency (one intra-op thread, ORT_ENABLE_ALL, all models of a row timed
interleaved, median of rounds) as a ratio to the float model, and onnxslim's peak
RSS with 100 and with 1,000 calibration samples.

Metrics: models/ examples use scripts/model_metrics.py on their labelled eval set;
the devmodels corpus has no labels, so its metric is top-1 agreement with the float
model on held-out generated feeds (the float model scores 1.0), with the cosine of
the outputs beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from bench_quantize_workers import input_names, metrics_module, stacked_feeds
from peak_rss import run_measured

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
DEVMODELS = Path(os.environ.get("DEVMODELS_DIR", "~/.cache/devmodels")).expanduser()
DEVMODELS_CODE = Path(os.environ.get("DEVMODELS_CODE", REPO.parent / "shared" / "devmodels"))
PEER_VENVS = Path("~/.cache/onnxslim-bench/venvs").expanduser()
NNCF_VENV = PEER_VENVS / "nncf"
DEFAULT_DEVMODELS = ("captcha_crnn", "open_nsfw_resnet")
TOOLS = ("onnxslim", "onnxslim+acc", "ort", "nncf")
TUNE_SHARE = 3  # labelled sets: 1/TUNE_SHARE tunes onnxslim+acc, the rest scores every tool
RSS_CHECK_MAX_BYTES = 256 << 20  # skip the 1,000-sample RSS run when its data file would be larger


# --- model cases ----------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    path: Path
    calib: Path  # stacked samples, `--calib` of them
    calib_1000: Path | None  # the same, 1,000 samples (None: skipped, with reason)
    eval_feeds: list[dict[str, np.ndarray]]
    eval_arrays: dict[str, np.ndarray] | None  # labelled sets: the scored part of the eval .npz
    eval_path: Path | None
    tune_path: Path | None = None  # labelled sets: the part the accuracy-aware variant tunes on
    rss_note: str = ""
    float_outputs: list[np.ndarray] = field(default_factory=list)

    @property
    def labelled(self) -> bool:
        return self.eval_arrays is not None


def _write_stacked(path: Path, feeds: list[dict[str, np.ndarray]]) -> Path:
    np.savez(path, **{n: np.stack([f[n] for f in feeds]) for n in feeds[0]})
    return path


def _repeat_to(feeds: list[dict[str, np.ndarray]], count: int) -> list[dict[str, np.ndarray]]:
    return [feeds[i % len(feeds)] for i in range(count)]


def prepare(name: str, calib_count: int, eval_limit: int, work: Path) -> Case | str:
    """A Case for a models/ example or a devmodels id, or a reason it is unavailable."""
    local = MODELS / f"{name}.onnx"
    if local.is_file():
        calib_src, eval_src = MODELS / f"{name}.calib.npz", MODELS / f"{name}.eval.npz"
        if not calib_src.is_file() or not eval_src.is_file():
            return f"{name}: calibration or evaluation data missing in models/"
        names = input_names(local)
        calib_all = stacked_feeds(str(calib_src), names)
        calib = _write_stacked(
            work / f"{name}.calib{calib_count}.npz", _repeat_to(calib_all, calib_count)
        )
        calib_1000 = _write_stacked(work / f"{name}.calib1000.npz", _repeat_to(calib_all, 1000))
        with np.load(eval_src) as data:
            everything = {k: data[k] for k in data.files}
        # The accuracy-aware variant tunes on the first third and every tool is scored on
        # the rest: scoring on the samples it tuned on would flatter it.
        cut = len(everything["labels"]) // TUNE_SHARE
        tune = work / f"{name}.tune.npz"
        np.savez(tune, **{k: v[:cut] for k, v in everything.items()})
        arrays = {k: v[cut:][:eval_limit] for k, v in everything.items()}
        feeds = [{n: arrays[n][i] for n in names} for i in range(len(arrays[names[0]]))]
        note = (
            ""
            if len(calib_all) >= 1000
            else f"(models/ has {len(calib_all)} calibration samples, repeated to 1,000)"
        )
        return Case(
            name, local, calib, calib_1000, feeds, arrays, eval_src, tune_path=tune, rss_note=note
        )
    model = DEVMODELS / f"{name}.onnx"
    if not model.is_file():
        return f"{name}: not in models/ and not fetched in {DEVMODELS}"
    sys.path.insert(0, str(DEVMODELS_CODE))
    from inputs import make_feeds  # type: ignore[import-not-found]

    calib_feeds = make_feeds(name, calib_count, seed=0)
    calib = _write_stacked(work / f"{name}.calib{calib_count}.npz", calib_feeds)
    per_sample = sum(a.nbytes for a in calib_feeds[0].values())
    calib_1000, note = None, ""
    if per_sample * 1000 <= RSS_CHECK_MAX_BYTES:
        calib_1000 = _write_stacked(work / f"{name}.calib1000.npz", make_feeds(name, 1000, seed=0))
    else:
        note = f"1,000-sample run skipped: {per_sample * 1000 / 2**20:.0f} MB of calibration data"
    return Case(
        name,
        model,
        calib,
        calib_1000,
        make_feeds(name, eval_limit, seed=1),
        None,
        None,
        rss_note=note,
    )


# --- running tools -------------------------------------------------------------------------------


@dataclass
class ToolRun:
    tool: str
    path: Path | None
    seconds: float = float("nan")
    peak_rss_mb: float = float("nan")
    error: str = ""
    note: str = ""
    metric: float = float("nan")
    cosine: float = float("nan")
    latency_ratio: float = float("nan")
    size_mb: float = float("nan")
    int8_nodes: int = -1  # quantized ops in the written model; 0: the float model came back


QUANTIZED_OPS = (
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "MatMulInteger",
    "ConvInteger",
    "MatMulNBits",
)


def int8_node_count(path: Path) -> int:
    """Quantization ops in the model, subgraphs included (0: nothing was quantized)."""
    import onnx

    def count(graph: Any) -> int:
        total = 0
        for node in graph.node:
            quantized = node.op_type in QUANTIZED_OPS or node.op_type.startswith(
                ("QLinear", "DynamicQuantize")
            )
            total += quantized
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    total += count(attribute.g)
                total += sum(count(g) for g in attribute.graphs)
        return total

    model = onnx.load(str(path), load_external_data=False)
    return count(model.graph) + sum(count(f) for f in model.functions)


# What pip installs in each peer's own venv. Each peer picks its own onnx / onnxruntime (they
# run there, not in ours: amd-quark 0.13 requires onnx<=1.22, and with this project's onnx
# 1.23 pip fell back to amd-quark 0.1.0, which has no `quark` module); the peers are pinned
# to their newest release that installs here (Python 3.11, x86_64), from wheels only (a
# source build can run for hours). "torch" becomes a CPU-only build when pip has one.
PEERS: dict[str, tuple[list[str], str]] = {  # peer: (requirements, the import that proves it)
    "nncf": (["nncf", "onnx", "onnxruntime"], "import nncf, onnx, onnxruntime"),
    "quark": (
        ["amd-quark==0.13", "onnxruntime>=1.22.2,<=1.28.0", "torch"],  # 0.13's cli extra's ORT
        "import quark.onnx, onnxruntime",
    ),
    "aimet": (["aimet-onnx==2.42.0", "torch"], "import aimet_onnx, onnxruntime"),
}


def peer_python(peer: str, timeout: float = 1800) -> Path | str:
    """The python of `peer`'s own venv (~/.cache/onnxslim-bench/venvs/PEER), created with pip
    when absent; or one line saying why the peer is unavailable (pip's or Python's last word)."""
    requirements, probe_code = PEERS[peer]
    venv = PEER_VENVS / peer
    python = venv / "bin" / "python"
    if not python.is_file():
        requirements = [torch_requirement() if r == "torch" else r for r in requirements]
        command = [str(python), "-m", "pip", "install", "-q", *requirements]
        command += [] if peer == "nncf" else ["--only-binary", ":all:"]
        try:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except Exception as exc:
            shutil.rmtree(venv, ignore_errors=True)  # the next run tries again
            return f"unavailable: cannot install {peer} ({type(exc).__name__})"
        if done.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            return f"unavailable: pip install {' '.join(requirements)}: {_last_line(done.stderr)}"
    probe = subprocess.run([str(python), "-c", probe_code], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"unavailable: {peer} does not import ({_last_line(probe.stderr)})"
    return python


def nncf_python() -> Path | str:
    """The NNCF venv's python (peer_python), kept for bench_quantize's callers."""
    return peer_python("nncf")


def torch_requirement() -> str:
    """An exact CPU-only torch build when pip's --find-links folders hold one, else "torch":
    PyPI's Linux torch wheels pull gigabytes of CUDA libraries a CPU benchmark never uses."""
    found = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    )
    folders = [
        folder
        for line in found.stdout.splitlines()
        if line.partition("=")[0].endswith("find-links")
        for folder in line.partition("=")[2].strip("'\" ").split()
    ]
    wheels = [w for folder in folders for w in Path(folder).glob("torch-*+cpu-*.whl")]
    versions = [w.name.split("-")[1] for w in wheels]  # 2.13.0+cpu
    newest = max(versions, key=lambda v: [int(p) for p in v.split("+")[0].split(".")], default="")
    return f"torch=={newest}" if newest else "torch"


def _last_line(text: str) -> str:
    """The last line that is not a warning (pip warns about every find-links folder)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("WARN")]
    return (lines or ["?"])[-1][:160]


def run_tool(
    tool: str,
    case: Case,
    calib: Path,
    out: Path,
    extra: list[str] | None = None,
    python: Path | str = sys.executable,
    timeout: float = 3600,
) -> ToolRun:
    """Run one worker subprocess; its peak RSS is its own (scripts/peak_rss.py says why)."""
    result_file = out.with_suffix(".json")
    command = [
        str(python),
        str(Path(__file__).resolve().with_name("bench_quantize_workers.py")),
        tool,
        "--model",
        str(case.path),
        "--calib-file",
        str(calib),
        "--out",
        str(out),
        "--result",
        str(result_file),
    ]
    command += [f"--extra={item}" for item in extra or []]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    log = out.with_suffix(".log")
    with open(log, "w") as handle:
        done = run_measured(
            command, stdout=handle, stderr=subprocess.STDOUT, env=env, timeout=timeout
        )
    if done.timed_out:
        return ToolRun(tool, None, error=f"timed out after {timeout:.0f} s")
    run = ToolRun(tool, None, peak_rss_mb=done.peak_mb)
    if done.returncode != 0 or not out.is_file():
        tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        run.error = f"failed (exit {done.returncode}): {(tail[-1] if tail else '')[:160]}"
        return run
    info = json.loads(result_file.read_text())
    run.path, run.seconds, run.note = out, info["seconds"], info.get("note", "")
    run.size_mb = _size(out) / 2**20
    run.int8_nodes = int8_node_count(out)
    return run


def _size(path: Path) -> int:
    total = path.stat().st_size
    data = path.with_suffix(path.suffix + ".data")
    return total + (data.stat().st_size if data.is_file() else 0)


# --- evaluation and timing -------------------------------------------------------------------


def _session(path: Path, threads: int = 1) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def outputs_of(path: Path, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    session = _session(path, threads=2)
    name = session.get_outputs()[0].name
    return [session.run([name], feed)[0] for feed in feeds]


def evaluate(case: Case, path: Path, metrics: Any) -> tuple[float, float]:
    """(metric, cosine to the float outputs) of the model at `path`."""
    outputs = outputs_of(path, case.eval_feeds)
    ref = np.concatenate([o.reshape(-1) for o in case.float_outputs]).astype(np.float64)
    got = np.concatenate([o.reshape(-1) for o in outputs]).astype(np.float64)
    cosine = float(ref @ got / (np.linalg.norm(ref) * np.linalg.norm(got) + 1e-30))
    if case.labelled:
        return float(
            metrics.score(case.name, np.concatenate(outputs, axis=0), case.eval_arrays)
        ), cosine
    hits = total = 0
    for r, g in zip(case.float_outputs, outputs, strict=True):
        hits += int(np.count_nonzero(np.argmax(r, -1) == np.argmax(g, -1)))
        total += int(np.argmax(r, -1).size)
    return hits / max(total, 1), cosine


def time_interleaved(
    paths: dict[str, Path],
    feed: dict[str, np.ndarray],
    *,
    rounds: int = 15,
    target_seconds: float = 0.03,
) -> dict[str, float]:
    """Median seconds per run of each model, one thread, models alternated within every round."""
    sessions = {k: _session(p) for k, p in paths.items()}
    for session in sessions.values():
        for _ in range(3):
            session.run(None, feed)
    first = next(iter(sessions.values()))
    start = time.perf_counter()
    first.run(None, feed)
    reps = max(1, int(target_seconds / max(time.perf_counter() - start, 1e-6)))
    samples: dict[str, list[float]] = {k: [] for k in sessions}
    keys = list(sessions)
    for r in range(rounds):
        order = keys[r % len(keys) :] + keys[: r % len(keys)]
        for key in order:
            session = sessions[key]
            start = time.perf_counter()
            for _ in range(reps):
                session.run(None, feed)
            samples[key].append((time.perf_counter() - start) / reps)
    return {k: statistics.median(v) for k, v in samples.items()}


# --- the report ----------------------------------------------------------------------------


def cpu_line() -> str:
    flags: set[str] = set()
    model = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            elif line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
    import onnxruntime as ort

    return (
        f"CPU: {model}; {os.cpu_count()} logical cores; flags: "
        f"{' '.join(f for f in wanted if f in flags) or 'none of ' + '/'.join(wanted)}; "
        f"onnxruntime {ort.__version__}"
    )


def _fmt(value: float, spec: str) -> str:
    return "-" if value != value else format(value, spec)


def _eval_note(case: Case) -> str:
    if not case.labelled:
        return "agreement with float on generated feeds"
    assert case.eval_path is not None
    return (
        f"labelled: {case.eval_path.name} after its first 1/{TUNE_SHARE}, "
        "which onnxslim+acc tuned on"
    )


def print_table(case: Case, float_run: ToolRun, runs: list[ToolRun], rss: dict[int, float]) -> None:
    print(f"\n## {case.name} ({_eval_note(case)}, {len(case.eval_feeds)} eval samples)")
    header = (
        f"| {'tool':<13} | {'metric':>7} | {'drop':>6} | {'cosine':>7} | {'size MB':>8} | "
        f"{'latency/float':>13} | {'quant s':>8} | {'peak RSS MB':>11} | note"
    )
    print(header)
    print("|" + "|".join("-" * (len(c) + 0) for c in header.split("|")[1:-1]) + "|---|")
    for run in [float_run, *runs]:
        if run.error:
            print(
                f"| {run.tool:<13} | {'':>7} | {'':>6} | {'':>7} | {'':>8} | {'':>13} | {'':>8} | "
                f"{_fmt(run.peak_rss_mb, '.0f'):>11} | {run.error}"
            )
            continue
        drop = float_run.metric - run.metric if run.tool != "float" else float("nan")
        print(
            f"| {run.tool:<13} | {_fmt(run.metric, '.4f'):>7} | {_fmt(drop * 100, '+.2f'):>6} | "
            f"{_fmt(run.cosine, '.5f'):>7} | {_fmt(run.size_mb, '.3f'):>8} | "
            f"{_fmt(run.latency_ratio, '.3f'):>13} | "
            f"{_fmt(run.seconds, '.2f'):>8} | {_fmt(run.peak_rss_mb, '.0f'):>11} | {run.note}"
        )
    line = ", ".join(f"{n} samples: {v:.0f} MB" for n, v in rss.items())
    print(f"onnxslim peak RSS by calibration size: {line or 'n/a'} {case.rss_note}".rstrip())


def goals(
    case: Case, float_run: ToolRun, runs: dict[str, ToolRun], rss: dict[int, float]
) -> list[str]:
    """One line per goal of issue 4: met / missed / not measurable."""
    ours, ort_run = (
        runs.get("onnxslim+acc")
        if case.labelled and not runs.get("onnxslim+acc", ToolRun("", None, error="x")).error
        else runs.get("onnxslim"),
        runs.get("ort"),
    )
    if ours is None or ours.error:
        return [f"{case.name}: onnxslim produced no model ({ours.error if ours else 'not run'})"]
    lines = []
    if ours.int8_nodes == 0:
        # The latency guard (or the accuracy loop) handed back the float model: its
        # accuracy and latency equal float's by construction, so no goal is met by them.
        lines.append(
            f"nothing quantized ({ours.tool} returned the float model: {ours.note or 'no note'}); "
            "accuracy and latency goals not scored"
        )
    else:
        drop = float_run.metric - ours.metric
        if float_run.metric >= 0.9:
            lines.append(
                f"drop <= 1 pt: {'met' if drop <= 0.01 + 1e-9 else 'MISSED'} "
                f"({drop * 100:+.2f} pt, {ours.tool})"
            )
        if ort_run is not None and not ort_run.error:
            ort_drop = float_run.metric - ort_run.metric
            ok = drop <= max(ort_drop, 0) / 2 + 1e-9 or drop <= 0
            lines.append(
                f"drop <= half ORT's: {'met' if ok else 'MISSED'} "
                f"({drop * 100:+.2f} vs ORT {ort_drop * 100:+.2f} pt)"
            )
            faster = ours.latency_ratio <= ort_run.latency_ratio * 1.02
            lines.append(
                f"latency <= ORT's: {'met' if faster else 'MISSED'} "
                f"({ours.latency_ratio:.3f} vs {ort_run.latency_ratio:.3f})"
            )
            lines.append(
                f"quantize time <= ORT's: {'met' if ours.seconds <= ort_run.seconds else 'MISSED'} "
                f"({ours.seconds:.2f} s vs {ort_run.seconds:.2f} s)"
            )
        lines.append(
            f"not slower than float: {'met' if ours.latency_ratio <= 1.0 else 'MISSED'} "
            f"({ours.latency_ratio:.3f})"
        )
    if len(rss) == 2:
        a, b = rss.values()
        lines.append(
            f"peak RSS flat 100 -> 1000 samples: {'met' if b <= a * 1.1 + 20 else 'MISSED'} "
            f"({a:.0f} -> {b:.0f} MB)"
        )
    return [f"{case.name}: {line}" for line in lines]


# --- main ------------------------------------------------------------------------------------


def default_models() -> list[str]:
    local = sorted(
        p.stem for p in MODELS.glob("*.onnx") if (MODELS / f"{p.stem}.calib.npz").is_file()
    )
    return local + [m for m in DEFAULT_DEVMODELS if (DEVMODELS / f"{m}.onnx").is_file()]


def bench(args: argparse.Namespace) -> int:
    metrics = metrics_module() if MODELS.is_dir() else None
    print(cpu_line())
    names = args.models.split(",") if args.models else default_models()
    tools = [t for t in (args.tools.split(",") if args.tools else TOOLS)]
    nncf = nncf_python() if "nncf" in tools else "not requested"
    print(
        f"models: {', '.join(names)}; calibration samples: {args.calib}; tools: {', '.join(tools)}"
        f"; nncf: {nncf if isinstance(nncf, str) else 'venv ' + str(NNCF_VENV)}"
    )
    work = Path(tempfile.mkdtemp(prefix="bench_quantize_"))
    summary: list[str] = []
    record: dict[str, Any] = {"cpu": cpu_line(), "models": {}}
    try:
        for name in names:
            case = prepare(name, args.calib, args.eval_limit, work)
            if isinstance(case, str):
                print(f"\n## {name}: skipped: {case}")
                continue
            case.float_outputs = outputs_of(case.path, case.eval_feeds)
            float_run = ToolRun(
                "float", case.path, size_mb=_size(case.path) / 2**20, latency_ratio=1.0
            )
            float_run.metric, float_run.cosine = evaluate(case, case.path, metrics)
            runs: dict[str, ToolRun] = {}
            for tool in tools:
                out = work / f"{name}.{tool}.onnx"
                if tool == "nncf" and isinstance(nncf, str):
                    runs[tool] = ToolRun(tool, None, error=nncf)
                    continue
                extra: list[str] = []
                if tool == "onnxslim+acc":
                    if not case.labelled:
                        continue
                    extra = ["--eval", str(case.tune_path), "--max-drop", "0.01"]
                python = nncf if tool == "nncf" else sys.executable
                runs[tool] = run_tool(tool, case, case.calib, out, extra, python)  # type: ignore[arg-type]
                if runs[tool].path is not None:
                    runs[tool].metric, runs[tool].cosine = evaluate(case, runs[tool].path, metrics)
            ok = {k: r.path for k, r in runs.items() if r.path is not None}
            timed = time_interleaved({"float": case.path, **ok}, case.eval_feeds[0])
            for key, seconds in timed.items():
                if key != "float":
                    runs[key].latency_ratio = seconds / timed["float"]
            rss: dict[int, float] = {}
            if "onnxslim" in runs and not runs["onnxslim"].error:
                rss[args.calib] = runs["onnxslim"].peak_rss_mb
                if case.calib_1000 is not None:
                    big = run_tool(
                        "onnxslim", case, case.calib_1000, work / f"{name}.onnxslim1000.onnx"
                    )
                    if not big.error:
                        rss[1000] = big.peak_rss_mb
            print_table(case, float_run, list(runs.values()), rss)
            print(f"float latency: {timed['float'] * 1e3:.3f} ms per run")
            summary += goals(case, float_run, runs, rss)
            record["models"][name] = {
                "float": float_run.__dict__,
                **{k: r.__dict__ for k, r in runs.items()},
                "rss_by_samples": rss,
                "float_ms": timed["float"] * 1e3,
            }
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept work files in {work}")
    print("\n## goals (issue 4)")
    for line in summary:
        print(f"- {line}")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2, default=str))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        help="comma-separated models/ names or devmodels ids (default: all models/ "
        f"examples plus {', '.join(DEFAULT_DEVMODELS)})",
    )
    parser.add_argument("--tools", help=f"comma-separated subset of {', '.join(TOOLS)}")
    parser.add_argument("--calib", type=int, default=100, help="calibration samples (default 100)")
    parser.add_argument(
        "--eval-limit", type=int, default=1000, help="evaluation samples at most (default 1000)"
    )
    parser.add_argument("--json", help="also write the figures as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the quantized models and logs")
    return bench(parser.parse_args())


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    sys.exit(main())
