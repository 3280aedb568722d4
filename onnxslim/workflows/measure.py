"""What the prune and cluster workflows measure alike: file size raw and gzipped,
session start, parity feeds, top-1 accuracy on labelled data, and the comparison of
the result with the original they both report (`compare`, `Compared`). Latency and
parity come from onnxslim.validation, top-1 from onnxslim.evaluation.

Everything is measured on the models themselves, so the figures are true whatever
passes produced them.
"""

from __future__ import annotations

import gzip
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from onnxslim.activations import coalesce_feeds
from onnxslim.calibration import FeedSource, open_feeds
from onnxslim.errors import DataError, UsageError
from onnxslim.evaluation import LabelledFeeds, read_labelled, top1_accuracy
from onnxslim.feeds import Feed
from onnxslim.images import ImageFolder
from onnxslim.io import model_to_bytes
from onnxslim.runtime import bind_external_data, heavy_graph
from onnxslim.validation import ValidationReport, resolve_feeds, validate
from onnxslim.workflows.heldout import CHECK_LIMIT

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
    source: LabelledFeeds | FeedSource, model: ir.Model, limit: int | None = None
) -> tuple[list[dict[str, np.ndarray]], np.ndarray] | None:
    """(feeds, labels) from data carrying a `labels` array, or None when it carries none;
    data the workflow read already (LabelledFeeds) is taken as it is."""
    data = (
        source if isinstance(source, LabelledFeeds) else read_labelled(source, model, limit=limit)
    )
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


# Session creations are repeated (the fastest is kept) until this many seconds were spent.
_START_SECONDS = 1.0


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
    spent = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        spent += time.perf_counter() - t
        best = min(best, (time.perf_counter() - t) * 1000)
        if spent > _START_SECONDS:  # a session this slow to start is timed well enough once
            break  # (a 30,000-node graph: seconds per repeat for a figure in the report)
    return best


def open_once(model: ir.Model, source: FeedSource | None) -> FeedSource | None:
    """A data file or folder opened once (calibration.open_feeds): whoever reads the
    stream re-reads it from its start, nobody opens the path again. Anything else as given."""
    if isinstance(source, (str, os.PathLike, ImageFolder)):
        return open_feeds(source, model, extra="keep")
    return source


def read_evaluation(
    model: ir.Model, eval_data: FeedSource | None, *, whole: bool
) -> LabelledFeeds | None:
    """The user's evaluation data, read once (None without any): the held-out check
    (heldout.split_data), the parity feeds and top-1 all take from it. `whole`: all of
    it (top-1 scores every sample), else only what the check and the parity figures use."""
    if eval_data is None:
        return None
    return read_labelled(eval_data, model, limit=None if whole else max(CHECK_LIMIT, PARITY_FEEDS))


def parity_feeds(
    model: ir.Model, eval_data: LabelledFeeds | FeedSource | None, calib: FeedSource | None
) -> list[Feed]:
    """Feeds for the guard and parity figures: eval data (read once: its first
    PARITY_FEEDS), else calibration data, else generated."""
    if isinstance(eval_data, LabelledFeeds):
        return eval_data.feeds[:PARITY_FEEDS]
    source = eval_data if eval_data is not None else calib
    count = PARITY_FEEDS if source is not None else 8
    feeds, _, _ = resolve_feeds(model, source, count=count)  # open_feeds reads any FeedSource
    return feeds


@dataclass
class Comparison:
    """The result against the original: session start (ms), parity and latency, and top-1
    accuracy of both when the evaluation data carries labels."""

    session_ms: dict[str, float]
    validation: ValidationReport
    accuracy: dict[str, float] | None  # {"original", label, "drop_points", "samples"}


def compare(
    model: ir.Model,
    result: ir.Model,
    label: str,
    *,
    feeds: Sequence[Feed],
    eval_data: LabelledFeeds | FeedSource | None,
    runs: int,
) -> Comparison:
    """Measure `result` (called `label` in the figures) against the original `model`."""
    # Not timed on a heavy graph: ORT_ENABLE_ALL drops its initializers one by one there
    # (bombs/inits-100k: 44 CPU s per session; prune and cluster passed the fuzz cap here).
    heavy = heavy_graph(model) or heavy_graph(result)
    session_ms = (
        {} if heavy else {"original": session_start_ms(model), label: session_start_ms(result)}
    )
    validation = validate(
        model,
        result,
        feeds=feeds,
        runs=runs,
        warmup=5,
        measure_memory=False,
        atol=1e-3,
        rtol=1e-3,
    )
    accuracy = None
    data = labelled(eval_data, model) if eval_data is not None else None
    if data is not None:
        before, after = top1([model, result], *data)
        accuracy = {
            "original": before,
            label: after,
            "drop_points": 100.0 * (before - after),
            "samples": float(len(data[1])),
        }
    return Comparison(session_ms, validation, accuracy)


class Compared:
    """The figures a prune or cluster result derives from its comparison with the original
    (a base of their result dataclasses, which hold `validation` and `accuracy`)."""

    validation: ValidationReport | None
    accuracy: dict[str, float] | None

    @property
    def latency_ratio(self) -> float | None:
        """The result's median latency over the original's (1.0: same speed, below: faster)."""
        speedup = self.validation.speedup if self.validation is not None else None
        return 1.0 / speedup if speedup else None

    @property
    def drop_points(self) -> float | None:
        """Accuracy lost in points (labels), else top-1 disagreement with the original in points."""
        if self.accuracy is not None:
            return self.accuracy["drop_points"]
        scored = self._scored()
        return None if scored is None else 100.0 * (1.0 - scored[1])

    @property
    def drop_output(self) -> str | None:
        """The output `drop_points` is measured on: the first classifier-shaped one."""
        scored = self._scored()
        return None if scored is None else scored[0]

    def _scored(self) -> tuple[str, float] | None:
        """The first output with top-1 agreement (onnxslim.outputs' rule) and its figure."""
        outputs = self.validation.outputs if self.validation is not None else []
        return next(
            ((o.name, o.top1_agreement) for o in outputs if o.top1_agreement is not None), None
        )

    def drop_gate(self, max_drop: float) -> dict[str, Any]:
        """The --max-drop gate on drop_points; a UsageError when there is nothing to judge."""
        drop = self.drop_points
        if drop is None:
            raise UsageError("--max-drop needs labelled --eval data or a classifier-shaped output")
        return {
            "max_drop": max_drop,
            "drop_points": drop,
            "output": self.drop_output,
            "passed": drop <= max_drop + 1e-9,
        }
