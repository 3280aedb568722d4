"""Task-level int8 benchmark: the metric each model's users see, int8 against float.

    python scripts/bench_task.py [--models task_yolov8,captcha_crnn,...] [--tools ...] [--timeout S]
    python scripts/bench_task.py --work DIR [--reuse]   (keep the models; re-score and re-time them)
    python scripts/bench_task.py --work DIR --reuse-only  (and quantize nothing: the slow tools'
                                                          missing models stay missing)

Per model, each tool quantizes the float model from the same calibration data, in its
own process; then every model runs on realistic evaluation inputs and is scored
against the float model with the decoding its users apply (scripts/task_metrics.py):

  detectors (task_yolov8)      box F1 vs the float model's boxes after YOLOv8 decoding
                               (confidence 0.25) and per-class NMS (IoU 0.5)
  text detector (task_dbnet)   box F1 vs float of the unclipped connected components of
                               the probability map thresholded at 0.3 (DBNet's post-process)
  CTC readers (task_crnn,      exact decoded-string agreement with float (greedy CTC);
    captcha_crnn)              task_crnn on rendered text, captcha_crnn on its captchas
  classifiers                  top-1 agreement (task_mobilenetv3; open_nsfw_resnet on the
                               real photos of scikit-image's skimage.data when installed)
  tagger (lac_bigru)           tag agreement over the real positions of each sentence
  decoder (name_romanizer)     next-token top-1 agreement
  embeddings (minilm_l3)       retrieval top-1: for each sentence, the nearest (cosine) of
                               the near copies of all sentences, int8's pick == float's
                               (the devmodel ships no vocabulary: its sentences are
                               make_feeds' Zipf-distributed token ids, not real text)

Tools: onnxslim = `onnxslim quantize M -o O --calib C` with default options (exit 1 =
accuracy target missed, the model is still written and scored); onnxslim-int8 = the
same with --no-latency-guard (int8 even where this CPU runs it slower than float, to
show int8's accuracy where the default keeps float); ort-static =
quantize_static QDQ per-channel MinMax after quant_pre_process; ort-dynamic =
quantize_dynamic defaults; nncf = nncf.quantize; quark = AMD Quark's ModelQuantizer with
its preset for general CPU int8, A8W8 (int8 symmetric, per tensor, percentile, QDQ);
aimet = Qualcomm AIMET-ONNX's QuantizationSimModel with its defaults (batch norms folded,
int8, min-max, per-channel weights), compute_encodings, to_onnx_qdq. NNCF, Quark and
AIMET each run in their own venv, created by pip when absent
(~/.cache/onnxslim-bench/venvs/PEER, see bench_quantize.peer_python); a peer that cannot
be installed or crashes shows why in its cells. Asked for by name (slow): quark-adaround
and aimet-adaround add their AdaRound, quark-adaquant Quark's AdaQuant (A8W8_ADAQUANT, 1000
iterations per layer) and aimet-seqmse AIMET's sequential MSE (apply_seq_mse, 20
candidates per layer), the weight-rounding family of issue 14 item 3 (the iterations:
scripts/bench_quantize_workers.py); onnxslim-prune / onnxslim-cluster = `onnxslim
prune|cluster M -o O --calib C --runs 0`, defaults (the most sparsity / fewest bits that
meet the accuracy target), scored alike. Latency: one intra-op thread, ORT_ENABLE_ALL,
the models of a row timed interleaved, median, as a ratio to the float model, on one
image (task models) or one feed (devmodels). The task models' data is
models/task_*.{calib,eval}.npz (scripts/make_task_models.py); the devmodels' is
inputs.make_feeds(id, 32, seed=0) to calibrate and seed=1 to evaluate.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import task_metrics as tm
from bench_quantize import DEVMODELS, DEVMODELS_CODE, cpu_line, peer_python, time_interleaved

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
TASK_MODELS = ("task_yolov8", "task_dbnet", "task_crnn", "task_mobilenetv3")
DEVMODEL_TASKS = {
    "captcha_crnn": "ctc-tbc",
    "open_nsfw_resnet": "classify",
    "lac_bigru": "tagger",
    "name_romanizer_decoder": "classify-last",
    "minilm_l3_paraphrase": "embedding",
}
TOOLS = ("onnxslim", "onnxslim-int8", "ort-static", "ort-dynamic", "nncf", "quark", "aimet")
# not in the default tools: the peers' weight-rounding optimisations (slow: minutes per
# layer-wise model), onnxslim's prune and cluster
NAMED_TOOLS = (
    "quark-adaround",
    "aimet-adaround",
    "quark-adaquant",
    "aimet-seqmse",
    "onnxslim-prune",
    "onnxslim-cluster",
)
PEERS = ("nncf", "quark", "aimet")  # each in its own venv (bench_quantize.peer_python)
# onnxslim's command per tool: prune and cluster at their defaults (the most compression
# that meets the accuracy target), scored on the same task as int8
ONNXSLIM_COMMANDS = {
    "onnxslim": "quantize",
    "onnxslim-int8": "quantize",
    "onnxslim-prune": "prune",
    "onnxslim-cluster": "cluster",
}
METRICS = {
    **tm.METRIC_NAMES,
    "ctc-tbc": "exact string",
    "tagger": "tag agreement",
    "classify-last": "top-1",
    "embedding": "retrieval top-1",
}
EVAL_BATCH = 16


@dataclass
class Case:
    name: str
    path: Path
    task: str
    calib: Path
    feeds: list[dict[str, np.ndarray]]
    output: str  # the output the task reads
    source: str  # where the evaluation inputs come from
    timing: dict[str, np.ndarray] | None = None  # the feed timed (default: the first)
    decisions: dict[str, Any] = field(default_factory=dict)


def task_case(name: str) -> Case:
    with np.load(MODELS / f"{name}.eval.npz") as data:
        images = data["images"].astype(np.float32) / 255.0
    feeds = [{"input": images[i : i + EVAL_BATCH]} for i in range(0, len(images), EVAL_BATCH)]
    task = {"task_yolov8": "detect", "task_dbnet": "text-detect", "task_crnn": "ctc"}.get(
        name, "classify"
    )
    source = f"{len(images)} rendered images (models/{name}.eval.npz)"
    truth = json.loads((MODELS / "task_accuracy.json").read_text()).get(name, {})
    if truth:
        source += f"; float {truth['metric']} {truth['value']:.3f}"
    path, calib = MODELS / f"{name}.onnx", MODELS / f"{name}.calib.npz"
    return Case(name, path, task, calib, feeds, "", source, timing={"input": images[:1]})


def photo_feeds() -> list[dict[str, np.ndarray]] | None:
    """open_nsfw's input from scikit-image's bundled photos: 224 crops, BGR minus the means."""
    try:
        from skimage import data as photos  # only for the benchmark's real photos
        from skimage.transform import resize
    except ImportError:
        return None
    names = ("astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry")
    names += ("hubble_deep_field", "retina", "colorwheel", "logo", "motorcycle_left")
    crops = []
    for name in names:
        try:
            img = np.asarray(getattr(photos, name)(), dtype=np.float32)
        except Exception:  # a photo that needs a download (pooch) is skipped
            continue
        if img.ndim != 3:
            continue
        img = img[..., :3] * (255.0 if img.max() <= 1.0 else 1.0)
        h, w = img.shape[:2]
        for fy, fx, side in ((0.5, 0.5, 1.0), (0.3, 0.3, 0.6), (0.7, 0.7, 0.6), (0.5, 0.5, 0.8)):
            s = int(min(h, w) * side)
            y0, x0 = int((h - s) * fy), int((w - s) * fx)
            crop = resize(img[y0 : y0 + s, x0 : x0 + s], (224, 224), preserve_range=True)
            crops.append(crop[:, :, ::-1] - np.array([104.0, 117.0, 123.0], np.float32))
            crops.append(crops[-1][:, ::-1])
    batch = np.ascontiguousarray(np.stack(crops), dtype=np.float32)
    return [{"input_0": batch[i : i + 2]} for i in range(0, len(batch) - 1, 2)]


def devmodel_case(name: str, work: Path, eval_feeds: int = 32) -> Case | str:
    path = DEVMODELS / f"{name}.onnx"
    if not path.is_file():
        return "not fetched (../shared/devmodels/fetch.py)"
    sys.path.insert(0, str(DEVMODELS_CODE))
    from inputs import make_feeds  # the devmodels' realistic feeds (../shared/devmodels)

    calib_feeds = make_feeds(name, 32, seed=0)
    calib = work / f"{name}.calib.npz"
    np.savez(calib, **{k: np.stack([f[k] for f in calib_feeds]) for k in calib_feeds[0]})
    feeds = make_feeds(name, eval_feeds, seed=1)
    source = f"inputs.make_feeds(id, {eval_feeds}, seed=1)"
    if name == "open_nsfw_resnet":
        photos = photo_feeds()
        if photos:
            feeds, source = photos, f"{2 * len(photos)} crops of skimage.data photos"
    if name == "minilm_l3_paraphrase":
        feeds = paraphrase_pairs(feeds)
        source = f"{len(feeds)} sentence pairs from make_feeds(seed=1)"
    output = {"minilm_l3_paraphrase": "461"}.get(name, "")
    return Case(name, path, DEVMODEL_TASKS[name], calib, feeds, output, source)


def paraphrase_pairs(feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Each sentence with a near copy (two neighbouring words swapped, one word dropped), as
    the two rows of a feed: the retrieval task is to find each sentence's copy."""
    rng = np.random.default_rng(0)
    pairs = []
    for feed in feeds:
        for ids, mask in zip(feed["input_ids"], feed["attention_mask"], strict=True):
            n = int(mask.sum())
            words = list(ids[1 : n - 2])  # [CLS] words '.' [SEP]
            i = int(rng.integers(len(words) - 1))
            words[i], words[i + 1] = words[i + 1], words[i]
            del words[int(rng.integers(len(words)))]
            copy = np.zeros_like(ids)
            row = [ids[0], *words, *ids[n - 2 : n]]
            copy[: len(row)] = row
            copy_mask = (np.arange(len(ids)) < len(row)).astype(mask.dtype)
            pairs.append(
                {"input_ids": np.stack([ids, copy]), "attention_mask": np.stack([mask, copy_mask])}
            )
    return pairs


# --- decisions and scores ----------------------------------------------------------------------


def _ctc_generic(logits: np.ndarray, blank: int) -> list[tuple[int, ...]]:
    out = []
    for best in logits.argmax(-1):
        keep = np.concatenate([[True], best[1:] != best[:-1]]) & (best != blank)
        out.append(tuple(int(i) for i in best[keep]))
    return out


def decide(case: Case, outputs: list[np.ndarray], feeds: list[dict[str, np.ndarray]]) -> list:
    if case.task in tm.METRIC_NAMES:
        return tm.decode(case.task, np.concatenate(outputs))
    if case.task == "ctc-tbc":  # [T, batch, C]; the blank is the float model's commonest class
        logits = np.concatenate([o.transpose(1, 0, 2) for o in outputs])
        return _ctc_generic(logits, case.decisions.setdefault("blank", _commonest(logits)))
    if case.task == "tagger":
        tags = []
        for out, feed in zip(outputs, feeds, strict=True):
            for row, n in zip(out.argmax(-1), feed["length"], strict=True):
                tags.extend(row[: int(n)].tolist())
        return tags
    if case.task in ("classify", "classify-last"):
        return np.concatenate([o.argmax(-1).reshape(-1) for o in outputs]).tolist()
    if case.task == "embedding":
        rows = np.concatenate([o.reshape(len(o), -1) for o in outputs]).astype(np.float64)
        rows /= np.linalg.norm(rows, axis=1, keepdims=True) + 1e-12
        return [rows]
    raise ValueError(case.task)


def _commonest(logits: np.ndarray) -> int:
    return int(np.bincount(logits.argmax(-1).ravel()).argmax())


def score(case: Case, got: list, ref: list) -> float:
    if case.task in tm.METRIC_NAMES:
        return tm.task_score(case.task, got, ref)
    if case.task == "embedding":  # each sentence's nearest copy: int8's pick == float's pick
        picks = [(rows[0::2] @ rows[1::2].T).argmax(1) for rows in (got[0], ref[0])]
        return float(np.mean(picks[0] == picks[1]))
    return tm.agreement(got, ref)


def run_outputs(case: Case, path: Path) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.log_severity_level = 2, 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = case.output or session.get_outputs()[0].name
    return [session.run([name], feed)[0] for feed in case.feeds]


# --- tools ----------------------------------------------------------------------------------


@dataclass
class Result:
    tool: str
    path: Path | None = None
    note: str = ""
    seconds: float = float("nan")
    metric: float = float("nan")
    ratio: float = float("nan")


def peer_of(tool: str) -> str:
    """The venv a tool runs in: its peer's ("quark-adaround" -> "quark"), or ours ("")."""
    peer = tool.split("-")[0]
    return peer if peer in PEERS else ""


def worker_of(tool: str) -> str:
    """The bench_quantize_workers.py worker that runs a peer tool (ort-static -> ort)."""
    return {"ort-static": "ort"}.get(tool, tool)


def quantize(
    tool: str,
    case: Case,
    work: Path,
    pythons: dict[str, Path | str],
    timeout: float,
    reuse: str = "",
) -> Result:
    """Quantize `case` with `tool` in its own process; with `reuse` ("missing" or "only"),
    take the model an earlier run left in `work`, and with "only" never quantize."""
    out = work / f"{case.name}.{tool}.onnx"
    if reuse and out.is_file():  # --reuse: score and time the model an earlier run wrote
        return Result(tool, out, "reused")
    if reuse == "only":
        return Result(tool, note=f"not in {work} (--reuse-only)")
    if tool.startswith("onnxslim"):
        verb = ONNXSLIM_COMMANDS[tool]
        command = [sys.executable, "-m", "onnxslim", verb, str(case.path), "-o", str(out)]
        command += ["--calib", str(case.calib)]
        command += ["--runs", "0"] if verb != "quantize" else []
        command += ["--no-latency-guard"] if tool == "onnxslim-int8" else []
    else:
        python = pythons[peer_of(tool)] if peer_of(tool) else sys.executable
        if isinstance(python, str):  # the peer could not be installed: its reason
            return Result(tool, note=python)
        worker = worker_of(tool)
        command = [str(python), str(Path(__file__).with_name("bench_quantize_workers.py")), worker]
        command += ["--model", str(case.path), "--calib-file", str(case.calib), "--out", str(out)]
        command += ["--result", str(out.with_suffix(".json"))]
    start = time.perf_counter()
    cpu_start = _children_cpu()
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=work,  # quant_pre_process, NNCF and Quark leave temporary files in the cwd
            env=dict(os.environ, OMP_NUM_THREADS="1"),
        )
    except subprocess.TimeoutExpired:
        return Result(tool, note=f"timed out after {timeout:.0f} s")
    seconds = time.perf_counter() - start
    cpu = _children_cpu() - cpu_start
    lines = [ln.strip() for ln in (done.stdout + done.stderr).splitlines() if ln.strip()]
    if not out.is_file():
        return Result(tool, note=f"exit {done.returncode}: {(lines or ['?'])[-1][:120]}")
    note = f"exit {done.returncode}" if tool.startswith("onnxslim") else ""
    if tool.startswith("onnxslim"):
        flagged = [
            ln
            for ln in lines
            if "kept the float" in ln or "MISSED" in ln or "error:" in ln or "at the target:" in ln
        ]
        counted = [ln.split(" (")[0] for ln in lines if "nodes quantized" in ln]
        note += f"; {counted[0]}" if counted else ""
        note += f"; {flagged[0][:110]}" if flagged else ""
        note += f"; {seconds:.0f} s wall, {cpu:.0f} CPU s"
    return Result(tool, out, note, seconds)


def _children_cpu() -> float:
    """User + system CPU seconds of the finished child processes (the tool's own work: the
    machine is shared, so wall time says more about the other jobs than about the tool)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bench_case(
    case: Case,
    tools: list[str],
    work: Path,
    pythons: dict[str, Path | str],
    timeout: float,
    reuse: str,
) -> list[Result]:
    float_outputs = run_outputs(case, case.path)
    reference = decide(case, float_outputs, case.feeds)
    results = [Result("float", case.path, metric=score(case, reference, reference), ratio=1.0)]
    for tool in tools:
        result = quantize(tool, case, work, pythons, timeout, reuse)
        if result.path is not None:
            try:
                got = decide(case, run_outputs(case, result.path), case.feeds)
                result.metric = score(case, got, reference)
            except Exception as exc:  # an int8 model ORT cannot run is a result too
                result.note, result.path = f"does not run: {type(exc).__name__}", None
        results.append(result)
        print(
            f"  {case.name} {tool}: {result.metric:.4f} {result.note}", file=sys.stderr, flush=True
        )
    timed = {r.tool: r.path for r in results if r.path is not None}
    feed = case.timing or case.feeds[0]
    times = time_interleaved(timed, feed, rounds=31, target_seconds=0.05)  # type: ignore[arg-type]
    for r in results:
        if r.tool in times:
            r.ratio = times[r.tool] / times["float"]
    return results


def cell(r: Result, float_metric: float) -> str:
    if r.path is None:
        return f"- ({r.note})"
    return f"{(r.metric - float_metric) * 100:+.1f} pt, {r.ratio:.2f}x"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(TASK_MODELS + tuple(DEVMODEL_TASKS)))
    parser.add_argument(
        "--tools",
        default=",".join(TOOLS),
        help=f"comma-separated, of {', '.join(TOOLS + NAMED_TOOLS)} (default: the first 7)",
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per tool and model")
    parser.add_argument(
        "--eval-feeds",
        type=int,
        default=32,
        help="devmodels: evaluation feeds from make_feeds(seed=1) (default 32; more resolve finer"
        " changes: one of 64 captchas is 1.6 points)",
    )
    parser.add_argument("--work", type=Path, help="keep the models in this folder (default: temp)")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="with --work: score and time the models a run left there, quantize only the missing"
        " (re-time on a quiet machine without re-quantizing)",
    )
    parser.add_argument(
        "--reuse-only",
        action="store_true",
        help="with --work: as --reuse, but quantize nothing: a missing model (a tool that failed"
        " or timed out there) is a cell saying so, not a new run of a slow tool",
    )
    args = parser.parse_args()
    tools = [t for t in args.tools.split(",") if t]
    unknown = [t for t in tools if t not in TOOLS + NAMED_TOOLS]
    if unknown:
        known = ", ".join(TOOLS + NAMED_TOOLS)
        print(f"error: unknown tool {unknown[0]} (one of {known})", file=sys.stderr)
        return 2
    if args.reuse_only and args.work is None:
        print(
            "error: --reuse-only needs --work DIR (the folder of an earlier run)", file=sys.stderr
        )
        return 2
    peers = sorted({peer_of(t) for t in tools} - {""})
    # --reuse-only runs no peer: their venvs are neither built nor probed
    pythons = {} if args.reuse_only else {peer: peer_python(peer) for peer in peers}
    print(cpu_line())
    print(f"tools: {', '.join(tools)}; load average {os.getloadavg()[0]:.1f}")
    for peer, python in pythons.items():
        print(f"{peer}: {python}")
    rows, notes = [], []
    with contextlib.ExitStack() as stack:
        if args.work is not None:
            args.work.mkdir(parents=True, exist_ok=True)
            tmp = str(args.work)
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_task_"))
        for name in [m for m in args.models.split(",") if m]:
            case = (
                task_case(name)
                if name in TASK_MODELS
                else devmodel_case(name, Path(tmp), args.eval_feeds)
            )
            if isinstance(case, str):
                notes.append(f"{name}: skipped, {case}")
                continue
            reuse = "only" if args.reuse_only else "missing" if args.reuse else ""
            results = bench_case(case, tools, Path(tmp), pythons, args.timeout, reuse)
            f = results[0].metric
            rows.append(
                f"| {name} | {METRICS[case.task]} | {case.source} | "
                + " | ".join(cell(r, f) for r in results[1:])
                + " |"
            )
            print(rows[-1], flush=True)  # each row as it comes: a long run may be cut short
            notes += [f"{name} {r.tool}: {r.note}" for r in results[1:] if r.note and r.path]
    print(
        "\nscores against the float model (float = 1.000); "
        "cells: change in points, latency int8/float"
    )
    print("| model | metric vs float | evaluation inputs | " + " | ".join(tools) + " |")
    print("|---|---|---|" + "---|" * len(tools))
    print("\n".join(rows))
    print("\n".join(f"- {n}" for n in notes))
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
