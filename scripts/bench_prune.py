"""Benchmark onnxslim pruning on the example models (and optionally the devmodels corpus).

    python scripts/bench_prune.py                     # models/digits_cnn, models/digits_transformer
    python scripts/bench_prune.py --models digits_cnn --runs 300
    python scripts/bench_prune.py --devmodels         # also every pass on ~/.cache/devmodels

What it prints (plain text, ratios rather than absolute times, machine noted first):
1. Unstructured magnitude pruning, sparsity 0.3..0.9: top-1 accuracy without and with
   least-squares reconstruction (uniform allocation), and with sensitivity allocation
   plus reconstruction; packed file size raw and gzipped against the float file.
2. N:M (2:4, 4:8) without and with reconstruction.
3. Channel pruning: removed fraction against accuracy and ORT latency ratio (one
   thread, ORT_ENABLE_ALL, interleaved), at batch 1 and batch 64.
4. Storage at 50% sparsity: dense file, packed (values + bitmask, what onnxslim
   writes), ONNX sparse_initializer with int64 and int32 indices; raw and gzip sizes,
   session start time and inference latency of packed against dense.
5. With --devmodels: every pass on every corpus model with parity figures and what
   channel pruning could and could not rewrite.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
from onnx import helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from onnxslim import io  # noqa: E402
from onnxslim.activations import coalesce_feeds  # noqa: E402
from onnxslim.parity import compare_outputs  # noqa: E402
from onnxslim.passes._run_data import RunData, run_pass  # noqa: E402
from onnxslim.passes.prune import PackSparseWeights  # noqa: E402
from onnxslim.passes.prune._common import summary  # noqa: E402
from onnxslim.passes.prune.channels import channel_groups  # noqa: E402
from onnxslim.registry import make_prune_pass  # noqa: E402
from onnxslim.runtime import Session  # noqa: E402
from onnxslim.workflows.measure import labelled, model_sizes, session_start_ms, top1  # noqa: E402
from onnxslim.workflows.prune import layer_table, overall_sparsity  # noqa: E402

MODELS = REPO / "models"
DEVMODELS = Path(os.environ.get("DEVMODELS_DIR", "~/.cache/devmodels")).expanduser()
DEV_CALIB, DEV_CHECK = 4, 6  # feeds per devmodel: the refit of a ResNet-50 costs minutes per pass


def cpu_line() -> str:
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    wanted = ["avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile"]
    model = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else ""
    )
    have = " ".join(f"{f}={'yes' if f in flags else 'no'}" for f in wanted)
    return (
        f"CPU: {model} | {have} | cores={os.cpu_count()} load={os.getloadavg()[0]:.1f} | "
        f"onnxruntime {ort.__version__}, numpy {np.__version__}"
    )


def prune(model, method: str, calib=None, **options):
    pruned = model.clone()
    start = time.perf_counter()
    run_pass(make_prune_pass(method, **options), pruned, RunData(feeds=calib))
    seconds = time.perf_counter() - start
    details = summary(pruned)
    packed = pruned.clone()
    PackSparseWeights()(packed)
    return pruned, packed, details, seconds


def latency_ratio(reference, candidate, feeds, runs: int) -> tuple[float, float]:
    """(median ratio, best-run ratio) of reference time over candidate time.

    One thread, ORT_ENABLE_ALL, interleaved after a warm-up. On a loaded machine a
    run of a few ms is often preempted, which inflates the slower model's median more
    than the faster one's; the best-run ratio is the figure that noise cannot raise.
    """
    sessions = []
    for model in (reference, candidate):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        data = io.model_to_bytes(model)
        sessions.append(ort.InferenceSession(data, options, providers=["CPUExecutionProvider"]))
    times: list[list[float]] = [[], []]
    for index in range(runs + 5):
        feed = feeds[index % len(feeds)]
        order = (0, 1) if index % 2 == 0 else (1, 0)
        for which in order:
            start = time.perf_counter()
            sessions[which].run(None, feed)
            if index >= 5:
                times[which].append(time.perf_counter() - start)
    ref, cand = np.array(times[0]), np.array(times[1])
    return float(np.median(ref) / np.median(cand)), float(ref.min() / cand.min())


def bench_model(name: str, runs: int, sparsities: list[float]) -> None:
    path, calib, evaluation = (
        MODELS / f"{name}.onnx",
        MODELS / f"{name}.calib.npz",
        MODELS / f"{name}.eval.npz",
    )
    model = io.load(path)
    feeds, labels = labelled(evaluation, model)
    base_acc = top1([model], feeds, labels)[0]
    base_size = model_sizes(model)
    print(
        f"\n=== {name}: float top-1 {base_acc:.4f} on {len(labels)} samples; "
        f"file {base_size.raw:,} B "
        f"raw, {base_size.gzip:,} B gzip; calibration {calib.name}"
    )

    print(
        "\n-- unstructured magnitude (per-layer, layers >= 1024 weights; "
        "sparsity over all layer weights)"
    )
    print(
        f"{'target':>6} {'overall':>7} | {'no refit':>8} {'refit':>8} {'sens+refit':>10} | "
        f"{'raw':>6} {'gzip':>6} | refit s"
    )
    for s in sparsities:
        row = []
        for options in (
            {"reconstruct": False},
            {"calib": str(calib)},
            {"calib": str(calib), "allocation": "sensitivity"},
        ):
            pruned, packed, _, seconds = prune(model, "magnitude", sparsity=s, **options)
            row.append((top1([pruned], feeds, labels)[0], packed, seconds, pruned))
        sizes = model_sizes(row[1][1])
        overall = overall_sparsity(layer_table(model, row[1][3]))
        print(
            f"{s:>6.2f} {overall:>7.3f} | {row[0][0]:>8.4f} {row[1][0]:>8.4f} {row[2][0]:>10.4f} | "
            f"{sizes.raw / base_size.raw:>6.3f} {sizes.gzip / base_size.gzip:>6.3f} | "
            f"{row[1][2]:.1f}"
        )

    print("\n-- N:M along input channels (layers >= 1024 weights)")
    print(f"{'pattern':>7} {'overall':>7} | {'no refit':>8} {'refit':>8} | {'raw':>6} {'gzip':>6}")
    for n, m in ((2, 4), (4, 8)):
        plain, _, _, _ = prune(model, "nm", n=n, m=m, reconstruct=False)
        refit, packed, _, _ = prune(model, "nm", n=n, m=m, calib=str(calib))
        sizes = model_sizes(packed)
        overall = overall_sparsity(layer_table(model, refit))
        print(
            f"{n}:{m:<5} {overall:>7.3f} | {top1([plain], feeds, labels)[0]:>8.4f} "
            f"{top1([refit], feeds, labels)[0]:>8.4f} | {sizes.raw / base_size.raw:>6.3f} "
            f"{sizes.gzip / base_size.gzip:>6.3f}"
        )

    print(
        "\n-- channel pruning (ratio = at most this fraction of each group's channels removed; "
        "latency = float time / pruned time)"
    )
    batch1 = feeds[:64]
    batch64 = coalesce_feeds(model, feeds, 64)[:4]
    print(
        f"{'ratio':>5} {'importance':>10} {'removed':>7} | {'no refit':>8} {'refit':>8} | "
        f"{'speed b1 (best)':>15} {'b64 (best)':>12} | {'raw':>6} | groups kept whole"
    )
    for ratio in (0.25, 0.5, 0.75):
        for importance in ("l2", "activation"):
            plain, _, _, _ = prune(
                model,
                "channels",
                ratio=ratio,
                importance=importance,
                calib=str(calib),
                reconstruct=False,
            )
            refit, _, details, _ = prune(
                model, "channels", ratio=ratio, importance=importance, calib=str(calib)
            )
            removed = overall_sparsity(layer_table(model, refit))
            frozen = sum(1 for g in details.get("groups", []) if g["reason"])
            speed1 = latency_ratio(model, refit, batch1, runs)
            speed64 = latency_ratio(model, refit, batch64, max(20, runs // 4))
            print(
                f"{ratio:>5.2f} {importance:>10} {removed:>7.3f} | "
                f"{top1([plain], feeds, labels)[0]:>8.4f} "
                f"{top1([refit], feeds, labels)[0]:>8.4f} | {speed1[0]:>5.2f} ({speed1[1]:.2f}) "
                f"{speed64[0]:>5.2f} ({speed64[1]:.2f}) | "
                f"{model_sizes(refit).raw / base_size.raw:>6.3f} | {frozen}"
            )

    storage(model, calib, feeds[:32], runs)


def sparse_initializer_bytes(model, index_type) -> tuple[int, int]:
    """Size of the model with every sparse-enough weight stored as an ONNX sparse_initializer."""
    proto = ir.serde.serialize_model(model)
    dense, sparse = [], []
    for init in proto.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.size >= 1024 and np.mean(w == 0) > 0.3 and w.dtype == np.float32:
            flat = w.reshape(-1)
            nz = np.flatnonzero(flat)
            sparse.append(
                helper.make_sparse_tensor(
                    numpy_helper.from_array(flat[nz], init.name),
                    numpy_helper.from_array(nz.astype(index_type), ""),
                    w.shape,
                )
            )
        else:
            dense.append(init)
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(dense)
    proto.graph.sparse_initializer.extend(sparse)
    data = proto.SerializeToString()
    try:
        ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        loads = ""
    except Exception as exc:  # reported, not hidden
        loads = f" (ORT refuses: {str(exc).splitlines()[0][:80]})"
    if loads:
        print(f"   sparse_initializer {np.dtype(index_type).name}{loads}")
    return len(data), len(gzip.compress(data, 6))


def storage(model, calib: Path, feeds, runs: int) -> None:
    print("\n-- storage at 50% magnitude sparsity (refit), bytes relative to the dense pruned file")
    pruned, packed, _, _ = prune(model, "magnitude", sparsity=0.5, calib=str(calib))
    dense = model_sizes(pruned)
    packed_size = model_sizes(packed)
    rows = [
        ("dense initializers", dense.raw, dense.gzip),
        ("packed values+bitmask", packed_size.raw, packed_size.gzip),
    ]
    for index_type in (np.int64, np.int32):
        rows.append(
            (
                f"sparse_initializer {np.dtype(index_type).name}",
                *sparse_initializer_bytes(pruned, index_type),
            )
        )
    for label, raw, gz in rows:
        print(
            f"   {label:<28} raw {raw:>9,} ({raw / dense.raw:.3f})   "
            f"gzip {gz:>9,} ({gz / dense.gzip:.3f})"
        )
    start_dense, start_packed = session_start_ms(pruned, 5), session_start_ms(packed, 5)
    speed = latency_ratio(pruned, packed, feeds, runs)
    print(
        f"   session start: dense {start_dense:.1f} ms, packed {start_packed:.1f} ms; "
        f"inference dense time / packed time = {speed[0]:.2f} (best run {speed[1]:.2f})"
    )


def bench_devmodels(
    runs: int, only: list[str] | None = None, rows: list[str] | None = None
) -> None:
    sys.path.insert(0, str(REPO.parent / "shared" / "devmodels"))
    from inputs import make_feeds  # type: ignore[import-not-found]

    manifest = DEVMODELS / "manifest.json"
    if not manifest.is_file():
        print("\n(devmodels not fetched; skipped)")
        return
    print(
        f"\n=== devmodels: every pass, {DEV_CALIB} calibration feeds / {DEV_CHECK} other check "
        "feeds (synthetic: parity, not accuracy); refit rows capped at 4096 per layer"
    )
    for entry in json.loads(manifest.read_text())["models"]:
        path = DEVMODELS / f"{entry['id']}.onnx"
        if not path.is_file() or (only and entry["id"] not in only):
            continue
        model = io.load(path)
        calib = make_feeds(entry["id"], DEV_CALIB, seed=0)
        check = make_feeds(entry["id"], DEV_CHECK, seed=1)
        groups = channel_groups(model)
        prunable = [g for g in groups if g["prunable"]]
        reasons = Counter(g["reason"].split("'")[0].strip() for g in groups if not g["prunable"])
        print(
            f"\n{entry['id']}: {len(groups)} channel groups, {len(prunable)} prunable "
            f"({sum(g['channels'] for g in prunable)} channels)"
        )
        for reason, count in reasons.most_common(4):
            print(f"   kept whole x{count}: {reason}")
        reference = [Session(model).run(f) for f in check]
        for key, label, method, options in (
            (
                "magnitude-refit",
                "magnitude 0.5 refit",
                "magnitude",
                {"sparsity": 0.5, "calib": calib, "max_rows": 4096},
            ),
            ("magnitude", "magnitude 0.5", "magnitude", {"sparsity": 0.5, "reconstruct": False}),
            ("nm-refit", "2:4 refit", "nm", {"calib": calib, "max_rows": 4096}),
            (
                "channels-refit",
                "channels 0.25 refit",
                "channels",
                {"ratio": 0.25, "calib": calib, "max_rows": 4096},
            ),
        ):
            if rows and key not in rows:
                continue
            start = time.perf_counter()
            try:
                pruned, packed, details, _ = prune(model, method, **options)
                outputs = [Session(packed).run(f) for f in check]
            except Exception as exc:  # a refusal or a bug: printed, and the run goes on
                print(
                    f"   {label:<20} FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                )
                continue
            parity = compare_outputs(reference, outputs, atol=1e-3, rtol=1e-3)
            floats = [
                p
                for p, o in zip(parity, outputs[0].values(), strict=False)
                if np.asarray(o).dtype.kind == "f" and np.isfinite(p.cosine)
            ]
            first = min(floats or parity, key=lambda p: p.cosine)  # the worst float output
            table = layer_table(model, pruned)
            sizes = model_sizes(packed)
            base = model_sizes(model)
            agreement = (
                f" top1-agree {first.top1_agreement:.3f}"
                if first.top1_agreement is not None
                else ""
            )
            speed = (
                latency_ratio(model, packed, check[:4], max(5, runs // 10))
                if method == "channels"
                else None
            )
            extra = f" speed {speed[0]:.2f}x (best {speed[1]:.2f}x)" if speed else ""
            refit = [r for r in details.get("refit", []) if not r["skipped"]]
            skipped_refit = [r for r in details.get("refit", []) if r["skipped"]]
            print(
                f"   {label:<20} layers {len(table):>3} removed {overall_sparsity(table):.3f} | "
                f"{first.name[:18]}: cos {first.cosine:.4f} snr {first.snr_db:5.1f} dB"
                f"{agreement} | "
                f"raw {sizes.raw / base.raw:.3f} gzip {sizes.gzip / base.gzip:.3f}{extra} | "
                f"refit {len(refit)} (skipped {len(skipped_refit)}) | "
                f"{time.perf_counter() - start:.0f}s"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="*", default=["digits_cnn", "digits_transformer"])
    parser.add_argument("--sparsities", nargs="*", type=float, default=[0.3, 0.5, 0.7, 0.8, 0.9])
    parser.add_argument("--runs", type=int, default=200, help="timed runs per latency figure")
    parser.add_argument(
        "--devmodels", action="store_true", help="also run every pass on the devmodels corpus"
    )
    parser.add_argument("--only-devmodels", action="store_true")
    parser.add_argument("--devmodel-ids", nargs="*", help="restrict --devmodels to these ids")
    parser.add_argument(
        "--devmodel-passes",
        nargs="*",
        help="restrict --devmodels to these rows "
        "(magnitude-refit, magnitude, nm-refit, channels-refit)",
    )
    args = parser.parse_args()
    print(cpu_line())
    if not args.only_devmodels:
        for name in args.models:
            if not (MODELS / f"{name}.onnx").is_file():
                print(f"\n({name} not in models/; run scripts/make_models.py)")
                continue
            bench_model(name, args.runs, args.sparsities)
    if args.devmodels or args.only_devmodels:
        bench_devmodels(args.runs, args.devmodel_ids, args.devmodel_passes)


if __name__ == "__main__":
    main()
