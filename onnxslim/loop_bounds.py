"""Loops that cannot end within a run's time budget, found before the run.

A run's time budget (onnxslim.budget) ends an endless Loop, but only after waiting
the whole budget (120 s): quantize's calibration, validate's runs and the parity
checks all start with a full-budget run. A Loop whose iteration count is known from
the graph alone is judged before running instead:
  1. the trip count M is absent or a constant (an initializer or a Constant node);
  2. the loop condition is absent or a constant true;
  3. the body's condition output is a constant true, the body's condition input, or
     an Identity of either: the condition never turns false, so the Loop runs M
     iterations (no M: forever);
  4. a Loop inside such a body runs its count once per outer iteration (counts
     multiply; an If branch runs at most once).
Anything else (a data-dependent trip count or condition) is left to the time budget.
Every ORT Loop iteration costs at least ITERATION_SECONDS: 1.3 us of CPU was measured
per iteration of the cheapest body (one Add of a float) on ORT 1.2x, so a bound of
half that errs on the side of running.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

ITERATION_SECONDS = 0.5e-6
_CONTROL_FLOW = frozenset({"Loop", "If", "Scan"})


def endless_loop(model: ir.Model, seconds: float | None) -> str | None:
    """Why one run of `model` cannot end within `seconds` (a Loop of known iterations
    past it), or None when no Loop says so from the graph alone."""
    if seconds is None:
        return None
    limit = seconds / ITERATION_SECONDS
    found = _worst(model.graph, 1.0, limit)
    if found is None:
        return None
    name, iterations = found
    count = "never ends" if math.isinf(iterations) else f"runs {iterations:.3g} iterations"
    return (
        f"{name} {count} (its trip count is constant or absent and its condition stays true): "
        f"one run would not finish within {seconds:g} s; a budget protects every run"
    )


def _worst(graph: ir.Graph, outer: float, limit: float) -> tuple[str, float] | None:
    """The first Loop (with the iterations it runs in all) past `limit`, nested ones
    counted `outer` times."""
    for node in graph:
        if node.op_type not in _CONTROL_FLOW or node.domain not in ("", "ai.onnx"):
            continue
        times = outer
        if node.op_type == "Loop":
            count = _iterations(node)
            if count is None:
                continue  # decided by data: left to the time budget
            times = outer * count
            if times > limit:
                return (f"Loop {node.name!r}" if node.name else "a Loop"), times
        for attribute in node.attributes.values():
            if attribute.type == ir.AttributeType.GRAPH:
                found = _worst(attribute.as_graph(), times, limit)
                if found is not None:
                    return found
    return None


def _iterations(node: ir.Node) -> float | None:
    """Iterations of a Loop node known from the graph (rules 1-3), inf when endless."""
    body_attr = node.attributes.get("body")
    if body_attr is None or body_attr.type != ir.AttributeType.GRAPH:
        return None
    body = body_attr.as_graph()
    inputs = list(node.inputs) + [None, None]
    trip, cond = inputs[0], inputs[1]
    if cond is not None and _constant(cond) is not True:
        return None
    if len(body.inputs) < 2 or not body.outputs or not _stays_true(body.outputs[0], body):
        return None
    if trip is None:
        return math.inf
    count = _constant(trip)
    if count is None or isinstance(count, bool):
        return None
    return float(max(count, 0))


def _stays_true(value: ir.Value, body: ir.Graph) -> bool:
    """Rule 3: the body's condition output is true whenever its condition input is."""
    for _ in range(8):  # a short chain of Identities
        if value is body.inputs[1] or _constant(value) is True:
            return True
        producer = value.producer()
        if producer is None or producer.op_type != "Identity" or not producer.inputs:
            return False
        source = producer.inputs[0]
        if source is None:
            return False
        value = source
    return False


def _constant(value: ir.Value) -> bool | int | None:
    """The scalar a value holds when it is an initializer or a Constant node's output."""
    tensor = value.const_value
    if tensor is None:
        producer = value.producer()
        if producer is not None and producer.op_type == "Constant":
            attribute = producer.attributes.get("value")
            if attribute is not None and attribute.type == ir.AttributeType.TENSOR:
                tensor = attribute.as_tensor()
    if tensor is None or tensor.size != 1:
        return None
    try:
        array = tensor.numpy()
    except Exception:  # unreadable data: the load checks report it, not this guess
        return None
    item = array.reshape(-1)[0]
    if array.dtype == np.bool_:
        return bool(item)
    if array.dtype.kind in "iu":
        return int(item)
    return None
