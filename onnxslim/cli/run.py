"""`onnxslim run`, `onnxslim search`, `onnxslim recipes`: the pre-deploy step of a pipeline.

Exit codes: 0 every gate passed; 1 a gate failed (the model and the report are still
written); 2 a bad recipe or bad usage (the message names the recipe key); 3 a pass
failed (the report says which, no model is written).
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from onnxslim import api, io, presets
from onnxslim.cli import _options as opt
from onnxslim.cli._app import app, err, out, print_json
from onnxslim.cli._data import IMAGE_PREPROCESS
from onnxslim.errors import GateFailed, UsageError

recipes_app = typer.Typer(
    help="Recipes shipped with onnxslim (presets).",
    no_args_is_help=False,
    invoke_without_command=True,
)
app.add_typer(recipes_app, name="recipes")

_MODEL = opt.model_argument("Input ONNX model (never modified).")
_RECIPE_HELP = "Recipe file (.toml, .yaml) or a preset name (`onnxslim recipes`)."


def _progress(message: str) -> None:
    if err.is_terminal:
        err.print(f"[dim]{escape(message)}[/]")


def _notice(message: str) -> None:
    """What the user must see even off a terminal (the preprocessing of image folders)."""
    err.print(message, markup=False, highlight=False)


def _check_output(model: Path, output: Path, overwrite: bool) -> None:
    if io.same_file(model, output) and not overwrite:  # one line, exit 2 (not a usage box)
        raise UsageError(f"{output}: output is the input model; pass --overwrite to replace it")
    io.check_output_folder(output.absolute().parent)  # before the work; created on save


# Options `run` and `search` share (one definition, so their help cannot drift apart).
_REPORT_OPTION = typer.Option(
    None, "--report", help="Folder for report.json, report.md and report.html."
)
_CALIB_OPTION = typer.Option(
    None, "--calib", metavar="PATH", help="Calibration data (overrides the recipe's)."
)
_EVAL_OPTION = typer.Option(
    None,
    "--eval",
    metavar="PATH",
    help="Evaluation data, `labels` for top-1 (overrides the recipe's).",
)
_OVERWRITE_OPTION = typer.Option(False, "--overwrite", help="Allow OUTPUT to replace MODEL.")
_JSON_OPTION = typer.Option(False, "--json", help="Print report.json on stdout.")


@app.command("run")
def run_command(
    recipe: str = typer.Argument(..., metavar="RECIPE", help=_RECIPE_HELP),
    model: Path = _MODEL,
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the output model."),
    report: Path | None = _REPORT_OPTION,
    calib: str | None = _CALIB_OPTION,
    eval_data: str | None = _EVAL_OPTION,
    data: str | None = opt.DATA_AS_EVAL,
    input_shape: list[str] | None = opt.INPUT_SHAPE,
    image_preprocess: str | None = IMAGE_PREPROCESS,
    overwrite: bool = _OVERWRITE_OPTION,
    external_data: bool | None = opt.EXTERNAL_DATA,
    external_threshold: int = opt.EXTERNAL_THRESHOLD,
    json_output: bool = _JSON_OPTION,
) -> None:
    """Apply RECIPE to MODEL, check the gates, write OUTPUT and the report."""
    _check_output(model, output, overwrite)
    result = api.run(
        recipe,
        model,
        output=output,
        report_dir=report,
        calib=calib,
        eval_data=opt.eval_or_data(eval_data, data),
        overwrite=overwrite,
        progress=_progress,
        input_shapes=input_shape or None,
        external_data=external_data,
        external_threshold=external_threshold,
        image_preprocess=image_preprocess,
        notice=_notice,
    )
    _finish(result, output, report, json_output)


@app.command("search")
def search_command(
    recipe: str = typer.Argument(
        ..., metavar="RECIPE", help=_RECIPE_HELP + " Its search table lists the grid."
    ),
    model: Path = _MODEL,
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the winner."),
    report: Path | None = _REPORT_OPTION,
    calib: str | None = _CALIB_OPTION,
    eval_data: str | None = _EVAL_OPTION,
    data: str | None = opt.DATA_AS_EVAL,
    input_shape: list[str] | None = opt.INPUT_SHAPE,
    image_preprocess: str | None = IMAGE_PREPROCESS,
    jobs: int | None = typer.Option(
        None, "--jobs", "-j", min=1, help="Local worker processes (default: CPUs, at most 4)."
    ),
    ray: str | None = typer.Option(
        None, "--ray", help="Run candidates as Ray tasks: a cluster ADDRESS, `auto`, or `local`."
    ),
    overwrite: bool = _OVERWRITE_OPTION,
    external_data: bool | None = opt.EXTERNAL_DATA,
    external_threshold: int = opt.EXTERNAL_THRESHOLD,
    json_output: bool = _JSON_OPTION,
) -> None:
    """Try RECIPE's grid on MODEL, keep the smallest (or fastest) candidate that passes."""
    _check_output(model, output, overwrite)
    result = api.search(
        recipe,
        model,
        output=output,
        report_dir=report,
        calib=calib,
        eval_data=opt.eval_or_data(eval_data, data),
        jobs=jobs,
        ray_address=ray,
        overwrite=overwrite,
        progress=_progress,
        input_shapes=input_shape or None,
        external_data=external_data,
        external_threshold=external_threshold,
        image_preprocess=image_preprocess,
        notice=_notice,
    )
    _finish(result, output, report, json_output)


def _finish(result, output: Path, report: Path | None, json_output: bool) -> None:  # type: ignore[no-untyped-def]
    if json_output:
        print_json(result.to_dict())
    else:
        _print(result, output, report)
    if not result.passed:
        failed = "; ".join(f"{g.name}: {g.reason}" for g in result.failed_gates)
        raise GateFailed(
            f"gate failed: {failed} (model written to {output}"
            + (f", report in {report})" if report else ")"),
            report=result,
        )


def _print(result, output: Path, report: Path | None) -> None:  # type: ignore[no-untyped-def]
    data = result.to_dict()
    command = "search" if data.get("search") else "run"
    table = Table(title=f"onnxslim {command} ({escape(data['recipe']['source'])})")
    columns = ("step", "size", "gzip", "nodes", "top-1", "agree", "parity", "latency")
    for column in columns:
        table.add_column(column, justify="left" if column == "step" else "right")
    source = data["input"]
    table.add_row(
        "input",
        f"{source['bytes']:,}",
        _count(source.get("gzip_bytes")),
        str(source["nodes"]),
        _pct(source["top1"]),
        "",
        "",
        "1.00x",
    )
    for step in data["steps"]:
        table.add_row(
            f"{step['index']}: {escape(step['name'])}",
            f"{step['file_bytes']:,}",
            _count(step.get("gzip_bytes")),
            str(step["nodes"]),
            _pct(step["top1"]),
            _pct(step["agreement"]),
            "" if step["parity_error"] is None else f"{step['parity_error']:.3g}",
            f"{step['latency_ratio']:.2f}x" if step["latency_ratio"] else "",
        )
    out.print(table)
    if data.get("search"):
        search = data["search"]
        passed = sum(c["passed"] for c in search["candidates"])
        out.print(
            f"search ({search['objective']}): {passed}/{len(search['candidates'])} "
            f"candidates passed; winner #{search['winner']}: {search.get('winner_config')}"
        )
    for gate in data["gates"]:
        verdict = "[green]PASS[/]" if gate["passed"] else "[red]FAIL[/]"
        out.print(f"{verdict} {escape(gate['name'])}: {escape(gate['reason'])}")
    for step in data["steps"]:
        for warning in step["warnings"]:
            err.print(f"[yellow]warning[/] {escape(step['name'])}: {escape(warning)}")
    out.print(
        f"wrote {escape(str(output))}" + (f" and {escape(str(report))}/report.*" if report else "")
    )


def _count(value: int | None) -> str:
    return "" if value is None else f"{value:,}"


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.2%}"


@recipes_app.callback()
def recipes_list(ctx: typer.Context) -> None:
    """List the presets; `onnxslim recipes show NAME` prints one as an editable file."""
    if ctx.invoked_subcommand is not None:
        return
    table = Table(title="presets (onnxslim run NAME IN -o OUT)")
    table.add_column("name")
    table.add_column("description")
    for name in presets.names():
        table.add_row(name, escape(presets.description(name)))
    out.print(table)


@recipes_app.command("show")
def recipes_show(name: str = typer.Argument(..., help="Preset name.")) -> None:
    """Print preset NAME as a recipe file (redirect it to a .toml file and edit)."""
    sys.stdout.write(presets.text(name))
