"""Pins what passes/fold.py and passes/eliminate.py take from onnxscript's private folder.

`onnxscript.optimizer._constant_folding` is not public API: fold-constants subclasses
its FoldConstantsPass (hooks `process_node`, `_prepare_folded_tensor`, the state's
`get_shape_value`), and both modules call `basic_constant_propagation`, `Replacement`
and `FOLDED_FROM_KEY`. pyproject pins onnxscript tightly; an upgrade that changes any
of this fails here, naming the piece, before it shows up as a wrong fold.
"""

from __future__ import annotations

import inspect

import numpy as np
import onnx
import onnx_ir as ir
from onnxscript.optimizer import _constant_folding as folding


def _model() -> ir.Model:
    """y = x + (a * b) with a, b constants, and the shape of x (batch N, 3 features)."""
    a = onnx.helper.make_tensor("a", onnx.TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])
    b = onnx.helper.make_tensor("b", onnx.TensorProto.FLOAT, [3], [2.0, 2.0, 2.0])
    graph = onnx.helper.make_graph(
        [
            onnx.helper.make_node("Constant", [], ["ca"], value=a),
            onnx.helper.make_node("Constant", [], ["cb"], value=b),
            onnx.helper.make_node("Mul", ["ca", "cb"], ["ab"], name="mul"),
            onnx.helper.make_node("Add", ["x", "ab"], ["y"], name="add"),
            onnx.helper.make_node("Shape", ["x"], ["s"], name="shape"),
        ],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3])],
        [
            onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3]),
            onnx.helper.make_tensor_value_info("s", onnx.TensorProto.INT64, [2]),
        ],
    )
    return ir.serde.deserialize_model(
        onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    )


def test_the_names_fold_and_eliminate_use_exist_with_their_signatures() -> None:
    init = inspect.signature(folding.FoldConstantsPass.__init__).parameters
    assert {"shape_inference", "input_size_limit", "output_size_limit", "should_fold"} <= set(init)
    assert list(inspect.signature(folding.FoldConstantsPass.process_node).parameters) == [
        "self",
        "node",
        "is_function",
    ]
    assert list(inspect.signature(folding.FoldConstantsPass._prepare_folded_tensor).parameters) == [
        "self",
        "node",
        "output_name",
        "output_array",
    ]
    assert isinstance(folding.FOLDED_FROM_KEY, str)
    assert callable(folding.basic_constant_propagation)
    assert list(inspect.signature(folding.Replacement).parameters)[:2] == [
        "new_outputs",
        "new_nodes",
    ]


def test_subclass_hooks_see_every_node_and_can_refuse_a_fold() -> None:
    seen: list[str] = []
    shapes: dict[str, object] = {}

    class Recording(folding.FoldConstantsPass):
        refuse = False

        def process_node(self, node: ir.Node, is_function: bool) -> folding.Replacement | None:
            seen.append(node.op_type)
            replacement = super().process_node(node, is_function)
            if node.op_type == "Shape":
                shapes["s"] = self._state.get_shape_value(node.outputs[0])
            return replacement

        def _prepare_folded_tensor(
            self, node: ir.Node, output_name: str, output_array: np.ndarray
        ) -> ir.Tensor | None:
            return (
                None
                if self.refuse
                else super()._prepare_folded_tensor(node, output_name, output_array)
            )

    def run(refuse: bool) -> tuple[ir.Model, ir.passes.PassResult]:
        model = _model()
        folder = Recording(
            shape_inference=True,
            input_size_limit=1 << 20,
            output_size_limit=1 << 20,
            should_fold=lambda node: None,
        )
        folder.refuse = refuse
        result = folder(model)
        return model, result

    model, result = run(refuse=False)
    assert {"Mul", "Add", "Shape"} <= set(seen)
    assert result.modified and hasattr(result, "symbolic_value_map")
    assert "Mul" not in [n.op_type for n in model.graph]
    add = next(n for n in model.graph if n.op_type == "Add")
    constant = add.inputs[1]
    assert constant is not None and constant.const_value is not None
    np.testing.assert_array_equal(constant.const_value.numpy(), [2.0, 4.0, 6.0])
    assert folding.FOLDED_FROM_KEY in constant.metadata_props  # fold.py strips this key
    shape = shapes["s"]
    assert isinstance(shape, ir.Shape) and shape.dims[1] == 3 and str(shape.dims[0]) == "N"

    model, result = run(refuse=True)  # the byte rule's veto: None keeps the node
    assert "Mul" in [n.op_type for n in model.graph]


def test_should_fold_false_keeps_a_node() -> None:
    model = _model()
    folding.FoldConstantsPass(
        shape_inference=True,
        input_size_limit=1 << 20,
        output_size_limit=1 << 20,
        should_fold=lambda node: False if node.op_type == "Mul" else None,
    )(model)
    assert "Mul" in [n.op_type for n in model.graph]


def test_basic_constant_propagation_gives_constant_outputs_their_value() -> None:
    model = _model()
    value = next(n for n in model.graph if n.op_type == "Mul").inputs[0]
    assert value is not None and value.const_value is None
    folding.basic_constant_propagation(model.graph)
    assert value.const_value is not None
    np.testing.assert_array_equal(value.const_value.numpy(), [1.0, 2.0, 3.0])
