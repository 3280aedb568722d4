"""`--mode dynamic`: int8 weights, activations quantized at run time, for weight-heavy models.

On CPU this is the bar for transformer encoders (notes/transformer-int8.md: lossless
and 1.6x faster than float), and for recurrent layers. It rewrites only the ops
whose dynamic int8 kernel beats float on ONNX Runtime:
  MatMul(A, const B)      -> com.microsoft DynamicQuantizeMatMul(A, B_int8, scale, 0[, bias]),
                             a following Add of a constant [N] vector folded in as bias;
  Gemm(A, const B[, C])   -> the same, B transposed to [K, N] when transB;
  LSTM(X, const W, R)     -> com.microsoft DynamicQuantizeLSTM (weights transposed to
                             [dirs, in, 4H] as that kernel wants);
  Gather(const table, ids) with a large table -> Gather on the int8 table, then DQ.
Conv stays float: ConvInteger with run-time activation quantization made conv
models 1.9-4.6x slower (notes/int8-speed.md). No calibration data is needed.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import ClassVar

import numpy as np
import onnx_ir as ir

from onnxslim.graphs import iter_graphs
from onnxslim.passes._options import check_choice, option

from .policy import (
    KERNEL_TARGETS,
    MIN_EMBEDDING_ELEMENTS,
    const_array,
    constant_source,
    is_constant,
    matches,
    resolve_target,
)
from .qdq import QParams, WeightQuantizer, quantize_array, replace_node, weight_qparams
from .static import REPORT_KEY, QuantizeReport, refuse_quantized

MS_DOMAIN = "com.microsoft"
DYNAMIC_OPS = ("MatMul", "Gemm", "LSTM", "Gather")
NOT_A_CANDIDATE = "not a candidate"


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
                reason = self._rewrite(node, quantizer, reduce_range, report)
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

    def _rewrite(
        self, node: ir.Node, quantizer: WeightQuantizer, reduce_range: bool, report: QuantizeReport
    ) -> str:
        op = node.op_type
        if op == "Gather":
            table = node.inputs[0]
            if not is_constant(table) or is_constant(node.inputs[1]):
                return NOT_A_CANDIDATE
            array = const_array(table)
            if array is None or array.dtype != np.float32 or array.size < MIN_EMBEDDING_ELEMENTS:
                return "table too small or not float32"
            quantizer.embedding(node)
            return ""
        if op == "LSTM":
            return _lstm(node, quantizer, self.per_channel, reduce_range)
        return _matmul(node, quantizer, self.per_channel, reduce_range)


def _weight_and_params(
    weight: np.ndarray, axis: int | None, reduce_range: bool
) -> tuple[np.ndarray, QParams]:
    qp = weight_qparams(weight, axis, reduce_range=reduce_range)
    return quantize_array(weight, qp), qp


def _matmul(
    node: ir.Node, quantizer: WeightQuantizer, per_channel: bool, reduce_range: bool
) -> str:
    inputs = list(node.inputs) + [None]
    a, b = inputs[0], inputs[1]
    if a is None or a.dtype not in (ir.DataType.FLOAT, None):
        return "input is not float32"
    weight = const_array(b)
    if weight is None or weight.dtype != np.float32 or weight.ndim != 2:
        return "weight is not a constant float32 matrix"
    bias: np.ndarray | None = None
    absorbed: ir.Node | None = None
    if node.op_type == "Gemm":
        if node.attributes.get_int("transA", 0):
            return "Gemm with transA"
        if (
            node.attributes.get_float("alpha", 1.0) != 1.0
            or node.attributes.get_float("beta", 1.0) != 1.0
        ):
            return "Gemm with alpha or beta other than 1"
        if node.attributes.get_int("transB", 0):
            weight = np.ascontiguousarray(weight.T)
        if inputs[2] is not None:
            c = const_array(inputs[2])
            if c is None or c.size not in (1, weight.shape[1]) or (c.ndim == 2 and c.shape[0] != 1):
                return "bias is not a constant vector"
            bias = np.broadcast_to(c.reshape(-1), (weight.shape[1],)).astype(np.float32)
    else:
        absorbed, bias = _bias_add(node, weight.shape[1])
    graph = node.graph
    assert isinstance(graph, ir.Graph)
    base = (b.name if b is not None and b.name else node.name) or "weight"
    transposed = node.op_type == "Gemm" and bool(node.attributes.get_int("transB", 0))
    key = (id(constant_source(b)), transposed, id(graph))
    shared = quantizer.shared.get(
        key
    )  # tied weights (one tensor read by many nodes) quantized once
    if shared is None:
        q, qp = _weight_and_params(weight, 1 if per_channel else None, reduce_range)
        shared = (
            quantizer.initializer(graph, f"{base}_quantized", q),
            quantizer.initializer(graph, f"{base}_scale", qp.scale.astype(np.float32)),
            quantizer.initializer(graph, f"{base}_zero_point", qp.zero_point),
        )
        quantizer.shared[key] = shared
        quantizer.report.weight_bytes_before += weight.nbytes
        quantizer.report.weight_bytes_after += q.nbytes
    q_value, scale, zero = shared
    operands: list[ir.Value | None] = [a, q_value, scale, zero]
    if bias is not None:
        operands.append(
            quantizer.initializer(
                graph, f"{base}_bias", np.ascontiguousarray(bias, dtype=np.float32)
            )
        )
    fused = ir.node(
        "DynamicQuantizeMatMul",
        operands,
        domain=MS_DOMAIN,
        name=quantizer.namer(f"{node.name}_dynamic"),
    )
    if absorbed is not None:
        # MatMul + Add(bias): the Add's output becomes the fused node's output.
        graph.insert_before(node, fused)
        replace_node(absorbed, [], [fused.outputs[0]])
        graph.remove(node, safe=True)
    else:
        replace_node(node, [fused], [fused.outputs[0]])
    return ""


def _bias_add(node: ir.Node, columns: int) -> tuple[ir.Node | None, np.ndarray | None]:
    """The Add of a constant [N] vector that alone reads this MatMul's output, if any."""
    out = node.outputs[0]
    uses = list(out.uses())
    if len(uses) != 1 or out.is_graph_output():
        return None, None
    add, index = uses[0]
    if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or add.graph is not node.graph:
        return None, None
    other = add.inputs[1 - index]
    vector = const_array(other)
    if (
        vector is None
        or vector.dtype != np.float32
        or vector.size != columns
        or vector.shape[-1:] != (columns,)
        or any(d != 1 for d in vector.shape[:-1])
    ):
        return None, None
    return add, vector.reshape(-1)


def _lstm(node: ir.Node, quantizer: WeightQuantizer, per_channel: bool, reduce_range: bool) -> str:
    inputs = list(node.inputs) + [None] * 8
    if node.attributes.get_int("layout", 0) != 0:
        return "LSTM with layout=1"
    w, r = const_array(inputs[1]), const_array(inputs[2])
    if (
        w is None
        or r is None
        or w.ndim != 3
        or r.ndim != 3
        or w.dtype != np.float32
        or r.dtype != np.float32
    ):
        return "weights are not constant float32"
    graph = node.graph
    assert isinstance(graph, ir.Graph)
    operands: list[ir.Value | None] = [inputs[0]]
    params = []
    for array, label in ((w, "W"), (r, "R")):
        source = inputs[1 if label == "W" else 2]
        key = (id(constant_source(source)), "lstm", id(graph))
        if key in quantizer.shared:
            q_value, scale_value, zero_value = quantizer.shared[key]
            operands.append(q_value)
            params.append((scale_value, zero_value))
            continue
        dirs, rows, cols = array.shape
        flat = array.reshape(dirs * rows, cols)
        qp = weight_qparams(flat, 0 if per_channel else None, reduce_range=reduce_range)
        q = quantize_array(flat, qp).reshape(dirs, rows, cols).transpose(0, 2, 1)
        if per_channel:
            scale = qp.scale.reshape(dirs, rows)
        else:
            scale = np.full((dirs,), float(qp.scale), dtype=np.float32)
        base = f"{inputs[1 if label == 'W' else 2].name or node.name}"
        q_value = quantizer.initializer(graph, f"{base}_quantized", np.ascontiguousarray(q))
        params.append(
            (
                quantizer.initializer(graph, f"{base}_scale", scale.astype(np.float32)),
                quantizer.initializer(graph, f"{base}_zero_point", np.zeros(scale.shape, np.int8)),
            )
        )
        quantizer.shared[key] = (q_value, *params[-1])
        operands.append(q_value)
        quantizer.report.weight_bytes_before += array.nbytes
        quantizer.report.weight_bytes_after += q.nbytes
    operands.extend(inputs[3:8])
    while len(operands) < 8:
        operands.append(None)
    operands = operands[:8]
    operands.extend([params[0][0], params[0][1], params[1][0], params[1][1]])
    attributes = [a for a in node.attributes.values() if a.name != "layout"]
    fused = ir.Node(
        MS_DOMAIN,
        "DynamicQuantizeLSTM",
        operands,
        attributes=attributes,
        num_outputs=len(node.outputs),
        name=quantizer.namer(f"{node.name}_dynamic"),
    )
    replace_node(node, [fused], list(fused.outputs))
    return ""
