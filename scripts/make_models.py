"""Train and export the example models in models/, deterministically.

    pip install torch==2.13.0 scikit-learn && python scripts/make_models.py [--only NAME ...]

Every model learns scikit-learn's bundled digits (8x8 images, 10 classes, 1797
samples; no download), split 70/30 stratified with a fixed seed. Training runs on
one CPU thread with fixed seeds and deterministic algorithms, so a rerun on the
same machine and library versions writes the same weights; another CPU may round
differently and land on slightly different weights and figures.

Export uses torch's default exporter (`torch.onnx.export(dynamo=True)`, opset 20),
then the same onnxscript clean-up it would run by default, minus its
BatchNormalization-into-Conv fusion: the clean-up passes of onnxslim need a BN to
fuse. Each model is checked with onnx.checker and against torch on ONNX Runtime.

Writes, per model NAME: models/NAME.onnx, NAME.calib.npz, NAME.eval.npz, and the
float figures of all models to models/accuracy.json (see models/README.md).
torch is used here only; nothing in onnxslim/ or tests/ imports it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnx_ir as ir  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import model_metrics  # noqa: E402
from digits_networks import (  # noqa: E402
    CANVAS,
    DETECTOR_STRIDE,
    DigitsCNN,
    DigitsDetector,
    DigitsGated,
    DigitsLSTM,
    DigitsTransformer,
)

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
SEED = 0
OPSET = 20
CALIB_SAMPLES = 256
MAX_MODEL_BYTES = 2_000_000


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Split:
    """Digits in [0, 1], shape [n, 8, 8], and int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_split() -> Split:
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.3, stratify=labels, random_state=SEED
    )
    return Split(x_train, y_train, x_test, y_test)


def resize_bilinear(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize [n, h, w] images (half-pixel centres, like torch align_corners=False)."""
    n, h, w = images.shape

    def axis(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = (np.arange(size_out) + 0.5) * size_in / size_out - 0.5
        pos = np.clip(pos, 0, size_in - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, size_in - 1)
        return lo, hi, (pos - lo).astype(np.float32)

    y0, y1, fy = axis(h, height)
    x0, x1, fx = axis(w, width)
    rows = images[:, y0, :] * (1 - fy)[None, :, None] + images[:, y1, :] * fy[None, :, None]
    return (rows[:, :, x0] * (1 - fx) + rows[:, :, x1] * fx).astype(np.float32)


def as_8bit(images: np.ndarray) -> np.ndarray:
    """Round to the 1/255 grid of an 8-bit image (realistic, and compresses well)."""
    return (np.round(np.clip(images, 0, 1) * 255) / 255).astype(np.float32)


def shift_augment(images: np.ndarray, rng: np.random.Generator, max_shift: int) -> np.ndarray:
    """Shift each [h, w] image by up to `max_shift` pixels, filling with zeros."""
    out = np.zeros_like(images)
    n, h, w = images.shape
    dy = rng.integers(-max_shift, max_shift + 1, n)
    dx = rng.integers(-max_shift, max_shift + 1, n)
    for i in range(n):
        src = images[i, max(0, -dy[i]) : h - max(0, dy[i]), max(0, -dx[i]) : w - max(0, dx[i])]
        out[
            i,
            max(0, dy[i]) : max(0, dy[i]) + src.shape[0],
            max(0, dx[i]) : max(0, dx[i]) + src.shape[1],
        ] = src
    return out


def place_on_canvas(digits: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Each 8x8 digit, resized to 10..16 px, at a random spot of a noisy 32x32 canvas.

    Returns images [n, 32, 32] and boxes [n, 4] as (cx, cy, w, h) in pixels.
    """
    n = len(digits)
    canvas = rng.normal(0.0, 0.08, size=(n, CANVAS, CANVAS)).astype(np.float32)
    boxes = np.zeros((n, 4), dtype=np.float32)
    sizes = rng.integers(10, 17, n)
    for i in range(n):
        s = int(sizes[i])
        patch = resize_bilinear(digits[i : i + 1], s, s)[0]
        top, left = rng.integers(0, CANVAS - s + 1, 2)
        canvas[i, top : top + s, left : left + s] += patch
        boxes[i] = (left + s / 2, top + s / 2, s, s)
    return as_8bit(canvas), boxes


# ----------------------------------------------------------------------- training


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def train(
    model: nn.Module,
    inputs: Callable[[int], np.ndarray],
    targets: Callable[[int], tuple[np.ndarray, ...]],
    loss_fn: Callable[..., torch.Tensor],
    *,
    epochs: int,
    lr: float,
    batch: int = 64,
    weight_decay: float = 1e-4,
    seed: int = SEED,
) -> None:
    """AdamW with cosine decay; `inputs(epoch)`/`targets(epoch)` give that epoch's data,
    so augmentation stays seeded."""
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    x0 = inputs(0)
    steps = epochs * math.ceil(len(x0) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    model.train()
    for epoch in range(epochs):
        x_all = x0 if epoch == 0 else inputs(epoch)
        t_all = targets(epoch)
        order = rng.permutation(len(x_all))
        total = 0.0
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            x = torch.from_numpy(x_all[idx])
            t = tuple(torch.from_numpy(a[idx]) for a in t_all)
            loss = loss_fn(model, x, *t)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        if epoch == epochs - 1 or epoch % max(1, epochs // 5) == 0:
            print(f"    epoch {epoch + 1}/{epochs} loss {total / len(order):.4f}", flush=True)
    model.eval()


def classification_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    forward = getattr(model, "train_forward", model)
    return F.cross_entropy(forward(x), y, label_smoothing=0.05)


def detector_targets(
    boxes: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre sampling: anchors within 1.5 cells of the box centre (and inside it) are
    positive. Returns positive mask [n, A], target side distances [n, 4, A], labels."""
    side = CANVAS // DETECTOR_STRIDE
    centres = (np.arange(side) + 0.5) * DETECTOR_STRIDE
    gy, gx = np.meshgrid(centres, centres, indexing="ij")
    ax, ay = gx.reshape(-1), gy.reshape(-1)  # [A]
    cx, cy, w, h = (boxes[:, i : i + 1] for i in range(4))
    left, top = ax - (cx - w / 2), ay - (cy - h / 2)
    right, bottom = (cx + w / 2) - ax, (cy + h / 2) - ay
    sides = np.stack([left, top, right, bottom], axis=1).astype(np.float32)  # [n,4,A]
    radius = 1.5 * DETECTOR_STRIDE
    near = (np.abs(ax - cx) <= radius) & (np.abs(ay - cy) <= radius)
    positive = near & (sides.min(axis=1) > 0)
    return positive.astype(np.float32), sides, labels


def detector_loss(
    model: DigitsDetector,
    x: torch.Tensor,
    positive: torch.Tensor,
    sides: torch.Tensor,
    labels: torch.Tensor,
) -> torch.Tensor:
    distances, logits = model.raw(x)
    npos = positive.sum().clamp(min=1.0)
    cls_target = F.one_hot(labels, 10).float()[:, :, None] * positive[:, None, :]
    cls_loss = F.binary_cross_entropy_with_logits(logits, cls_target, reduction="sum") / npos
    # IoU loss on side distances (boxes share the anchor point) plus a small L1 term.
    pred_area = (distances[:, 0] + distances[:, 2]) * (distances[:, 1] + distances[:, 3])
    true_area = (sides[:, 0] + sides[:, 2]) * (sides[:, 1] + sides[:, 3])
    overlap = torch.minimum(distances, sides)  # per side, from the shared anchor point
    inter_w = overlap[:, 0] + overlap[:, 2]
    inter_h = overlap[:, 1] + overlap[:, 3]
    inter = inter_w.clamp(min=0) * inter_h.clamp(min=0)
    iou = inter / (pred_area + true_area - inter + 1e-6)
    box_loss = ((1 - iou) * positive).sum() / npos
    l1 = ((distances - sides).abs().mean(dim=1) * positive).sum() / npos / DETECTOR_STRIDE
    return cls_loss + 2.0 * box_loss + 0.2 * l1


# ------------------------------------------------------------------------- export


# The onnxscript rewrite rules torch's exporter applies, except these (kept for onnxslim).
KEPT_FOR_ONNXSLIM = {
    "FuseBatchNormIntoConv",
    "FuseBatchNormIntoConvTranspose",
    "FuseBatchNormIntoGemm",
}
# Node metadata the exporter records that holds this machine's file paths.
MACHINE_SPECIFIC_METADATA = ("pkg.torch.onnx.stack_trace",)


def export(model: nn.Module, example: torch.Tensor, path: Path, output_name: str) -> None:
    """Dynamo export with dynamic batch, optimized like torch's default but keeping BN."""
    import onnx_ir.passes.common as common
    from onnxscript import rewriter
    from onnxscript.optimizer import _constant_folding

    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            optimize=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=[output_name],
            dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}},
            verbose=False,
        )
    ir_model = program.model
    rules = [r for r in rewriter._DEFAULT_REWRITE_RULES if r.name not in KEPT_FOR_ONNXSLIM]
    # Mirrors onnxscript.optimizer.optimize_ir (torch's default), with `rules`.
    ir.passes.Sequential(
        common.InlinePass(),
        ir.passes.PassManager(
            [
                _constant_folding.FoldConstantsPass(
                    shape_inference=True,
                    input_size_limit=_constant_folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
                    output_size_limit=_constant_folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT,
                ),
                rewriter.RewritePass(rules),
                common.RemoveUnusedNodesPass(),
                common.RemoveUnusedFunctionsPass(),
                common.RemoveUnusedOpsetsPass(),
            ],
            steps=2,
            early_stop=True,
        ),
        common.RemoveUnusedNodesPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.LiftSubgraphInitializersToMainGraphPass(),
        common.DeduplicateInitializersPass(),
        common.CommonSubexpressionEliminationPass(),
        common.OutputFixPass(),
        common.NameFixPass(),
    )(ir_model)
    proto = ir.serde.serialize_model(ir_model)
    for node in _all_nodes(proto.graph):
        keep = [p for p in node.metadata_props if p.key not in MACHINE_SPECIFIC_METADATA]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))  # small: weights stay inside the file
    size = path.stat().st_size
    if size > MAX_MODEL_BYTES:
        raise SystemExit(f"{path.name} is {size} bytes, over the {MAX_MODEL_BYTES} limit")


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            for g in attr.graphs:
                yield from _all_nodes(g)


def op_types(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in _all_nodes(onnx.load(str(path)).graph):
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def ort_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_ort(session: ort.InferenceSession, samples: np.ndarray, per_sample: bool) -> np.ndarray:
    """Run over stacked single-sample feeds [n, 1, ...]; batched unless `per_sample`."""
    name = session.get_inputs()[0].name
    if per_sample:
        return np.concatenate([session.run(None, {name: s})[0] for s in samples])
    return session.run(None, {name: samples[:, 0]})[0]


def torch_outputs(model: nn.Module, samples: np.ndarray, per_sample: bool) -> np.ndarray:
    with torch.no_grad():
        if per_sample:
            return np.concatenate([model(torch.from_numpy(s)).numpy() for s in samples])
        return model(torch.from_numpy(samples[:, 0])).numpy()


# -------------------------------------------------------------------------- build


@dataclass
class Built:
    """A trained model and its data, stacked as single-sample feeds [n, 1, ...]."""

    model: nn.Module
    output_name: str
    calib: np.ndarray
    eval_inputs: np.ndarray
    eval_labels: np.ndarray
    eval_boxes: np.ndarray | None = None
    per_sample: bool = False  # the model only routes correctly with batch 1


def calibration_indices(n: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).permutation(n)[:CALIB_SAMPLES])


def feeds(images: np.ndarray) -> np.ndarray:
    """[n, ...] -> [n, 1, ...]: each sample a feed with its own batch axis."""
    return np.ascontiguousarray(images[:, None])


def build_cnn(split: Split) -> Built:
    seed_everything(SEED)
    rng = np.random.default_rng(SEED + 1)
    base = split.x_train
    x_test = as_8bit(resize_bilinear(split.x_test, 16, 16))[:, None]

    def inputs(epoch: int) -> np.ndarray:
        shifted = base if epoch == 0 else shift_augment(base, rng, 1)
        return as_8bit(resize_bilinear(shifted, 16, 16))[:, None]

    model = DigitsCNN()
    train(model, inputs, lambda e: (split.y_train,), classification_loss, epochs=30, lr=3e-3)
    x_train = as_8bit(resize_bilinear(base, 16, 16))[:, None]
    calib = x_train[calibration_indices(len(x_train), SEED + 2)]
    return Built(model, "logits", feeds(calib), feeds(x_test), split.y_test)


def build_transformer(split: Split) -> Built:
    seed_everything(SEED)
    rng = np.random.default_rng(SEED + 1)

    def inputs(epoch: int) -> np.ndarray:
        return split.x_train if epoch == 0 else shift_augment(split.x_train, rng, 1)

    model = DigitsTransformer()
    train(
        model,
        inputs,
        lambda e: (split.y_train,),
        classification_loss,
        epochs=80,
        lr=3e-3,
        weight_decay=0.05,
    )
    calib = split.x_train[calibration_indices(len(split.x_train), SEED + 2)]
    return Built(model, "logits", feeds(calib), feeds(split.x_test), split.y_test)


def build_lstm(split: Split) -> Built:
    seed_everything(SEED)
    rng = np.random.default_rng(SEED + 1)

    def inputs(epoch: int) -> np.ndarray:
        return split.x_train if epoch == 0 else shift_augment(split.x_train, rng, 1)

    model = DigitsLSTM()
    train(model, inputs, lambda e: (split.y_train,), classification_loss, epochs=60, lr=1e-2)
    calib = split.x_train[calibration_indices(len(split.x_train), SEED + 2)]
    return Built(model, "logits", feeds(calib), feeds(split.x_test), split.y_test)


def build_detector(split: Split) -> Built:
    seed_everything(SEED)
    copies = 3
    rng = np.random.default_rng(SEED + 1)
    digits = np.concatenate([split.x_train] * copies)
    labels = np.concatenate([split.y_train] * copies)
    images, boxes = place_on_canvas(digits, rng)
    positive, sides, _ = detector_targets(boxes, labels)
    test_images, test_boxes = place_on_canvas(split.x_test, np.random.default_rng(SEED + 3))

    model = DigitsDetector()
    train(
        model,
        lambda e: images[:, None],
        lambda e: (positive, sides, labels),
        detector_loss,
        epochs=25,
        lr=3e-3,
    )
    calib = images[calibration_indices(len(images), SEED + 2)][:, None]
    return Built(
        model,
        "detections",
        feeds(calib),
        feeds(test_images[:, None]),
        split.y_test,
        eval_boxes=test_boxes,
    )


def build_gated(split: Split) -> Built:
    seed_everything(SEED)
    rng = np.random.default_rng(SEED + 1)
    x_train = as_8bit(resize_bilinear(split.x_train, 16, 16))[:, None]
    x_test = as_8bit(resize_bilinear(split.x_test, 16, 16))[:, None]
    # Split at the training set's median ink, rounded, so both branches learn.
    threshold = float(np.round(np.median(x_train.mean(axis=(1, 2, 3))), 3))

    def inputs(epoch: int) -> np.ndarray:
        shifted = split.x_train if epoch == 0 else shift_augment(split.x_train, rng, 1)
        return as_8bit(resize_bilinear(shifted, 16, 16))[:, None]

    model = DigitsGated(threshold)
    train(model, inputs, lambda e: (split.y_train,), classification_loss, epochs=40, lr=3e-3)
    calib = x_train[calibration_indices(len(x_train), SEED + 2)]
    heavy = float(np.mean(x_test.mean(axis=(1, 2, 3)) > threshold))
    print(f"    threshold {threshold}; {heavy:.0%} of eval samples take the 'heavy' branch")
    return Built(model, "logits", feeds(calib), feeds(x_test), split.y_test, per_sample=True)


BUILDERS: dict[str, Callable[[Split], Built]] = {
    "digits_cnn": build_cnn,
    "digits_transformer": build_transformer,
    "digits_lstm": build_lstm,
    "digits_detector": build_detector,
    "digits_gated": build_gated,
}


def write(name: str, built: Built, out: Path) -> dict:
    """Export, verify against torch on ORT, write the npz files; return the record."""
    path = out / f"{name}.onnx"
    export(
        built.model,
        torch.from_numpy(built.calib[0]).repeat(2, *[1] * (built.calib.ndim - 2)),
        path,
        built.output_name,
    )
    session = ort_session(path)
    ort_out = run_ort(session, built.eval_inputs, built.per_sample)
    ref = torch_outputs(built.model, built.eval_inputs, built.per_sample)
    diff = float(np.abs(ort_out - ref).max())
    print(f"    ORT vs torch max abs diff on the eval set: {diff:.3g}")
    if diff > 1e-3:
        raise SystemExit(f"{name}: exported model disagrees with torch (max abs diff {diff})")
    np.savez_compressed(out / f"{name}.calib.npz", input=built.calib)
    eval_arrays = {"input": built.eval_inputs, "labels": built.eval_labels.astype(np.int64)}
    if built.eval_boxes is not None:
        eval_arrays["boxes"] = built.eval_boxes.astype(np.float32)
    np.savez_compressed(out / f"{name}.eval.npz", **eval_arrays)
    value = model_metrics.score(name, ort_out, eval_arrays)
    record = {
        "metric": model_metrics.METRICS[name],
        "value": round(value, 4),
        "eval_samples": len(built.eval_labels),
        "batch_one_only": built.per_sample,
        "torch_metric": round(model_metrics.score(name, ref, eval_arrays), 4),
        "bytes": path.stat().st_size,
        "ops": op_types(path),
    }
    if built.eval_boxes is not None:
        record["mean_best_iou"] = round(model_metrics.mean_best_iou(ort_out, built.eval_boxes), 4)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(BUILDERS), help="models to rebuild")
    parser.add_argument("--out", type=Path, default=MODELS, help="output folder (default models/)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    accuracy_path = args.out / "accuracy.json"
    records = json.loads(accuracy_path.read_text()) if accuracy_path.is_file() else {}
    split = load_split()
    print(
        f"digits: {len(split.y_train)} train / {len(split.y_test)} eval samples; "
        f"torch {torch.__version__}, onnxruntime {ort.__version__}"
    )
    for name in args.only or list(BUILDERS):
        started, cpu_started = time.perf_counter(), time.process_time()
        print(f"{name}:", flush=True)
        built = BUILDERS[name](split)
        records[name] = write(name, built, args.out)
        r = records[name]
        print(
            f"    {r['metric']} {r['value']:.4f} on ORT (torch {r['torch_metric']:.4f}), "
            f"{r['bytes'] / 1e3:.0f} kB, {time.perf_counter() - started:.0f} s "
            f"({time.process_time() - cpu_started:.0f} s CPU)"
        )
        print(f"    ops {r['ops']}")
        accuracy_path.write_text(json.dumps(dict(sorted(records.items())), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
