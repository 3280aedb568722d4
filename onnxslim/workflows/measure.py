"""What the prune and cluster workflows measure alike: file size raw and gzipped,
session start, parity feeds, top-1 accuracy on labelled data. Latency and parity
come from onnxslim.validation.

Everything is measured on the models themselves, so the figures are true whatever
passes produced them.
"""

from __future__ import annotations

import gzip
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from onnxslim.activations import coalesce_feeds
from onnxslim.calibration import FeedSource, open_feeds
from onnxslim.errors import DataError
from onnxslim.feeds import Feed
from onnxslim.io import model_to_bytes
from onnxslim.runtime import Session
from onnxslim.validation import resolve_feeds

LABEL_KEYS = ("labels", "label")
PARITY_FEEDS = 64


@dataclass(frozen=True)
class Sizes:
    raw: int
    gzip: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def model_sizes(model: ir.Model) -> Sizes:
    """Serialized size of the model, raw and gzip-compressed (level 6)."""
    data = model_to_bytes(model)
    return Sizes(len(data), len(gzip.compress(data, compresslevel=6)))


def labelled(
    source: FeedSource, model: ir.Model, limit: int | None = None
) -> tuple[list[dict[str, np.ndarray]], np.ndarray] | None:
    """(feeds, labels) from data carrying a `labels` array, or None when it carries none."""
    inputs = {v.name for v in model.graph.inputs}
    feeds, labels = [], []
    for feed in open_feeds(source, model, limit=limit, extra="keep"):
        key = next((k for k in LABEL_KEYS if k in feed and k not in inputs), None)
        if key is None:
            return None
        labels.append(np.asarray(feed[key]).reshape(-1))
        feeds.append({k: v for k, v in feed.items() if k in inputs})
    if not feeds:
        raise DataError("evaluation data holds no samples")
    return feeds, np.concatenate(labels)


def top1(
    models: Iterable[ir.Model], feeds: Sequence[dict[str, np.ndarray]], labels: np.ndarray
) -> list[float]:
    """Top-1 accuracy of each model's first output over the labelled feeds (batched)."""
    results = []
    batches = None
    for model in models:
        if batches is None:
            batches = coalesce_feeds(model, feeds, 256)
        session = Session(model)
        predictions = []
        for batch in batches:
            out = np.asarray(session.run(batch)[session.output_names[0]])
            predictions.append(
                out.reshape(-1, out.shape[-1]).argmax(-1) if out.ndim > 1 else out.reshape(-1)
            )
        predicted = np.concatenate(predictions)
        if len(predicted) != len(labels):
            raise DataError(
                f"{len(labels)} labels for {len(predicted)} predictions: "
                "one label per sample expected"
            )
        results.append(float(np.mean(predicted == labels)))
    return results


def session_start_ms(model: ir.Model, repeats: int = 3) -> float:
    """Fastest of `repeats` ORT session creations from the serialized model (ORT_ENABLE_ALL), in ms.

    This is where packed sparse weights and palettes are expanded, so it is their whole cost.
    """
    data = model_to_bytes(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        best = min(best, (time.perf_counter() - t) * 1000)
    return best


def parity_feeds(
    model: ir.Model, eval_data: FeedSource | None, calib: FeedSource | None
) -> list[Feed]:
    """Feeds for the guard and parity figures: eval data, else calibration data, else generated."""
    source = eval_data if eval_data is not None else calib
    feeds, _, _ = resolve_feeds(model, source, count=PARITY_FEEDS if source is not None else 8)
    return feeds
