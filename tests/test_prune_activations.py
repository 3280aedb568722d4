"""onnxslim.activations on ORT: captured rows reproduce each layer, streamed sums match them."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper
from prune_fixtures import convnet, feeds, ffn

from onnxslim.activations import accumulate_normal_equations, capture_layer_io, coalesce_feeds


def _replay(node: ir.Node, X: np.ndarray) -> np.ndarray:
    """The layer's output rows computed from captured input rows with its own weights."""
    w = node.inputs[1].const_value.numpy()
    b = (
        node.inputs[2].const_value.numpy()
        if len(node.inputs) > 2 and node.inputs[2] is not None
        else 0.0
    )
    if node.op_type == "Conv":
        groups = node.attributes.get_int("group", 1)
        out = w.shape[0]
        per_group = np.einsum(
            "rgk,gok->rgo", X.reshape(len(X), groups, -1), w.reshape(groups, out // groups, -1)
        )
        return per_group.reshape(len(X), out) + b
    if node.op_type == "Gemm" and node.attributes.get_int("transB", 0):
        return X @ w.T + b
    return X @ w + b


def _conv_zoo() -> onnx.ModelProto:
    """Convs with stride, dilation, asymmetric pads, auto_pad and groups, one after another."""
    rng = np.random.default_rng(3)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "a.w"),
        numpy_helper.from_array(
            rng.standard_normal((8, 4, 3, 3)).astype(np.float32), "b.w"
        ),  # group 2
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b.b"),
        numpy_helper.from_array(rng.standard_normal((6, 8, 2, 3)).astype(np.float32), "c.w"),
        numpy_helper.from_array(rng.standard_normal((4, 6, 3)).astype(np.float32), "d.w"),  # Conv1d
        numpy_helper.from_array(rng.standard_normal((6, 6, 2, 2)).astype(np.float32), "e.w"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "a.w"], ["a"], name="a", strides=[2, 1], pads=[1, 0, 2, 1]),
        helper.make_node(
            "Conv",
            ["a", "b.w", "b.b"],
            ["b"],
            name="b",
            group=2,
            dilations=[2, 2],
            pads=[2, 1, 2, 3],
        ),
        helper.make_node(
            "Conv", ["b", "c.w"], ["c0"], name="c", auto_pad="SAME_LOWER", strides=[2, 2]
        ),
        helper.make_node(
            "Conv", ["c0", "e.w"], ["c"], name="e", auto_pad="SAME_UPPER", strides=[1, 2]
        ),
        helper.make_node("Reshape", ["c", "shape"], ["c3"], name="flat3"),
        helper.make_node("Conv", ["c3", "d.w"], ["y"], name="d", pads=[1, 1]),
    ]
    inits.append(numpy_helper.from_array(np.array([0, 6, -1], np.int64), "shape"))
    graph = helper.make_graph(
        nodes,
        "zoo",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 13, 11])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize(
    "builder,shape,layers",
    [
        (convnet, (3, 16, 16), ["stem", "dw", "pw", "res1", "side", "fc1", "fc2"]),
        (ffn, (6, 32), ["fc1", "fc2", "head"]),
        (_conv_zoo, (3, 13, 11), ["a", "b", "c", "e", "d"]),
    ],
)
def test_captured_rows_reproduce_every_layer(builder, shape, layers) -> None:
    model = ir.serde.deserialize_model(builder())
    data = feeds(shape, 6)
    captured = capture_layer_io(model, layers, data, max_rows=300)
    nodes = {n.name: n for n in model.graph}
    for name in layers:
        X, Y = captured[name].X, captured[name].Y
        assert len(X) == len(Y) > 0
        np.testing.assert_allclose(_replay(nodes[name], X), Y, atol=2e-4, rtol=1e-4, err_msg=name)


def test_normal_equations_are_the_sums_over_the_same_rows() -> None:
    model = ir.serde.deserialize_model(convnet())
    data = feeds((3, 16, 16), 10)
    captured = capture_layer_io(model, ["res1", "dw"], data, max_rows=400)
    sums = accumulate_normal_equations(model, ["res1", "dw"], data, max_rows=400)
    X, Y = captured["res1"].X.astype(np.float64), captured["res1"].Y.astype(np.float64)
    Xa = np.concatenate([X, np.ones((len(X), 1))], axis=1)
    np.testing.assert_allclose(sums["res1"].gram[0], Xa.T @ Xa, rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(sums["res1"].cross[0], Xa.T @ Y, rtol=1e-9, atol=1e-6)
    assert sums["res1"].rows == len(X)
    held = sums["res1"].holdout
    assert held is not None and 0 < held.rows < len(
        X
    )  # whole samples held out, a subset of the rows
    depthwise = sums["dw"]
    assert depthwise.gram.shape == (16, 10, 10) and depthwise.cross.shape == (16, 10, 1)


def test_targets_from_a_teacher_model_and_selected_columns() -> None:
    """X from one model, Y from another at the same positions: what reconstruction relies on."""
    student = ir.serde.deserialize_model(convnet(seed=0))
    teacher = ir.serde.deserialize_model(convnet(seed=0))
    data = feeds((3, 16, 16), 4)
    columns = {"res1": np.array([0, 5, 9])}
    both = capture_layer_io(
        student, ["res1"], data, max_rows=200, target_model=teacher, target_columns=columns
    )
    alone = capture_layer_io(student, ["res1"], data, max_rows=200)
    np.testing.assert_array_equal(both["res1"].X, alone["res1"].X)
    np.testing.assert_allclose(both["res1"].Y, alone["res1"].Y[:, [0, 5, 9]], atol=1e-6)


def test_coalescing_batches_free_leading_axes_only() -> None:
    model = ir.serde.deserialize_model(convnet())
    data = feeds((3, 16, 16), 10)
    batches = coalesce_feeds(model, data, 4)
    assert [b["x"].shape[0] for b in batches] == [4, 4, 2]
    fixed = convnet()
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    assert len(coalesce_feeds(ir.serde.deserialize_model(fixed), data, 4)) == 10
