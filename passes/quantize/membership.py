"""Which candidates pay off together, and which tensors their Q/DQ pairs go on.

Why its own module: an island, shared-scale or absorbed op pays in int8 only when
its neighbours are int8 too, so membership is decided for all candidates at once
(the greatest fixed point of the rules below), and the tensor plans follow from
the members; `policy` finds the candidates, this decides among them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import onnx_ir as ir

from .constants import const_array
from .plan import NodePlan, TensorPlan


def fixed_point(
    candidates: Mapping[str, NodePlan],
    by_name: Mapping[str, ir.Node],
    graph_outputs: set[int],
    keep_float: set[str],
) -> dict[str, NodePlan]:
    """The largest set of candidates in which every island/shared/absorbed member pays off."""
    members = dict(candidates)
    changed = True
    while changed:
        changed = False
        for name in list(members):
            plan = members[name]
            node = by_name[name]
            reason = _violation(plan, node, members, by_name, graph_outputs, keep_float)
            if reason:
                del members[name]
                changed = True
    return members


def _consumers(value: ir.Value) -> list[ir.Node]:
    return [user for user, _ in value.uses()]


def _output_quantized(
    node: ir.Node,
    plan: NodePlan,
    members: Mapping[str, NodePlan],
    graph_outputs: set[int],
    keep_float: set[str],
) -> bool:
    """Whether this member's output 0 carries Q/DQ under the current member set."""
    out = node.outputs[0]
    if (out.name or "") in keep_float:
        return False
    consumers = _consumers(out)
    if plan.role == "compute" and node.op_type == "Conv":
        return True
    if plan.role == "embedding":
        return False
    if plan.role == "compute":
        return (
            bool(consumers)
            and id(out) not in graph_outputs
            and all(
                (c.name or "") in members and members[c.name or ""].role != "embedding"
                for c in consumers
            )
        )
    if plan.role == "absorbed":
        return True
    return True  # island and shared members quantize their outputs


def _violation(
    plan: NodePlan,
    node: ir.Node,
    members: Mapping[str, NodePlan],
    by_name: Mapping[str, ir.Node],
    graph_outputs: set[int],
    keep_float: set[str],
) -> str:
    inputs = list(node.inputs)
    outputs = list(node.outputs)
    if plan.role == "compute":
        if node.op_type == "Conv" and (outputs[0].name or "") in keep_float:
            return "its output must stay float"
        if plan.sandwiched:
            return _sandwich_violation(plan, node, members, graph_outputs, keep_float)
        return ""
    if plan.role == "embedding":
        return ""
    # island / shared / absorbed: every activation input must already carry Q/DQ.
    for index in plan.activations:
        value = inputs[index]
        if value is None or (value.name or "") in keep_float:
            return "input must stay float"
        producer = value.producer()
        if producer is None or (producer.name or "") not in members:
            return "input is not quantized by its producer"
        pplan = members[producer.name or ""]
        if not _output_quantized(producer, pplan, members, graph_outputs, keep_float):
            return "producer's output is float"
    if plan.role == "absorbed":
        value = inputs[0]
        assert value is not None
        producer = value.producer()
        if len(_consumers(value)) != 1 or id(value) in graph_outputs:
            return "producer's output has other uses"
        if (
            producer is None
            or members[producer.name or ""].role in ("shared", "absorbed")
            or len(producer.outputs) != 1
        ):
            return "producer cannot absorb it"
        if id(outputs[0]) in graph_outputs:
            return "graph output"
        if (outputs[0].name or "") in keep_float:
            return "output must stay float"
        return ""
    for out in outputs:
        if (out.name or "") in keep_float or id(out) in graph_outputs:
            return "output must stay float"
        consumers = _consumers(out)
        if not consumers:
            return "output unused"
        for consumer in consumers:
            cname = consumer.name or ""
            if cname not in members:
                return "a consumer stays float"
            if members[cname].role == "embedding":
                return "a consumer stays float"
            if members[cname].role == "compute" and not _takes_activation(
                members[cname], consumer, out
            ):
                return "used as a weight"
    return ""


_DEPTHWISE_FLOAT = (
    "depthwise Conv with a float neighbour: int8 depthwise kernels are slower than float"
)


def _sandwich_violation(
    plan: NodePlan,
    node: ir.Node,
    members: Mapping[str, NodePlan],
    graph_outputs: set[int],
    keep_float: set[str],
) -> str:
    """A depthwise Conv is quantized only when its input and every reader are int8 anyway."""
    value = node.inputs[0]
    producer = value.producer() if value is not None else None
    if (
        producer is None
        or (producer.name or "") not in members
        or not _output_quantized(
            producer, members[producer.name or ""], members, graph_outputs, keep_float
        )
    ):
        return _DEPTHWISE_FLOAT
    out = node.outputs[0]
    consumers = _consumers(out)
    if id(out) in graph_outputs or not consumers:
        return _DEPTHWISE_FLOAT
    for consumer in consumers:
        cplan = members.get(consumer.name or "")
        if cplan is None or cplan.role == "embedding":
            return _DEPTHWISE_FLOAT
    return ""


def _takes_activation(plan: NodePlan, node: ir.Node, value: ir.Value) -> bool:
    return any(node.inputs[i] is value for i in plan.activations)


def tensor_plans(
    members: Mapping[str, NodePlan], by_name: Mapping[str, ir.Node], graph_outputs: set[int]
) -> dict[str, TensorPlan]:
    """The activation tensors that get Q/DQ, with the range each uses.

    An absorbed Relu/Clip disappears: its input tensor is quantized with the
    activation's output range, and everything that read its output reads that.
    """
    alias: dict[str, str] = {}  # absorbed activation's output -> its input
    absorbed: dict[str, ir.Node] = {}  # absorbed activation's input -> the activation
    for name, plan in members.items():
        if plan.role == "absorbed":
            node = by_name[name]
            source = node.inputs[0]
            assert source is not None
            alias[node.outputs[0].name or ""] = source.name or ""
            absorbed[source.name or ""] = node
    tensors: dict[str, TensorPlan] = {}

    def add(key: str) -> None:
        key = alias.get(key, key)
        activation = absorbed.get(key)
        if activation is not None:
            tensors.setdefault(
                key,
                TensorPlan(key, activation.outputs[0].name or "", clip=_clip_bounds(activation)),
            )
        else:
            tensors.setdefault(key, TensorPlan(key, key))

    for name, plan in members.items():
        node = by_name[name]
        if plan.role in ("absorbed", "embedding"):
            continue
        for index in plan.activations:
            value = node.inputs[index]
            assert value is not None
            add(value.name or "")
        if plan.role == "compute" and not _output_quantized(
            node, plan, members, graph_outputs, set()
        ):
            continue
        for out in node.outputs:
            key = out.name or ""
            if plan.role == "shared":
                source = node.inputs[0]
                assert source is not None
                tensors[key] = TensorPlan(
                    key, key, shares=alias.get(source.name or "", source.name or "")
                )
            else:
                add(key)
    return tensors


def _clip_bounds(node: ir.Node) -> tuple[float, float] | None:
    if node.op_type == "Relu":
        return (0.0, math.inf)
    inputs = list(node.inputs) + [None, None]
    low = const_array(inputs[1])
    high = const_array(inputs[2])
    return (
        float(low) if low is not None else -math.inf,
        float(high) if high is not None else math.inf,
    )
