"""`--mode dynamic`: int8 weights, activations quantized at run time, for weight-heavy models.

On CPU this is the bar for transformer encoders (notes/transformer-int8.md: lossless
and 1.6x faster than float), and for recurrent layers. It rewrites only the ops whose
dynamic int8 kernel beats float on ONNX Runtime (MatMul, Gemm, LSTM, large Gather
tables; the rewrites are in dynamic_rewrite.py). Conv stays float: ConvInteger with
run-time activation quantization made conv models 1.9-4.6x slower
(notes/int8-speed.md). No calibration data is needed.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import ClassVar

import onnx_ir as ir

from onnxslim.graphs import iter_graphs
from onnxslim.passes._options import check_choice, option

from .dynamic_rewrite import DYNAMIC_OPS, MS_DOMAIN, NOT_A_CANDIDATE, rewrite_dynamic
from .policy import KERNEL_TARGETS, matches, resolve_target
from .qdq import WeightQuantizer
from .static import REPORT_KEY, QuantizeReport, refuse_quantized

__all__ = ["DYNAMIC_OPS", "MS_DOMAIN", "NOT_A_CANDIDATE", "QuantizeDynamic"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantizeDynamic(ir.passes.InPlacePass):
    """Dynamic int8 (weights int8, activations at run time) for MatMul/Gemm/LSTM and embeddings."""

    lossless: ClassVar[bool] = False

    per_channel: bool = option(True, "Per-output-column weight scales (else per tensor).")
    reduce_range: bool | None = option(
        None, "7-bit weights for x86 without VNNI (None: from the target)."
    )
    target: str = option("auto", "CPU the weight range is chosen for.", choices=KERNEL_TARGETS)
    exclude: tuple[str, ...] = option(
        (), "Keep these float: node names, op types or regular expressions."
    )
    op_types: tuple[str, ...] = option(DYNAMIC_OPS, "Op types to quantize.")
    force: bool = option(False, "Quantize even if the model already holds quantized ops.")

    def __post_init__(self) -> None:
        check_choice(self, "target")
        unknown = set(self.op_types) - set(DYNAMIC_OPS)
        if unknown:
            raise ValueError(
                f"op_types: {', '.join(sorted(unknown))} not supported; "
                f"choose from {', '.join(DYNAMIC_OPS)}"
            )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        refuse_quantized(model, self.force)
        target = resolve_target(self.target)
        reduce_range = target.reduce_range if self.reduce_range is None else bool(self.reduce_range)
        report = QuantizeReport(
            "dynamic",
            target=target.name,
            activation_type="uint8 (run time)",
            reduce_range=reduce_range,
            per_channel=self.per_channel,
        )
        quantizer = WeightQuantizer(model, reduce_range=reduce_range)
        done: list[ir.Node] = []
        for graph in [g for g in iter_graphs(model) if isinstance(g, ir.Graph)]:
            for node in list(graph):
                if node.domain not in ("", "ai.onnx") or node.op_type not in self.op_types:
                    continue
                if self.exclude and matches(node, self.exclude):
                    report.skipped[node.name or node.op_type] = "excluded"
                    continue
                reason = rewrite_dynamic(
                    node, quantizer, per_channel=self.per_channel, reduce_range=reduce_range
                )
                if reason == NOT_A_CANDIDATE:
                    continue  # a Gather of shapes or ids: nothing to report
                if reason:
                    report.skipped[node.name or node.op_type] = reason
                else:
                    done.append(node)
        if done:
            model.opset_imports.setdefault(MS_DOMAIN, 1)
        quantizer.finish(model)
        report.quantized_nodes = sorted(n.name or n.op_type for n in done)
        report.quantized_ops = dict(Counter(n.op_type for n in done))
        report.weight_bytes_before = quantizer.report.weight_bytes_before
        report.weight_bytes_after = quantizer.report.weight_bytes_after
        model.meta[REPORT_KEY] = report
        return ir.passes.PassResult(model, modified=bool(done))
