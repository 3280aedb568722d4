"""Scale check: a decoder-only transformer with over 2 GB of random weights in external data
through optimize, validate and quantize (weight-only 4-bit, dynamic), with peak RSS.

    python scripts/scale_transformer.py                 # ~2.2 GB of float32 weights
    python scripts/scale_transformer.py --layers 2 --keep --workdir DIR

The model (token ids [batch, seq] -> logits; pre-LayerNorm blocks with causal softmax
attention and a SiLU MLP, every weight its own external tensor in model.data) is
written tensor by tensor, so this script never holds the weights either. Each command
runs alone under scripts/peak_rss.py's launcher (peak RSS is the command's own) with
a timeout; the table gives exit code, wall seconds, peak RSS and peak RSS over the
weight bytes. The bound the project keeps: no whole copy of the weights beyond what
ONNX Runtime needs (ORT holds one copy per open session; optimize's check holds the
input's and the result's). The work folder (a cache, default
~/.cache/onnxslim-scale) is removed afterwards unless --keep. Figures on a shared
machine are noisy in time, not in RSS.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peak_rss import run_measured  # noqa: E402

DEFAULT_WORKDIR = Path("~/.cache/onnxslim-scale").expanduser()
OPSET = 17


class _Weights:
    """Writes each weight straight into model.data and returns its external TensorProto."""

    def __init__(self, folder: Path, seed: int) -> None:
        self.path = folder / "model.data"
        self.handle = self.path.open("wb")
        self.rng = np.random.default_rng(seed)
        self.offset = 0

    def __call__(self, name: str, shape: tuple[int, ...], scale: float = 0.02) -> TensorProto:
        array = (self.rng.standard_normal(shape, dtype=np.float32) * scale).astype(np.float32)
        data = array.tobytes()
        pad = (-self.offset) % 4096  # page-aligned, as onnx's own writer does
        self.handle.write(b"\0" * pad)
        self.offset += pad
        self.handle.write(data)
        tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(shape))
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (
            ("location", self.path.name),
            ("offset", str(self.offset)),
            ("length", str(len(data))),
        ):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        self.offset += len(data)
        return tensor

    def close(self) -> None:
        self.handle.close()


def _const(name: str, values: list[int] | list[float], dtype: int) -> TensorProto:
    return helper.make_tensor(name, dtype, [len(values)], values)


def build(folder: Path, *, layers: int, dim: int, heads: int, vocab: int, seed: int) -> int:
    """Write folder/model.onnx (+ model.data); returns the weight bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = _Weights(folder, seed)
    inits: list[TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    head_dim = dim // heads

    def weight(name: str, shape: tuple[int, ...], scale: float = 0.02) -> str:
        inits.append(weights(name, shape, scale))
        return name

    def small(name: str, values: list[int] | list[float], dtype: int) -> str:
        inits.append(_const(name, values, dtype))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs: object) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def norm(x: str, prefix: str) -> str:
        ones = small(f"{prefix}.g", [1.0] * dim, TensorProto.FLOAT)
        zeros = small(f"{prefix}.b", [0.0] * dim, TensorProto.FLOAT)
        return node("LayerNormalization", [x, ones, zeros], f"{prefix}.out", axis=-1)

    split_heads = small("heads_shape", [0, 0, heads, head_dim], TensorProto.INT64)
    merge_heads = small("merge_shape", [0, 0, dim], TensorProto.INT64)
    scale = small("attn_scale", [1.0 / float(np.sqrt(head_dim))], TensorProto.FLOAT)
    neg = small("mask_neg", [-1e9], TensorProto.FLOAT)
    # causal mask [seq, seq]: -1e9 above the diagonal, from the ids' own length
    shape = node("Shape", ["input_ids"], "ids_shape")
    seq = node(
        "Slice",
        [
            shape,
            small("one_i", [1], TensorProto.INT64),
            small("two_i", [2], TensorProto.INT64),
        ],
        "seq_len",
    )
    square = node("Concat", [seq, seq], "mask_shape", axis=0)
    ones = node(
        "ConstantOfShape",
        [square],
        "mask_ones",
        value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]),
    )
    upper = node("Trilu", [ones, small("k1", [1], TensorProto.INT64)], "mask_upper", upper=1)
    mask = node("Mul", [upper, neg], "mask")

    x = node("Gather", [weight("embed", (vocab, dim)), "input_ids"], "embedded")
    for i in range(layers):
        p = f"l{i}"
        h = norm(x, f"{p}.ln1")
        qkv = []
        for part in ("q", "k", "v"):
            proj = node("MatMul", [h, weight(f"{p}.{part}", (dim, dim))], f"{p}.{part}.mm")
            split = node("Reshape", [proj, split_heads], f"{p}.{part}.split")
            qkv.append(node("Transpose", [split], f"{p}.{part}.t", perm=[0, 2, 1, 3]))
        q, k, v = qkv
        kt = node("Transpose", [k], f"{p}.kt", perm=[0, 1, 3, 2])
        scores = node("Mul", [node("MatMul", [q, kt], f"{p}.qk"), scale], f"{p}.scaled")
        probs = node("Softmax", [node("Add", [scores, mask], f"{p}.masked")], f"{p}.p", axis=-1)
        ctx = node(
            "Transpose", [node("MatMul", [probs, v], f"{p}.ctx")], f"{p}.ctx.t", perm=[0, 2, 1, 3]
        )
        merged = node("Reshape", [ctx, merge_heads], f"{p}.merged")
        attn = node("MatMul", [merged, weight(f"{p}.o", (dim, dim))], f"{p}.o.mm")
        x = node("Add", [x, attn], f"{p}.res1")
        h = norm(x, f"{p}.ln2")
        up = node("MatMul", [h, weight(f"{p}.up", (dim, 4 * dim))], f"{p}.up.mm")
        act = node("Mul", [up, node("Sigmoid", [up], f"{p}.sig")], f"{p}.silu")
        down = node("MatMul", [act, weight(f"{p}.down", (4 * dim, dim))], f"{p}.down.mm")
        x = node("Add", [x, down], f"{p}.res2")
    h = norm(x, "final_ln")
    node("MatMul", [h, weight("lm_head", (dim, vocab))], "logits")
    weights.close()
    graph = helper.make_graph(
        nodes,
        "decoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", vocab])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.save(model, str(folder / "model.onnx"))
    return weights.offset


def commands(folder: Path, exe: str) -> Iterator[tuple[str, list[str]]]:
    model = str(folder / "model.onnx")
    yield "baseline (imports only)", [sys.executable, "-c", "import onnxslim.cli"]
    yield "optimize", [exe, "optimize", model, "-o", str(folder / "opt" / "model.onnx")]
    yield "validate", [exe, "validate", model, str(folder / "opt" / "model.onnx"), "--runs", "3"]
    yield (
        "quantize weight-only 4-bit",
        [exe, "quantize", model, "-o", str(folder / "w4" / "model.onnx")]
        + ["--mode", "weight-only", "--weight-bits", "4"],
    )
    yield (
        "quantize dynamic",
        [exe, "quantize", model, "-o", str(folder / "dyn" / "model.onnx"), "--mode", "dynamic"],
    )


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--layers", type=int, default=11)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per command")
    parser.add_argument("--only", action="append", help="run only these commands (by label)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    exe = shutil.which("onnxslim") or "onnxslim"
    free = shutil.disk_usage(args.workdir.parent if not args.workdir.exists() else args.workdir)
    print(f"free disk: {free.free / 1e9:.1f} GB")
    folder = args.workdir / "decoder"
    try:
        if not (folder / "model.onnx").is_file():
            weight_bytes = build(
                folder,
                layers=args.layers,
                dim=args.dim,
                heads=args.heads,
                vocab=args.vocab,
                seed=args.seed,
            )
        else:
            weight_bytes = (folder / "model.data").stat().st_size
        print(
            f"model: {args.layers} layers, dim {args.dim}, vocab {args.vocab}: "
            f"{weight_bytes / 1e9:.2f} GB of float32 weights in external data"
        )
        rows = []
        for label, argv in commands(folder, exe):
            if args.only and label not in args.only:
                continue
            log = folder / f"{label.replace(' ', '_')}.log"
            with log.open("w") as out:
                measured = run_measured(
                    argv, stdout=out, stderr=subprocess.STDOUT, timeout=args.timeout
                )
            tail = log.read_text().strip().splitlines()[-1:] or [""]
            out_dir = Path(argv[argv.index("-o") + 1]).parent if "-o" in argv else None
            written = _folder_bytes(out_dir) if out_dir and out_dir.is_dir() else 0
            rows.append((label, measured, written, tail[0][:120]))
            print(
                f"{label}: exit {measured.returncode}, {measured.seconds:.0f} s, "
                f"peak RSS {measured.peak_mb:.0f} MB "
                f"({measured.peak_bytes / weight_bytes:.2f}x weights), "
                f"written {written / 1e9:.2f} GB; {tail[0][:120]}",
                flush=True,
            )
        print("\n| command | exit | wall s | peak RSS MB | RSS / weights | written GB |")
        print("|---|---|---|---|---|---|")
        for label, m, written, _ in rows:
            print(
                f"| {label} | {m.returncode}{' (timeout)' if m.timed_out else ''} | "
                f"{m.seconds:.0f} | {m.peak_mb:.0f} | {m.peak_bytes / weight_bytes:.2f} | "
                f"{written / 1e9:.2f} |"
            )
    finally:
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
