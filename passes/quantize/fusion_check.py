"""The fusion check: which planned nodes ONNX Runtime did not fuse into an int8 kernel.

Why its own module: the answer comes from ORT's optimized graph (a proto written by
ORT, not our IR); reading it, and counting the int8 kernels it holds, is one job
apart from planning. A planned node ORT leaves in float behind DequantizeLinear
only pays the Q/DQ cost, so `quantize_static` puts it back to float.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import onnx
import onnx_ir as ir

from onnxslim.runtime import ort_optimized

from .plan import QuantPlan
from .qdq import InsertReport

INT8_KERNELS = (
    "QLinearConv",
    "QLinearMatMul",
    "QGemm",
    "MatMulIntegerToFloat",
    "QLinearAdd",
    "QLinearMul",
    "QLinearConcat",
    "QLinearAveragePool",
    "QLinearGlobalAveragePool",
    "QLinearSigmoid",
    "QLinearLeakyRelu",
    "DynamicQuantizeMatMul",
    "MatMulInteger",
    "ConvInteger",
    "MatMulNBits",
    "DynamicQuantizeLSTM",
)


def find_unfused(
    model: ir.Model, plan: QuantPlan, report: InsertReport
) -> tuple[set[str], dict[str, int]]:
    """Planned nodes that ORT's optimized graph still runs in float; its int8 kernel counts."""
    optimized = ort_optimized(model, "all", load_external_data=False)
    graphs = list(_proto_graphs(optimized.graph))
    kernels = Counter(n.op_type for g in graphs for n in g.node if n.op_type in INT8_KERNELS)
    producers = {out: n for g in graphs for n in g.node for out in n.output}
    dq_sources = {n.input[0] for g in graphs for n in g.node if n.op_type == "DequantizeLinear"}
    unfused: set[str] = set()
    # (a) A weight still behind a DequantizeLinear: its readers were not fused.
    still = {q for q in report.weights if q in dq_sources}
    if still:
        for node in model.graph.all_nodes():
            if (
                node.op_type == "DequantizeLinear"
                and node.inputs[0] is not None
                and node.inputs[0].name in still
            ):
                for user, _ in node.outputs[0].uses():
                    if user.name in plan.nodes:
                        unfused.add(user.name or "")
    # (b) A planned node still there under its own name and op type, reading a DequantizeLinear.
    for g in graphs:
        for n in g.node:
            node_plan = plan.nodes.get(n.name)
            if (
                node_plan is None
                or node_plan.role in ("embedding", "absorbed")
                or n.op_type != node_plan.op_type
            ):
                continue
            if any(
                producers.get(i) is not None and producers[i].op_type == "DequantizeLinear"
                for i in n.input
            ):
                unfused.add(n.name)
    return unfused, dict(sorted(kernels.items()))


def _proto_graphs(graph: onnx.GraphProto) -> Iterable[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _proto_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _proto_graphs(sub)
