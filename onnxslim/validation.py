"""Validate a candidate model against a reference on ONNX Runtime: parity, latency, memory.

Why it is done this way:
- Both models run on CPUExecutionProvider with one SessionConfig (the deployed
  optimisation level and a stated thread count) on the same feeds, and the
  reference and candidate must take the same inputs and give the reference's
  outputs; anything else is a usage error, not a parity failure.
- Latency is timed interleaved after a warm-up (ref, cand, then cand, ref, ...),
  so machine noise such as other processes or frequency scaling hits both models
  alike; the median and p90 of the timed runs are reported.
- Peak memory is measured in a fresh child process per model that imports only
  numpy and onnxruntime, loads the model file the way a deployment does and runs
  one feed: the parent holds both models already and its allocator never hands
  memory back, so an in-process figure would not mean anything.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from onnxslim import io
from onnxslim.calibration import FeedSource, ImagePreprocessing, check_feed, open_feeds
from onnxslim.errors import DataError, ModelLoadError, OnnxSlimError, RuntimeFailure, UsageError
from onnxslim.evaluation import time_interleaved
from onnxslim.feeds import Feed, InputSpec, generate_feeds, input_specs
from onnxslim.parity import OutputComparer, OutputParity
from onnxslim.runtime import Session, SessionConfig

ModelSource = ir.Model | str | os.PathLike[str]
# None: generated inputs; a path: a data file; else feed dicts (one, a list, or any iterable).
FeedsArg = None | FeedSource | Mapping[str, np.ndarray]
# progress(stage, done, total); stages are "parity", "latency" and "memory".
ProgressCallback = Callable[[str, int, int], None]

PROVIDER = "CPUExecutionProvider"
DEFAULT_GENERATED_FEEDS = 8
_MEMORY_PROBE_RUNS = 2


@dataclass(frozen=True)
class LatencyStats:
    """Wall time of single inferences, in milliseconds, after `warmup` untimed runs."""

    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    runs: int
    warmup: int
    threads: int

    @classmethod
    def from_seconds(cls, samples: Sequence[float], *, warmup: int, threads: int) -> LatencyStats:
        ms = np.asarray(samples, dtype=np.float64) * 1e3
        return cls(
            float(np.median(ms)),
            float(np.percentile(ms, 90)),
            float(ms.mean()),
            float(ms.min()),
            len(ms),
            warmup,
            threads,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MemoryStats:
    """Peak resident memory of a child process that loaded the model and ran one feed."""

    peak_bytes: int  # high-water mark of the whole child process
    baseline_bytes: int  # its high-water mark after importing numpy and onnxruntime
    method: str  # "VmHWM" (Linux /proc) or "ru_maxrss"

    @property
    def model_bytes(self) -> int:
        """What loading and running the model added on top of the bare runtime."""
        return max(self.peak_bytes - self.baseline_bytes, 0)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "model_bytes": self.model_bytes}


@dataclass
class ValidationReport:
    """Everything `onnxslim validate` reports; `passed` is the parity verdict."""

    reference: str
    candidate: str
    feeds: str  # "generated inputs (8 feeds)" or "DATA (N feeds)"
    generated_inputs: bool
    feed_count: int
    atol: float
    rtol: float
    threads: int
    outputs: list[OutputParity]
    latency: dict[str, LatencyStats] = field(default_factory=dict)  # "reference"/"candidate"
    memory: dict[str, MemoryStats | None] = field(default_factory=dict)  # absent when not measured
    problems: list[str] = field(default_factory=list)  # failures that are not tolerance figures
    notes: list[str] = field(default_factory=list)  # remarks that do not fail the check
    provider: str = PROVIDER
    onnxruntime_version: str = ort.__version__

    @property
    def failed_outputs(self) -> list[OutputParity]:
        return [o for o in self.outputs if not o.passed]

    @property
    def passed(self) -> bool:
        return not self.problems and not self.failed_outputs

    @property
    def speedup(self) -> float | None:
        """Reference median latency over the candidate's (above 1: candidate faster)."""
        ref, cand = self.latency.get("reference"), self.latency.get("candidate")
        if ref is None or cand is None or cand.median_ms <= 0:
            return None
        return ref.median_ms / cand.median_ms

    def summary(self) -> str:
        """One line: the verdict and why."""
        tolerance = f"atol={self.atol:g}, rtol={self.rtol:g}"
        if self.passed:
            return f"passed: all {len(self.outputs)} output(s) within {tolerance} on {self.feeds}"
        failed = [o.name for o in self.failed_outputs]
        return (
            f"parity check failed: {len(failed)} of {len(self.outputs)} output(s) outside "
            f"{tolerance} on {self.feeds} ({', '.join(failed)})"
        )

    def to_dict(self) -> dict[str, Any]:
        speedup = self.speedup
        return {
            "reference": self.reference,
            "candidate": self.candidate,
            "provider": self.provider,
            "onnxruntime": self.onnxruntime_version,
            "feeds": {
                "description": self.feeds,
                "generated": self.generated_inputs,
                "count": self.feed_count,
            },
            "tolerance": {"atol": self.atol, "rtol": self.rtol},
            "threads": self.threads,
            "outputs": [o.to_dict() for o in self.outputs],
            "latency": {k: v.to_dict() for k, v in self.latency.items()},
            "speedup": speedup,
            "memory": {k: (v.to_dict() if v else None) for k, v in self.memory.items()},
            "problems": list(self.problems),
            "notes": list(self.notes),
            "passed": self.passed,
            "summary": self.summary(),
        }


def validate(
    reference: ModelSource,
    candidate: ModelSource,
    *,
    feeds: FeedsArg = None,
    count: int | None = None,
    seed: int = 0,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    runs: int = 20,
    warmup: int = 3,
    threads: int = 1,
    measure_memory: bool = True,
    progress: ProgressCallback | None = None,
) -> ValidationReport:
    """Run both models on ORT CPU on the same feeds and compare outputs, latency and memory.

    `feeds`: None for generated inputs (`count` of them, default 8, free dimensions
    1 unless `input_shapes` says otherwise), a data file, or feed dicts. `count`
    caps how many feeds are read from data. `runs=0` skips latency. A parity
    failure is reported (`passed` False), not raised; mismatched interfaces or
    data that does not fit raise UsageError/DataError.
    """
    _check_positive(count=count, threads=threads)
    if runs < 0 or warmup < 0:
        raise UsageError("runs and warmup must not be negative")
    notify = progress or (lambda stage, done, total: None)
    ref_model, ref_label = _open(reference)
    cand_model, cand_label = _open(candidate)
    ref_specs, cand_specs = input_specs(ref_model), input_specs(cand_model)
    output_names, notes = _check_interfaces(ref_model, cand_model, ref_specs, cand_specs)
    feed_list, description, generated = resolve_feeds(
        ref_model, feeds, count=count, seed=seed, shapes=input_shapes
    )
    check_feeds(feed_list, ref_specs, description)
    check_feeds(feed_list, cand_specs, description)

    config = SessionConfig(threads=threads)
    sessions = {
        "reference": _session(ref_model, ref_label, config),
        "candidate": _session(cand_model, cand_label, config),
    }
    outputs, problems = _compare(sessions, feed_list, output_names, atol, rtol, notify)
    report = ValidationReport(
        ref_label,
        cand_label,
        description,
        generated,
        len(feed_list),
        atol,
        rtol,
        threads,
        outputs,
        problems=problems,
        notes=notes,
    )
    if runs:
        report.latency = _time_interleaved(
            sessions,
            feed_list,
            output_names,
            runs=runs,
            warmup=warmup,
            threads=threads,
            notify=notify,
        )
    del sessions
    if measure_memory:
        report.memory = _measure_memory(
            {"reference": (reference, ref_model), "candidate": (candidate, cand_model)},
            feed_list[0],
            threads,
            report.notes,
            notify,
        )
    return report


def run_model(
    model: ModelSource,
    feeds: FeedsArg,
    *,
    count: int | None = None,
    threads: int = 1,
    optimization: str = "all",
) -> list[dict[str, np.ndarray]]:
    """Run `model` on ORT CPU on each feed; returns one {output name: array} per feed.

    `feeds` is a feed dict, feed dicts, or a data file (`count` caps how many are
    read); None runs on one generated feed. Feeds are checked against the
    model's inputs first, so data that does not fit is a DataError, not an ORT crash.
    """
    _check_positive(count=count, threads=threads)
    loaded, _ = _open(model)
    specs = input_specs(loaded)
    if feeds is None:
        count = count or 1
    feed_list, description, _ = resolve_feeds(loaded, feeds, count=count)
    check_feeds(feed_list, specs, description)
    session = Session(loaded, SessionConfig(threads=threads, optimization=optimization))
    return [session.run(feed) for feed in feed_list]


def resolve_feeds(
    model: ir.Model,
    feeds: FeedsArg,
    *,
    count: int | None = None,
    seed: int = 0,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    image_preprocessing: ImagePreprocessing | str | None = None,
) -> tuple[list[Feed], str, bool]:
    """(feeds, description, generated?) for `feeds` as accepted by validate().

    Data goes through calibration.open_feeds, which checks every feed against the
    model's inputs and drops arrays that are not inputs (an eval file's `labels`);
    `image_preprocessing` applies to image folders.
    """
    if feeds is None:
        n = count or DEFAULT_GENERATED_FEEDS
        generated = generate_feeds(input_specs(model), n, seed=seed, shapes=shapes)
        return generated, f"generated inputs ({n} feeds)", True
    source = [feeds] if isinstance(feeds, Mapping) else feeds
    try:
        stream = open_feeds(
            source, model, limit=count, image_preprocessing=image_preprocessing, extra="ignore"
        )
        loaded = list(stream)
    except OnnxSlimError:
        raise
    except Exception as exc:  # numpy/zipfile raise many types on a file that is not data
        raise DataError(f"{feeds}: cannot read data ({_first_line(exc)})") from exc
    return loaded, f"{stream.description} ({len(loaded)} feeds)", False


def check_feeds(feeds: Sequence[Feed], specs: Sequence[InputSpec], source: str) -> None:
    """Every feed fits `specs` (dtype, rank, fixed dims), else a DataError naming the input."""
    for index, feed in enumerate(feeds):
        check_feed(feed, specs, where=f"{source}, feed {index}", extra="ignore")


def _open(source: ModelSource) -> tuple[ir.Model, str]:
    if isinstance(source, ir.Model):
        return source, f"<in-memory model {source.graph.name!r}>"
    return io.load(source), str(source)


def _session(model: ir.Model, label: str, config: SessionConfig) -> Session:
    """A session whose load errors say which of the two models failed."""
    try:
        return Session(model, config)
    except (ModelLoadError, RuntimeFailure) as exc:
        raise type(exc)(f"{label}: {exc}") from exc


def _check_positive(**values: int | None) -> None:
    for name, value in values.items():
        if value is not None and value < 1:
            raise UsageError(f"{name} must be at least 1, got {value}")


def _check_interfaces(
    ref: ir.Model, cand: ir.Model, ref_specs: list[InputSpec], cand_specs: list[InputSpec]
) -> tuple[list[str], list[str]]:
    """The outputs to compare, and notes; UsageError when the two cannot be compared."""
    ref_inputs = {s.name: s for s in ref_specs}
    cand_inputs = {s.name: s for s in cand_specs}
    if set(ref_inputs) != set(cand_inputs):
        raise UsageError(
            "REF and CAND take different inputs (REF: "
            f"{', '.join(ref_inputs) or '-'}; CAND: {', '.join(cand_inputs) or '-'})"
        )
    for name, spec in ref_inputs.items():
        other = cand_inputs[name]
        if other.dtype != spec.dtype:
            raise UsageError(f"input {name!r} is {spec.dtype} in REF but {other.dtype} in CAND")
        if (
            spec.shape is not None
            and other.shape is not None
            and (
                len(spec.shape) != len(other.shape)
                or any(
                    isinstance(a, int) and isinstance(b, int) and a != b
                    for a, b in zip(spec.shape, other.shape, strict=True)
                )
            )
        ):
            raise UsageError(
                f"input {name!r} is {spec.describe()} in REF but {other.describe()} in CAND"
            )
    ref_outputs = [v.name or "" for v in ref.graph.outputs]
    cand_outputs = [v.name or "" for v in cand.graph.outputs]
    missing = [n for n in ref_outputs if n not in cand_outputs]
    if missing:
        raise UsageError(
            f"CAND lacks output(s) {', '.join(missing)} of REF "
            f"(CAND outputs: {', '.join(cand_outputs) or '-'})"
        )
    extra = [n for n in cand_outputs if n not in ref_outputs]
    notes = [f"CAND has extra output(s) {', '.join(extra)}, not compared"] if extra else []
    return ref_outputs, notes


def _compare(
    sessions: Mapping[str, Session],
    feeds: list[Feed],
    names: list[str],
    atol: float,
    rtol: float,
    notify: ProgressCallback,
) -> tuple[list[OutputParity], list[str]]:
    """Per-output parity over every feed; a shape change fails that output with a reason."""
    comparers = {n: OutputComparer([n], atol=atol, rtol=rtol) for n in names}
    problems: dict[str, str] = {}
    notify("parity", 0, len(feeds))
    for index, feed in enumerate(feeds):
        ref_out = sessions["reference"].run(feed, names)
        cand_out = sessions["candidate"].run(feed, names)
        for name in names:
            if name in problems:
                continue
            ref_value, cand_value = np.asarray(ref_out[name]), np.asarray(cand_out[name])
            if ref_value.shape != cand_value.shape:
                problems[name] = (
                    f"output {name!r}: shape {list(cand_value.shape)} differs from the "
                    f"reference {list(ref_value.shape)} (feed {index})"
                )
                continue
            comparers[name].add({name: ref_value}, {name: cand_value})
        notify("parity", index + 1, len(feeds))
    results = []
    for name in names:
        if name in problems:
            results.append(
                OutputParity(name, math.inf, math.inf, math.nan, math.nan, None, 0, 0, False)
            )
        else:
            results.extend(comparers[name].results())
    return results, list(problems.values())


def _time_interleaved(
    sessions: Mapping[str, Session],
    feeds: list[Feed],
    names: list[str],
    *,
    runs: int,
    warmup: int,
    threads: int,
    notify: ProgressCallback,
) -> dict[str, LatencyStats]:
    """Alternate the models run by run (evaluation.time_interleaved), as LatencyStats."""
    samples = time_interleaved(
        sessions, feeds, runs=runs, warmup=warmup, outputs=names, notify=notify
    )
    return {
        label: LatencyStats.from_seconds(seconds, warmup=warmup, threads=threads)
        for label, seconds in samples.items()
    }


_MEMORY_PROBE = r"""
import json, sys
import numpy as np
import onnxruntime as ort

def high_water():
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024, "VmHWM"
    except OSError:
        pass
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (peak if sys.platform == "darwin" else peak * 1024), "ru_maxrss"

model, feed_path, names, threads, runs = sys.argv[1:6]
names = json.loads(names)
with np.load(feed_path) as archive:
    feed = {name: archive["arr_%d" % i] for i, name in enumerate(names)}
baseline, _ = high_water()
options = ort.SessionOptions()
options.intra_op_num_threads = int(threads)
options.inter_op_num_threads = 1
options.log_severity_level = 3
session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
for _ in range(int(runs)):
    session.run(None, feed)
peak, method = high_water()
print(json.dumps({"peak_bytes": peak, "baseline_bytes": baseline, "method": method}))
"""


def _measure_memory(
    models: Mapping[str, tuple[ModelSource, ir.Model]],
    feed: Feed,
    threads: int,
    notes: list[str],
    notify: ProgressCallback,
) -> dict[str, MemoryStats | None]:
    """Peak memory per model, each in its own child process; failures become notes."""
    results: dict[str, MemoryStats | None] = {}
    notify("memory", 0, len(models))
    with tempfile.TemporaryDirectory(prefix="onnxslim-memory-") as folder:
        feed_path = Path(folder) / "feed.npz"
        names = list(feed)
        np.savez(feed_path, *(feed[n] for n in names))  # arr_0, arr_1, ... in input order
        for done, (label, (source, model)) in enumerate(models.items(), start=1):
            if isinstance(source, ir.Model):
                path = io.save(model, Path(folder) / f"{label}.onnx")
            else:
                path = Path(source)
            try:
                results[label] = _probe(path, feed_path, names, threads)
            except RuntimeError as exc:
                results[label] = None
                notes.append(f"peak memory of {label} not measured: {exc}")
            notify("memory", done, len(models))
    return results


def _probe(model_path: Path, feed_path: Path, names: list[str], threads: int) -> MemoryStats:
    command = [
        sys.executable,
        "-c",
        _MEMORY_PROBE,
        str(model_path),
        str(feed_path),
        json.dumps(names),
        str(threads),
        str(_MEMORY_PROBE_RUNS),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise RuntimeError(lines[-1] if lines else f"child exited with {done.returncode}")
    try:
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        return MemoryStats(
            int(figures["peak_bytes"]), int(figures["baseline_bytes"]), str(figures["method"])
        )
    except (ValueError, KeyError, IndexError) as exc:
        raise RuntimeError(f"unreadable child output ({_first_line(exc)})") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
