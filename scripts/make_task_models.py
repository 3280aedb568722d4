"""Train and export the task models in models/ (task_*), deterministically, in a few minutes each.

    pip install torch==2.13.0 scikit-learn pillow
    python scripts/make_task_models.py [--only NAME ...]

Four families the digits models do not cover and that int8 quantizers get wrong
(issue 14): task_yolov8 (YOLOv8-style detector: decoupled head, DFL box regression,
boxes and class scores in one Concat output, [batch, 4 + 5, 189]), task_dbnet
(DBNet-style text detector, sigmoid probability map), task_crnn (conv + BiLSTM
recogniser, CTC logits [batch, 32, 31]) and task_mobilenetv3 (hard-swish,
squeeze-excitation, depthwise convs). The networks are in task_networks.py; the
data, synthetic but realistic (shapes and digit glyphs on textured backgrounds, text
rendered with PIL's DejaVu fonts), in task_data.py; the decoding in task_metrics.py.
Training: one CPU thread, fixed seeds, deterministic algorithms, AdamW one-cycle.

Writes, per model NAME: models/NAME.onnx (torch's dynamo export, opset 20, as
make_models.py exports), NAME.calib.npz (`input`, float32 [N, 1, ...]: N feeds of
one image, for `--calib`) and NAME.eval.npz (`images`: uint8 images of the same
generator with another seed, the model's input * 255; plus the ground truth: `boxes`
padded with -1, `texts`, `labels`); the float figures against ground truth go to
models/task_accuracy.json. Takes about 25 minutes on one thread of a loaded 2-core
machine. torch is used here only; nothing in onnxslim/ or tests/ imports it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import task_data  # noqa: E402
import task_metrics as tm  # noqa: E402
from make_models import classification_loss, export, ort_session, seed_everything, train  # noqa: E402
from task_networks import REG_MAX, CRNNMini, DBNetMini, MobileNetV3Mini, YoloV8Mini  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
DET_SIZE = 96
DB_SHAPE = (64, 192)


@dataclass
class Built:
    model: nn.Module
    task: str
    calib: np.ndarray  # float32 model inputs
    eval_images: np.ndarray  # the eval inputs (float32 in [0, 1])
    truth: dict[str, np.ndarray]  # ground truth arrays for the eval .npz
    reference: list  # ground truth decisions, as task_metrics.decode gives them
    output_name: str


def pad_boxes(boxes: list[np.ndarray], width: int) -> np.ndarray:
    """Ragged per-image boxes -> [N, K, width], padded with -1."""
    k = max(1, max(len(b) for b in boxes))
    out = np.full((len(boxes), k, width), -1.0, np.float32)
    for i, b in enumerate(boxes):
        out[i, : len(b)] = b[:, :width]
    return out


# --------------------------------------------------------------------------- detector


def yolo_targets(model: YoloV8Mini, scenes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per anchor: class (-1 background) and xyxy box, from boxes inside whose centre area
    (2.5 strides) the anchor lies and whose sides fit the DFL range; smallest box wins."""
    pts = (model.anchor_points * model.anchor_strides).T.numpy()  # [A, 2] pixels
    strides = model.anchor_strides[0].numpy()
    cls = np.full((len(scenes), len(pts)), -1, np.int64)
    box = np.zeros((len(scenes), len(pts), 4), np.float32)
    for i, gts in enumerate(scenes):
        area = np.full(len(pts), np.inf)
        for x0, y0, x1, y1, c in gts:
            ltrb = np.stack([pts[:, 0] - x0, pts[:, 1] - y0, x1 - pts[:, 0], y1 - pts[:, 1]], 1)
            near = np.abs(pts - [(x0 + x1) / 2, (y0 + y1) / 2]).max(1) < 2.5 * strides
            fits = (ltrb.min(1) > 0) & (ltrb.max(1) / strides < REG_MAX - 1.01) & near
            better = fits & ((x1 - x0) * (y1 - y0) < area)
            area[better] = (x1 - x0) * (y1 - y0)
            cls[i, better], box[i, better] = int(c), (x0, y0, x1, y1)
    return cls, box


def yolo_loss(
    model: YoloV8Mini, x: torch.Tensor, cls: torch.Tensor, box: torch.Tensor
) -> torch.Tensor:
    box_logits, cls_logits = model.raw(x)
    pos = cls >= 0
    n_pos = max(int(pos.sum()), 1)
    onehot = F.one_hot(cls.clamp(min=0), model.classes).float() * pos[..., None]
    loss_cls = F.binary_cross_entropy_with_logits(
        cls_logits.transpose(1, 2), onehot, reduction="sum"
    )
    points, strides = model.anchor_points.T, model.anchor_strides[0]
    dist = torch.cat(
        [points - box[..., :2] / strides[:, None], box[..., 2:] / strides[:, None] - points], -1
    )
    dist = dist.clamp(0, REG_MAX - 1.01)[pos]  # [P, 4]
    logits = box_logits.reshape(len(x), 4, REG_MAX, -1).permute(0, 3, 1, 2)[pos]  # [P, 4, 16]
    log_p = logits.log_softmax(-1)
    left = dist.floor().long()
    w_right = dist - left
    dfl = -(log_p.gather(-1, left[..., None])[..., 0] * (1 - w_right))
    dfl = dfl - log_p.gather(-1, (left + 1)[..., None])[..., 0] * w_right
    expected = (log_p.exp() * torch.arange(REG_MAX, dtype=torch.float32)).sum(-1)  # [P, 4]
    p_pts = points.expand(len(x), -1, -1)[pos]
    pred = torch.cat([p_pts - expected[:, :2], p_pts + expected[:, 2:]], 1)
    true = torch.cat([p_pts - dist[:, :2], p_pts + dist[:, 2:]], 1)
    wh = (torch.min(pred[:, 2:], true[:, 2:]) - torch.max(pred[:, :2], true[:, :2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
    iou = inter / (area(pred) + area(true) - inter + 1e-7)
    return (loss_cls + 7.5 * (1 - iou).sum() + 1.5 * dfl.sum() / 4) / n_pos


def build_yolov8(scale: float) -> Built:
    model = YoloV8Mini(classes=len(task_data.SHAPES), size=DET_SIZE)
    x, scenes = task_data.detection_scenes(int(1600 * scale), seed=1, size=DET_SIZE)
    cls, box = yolo_targets(model, scenes)
    print(f"    {len(x)} scenes, {int((cls >= 0).sum())} positive anchors", flush=True)
    train(
        model,
        lambda e: x,
        lambda e: (cls, box),
        yolo_loss,
        epochs=max(1, int(9 * scale)),
        lr=4e-3,
        batch=32,
    )
    calib, _ = task_data.detection_scenes(24, seed=2, size=DET_SIZE)
    images, truth = task_data.detection_scenes(48, seed=3, size=DET_SIZE)
    reference = [np.concatenate([t[:, :4], np.ones((len(t), 1)), t[:, 4:]], 1) for t in truth]
    return Built(
        model, "detect", calib, images, {"boxes": pad_boxes(truth, 5)}, reference, "output0"
    )


# --------------------------------------------------------------------------- text detector


def db_loss(model: DBNetMini, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    logits = model.logits(x)
    prob = logits.sigmoid()
    dice = 1 - 2 * (prob * mask).sum() / (prob.sum() + mask.sum() + 1e-6)
    return F.binary_cross_entropy_with_logits(logits, mask, pos_weight=torch.tensor(3.0)) + dice


def build_dbnet(scale: float) -> Built:
    model = DBNetMini()
    x, masks, _ = task_data.text_pages(
        int(1600 * scale), seed=1, height=DB_SHAPE[0], width=DB_SHAPE[1]
    )
    train(
        model,
        lambda e: x,
        lambda e: (masks,),
        db_loss,
        epochs=max(1, int(8 * scale)),
        lr=4e-3,
        batch=32,
    )
    calib, _, _ = task_data.text_pages(24, seed=2, height=DB_SHAPE[0], width=DB_SHAPE[1])
    images, _, truth = task_data.text_pages(32, seed=3, height=DB_SHAPE[0], width=DB_SHAPE[1])
    return Built(model, "text-detect", calib, images, {"boxes": pad_boxes(truth, 4)}, truth, "maps")


# --------------------------------------------------------------------------- recogniser


def encode_texts(texts: list[str], width: int = 8) -> tuple[np.ndarray, np.ndarray]:
    labels = np.zeros((len(texts), width), np.int64)
    for i, t in enumerate(texts):
        labels[i, : len(t)] = [tm.CHARSET.index(ch) + 1 for ch in t]
    return labels, np.asarray([len(t) for t in texts], np.int64)


def ctc_loss(
    model: CRNNMini, x: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor
) -> torch.Tensor:
    log_probs = model(x).log_softmax(-1).transpose(0, 1)  # [T, b, C]
    frames = torch.full((len(x),), log_probs.shape[0], dtype=torch.long)
    return F.ctc_loss(log_probs, labels, frames, lengths, blank=0, zero_infinity=True)


def build_crnn(scale: float) -> Built:
    model = CRNNMini(classes=len(tm.CHARSET) + 1)
    x, texts = task_data.text_strings(int(4000 * scale), seed=1)
    labels, lengths = encode_texts(texts)
    train(
        model,
        lambda e: x,
        lambda e: (labels, lengths),
        ctc_loss,
        epochs=max(1, int(6 * scale)),
        lr=3e-3,
        batch=32,
    )
    calib, _ = task_data.text_strings(32, seed=2)
    images, truth = task_data.text_strings(256, seed=3)
    return Built(model, "ctc", calib, images, {"texts": np.asarray(truth)}, truth, "logits")


# --------------------------------------------------------------------------- classifier


def build_mobilenetv3(scale: float) -> Built:
    model = MobileNetV3Mini(classes=len(task_data.CLASS_SHAPES))
    x, y = task_data.classification_images(int(3000 * scale), seed=1)
    train(
        model,
        lambda e: x,
        lambda e: (y,),
        classification_loss,
        epochs=max(1, int(10 * scale)),
        lr=3e-3,
        batch=64,
    )
    calib, _ = task_data.classification_images(32, seed=2)
    images, labels = task_data.classification_images(128, seed=3)
    return Built(model, "classify", calib, images, {"labels": labels}, list(labels), "logits")


BUILDERS: dict[str, Callable[[float], Built]] = {
    "task_yolov8": build_yolov8,
    "task_dbnet": build_dbnet,
    "task_crnn": build_crnn,
    "task_mobilenetv3": build_mobilenetv3,
}
TASKS = {
    "task_yolov8": "detect",
    "task_dbnet": "text-detect",
    "task_crnn": "ctc",
    "task_mobilenetv3": "classify",
}


def write(name: str, built: Built, out: Path) -> dict:
    """Export, check against torch on ORT, write the .npz files; return the float figures."""
    path = out / f"{name}.onnx"
    export(built.model, torch.from_numpy(built.calib[:2]), path, built.output_name)
    images_u8 = np.round(built.eval_images * 255).astype(np.uint8)
    feeds = images_u8.astype(np.float32) / 255.0
    ort_out = ort_session(path).run(None, {"input": feeds})[0]
    with torch.no_grad():
        ref = built.model(torch.from_numpy(feeds)).numpy()
    diff = float(np.abs(ort_out - ref).max())
    print(f"    ORT vs torch max abs diff on the eval set: {diff:.3g}")
    if diff > 1e-3:
        raise SystemExit(f"{name}: exported model disagrees with torch (max abs diff {diff})")
    calib = (np.round(built.calib * 255) / 255).astype(np.float32)  # 8-bit images, as eval
    # one feed per sample: array[i] is a batch of one, as --calib reads it
    np.savez_compressed(out / f"{name}.calib.npz", input=calib[:, None])
    np.savez_compressed(out / f"{name}.eval.npz", images=images_u8, **built.truth)
    decided = tm.decode(built.task, ort_out)
    value = tm.task_score(built.task, decided, built.reference)
    return {
        "task": built.task,
        "metric": tm.METRIC_NAMES[built.task] + " vs ground truth",
        "value": round(value, 4),
        "eval_samples": len(images_u8),
        "bytes": path.stat().st_size,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(BUILDERS), help="models to rebuild")
    parser.add_argument("--out", type=Path, default=MODELS, help="output folder (default models/)")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="share of data and epochs (smoke runs)"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    record_path = args.out / "task_accuracy.json"
    records = json.loads(record_path.read_text()) if record_path.is_file() else {}
    for name in args.only or list(BUILDERS):
        started = time.perf_counter()
        print(f"{name}:", flush=True)
        seed_everything(0)
        built = BUILDERS[name](args.scale)
        records[name] = write(name, built, args.out)
        r = records[name]
        seconds = time.perf_counter() - started
        print(f"    {r['metric']} {r['value']:.4f}, {r['bytes'] / 1e3:.0f} kB, {seconds:.0f} s")
        record_path.write_text(json.dumps(dict(sorted(records.items())), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
