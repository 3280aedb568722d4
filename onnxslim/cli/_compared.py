"""What `prune` and `cluster` share: the --max-drop and --runs options, writing the result,
the lines that compare it with the original, and the exit code of a missed gate or target."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from onnxslim.api import ClusterResult, PruneResult
from onnxslim.cli import _options as opt
from onnxslim.cli._app import err, out, print_json
from onnxslim.cli._data import DataOptions
from onnxslim.cli._target import fail_on_max_drop, fail_on_target, print_target

Result = PruneResult | ClusterResult

MAX_DROP = typer.Option(
    None,
    "--max-drop",
    metavar="POINTS",
    help="Fail (exit 1) if accuracy drops by more than "
    "this many points (top-1 disagreement without labels).",
)
RUNS = typer.Option(
    50, "--runs", min=0, help="Timed runs per model for the latency ratio (0: skip)."
)


@contextlib.contextmanager
def working(what: str) -> Iterator[None]:
    """A spinner on a terminal while the command works; nothing when piped."""
    if err.is_terminal:
        with err.status(what, spinner="dots"):
            yield
    else:
        yield


def write_and_report(
    result: Result,
    *,
    model: Path,
    output: Path,
    overwrite: bool,
    external_data: bool | None,
    threshold: int,
    json_output: bool,
    sources: DataOptions,
    print_report: Callable[[Any, Path, Path], None],
    advice: str,
    max_drop_advice: str,
) -> None:
    """Write the model, print the report (or JSON), then exit 1 on a missed --max-drop or
    accuracy target: the model is written either way."""
    opt.save_model(
        result.model,
        output,
        source=model,
        overwrite=overwrite,
        external_data=external_data,
        threshold=threshold,
    )
    if json_output:
        print_json(
            {"input": str(model), "output": str(output), **result.to_dict(), **sources.record()}
        )
    else:
        print_report(result, model, output)
        print_target(result.target)
    fail_on_max_drop(result.gate, output, max_drop_advice)
    fail_on_target(result.target, output, advice)


def print_comparison(result: Result, label: str, session_note: str = "") -> None:
    """Session start, latency, top-1 accuracy and per-output parity against the original."""
    if result.session_ms:
        out.print(
            f"session start {result.session_ms['original']:.1f} -> "
            f"{result.session_ms[label]:.1f} ms{session_note}"
        )
    if result.latency_ratio:
        out.print(
            f"latency: {label} / original = {result.latency_ratio:.2f} (1 thread, interleaved, "
            "ORT_ENABLE_ALL)"
        )
    if result.accuracy is not None:
        acc = result.accuracy
        out.print(
            f"top-1 accuracy {acc['original']:.2%} -> {acc[label]:.2%} "
            f"({-acc['drop_points']:+.2f} points, {int(acc['samples'])} samples)"
        )
    if result.validation is not None:
        for o in result.validation.outputs:
            agreement = (
                f", top-1 agreement {o.top1_agreement:.2%}" if o.top1_agreement is not None else ""
            )
            out.print(
                f"parity {escape(o.name)}: cosine {o.cosine:.5f}, SNR {o.snr_db:.1f} dB{agreement}"
            )


def print_gate(result: Result, output: Path) -> None:
    """The --max-drop verdict, and where the model went."""
    if result.gate is not None:
        verdict = "passed" if result.gate["passed"] else "FAILED"
        out.print(
            f"gate --max-drop {result.gate['max_drop']:g}: {verdict} "
            f"({result.gate['drop_points']:.2f} points)"
        )
    out.print(f"wrote {escape(str(output))}")
