"""`onnxslim optimize`: lossless clean-up, each pass guarded on ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from onnxslim import api, io
from onnxslim.cli._app import app, err, out, print_json
from onnxslim.pipeline import Pipeline


@app.command("optimize")
def optimize_command(
    model: Path = typer.Argument(..., help="Input ONNX model (never modified)."),
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the optimized model."),
    recipe: Path | None = typer.Option(None, "--recipe", help="TOML recipe of [[pass]] tables to run instead of the default clean-up."),
    passes: str | None = typer.Option(None, "--passes", help="Comma-separated pass names to run instead of the default."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Check each pass on ONNX Runtime and roll back those that change outputs."),
    data: Path | None = typer.Option(None, "--data", help="Validation feeds (.npz or folder); generated inputs otherwise."),
    atol: float = typer.Option(1e-5, help="Absolute tolerance of the per-pass check."),
    rtol: float = typer.Option(1e-5, help="Relative tolerance of the per-pass check."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Allow the output to replace the input file."),
    print_recipe: bool = typer.Option(False, "--print-recipe", help="Print the pipeline as a TOML recipe and exit."),
    json_output: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Run a lossless clean-up on MODEL and write the result to OUTPUT."""
    if recipe is not None and passes is not None:
        raise typer.BadParameter("give --recipe or --passes, not both")
    pipeline = None
    if recipe is not None:
        pipeline = Pipeline.from_file(recipe)
    elif passes is not None:
        pipeline = Pipeline.from_names([p.strip() for p in passes.split(",") if p.strip()])
    if print_recipe:
        out.print((pipeline or api.default_optimize_pipeline()).to_toml(), end="", markup=False)
        return
    if io.same_file(model, output) and not overwrite:
        raise typer.BadParameter("output is the input model; pass --overwrite to replace it", param_hint="-o")
    result = api.optimize(model, pipeline=pipeline, verify=verify, data=data, atol=atol, rtol=rtol)
    api.save(result.model, output, source=model, overwrite=overwrite)
    records = result.result.records
    if json_output:
        print_json({"input": str(model), "output": str(output), "verified_on": result.verified_on,
                    "passes": [r.to_dict() for r in records]})
        return
    table = Table(title=f"optimize {model.name} (checked on {result.verified_on})")
    for column in ("pass", "status", "nodes", "bytes", "seconds", "note"):
        table.add_column(column)
    for r in records:
        table.add_row(r.name, r.status, f"{r.nodes_before} -> {r.nodes_after}",
                      f"{r.bytes_before} -> {r.bytes_after}", f"{r.seconds:.3f}", r.reason)
    out.print(table)
    for r in result.result.rolled_back:
        err.print(f"[yellow]rolled back[/] {r.name}: {r.reason}")
    out.print(f"wrote {output}")
