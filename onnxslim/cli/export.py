"""`onnxslim export`: prepare a model for a device (ORT format, fixed shapes, fp16, bundle)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from onnxslim import api, io
from onnxslim.cli import _options as opt
from onnxslim.cli._app import app, deprecated, err, out, print_json
from onnxslim.cli._data import IMAGE_PREPROCESS, DataOptions
from onnxslim.errors import UsageError
from onnxslim.validation import resolve_feeds
from onnxslim.workflows.export import FP16_SENSITIVE_OPS, ExportOptions, export

_MODEL = opt.model_argument("Input ONNX model (never modified).")


@app.command("export")
def export_command(
    model: Path = _MODEL,
    output: Path = typer.Option(
        ..., "-o", "--output", help="Output model: NAME.onnx, or NAME.ort for ONNX Runtime Mobile."
    ),
    input_shape: list[str] | None = opt.INPUT_SHAPE,
    opset: int | None = typer.Option(
        None, "--opset", help="Convert the default-domain opset to this version."
    ),
    fp16: bool = typer.Option(
        False, "--fp16", help="Convert weights and compute to float16 (sensitive ops stay float32)."
    ),
    fp16_block: list[str] | None = typer.Option(
        None, "--fp16-block", metavar="OP", help="Extra op types to keep float32 (repeatable)."
    ),
    fp16_io: bool = typer.Option(
        False, "--fp16-io", help="Also make the model's inputs and outputs float16."
    ),
    strip: bool = typer.Option(
        True, "--strip/--no-strip", help="Strip doc strings and training-only nodes."
    ),
    optimize: bool = typer.Option(
        True, "--optimize/--no-optimize", help="Run the lossless clean-up first."
    ),
    style: str = typer.Option(
        "fixed",
        "--optimization-style",
        help="ORT format optimizations: fixed (for this hardware-agnostic build) or runtime.",
    ),
    bundle: Path | None = typer.Option(
        None,
        "--bundle",
        help="Write a deploy folder: model, .ort, operator config, validation report, "
        "metadata.json.",
    ),
    data: Path | None = typer.Option(
        None,
        "--data",
        metavar="PATH",
        help="Feeds to check the export on (.npz or folder); generated inputs otherwise.",
    ),
    atol: float | None = typer.Option(
        None, "--atol", help="Absolute tolerance (default 1e-5, 1e-2 with --fp16)."
    ),
    rtol: float | None = typer.Option(
        None, "--rtol", help="Relative tolerance (default 1e-5, 1e-2 with --fp16)."
    ),
    overwrite: bool = opt.OVERWRITE,
    write_anyway: bool = opt.WRITE_ANYWAY,
    force: bool = opt.FORCE,
    image_preprocess: str | None = IMAGE_PREPROCESS,
    external_data: bool | None = opt.EXTERNAL_DATA,
    external_threshold: int = opt.EXTERNAL_THRESHOLD,
    json_output: bool = opt.JSON,
) -> None:
    """Prepare MODEL for a device and check it on ONNX Runtime against the input."""
    if force:
        deprecated("--force", "--write-anyway", "export")
        write_anyway = True
    if io.same_file(model, output) and not overwrite:  # one line, exit 2, before the work
        raise UsageError(f"{output}: output is the input model; pass --overwrite to replace it")
    sources = DataOptions(model, image_preprocess, input_shape)
    feeds_source = sources.source(data, "--data")
    sources.check_used()
    options = ExportOptions(
        input_shapes=tuple(input_shape or ()),
        opset=opset,
        fp16=fp16,
        fp16_block_ops=tuple(FP16_SENSITIVE_OPS) + tuple(fp16_block or ()),
        keep_io_float32=not fp16_io,
        strip=strip,
        optimize=optimize,
        ort_format=output.suffix == ".ort",
        optimization_style=style,
        atol=atol,
        rtol=rtol,
    )
    feeds = None
    if feeds_source is not None:
        feeds, _, _ = resolve_feeds(api.as_model(model), feeds_source, count=8)
    result = export(
        model,
        output,
        options,
        feeds=feeds,
        bundle=bundle,
        overwrite=overwrite,
        force=write_anyway,
        external_data=external_data,
        external_threshold=external_threshold,
    )
    if json_output:
        print_json({**result.to_dict(), **sources.record()})
        return
    for step in result.steps:
        out.print(f"- {escape(step)}")
    table = Table(title="parity with the input model")
    for column in ("output", "max abs", "max rel", "cosine", "result"):
        table.add_column(column)
    for p in result.parity:
        table.add_row(
            escape(p.name),
            f"{p.max_abs:.3g}",
            f"{p.max_rel:.3g}",
            f"{p.cosine:.6f}",
            "[green]pass[/]" if p.passed else "[red]FAIL (forced)[/]",
        )
    out.print(table)
    for problem in result.preflight.problems:
        err.print(f"[red]mobile pre-flight:[/] {escape(problem)}")
    for warning in result.preflight.warnings:
        err.print(f"[yellow]mobile pre-flight:[/] {escape(warning)}")
    written = [p for p in (result.ort_path, result.operator_config, result.metadata_path) if p]
    if output.suffix == ".onnx" or bundle is not None:
        written.insert(0, result.model_path)
    out.print("wrote " + ", ".join(str(p) for p in written))
