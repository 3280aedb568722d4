"""`onnxslim inspect`: what a model is made of.

(The module is named inspect_cmd to keep clear of the standard library's inspect.)
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from onnxslim import api
from onnxslim.cli._app import app, out, print_json
from onnxslim.feeds import parse_input_shapes
from onnxslim.inspection import ModelSummary


@app.command("inspect")
def inspect_command(
    model: Path = typer.Argument(
        ..., metavar="MODEL", help="ONNX model to describe (never modified)."
    ),
    input_shape: list[str] | None = typer.Option(
        None,
        "--input-shape",
        metavar="NAME:D1,D2,...",
        help="Pin free input dimensions for the MAC estimate, e.g. x:1,3,224,224 (repeatable); "
        "free dimensions count as 1 otherwise.",
    ),
    top: int = typer.Option(
        0, "--top", min=0, help="Show only the N most frequent ops in the histogram (0: all)."
    ),
    json_output: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Describe MODEL: opsets, inputs/outputs, op histogram, parameters, MACs, size.

    The op histogram and parameters include subgraphs and functions; MACs of
    Conv/ConvTranspose/MatMul/Gemm (and RNNs) are estimated from inferred shapes.
    """
    summary = api.inspect(model, input_shapes=parse_input_shapes(input_shape))
    if json_output:
        print_json(summary.to_dict())
        return
    render(summary, top=top)


def render(summary: ModelSummary, *, top: int = 0) -> None:
    overview = Table(title=escape(f"inspect {summary.path or 'model'}"), show_header=False)
    overview.add_column("what", style="bold")
    overview.add_column("value")
    if summary.file_bytes is not None:
        # file_bytes counts the external data files too: more than the .onnx file means some.
        external = (
            summary.path is not None and summary.file_bytes > Path(summary.path).stat().st_size
        )
        overview.add_row(
            "file size",
            f"{human_bytes(summary.file_bytes)} ({summary.file_bytes:,} bytes"
            + (", external data included)" if external else ")"),
        )
    overview.add_row("IR version", str(summary.ir_version))
    overview.add_row("producer", escape(summary.producer) or "-")
    overview.add_row(
        "opset imports", escape(", ".join(f"{d} {v}" for d, v in summary.opset_imports.items()))
    )
    graphs = (
        f"{summary.main_graph_nodes} in the main graph, {summary.subgraphs} subgraph(s), "
        f"{summary.functions} function(s)"
    )
    overview.add_row("nodes", f"{summary.nodes} ({graphs})")
    overview.add_row(
        "parameters",
        f"{summary.parameter_count:,} elements, {human_bytes(summary.parameter_bytes)}",
    )
    by_op = ", ".join(f"{op} {_count(n)}" for op, n in summary.macs_by_op.items())
    macs = "unknown" if summary.macs is None else f"{_count(summary.macs)} ({by_op})"
    overview.add_row("estimated MACs", macs)
    for note in summary.macs_notes:
        overview.add_row("", f"[dim]{escape(note)}[/]")
    quant_ops = ", ".join(f"{op} x{n}" for op, n in summary.quantization_ops.items())
    quantized = escape(f"yes: {quant_ops}") if summary.quantized else "no"
    overview.add_row("already quantized", quantized)
    if summary.initializer_inputs:
        overview.add_row("initializers as inputs", str(summary.initializer_inputs))
    out.print(overview)

    interface = Table(title="inputs and outputs")
    interface.add_column("kind")
    interface.add_column("name", overflow="fold")
    interface.add_column("type")
    for kind, infos in (("input", summary.inputs), ("output", summary.outputs)):
        for info in infos:
            interface.add_row(kind, escape(info.name), escape(info.describe()))
    out.print(interface)

    params = Table(title="parameters per dtype (initializers and constant tensors)")
    for column in ("dtype", "tensors", "elements", "bytes"):
        params.add_column(column, justify="left" if column == "dtype" else "right")
    for dtype, stats in summary.parameters.items():
        params.add_row(dtype, str(stats.tensors), f"{stats.elements:,}", human_bytes(stats.bytes))
    out.print(params)

    histogram = Table(title="op histogram (subgraphs and functions included)")
    histogram.add_column("op", overflow="fold")
    histogram.add_column("count", justify="right")
    items = list(summary.op_histogram.items())
    for op, n in items[:top] if top else items:
        histogram.add_row(escape(op), str(n))
    if top and len(items) > top:
        histogram.caption = f"{len(items) - top} more op types; --top 0 shows all"
    out.print(histogram)


def _count(value: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f}{unit}"
    return str(value)


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"
