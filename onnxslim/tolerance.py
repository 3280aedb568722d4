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

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import onnx_ir as ir

from onnxslim.errors import UsageError
from onnxslim.graphs import iter_nodes, iter_tensors
from onnxslim.parity import OutputParity
from onnxslim.suggest import did_you_mean
from onnxslim.validation import ValidationReport

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


def resolve(
    name: str, candidate: ir.Model | None, atol: float | None, rtol: float | None
) -> tuple[Tolerance, str]:
    """The preset in force and why: atol/rtol win, then `name`, then (auto) CAND's content."""
    if atol is not None or rtol is not None:
        custom = Tolerance(
            "custom",
            1e-5 if atol is None else atol,
            1e-5 if rtol is None else rtol,
            rule="|cand - ref| <= atol + rtol * |ref| everywhere",
        )
        return custom, "--atol/--rtol given"
    if name == "auto":
        if candidate is None:
            return PRESETS["float"], "auto: no candidate model to look at"
        picked, why = for_model(candidate)
        return picked, f"auto: {why}"
    if name not in PRESETS:
        raise UsageError(
            f"tolerance {name!r}: expected one of {', '.join(NAMES)}{did_you_mean(name, NAMES)}"
        )
    return PRESETS[name], f"--tolerance {name}"


def note(tolerance: Tolerance, why: str) -> str:
    """The report's note naming the preset in force and why it was chosen."""
    return f"tolerance {tolerance.name}: {tolerance.rule} ({why})"


def apply(report: ValidationReport, tolerance: Tolerance) -> None:
    """Scale-relative presets (fp16, int8) and exact decide each output's verdict."""
    if tolerance.scaled is not None or tolerance.name == "exact":
        report.outputs = [
            dataclasses.replace(o, passed=tolerance.accepts(o)) for o in report.outputs
        ]


def failure_message(report: ValidationReport, tolerance: Tolerance) -> str:
    """Name each failing output with its figures and say what would pass (a preset or a fix)."""
    if report.passed or (report.problems and not report.failed_outputs):
        return report.summary()
    failed = "; ".join(
        f"{o.name} (max abs {o.max_abs:.3g} = {o.max_rel * 100:.2g}% of its largest "
        f"value, cosine {o.cosine:.5f})"
        for o in report.failed_outputs
    )
    message = (
        f"parity check failed: {len(report.failed_outputs)} of {len(report.outputs)} output(s) "
        f"outside the {tolerance.name} tolerance ({tolerance.rule}) on {report.feeds}: {failed}"
    )
    fits = tightest_fit(report.outputs, atol=report.atol, rtol=report.rtol)
    if fits is not None and fits.name != tolerance.name:
        return message + f"; --tolerance {fits.name} fits these figures"
    return message + (
        "; no preset fits: keep the layers that feed these outputs float "
        "(quantize --exclude NODE) or compare with a looser --atol/--rtol"
    )
