"""Measure a model against the run's input model on fixed feeds: metric, parity, latency.

One Evaluator serves every step of a run and the gates, so all figures in a report
are on the same feeds: the recipe's eval data (with `labels`: top-1 accuracy),
else its calibration data, else generated inputs. The input model's outputs are
computed once; each later model is run once over the feeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxslim.calibration import open_feeds
from onnxslim.errors import DataError
from onnxslim.feed_search import plan_feeds
from onnxslim.feeds import Feed
from onnxslim.parity import compare_outputs
from onnxslim.runtime import Session

LABEL_KEYS = ("labels", "label", "y")
GENERATED_FEEDS = 8


@dataclass
class Measurement:
    """One model's figures on the evaluator's feeds (None: not measurable)."""

    top1: float | None
    agreement: float | None  # top-1 agreement with the input model's first output
    parity_error: float  # worst output's relative RMS error against the input model
    cosine: float  # worst output's cosine similarity
    latency_ratio: float | None = None  # median latency / input model's (1 thread, interleaved)

    def to_dict(self) -> dict[str, Any]:
        return {
            "top1": self.top1,
            "agreement": self.agreement,
            "parity_error": _finite(self.parity_error),
            "cosine": _finite(self.cosine),
            "latency_ratio": self.latency_ratio,
        }


class Evaluator:
    """Feeds, labels and the reference outputs of the input model."""

    def __init__(
        self,
        reference: ir.Model,
        *,
        eval_data: Any = None,
        calib: Any = None,
        eval_limit: int | None = None,
        parity_limit: int = 64,
    ) -> None:
        self.reference = reference
        self.labels: list[np.ndarray] | None = None
        inputs = {v.name for v in reference.graph.inputs}
        source, limit = (eval_data, eval_limit) if eval_data is not None else (calib, parity_limit)
        if source is not None:
            stream = open_feeds(source, reference, limit=limit, extra="keep")
            self.feeds: list[Feed] = []
            labels = []
            for feed in stream:
                label = next((feed[k] for k in LABEL_KEYS if k in feed and k not in inputs), None)
                if label is not None:
                    labels.append(np.asarray(label).reshape(-1))
                self.feeds.append({k: v for k, v in feed.items() if k in inputs})
            if labels and len(labels) == len(self.feeds):
                self.labels = labels
            self.description = f"{stream.description} ({len(self.feeds)} feeds)"
        else:
            plan = plan_feeds(reference, GENERATED_FEEDS, seed=0)  # sizes the model runs on
            if plan.feeds is None:
                raise DataError(plan.problem or "no generated inputs")
            self.feeds, self.description = plan.feeds, plan.description
        self.reference_outputs = self._run(reference)
        self.classifier = _classifier(self.reference_outputs)
        self.baseline = self.measure(reference, latency_runs=0)

    def _run(self, model: ir.Model) -> list[dict[str, np.ndarray]]:
        session = Session(model)
        return [session.run(feed) for feed in self.feeds]

    def measure(self, model: ir.Model, *, latency_runs: int = 0) -> Measurement:
        outputs = self._run(model) if model is not self.reference else self.reference_outputs
        parity = compare_outputs(self.reference_outputs, outputs, atol=0.0, rtol=0.0)
        error = max((_relative_error(p.snr_db) for p in parity), default=0.0)
        cosine = min((p.cosine for p in parity), default=1.0)
        top1 = agreement = None
        if self.classifier:
            first = next(iter(self.reference_outputs[0]))
            predicted = [np.asarray(o[first]).argmax(-1) for o in outputs]
            expected = [np.asarray(o[first]).argmax(-1) for o in self.reference_outputs]
            total = sum(p.size for p in predicted)
            agreement = (
                sum(int((p == e).sum()) for p, e in zip(predicted, expected, strict=True)) / total
            )
            if self.labels is not None and all(
                p.shape == t.shape for p, t in zip(predicted, self.labels, strict=True)
            ):
                top1 = (
                    sum(int((p == t).sum()) for p, t in zip(predicted, self.labels, strict=True))
                    / total
                )
        result = Measurement(top1, agreement, error, cosine)
        if latency_runs and model is not self.reference:
            result.latency_ratio = self.latency_ratio(model, latency_runs)
        return result

    def latency_ratio(self, model: ir.Model, runs: int) -> float | None:
        """Median latency over the input model's, timed interleaved on one thread."""
        from onnxslim.validation import validate

        report = validate(
            self.reference,
            model,
            feeds=self.feeds[:8],
            runs=runs,
            warmup=3,
            measure_memory=False,
            atol=1.0,
            rtol=1.0,
        )
        return 1.0 / report.speedup if report.speedup else None


def _classifier(outputs: list[dict[str, np.ndarray]]) -> bool:
    """The first output is [batch, classes] scores (what top-1 and agreement read)."""
    if not outputs:
        return False
    first = np.asarray(next(iter(outputs[0].values())))
    return first.dtype.kind == "f" and first.ndim == 2 and first.shape[1] >= 2


def _relative_error(snr_db: float) -> float:
    """||cand - ref|| / ||ref|| from the SNR in dB (inf SNR: 0)."""
    if math.isinf(snr_db) and snr_db > 0:
        return 0.0
    if math.isnan(snr_db):
        return math.inf
    return float(10 ** (-snr_db / 20))


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
