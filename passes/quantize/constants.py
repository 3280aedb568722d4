"""Constant values seen through Identity chains: weights, biases, clip bounds, tables.

Why its own module: planning, preparing and inserting Q/DQ all ask whether an input
is a constant and what it holds; exporters tie weights through Identity nodes and
Constant ops, and one answer for all of them keeps their decisions consistent.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


def constant_source(value: ir.Value | None) -> ir.Value | None:
    """The value itself, or the constant an Identity chain passes on (exporters tie weights so)."""
    seen = 0
    while value is not None and value.const_value is None and seen < 16:
        producer = value.producer()
        if (
            producer is None
            or producer.op_type != "Identity"
            or producer.domain not in ("", "ai.onnx")
        ):
            break
        value = producer.inputs[0]
        seen += 1
    return value


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The array a constant input holds (through Identity chains and Constant ops), or None."""
    value = constant_source(value)
    if value is None:
        return None
    tensor = value.const_value
    if tensor is None:
        tensor = ir.convenience.get_const_tensor(value)
    if tensor is None:
        return None
    try:
        return tensor.numpy()
    except Exception:
        return None


def is_constant(value: ir.Value | None) -> bool:
    """True for an initializer that is not a graph input, or the output of a Constant op."""
    value = constant_source(value)
    if value is None:
        return False
    if value.const_value is not None and not value.is_graph_input():
        return True
    producer = value.producer()
    return (
        producer is not None
        and producer.op_type == "Constant"
        and producer.domain in ("", "ai.onnx")
    )
