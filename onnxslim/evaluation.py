"""How a compressed model is measured against its input: the one implementation.

Every command and workflow (quantize, prune, cluster, run, validate, the quantizer's
latency guard and its accuracy-aware loop) measures through these pieces, so the
same words mean the same figures everywhere:

- labels: a feed's array named one of `LABEL_KEYS` that is not a model input
  (`split_label`, `read_labelled`: the user's data opened once);
- top-1: `predicted_classes` of an output (argmax over the last axis; a 1-D output
  already holds class indices) counted against labels or a reference's predictions
  by `Top1`; `top1_accuracy` runs a model over labelled feeds;
- parity: onnxslim.parity's `compare_outputs` (per output: max errors, cosine, SNR);
- latency: `time_interleaved` alternates the models run by run (and which goes
  first), so machine noise falls on both alike; validation.validate and
  `latency_ratio` build on it.

`Evaluator` holds one run's feeds, labels and reference outputs, so all figures in a
report are on the same feeds: the recipe's eval data (with `labels`: top-1
accuracy), else its calibration data, else generated inputs. The input model's
outputs are computed once; each later model is run once over the feeds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxslim.activations import coalesce_feeds
from onnxslim.calibration import FeedSource, FeedStream, open_feeds
from onnxslim.errors import DataError
from onnxslim.feed_search import plan_feeds
from onnxslim.feeds import Feed
from onnxslim.outputs import is_classifier_output
from onnxslim.parity import compare_outputs
from onnxslim.runtime import Session, SessionConfig

LABEL_KEYS = ("labels", "label", "y")
GENERATED_FEEDS = 8


# --------------------------------------------------------------------------- labels


def split_label(feed: Mapping[str, Any], inputs: Collection[str]) -> tuple[Feed, np.ndarray | None]:
    """The model's inputs of `feed`, and its labels (flattened) when it carries them."""
    label = next((feed[k] for k in LABEL_KEYS if k in feed and k not in inputs), None)
    arrays = {k: v for k, v in feed.items() if k in inputs}
    return arrays, None if label is None else np.asarray(label).reshape(-1)


@dataclass
class LabelledFeeds:
    """The user's data read once: model feeds, and labels when every feed carries them."""

    feeds: list[Feed]
    labels: list[np.ndarray] | None  # one flat array per feed
    description: str
    labelled: int = 0  # feeds that carry labels (labels is None unless all do)
    source: str = ""  # where they come from (the stream's description: the file, the folder)

    def label_array(self) -> np.ndarray:
        """Every label in feed order (empty without labels)."""
        if not self.labels:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate(self.labels)


def read_labelled(
    source: FeedSource | FeedStream,
    model: ir.Model,
    *,
    limit: int | None = None,
    **options: Any,
) -> LabelledFeeds:
    """Read `source` (checked against the model's inputs) and split off the labels.

    An already opened FeedStream is read from its start (its first `limit` feeds),
    so a workflow that opened the user's data once can take several looks at it.
    `options` go to calibration.open_feeds (image preprocessing, ...).
    """
    inputs = model_inputs(model)
    if isinstance(source, FeedStream):
        stream = source
        raw: Iterable[Mapping[str, Any]] = islice(stream, limit)
    else:
        stream = open_feeds(source, model, limit=limit, extra="keep", **options)
        raw = stream
    feeds: list[Feed] = []
    labels: list[np.ndarray] = []
    for feed in raw:
        arrays, label = split_label(feed, inputs)
        feeds.append(arrays)
        if label is not None:
            labels.append(label)
    complete = bool(labels) and len(labels) == len(feeds)
    description = f"{stream.description} ({len(feeds)} feeds)"
    return LabelledFeeds(
        feeds, labels if complete else None, description, len(labels), stream.description
    )


def model_inputs(model: ir.Model) -> set[str]:
    """Names of the model's graph inputs (what a feed keeps; the rest may be labels)."""
    return {v.name for v in model.graph.inputs if v.name is not None}


# --------------------------------------------------------------------------- top-1


def predicted_classes(output: np.ndarray) -> np.ndarray:
    """Class index per sample: argmax over the last axis (a 1-D output already holds them)."""
    out = np.asarray(output)
    return out.reshape(-1, out.shape[-1]).argmax(-1) if out.ndim > 1 else out.reshape(-1)


def is_class_scores(output: np.ndarray, rows: int | None = None, name: str = "") -> bool:
    """A classifier's [batch, classes] float scores (with `rows` samples when given)."""
    out = np.asarray(output)
    shaped = out.ndim == 2 and is_classifier_output(name, out.shape, out.dtype)
    return shaped and (rows is None or out.shape[0] == rows)


def scored_output(outputs: Mapping[str, np.ndarray], rows: int | None = None) -> str | None:
    """The output labelled top-1 reads: the first classifier-shaped one (onnxslim.outputs'
    rule, the one agreement reads too), with `rows` samples when given; None if none is."""
    for name, value in outputs.items():
        if is_class_scores(value, rows, name):
            return name
    return None


class Top1:
    """Top-1 hits over samples, added a batch at a time (labels or a reference's classes)."""

    def __init__(self) -> None:
        self.hits = 0
        self.total = 0

    def add(self, predicted: np.ndarray, expected: np.ndarray) -> None:
        """Count one batch; one expected class per prediction, else a DataError."""
        got, want = np.asarray(predicted).reshape(-1), np.asarray(expected).reshape(-1)
        if got.size != want.size:
            raise DataError(
                f"{want.size} labels for {got.size} predictions: one label per sample expected"
            )
        self.hits += int(np.count_nonzero(got == want))
        self.total += int(got.size)

    @property
    def value(self) -> float:
        """Hits over samples (nan before any sample)."""
        return self.hits / self.total if self.total else math.nan


def top1_accuracy(
    model: ir.Model,
    feeds: Sequence[Feed],
    labels: np.ndarray,
    *,
    output: int | None = None,
    max_batch: int = 1,
) -> float:
    """Top-1 accuracy of the model's `output`-th output over labelled feeds (None: the first
    classifier-shaped output, as agreement reads; the first output when none is).

    With `max_batch` > 1 the feeds are run concatenated where the model allows it
    (activations.coalesce_feeds), which is faster and gives the same classes.
    """
    batches = coalesce_feeds(model, feeds, max_batch) if max_batch > 1 else list(feeds)
    session = Session(model)
    if output is None:  # the first classifier-shaped output, else the first output
        first = session.run(batches[0]) if batches else {}
        name = scored_output(first) or session.output_names[0]
    else:
        name = session.output_names[output]
    count = Top1()
    predicted = [predicted_classes(session.run(batch, [name])[name]) for batch in batches]
    count.add(np.concatenate(predicted) if predicted else np.zeros(0), labels)
    return count.value


def top1_by_model(
    models: Mapping[str, ir.Model],
    feeds: Iterable[Mapping[str, Any]],
    inputs: Collection[str],
    *,
    expected: int | None = None,
    progress: Callable[[str, int, int | None], None] | None = None,
) -> dict[str, float] | None:
    """Top-1 accuracy of each model's first classifier-shaped output over labelled feeds,
    streamed (the output agreement reads: onnxslim.outputs' rule).

    Feeds without labels are passed over. None unless every model has a classifier's
    [batch, classes] scores with one label per sample (then only parity figures
    apply). The result also holds "samples": how many were counted.
    """
    sessions = {key: Session(model) for key, model in models.items()}
    counts = {key: Top1() for key in sessions}
    scored: dict[str, str] = {}
    for index, feed in enumerate(feeds):
        arrays, truth = split_label(feed, inputs)
        if truth is None:
            continue
        for key, session in sessions.items():
            outputs = session.run(arrays)
            if key not in scored:
                name = scored_output(outputs, rows=len(truth))
                if name is None:
                    return None
                scored[key] = name
            output = outputs[scored[key]]
            if not is_class_scores(output, rows=len(truth)):
                return None
            counts[key].add(predicted_classes(output), truth)
        if progress is not None:
            progress("accuracy", index + 1, expected)
    scores = {key: count.value for key, count in counts.items()}
    scores["samples"] = float(next(iter(counts.values())).total if counts else 0)
    return scores


# --------------------------------------------------------------------------- latency


def time_interleaved(
    sessions: Mapping[str, Session],
    feeds: Sequence[Feed],
    *,
    runs: int,
    warmup: int = 0,
    budget_seconds: float | None = None,
    max_runs: int = 200,
    outputs: Sequence[str] | None = None,
    notify: Callable[[str, int, int], None] | None = None,
) -> dict[str, list[float]]:
    """Seconds per run of each session, the sessions alternated run by run.

    `warmup` untimed rounds come first. With `budget_seconds`, `runs` is a minimum:
    rounds go on while the budget lasts, up to `max_runs` (small models get
    hundreds, big ones a few).
    """
    order = list(sessions)
    samples: dict[str, list[float]] = {label: [] for label in order}
    total = warmup + runs
    if notify is not None:
        notify("latency", 0, total)
    start = time.perf_counter()
    step = 0
    while True:
        timed = step - warmup
        if timed >= runs and (
            budget_seconds is None
            or timed >= max_runs
            or time.perf_counter() - start >= budget_seconds
        ):
            break
        feed = feeds[step % len(feeds)]
        for label in order if step % 2 == 0 else order[::-1]:
            tick = time.perf_counter()
            # a feed's first run is budgeted; repeats skip the budget's ~30 us
            sessions[label].run(feed, outputs, budgeted=step < len(feeds))
            if step >= warmup:
                samples[label].append(time.perf_counter() - tick)
        step += 1
        if notify is not None and step <= total:
            notify("latency", step, total)
    return samples


def latency_ratio(
    reference: ir.Model,
    candidate: ir.Model,
    feeds: Sequence[Feed],
    *,
    min_runs: int = 5,
    budget_seconds: float = 1.0,
) -> float:
    """Median single-thread latency of `candidate` over `reference` (below 1: faster),
    timed interleaved after one warm-up run: at least `min_runs` pairs, more while
    within `budget_seconds`."""
    ratios = latency_ratios(
        reference, {"candidate": candidate}, feeds, min_runs=min_runs, budget_seconds=budget_seconds
    )
    return ratios["candidate"]


def latency_ratios(
    reference: ir.Model,
    candidates: Mapping[str, ir.Model],
    feeds: Sequence[Feed],
    *,
    min_runs: int = 5,
    budget_seconds: float = 1.0,
    warmup: int = 0,
) -> dict[str, float]:
    """`latency_ratio` of several candidates at once, all timed in one interleaved run
    (after one warm-up run each and `warmup` untimed rounds)."""
    config = SessionConfig(threads=1)
    sessions = {"reference": Session(reference, config)}
    sessions.update({f"candidate {name}": Session(m, config) for name, m in candidates.items()})
    for session in sessions.values():
        session.run(feeds[0])
    times = time_interleaved(
        sessions, feeds, runs=min_runs, warmup=warmup, budget_seconds=budget_seconds
    )
    base = float(np.median(times["reference"]))
    return {name: float(np.median(times[f"candidate {name}"])) / base for name in candidates}


# --------------------------------------------------------------------------- one run's figures


@dataclass
class Measurement:
    """One model's figures on the evaluator's feeds (None: not measurable)."""

    top1: float | None
    agreement: float | None  # top-1 agreement with the input model's first classifier output
    parity_error: float  # worst output's relative RMS error against the input model
    cosine: float  # worst output's cosine similarity
    latency_ratio: float | None = None  # median latency / input model's (1 thread, interleaved)
    # Per output: name, parity_error, cosine, max_abs, top1_agreement (None: not a classifier).
    outputs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def worst_output(self) -> str | None:
        """The output with the largest parity error (what the parity gate reads)."""
        worst = max(self.outputs, key=lambda o: o["parity_error"], default=None)
        return None if worst is None else str(worst["name"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "top1": self.top1,
            "agreement": self.agreement,
            "parity_error": _finite(self.parity_error),
            "cosine": _finite(self.cosine),
            "latency_ratio": self.latency_ratio,
            "outputs": [
                {k: _finite(v) if isinstance(v, float) else v for k, v in o.items()}
                for o in self.outputs
            ],
        }


class Evaluator:
    """Feeds, labels and the reference outputs of the input model."""

    def __init__(
        self,
        reference: ir.Model,
        *,
        eval_data: FeedSource | None = None,
        calib: FeedSource | None = None,
        eval_limit: int | None = None,
        parity_limit: int = 64,
    ) -> None:
        self.reference = reference
        self.labels: list[np.ndarray] | None = None
        source, limit = (eval_data, eval_limit) if eval_data is not None else (calib, parity_limit)
        if source is not None:
            data = read_labelled(source, reference, limit=limit)
            self.feeds: list[Feed] = data.feeds
            self.labels = data.labels
            self.description = data.description
        else:
            plan = plan_feeds(reference, GENERATED_FEEDS, seed=0)  # sizes the model runs on
            if plan.feeds is None:
                raise DataError(plan.problem or "no generated inputs")
            self.feeds, self.description = plan.feeds, plan.description
        self.reference_outputs = self._run(reference)
        self.classifier_output = _classifier_output(self.reference_outputs)
        self.classifier = self.classifier_output is not None
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
        first = self.classifier_output
        if first is not None:
            predicted = [predicted_classes(o[first]) for o in outputs]
            same = Top1()
            for got, ref in zip(predicted, self.reference_outputs, strict=True):
                same.add(got, predicted_classes(ref[first]))
            # zero-size outputs make no decision to disagree on (nan would fail a gate)
            agreement = same.value if same.total else None
            if self.labels is not None and all(
                p.shape == t.shape for p, t in zip(predicted, self.labels, strict=True)
            ):
                hits = Top1()
                for got, truth in zip(predicted, self.labels, strict=True):
                    hits.add(got, truth)
                top1 = hits.value
        per_output = [
            {
                "name": p.name,
                "parity_error": _relative_error(p.snr_db),
                "cosine": p.cosine,
                "max_abs": p.max_abs,
                "top1_agreement": p.top1_agreement,
            }
            for p in parity
        ]
        result = Measurement(top1, agreement, error, cosine, outputs=per_output)
        if latency_runs and model is not self.reference:
            result.latency_ratio = self.latency_ratio(model, latency_runs)
        return result

    def latency_ratio(self, model: ir.Model, runs: int) -> float | None:
        """Median latency over the input model's, timed interleaved on one thread."""
        config = SessionConfig(threads=1)
        sessions = {
            "reference": Session(self.reference, config),
            "candidate": Session(model, config),
        }
        names = list(self.reference_outputs[0]) if self.reference_outputs else None
        times = time_interleaved(sessions, self.feeds[:8], runs=runs, warmup=3, outputs=names)
        reference, candidate = np.median(times["reference"]), np.median(times["candidate"])
        return float(candidate / reference) if candidate > 0 else None


def _classifier_output(outputs: list[dict[str, np.ndarray]]) -> str | None:
    """The first classifier-shaped output (onnxslim.outputs' rule): what top-1 and agreement
    read; None when the model has none."""
    if not outputs:
        return None
    for name, value in outputs[0].items():
        array = np.asarray(value)
        if is_classifier_output(name, array.shape, array.dtype):
            return name
    return None


def _relative_error(snr_db: float) -> float:
    """||cand - ref|| / ||ref|| from the SNR in dB (inf SNR: 0)."""
    if math.isinf(snr_db) and snr_db > 0:
        return 0.0
    if math.isnan(snr_db):
        return math.inf
    return float(10 ** (-snr_db / 20))


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
