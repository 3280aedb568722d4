"""The rewrites behind dynamic int8: one float node -> its ORT run-time-quantized kernel.

Why its own module: `--mode dynamic` (dynamic.py) rewrites every candidate, and the static
pass (activation_mode.py) rewrites the MatMul / Gemm / LSTM nodes for which run-time
activation ranges measured better than calibrated ones; both need these rewrites, and
the static pass cannot import the dynamic pass (which reads the static report types).
  MatMul(A, const B)      -> com.microsoft DynamicQuantizeMatMul(A, B_int8, scale, 0[, bias]),
                             a following Add of a constant [N] vector folded in as bias;
  Gemm(A, const B[, C])   -> the same, B transposed to [K, N] when transB;
  LSTM(X, const W, R)     -> com.microsoft DynamicQuantizeLSTM (weights transposed to
                             [dirs, in, 4H] as that kernel wants);
  Gather(const table, ids) with a large table -> Gather on the int8 table, then DQ.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from .constants import const_array, constant_source, is_constant
from .policy import MIN_EMBEDDING_ELEMENTS, gemm_refusal
from .qdq import WeightQuantizer
from .qparams import QParams, quantize_array, weight_qparams

MS_DOMAIN = "com.microsoft"
DYNAMIC_OPS = ("MatMul", "Gemm", "LSTM", "Gather")
NOT_A_CANDIDATE = "not a candidate"


def rewrite_dynamic(
    node: ir.Node, quantizer: WeightQuantizer, *, per_channel: bool, reduce_range: bool
) -> str:
    """Rewrite `node` (a DYNAMIC_OPS node) in place; "" when done, else why not."""
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
        return _lstm(node, quantizer, per_channel, reduce_range)
    return _matmul(node, quantizer, per_channel, reduce_range)


def why_not_dynamic(node: ir.Node) -> str:
    """Why ORT's dynamic kernel cannot take this MatMul / Gemm / LSTM ("" when it can): the
    one test the rewrites and the static pass's candidates (activation_mode.py) share."""
    inputs = list(node.inputs) + [None] * 3
    if node.op_type == "LSTM":
        if node.attributes.get_int("layout", 0) != 0:
            return "LSTM with layout=1"
        arrays = [const_array(inputs[1]), const_array(inputs[2])]
        if any(a is None or a.ndim != 3 or a.dtype != np.float32 for a in arrays):
            return "weights are not constant float32"
        return ""
    if node.op_type not in ("MatMul", "Gemm"):
        return NOT_A_CANDIDATE
    if inputs[0] is None or inputs[0].dtype not in (ir.DataType.FLOAT, None):
        return "input is not float32"
    weight = const_array(inputs[1])
    if weight is None or weight.dtype != np.float32 or weight.ndim != 2:
        return "weight is not a constant float32 matrix"
    if node.op_type == "Gemm":
        if refusal := gemm_refusal(node):
            return refusal
        columns = weight.shape[0 if node.attributes.get_int("transB", 0) else 1]
        if inputs[2] is not None:
            c = const_array(inputs[2])
            if c is None or c.size not in (1, columns) or (c.ndim == 2 and c.shape[0] != 1):
                return "bias is not a constant vector"
    return ""


def _weight_and_params(
    weight: np.ndarray, axis: int | None, reduce_range: bool
) -> tuple[np.ndarray, QParams]:
    qp = weight_qparams(weight, axis, reduce_range=reduce_range)
    return quantize_array(weight, qp), qp


def _matmul(
    node: ir.Node, quantizer: WeightQuantizer, per_channel: bool, reduce_range: bool
) -> str:
    why = why_not_dynamic(node)
    if why:
        return why
    inputs = list(node.inputs) + [None]
    a, b = inputs[0], inputs[1]
    weight = const_array(b)
    assert weight is not None
    bias: np.ndarray | None = None
    absorbed: ir.Node | None = None
    if node.op_type == "Gemm":
        if node.attributes.get_int("transB", 0):
            weight = np.ascontiguousarray(weight.T)
        if inputs[2] is not None:
            c = const_array(inputs[2])
            assert c is not None
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
    why = why_not_dynamic(node)
    if why:
        return why
    inputs = list(node.inputs) + [None] * 8
    w, r = const_array(inputs[1]), const_array(inputs[2])
    assert w is not None and r is not None
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
        base = f"{(source.name if source is not None else None) or node.name}"
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


def replace_node(old: ir.Node, new_nodes: list[ir.Node], new_outputs: list[ir.Value]) -> None:
    """Insert `new_nodes` before `old`; `old`'s outputs (uses, names) move to `new_outputs`."""
    graph = old.graph
    assert isinstance(graph, ir.Graph)
    if new_nodes:
        graph.insert_before(old, new_nodes)
    for out, new in zip(old.outputs, new_outputs, strict=False):
        name = out.name
        new.type, new.shape = out.type, out.shape
        out.replace_all_uses_with(new, replace_graph_outputs=True)
        out.name = None
        new.name = name
    graph.remove(old, safe=True)
