"""`onnxslim cluster`: weight clustering (palettization) of a trained model, validated on ORT."""

from __future__ import annotations

import math
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

_INITS = ("optimal", "kmeans++", "density", "linear")


_MODEL = opt.model_argument("Trained ONNX model (never modified).")


@app.command("cluster")
def cluster_command(
    model: Path = _MODEL,
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the clustered model."),
    bits: int | None = typer.Option(
        None,
        "--bits",
        min=1,
        max=8,
        help="Bits per weight index: 2^B shared values per palette (1-8). By default a budget: "
        "at most the bytes uniform B stores, bits chosen per weight; exit 1 when that misses "
        "--target-error. Without it, the fewest bytes that meet the target. Exactly B in "
        "every weight with --allocation uniform (default there: 4).",
    ),
    allocation: str = typer.Option(
        "target",
        "--allocation",
        help="target (bits 2-8 and palettes per weight from measured sensitivities, the fewest "
        "bytes that meet --target-error), mixed (least measured error within the bytes of "
        "--bits, needs --calib) or uniform (--bits in every weight).",
    ),
    calib: str | None = typer.Option(
        None,
        "--calib",
        metavar="PATH",
        help="Calibration data (.npz of stacked samples, folder): "
        "turns on least-squares palette refinement.",
    ),
    eval_data: str | None = typer.Option(
        None,
        "--eval",
        metavar="PATH",
        help="Evaluation data; with a `labels` array the report gives top-1 accuracy, else parity.",
    ),
    init: str = typer.Option(
        "optimal",
        "--init",
        help="optimal (exact 1-D k-means by dynamic programming), "
        "kmeans++, density or linear (Lloyd from that start).",
    ),
    per_channel_groups: int | None = typer.Option(
        None,
        "--per-channel-groups",
        min=1,
        help="One palette per "
        "group of N output channels (1: per channel); default one "
        "palette per tensor.",
    ),
    refine: bool | None = typer.Option(
        None, "--refine/--no-refine", help="Refit palettes on --calib (default: on with --calib)."
    ),
    int8: bool = typer.Option(
        False,
        "--int8",
        help="Palette values on the int8 grid `onnxslim quantize` uses, "
        "so quantizing the result keeps the clusters exactly (implies per-channel "
        "palettes unless --per-channel-groups says otherwise).",
    ),
    mixed: bool = typer.Option(
        False,
        "--mixed",
        help="Choose bits (B-1 .. B+2) and palette granularity per weight from its measured "
        "effect on the outputs (needs --calib), within the bytes uniform --bits takes, or "
        "within --budget / --max-size.",
    ),
    budget: float | None = typer.Option(
        None,
        "--budget",
        help="With --mixed: bytes of the clustered weights as a fraction of their float bytes.",
    ),
    max_size: str | None = typer.Option(
        None,
        "--max-size",
        help="The file the result may take at most (implies --mixed): a fraction of the "
        "input file (1/6, 0.16) or a size (48000, 48kB, 1.5MB).",
    ),
    min_elements: int | None = typer.Option(
        None,
        "--min-elements",
        help="Leave smaller weights as they are (default 256; 16 with --mixed).",
    ),
    exclude: list[str] | None = typer.Option(
        None,
        "--exclude",
        metavar="PATTERN",
        help="Node or weight name pattern to leave unclustered (repeatable).",
    ),
    packing: str = typer.Option(
        "auto",
        "--packing",
        help="auto (UINT4/UINT2 where the opset has them, else bit planes), bits or uint8.",
    ),
    storage: str = typer.Option(
        "palette",
        "--storage",
        help="palette: packed indices + palette (small file, "
        "ORT expands it at load); dense: plain float initializers.",
    ),
    optimize: bool = typer.Option(
        True,
        "--optimize/--no-optimize",
        help="Run the lossless clean-up of `onnxslim "
        "optimize` first (folds BatchNorm into Conv, so the palettes hold the final "
        "weights).",
    ),
    keep_metadata: bool = typer.Option(
        False,
        "--keep-metadata",
        help="Keep exporter debug metadata (node "
        "stack traces, doc strings); by default it is dropped.",
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
    """Cluster the weights of MODEL into 2^B shared values each and write OUTPUT (palettized)."""
    if io.same_file(model, output) and not overwrite:  # one line, exit 2 (not a usage box)
        raise UsageError(f"{output}: output is the input model; pass --overwrite to replace it")
    io.check_output_folder(output.absolute().parent)  # before the work; created on save
    if allocation not in ("target", "mixed", "uniform"):
        raise typer.BadParameter(
            f"{allocation!r}: expected target, mixed or uniform", param_hint="--allocation"
        )
    sources = DataOptions(model, image_preprocess, input_shape)
    calib_source = sources.source(calib, "--calib")
    eval_data = opt.eval_or_data(eval_data, data)
    eval_source = sources.source(eval_data, "--eval" if data is None else "--data")
    sources.check_used()
    if init not in _INITS:
        raise typer.BadParameter(
            f"{init!r}: expected one of {', '.join(_INITS)}", param_hint="--init"
        )
    options: dict[str, Any] = {
        "allocation": allocation,
        "init": init,
        "exclude": tuple(exclude or ()),
        "packing": packing,
        "storage": storage,
        "int8_grid": int8,
        "effort": check_effort(effort),
    }
    if per_channel_groups is not None or int8:
        options.update(granularity="per-channel-group", group_size=per_channel_groups or 1)
    if refine is not None:
        options["refine"] = refine
    if min_elements is not None:
        options["min_elements"] = min_elements
    if mixed or max_size is not None:
        options["allocation"] = "mixed"
    if budget is not None:
        options["budget"] = budget
    if max_size is not None:
        options["max_size"] = parse_size(max_size, model.stat().st_size if model.is_file() else 0)
    with working("clustering and validating on ONNX Runtime"):
        result = api.cluster(
            model,
            bits=bits,
            calib=calib_source,
            eval_data=eval_source,
            verify=verify,
            runs=runs,
            max_drop=max_drop,
            target_error=target_error,
            input_shapes=input_shape or None,
            strip_metadata=not keep_metadata,
            optimize=optimize,
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
    """What to try when the target was missed: with --bits asked for, the weights that broke
    it and the budget the search found within the target."""
    if request is None:
        return _ADVICE
    blamed = ", ".join(
        f"{b['weight']} ({b['form']}, {b['error_share']:.0%} of the measured error)"
        for b in request["blamed"]
    )
    reached = request["reached_bytes"]
    return (
        f"the budget of --bits {request['bits']} ({request['budget_bytes']:,} bytes of weights) "
        "breaks it"
        + (f" at {blamed}" if blamed else "")
        + (
            f"; the target held from {reached:,} bytes (leave --bits out to get that)"
            if reached >= 0
            else ""
        )
        + f"; {_ADVICE}"
    )


_ADVICE = (
    "try --bits one higher, --mixed (bits chosen per weight from measured errors), "
    "--per-channel-groups 1, or --exclude the layers that compute that output"
)


_UNITS = {"": 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2, "gb": 1000**3}


def parse_size(text: str, reference: int) -> int:
    """Bytes from '1/6' or '0.16' (fractions of `reference`) or '48000', '48kB', '1.5MB'."""
    spec = text.strip().lower().replace(" ", "")
    try:
        if "/" in spec:
            numerator, denominator = spec.split("/", 1)
            fraction = float(numerator) / float(denominator)
        else:
            number = spec.rstrip("kmgib")
            unit = spec[len(number) :]
            value = float(number)
            if unit not in _UNITS:
                raise ValueError(unit)
            if unit or value > 1:
                return int(value * _UNITS[unit])
            fraction = value
    except (ValueError, ZeroDivisionError):
        raise typer.BadParameter(
            f"{text!r}: expected a fraction of the input file (1/6, 0.16) or a size "
            "(48000, 48kB, 1.5MB)",
            param_hint="--max-size",
        ) from None
    if not 0 < fraction <= 1:
        raise typer.BadParameter(f"{text!r}: a fraction must be in (0, 1]", param_hint="--max-size")
    return int(fraction * reference)


def _db(relative_error: float) -> str:
    """A relative squared error as signal-to-noise in dB."""
    if relative_error <= 0:
        return "exact"
    return f"{-10 * math.log10(relative_error):.1f} dB"


def _print_report(result, model: Path, output: Path) -> None:  # type: ignore[no-untyped-def]
    layers = {row["weight"]: row for row in result.layers}
    title = (
        f"cluster {escape(model.name)}: {result.bits} bits, {1 << result.bits} values per palette"
        if result.allocation is None
        else f"cluster {escape(model.name)}: bits and palettes chosen per weight around "
        f"{result.bits}"
    )
    table = Table(title=title)
    for column in (
        "weight",
        "op",
        "shape",
        "bits",
        "palettes",
        "weight SNR",
        "layer error",
        "stored bytes",
    ):
        table.add_column(
            column,
            justify="left" if column in ("weight", "op", "shape", "layer error") else "right",
        )
    for row in result.weights:
        layer = layers.get(row["weight"])
        if layer is None or layer.get("skipped"):
            error = f"- ({layer['skipped']})" if layer and layer.get("skipped") else "-"
        elif layer["refit"]:
            error = f"{layer['error_before']:.2e} -> {layer['error_after']:.2e}"
        else:
            error = f"{layer['error_before']:.2e}"
        stored = f"{row['stored_bytes']:,} ({row['stored_bytes'] / row['dense_bytes']:.2f}x)"
        table.add_row(
            escape(row["weight"]),
            ",".join(row["ops"]),
            "x".join(map(str, row["shape"])),
            str(row["bits"]),
            str(row["groups"]),
            _db(row["weight_error"]),
            escape(error),
            stored,
        )
    out.print(table)
    b, a = result.size_before, result.size_after
    formats = sorted({row["index_format"] for row in result.weights})
    out.print(
        f"clustered tensors: {len(result.weights)}, "
        f"stored in {result.weight_ratio:.3f}x their float bytes "
        f"(indices: {', '.join(formats) or '-'})"
    )
    out.print(
        f"size raw  {b.raw:,} -> {a.raw:,} bytes ({a.raw / b.raw:.3f}x, 1/{b.raw / a.raw:.1f})"
    )
    out.print(f"size gzip {b.gzip:,} -> {a.gzip:,} bytes ({a.gzip / b.gzip:.3f}x)")
    if result.size_before_stripped is not None:
        s = result.size_before_stripped
        out.print(
            f"  (debug metadata dropped; the original without it: {s.raw:,} bytes, ratio "
            f"{a.raw / s.raw:.3f}x)"
        )
    if result.allocation is not None:
        a = result.allocation
        elements = sum(row["elements"] for row in result.weights)
        mean_bits = sum(row["bits"] * row["elements"] for row in result.weights) / max(elements, 1)
        out.print(
            f"mixed allocation: weights {a['chosen_bytes']:,} bytes of a {a['budget_bytes']:,} "
            f"budget (uniform {result.bits} bits: {a['uniform_bytes']:,}); output error "
            f"{a['chosen_error']:.2e} (uniform {a['uniform_error']:.2e}); {mean_bits:.2f} bits "
            "per clustered weight on average"
        )
    if result.search is not None:
        tried = ", ".join(
            f"{t['bits_per_weight']:.2f} {'ok' if t['passed'] else 'missed'}"
            for t in result.search["trials"]
        )
        out.print(
            f"at the target: {result.bits_per_weight:.2f} bits per clustered weight "
            f"(tried, in bits per weight: {tried})"
        )
    print_comparison(result, "clustered", " (palettes expand here)")
    out.print(f"onnx.checker: {escape(result.checker)}")
    by_reason: dict[str, list[str]] = {}
    for entry in result.skipped:
        by_reason.setdefault(entry["reason"], []).append(entry["name"])
    for reason, names in by_reason.items():
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        err.print(f"[dim]not clustered ({escape(reason)}): {escape(shown)}[/]")
    for note in result.notes:
        err.print(f"[dim]{escape(note)}[/]")
    for warning in result.warnings:
        err.print(f"[yellow]warning[/] {escape(warning)}")
    print_gate(result, output)
