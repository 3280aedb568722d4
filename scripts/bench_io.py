"""Benchmark: load + save of a ~1 GB external-data model, onnxslim against onnx.

Each variant runs in its own child process, so peak RSS (VmHWM, read by the child
itself) is that variant's alone; wall time covers load + save only (imports excluded,
reported apart as the RSS after imports). Variants alternate over `--repeat` rounds
and the best time / lowest peak of each is kept, because the machine is shared.

    onnx       onnx.load(load_external_data=True) + onnx.save(save_as_external_data=True)
    onnxslim   onnxslim.io.load + a graph clean-up (eliminate-identity, remove-unused)
               + onnxslim.io.save
    onnxslim+optimize   the same with the whole default `onnxslim optimize` clean-up
               (folding, deduplication reads every weight: a worst case, not io alone)

The outputs of all variants are then run on ONNX Runtime and compared bit for bit.

    python scripts/bench_io.py [--gb 1.0] [--repeat 2] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GRAPH_CLEANUP = ("eliminate-identity", "remove-unused")


def cpu_flags() -> str:
    """The SIMD features that matter for ORT kernels, as /proc/cpuinfo states them."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "cpu flags: unknown (no /proc/cpuinfo)"
    flags: set[str] = set()
    model = "unknown CPU"
    for line in text.splitlines():
        if line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
        elif line.startswith("model name") and model == "unknown CPU":
            model = line.split(":", 1)[1].strip()
    wanted = ["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8"]
    shown = " ".join(f"{f}={'yes' if f in flags else 'no'}" for f in wanted)
    import os

    return f"cpu: {model}; {os.cpu_count()} logical cores; {shown}"


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def status_bytes(key: str) -> int:
    """One memory figure of this process from /proc/self/status (VmRSS, RssAnon, RssFile)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def rss_bytes() -> int:
    return status_bytes("VmRSS")


# --- the model ---------------------------------------------------------------------------


def build_model(folder: Path, gigabytes: float, width: int = 4096) -> Path:
    """x[1,width] -> (MatMul W_i -> Add b_i -> Relu) x L -> Identity -> y, weights external.

    Weights are random (not sparse holes), written layer by layer through a memmap so
    the builder itself never holds them.
    """
    import onnx
    from onnx import TensorProto, helper

    folder.mkdir(parents=True, exist_ok=True)
    layer_bytes = width * width * 4
    layers = max(1, round(gigabytes * 1e9 / layer_bytes))
    data = folder / "model.onnx.data"
    total = layers * (layer_bytes + width * 4)
    with open(data, "wb") as f:
        f.truncate(total)
    rng = np.random.default_rng(0)
    inits, nodes = [], []
    offset = 0
    current = "x"
    scale = np.float32(1 / np.sqrt(width))
    for i in range(layers):
        for name, shape in ((f"w{i}", (width, width)), (f"b{i}", (width,))):
            nbytes = int(np.prod(shape)) * 4
            view = np.memmap(data, dtype=np.float32, mode="r+", offset=offset, shape=shape)
            for row in range(0, shape[0], 512):
                chunk = rng.standard_normal(
                    (min(512, shape[0] - row), *shape[1:]), dtype=np.float32
                )
                view[row : row + 512] = chunk * scale
            view.flush()
            del view
            init = TensorProto(
                name=name,
                data_type=TensorProto.FLOAT,
                dims=list(shape),
                data_location=TensorProto.EXTERNAL,
            )
            for key, value in (
                ("location", data.name),
                ("offset", str(offset)),
                ("length", str(nbytes)),
            ):
                init.external_data.add(key=key, value=value)
            inits.append(init)
            offset += nbytes
        nodes += [
            helper.make_node("MatMul", [current, f"w{i}"], [f"m{i}"]),
            helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
            helper.make_node("Relu", [f"a{i}"], [f"r{i}"]),
        ]
        current = f"r{i}"
    nodes.append(helper.make_node("Identity", [current], ["y"]))
    graph = helper.make_graph(
        nodes,
        "bench_io",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(folder / "model.onnx"))
    return folder / "model.onnx"


# --- the children ------------------------------------------------------------------------


def child(variant: str, model: Path, out: Path) -> dict:
    """Run one variant in this (fresh) process and report its own figures."""
    if variant == "onnx":
        import onnx

        after_imports = rss_bytes()
        start = time.perf_counter()
        proto = onnx.load(str(model), load_external_data=True)
        loaded = time.perf_counter()
        onnx.save_model(
            proto,
            str(out),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=f"{out.name}.data",
            size_threshold=1024,
        )
        saved = time.perf_counter()
    else:
        from onnxslim import io
        from onnxslim.registry import BUILTIN_PASSES, DEFAULT_OPTIMIZE

        names = GRAPH_CLEANUP if variant == "onnxslim" else DEFAULT_OPTIMIZE
        after_imports = rss_bytes()
        start = time.perf_counter()
        ir_model = io.load(model)
        for name in names:
            BUILTIN_PASSES[name]()(ir_model)
        loaded = time.perf_counter()
        io.save(ir_model, out)
        saved = time.perf_counter()
    return {
        "variant": variant,
        "load": loaded - start,
        "save": saved - loaded,
        "total": saved - start,
        "peak_rss": peak_rss_bytes(),
        "rss_after_imports": after_imports,
        "anon_at_end": status_bytes("RssAnon"),
        "file_at_end": status_bytes("RssFile"),
    }


def run_child(variant: str, model: Path, out: Path) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        variant,
        "--model",
        str(model),
        "--out",
        str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{variant} child failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_outputs(reference: Path, outputs: list[Path]) -> str:
    import onnxruntime as ort

    x = np.random.default_rng(1).standard_normal((1, 4096)).astype(np.float32)

    def run(path: Path) -> np.ndarray:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return session.run(None, {"x": x[:, : session.get_inputs()[0].shape[1]]})[0]

    expected = run(reference)
    same = [np.array_equal(run(p), expected) for p in outputs]
    return "outputs identical to the input model on ORT: " + ", ".join(
        f"{p.parent.name}={'yes' if s else 'NO'}" for p, s in zip(outputs, same, strict=True)
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gb", type=float, default=1.0, help="model size in GB (default 1.0)")
    parser.add_argument("--repeat", type=int, default=2, help="rounds; best of each variant kept")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where to build (default: a temp dir)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--no-optimize-row", action="store_true", help="skip the full-optimize row")
    parser.add_argument(
        "--child", choices=["onnx", "onnxslim", "onnxslim+optimize"], help=argparse.SUPPRESS
    )
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.model, args.out)))
        return

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_io_"))
    variants = ["onnx", "onnxslim"] + ([] if args.no_optimize_row else ["onnxslim+optimize"])
    try:
        start = time.perf_counter()
        model = build_model(work / "input", args.gb)
        size = sum(p.stat().st_size for p in model.parent.iterdir())
        print(cpu_flags())
        print(
            f"model: {size / 1e9:.2f} GB external data, {model} "
            f"(built in {time.perf_counter() - start:.1f} s)"
        )
        best: dict[str, dict] = {}
        outputs: dict[str, Path] = {}
        for round_ in range(args.repeat):
            order = variants if round_ % 2 == 0 else variants[::-1]
            for variant in order:
                folder = work / variant.replace("+", "_")
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)
                outputs[variant] = folder / "out.onnx"
                result = run_child(variant, model, outputs[variant])
                kept = best.get(variant)
                if kept is None:
                    best[variant] = result
                else:
                    for key in ("load", "save", "total"):
                        kept[key] = min(kept[key], result[key])
                    kept["peak_rss"] = min(kept["peak_rss"], result["peak_rss"])
                    for key in ("rss_after_imports", "anon_at_end", "file_at_end"):
                        kept[key] = min(kept[key], result[key])
        base = best["onnx"]
        print(
            f"best of {args.repeat} rounds; load includes onnxslim's clean-up passes; RSS in MB "
            "(peak = VmHWM, file = weight pages mapped from the data file, reclaimable page cache)"
        )
        header = (
            f"{'variant':<19} {'load s':>7} {'save s':>7} {'total s':>8} {'peak RSS':>9} "
            f"{'after imports':>14} {'anon/file at end':>17} {'time vs onnx':>13} "
            f"{'peak RSS vs onnx':>17}"
        )
        print(header)
        print("-" * len(header))
        for variant in variants:
            r = best[variant]
            print(
                f"{variant:<19} {r['load']:>7.2f} {r['save']:>7.2f} {r['total']:>8.2f} "
                f"{r['peak_rss'] / 1e6:>9.0f} {r['rss_after_imports'] / 1e6:>14.0f} "
                f"{r['anon_at_end'] / 1e6:>8.0f}/{r['file_at_end'] / 1e6:<8.0f} "
                f"{r['total'] / base['total']:>12.2f}x {r['peak_rss'] / base['peak_rss']:>16.3f}x"
            )
        print(check_outputs(model, [outputs[v] for v in variants]))
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
