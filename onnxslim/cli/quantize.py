"""`onnxslim quantize`: int8 (static, dynamic) or weight-only quantization, validated on ORT."""

from __future__ import annotations

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

from onnxslim import api, io
from onnxslim.cli._app import app, err, out, print_json
from onnxslim.cli.inspect_cmd import human_bytes
from onnxslim.passes.quantize.policy import KERNEL_TARGETS
from onnxslim.registry import pass_fields, quantize_pass_class

_STAGES = {
    "calibrate": "calibrating",
    "parity": "comparing outputs",
    "latency": "timing (interleaved)",
    "accuracy": "accuracy",
}


@contextmanager
def _progress() -> Iterator[object]:
    """A transient rich progress bar on stderr (silent when stderr is not a terminal)."""
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

    def update(stage: str, done: int, total: int | None) -> None:
        if stage not in tasks:
            tasks[stage] = progress.add_task(_STAGES.get(stage, stage), total=total)
        progress.update(tasks[stage], completed=done, total=total)

    with progress:
        yield update


@app.command("quantize")
def quantize_command(
    model: Path = typer.Argument(..., help="Float ONNX model (never modified)."),
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the quantized model."),
    calib: str | None = typer.Option(
        None, "--calib", help="Calibration data: .npz/.npy file, folder of samples or images."
    ),
    mode: str = typer.Option(
        "static",
        "--mode",
        help="static (calibrated int8), dynamic (int8 weights, run-time "
        "activations: transformers, LSTMs) or weight-only.",
    ),
    method: str = typer.Option(
        "minmax", "--method", help="Calibration: minmax, percentile, entropy or mse."
    ),
    percentile: float = typer.Option(
        99.99, "--percentile", help="Percentile kept by --method percentile."
    ),
    activation_type: str = typer.Option(
        "auto", "--activation-type", help="uint8, int8 or auto (from --target)."
    ),
    per_tensor: bool = typer.Option(
        False, "--per-tensor", help="One scale per weight tensor instead of per channel."
    ),
    reduce_range: bool | None = typer.Option(
        None,
        "--reduce-range/--full-range",
        help="7-bit weights (x86 without VNNI); default from --target.",
    ),
    target: str = typer.Option(
        "auto", "--target", help=f"CPU kernels int8 is chosen for: {', '.join(KERNEL_TARGETS)}."
    ),
    exclude: list[str] | None = typer.Option(
        None, "--exclude", help="Keep float: node name, op type or regex (repeatable)."
    ),
    keep_float_outputs: bool = typer.Option(
        False, "--keep-float-outputs", help="Nodes producing graph outputs stay float."
    ),
    weight_bits: int = typer.Option(
        8, "--weight-bits", help="Weight-only mode: 8, or 4 (MatMulNBits)."
    ),
    max_samples: int | None = typer.Option(
        None, "--max-samples", min=1, help="Calibrate on at most N feeds."
    ),
    latency_guard: bool = typer.Option(
        True,
        "--latency-guard/--no-latency-guard",
        help="Static: keep the smallest layers float while int8 runs slower than "
        "float here (--no-latency-guard forces int8 for size).",
    ),
    data: str | None = typer.Option(
        None, "--data", help="Validation feeds (with `labels` for accuracy); default: --calib."
    ),
    verify: bool = typer.Option(
        True, "--verify/--no-verify", help="Validate the result against the float model on ORT."
    ),
    force: bool = typer.Option(
        False, "--force", help="Quantize a model that already holds quantized ops."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Allow the output to replace the input file."
    ),
    json_output: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    eval_data: str | None = typer.Option(
        None,
        "--eval",
        help="Labelled .npz (model inputs + `labels`) that --max-drop measures top-1 on.",
    ),
    max_drop: float | None = typer.Option(
        None,
        "--max-drop",
        help="Accuracy-aware: return the most sensitive layers to float until top-1 drops "
        "at most this much (0.01 = 1 pt); exit 1 if not met (best model and "
        "OUTPUT.sensitivity.json still written).",
    ),
) -> None:
    """Quantize MODEL to int8 and write OUTPUT; the report compares it with the float model."""
    if io.same_file(model, output) and not overwrite:
        raise typer.BadParameter(
            "output is the input model; pass --overwrite to replace it", param_hint="-o"
        )
    # Every flag under its pass-option name; the mode's pass takes the fields it declares.
    flags: dict[str, object] = {
        "target": target,
        "exclude": tuple(exclude or ()),
        "force": force,
        "method": method,
        "percentile": percentile,
        "activation_type": activation_type,
        "per_channel": not per_tensor,
        "reduce_range": reduce_range,
        "keep_float_outputs": keep_float_outputs,
        "max_samples": max_samples,
        "latency_guard": latency_guard,
        "bits": weight_bits,
    }
    fields = pass_fields(quantize_pass_class(mode))
    options = {k: v for k, v in flags.items() if k in fields}
    if max_drop is not None:  # accuracy-aware mode: onnxslim/cli/_accuracy.py
        from onnxslim.cli import _accuracy

        with _progress() as progress:
            _accuracy.run(
                model,
                output,
                calib=calib,
                eval_data=eval_data or data,
                max_drop=max_drop,
                options=options,
                overwrite=overwrite,
                json_output=json_output,
                progress=progress,
                mode=mode,
            )
        return
    with _progress() as progress:
        result = api.quantize(
            model, mode=mode, calib=calib, data=data, validate=verify, progress=progress, **options
        )
    if result.bytes_after > result.bytes_before:
        err.print(
            f"[red]refused:[/] the quantized model would be larger than the input "
            f"({result.bytes_after} > {result.bytes_before} weight bytes); nothing written"
        )
        raise typer.Exit(1)
    api.save(result.model, output, source=model, overwrite=overwrite)
    size_in, size_out = model.stat().st_size, output.stat().st_size
    if json_output:
        print_json(
            {
                "input": str(model),
                "output": str(output),
                "file_bytes": [size_in, size_out],
                **result.to_dict(),
            }
        )
        return
    _print_report(model, output, result, size_in, size_out)


def _print_report(
    model: Path, output: Path, result: api.QuantizeResult, size_in: int, size_out: int
) -> None:
    report = result.report
    table = Table(
        title=f"quantize {escape(model.name)} ({report.mode}, {report.target or 'weights'})"
    )
    table.add_column("")
    table.add_column("float", justify="right")
    table.add_column("quantized", justify="right")
    table.add_column("ratio", justify="right")
    table.add_row(
        "file size",
        human_bytes(size_in),
        human_bytes(size_out),
        f"{size_out / size_in:.2f}x" if size_in else "",
    )
    table.add_row("nodes", str(result.nodes_before), str(result.nodes_after), "")
    validation = result.validation
    if validation is not None and validation.latency:
        ref, cand = validation.latency["reference"], validation.latency["candidate"]
        table.add_row(
            "latency (median, 1 thread)",
            f"{ref.median_ms:.2f} ms",
            f"{cand.median_ms:.2f} ms",
            f"{cand.median_ms / ref.median_ms:.2f}x",
        )
    if result.accuracy:
        acc = result.accuracy
        table.add_row(
            f"top-1 accuracy ({int(acc['samples'])} labels)",
            f"{acc['float']:.4f}",
            f"{acc['quantized']:.4f}",
            f"{(acc['quantized'] - acc['float']) * 100:+.2f} pt",
        )
    if validation is not None:
        for o in validation.outputs:
            top1 = "" if o.top1_agreement is None else f", top-1 agree {o.top1_agreement:.3f}"
            table.add_row(f"output {escape(o.name)}", "", f"cos {o.cosine:.5f}{top1}", "")
    out.print(table)
    details = (
        f"{len(report.quantized_nodes)} nodes quantized "
        f"({', '.join(f'{k} {v}' for k, v in sorted(report.quantized_ops.items()))})"
    )
    if report.mode == "static":
        details += (
            f"; {report.activation_type} activations, int8 weights"
            f"{' (7-bit, reduce_range)' if report.reduce_range else ''}, "
            f"{'per channel' if report.per_channel else 'per tensor'}, {report.method} on "
            f"{report.samples} feeds"
        )
        if report.int8_kernels:
            details += (
                f"; ORT runs {', '.join(f'{k} x{v}' for k, v in report.int8_kernels.items())}"
            )
    out.print(details)
    for p in report.protections[:8]:
        out.print(f"[yellow]kept float[/] {escape(p['tensor'])}: {escape(p['reason'])}")
    reasons: dict[str, int] = {}
    for reason in report.skipped.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1])[:6]:
        out.print(f"float x{count}: {escape(reason)}")
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}")
    out.print(f"wrote {escape(str(output))}")
