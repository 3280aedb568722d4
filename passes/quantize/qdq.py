"""Insert QuantizeLinear/DequantizeLinear pairs, int8 weights and int32 biases, following a plan.

(The parameters' arithmetic, scales and zero points, is `qparams`.)

The layout is what ONNX Runtime's QDQ fusions look for (checked in the tests on the
optimized graph):
  activation T   Q(T) once where T is produced; one DequantizeLinear per graph that
                 reads T (a DQ in the consumer's own graph, so fusions inside If/Loop
                 bodies see it); every reader, graph outputs included, reads the DQ.
  weight W       an int8 initializer (symmetric, per channel when asked) and one DQ
                 per graph, shared by every quantized node that uses W with the same
                 axis; the float W is removed once nothing reads it (the file shrinks).
  bias B         int32 with scale s_x * s_w and zero point 0, so Conv/Gemm fuse with it.
  embedding      Gather runs on the int8 table; one DQ follows it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxslim.graphs import iter_graphs

from .constants import const_array, constant_source
from .plan import NodePlan, QuantPlan, TensorPlan
from .qparams import QParams, activation_qparams, quantize_array, weight_qparams
from .ranges import Range
from .rounding import WeightRounding

_INT32_MAX = 2**31 - 1
_STORED = -1  # weight-cache key slot of a weight's one int8 copy (graph ids are positive)


@dataclass
class InsertReport:
    """What the insertion did."""

    quantized_nodes: list[str] = field(default_factory=list)
    quantized_tensors: int = 0
    weights: dict[str, str] = field(
        default_factory=dict
    )  # int8 initializer -> float weight it replaced
    removed_activations: list[str] = field(default_factory=list)
    weight_bytes_before: int = 0
    weight_bytes_after: int = 0
    dynamic_nodes: list[str] = field(default_factory=list)  # activation_mode.apply_dynamic


class _Namer:
    """Fresh, readable names that collide with nothing in the model."""

    def __init__(self, model: ir.Model) -> None:
        self.used: set[str] = set()
        for graph in iter_graphs(model):
            if not isinstance(graph, ir.Graph):
                continue
            self.used.update(v.name or "" for v in graph.inputs)
            self.used.update(graph.initializers)
            for node in graph:
                self.used.add(node.name or "")
                self.used.update(v.name or "" for v in node.outputs)

    def __call__(self, base: str) -> str:
        name, i = base, 1
        while name in self.used:
            i += 1
            name = f"{base}_{i}"
        self.used.add(name)
        return name


def insert_qdq(
    model: ir.Model,
    plan: QuantPlan,
    params: Mapping[str, QParams],
    *,
    reduce_range: bool = False,
    activation_dtype: np.dtype | type = np.uint8,
    rounding: WeightRounding | None = None,
) -> InsertReport:
    """Rewrite `model` in place so the plan's nodes run on int8.

    `params` maps every non-shared tensor of the plan to its QParams (shared tensors
    reuse their root's). Nodes are found by name, so the plan may come from a clone.
    `rounding` rounds the weights of the layers it has statistics for (rounding.py).
    """
    report = InsertReport()
    namer = _Namer(model)
    graphs = [g for g in iter_graphs(model) if isinstance(g, ir.Graph)]
    nodes = {n.name or "": n for g in graphs for n in g}
    values = _values_by_name(graphs)

    # 1. Absorbed activations disappear: their readers read the producer's output.
    for name, node_plan in plan.nodes.items():
        if node_plan.role != "absorbed" or name not in nodes:
            continue
        activation = nodes[name]
        source = activation.inputs[0]
        graph = activation.graph
        assert source is not None and graph is not None
        out = activation.outputs[0]
        out.replace_all_uses_with(source)
        graph.remove(activation, safe=True)
        report.removed_activations.append(name)

    # 2. Weights, biases, embeddings and constants of quantized nodes.
    weight_cache: dict[tuple[int, int | None, int], Any] = {}
    embedding_cache: dict = {}
    for name, node_plan in plan.nodes.items():
        node = nodes.get(name)
        if node is None or node_plan.role == "absorbed":
            continue
        if node_plan.role == "embedding":
            _quantize_embedding(node, namer, report, embedding_cache)
            report.quantized_nodes.append(name)
            continue
        weight_params: QParams | None = None
        for index, axis in node_plan.weights.items():
            weight_params = _quantize_weight(
                node,
                index,
                axis,
                node_plan,
                plan,
                params,
                weight_cache,
                namer,
                reduce_range,
                report,
                rounding,
            )
        if node_plan.bias is not None and weight_params is not None:
            _quantize_bias(node, node_plan, plan, params, weight_params, namer)
        for index in node_plan.constants:
            _quantize_constant(node, index, namer, activation_dtype)
        report.quantized_nodes.append(name)

    # 3. Activation Q/DQ pairs.
    graphs = [g for g in iter_graphs(model) if isinstance(g, ir.Graph)]
    values = _values_by_name(graphs)
    for key in plan.tensors:
        value = values.get(key)
        if value is None:
            continue
        root = plan.root(key)
        qp = params[root.name]
        _insert_pair(model, value, qp, namer, graphs)
        report.quantized_tensors += 1
    _remove_unused_constants(model)
    return report


def tensor_params(
    plan: QuantPlan, ranges: Mapping[str, Range], dtype: np.dtype | type = np.uint8
) -> dict[str, QParams]:
    """QParams of every root tensor of the plan from calibrated ranges (Clip bounds applied)."""
    params: dict[str, QParams] = {}
    for name, tensor in plan.tensors.items():
        if tensor.shares is not None and tensor.shares in plan.tensors:
            continue
        params[name] = activation_qparams(_clipped(ranges[tensor.range_of], tensor), dtype)
    return params


def _clipped(r: Range, tensor: TensorPlan) -> Range:
    if tensor.clip is None:
        return r
    low, high = tensor.clip
    return Range(max(r.lo, low), min(r.hi, high))


# ---------------------------------------------------------------------------


def _values_by_name(graphs: list[ir.Graph]) -> dict[str, ir.Value]:
    values: dict[str, ir.Value] = {}
    for graph in graphs:
        for value in graph.inputs:
            values.setdefault(value.name or "", value)
        for node in graph:
            for value in node.outputs:
                values.setdefault(value.name or "", value)
    return values


def _initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    value = ir.Value(
        name=name,
        shape=ir.Shape(array.shape),
        type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
        const_value=ir.tensor(array, name=name),
    )
    graph.register_initializer(value)
    return value


def _scale_zero(
    graph: ir.Graph, base: str, qp: QParams, namer: _Namer
) -> tuple[ir.Value, ir.Value]:
    scale = _initializer(graph, namer(f"{base}_scale"), np.asarray(qp.scale, dtype=np.float32))
    zero = _initializer(graph, namer(f"{base}_zero_point"), np.asarray(qp.zero_point))
    return scale, zero


def _dq_node(
    source: ir.Value, scale: ir.Value, zero: ir.Value, axis: int | None, name: str, out_name: str
) -> ir.Node:
    attrs = {"axis": axis} if axis is not None else {}
    node = ir.node("DequantizeLinear", [source, scale, zero], attrs, name=name)
    node.outputs[0].name = out_name
    node.outputs[0].dtype = ir.DataType.FLOAT
    return node


def _prepend(graph: ir.Graph, nodes: list[ir.Node]) -> None:
    first = next(iter(graph), None)
    if first is None:
        graph.extend(nodes)
    else:
        graph.insert_before(first, nodes)


def _graph_of(value: ir.Value, model: ir.Model) -> ir.Graph:
    producer = value.producer()
    if producer is not None and producer.graph is not None:
        return producer.graph
    if value.graph is not None:
        return value.graph
    return model.graph


def _insert_pair(
    model: ir.Model, value: ir.Value, qp: QParams, namer: _Namer, all_graphs: list[ir.Graph]
) -> None:
    """Q(value) where it is produced; each graph reading it gets its own DQ."""
    home = _graph_of(value, model)
    base = value.name or "tensor"
    scale, zero = _scale_zero(home, base, qp, namer)
    quant = ir.node("QuantizeLinear", [value, scale, zero], name=namer(f"{base}_QuantizeLinear"))
    quantized = quant.outputs[0]
    quantized.name = namer(f"{base}_quantized")
    quantized.dtype = ir.DataType.from_numpy(qp.dtype)
    quantized.shape = value.shape
    producer = value.producer()
    if producer is not None and producer.graph is home:
        home.insert_after(producer, quant)
    else:
        _prepend(home, [quant])
    readers: dict[int, list[tuple[ir.Node, int]]] = {}
    reader_graphs: dict[int, ir.Graph] = {}
    for user, index in list(value.uses()):
        if user is quant:
            continue
        graph = user.graph
        assert isinstance(graph, ir.Graph)
        readers.setdefault(id(graph), []).append((user, index))
        reader_graphs[id(graph)] = graph
    # A model input that is also a model output stays float there: routing that output
    # through Q/DQ would rename the input (the output keeps its name), and the model's
    # callers feed inputs by name (fuzz case valid/input-is-output).
    passthrough = any(i is value for i in model.graph.inputs)
    output_graphs = [
        g
        for g in all_graphs
        if any(o is value for o in g.outputs) and not (passthrough and g is model.graph)
    ]
    for graph in output_graphs:
        reader_graphs.setdefault(id(graph), graph)
        readers.setdefault(id(graph), [])
    for gid, graph in reader_graphs.items():
        if graph is home:
            dq = _dq_node(
                quantized,
                scale,
                zero,
                None,
                namer(f"{base}_DequantizeLinear"),
                namer(f"{base}_dequantized"),
            )
            home.insert_after(quant, dq)
        else:
            local_scale, local_zero = _scale_zero(graph, base, qp, namer)
            dq = _dq_node(
                quantized,
                local_scale,
                local_zero,
                None,
                namer(f"{base}_DequantizeLinear"),
                namer(f"{base}_dequantized"),
            )
            _prepend(graph, [dq])
        dequantized = dq.outputs[0]
        dequantized.shape = value.shape
        for user, index in readers[gid]:
            user.replace_input_with(index, dequantized)
        for i, out in enumerate(graph.outputs):
            if out is value and not (passthrough and graph is model.graph):
                graph.outputs[i] = dequantized
                if graph is model.graph:  # keep the model's output name
                    original = value.name
                    value.name = namer(f"{original}_float")
                    dequantized.name = original


def _quantize_weight(
    node: ir.Node,
    index: int,
    axis: int | None,
    node_plan: NodePlan,
    plan: QuantPlan,
    params: Mapping[str, QParams],
    cache: dict,
    namer: _Namer,
    reduce_range: bool,
    report: InsertReport,
    rounding: WeightRounding | None = None,
) -> QParams | None:
    weight_value = node.inputs[index]
    weight = const_array(weight_value)
    if weight_value is None or weight is None:
        return None
    graph = node.graph
    assert isinstance(graph, ir.Graph)
    source = constant_source(weight_value)
    key = (id(source), axis, id(graph))
    if key in cache:
        dequantized, qp = cache[key]
        node.replace_input_with(index, dequantized)
        return qp
    # One int8 copy per weight (and axis), in the graph that holds the float weight: If and
    # Loop branches reading an outer weight each get a DQ of it, not a copy of their own.
    stored = cache.get((id(source), axis, _STORED))
    if stored is None:
        qp = weight_qparams(weight, axis, reduce_range=reduce_range)
        if node_plan.bias is not None:
            qp = _widen_for_bias(node, node_plan, plan, params, qp)
        rounded = rounding.round(node, weight, qp) if rounding is not None else None
        q = quantize_array(weight, qp) if rounded is None else rounded
        base = weight_value.name or "weight"
        home = _home_graph(source, graph)
        q_value = _initializer(home, namer(f"{base}_quantized"), q)
        scale, zero = _scale_zero(home, base, qp, namer)
        stored = (q_value, scale, zero, qp, base)
        cache[(id(source), axis, _STORED)] = stored
        report.weights[q_value.name or ""] = base
        report.weight_bytes_before += weight.nbytes
        report.weight_bytes_after += q.nbytes + qp.scale.nbytes + qp.zero_point.nbytes
    q_value, scale, zero, qp, base = stored
    dq = _dq_node(
        q_value,
        scale,
        zero,
        qp.axis if qp.scale.ndim == 1 else None,
        namer(f"{base}_DequantizeLinear"),
        namer(f"{base}_dequantized"),
    )
    dq.outputs[0].shape = ir.Shape(weight.shape)
    _prepend(graph, [dq])
    node.replace_input_with(index, dq.outputs[0])
    cache[key] = (dq.outputs[0], qp)
    return qp


def _home_graph(source: ir.Value | None, fallback: ir.Graph) -> ir.Graph:
    """The graph that holds a constant: its initializer's or its Constant node's graph."""
    if source is None:
        return fallback
    producer = source.producer()
    home = producer.graph if producer is not None else source.graph
    return home if isinstance(home, ir.Graph) else fallback


def _activation_scale(
    node: ir.Node, node_plan: NodePlan, plan: QuantPlan, params: Mapping[str, QParams]
) -> float | None:
    source = node.inputs[node_plan.activations[0]] if node_plan.activations else None
    if source is None or (source.name or "") not in plan.tensors:
        return None
    return float(params[plan.root(source.name or "").name].scale)


def _widen_for_bias(
    node: ir.Node, node_plan: NodePlan, plan: QuantPlan, params: Mapping[str, QParams], qp: QParams
) -> QParams:
    """Raise weight scales where the int32 bias would overflow (tiny weights, big bias)."""
    bias = const_array(node.inputs[node_plan.bias]) if node_plan.bias is not None else None
    s_x = _activation_scale(node, node_plan, plan, params)
    if bias is None or s_x is None:
        return qp
    need = np.abs(bias.astype(np.float64)).reshape(-1) / (s_x * (_INT32_MAX - 1))
    if qp.scale.ndim == 0:
        need_max = float(need.max()) if need.size else 0.0
        return (
            QParams(
                np.maximum(qp.scale, np.float32(need_max)).astype(np.float32),
                qp.zero_point,
                qp.axis,
            )
            if need_max > float(qp.scale)
            else qp
        )
    if need.size != qp.scale.size or not np.any(need > qp.scale):
        return qp
    return QParams(np.maximum(qp.scale, need).astype(np.float32), qp.zero_point, qp.axis)


def _quantize_bias(
    node: ir.Node,
    node_plan: NodePlan,
    plan: QuantPlan,
    params: Mapping[str, QParams],
    weight_qp: QParams,
    namer: _Namer,
) -> None:
    index = node_plan.bias
    assert index is not None
    bias_value = node.inputs[index]
    bias = const_array(bias_value)
    s_x = _activation_scale(node, node_plan, plan, params)
    if bias_value is None or bias is None or s_x is None:
        return
    flat = bias.astype(np.float64).reshape(-1)
    scale = (s_x * weight_qp.scale.astype(np.float64)).reshape(-1)
    if scale.size == 1 and flat.size > 1:
        scale = np.full(flat.shape, scale[0])
    if flat.size == 1 and scale.size > 1:
        flat = np.full(scale.shape, flat[0])
    q = np.clip(np.rint(flat / scale), -_INT32_MAX, _INT32_MAX).astype(np.int32)
    graph = node.graph
    assert isinstance(graph, ir.Graph)
    base = bias_value.name or "bias"
    q_value = _initializer(graph, namer(f"{base}_quantized"), q)
    scale_value = _initializer(graph, namer(f"{base}_scale"), scale.astype(np.float32))
    zero_value = _initializer(graph, namer(f"{base}_zero_point"), np.zeros(q.shape, dtype=np.int32))
    dq = _dq_node(
        q_value,
        scale_value,
        zero_value,
        0,
        namer(f"{base}_DequantizeLinear"),
        namer(f"{base}_dequantized"),
    )
    dq.outputs[0].shape = ir.Shape(q.shape)
    graph.insert_before(node, dq)
    node.replace_input_with(index, dq.outputs[0])


def _quantize_constant(node: ir.Node, index: int, namer: _Namer, dtype: np.dtype | type) -> None:
    value = node.inputs[index]
    array = const_array(value)
    if value is None or array is None:
        return
    qp = activation_qparams(
        Range(float(array.min()) if array.size else 0.0, float(array.max()) if array.size else 0.0),
        dtype,
    )
    graph = node.graph
    assert isinstance(graph, ir.Graph)
    base = value.name or "constant"
    q_value = _initializer(
        graph, namer(f"{base}_quantized"), quantize_array(array.astype(np.float32), qp)
    )
    scale, zero = _scale_zero(graph, base, qp, namer)
    dq = _dq_node(
        q_value, scale, zero, None, namer(f"{base}_DequantizeLinear"), namer(f"{base}_dequantized")
    )
    dq.outputs[0].shape = ir.Shape(array.shape)
    graph.insert_before(node, dq)
    node.replace_input_with(index, dq.outputs[0])


def _quantize_embedding(
    node: ir.Node,
    namer: _Namer,
    report: InsertReport,
    cache: dict[tuple[int, int], tuple[ir.Value, ir.Value, ir.Value, int | None]] | None = None,
) -> None:
    """Gather(table, ids) -> DQ(Gather(int8 table, ids)).

    A 2-D table gathered along axis 0 gets one scale per column (per hidden unit:
    embedding outliers live in a few dimensions), which survives the Gather, so the
    DequantizeLinear after it takes axis -1; other tables get one scale.
    """
    table_value = node.inputs[0]
    table = const_array(table_value)
    graph = node.graph
    if table_value is None or table is None or not isinstance(graph, ir.Graph):
        return
    axis = node.attributes.get_int("axis", 0)
    key = (id(constant_source(table_value)), id(graph))
    if cache is not None and key in cache:
        q_value, scale, zero, dq_axis = cache[key]
    else:
        per_column = table.ndim == 2 and axis == 0
        qp = weight_qparams(table, 1 if per_column else None)
        q = quantize_array(table, qp)
        base = table_value.name or "table"
        q_value = _initializer(graph, namer(f"{base}_quantized"), q)
        scale, zero = _scale_zero(graph, base, qp, namer)
        dq_axis = -1 if per_column else None
        if cache is not None:
            cache[key] = (q_value, scale, zero, dq_axis)
        report.weights[q_value.name or ""] = base
        report.weight_bytes_before += table.nbytes
        report.weight_bytes_after += q.nbytes
    gather = ir.node(
        "Gather", [q_value, node.inputs[1]], {"axis": axis}, name=namer(f"{node.name}_int8")
    )
    gathered = gather.outputs[0]
    gathered.name = namer(f"{node.outputs[0].name}_quantized")
    gathered.dtype = ir.DataType.INT8
    dq = _dq_node(
        gathered,
        scale,
        zero,
        dq_axis,
        namer(f"{node.name}_DequantizeLinear"),
        namer(f"{node.outputs[0].name}_dequantized"),
    )
    graph.insert_before(node, [gather, dq])
    old = node.outputs[0]
    dq.outputs[0].shape = old.shape
    is_output = any(o is old for o in graph.outputs)
    old.replace_all_uses_with(dq.outputs[0], replace_graph_outputs=True)
    if is_output:
        name = old.name
        old.name = namer(f"{name}_float")
        dq.outputs[0].name = name
    graph.remove(node, safe=True)


def _remove_unused_constants(model: ir.Model) -> None:
    """Drop float weights nothing reads any more (and Constant nodes that held them)."""
    for graph in iter_graphs(model):
        if not isinstance(graph, ir.Graph):
            continue
        for node in reversed(
            list(graph)
        ):  # Constant / Identity nodes that held or passed on a weight
            if (
                node.op_type in ("Constant", "Identity")
                and node.domain in ("", "ai.onnx")
                and all(not o.uses() and not o.is_graph_output() for o in node.outputs)
            ):
                graph.remove(node, safe=True)
        for name, value in list(graph.initializers.items()):
            if not value.uses() and not value.is_graph_output() and not value.is_graph_input():
                del graph.initializers[name]


# ---------------------------------------------------------------------------
# Helpers shared by the dynamic and weight-only modes


class WeightQuantizer:
    """Int8 weights behind DequantizeLinear, each (weight, axis, graph) quantized once."""

    def __init__(self, model: ir.Model, *, reduce_range: bool = False) -> None:
        self.namer = _Namer(model)
        self.cache: dict[tuple[int, int | None, int], Any] = {}
        self.reduce_range = reduce_range
        self.report = InsertReport()
        self._empty_plan = QuantPlan({}, {}, {})
        # Weights quantized in another layout (dynamic / int4 modes):
        # (id(weight), layout, id(graph)) -> initializers.
        self.shared: dict[tuple[int, object, int], tuple[ir.Value, ...]] = {}
        self.embeddings: dict = {}

    def weight(self, node: ir.Node, index: int, axis: int | None) -> QParams | None:
        """Replace input `index` of `node` by DQ(int8 weight)."""
        plan = NodePlan(node.name or "", node.op_type, "weight-only")
        return _quantize_weight(
            node,
            index,
            axis,
            plan,
            self._empty_plan,
            {},
            self.cache,
            self.namer,
            self.reduce_range,
            self.report,
        )

    def embedding(self, node: ir.Node) -> None:
        """Gather on an int8 table, then DQ of the rows taken."""
        _quantize_embedding(node, self.namer, self.report, self.embeddings)

    def initializer(self, graph: ir.Graph, base: str, array: np.ndarray) -> ir.Value:
        return _initializer(graph, self.namer(base), array)

    def finish(self, model: ir.Model) -> None:
        _remove_unused_constants(model)
