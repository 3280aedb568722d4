"""`onnxslim prune`: unstructured, N:M or channel pruning of a trained model, validated on ORT."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from onnxslim import api, io
from onnxslim.cli import _options as opt
from onnxslim.cli._app import app, err, out
from onnxslim.cli._compared import (
    MAX_DROP,
    RUNS,
    print_comparison,
    print_gate,
    working,
    write_and_report,
)
from onnxslim.cli._data import IMAGE_PREPROCESS, DataOptions
from onnxslim.cli._target import check_effort, effort_option, target_option
from onnxslim.errors import UsageError


def _parse_nm(text: str) -> tuple[int, int]:
    n, sep, m = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return int(n), int(m)
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected N:M such as 2:4", param_hint="--nm") from None


_MODEL = opt.model_argument("Trained ONNX model (never modified).")


@app.command("prune")
def prune_command(
    model: Path = _MODEL,
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the pruned model."),
    sparsity: float | None = typer.Option(
        None,
        "--sparsity",
        help="magnitude: fraction of weights zeroed, at most (default: the most, up to 0.9, "
        "that meets --target-error; exit 1 when the target holds only below it; exactly "
        "with --allocation uniform/sensitivity, default 0.5); channels: fraction of "
        "channels removed per group (default 0.5).",
    ),
    method: str = typer.Option(
        "magnitude", "--method", help="magnitude (unstructured), nm (N:M) or channels."
    ),
    nm: str = typer.Option("2:4", "--nm", help="N:M pattern for --method nm."),
    calib: str | None = typer.Option(
        None,
        "--calib",
        metavar="PATH",
        help="Calibration data (.npz of stacked samples, folder): "
        "turns on least-squares reconstruction.",
    ),
    eval_data: str | None = typer.Option(
        None,
        "--eval",
        metavar="PATH",
        help="Evaluation data; with a `labels` array the report gives top-1 accuracy, else parity.",
    ),
    reconstruct: bool | None = typer.Option(
        None,
        "--reconstruct/--no-reconstruct",
        help="Refit kept weights on --calib (default: on with --calib).",
    ),
    exclude: list[str] | None = typer.Option(
        None,
        "--exclude",
        metavar="PATTERN",
        help="Node or weight name pattern to leave unpruned (repeatable).",
    ),
    scope: str = typer.Option(
        "per-layer", "--scope", help="magnitude: per-layer or global threshold."
    ),
    allocation: str = typer.Option(
        "target",
        "--allocation",
        help="magnitude: target (per-layer sparsities from measured sensitivities, the most "
        "that meets --target-error), uniform, or sensitivity (exactly --sparsity, "
        "measured on --calib).",
    ),
    importance: str = typer.Option(
        "l2", "--importance", help="channels: l1, l2 or activation (needs --calib)."
    ),
    multiple: int = typer.Option(
        0,
        "--multiple",
        help="channels: keep counts a multiple of this (0: ORT's NCHWc block on this CPU).",
    ),
    min_elements: int = typer.Option(1024, "--min-elements", help="Leave smaller weights dense."),
    storage: str = typer.Option(
        "packed",
        "--storage",
        help="packed: sparse weights as values + bitmask (smaller "
        "file, ORT expands them at load); dense: plain initializers.",
    ),
    max_drop: float | None = MAX_DROP,
    runs: int = RUNS,
    verify: bool = opt.VERIFY,
    overwrite: bool = opt.OVERWRITE,
    external_data: bool | None = opt.EXTERNAL_DATA,
    external_threshold: int = opt.EXTERNAL_THRESHOLD,
    image_preprocess: str | None = IMAGE_PREPROCESS,
    json_output: bool = opt.JSON,
    target_error: float = target_option(),
    data: str | None = opt.DATA_AS_EVAL,
    input_shape: list[str] | None = opt.INPUT_SHAPE,
    effort: str = effort_option(),
) -> None:
    """Prune MODEL and write OUTPUT; the report compares it with the original on ONNX Runtime."""
    if io.same_file(model, output) and not overwrite:  # one line, exit 2 (not a usage box)
        raise UsageError(f"{output}: output is the input model; pass --overwrite to replace it")
    io.check_output_folder(output.absolute().parent)  # before the work; created on save
    sources = DataOptions(model, image_preprocess, input_shape)
    calib_source = sources.source(calib, "--calib")
    eval_data = opt.eval_or_data(eval_data, data)
    eval_source = sources.source(eval_data, "--eval" if data is None else "--data")
    sources.check_used()
    if sparsity is not None and not 0 <= sparsity < 1:
        raise typer.BadParameter(f"{sparsity}: expected 0 <= S < 1", param_hint="--sparsity")
    options: dict[str, Any] = {"exclude": tuple(exclude or ())}
    if reconstruct is not None:
        options["reconstruct"] = reconstruct
    if method == "magnitude":
        if scope == "global" and allocation == "target":  # one threshold: exactly --sparsity
            allocation = "uniform"
        options.update(
            scope=scope,
            allocation=allocation,
            min_elements=min_elements,
            effort=check_effort(effort),
        )
    elif method == "nm":
        options["n"], options["m"] = _parse_nm(nm)
        options["min_elements"] = min_elements
    elif method == "channels":
        options.update(importance=importance, multiple=multiple)
    else:
        raise typer.BadParameter(
            f"{method!r}: expected magnitude, nm or channels", param_hint="--method"
        )
    with working("pruning and validating on ONNX Runtime"):
        result = api.prune(
            model,
            method=method,
            sparsity=sparsity,
            calib=calib_source,
            eval_data=eval_source,
            storage=storage,
            verify=verify,
            max_drop=max_drop,
            target_error=target_error,
            input_shapes=input_shape or None,
            runs=runs,
            **options,
        )
    write_and_report(
        result,
        model=model,
        output=output,
        overwrite=overwrite,
        external_data=external_data,
        threshold=external_threshold,
        json_output=json_output,
        sources=sources,
        print_report=_print_report,
        advice=_advice(result.request),
        max_drop_advice=_ADVICE.removeprefix("try "),
    )


def _advice(request: dict[str, Any] | None) -> str:
    """What to try when the target was missed: with a --sparsity asked for, the layers that
    broke it and the most the search found within the target."""
    if request is None:
        return _ADVICE
    blamed = ", ".join(
        f"{b['layer']} ({b['sparsity']:.0%} sparse, {b['error_share']:.0%} of the measured error)"
        for b in request["blamed"]
    )
    return (
        f"--sparsity {request['sparsity']:g} breaks it"
        + (f" at {blamed}" if blamed else "")
        + f"; {request['reached']:.0%} met it in the search (leave --sparsity out to get the "
        "most that does), or --exclude those layers"
    )


_ADVICE = (
    "try a lower --sparsity, --calib data for the least-squares refit, "
    "--allocation target, or --exclude the layers that compute that output"
)


def _print_report(result, model: Path, output: Path) -> None:  # type: ignore[no-untyped-def]
    table = Table(title=f"prune {escape(model.name)} ({result.method})")
    for column in ("layer", "op", "weight", "after", "sparsity", "removed"):
        table.add_column(column, justify="right" if column in ("sparsity", "removed") else "left")
    for row in result.layers:
        after = "x".join(map(str, row.shape_after)) if row.shape_after else "-"
        table.add_row(
            escape(row.name),
            row.op_type,
            "x".join(map(str, row.shape_before)),
            after,
            f"{row.sparsity:.1%}",
            f"{row.reduction:.1%}",
        )
    out.print(table)
    b, a = result.size_before, result.size_after
    out.print(f"weights removed or zeroed: {result.sparsity:.1%} of all layer weights")
    if result.search is not None:
        tried = ", ".join(
            f"{t['sparsity']:.0%} {'ok' if t['passed'] else 'missed'}"
            for t in result.search["trials"]
        )
        out.print(
            f"at the target: {result.search['reached']:.0%} of the prunable weights (up to "
            f"{result.search['requested']:.0%}); tried {tried}"
        )
    out.print(f"size raw  {b.raw:,} -> {a.raw:,} bytes ({a.raw / b.raw:.2f}x)")
    out.print(f"size gzip {b.gzip:,} -> {a.gzip:,} bytes ({a.gzip / b.gzip:.2f}x)")
    print_comparison(result, "pruned")
    refit = [r for r in result.details.get("refit", []) if not r["skipped"]]
    if refit:
        before = sum(r["error_before"] for r in refit) / len(refit)
        after = sum(r["error_after"] for r in refit) / len(refit)
        out.print(
            f"reconstruction: {len(refit)} layers refit, "
            f"mean layer error {before:.4f} -> {after:.4f}"
        )
    for entry in result.details.get("groups", []):
        if entry["reason"] and entry["producers"]:
            err.print(
                f"[dim]kept whole: {escape(', '.join(entry['producers']))} "
                f"({escape(entry['reason'])})[/]"
            )
    for warning in result.warnings:
        err.print(f"[yellow]warning[/] {escape(warning)}")
    print_gate(result, output)
