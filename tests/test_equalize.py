"""Cross-layer equalization: outputs equal on ORT within float rounding, ranges balanced."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxslim.passes.quantize.equalize import (
    CrossLayerEqualization,
    equalize_graph,
    iter_equalized_ranges,
)
from onnxslim.runtime import Session


def _separable_model(activation: str = "Relu", *, shared: bool = False) -> ir.Model:
    """x -> Conv3x3(8) -> act -> depthwise Conv3x3 -> act -> Conv1x1(4), imbalanced channels."""
    rng = np.random.default_rng(0)
    channel_gain = np.array([50.0, 0.05, 1.0, 8.0, 0.3, 20.0, 0.01, 2.0], np.float32)
    w1 = (rng.standard_normal((8, 3, 3, 3)) * channel_gain[:, None, None, None]).astype(np.float32)
    b1 = (rng.standard_normal(8) * channel_gain).astype(np.float32)
    wd = (rng.standard_normal((8, 1, 3, 3)) / channel_gain[:, None, None, None] ** 0.5).astype(
        np.float32
    )
    bd = rng.standard_normal(8).astype(np.float32)
    wp = rng.standard_normal((4, 8, 1, 1)).astype(np.float32)
    inits: list = []
    if activation == "Clip":
        inits += [
            numpy_helper.from_array(np.array(0, np.float32), "lo"),
            numpy_helper.from_array(np.array(6, np.float32), "hi"),
        ]

    def act(src: str, dst: str) -> onnx.NodeProto:
        if activation == "Clip":
            return helper.make_node("Clip", [src, "lo", "hi"], [dst])
        if activation == "LeakyRelu":
            return helper.make_node("LeakyRelu", [src], [dst], alpha=0.1)
        return helper.make_node(activation, [src], [dst])

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        act("c1", "a1"),
        helper.make_node("Conv", ["a1", "wd", "bd"], ["c2"], name="dw", group=8, pads=[1, 1, 1, 1]),
        act("c2", "a2"),
        helper.make_node("Conv", ["a2", "wp"], ["y"], name="pw"),
    ]
    if shared:
        nodes.append(
            helper.make_node("Conv", ["x", "w1"], ["y2"], name="reuses_w1", pads=[1, 1, 1, 1])
        )
    inits += [
        numpy_helper.from_array(a, n)
        for a, n in ((w1, "w1"), (b1, "b1"), (wd, "wd"), (bd, "bd"), (wp, "wp"))
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if shared:
        outputs.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, None))
    graph = helper.make_graph(
        nodes,
        "sep",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 10, 10])],
        outputs,
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return ir.serde.deserialize_model(model)


def _run(model: ir.Model, x: np.ndarray) -> np.ndarray:
    return Session(model).run({"x": x})["y"]


@pytest.mark.parametrize("activation", ["Relu", "LeakyRelu"])
def test_outputs_equal_and_ranges_balanced(activation: str) -> None:
    model = _separable_model(activation)
    x = np.random.default_rng(1).standard_normal((2, 3, 10, 10)).astype(np.float32)
    before = _run(model, x)
    spread_before = [float(r1.max() / r1.min()) for _, r1, _ in iter_equalized_ranges(model.graph)]
    result = CrossLayerEqualization()(model)
    assert result.modified
    after = _run(result.model, x)
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4 * float(np.abs(before).max()))
    report = result.model.graph.meta["onnxslim.equalize"]
    assert report.equalized == ["conv1 -> dw", "dw -> pw"]
    # The depthwise weight's per-channel ranges were spread over 4 decades; now they are balanced
    # with both neighbours: r1 == r2 per channel for the last pair, close for the first.
    ranges = list(iter_equalized_ranges(result.model.graph))
    for _, r1, r2 in ranges:
        np.testing.assert_allclose(r1, r2, rtol=0.05)
    spread_after = [float(r1.max() / r1.min()) for _, r1, _ in ranges]
    assert spread_after[0] < spread_before[0] / 10


def test_clip_between_layers_is_refused() -> None:
    model = _separable_model("Clip")
    report = equalize_graph(model.graph)
    assert report.equalized == []
    assert any("not positively homogeneous" in reason for _, reason in report.skipped)


def test_shared_weight_is_refused_and_outputs_unchanged() -> None:
    model = _separable_model("Relu", shared=True)
    x = np.random.default_rng(2).standard_normal((2, 3, 10, 10)).astype(np.float32)
    before = Session(model).run({"x": x})
    report = equalize_graph(model.graph)
    assert report.equalized == ["dw -> pw"]
    assert any("shared" in reason for _, reason in report.skipped)
    after = Session(model).run({"x": x})
    np.testing.assert_array_equal(after["y2"], before["y2"])
    np.testing.assert_allclose(
        after["y"], before["y"], rtol=1e-4, atol=1e-4 * float(np.abs(before["y"]).max())
    )


def test_gemm_pair_with_transposed_weights() -> None:
    rng = np.random.default_rng(3)
    gains = np.array([30.0, 0.02, 1.0, 5.0, 0.5, 100.0], np.float32)
    w1 = (rng.standard_normal((6, 5)) * gains[:, None]).astype(np.float32)  # transB=1: [N, K]
    b1 = (rng.standard_normal(6) * gains).astype(np.float32)
    w2 = rng.standard_normal((6, 3)).astype(np.float32)  # transB=0: [K, N]
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="g1", transB=1),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Gemm", ["r", "w2"], ["y"], name="g2"),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(b1, "b1"),
            numpy_helper.from_array(w2, "w2"),
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    model = ir.serde.deserialize_model(proto)
    x = rng.standard_normal((4, 5)).astype(np.float32)
    before = _run(model, x)
    result = CrossLayerEqualization()(model)
    after = _run(result.model, x)
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-5 * float(np.abs(before).max()))
    ((_, r1, r2),) = iter_equalized_ranges(result.model.graph)
    np.testing.assert_allclose(r1, r2, rtol=1e-6)
