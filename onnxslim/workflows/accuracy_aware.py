"""Accuracy-aware quantization: rank layers by sensitivity, return the worst to float.

The loop needs two callables and nothing else, so it serves the CLI (a labelled
.npz, top-1), the API (any metric) and the benchmark alike:

  quantize(excluded) -> ir.Model   the int8 model with the `excluded` layers left
                                   float (calibration is done once by the caller,
                                   so each call only re-inserts Q/DQ);
  metric(model) -> float           higher is better (accuracy, agreement, ...).

Ranking: each layer's sensitivity is the metric gained by keeping only that layer
float in the otherwise fully int8 model ("leave one out"), not the metric lost by
quantizing only that layer ("one in"). Both cost one evaluation per layer, but
leave-one-out measures each layer in the context the fallback loop works in (all
other layers int8, errors interacting), whereas one-in drops are mostly below the
evaluation set's resolution (0 or 1 sample) and cannot tell layers apart.

Fallback: layers are returned to float in order of decreasing gain, re-evaluating
after each, until `float_metric - metric <= max_drop`. The best model seen is
always kept: on a miss the caller still gets it, with the table, and the CLI
writes both and exits 1 (never "ran every trial and saved nothing").
"""

from __future__ import annotations

import dataclasses
import dataclasses as _dc
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxslim.calibration import open_feeds
from onnxslim.errors import DataError
from onnxslim.evaluation import LABEL_KEYS, Top1, read_labelled, top1_accuracy
from onnxslim.passes.quantize.static import QuantizeStatic, quantize_static
from onnxslim.runtime import Session

QuantizeFn = Callable[[frozenset[str]], ir.Model]
MetricFn = Callable[[ir.Model], float]
ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class LayerSensitivity:
    """The metric with `layer` alone kept float, and its gain over the all-int8 model."""

    layer: str
    metric: float
    gain: float

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "metric": self.metric, "gain": self.gain}


@dataclass(frozen=True)
class Trial:
    """One fallback step: the layers kept float so far and the metric reached."""

    excluded: tuple[str, ...]
    metric: float


@dataclass
class AccuracyAwareResult:
    """The best model found, whether it met the target, and how it got there."""

    model: ir.Model
    metric: float
    float_metric: float
    int8_metric: float
    max_drop: float
    excluded: tuple[str, ...]
    table: list[LayerSensitivity] = field(default_factory=list)
    trials: list[Trial] = field(default_factory=list)
    evaluations: int = 0
    seconds: float = 0.0

    @property
    def drop(self) -> float:
        return self.float_metric - self.metric

    @property
    def met(self) -> bool:
        return self.drop <= self.max_drop + 1e-12

    def to_dict(self) -> dict[str, Any]:
        return {
            "met": self.met,
            "metric": self.metric,
            "float_metric": self.float_metric,
            "int8_metric": self.int8_metric,
            "drop": self.drop,
            "max_drop": self.max_drop,
            "float_layers": list(self.excluded),
            "evaluations": self.evaluations,
            "seconds": self.seconds,
            "sensitivity": [row.to_dict() for row in self.table],
            "trials": [{"float_layers": len(t.excluded), "metric": t.metric} for t in self.trials],
        }

    def table_text(self) -> str:
        """The per-layer table as aligned text, for files and logs."""
        lines = [f"{'layer':<40} {'metric if float':>15} {'gain':>8} {'float?':>6}"]
        kept = set(self.excluded)
        for row in self.table:
            lines.append(
                f"{row.layer:<40} {row.metric:>15.4f} {row.gain:>+8.4f} "
                f"{'yes' if row.layer in kept else '':>6}"
            )
        return "\n".join(lines)


def rank_sensitivity(
    quantize: QuantizeFn,
    metric: MetricFn,
    layers: Sequence[str],
    *,
    base_metric: float | None = None,
    on_step: ProgressFn | None = None,
) -> list[LayerSensitivity]:
    """Leave-one-out sensitivity of each layer, most sensitive (largest gain) first."""
    if base_metric is None:
        base_metric = metric(quantize(frozenset()))
    rows = []
    for i, layer in enumerate(layers):
        if on_step is not None:
            on_step(layer, i, len(layers))
        value = metric(quantize(frozenset({layer})))
        rows.append(LayerSensitivity(layer, value, value - base_metric))
    # Stable order: by gain, ties kept in graph order (earlier layers first).
    return sorted(rows, key=lambda r: -r.gain)


def accuracy_aware(
    quantize: QuantizeFn,
    metric: MetricFn,
    layers: Sequence[str],
    *,
    max_drop: float,
    float_metric: float | None = None,
    float_model: ir.Model | None = None,
    max_trials: int | None = None,
    on_step: ProgressFn | None = None,
) -> AccuracyAwareResult:
    """Quantize everything, then return the most sensitive layers to float until the drop is met.

    `float_metric` (or `float_model`, to measure it) is the reference. `max_trials`
    bounds the fallback evaluations (all layers by default). Never raises for a
    missed target: check `.met`.
    """
    start = time.perf_counter()
    if max_drop < 0:
        raise ValueError("max_drop must be >= 0")
    evaluations = 0

    def evaluate(model: ir.Model) -> float:
        nonlocal evaluations
        evaluations += 1
        return float(metric(model))

    if float_metric is None:
        if float_model is None:
            raise ValueError("give float_metric or float_model")
        float_metric = evaluate(float_model)
    full = quantize(frozenset())
    int8_metric = evaluate(full)
    best = AccuracyAwareResult(full, int8_metric, float_metric, int8_metric, max_drop, ())
    if best.met or not layers:
        return _finish(best, evaluations, start)
    table = rank_sensitivity(
        quantize, evaluate, list(layers), base_metric=int8_metric, on_step=on_step
    )
    best.table = table
    # A single layer that already meets the target (fewest float layers) wins outright.
    single = [row for row in table if float_metric - row.metric <= max_drop + 1e-12]
    if single:
        row = single[0]
        best.model, best.metric, best.excluded = (
            quantize(frozenset({row.layer})),
            row.metric,
            (row.layer,),
        )
        best.trials.append(Trial(best.excluded, row.metric))
        return _finish(best, evaluations, start)
    excluded: list[str] = []
    budget = len(table) if max_trials is None else max_trials
    for row in table[:budget]:
        excluded.append(row.layer)
        if len(excluded) == 1:
            value = row.metric  # measured while ranking
            model = None
        else:
            model = quantize(frozenset(excluded))
            value = evaluate(model)
        best.trials.append(Trial(tuple(excluded), value))
        if value > best.metric:
            best.model = model if model is not None else quantize(frozenset(excluded))
            best.metric, best.excluded = value, tuple(excluded)
        if best.met:
            break
    return _finish(best, evaluations, start)


def _finish(result: AccuracyAwareResult, evaluations: int, start: float) -> AccuracyAwareResult:
    result.evaluations = evaluations
    result.seconds = time.perf_counter() - start
    return result


# --- metrics ---------------------------------------------------------------------------------


def top1_metric(
    path: str | Path, model: ir.Model, *, limit: int | None = None, output: int | None = None
) -> MetricFn:
    """Top-1 accuracy of the model's `output`-th output (None: the first classifier-shaped
    output, onnxslim.outputs' rule, as every command reads) against the labels of `path`
    (read once by evaluation.read_labelled: any label key of LABEL_KEYS, any data form)."""
    data = read_labelled(path, model, limit=limit)
    if data.labels is None:
        keys = ", ".join(f"`{k}`" for k in LABEL_KEYS)
        raise DataError(f"{path}: no labels ({keys} array) for every sample")
    feeds, labels = data.feeds, data.label_array()

    def metric(model: ir.Model) -> float:
        try:
            return top1_accuracy(model, feeds, labels, output=output)
        except DataError as exc:
            raise DataError(f"{path}: {exc}") from exc

    return metric


def agreement_metric(
    reference: ir.Model, feeds: Sequence[dict[str, np.ndarray]], *, output: int = 0
) -> MetricFn:
    """Top-1 agreement with `reference` (for data without labels), by the last axis of `output`."""
    ref = [np.argmax(np.asarray(o), axis=-1) for o in run_outputs(reference, feeds, output)]

    def metric(model: ir.Model) -> float:
        got = [np.argmax(np.asarray(o), axis=-1) for o in run_outputs(model, feeds, output)]
        same = Top1()
        for expected, predicted in zip(ref, got, strict=True):
            same.add(predicted, expected)
        return same.value if same.total else 0.0

    return metric


def run_outputs(
    model: ir.Model, feeds: Sequence[dict[str, np.ndarray]], output: int = 0
) -> list[np.ndarray]:
    """The `output`-th output of `model` on each feed (single-threaded ORT, all optimizations)."""
    session = Session(model)
    name = session.output_names[output]
    return [session.run(feed, outputs=[name])[name] for feed in islice(feeds, None)]


# --- glue over the static quantizer ---------------------------------------------------------------


def static_quantizer(
    model: ir.Model, calib: Any, options: Any = None
) -> tuple[QuantizeFn, list[str], ir.Model]:
    """A `quantize(excluded)` callable over `quantize_static`, the layers it may return to
    float (the quantized compute nodes of the all-int8 model, in graph order), and that model.

    The calibration feeds are read once and kept in memory, so trials do not re-read the
    data source (they still re-collect ranges: the static pass owns calibration).
    """
    options = options or QuantizeStatic()
    if options.activations == "auto":
        # `auto` times static against run-time int8 on every run: a trial could then differ
        # from the full model in what timing decided, not only in `excluded` (a Gemm static
        # in one run, run-time in the next). Calibrated activations, the same in every run.
        options = dataclasses.replace(options, activations="static")
    limit = options.max_samples
    feeds = [dict(f) for f in islice(iter(open_feeds(calib, model, extra="ignore")), limit)]
    if not feeds:
        raise DataError("calibration data holds no feeds")
    cache: dict[frozenset[str], ir.Model] = {}
    full = quantize_static(model, feeds, options)[0]
    layers = [
        n.name
        for n in full.graph
        if n.name and n.op_type in _LAYER_OPS and _reads_dequantized_weight(n)
    ]
    # Trials keep every decision of the full run fixed (layers it left float stay float) and
    # skip its latency guard: a trial must differ from the full model only in `excluded`,
    # not in what timing noise on a busy machine decided.
    kept_float = tuple(
        re.escape(n.name)
        for n in full.graph
        if n.name and n.op_type in _LAYER_OPS and n.name not in set(layers)
    )
    trial_options: dict[str, Any] = {}
    if "latency_guard" in getattr(options, "__dataclass_fields__", {}):
        trial_options["latency_guard"] = False

    def quantize(excluded: frozenset[str]) -> ir.Model:
        if not excluded:
            return full
        if excluded not in cache:
            patterns = (
                tuple(options.exclude)
                + kept_float
                + tuple(re.escape(name) for name in sorted(excluded))
            )
            trial = _dc.replace(options, exclude=patterns, **trial_options)
            cache.clear()  # keep one model alive: trials can be large
            cache[excluded] = quantize_static(model, feeds, trial)[0]
        return cache[excluded]

    return quantize, layers, full


_LAYER_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Gather", "LSTM", "GRU", "Attention"}


def _reads_dequantized_weight(node: ir.Node) -> bool:
    """True for a layer whose weight (a constant) reaches it through DequantizeLinear: a
    quantized layer in QDQ form. A float layer may still read a dequantized activation."""
    for value in node.inputs[:2] if node.op_type != "Gather" else node.inputs[:1]:
        producer = value.producer() if value is not None else None
        if (
            producer is not None
            and producer.op_type == "DequantizeLinear"
            and producer.inputs[0] is not None
            and producer.inputs[0].const_value is not None
        ):
            return True
    return False


def quantize_accuracy_aware(
    model: ir.Model,
    calib: Any,
    *,
    max_drop: float,
    metric: MetricFn | None = None,
    eval_data: str | Path | None = None,
    eval_limit: int | None = None,
    options: Any = None,
    max_trials: int | None = None,
    on_step: ProgressFn | None = None,
) -> AccuracyAwareResult:
    """Static int8 with the most sensitive layers returned to float until `max_drop` holds.

    The metric is `metric(model)` (higher is better) or top-1 accuracy on `eval_data`
    (an .npz with the model inputs and `labels`). Never raises for a missed target:
    the result holds the best model found and `.met` says whether it is good enough.
    """
    if (metric is None) == (eval_data is None):
        raise ValueError("give exactly one of metric= or eval_data=")
    if metric is None:
        metric = top1_metric(eval_data, model, limit=eval_limit)  # type: ignore[arg-type]
    quantize, layers, _ = static_quantizer(model, calib, options)
    return accuracy_aware(
        quantize,
        metric,
        layers,
        max_drop=max_drop,
        float_model=model,
        max_trials=max_trials,
        on_step=on_step,
    )
