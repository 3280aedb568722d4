"""Metrics of the example models in models/, in plain numpy (no torch, no onnxslim).

Tests and benchmarks import this file by path (it is not part of the package):

    spec = importlib.util.spec_from_file_location("model_metrics", "scripts/model_metrics.py")

The evaluation sets are models/<name>.eval.npz; every array has one sample per
leading index and the sample keeps its own batch axis of 1 (see models/README.md).
`score(name, outputs, eval_arrays)` turns a model's outputs on the whole set into
the figure recorded in models/accuracy.json.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

# Model name -> metric name; every model's first output is the one scored.
METRICS: dict[str, str] = {
    "digits_cnn": "top1",
    "digits_transformer": "top1",
    "digits_lstm": "top1",
    "digits_gated": "top1",
    "digits_detector": "detection_accuracy",
}
IOU_THRESHOLD = 0.5


def top1_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Share of samples whose highest logit (or probability) is the true class."""
    logits = np.asarray(logits).reshape(len(labels), -1)
    return float(np.mean(np.argmax(logits, axis=1) == np.asarray(labels)))


def box_iou_cxcywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of boxes given as (centre x, centre y, width, height), shape [N, 4]."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a1, a2 = a[:, :2] - a[:, 2:] / 2, a[:, :2] + a[:, 2:] / 2
    b1, b2 = b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2
    overlap = np.clip(np.minimum(a2, b2) - np.maximum(a1, b1), 0, None).prod(axis=1)
    area_a = np.clip(a[:, 2:], 0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:], 0, None).prod(axis=1)
    union = area_a + area_b - overlap
    return np.where(union > 0, overlap / np.where(union > 0, union, 1), 0.0)


def best_detection(detections: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For YOLOv8-style output [N, 4 + classes, anchors]: the best-scoring anchor's
    box [N, 4] (cx, cy, w, h in pixels), class [N] and score [N]."""
    detections = np.asarray(detections)
    boxes, scores = detections[:, :4, :], detections[:, 4:, :]
    per_anchor = scores.max(axis=1)  # [N, anchors]
    anchor = per_anchor.argmax(axis=1)  # [N]
    rows = np.arange(len(detections))
    best_scores = scores[rows, :, anchor]  # [N, classes]
    return boxes[rows, :, anchor], best_scores.argmax(axis=1), best_scores.max(axis=1)


def detection_accuracy(
    detections: np.ndarray,
    labels: np.ndarray,
    boxes: np.ndarray,
    iou_threshold: float = IOU_THRESHOLD,
) -> float:
    """Share of images whose best-scoring anchor has the right class AND IoU > threshold
    with the true box. One digit per image, so this is the detector's top-1 accuracy."""
    pred_boxes, pred_classes, _ = best_detection(detections)
    iou = box_iou_cxcywh(pred_boxes, np.asarray(boxes).reshape(-1, 4))
    hit = (pred_classes == np.asarray(labels)) & (iou > iou_threshold)
    return float(np.mean(hit))


def mean_best_iou(detections: np.ndarray, boxes: np.ndarray) -> float:
    """Mean IoU of the best-scoring anchor's box with the true box (a diagnostic)."""
    pred_boxes, _, _ = best_detection(detections)
    return float(np.mean(box_iou_cxcywh(pred_boxes, np.asarray(boxes).reshape(-1, 4))))


def score(name: str, outputs: np.ndarray, eval_arrays: Mapping[str, np.ndarray]) -> float:
    """The recorded metric of model `name`, given its first output over the whole
    evaluation set (samples concatenated on the batch axis) and the eval .npz arrays."""
    metric = METRICS[name]
    labels = np.asarray(eval_arrays["labels"])
    if metric == "top1":
        return top1_accuracy(outputs, labels)
    if metric == "detection_accuracy":
        return detection_accuracy(outputs, labels, eval_arrays["boxes"])
    raise KeyError(f"no metric {metric!r}")
