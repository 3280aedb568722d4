"""Tolerance presets for comparing a candidate model with its reference.

`float` is numpy's allclose rule at atol = rtol = 1e-5: what a lossless rewrite must
meet. A reduced-precision model cannot meet it, so `fp16` and `int8` judge each
output on its own scale: the largest absolute error must be at most a fraction of
the reference output's largest magnitude (1% for fp16, 10% for int8), and int8 also
needs cosine similarity >= 0.99. `exact` wants bit-identical outputs. The default
(`auto`) picks by what the candidate holds: int8 for quantized ops, fp16 for float16
weights, float otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import onnx_ir as ir

from onnxslim.graphs import iter_nodes, iter_tensors
from onnxslim.parity import OutputParity

# Ops that mean the model computes in integers (as inspection counts them).
_INT8_OPS = frozenset(
    {"QuantizeLinear", "DequantizeLinear", "MatMulInteger", "ConvInteger", "MatMulNBits"}
)
_INT8_PREFIXES = ("QLinear", "DynamicQuantize", "QOrdered")


@dataclass(frozen=True)
class Tolerance:
    """One preset: how far a candidate output may be from the reference output."""

    name: str
    atol: float  # allclose absolute tolerance (float, exact)
    rtol: float  # allclose relative tolerance (float, exact)
    scaled: float | None = None  # max abs error / the output's largest magnitude (fp16, int8)
    min_cosine: float = -1.0
    rule: str = ""

    def accepts(self, output: OutputParity) -> bool:
        """Whether `output`'s figures meet this preset (allclose presets: their own verdict)."""
        if self.name == "exact":
            return output.max_abs == 0
        if self.scaled is None:
            return output.passed
        return output.max_rel <= self.scaled and output.cosine >= self.min_cosine


PRESETS: dict[str, Tolerance] = {
    t.name: t
    for t in (
        Tolerance("exact", 0.0, 0.0, rule="bit-identical outputs"),
        Tolerance("float", 1e-5, 1e-5, rule="|cand - ref| <= 1e-5 + 1e-5 * |ref| everywhere"),
        Tolerance(
            "fp16", 1e-2, 1e-2, scaled=1e-2, rule="max error <= 1% of the output's largest value"
        ),
        Tolerance(
            "int8",
            1e-1,
            1e-1,
            scaled=0.1,
            min_cosine=0.99,
            rule="max error <= 10% of the output's largest value and cosine >= 0.99",
        ),
    )
}
NAMES = ("auto", *PRESETS)


def for_model(model: ir.Model) -> tuple[Tolerance, str]:
    """The preset `auto` picks for a candidate, and why."""
    for node in iter_nodes(model):
        if node.op_type in _INT8_OPS or node.op_type.startswith(_INT8_PREFIXES):
            return PRESETS["int8"], f"the candidate holds {node.op_type} ops"
    for _, tensor in iter_tensors(model):
        if tensor.dtype in (ir.DataType.FLOAT16, ir.DataType.BFLOAT16):
            return PRESETS["fp16"], f"the candidate holds {tensor.dtype.name.lower()} weights"
    return PRESETS["float"], "a float candidate"


def tightest_fit(outputs: Sequence[OutputParity], *, atol: float, rtol: float) -> Tolerance | None:
    """The tightest preset every output meets (None: not even int8).

    `outputs` were judged at `atol`/`rtol`; the float preset's verdict is only known
    when those are its own figures, so otherwise the largest error must be under its atol.
    """
    for tolerance in PRESETS.values():
        if tolerance.name == "float" and (atol, rtol) != (tolerance.atol, tolerance.rtol):
            fits = all(o.max_abs <= tolerance.atol for o in outputs)
        else:
            fits = all(tolerance.accepts(o) for o in outputs)
        if fits and outputs:
            return tolerance
    return None
