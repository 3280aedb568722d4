"""What the users of the task models see, in numpy only: decoding, NMS and agreement scores.

Shared by make_task_models.py (float figures against ground truth), bench_task.py (int8
against float) and tests/task_helpers.py (the quantize test), so all three score alike:

- YOLOv8-style output [N, 4 + C, A] (xyxy pixels, class scores): confidence 0.25, per-class
  NMS at IoU 0.5, then box F1 against the reference boxes (same class, IoU >= 0.5).
- DBNet probability map [N, 1, H, W]: threshold 0.3, 4-connected components, each
  unclipped as DBNet does (offset area * r / perimeter; r = 0.7 undoes the
  training masks' shrink), boxes scored like the detector.
- CTC logits [N, T, C]: greedy decoding (argmax, repeats collapsed, blank 0 removed).
- classifier logits [N, C]: argmax.
"""

from __future__ import annotations

import numpy as np

CHARSET = "0123456789ABCDEFGHKLMNPRSTUVXY"  # CTC classes 1..len(CHARSET); 0 is the blank
CONF = 0.25
NMS_IOU = 0.5
MATCH_IOU = 0.5
DB_THRESH = 0.3
DB_BOX_THRESH = 0.5  # mean probability a component needs (DBNet's box_thresh)
DB_UNCLIP = 0.7  # restores the 0.2 x height shrink of the training masks (DBNet: 1.5 for 0.4)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xyxy boxes a [n, >=4] against b [m, >=4]."""
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = NMS_IOU) -> np.ndarray:
    """Indices kept by greedy NMS, best score first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        order = rest[iou_matrix(boxes[best : best + 1], boxes[rest])[0] < iou]
    return np.asarray(keep, dtype=np.int64)


def yolo_decode(output: np.ndarray, conf: float = CONF) -> list[np.ndarray]:
    """Per image, detections [k, 6]: x0, y0, x1, y1, score, class (YOLOv8 post-processing)."""
    result = []
    for image in output:
        boxes, scores = image[:4].T, image[4:].T
        cls = scores.argmax(1)
        best = scores[np.arange(len(cls)), cls]
        keep = best >= conf
        boxes, best, cls = boxes[keep], best[keep], cls[keep]
        kept = []
        for c in np.unique(cls):
            idx = np.flatnonzero(cls == c)
            kept.extend(idx[nms(boxes[idx], best[idx])])
        kept_idx = np.asarray(sorted(kept), dtype=np.int64)
        result.append(
            np.concatenate([boxes[kept_idx], best[kept_idx, None], cls[kept_idx, None]], 1)
            if kept_idx.size
            else np.zeros((0, 6), np.float32)
        )
    return result


def _match_counts(pred: np.ndarray, ref: np.ndarray, by_class: bool) -> int:
    """True positives: each reference box matched at most once, best-scored prediction first."""
    if not len(pred) or not len(ref):
        return 0
    ious = iou_matrix(pred, ref)
    if by_class:
        ious = np.where(pred[:, None, -1] == ref[None, :, -1], ious, 0.0)
    order = np.argsort(-pred[:, 4], kind="stable") if pred.shape[1] > 4 else np.arange(len(pred))
    used = np.zeros(len(ref), bool)
    hits = 0
    for i in order:
        candidates = np.where(used, -1.0, ious[i])
        j = int(candidates.argmax())
        if candidates[j] >= MATCH_IOU:
            used[j] = True
            hits += 1
    return hits


def box_f1(preds: list[np.ndarray], refs: list[np.ndarray], by_class: bool = True) -> float:
    """Dataset box F1 = 2 TP / (predicted + reference boxes); 1.0 when both are empty."""
    tp = sum(_match_counts(p, r, by_class) for p, r in zip(preds, refs, strict=True))
    total = sum(len(p) for p in preds) + sum(len(r) for r in refs)
    return 1.0 if total == 0 else 2.0 * tp / total


def _runs_max(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Every pixel of a horizontal run of `mask` takes the run's largest label."""
    flat, on = labels.ravel(), mask.ravel()
    width = labels.shape[-1]
    prev = np.concatenate([[False], on[:-1]])
    prev[::width] = False
    run_id = np.cumsum(on & ~prev) - 1
    peak = np.zeros(int(run_id[-1]) + 1 if on.any() else 0, labels.dtype)
    np.maximum.at(peak, run_id[on], flat[on])
    out = flat.copy()
    out[on] = peak[run_id[on]]
    return out.reshape(labels.shape)


def components(mask: np.ndarray) -> np.ndarray:
    """4-connected component labels of a 2-D bool mask (0 = background)."""
    labels = np.where(mask, np.arange(1, mask.size + 1).reshape(mask.shape), 0)
    while True:
        new = _runs_max(labels, mask)
        new = _runs_max(new.T.copy(), mask.T.copy()).T
        if np.array_equal(new, labels):
            return labels
        labels = new


def db_boxes(prob: np.ndarray) -> np.ndarray:
    """Text boxes [k, 5] (x0, y0, x1, y1, score) from one [H, W] probability map."""
    labels = components(prob > DB_THRESH)
    boxes = []
    for label in np.unique(labels[labels > 0]):
        ys, xs = np.nonzero(labels == label)
        if len(ys) < 4:
            continue
        score = float(prob[ys, xs].mean())
        if score < DB_BOX_THRESH:
            continue
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0
        w, h = x1 - x0, y1 - y0
        d = w * h * DB_UNCLIP / (2 * (w + h))
        boxes.append([x0 - d, y0 - d, x1 + d, y1 + d, score])
    return np.asarray(boxes, np.float32).reshape(-1, 5)


def db_decode(maps: np.ndarray) -> list[np.ndarray]:
    return [db_boxes(m[0]) for m in maps]


def ctc_decode(logits: np.ndarray) -> list[str]:
    """Greedy CTC over [N, T, C]: argmax per frame, repeats collapsed, blanks (0) dropped."""
    texts = []
    for best in logits.argmax(-1):
        keep = np.concatenate([[True], best[1:] != best[:-1]]) & (best != 0)
        texts.append("".join(CHARSET[i - 1] for i in best[keep]))
    return texts


def agreement(a: list[str] | np.ndarray, b: list[str] | np.ndarray) -> float:
    """Share of equal decisions (strings, class ids)."""
    return float(np.mean([x == y for x, y in zip(a, b, strict=True)]))


def decode(task: str, output: np.ndarray) -> list:
    """The decisions a user of `task` acts on, from the model's (first) output."""
    if task == "detect":
        return yolo_decode(output)
    if task == "text-detect":
        return db_decode(output)
    if task == "ctc":
        return ctc_decode(output)
    if task == "classify":
        return list(output.reshape(len(output), -1).argmax(1))
    raise ValueError(f"unknown task {task!r}")


def task_score(task: str, decisions: list, reference: list) -> float:
    """Agreement of `decisions` with `reference` (float model's, or ground truth), in [0, 1]."""
    if task == "detect":
        return box_f1(decisions, reference, by_class=True)
    if task == "text-detect":
        return box_f1(decisions, reference, by_class=False)
    return agreement(decisions, reference)


METRIC_NAMES = {
    "detect": "box F1",
    "text-detect": "box F1",
    "ctc": "exact string",
    "classify": "top-1",
}
