"""`--mode weight-only`: weights stored in 8 or 4 bits, computed in float; no calibration.

For size first (a model that must fit a download or a flash budget) and for ops no
int8 kernel helps. int8: each weight becomes an int8 initializer (symmetric, per
output channel) behind a DequantizeLinear; embedding tables are gathered in int8
and only the rows taken are dequantized. int4 (`bits=4`): a MatMul/Gemm with a
constant 2-D weight becomes com.microsoft MatMulNBits (block-wise symmetric 4-bit,
`block_size` values per scale, int8 compute where the CPU has it), which ORT runs
faster than the float MatMul; weights of other ops fall back to int8.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import ClassVar

import numpy as np
import onnx_ir as ir
from onnxruntime.capi._pybind_state import quantize_matmul_4bits

from onnxslim.graphs import iter_graphs
from onnxslim.passes._options import option

from .constants import const_array, constant_source, is_constant
from .dynamic_rewrite import MS_DOMAIN, NOT_A_CANDIDATE, replace_node
from .policy import MIN_EMBEDDING_ELEMENTS, matches
from .qdq import WeightQuantizer
from .static import REPORT_KEY, QuantizeReport, refuse_quantized

# Input index and per-channel axis of the weight of each op.
_WEIGHT_AXIS = {
    "Conv": (1, 0),
    "ConvTranspose": (1, 1),
    "MatMul": (1, -1),
    "LSTM": (1, 1),
    "GRU": (1, 1),
    "RNN": (1, 1),
}
WEIGHT_ONLY_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm", "Gather", "LSTM", "GRU", "RNN")
# MatMulNBits int8 compute (accuracy_level 4): faster than float on x86 and ARM.
_ACCURACY_LEVEL = 4


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantizeWeightOnly(ir.passes.InPlacePass):
    """Weight-only quantization: int8 weights behind DequantizeLinear, or int4 MatMulNBits."""

    lossless: ClassVar[bool] = False

    bits: int = option(
        8, "Weight bits: 8 (DequantizeLinear) or 4 (MatMulNBits for MatMul/Gemm).", choices=(8, 4)
    )
    block_size: int = option(32, "Values per scale for 4-bit blocks (a power of 2, at least 16).")
    per_channel: bool = option(
        True, "Per-output-channel scales for int8 weights (else per tensor)."
    )
    exclude: tuple[str, ...] = option(
        (), "Keep these float: node names, op types or regular expressions."
    )
    min_elements: int = option(1024, "Leave weights smaller than this many values float.")
    force: bool = option(False, "Quantize even if the model already holds quantized ops.")

    def __post_init__(self) -> None:
        if self.bits not in (8, 4):
            raise ValueError(f"bits={self.bits}: expected 8 or 4")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size={self.block_size}: expected a power of 2, at least 16")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        refuse_quantized(model, self.force)
        report = QuantizeReport(
            "weight-only",
            weight_type=f"int{self.bits}",
            per_channel=self.per_channel,
            activation_type="float",
        )
        quantizer = WeightQuantizer(model)
        done: list[ir.Node] = []
        for graph in [g for g in iter_graphs(model) if isinstance(g, ir.Graph)]:
            for node in list(graph):
                if node.domain not in ("", "ai.onnx") or node.op_type not in WEIGHT_ONLY_OPS:
                    continue
                if self.exclude and matches(node, self.exclude):
                    report.skipped[node.name or node.op_type] = "excluded"
                    continue
                reason = self._rewrite(node, quantizer)
                if reason == NOT_A_CANDIDATE:
                    continue  # a Gather of shapes or ids: nothing to report
                if reason:
                    report.skipped[node.name or node.op_type] = reason
                else:
                    done.append(node)
        if any(n.op_type in ("MatMul", "Gemm") for n in done) and self.bits == 4:
            model.opset_imports.setdefault(MS_DOMAIN, 1)
        quantizer.finish(model)
        report.quantized_nodes = sorted(n.name or n.op_type for n in done)
        report.quantized_ops = dict(Counter(n.op_type for n in done))
        report.weight_bytes_before = quantizer.report.weight_bytes_before
        report.weight_bytes_after = quantizer.report.weight_bytes_after
        model.meta[REPORT_KEY] = report
        return ir.passes.PassResult(model, modified=bool(done))

    def _rewrite(self, node: ir.Node, quantizer: WeightQuantizer) -> str:
        op = node.op_type
        if op == "Gather":
            table = const_array(node.inputs[0]) if is_constant(node.inputs[0]) else None
            if (
                table is None
                or is_constant(node.inputs[1])
                or table.dtype != np.float32
                or table.size < max(self.min_elements, MIN_EMBEDDING_ELEMENTS)
            ):
                return NOT_A_CANDIDATE
            quantizer.embedding(node)
            return ""
        if self.bits == 4 and op in ("MatMul", "Gemm"):
            reason = _matmul_nbits(node, quantizer, self.block_size, self.min_elements)
            if not reason:
                return ""
        if op == "Gemm":
            if node.attributes.get_int("transA", 0):
                return "Gemm with transA"
            index, axis = 1, (0 if node.attributes.get_int("transB", 0) else 1)
        else:
            index, axis = _WEIGHT_AXIS[op]
        weight = const_array(node.inputs[index]) if len(node.inputs) > index else None
        if (
            weight is None
            or weight.dtype != np.float32
            or weight.size < self.min_elements
            or weight.ndim < 2
        ):
            return "weight is not a large constant float32 tensor"
        quantizer.weight(node, index, axis if self.per_channel else None)
        if op in ("LSTM", "GRU", "RNN"):
            recurrent = const_array(node.inputs[2]) if len(node.inputs) > 2 else None
            if recurrent is not None and recurrent.dtype == np.float32 and recurrent.ndim == 3:
                quantizer.weight(node, 2, 1 if self.per_channel else None)
        return ""


def _matmul_nbits(
    node: ir.Node, quantizer: WeightQuantizer, block_size: int, min_elements: int
) -> str:
    """MatMul(A, B[K,N]) or Gemm -> MatMulNBits(A, packed B, scales) (+ Add of the Gemm bias)."""
    inputs = list(node.inputs) + [None]
    weight = const_array(inputs[1])
    if (
        weight is None
        or weight.dtype != np.float32
        or weight.ndim != 2
        or weight.size < min_elements
    ):
        return "weight is not a large constant float32 matrix"
    bias = None
    if node.op_type == "Gemm":
        if (
            node.attributes.get_int("transA", 0)
            or node.attributes.get_float("alpha", 1.0) != 1.0
            or node.attributes.get_float("beta", 1.0) != 1.0
        ):
            return "Gemm with transA, alpha or beta"
        if node.attributes.get_int("transB", 0):
            weight = weight.T
        if inputs[2] is not None:
            bias = const_array(inputs[2])
            if bias is None:
                return "bias is not constant"
    k, n = weight.shape
    graph = node.graph
    assert isinstance(graph, ir.Graph)
    base = (inputs[1].name if inputs[1] is not None and inputs[1].name else node.name) or "weight"
    key = (
        id(constant_source(inputs[1])),
        ("int4", node.op_type == "Gemm" and bool(node.attributes.get_int("transB", 0)), block_size),
        id(graph),
    )
    if key not in quantizer.shared:  # tied weights packed once
        blocks = (k + block_size - 1) // block_size
        packed = np.zeros((n, blocks, block_size // 2), dtype=np.uint8)
        scales = np.zeros((n, blocks), dtype=np.float32)
        zero_points = np.zeros((n, (blocks + 1) // 2), dtype=np.uint8)
        padded = np.zeros((blocks * block_size, n), dtype=np.float32)
        padded[:k] = weight
        quantize_matmul_4bits(
            packed, padded, scales, zero_points, block_size, n, blocks * block_size, True
        )
        quantizer.shared[key] = (
            quantizer.initializer(graph, f"{base}_int4", packed),
            quantizer.initializer(graph, f"{base}_scales", scales.reshape(-1)),
        )
        quantizer.report.weight_bytes_before += weight.nbytes
        quantizer.report.weight_bytes_after += packed.nbytes + scales.nbytes
    packed_value, scale_value = quantizer.shared[key]
    matmul = ir.node(
        "MatMulNBits",
        [inputs[0], packed_value, scale_value],
        domain=MS_DOMAIN,
        attributes={
            "K": k,
            "N": n,
            "bits": 4,
            "block_size": block_size,
            "accuracy_level": _ACCURACY_LEVEL,
        },
        name=quantizer.namer(f"{node.name}_nbits"),
    )
    new_nodes = [matmul]
    result = matmul.outputs[0]
    result.name = quantizer.namer(f"{node.name}_nbits_out")
    if bias is not None:
        bias_value = quantizer.initializer(
            graph, f"{base}_bias", np.ascontiguousarray(bias, dtype=np.float32)
        )
        add = ir.node("Add", [result, bias_value], name=quantizer.namer(f"{node.name}_bias"))
        new_nodes.append(add)
        result = add.outputs[0]
    replace_node(node, new_nodes, [result])
    return ""
