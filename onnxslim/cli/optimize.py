"""`onnxslim optimize`: lossless clean-up, each pass guarded on ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from onnxslim import api, io
from onnxslim.cli import _options as opt
from onnxslim.cli._app import app, deprecated, out, print_json
from onnxslim.cli._data import IMAGE_PREPROCESS, DataOptions
from onnxslim.errors import GateFailed, UsageError
from onnxslim.passes.fold import FixInputShapes
from onnxslim.pipeline import Pipeline

_MODEL = opt.model_argument("Input ONNX model (never modified).")


@app.command("optimize")
def optimize_command(
    model: Path = _MODEL,
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the optimized model."),
    recipe: Path | None = typer.Option(
        None,
        "--recipe",
        help=r"TOML recipe of \[\[pass]] tables to run instead of the default clean-up.",
    ),
    passes: str | None = typer.Option(
        None, "--passes", help="Comma-separated pass names to run instead of the default."
    ),
    input_shape: list[str] | None = opt.INPUT_SHAPE,
    verify: bool = typer.Option(
        True,
        "--verify/--no-verify",
        help="Check the passes on ONNX Runtime, roll back any that changes outputs, and check "
        "the result against the input model.",
    ),
    data: Path | None = typer.Option(
        None,
        "--data",
        metavar="PATH",
        help="Validation feeds (.npz or folder); generated inputs otherwise.",
    ),
    image_preprocess: str | None = IMAGE_PREPROCESS,
    atol: float = typer.Option(1e-5, help="Absolute tolerance of the checks."),
    rtol: float = typer.Option(1e-5, help="Relative tolerance of the checks."),
    write_anyway: bool = opt.WRITE_ANYWAY,
    force: bool = opt.FORCE,
    overwrite: bool = opt.OVERWRITE,
    external_data: bool | None = opt.EXTERNAL_DATA,
    external_threshold: int = opt.EXTERNAL_THRESHOLD,
    keep_metadata: bool = typer.Option(
        False,
        "--keep-metadata",
        help="Keep exporter debug metadata (node stack traces, scope names, doc strings); "
        "stripped by default.",
    ),
    print_recipe: bool = typer.Option(
        False, "--print-recipe", help="Print the pipeline as a TOML recipe and exit."
    ),
    json_output: bool = opt.JSON,
) -> None:
    """Run a lossless clean-up on MODEL and write the result to OUTPUT."""
    if force:
        deprecated("--force", "--write-anyway", "optimize")
        write_anyway = True
    if recipe is not None and passes is not None:
        raise typer.BadParameter("give --recipe or --passes, not both")
    pipeline = None
    if recipe is not None:
        pipeline = Pipeline.from_file(recipe)
    elif passes is not None:
        pipeline = Pipeline.from_names([p.strip() for p in passes.split(",") if p.strip()])
    if print_recipe:
        shown = pipeline or api.default_optimize_pipeline()
        if input_shape:
            shown = Pipeline((FixInputShapes(shapes=tuple(input_shape)), *shown.passes))
        out.print(shown.to_toml(), end="", markup=False)
        return
    if io.same_file(model, output) and not overwrite:  # one line, exit 2 (not a usage box)
        raise UsageError(f"{output}: output is the input model; pass --overwrite to replace it")
    io.check_output_folder(output.absolute().parent)  # before the work; created on save
    sources = DataOptions(model, image_preprocess, input_shape)
    feeds = sources.source(data, "--data")
    sources.check_used()
    result = api.optimize(
        model,
        pipeline=pipeline,
        verify=verify,
        data=feeds,
        atol=atol,
        rtol=rtol,
        input_shapes=input_shape or None,
        keep_metadata=keep_metadata,
    )
    final = result.result.parity
    failed = [p for p in final or [] if not p.passed]
    written = None
    if not failed or write_anyway:
        opt.save_model(
            result.model,
            output,
            source=model,
            overwrite=overwrite,
            external_data=external_data,
            threshold=external_threshold,
        )
        written = opt.written_bytes(output)
    records = result.result.records
    if json_output:
        print_json(
            {
                "input": str(model),
                "output": str(output) if written is not None else None,
                "output_bytes": written,
                "verified_on": result.verified_on,
                "passed": not failed,
                "rolled_back": [r.name for r in result.result.rolled_back],
                "parity": [p.to_dict() for p in final] if final is not None else None,
                "passes": [r.to_dict() for r in records],
                **sources.record(),
            }
        )
    else:
        _print_table(model, result, written)
    # Rolled-back passes are already on stderr: the pipeline logs each one as a warning.
    if failed:
        moved = ", ".join(f"{p.name} (max abs {p.max_abs:.3g})" for p in failed)
        where = f"written anyway to {output} (--write-anyway)" if written else "nothing written"
        raise GateFailed(
            f"the optimized model's outputs differ from the input model's beyond "
            f"tolerance: {moved}; {where}"
        )
    if not json_output:
        out.print(f"wrote {output}")


def _print_table(model: Path, result: api.OptimizeResult, written: int | None) -> None:
    table = Table(title=f"optimize {model.name} (checked on {result.verified_on})")
    for column in ("pass", "status", "nodes", "bytes", "seconds", "note"):
        table.add_column(column)
    for r in result.result.records:
        table.add_row(
            r.name,
            r.status,
            f"{r.nodes_before} -> {r.nodes_after}",
            f"{r.bytes_before} -> {r.bytes_after}",
            f"{r.seconds:.3f}",
            r.reason,
        )
    if written is not None:  # the table's bytes are serialized estimates; this is the file
        table.add_row("written file", "", "", f"{model.stat().st_size} -> {written}", "", "")
    out.print(table)
    final = result.result.parity
    if final is not None:
        worst = max((p.max_rel for p in final), default=0.0)
        verdict = "[green]match[/]" if result.passed else "[red]DIFFER[/]"
        out.print(f"outputs vs input model: {verdict} (largest relative error {worst:.3g})")
