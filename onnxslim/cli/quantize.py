"""`onnxslim quantize`: int8 (static, dynamic) or weight-only quantization, validated on ORT."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
from onnxslim.cli import _accuracy
from onnxslim.cli import _options as opt
from onnxslim.cli._app import app, deprecated, err, out, print_json, warn
from onnxslim.cli._data import IMAGE_PREPROCESS, DataOptions
from onnxslim.cli._target import fail_on_target, print_target, target_option
from onnxslim.cli.inspect_cmd import human_bytes
from onnxslim.errors import UsageError
from onnxslim.passes.quantize.policy import KERNEL_TARGETS
from onnxslim.passes.quantize.static import QuantizeReport
from onnxslim.registry import pass_fields, quantize_pass_class

_STAGES = {
    "calibrate": "calibrating",
    "parity": "comparing outputs",
    "latency": "timing (interleaved)",
    "fix": "fixing the layers that miss the target",
    "accuracy": "accuracy",
}


@contextmanager
def _progress() -> Iterator[Callable[[str, int, int | None], None]]:
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


_MODEL = opt.model_argument("Float ONNX model (never modified).")


@app.command("quantize")
def quantize_command(
    model: Path = _MODEL,
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the quantized model."),
    calib: str | None = typer.Option(
        None,
        "--calib",
        metavar="PATH",
        help="Calibration data: .npz/.npy file, folder of samples or images.",
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
        None,
        "--exclude",
        metavar="PATTERN",
        help="Keep float: node name, op type or regex (repeatable).",
    ),
    keep_float_outputs: bool = typer.Option(
        False, "--keep-float-outputs", help="Nodes producing graph outputs stay float."
    ),
    activations: str = typer.Option(
        "auto",
        "--activations",
        help="Static: MatMul / Gemm / LSTM activations calibrated (static), quantized at run "
        "time (dynamic), or auto: whichever measures faster here within the target.",
    ),
    weight_rounding: str = typer.Option(
        "auto",
        "--weight-rounding",
        help="Static: nearest, gptq (each layer's output error minimised from its input "
        "statistics), or auto: gptq only as a fix when the accuracy target is missed.",
    ),
    weight_bits: int = typer.Option(
        8, "--weight-bits", help="Weight-only mode: 8, or 4 (MatMulNBits)."
    ),
    max_samples: int | None = opt.MAX_SAMPLES,
    input_shape: list[str] | None = opt.INPUT_SHAPE,
    latency_guard: bool = typer.Option(
        True,
        "--latency-guard/--no-latency-guard",
        help="Static: keep the smallest layers float while int8 runs slower than "
        "float here (--no-latency-guard forces int8 for size).",
    ),
    data: str | None = typer.Option(
        None,
        "--data",
        metavar="PATH",
        help="Validation feeds (with `labels` for accuracy); default: --calib.",
    ),
    image_preprocess: str | None = IMAGE_PREPROCESS,
    verify: bool = opt.VERIFY,
    requantize: bool = typer.Option(
        False, "--requantize", help="Quantize a model that already holds quantized ops."
    ),
    force: bool = opt.FORCE,
    overwrite: bool = opt.OVERWRITE,
    external_data: bool | None = opt.EXTERNAL_DATA,
    external_threshold: int = opt.EXTERNAL_THRESHOLD,
    json_output: bool = opt.JSON,
    eval_data: str | None = typer.Option(
        None,
        "--eval",
        metavar="PATH",
        help="Labelled .npz (model inputs + `labels`) that --max-drop measures top-1 on.",
    ),
    max_drop: float | None = typer.Option(
        None,
        "--max-drop",
        metavar="POINTS",
        help="Accuracy-aware: return the most sensitive layers to float until top-1 drops at "
        "most this many points (1 = one percentage point); exit 1 if not met (best model and "
        "OUTPUT.sensitivity.json still written).",
    ),
    target_error: float = target_option(),
    fix: bool = typer.Option(
        True,
        "--fix/--no-fix",
        help="Static: when the int8 model misses the accuracy target, fix the layers "
        "responsible on the held-out feeds, cheapest first (other ranges, per-channel "
        "weights, float); --no-fix reports the miss as it is.",
    ),
) -> None:
    """Quantize MODEL to int8 and write OUTPUT; the report compares it with the float model."""
    if force:
        deprecated("--force", "--requantize", "quantize")
        requantize = True
    max_drop = max_drop_points(max_drop)
    save: dict[str, Any] = {"external_data": external_data, "threshold": external_threshold}
    if io.same_file(model, output) and not overwrite:
        raise UsageError(f"{output}: output is the input model; pass --overwrite to replace it")
    io.check_output_folder(output.absolute().parent)  # before the work; created on save
    sources = DataOptions(model, image_preprocess, input_shape)
    calib_source = sources.source(calib, "--calib")
    data_source = sources.source(data, "--data")
    sources.check_used()
    # Every flag under its pass-option name; the mode's pass takes the fields it declares.
    flags: dict[str, Any] = {
        "target": target,
        "exclude": tuple(exclude or ()),
        "force": requantize,
        "method": method,
        "percentile": percentile,
        "activation_type": activation_type,
        "per_channel": not per_tensor,
        "reduce_range": reduce_range,
        "keep_float_outputs": keep_float_outputs,
        "activations": activations,
        "weight_rounding": weight_rounding,
        "max_samples": max_samples,
        "latency_guard": latency_guard,
        "bits": weight_bits,
    }
    fields = pass_fields(quantize_pass_class(mode))
    options = {k: v for k, v in flags.items() if k in fields}
    if max_drop is not None:  # accuracy-aware mode: onnxslim/cli/_accuracy.py
        with _progress() as progress:
            _accuracy.run(
                model,
                output,
                calib=calib_source,
                eval_data=eval_data or data,  # labelled .npz (images carry no labels)
                max_drop=max_drop,
                options=options,
                overwrite=overwrite,
                json_output=json_output,
                progress=progress,
                mode=mode,
                save=save,
                record=sources.record(),
                input_shapes=input_shape or None,
            )
        return
    with _progress() as progress:
        result = api.quantize(
            model,
            mode=mode,
            calib=calib_source,
            data=data_source,
            verify=verify,
            progress=progress,
            target_error=target_error,
            fix=fix,
            input_shapes=input_shape or None,
            **options,
        )
    opt.save_model(result.model, output, source=model, overwrite=overwrite, **save)
    size_in, size_out = model.stat().st_size, opt.written_bytes(output)
    if json_output:
        print_json(
            {
                "input": str(model),
                "output": str(output),
                "file_bytes": [size_in, size_out],
                **result.to_dict(),
                **sources.record(),
            }
        )
    else:
        _print_report(model, output, result, size_in, size_out)
        print_target(result.target)
    fail_on_target(result.target, output, _ADVICE)


_ADVICE = (
    "try --method entropy or percentile, --exclude the layers that compute that output, "
    "--mode dynamic for transformers and LSTMs, or --max-drop with labelled --eval data"
)


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
    latency = result.latency
    if latency and "cleaned_ms" in latency:  # each step against the model before it
        table.add_row(
            "latency: clean-up (input -> float)",
            f"{latency['input_ms']:.2f} ms",
            f"{latency['cleaned_ms']:.2f} ms",
            f"{latency['cleanup_ratio']:.2f}x",
        )
        table.add_row(
            "latency: int8 step (float -> int8)",
            f"{latency['cleaned_ms']:.2f} ms",
            f"{latency['quantized_ms']:.2f} ms",
            f"{latency['int8_ratio']:.2f}x",
        )
    elif latency:
        table.add_row(
            "latency (median, 1 thread)",
            f"{latency['input_ms']:.2f} ms",
            f"{latency['quantized_ms']:.2f} ms",
            f"{latency['int8_ratio']:.2f}x",
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
    if report.mode == "static" and not report.samples:
        details += "; not calibrated: no layer of this model could be int8"
    elif report.mode == "static":
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
    _print_activation_mode(report)
    for p in report.protections[:8]:
        out.print(f"[yellow]kept float[/] {escape(p['tensor'])}: {escape(p['reason'])}")
    reasons: dict[str, int] = {}
    for reason in report.skipped.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1])[:6]:
        out.print(f"float x{count}: {escape(reason)}")
    _print_fixes(report)
    if result.kept_float:
        out.print(f"[yellow]kept the float model[/] (cleaned up): {escape(result.kept_float)}")
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}")
    out.print(f"wrote {escape(str(output))}")


def _print_activation_mode(report: QuantizeReport) -> None:
    """Static or run-time activations for MatMul / Gemm / LSTM: each mode timed, the kept one."""
    mode = report.activation_mode
    trials = mode.get("trials") or []
    if not trials:
        if mode.get("dynamic_nodes"):
            out.print(f"activations: {mode['chosen']} ({mode['dynamic_nodes']} layers at run time)")
        return
    tried = []
    for trial in trials:
        verdict = {True: ", target met", False: ", target missed"}.get(trial.get("passed"), "")
        tried.append(f"{trial['mode']} {trial['latency_ratio']:.2f}x float{verdict}")
    out.print(f"activations: {'; '.join(tried)} -> kept {mode['chosen']}")


def _print_fixes(report: QuantizeReport) -> None:
    """The accuracy-target fix loop: each fix, the output figures before and after."""
    if not report.fixes:
        return
    before = _figures(report.target_before.get("outputs", {}), report.target_before.get("units"))
    out.print(
        f"accuracy target missed by int8 ({before}): "
        f"{report.fix_evaluations} configurations measured on the held-out feeds"
    )
    for fix in report.fixes:
        verdict = "kept" if fix["kept"] else "not kept"
        layers = fix["layers"]
        named = ", ".join(layers[:4]) + (f" and {len(layers) - 4} more" if len(layers) > 4 else "")
        out.print(
            f"  fix {escape(fix['kind'])}: {escape(fix['detail'])}"
            f"{' (' + escape(named) + ')' if named else ''}: "
            f"{_figures(fix['before'], fix.get('units_before'))} -> "
            f"{_figures(fix['after'], fix.get('units_after'))} {escape(f'[{verdict}]')}"
        )


def _figures(values: dict[str, Any], units: dict[str, str] | None = None) -> str:
    """`output0 2.00 points`: each figure with its unit (one output's worst part can be
    counted in points before a fix and in dB after it)."""
    shown = []
    for name, value in values.items():
        unit = (units or {}).get(name, "")
        number = f"{value:.2f}" if isinstance(value, float) and unit == "points" else value
        number = f"{value:.1f}" if isinstance(value, float) and unit == "dB" else number
        if unit == "dB" and value in (math.inf, "inf"):
            number, unit = "exact", ""  # identical to the original (the float model)
        shown.append(f"{escape(str(name))} {number}{' ' + unit if unit else ''}")
    return ", ".join(shown)


def max_drop_points(value: float | None) -> float | None:
    """--max-drop is in points; values under 0.1 were fractions before (0.01 = 1 point).

    A tenth of a point is under one sample in a thousand, tighter than any eval set
    here measures, so such a value is read the old way for one release, with a warning.
    """
    if value is None or value >= 0.1 or value <= 0:
        return value
    points = value * 100
    warn(
        f"--max-drop {value:g} read as a fraction ({points:g} points); --max-drop is now in "
        f"points: pass --max-drop {points:g}"
    )
    return points
