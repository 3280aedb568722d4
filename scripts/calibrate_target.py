"""Measure how decision disagreement grows with output error on the devmodels.

What justifies the default target (onnxslim.agreement): every float devmodel has
its weights rounded to B bits (per tensor, symmetric uniform; B = 8 .. 2), both
models run on ONNX Runtime on realistic held-out feeds (devmodels' inputs.make_feeds),
and each output's role, decision figure and relative RMS error are printed. The
smallest relative error at which a decision output reaches one point of
disagreement is REGRESSION_ERROR_PER_POINT.

    python scripts/calibrate_target.py [--feeds 16] [--bits 8,6,5,4,3,2] [--only id,...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import onnx_ir as ir

from onnxslim import agreement
from onnxslim.runtime import Session

CACHE = Path(os.environ.get("DEVMODELS_DIR", "~/.cache/devmodels")).expanduser()
FLOAT_MODELS = (
    "open_nsfw_resnet",
    "centerface",
    "captcha_crnn",
    "minilm_l3_paraphrase",
    "rxnmap_graph_transformer",
    "lac_bigru",
    "name_romanizer_decoder",
)


def round_rows(array: np.ndarray, bits: int) -> np.ndarray:
    """Symmetric uniform rounding with one scale per row of axis 0 (2^(bits-1) - 1 levels)."""
    levels = 2 ** (bits - 1) - 1
    rows = array.reshape(array.shape[0], -1)
    scale = np.abs(rows).max(1, keepdims=True) / levels
    scale = np.where(scale > 0, scale, 1.0)
    return (np.round(rows / scale) * scale).reshape(array.shape).astype(np.float32)


def rounded(model: ir.Model, bits: int) -> ir.Model:
    """A copy with every float weight of >= 256 values rounded at `bits` (see round_rows)."""
    copy = model.clone()
    for value in list(copy.graph.initializers.values()):
        array = value.const_value.numpy() if value.const_value is not None else None
        if array is None or array.dtype != np.float32 or array.size < 256 or array.ndim < 2:
            continue
        value.const_value = ir.tensor(round_rows(array, bits), name=value.name)
    for node in copy.graph:
        if node.op_type == "Constant" and "value" in node.attributes:
            array = node.attributes["value"].as_tensor().numpy()
            if array.dtype == np.float32 and array.size >= 256 and array.ndim >= 2:
                node.attributes["value"] = ir.AttrTensor(
                    "value", ir.tensor(round_rows(array, bits))
                )
    return copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feeds", type=int, default=16)
    parser.add_argument("--bits", default="8,6,5,4,3,2")
    parser.add_argument("--only", default="")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared" / "devmodels"))
    from inputs import make_feeds  # type: ignore[import-not-found]

    ids = args.only.split(",") if args.only else FLOAT_MODELS
    rows = []
    for model_id in ids:
        path = CACHE / f"{model_id}.onnx"
        if not path.is_file():
            print(f"{model_id}: not fetched", file=sys.stderr)
            continue
        model = ir.load(path)
        feeds = make_feeds(model_id, args.feeds, seed=1)  # seed 1: not the calibration feeds
        reference = [Session(model).run(f) for f in feeds]
        roles = agreement.detect_roles(model, reference)
        for bits in [int(b) for b in args.bits.split(",")]:
            candidate = [Session(rounded(model, bits)).run(f) for f in feeds]
            result = agreement.assess(reference, candidate, roles=roles)
            for fig in result.figures:
                sqnr = fig.detail.get("sqnr_db", math.inf)
                rel = 0.0 if sqnr == math.inf else 10 ** (-sqnr / 20)
                row = {
                    "model": model_id,
                    "output": fig.name,
                    "role": fig.role,
                    "bits": bits,
                    "figure": fig.value,
                    "unit": fig.unit,
                    "decisions": fig.decisions,
                    "relative_error": rel,
                }
                rows.append(row)
                print(
                    f"{model_id:26s} {fig.name[:16]:16s} {fig.role:10s} {bits}b "
                    f"{fig.value:8.2f} {fig.unit:6s} n={fig.decisions:<6d} rel.err {rel:.4f}",
                    flush=True,
                )
    decision = [r for r in rows if r["unit"] == "points" and r["relative_error"] > 0]
    crossing = [r["relative_error"] for r in decision if r["figure"] >= 1.0]
    if crossing:
        print(f"smallest relative error with >= 1 point of disagreement: {min(crossing):.4f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
