"""`onnxslim validate`: compare a candidate model with a reference on ONNX Runtime."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from onnxslim import api
from onnxslim import tolerance as tolerances
from onnxslim.cli import _options as opt
from onnxslim.cli._app import app, deprecated, err, out, print_json
from onnxslim.cli._data import IMAGE_PREPROCESS, DataOptions
from onnxslim.cli.inspect_cmd import human_bytes
from onnxslim.cross_target import TargetReport, validate_on_targets
from onnxslim.errors import GateFailed
from onnxslim.feeds import parse_input_shapes
from onnxslim.validation import ProgressCallback, ValidationReport, resolve_feeds

_STAGES = {
    "parity": "comparing outputs",
    "latency": "timing (interleaved)",
    "memory": "peak memory",
}


@contextmanager
def progress_bar() -> Iterator[ProgressCallback]:
    """A rich progress bar on stderr, fed by the API's progress(stage, done, total) callback.

    Transient, and silent when stderr is not a terminal, so logs and pipes stay clean.
    """
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    tasks: dict[str, TaskID] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = progress.add_task(_STAGES.get(stage, stage), total=total)
        progress.update(tasks[stage], completed=done, total=total)

    with progress:
        yield update


@app.command("validate")
def validate_command(
    reference: Path = typer.Argument(
        ..., metavar="REF", help="Reference model, usually the original."
    ),
    candidate: Path = typer.Argument(
        ..., metavar="CAND", help="Candidate model, usually the compressed one."
    ),
    data: Path | None = typer.Option(
        None,
        "--data",
        metavar="PATH",
        help="Feeds: an .npz of samples stacked on axis 0, an .npy, or a folder of "
        ".npz/.npy files or images; generated inputs when absent.",
    ),
    image_preprocess: str | None = IMAGE_PREPROCESS,
    max_samples: int | None = opt.MAX_SAMPLES,
    count: int | None = typer.Option(None, "--count", min=1, hidden=True),
    input_shape: list[str] | None = opt.INPUT_SHAPE,
    tolerance: str = typer.Option(
        "auto",
        "--tolerance",
        metavar="auto|exact|float|fp16|int8",
        help="How close CAND must be: exact (bit-identical), float (atol=rtol=1e-5), fp16 "
        "(max error <= 1% of each output's largest value), int8 (<= 10% and cosine >= 0.99); "
        "auto picks by what CAND holds (quantized ops: int8, float16 weights: fp16).",
    ),
    atol: float | None = typer.Option(
        None,
        "--atol",
        min=0.0,
        help="Absolute tolerance: |cand - ref| <= atol + rtol * |ref| elementwise "
        "(replaces --tolerance; rtol then defaults to 1e-5).",
    ),
    rtol: float | None = typer.Option(
        None, "--rtol", min=0.0, help="Relative tolerance of the same rule (replaces --tolerance)."
    ),
    runs: int = typer.Option(
        20, "--runs", min=0, help="Timed runs per model after warm-up (0 skips latency)."
    ),
    warmup: int = typer.Option(3, "--warmup", min=0, help="Untimed runs per model before timing."),
    threads: int = typer.Option(
        1, "--threads", min=1, help="ONNX Runtime intra-op threads for both models."
    ),
    memory: bool = typer.Option(
        True,
        "--memory/--no-memory",
        help="Measure each model's peak memory in a child process (loads each model once more).",
    ),
    target: list[str] | None = typer.Option(
        None,
        "--target",
        metavar="CPU",
        help="Also run both models on an emulated CPU (arm64, x86-avx2; repeatable); "
        "see `onnxslim targets setup`.",
    ),
    target_feeds: int = typer.Option(
        4, "--target-feeds", min=1, help="Feeds to run on each target (emulation is slow)."
    ),
    json_output: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Compare CAND with REF on ONNX Runtime: output parity, latency, peak memory.

    Both run on CPUExecutionProvider on the same feeds. Per output: max absolute and
    relative error, cosine similarity, SNR, top-1 agreement for classifier-shaped
    outputs. Exits 1 when an output is out of tolerance.
    """
    if count is not None:
        deprecated("--count", "--max-samples", "validate")
        max_samples = max_samples or count
    chosen, why = tolerances.resolve(
        tolerance, api.as_model(candidate) if tolerance == "auto" else None, atol, rtol
    )
    atol = chosen.atol if atol is None else atol
    rtol = chosen.rtol if rtol is None else rtol
    sources = DataOptions(reference, image_preprocess, input_shape)
    feeds_source = sources.source(data, "--data")
    sources.check_used()
    with progress_bar() as progress:
        report = api.validate(
            reference,
            candidate,
            feeds=feeds_source,
            max_samples=max_samples,
            input_shapes=parse_input_shapes(input_shape),
            runs=runs,
            warmup=warmup,
            threads=threads,
            measure_memory=memory,
            tolerance=chosen,
            progress=progress,
        )
    report.notes[-1] = tolerances.note(chosen, why)  # the API saw a preset "given"
    target_reports = []
    if target:
        feeds, _, _ = resolve_feeds(
            api.as_model(reference),
            feeds_source,
            count=target_feeds,
            seed=0,
            shapes=parse_input_shapes(input_shape),
        )
        err.print(f"running on {', '.join(target)} under QEMU ({len(feeds)} feeds)...")
        target_reports = validate_on_targets(
            reference, candidate, target, feeds, atol=atol, rtol=rtol
        )
    described = {"preset": chosen.name, "rule": chosen.rule, "why": why, "atol": atol, "rtol": rtol}
    if json_output:
        print_json(
            {
                **report.to_dict(),
                "tolerance": described,
                "targets": [t.to_dict() for t in target_reports],
                **sources.record(),
            }
        )
    else:
        render(
            report,
            f"{chosen.name}: {chosen.rule}; {why}",
            tolerances.failure_message(report, chosen),
        )
        for target_report in target_reports:
            render_target(target_report)
    if not report.passed:
        raise GateFailed(tolerances.failure_message(report, chosen), report)
    failed = [t.target for t in target_reports if not t.passed]
    if failed:
        raise GateFailed(f"parity check failed on target(s) {', '.join(failed)}", target_reports)


def render_target(report: TargetReport) -> None:
    """Per output: parity of CAND vs REF on the target, and CAND host vs target."""
    table = Table(title=f"target {report.target}: {escape(report.detail)} ({report.feeds} feeds)")
    table.add_column("output", overflow="fold", min_width=12)
    for column in ("max abs (on target)", "cosine", "top-1", "result", "CAND host vs target"):
        table.add_column(column, justify="right")
    for on_target, host in zip(report.on_target, report.candidate_host_vs_target, strict=True):
        top1 = "-" if on_target.top1_agreement is None else f"{on_target.top1_agreement:.2%}"
        same = "identical" if host.max_abs == 0 else f"differs (max abs {_num(host.max_abs)})"
        verdict = "[green]pass[/]" if on_target.passed else "[red]FAIL[/]"
        table.add_row(
            escape(on_target.name),
            _num(on_target.max_abs),
            _num(on_target.cosine, ".6f"),
            top1,
            verdict,
            same,
        )
    out.print(table)
    if report.candidate_differs_beyond_rounding:
        out.print(
            f"[yellow]note:[/] the candidate computes differently on {report.target} than on "
            "this machine, beyond float rounding: validate on the target's kernels"
        )
    elif report.candidate_differs_from_host:
        out.print(
            f"note: on {report.target} the candidate differs from this machine only by float "
            "rounding"
        )


def render(report: ValidationReport, tolerance: str = "", failure: str = "") -> None:
    """Parity table, performance table, notes and the verdict."""
    out.print(f"[bold]validate[/] {escape(report.candidate)} against {escape(report.reference)}")
    generated = ", no --data given" if report.generated_inputs else ""
    out.print(
        f"feeds: {escape(report.feeds)}{generated}; {report.provider}, onnxruntime "
        f"{report.onnxruntime_version}, {report.threads} thread(s)"
    )
    table = Table(title=f"outputs (tolerance {escape(tolerance)})" if tolerance else "outputs")
    table.add_column("output", overflow="fold", min_width=12)
    for column in ("max abs", "max rel", "cosine", "SNR dB", "top-1", "out of tol.", "result"):
        table.add_column(column, justify="right")
    for o in report.outputs:
        top1 = "-" if o.top1_agreement is None else f"{o.top1_agreement:.2%}"
        verdict = "[green]pass[/]" if o.passed else "[red]FAIL[/]"
        table.add_row(
            escape(o.name),
            _num(o.max_abs),
            _num(o.max_rel),
            _num(o.cosine, ".6f"),
            _num(o.snr_db, ".1f"),
            top1,
            f"{o.mismatched}/{o.elements}",
            verdict,
        )
    out.print(table)
    if report.latency or report.memory:
        out.print(_performance_table(report))
    for note in report.notes:
        out.print(f"note: {escape(note)}")
    for problem in report.problems:
        out.print(f"[red]problem:[/] {escape(problem)}")
    if report.passed:
        out.print(f"[green]passed: all {len(report.outputs)} output(s) within tolerance[/]")
    else:
        out.print(f"[red]{escape(failure or report.summary())}[/]")


def _performance_table(report: ValidationReport) -> Table:
    first = next(iter(report.latency.values()), None)
    title = "performance"
    if first is not None:
        title += (
            f" ({first.runs} interleaved runs after {first.warmup} warm-up, "
            f"{first.threads} thread(s))"
        )
    table = Table(title=title)
    for column in ("model", "median ms", "p90 ms", "peak memory", "model memory"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for label in ("reference", "candidate"):
        latency = report.latency.get(label)
        memory = report.memory.get(label)
        table.add_row(
            label,
            f"{latency.median_ms:.3f}" if latency else "-",
            f"{latency.p90_ms:.3f}" if latency else "-",
            human_bytes(memory.peak_bytes) if memory else "-",
            human_bytes(memory.model_bytes) if memory else "-",
        )
    if report.speedup is not None:
        table.caption = f"candidate speed-up (median): {report.speedup:.2f}x"
    return table


def _num(value: float, spec: str = ".3g") -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf"
    return format(value, spec)
