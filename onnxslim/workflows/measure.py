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
from onnxslim.calibration import FeedSource
from onnxslim.errors import DataError
from onnxslim.evaluation import read_labelled, top1_accuracy
from onnxslim.feeds import Feed
from onnxslim.io import model_to_bytes
from onnxslim.runtime import bind_external_data
from onnxslim.validation import resolve_feeds

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
    data = read_labelled(source, model, limit=limit)
    if not data.feeds:
        raise DataError("evaluation data holds no samples")
    return None if data.labels is None else (data.feeds, data.label_array())


def top1(
    models: Iterable[ir.Model], feeds: Sequence[dict[str, np.ndarray]], labels: np.ndarray
) -> list[float]:
    """Top-1 accuracy of each model's first output over the labelled feeds (batched)."""
    models = list(models)
    batches = coalesce_feeds(models[0], feeds, 256) if models else []
    return [top1_accuracy(model, batches, labels) for model in models]


def session_start_ms(model: ir.Model, repeats: int = 3) -> float:
    """Fastest of `repeats` ORT session creations from the serialized model (ORT_ENABLE_ALL), in ms.

    This is where packed sparse weights and palettes are expanded, so it is their whole cost.
    """
    data = model_to_bytes(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    bind_external_data(model, options)  # weights left in the input's data file
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
    count = PARITY_FEEDS if source is not None else 8
    feeds, _, _ = resolve_feeds(model, source, count=count)  # open_feeds reads any FeedSource
    return feeds
