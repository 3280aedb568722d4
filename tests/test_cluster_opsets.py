"""Palette expansion on old opsets: the stored form loads on ORT and equals the dense form.

Opset 11 has no Constant value_int(s)/value_float(s) (they came with 12): a MobileNetV3
classifier exported at opset 11 failed in ExpandPacked4's shape inference.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxslim import api
from onnxslim.runtime import Session


def _classifier(opset: int) -> ir.Model:
    rng = np.random.default_rng(opset)
    conv = rng.normal(size=(32, 16, 3, 3)).astype(np.float32)
    fc = rng.normal(size=(32, 10)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "fc"], ["y"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        f"opset{opset}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        initializer=[numpy_helper.from_array(conv, "w"), numpy_helper.from_array(fc, "fc")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 6
    return ir.from_proto(proto)


@pytest.mark.parametrize("opset", [9, 11, 13])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_palettes_expand_on_old_opsets(opset: int, bits: int) -> None:
    model = _classifier(opset)
    options = {"bits": bits, "verify": False, "optimize": False, "min_elements": 64}
    packed = api.cluster(model, **options).model
    dense = api.cluster(model, storage="dense", **options).model
    assert packed.opset_imports[""] == opset
    x = np.random.default_rng(0).normal(size=(2, 16, 8, 8)).astype(np.float32)
    got = Session(packed).run({"x": x})["y"]
    want = Session(dense).run({"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(want, Session(model).run({"x": x})["y"], atol=1e-6)  # clustered
