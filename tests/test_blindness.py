"""onnxslim.blindness: a decision output whose argmax the inputs, not the weights, decide
(rxnmap's attention) is held to SQNR; one the weights decide keeps its decision figure."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from onnxslim.agreement import Target, detect_roles
from onnxslim.blindness import unblind
from onnxslim.runtime import Session


def _model(bias_scale: float) -> ir.Model:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 32)).astype(np.float32)
    b = np.zeros(32, np.float32)
    b[3] = bias_scale  # class 3 wins every row when the bias dominates
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Add", ["h", "b"], ["z"]),
            helper.make_node("Softmax", ["z"], ["p"], axis=-1),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16, 64])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, [16, 32])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ir.from_proto(proto)


def _roles(model: ir.Model) -> dict:
    feeds = [
        {"x": np.random.default_rng(i).normal(size=(16, 64)).astype(np.float32)} for i in range(4)
    ]
    session = Session(model)
    reference = [session.run(f) for f in feeds]
    roles = detect_roles(model, reference)
    assert roles["p"].role == "classifier"
    return unblind(model, feeds, reference, roles, Target())


def test_decisions_the_bias_makes_are_blind_and_held_to_sqnr() -> None:
    role = _roles(_model(bias_scale=100.0))["p"]
    assert role.role == "regression" and "weights zeroed" in role.reason


def test_decisions_the_weights_make_keep_their_figure() -> None:
    assert _roles(_model(bias_scale=0.0))["p"].role == "classifier"
