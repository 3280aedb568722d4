"""Where a model's time goes in ONNX Runtime, op by op: the table behind docs/benchmarks.md's
"int8 op by op" section.

    python scripts/profile_ops.py task_dbnet MODEL.onnx [MODEL.onnx ...] [--runs 200] [--nodes 20]

Each model runs the first image of models/TASK.eval.npz (batch 1) with ORT's profiler on, one
intra-op thread, ORT_ENABLE_ALL (what a deployed session gets), after 20 warm-up runs.
Printed per model: the median run time under the profiler (the profiler adds a few us
per node: compare models with each other, not with unprofiled timings), the sum of the
kernels' median times, the op types of ORT's optimized graph, and per kernel op type its
time per run; `--nodes N` adds the N slowest nodes. Medians, not means: on a shared
machine a few preempted runs would dominate a mean.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

MODELS = Path(__file__).resolve().parents[1] / "models"


def _options(**extra: object) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    for key, value in extra.items():
        setattr(options, key, value)
    return options


def profile(path: Path, feed: np.ndarray, runs: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as folder:
        optimized = os.path.join(folder, "optimized.onnx")
        ort.InferenceSession(str(path), _options(optimized_model_filepath=optimized))
        ops = collections.Counter(n.op_type for n in onnx.load(optimized).graph.node)
        session = ort.InferenceSession(
            str(path),
            _options(enable_profiling=True, profile_file_prefix=os.path.join(folder, "p")),
            providers=["CPUExecutionProvider"],
        )
        name = session.get_inputs()[0].name
        for _ in range(20):
            session.run(None, {name: feed})
        session.end_profiling()  # the warm-up's profile is dropped
        session = ort.InferenceSession(
            str(path),
            _options(enable_profiling=True, profile_file_prefix=os.path.join(folder, "q")),
            providers=["CPUExecutionProvider"],
        )
        for _ in range(runs):
            session.run(None, {name: feed})
        events = json.loads(Path(session.end_profiling()).read_text())
    samples: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    run_times = []
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            samples[(event["name"][: -len("_kernel_time")], event["args"]["op_name"])].append(
                event["dur"]
            )
        elif event.get("cat") == "Session" and event["name"] == "model_run":
            run_times.append(event["dur"])
    # per node: median per call times calls per run
    nodes = {key: float(np.median(v)) * len(v) / runs for key, v in samples.items()}
    by_type: collections.Counter[str] = collections.Counter()
    for (_, op), us in nodes.items():
        by_type[op] += us
    return {
        "run_us": float(np.median(run_times)),
        "ops": ops,
        "by_type": by_type,
        "nodes": nodes,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", help="task model whose eval images feed the models")
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--nodes", type=int, default=0)
    args = parser.parse_args()
    with np.load(MODELS / f"{args.task}.eval.npz") as data:
        feed = (data["images"][:1].astype(np.float32) / 255.0).astype(np.float32)
    print(f"load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    for path in args.models:
        result = profile(path, feed, args.runs)
        by_type: collections.Counter[str] = result["by_type"]  # type: ignore[assignment]
        total = sum(by_type.values())
        print(
            f"== {path.name}: run {result['run_us']:.0f} us (profiled), kernels {total:.0f} us; "
            f"optimized graph: {dict(result['ops'])}"  # type: ignore[call-overload]
        )
        for op, us in by_type.most_common():
            print(f"   {op:24s} {us:8.1f} us {100 * us / total:5.1f} %")
        nodes: dict[tuple[str, str], float] = result["nodes"]  # type: ignore[assignment]
        for (name, op), us in sorted(nodes.items(), key=lambda kv: -kv[1])[: args.nodes]:
            print(f"      {name[:56]:56s} {op:22s} {us:7.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
