"""`onnxslim quantize --max-drop`: the accuracy-aware mode's CLI side (called from cli/quantize.py).

Writes the best model found AND its per-layer sensitivity table (OUTPUT with the
suffix `.sensitivity.json`) before deciding the exit code, so a missed target
(exit 1, GateFailed) still leaves both on disk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from onnxslim import api
from onnxslim.calibration import FeedSource
from onnxslim.cli._app import err, out, print_json
from onnxslim.cli._options import save_model
from onnxslim.errors import GateFailed, UsageError
from onnxslim.outputs import is_classifier_output
from onnxslim.passes.fold import FixInputShapes
from onnxslim.passes.quantize.static import QuantizeStatic
from onnxslim.workflows.accuracy_aware import quantize_accuracy_aware


def table_path(output: Path) -> Path:
    return output.with_name(output.name + ".sensitivity.json")


def run(
    model: Path,
    output: Path,
    *,
    calib: FeedSource | None,
    eval_data: str | None,
    max_drop: float,
    options: dict[str, Any],
    overwrite: bool,
    json_output: bool,
    progress: Any = None,
    mode: str = "static",
    save: dict[str, Any] | None = None,
    record: dict[str, Any] | None = None,
    input_shapes: list[str] | None = None,
) -> None:
    """Quantize with fallback to float until the top-1 drop on `eval_data` is at most
    `max_drop` points; `save` holds the external-data choice for the written model,
    `record` what the JSON report adds (the image preprocessing applied)."""
    if mode != "static":
        raise UsageError(f"--max-drop works with --mode static, not {mode}")
    if calib is None:
        raise UsageError("--max-drop needs calibration data (--calib)")
    if eval_data is None:
        raise UsageError(
            "--max-drop needs a labelled evaluation set (--eval DATA.npz with a `labels` array)"
        )
    if not 0.0 <= max_drop <= 100.0:
        raise UsageError(f"--max-drop {max_drop:g}: expected points in [0, 100] (1 = one point)")
    known = {k: v for k, v in options.items() if k in QuantizeStatic.__dataclass_fields__}
    try:
        static_options = QuantizeStatic(**known)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from exc

    def step(layer: str, index: int, total: int) -> None:
        if progress is not None:
            progress("sensitivity", index + 1, total)

    float_model = api.as_model(model)
    if input_shapes:
        FixInputShapes(shapes=tuple(input_shapes))(float_model)
    result = quantize_accuracy_aware(
        float_model,
        calib,
        max_drop=max_drop / 100.0,
        eval_data=eval_data,
        options=static_options,
        on_step=step,
    )
    save_model(result.model, output, source=model, overwrite=overwrite, **(save or {}))
    table_file = table_path(output)
    table_file.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    if json_output:
        print_json(
            {
                "input": str(model),
                "output": str(output),
                "sensitivity_table": str(table_file),
                **result.to_dict(),
                "max_drop_points": max_drop,
                **(record or {}),
            }
        )
    else:
        _print(result, output, table_file)
    if not result.met:
        scored = _scored_output(float_model)
        raise GateFailed(
            f"top-1 drop {result.drop * 100:.2f} pt"
            + (f" on output {scored!r}" if scored else "")
            + f" exceeds --max-drop {max_drop:.2f} pt even with {len(result.excluded)} layer(s) "
            "float; next: --method entropy or percentile, --mode dynamic for transformers and "
            f"LSTMs, or a looser --max-drop; best model written to {output}, table to "
            f"{table_file}",
            report=result.to_dict(),
        )


def _scored_output(model: Any) -> str | None:
    """The output top-1 is read on (the first classifier-shaped one), from declared shapes."""
    for value in model.graph.outputs:
        dims = None if value.shape is None else list(value.shape.dims)
        dtype = None if value.dtype is None else value.dtype.name
        if is_classifier_output(value.name or "", dims, dtype):
            return value.name
    return None


def _print(result: Any, output: Path, table_file: Path) -> None:
    table = Table(title=f"accuracy-aware int8 (max drop {result.max_drop * 100:.2f} pt)")
    for column in ("layer", "top-1 if float", "gain", "float in result"):
        table.add_column(column, justify="left" if column == "layer" else "right")
    kept = set(result.excluded)
    for row in result.table[:20]:
        table.add_row(
            escape(row.layer),
            f"{row.metric:.4f}",
            f"{row.gain * 100:+.2f} pt",
            "yes" if row.layer in kept else "",
        )
    if result.table:
        out.print(table)
    out.print(
        f"top-1: float {result.float_metric:.4f}, all int8 {result.int8_metric:.4f}, result "
        f"{result.metric:.4f} ({-result.drop * 100:+.2f} pt) with {len(result.excluded)} "
        "layer(s) float; "
        f"{result.evaluations} evaluations in {result.seconds:.1f} s"
    )
    if not result.met:
        err.print("[red]target missed[/]: the best model found is written anyway")
    out.print(f"wrote {escape(str(output))} and {escape(str(table_file))}")
