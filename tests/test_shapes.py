"""onnxslim.shapes.infer_shapes: what onnx_ir's ShapeInferencePass infers, with the
model's inputs and initializers put back as they were, in time linear in the initializers."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxslim.shapes import infer_shapes


def _model() -> ir.Model:
    """x[N,8] @ w (big initializer) + b (small initializer) -> Relu -> y; no value_info."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 64)).astype(np.float32), "w")  # 2 KB
    b = numpy_helper.from_array(np.ones(64, np.float32)[:4], "b")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Slice", ["h", "s0", "s1", "ax"], ["hs"]),
        helper.make_node("Add", ["hs", "b"], ["a"]),
        helper.make_node("Relu", ["a"], ["y"]),
    ]
    ints = [
        numpy_helper.from_array(np.array([0], np.int64), "s0"),
        numpy_helper.from_array(np.array([4], np.int64), "s1"),
        numpy_helper.from_array(np.array([1], np.int64), "ax"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [w, b, *ints],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return ir.serde.deserialize_model(proto)


def _shapes(model: ir.Model) -> dict[str, tuple[object, object]]:
    values = ir.convenience.create_value_mapping(model.graph)
    return {name: (v.dtype, v.shape) for name, v in values.items()}


def test_same_shapes_as_onnx_ir_and_the_graph_is_put_back() -> None:
    ours, reference = _model(), _model()
    inputs = [v.name for v in ours.graph.inputs]
    initializers = list(ours.graph.initializers)
    assert infer_shapes(ours, check_type=True)
    ir.passes.common.ShapeInferencePass(strict_mode=False)(reference)
    assert _shapes(ours) == _shapes(reference)
    assert ours.graph.node(0).outputs[0].shape == ir.Shape(["N", 64])
    assert ours.graph.outputs[0].shape == ir.Shape(["N", 4])
    assert [v.name for v in ours.graph.inputs] == inputs
    assert list(ours.graph.initializers) == initializers  # order kept, big ones included
    assert all(v.const_value is not None for v in ours.graph.initializers.values())
    assert not infer_shapes(ours)  # nothing left to infer


def test_initializers_are_never_searched_in_the_input_list(monkeypatch: pytest.MonkeyPatch) -> None:
    """onnx_ir's pass compares each initializer with every graph input appended so far:
    n^2/2 Value comparisons (120 s of inspect on fuzz case bombs/inits-100k)."""
    count = 2000
    inits = [numpy_helper.from_array(np.full(300, i, np.float32), f"w{i}") for i in range(count)]
    graph = helper.make_graph(
        [helper.make_node("Sum", [f"w{i}" for i in range(count)], ["y"])],
        "g",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model = ir.serde.deserialize_model(proto)
    comparisons = 0

    def counting_eq(self: ir.Value, other: object) -> bool:
        nonlocal comparisons
        comparisons += 1
        return self is other

    monkeypatch.setattr(ir.Value, "__eq__", counting_eq)
    assert infer_shapes(model)
    assert model.graph.outputs[0].shape == ir.Shape([300])
    assert comparisons < count, comparisons  # onnx_ir's pass: about count**2 / 2
