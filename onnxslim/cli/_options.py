"""Options several commands share: one definition each, so names, units and help agree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx_ir as ir
import typer

from onnxslim import io
from onnxslim.errors import UsageError

EXTERNAL_DATA = typer.Option(
    None,
    "--external-data/--no-external-data",
    help="Store the weights in OUTPUT.data beside the model (default: when the input had "
    "external data or the weights pass 2 GB, which a single .onnx file cannot hold).",
)
EXTERNAL_THRESHOLD = typer.Option(
    io.EXTERNAL_THRESHOLD_BYTES,
    "--external-threshold",
    min=0,
    metavar="BYTES",
    help="With external data: tensors smaller than this stay inside the .onnx file.",
)
INPUT_SHAPE = typer.Option(
    None,
    "--input-shape",
    metavar="NAME:D1,D2,...",
    help="Fix a dynamic input's shape, e.g. x:1,3,224,224 (repeatable).",
)
MAX_SAMPLES = typer.Option(
    None, "--max-samples", min=1, metavar="N", help="Use at most N samples of the data."
)
VERIFY = typer.Option(
    True, "--verify/--no-verify", help="Check the result against the input model on ORT."
)
OVERWRITE = typer.Option(False, "--overwrite", help="Allow the output to replace the input file.")
JSON = typer.Option(False, "--json", help="Print the report as JSON.")
WRITE_ANYWAY = typer.Option(
    False,
    "--write-anyway",
    help="Write the result even when the final check fails (the exit code is still 1).",
)
DATA_AS_EVAL = typer.Option(
    None,
    "--data",
    metavar="PATH",
    help="Feeds the measurements run on (.npz or folder; with `labels`: top-1), as in the "
    "other commands: the same as --eval, give one of them.",
)


def eval_or_data(eval_data: str | None, data: str | None) -> str | None:
    """--data is --eval under the name the other commands use."""
    if eval_data is not None and data is not None and eval_data != data:
        raise UsageError("--data and --eval name the same feeds: give one of them")
    return eval_data if eval_data is not None else data


# The old spelling of --write-anyway (optimize, export) and --requantize (quantize).
FORCE = typer.Option(False, "--force", hidden=True)


def model_argument(help_text: str) -> Any:
    """The input model argument, shown as MODEL in every usage line."""
    return typer.Argument(..., metavar="MODEL", help=help_text)


def save_model(
    model: ir.Model,
    output: Path,
    *,
    source: Path,
    overwrite: bool,
    external_data: bool | None = None,
    threshold: int = io.EXTERNAL_THRESHOLD_BYTES,
) -> Path:
    """Write atomically with the command's external-data choice; returns the path written."""
    return io.save(
        model,
        output,
        source=source,
        overwrite=overwrite,
        external_data=external_data,
        size_threshold=threshold,
    )


def written_bytes(output: Path) -> int:
    """The file's size plus its external data file, if one was written beside it."""
    data = output.with_name(output.name + ".data")
    return output.stat().st_size + (data.stat().st_size if data.is_file() else 0)
