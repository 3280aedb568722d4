"""Benchmark static int8's activation modes on the devmodels with MatMul / Gemm / LSTM layers,
against onnxruntime's own dynamic quantization, in one run.

    python scripts/bench_activation_mode.py [--models minilm_l3_paraphrase,...] [--calib 128]

Per model, from the same realistic feeds (../shared/devmodels/inputs.py; the first
`--calib` calibrate, the next `--eval` score, disjoint seeds):
  onnxslim static   `onnxslim quantize M -o O --calib C --activations static` (the old default)
  onnxslim auto     the same with the default `--activations auto` (activation_mode.py)
  onnxslim dynamic  `onnxslim quantize M -o O --mode dynamic`
  ort dynamic       onnxruntime.quantization.quantize_dynamic with its defaults
Metric against the float model on the evaluation feeds, the decision the output's users
see: embeddings, nearest-neighbour agreement over all evaluation rows (retrieval top-1);
class scores, top-1 agreement per row / position. Latency: one thread, every model of a
row timed interleaved, median; ratio to the float model. The CPU's flags are printed:
which mode wins depends on the int8 kernels the CPU has.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[1]
DEVMODELS = Path(os.environ.get("DEVMODELS_DIR", "~/.cache/devmodels")).expanduser()
DEVMODELS_CODE = REPO.parent / "shared" / "devmodels"
DEFAULT_MODELS = ("minilm_l3_paraphrase", "name_romanizer_decoder", "captcha_crnn", "lac_bigru")
# the output each model's users read, and how: embedding rows or class scores
OUTPUTS = {
    "minilm_l3_paraphrase": ("461", "embedding"),
    "name_romanizer_decoder": ("logprobs", "classes"),
    "captcha_crnn": ("logits", "classes"),
    "lac_bigru": ("fetch_name_0", "classes"),
}
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "i8mm")


def cpu_line() -> str:
    flags: set[str] = set()
    name = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            if line.startswith(("flags", "Features")) and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    shown = " ".join(f for f in FLAGS if f in flags) or "none of " + "/".join(FLAGS)
    return f"CPU: {name}; flags: {shown}; onnxruntime {ort.__version__}"


def make_feeds(model_id: str, count: int, seed: int) -> list[dict[str, np.ndarray]]:
    sys.path.insert(0, str(DEVMODELS_CODE))
    import inputs  # the corpus's realistic input generators (../shared/devmodels)

    return list(inputs.make_feeds(model_id, count, seed=seed))


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def agreement(ref: np.ndarray, got: np.ndarray, kind: str) -> float:
    """Share of decisions (in %) the quantized model takes as the float model does."""
    if kind == "embedding":
        a = ref / np.linalg.norm(ref, axis=1, keepdims=True)
        b = got / np.linalg.norm(got, axis=1, keepdims=True)
        sa, sb = a @ a.T, b @ b.T
        np.fill_diagonal(sa, -np.inf)
        np.fill_diagonal(sb, -np.inf)
        return 100.0 * float(np.mean(sa.argmax(1) == sb.argmax(1)))
    return 100.0 * float(np.mean(ref.argmax(-1) == got.argmax(-1)))


def outputs(sess: ort.InferenceSession, feeds: list[dict], name: str, kind: str) -> np.ndarray:
    rows = [sess.run([name], f)[0] for f in feeds]
    if kind == "embedding":
        return np.concatenate([r.reshape(r.shape[0], -1) for r in rows])
    return np.concatenate([r.reshape(-1, r.shape[-1]) for r in rows])


def latency(sessions: dict[str, ort.InferenceSession], feeds: list[dict], seconds: float) -> dict:
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for s in sessions.values():
        s.run(None, feeds[0])
    start, step = time.perf_counter(), 0
    while step < 10 or time.perf_counter() - start < seconds:
        order = list(sessions) if step % 2 == 0 else list(sessions)[::-1]
        for label in order:
            tick = time.perf_counter()
            sessions[label].run(None, feeds[step % len(feeds)])
            times[label].append(time.perf_counter() - tick)
        step += 1
    base = float(np.median(times["float"]))
    return {k: float(np.median(v)) / base for k, v in times.items()}


def quantize(model: Path, out: Path, calib: Path | None, *extra: str) -> str:
    """Run the CLI; the activation mode it kept (or its exit line when it failed)."""
    args = [sys.executable, "-m", "onnxslim", "quantize", str(model), "-o", str(out)]
    done = subprocess.run(
        [*args, "--overwrite", *extra] + (["--calib", str(calib)] if calib else []),
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),  # not the checkout: its onnxslim/ lacks onnxslim.passes
    )
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("activations:")]
    return (lines[0] if lines else "") + (
        "" if done.returncode == 0 else f" exit {done.returncode}"
    )


def bench(model_id: str, calib_count: int, eval_count: int, seconds: float, work: Path) -> None:
    from onnxruntime.quantization import quantize_dynamic

    model = DEVMODELS / f"{model_id}.onnx"
    name, kind = OUTPUTS[model_id]
    calib_feeds = make_feeds(model_id, calib_count, seed=0)
    eval_feeds = make_feeds(model_id, eval_count, seed=12345)
    calib = work / f"{model_id}.calib.npz"
    np.savez(calib, **{k: np.stack([f[k] for f in calib_feeds]) for k in calib_feeds[0]})
    paths = {"float": model}
    notes = {}
    for label, extra in (("onnxslim static", ("--activations", "static")), ("onnxslim auto", ())):
        paths[label] = work / f"{model_id}.{label.split()[1]}.onnx"
        notes[label] = quantize(model, paths[label], calib, *extra)
    paths["onnxslim dynamic"] = work / f"{model_id}.dynamic.onnx"
    quantize(model, paths["onnxslim dynamic"], None, "--mode", "dynamic")
    paths["ort dynamic"] = work / f"{model_id}.ortdyn.onnx"
    quantize_dynamic(str(model), str(paths["ort dynamic"]))
    sessions = {k: session(p) for k, p in paths.items() if p.is_file()}
    reference = outputs(sessions["float"], eval_feeds, name, kind)
    ratios = latency(sessions, eval_feeds, seconds)
    print(
        f"\n{model_id}: output {name} ({kind}), {calib_count} calibration feeds, "
        f"{eval_count} evaluation feeds ({reference.shape[0]} decisions)"
    )
    print(f"  {'tool':18s} {'agreement %':>12s} {'latency':>8s} {'size MB':>8s}  note")
    for label, sess in sessions.items():
        got = outputs(sess, eval_feeds, name, kind)
        size = paths[label].stat().st_size / 1e6
        print(
            f"  {label:18s} {agreement(reference, got, kind):12.2f} {ratios[label]:7.2f}x "
            f"{size:8.2f}  {notes.get(label, '')}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--calib", type=int, default=128)
    parser.add_argument("--eval", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=10.0, help="timing budget per model")
    args = parser.parse_args()
    print(cpu_line())
    with tempfile.TemporaryDirectory() as tmp:
        for model_id in args.models.split(","):
            if not (DEVMODELS / f"{model_id}.onnx").is_file():
                print(f"\n{model_id}: not fetched (python ../shared/devmodels/fetch.py)")
                continue
            bench(model_id, args.calib, args.eval, args.seconds, Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
