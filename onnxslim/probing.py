"""Probe a model's outputs with some weights replaced, without building a session per probe.

Sensitivity-driven passes (pruning's sparsity allocation, clustering's bit
allocation) need the model's outputs with one weight changed, for many weights and
many candidate changes. Building an ORT session per probe would dominate: instead
the probed weights are listed as graph inputs for one session, which makes ORT treat
them as overridable defaults, so a probe is one run with the changed weights fed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxslim.activations import iter_batches
from onnxslim.feeds import Feed
from onnxslim.runtime import Session, SessionConfig


class WeightProbe:
    """The model's float outputs on fixed feeds, with any of `weights` overridden per call."""

    def __init__(self, model: ir.Model, weights: Sequence[str], feeds: Sequence[Feed]):
        self._model, self._feeds = model, list(feeds)
        self._batches = iter_batches(model, self._feeds)
        graph = model.graph
        values = [graph.initializers[name] for name in dict.fromkeys(weights)]
        added = [v for v in values if v not in graph.inputs]
        graph.inputs.extend(added)
        # Below IR 4 ORT lets no initializer be overridden (they are all graph inputs there,
        # read as constants): the probe session is built as IR 4 (fuzz case valid/opset-7).
        ir_version = model.ir_version
        model.ir_version = max(ir_version, 4)
        try:
            session = Session(model, SessionConfig(optimization="basic"))
        finally:
            model.ir_version = ir_version
            for _ in added:
                graph.inputs.pop()
        self._session = session.ort_session  # Session.run drops feeds that are not plain inputs
        overridable = {i.name for i in self._session.get_overridable_initializers()}
        missing = [v.name for v in values if v.name not in overridable]
        if missing:
            raise RuntimeError(f"ORT does not let weight {missing[0]!r} be overridden")
        outputs = self._session.get_outputs()
        self._names = [
            o.name
            for o in outputs
            if o.type.startswith("tensor(float") or o.type == "tensor(double)"
        ]
        # CPU seconds, not wall: the effort's budgets decide how many feeds and probes a
        # search uses, so a loaded machine must not change the model it writes
        started = time.process_time()
        self._references = [self._run(batch) for batch in self._batches]
        self.seconds_per_run = time.process_time() - started  # one probe: all feeds once

    @property
    def feed_count(self) -> int:
        return len(self._feeds)

    def fit(self, probes: int, seconds: float, minimum: int) -> None:
        """Probe on fewer feeds (not below `minimum`) when `probes` probes on all of them
        would take over `seconds`: the first ones, in the same session (a second probe
        session cost a session start and the original's outputs on every feed again)."""
        expected = self.seconds_per_run * probes
        if expected > seconds and len(self._feeds) > minimum:
            self.restrict(max(minimum, int(len(self._feeds) * seconds / expected)))

    def restrict(self, count: int) -> None:
        """Probe on the first `count` feeds from now on (same session)."""
        if count >= len(self._feeds):
            return
        self._feeds = self._feeds[: max(count, 1)]
        self._batches = iter_batches(self._model, self._feeds)
        started = time.process_time()
        self._references = [self._run(batch) for batch in self._batches]
        self.seconds_per_run = time.process_time() - started

    @property
    def output_names(self) -> list[str]:
        return list(self._names)

    def _run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(a, dtype=np.float64) for a in self._session.run(self._names, dict(feed))]

    def squared_errors(self, overrides: Mapping[str, np.ndarray]) -> list[tuple[float, float]]:
        """Per float output: (sum of squared differences to the original, sum of squares of it)."""
        sums = [[0.0, 0.0] for _ in self._names]
        for batch, references in zip(self._batches, self._references, strict=True):
            for total, out, ref in zip(
                sums, self._run({**batch, **overrides}), references, strict=True
            ):
                total[0] += float(np.sum((out - ref) ** 2))
                total[1] += float(np.sum(ref * ref))
        return [(num, den) for num, den in sums]

    def pooled_error(self, overrides: Mapping[str, np.ndarray]) -> float:
        """Squared error over all float outputs relative to their summed energy."""
        sums = self.squared_errors(overrides)
        den = sum(d for _, d in sums)
        return sum(n for n, _ in sums) / den if den > 0 else 0.0

    def mean_error(self, overrides: Mapping[str, np.ndarray]) -> float:
        """Mean over float outputs of each one's relative squared error (outputs weigh alike)."""
        sums = [(n, d) for n, d in self.squared_errors(overrides) if d > 0]
        return float(np.mean([n / d for n, d in sums])) if sums else 0.0
