"""What fold-constants and eliminate-no-ops rely on in onnxscript / onnx_ir internals, pinned.

onnxscript exports no folder class (only fold_constants functions), so FoldConstants
subclasses the private `_constant_folding.FoldConstantsPass` and overrides hooks; and
onnx_ir detaches inputs one by one in quadratic time, so fold detaches wide nodes
through onnx_ir internals. An upgrade that renames or changes these fails here, not
as a silent slowdown or a fold that no longer honours the byte rules. The counting
tests also keep both passes linear on huge graphs without timing anything.
"""

from __future__ import annotations

import inspect

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxslim.passes import fold
from onnxslim.passes.eliminate import EliminateNoOps
from onnxslim.passes.fold import FoldConstants, detach_inputs


def _chain(length: int, op: str = "Relu") -> ir.Model:
    nodes = [
        helper.make_node(op, ["x" if i == 0 else f"v{i - 1}"], [f"v{i}"]) for i in range(length)
    ]
    nodes.append(helper.make_node("Identity", [f"v{length - 1}"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    return ir.serde.deserialize_model(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    )


def _wide_sum(count: int) -> ir.Model:
    inits = [numpy_helper.from_array(np.full(4, i, np.float32), f"w{i}") for i in range(count)]
    nodes = [
        helper.make_node("Sum", [f"w{i}" for i in range(count)], ["s"]),
        helper.make_node("Add", ["x", "s"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "sum",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        inits,
    )
    return ir.serde.deserialize_model(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    )


def test_onnxscript_folder_hooks_exist() -> None:
    """The private class, its constructor and the hooks FoldConstants overrides."""
    from onnxscript.optimizer import _constant_folding as cf

    params = inspect.signature(cf.FoldConstantsPass.__init__).parameters
    assert {"shape_inference", "input_size_limit", "output_size_limit", "should_fold"} <= set(
        params
    )
    for hook in ("process_node", "_do_inference", "_prepare_folded_tensor", "replace_node"):
        assert callable(getattr(cf.FoldConstantsPass, hook)), hook
    state = cf.OptimizerState()
    assert callable(state.get_shape_value) and callable(state.set_sym_value)
    assert isinstance(state.symbolic_value_map, dict)
    replacement = cf.Replacement([], [])
    assert replacement.new_outputs == [] and replacement.new_nodes == []


def test_public_names_used() -> None:
    from onnxscript.optimizer import FOLDED_FROM_KEY, basic_constant_propagation

    assert isinstance(FOLDED_FROM_KEY, str) and callable(basic_constant_propagation)


def test_detach_inputs_uses_onnx_ir_internals() -> None:
    model = _wide_sum(5)
    node = next(n for n in model.graph if n.op_type == "Sum")
    values = list(node.inputs)
    detach_inputs(node)
    assert node.inputs == ()
    assert all(not v.uses() for v in values)  # type: ignore[union-attr]


def test_wide_node_detached_in_one_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Folding a Sum of 600 initializers never detaches input by input (quadratic in onnx_ir)."""
    calls = []
    original = ir.Node.replace_input_with

    def counting(self: ir.Node, index: int, value: ir.Value | None) -> None:
        calls.append(index)
        original(self, index, value)

    monkeypatch.setattr(ir.Node, "replace_input_with", counting)
    model = _wide_sum(600)
    assert FoldConstants()(model).modified
    assert [n.op_type for n in model.graph] == ["Add"]
    assert len(model.graph.initializers) == 1  # the folded sum; the 600 inputs are gone
    assert len(calls) < 50


def test_elementwise_chain_skips_node_shape_inference(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Relu chain is typed by infer_elementwise, not by onnx's per-node inference."""
    calls = []
    original = onnx.shape_inference.infer_node_outputs

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(onnx.shape_inference, "infer_node_outputs", counting)
    model = _chain(300)
    FoldConstants()(model)
    relu = [n for n in model.graph if n.op_type == "Relu"]
    assert len(relu) == 300
    assert all(n.outputs[0].shape == ir.Shape([1, 4]) for n in relu)
    assert all(n.outputs[0].dtype == ir.DataType.FLOAT for n in relu)
    assert len(calls) < 5


def test_infer_elementwise_leaves_broadcasts_alone() -> None:
    """[?] + [?] is not typed (unknown dims may broadcast); [N] * scalar is."""
    a = ir.Value(name="a", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([None]))
    b = ir.Value(name="b", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([None]))
    node = ir.Node("", "Add", [a, b])
    assert not fold.infer_elementwise(node)
    n = ir.Value(name="n", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(["N"]))
    s = ir.Value(name="s", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([]))
    node = ir.Node("", "Mul", [s, n])
    assert fold.infer_elementwise(node)
    assert node.outputs[0].shape == ir.Shape(["N"])


def test_eliminate_skips_chain_rules_without_roots(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Reshape/Transpose/Unsqueeze: the rewriter (every rule on every node) is not run."""
    from onnxscript.rewriter import RewriteRuleSet

    calls = []
    monkeypatch.setattr(RewriteRuleSet, "apply_to_model", lambda self, m: calls.append(1) or 0)
    model = _chain(200)
    model.graph.node(0).op_type = "Identity"  # something to remove, so a sweep runs
    assert EliminateNoOps()(model).modified
    assert calls == []
