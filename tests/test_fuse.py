"""Fusion passes on small onnx.helper models, checked on ONNX Runtime.

Each test builds a model, runs one pass on a copy, and asserts (a) the node count
moved as the case says and (b) ORT gives the same outputs before and after, within
rtol 1e-5 / atol 1e-6 (fused weights are recomputed in float64 and rounded once,
so the only difference is float rounding). Negative cases assert that nothing
changed: a shared weight, a broadcast that is not per channel, a narrowing cast.
"""

from __future__ import annotations

import numpy as np
import pytest
from fuse_helpers import (
    apply,
    arr,
    bn_inits,
    build,
    conv_bn_model,
    conv_bn_nodes,
    feeds_for,
    init,
    ops,
    vi,
)
from onnx import TensorProto, helper

from onnxslim.passes import fuse
from onnxslim.registry import BUILTIN_PASSES, DEFAULT_OPTIMIZE, describe

# --------------------------------------------------------------------------- registry


def test_fusions_are_registered_lossless_and_in_the_default_pipeline():
    names = [
        "fuse-conv-bn",
        "fuse-conv-affine",
        "fuse-pad",
        "fuse-matmul-add-gemm",
        "fuse-gelu",
        "fuse-layernorm",
        "fuse-layout-chains",
    ]
    for name in names:
        info = describe(name, BUILTIN_PASSES[name])
        assert info.lossless and info.summary, name
        assert name in DEFAULT_OPTIMIZE


# --------------------------------------------------------------------------- conv + bn


def test_conv_bn_fuses_into_conv():
    fused, modified, before, after = apply(fuse.FuseConvBatchNorm(), conv_bn_model())
    assert modified and (before, after) == (2, 1)
    assert ops(fused) == ["Conv"]
    assert fused.graph.outputs[0].name == "y"


def test_conv_bn_leaves_shared_weight_alone():
    model = conv_bn_model(shared=True)
    fused, modified, before, after = apply(fuse.FuseConvBatchNorm(), model)
    assert not modified and before == after == 3
    weight = fused.graph.initializers["w"].const_value.numpy()
    np.testing.assert_array_equal(weight, model.graph.initializers["w"].const_value.numpy())


def test_conv_transpose_bn_with_groups():
    nodes = [
        helper.make_node("ConvTranspose", ["x", "w", "b"], ["c"], strides=[2, 2], group=2),
        helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["y"]),
    ]
    model = build(
        nodes,
        [vi("x", [1, 4, 3, 3])],
        [vi("y", [1, 6, 6, 6])],
        [init("w", arr(4, 3, 2, 2)), init("b", arr(6)), *bn_inits(6)],
    )
    fused, modified, before, after = apply(fuse.FuseConvBatchNorm(), model)
    assert modified and (before, after) == (2, 1)


def test_conv_bn_inside_if_branches():
    then_graph = helper.make_graph(conv_bn_nodes("t", y="ty"), "then", [], [vi("ty", [1, 4, 5, 5])])
    else_graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w2"], ["ey"], pads=[1, 1, 1, 1])],
        "else",
        [],
        [vi("ey", [1, 4, 5, 5])],
    )
    nodes = [
        helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph)
    ]
    model = build(
        nodes,
        [vi("cond", [], TensorProto.BOOL), vi("x", [1, 3, 5, 5])],
        [vi("y", [1, 4, 5, 5])],
        [init("w", arr(4, 3, 3, 3)), init("w2", arr(4, 3, 3, 3)), *bn_inits()],
    )
    feeds = [dict(feeds_for(model, s), cond=np.array(c)) for s, c in ((1, True), (2, False))]
    fused, modified, before, after = apply(fuse.FuseConvBatchNorm(), model, feeds)
    assert modified and (before, after) == (4, 3)
    assert "BatchNormalization" not in ops(fused)


def test_conv_bn_inside_local_function_with_constant_nodes():
    const = [
        helper.make_node("Constant", [], [n], value=init(n, a))
        for n, a in (
            ("w", arr(4, 3, 3, 3)),
            ("gamma", arr(4, low=0.5, high=1.5)),
            ("beta", arr(4)),
            ("mean", arr(4)),
            ("var", arr(4, low=0.5, high=2.0)),
        )
    ]
    function = helper.make_function(
        "custom", "ConvBn", ["x"], ["y"], const + conv_bn_nodes(), [helper.make_opsetid("", 20)]
    )
    model = build(
        [helper.make_node("ConvBn", ["x"], ["y"], domain="custom")],
        [vi("x", [1, 3, 5, 5])],
        [vi("y", [1, 4, 5, 5])],
        functions=[function],
    )
    fused, modified, before, after = apply(fuse.FuseConvBatchNorm(), model)
    assert (
        modified and before - after == 4
    )  # BN and its 4 parameter Constants go, a bias Constant comes
    assert ops(fused).count("Conv") == 1 and "BatchNormalization" not in ops(fused)


# --------------------------------------------------------------------------- conv affine


def test_conv_affine_chain_folds_into_conv():
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Sub", ["c", "m"], ["s"]),
        helper.make_node("Mul", ["k", "s"], ["p"]),
        helper.make_node("Div", ["p", "d"], ["q"]),
        helper.make_node("Add", ["q", "b"], ["y"]),
    ]
    model = build(
        nodes,
        [vi("x", [1, 3, 5, 5])],
        [vi("y", [1, 4, 3, 3])],
        [
            init("w", arr(4, 3, 3, 3)),
            init("m", arr(4, 1, 1)),
            init("k", arr(1, 4, 1, 1)),
            init("d", np.array(2.0, np.float32)),
            init("b", arr(4, 1, 1)),
        ],
    )
    fused, modified, before, after = apply(fuse.FuseConvAffine(), model)
    assert modified and (before, after) == (5, 1)


def test_conv_affine_skips_broadcast_along_width_and_shared_weights():
    # [1,1,1,4] has as many entries as channels, but scales the last (width) axis.
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Mul", ["c", "k"], ["y"]),
        helper.make_node("Conv", ["x", "w2"], ["c2"]),
        helper.make_node("Add", ["c2", "b"], ["z"]),
        helper.make_node("Conv", ["x", "w2"], ["z2"]),
    ]
    model = build(
        nodes,
        [vi("x", [1, 3, 6, 6])],
        [vi("y", [1, 4, 4, 4]), vi("z", [1, 4, 4, 4]), vi("z2", [1, 4, 4, 4])],
        [
            init("w", arr(4, 3, 3, 3)),
            init("k", arr(1, 1, 1, 4)),
            init("w2", arr(4, 3, 3, 3)),
            init("b", arr(4, 1, 1)),
        ],
    )
    _, modified, before, after = apply(fuse.FuseConvAffine(), model)
    assert not modified and before == after


def test_input_scale_and_offset_fold_into_unpadded_conv():
    nodes = [
        helper.make_node("Mul", ["x", "k"], ["s"]),
        helper.make_node("Add", ["s", "o"], ["t"]),
        helper.make_node("Conv", ["t", "w", "b"], ["y"]),
    ]
    model = build(
        nodes,
        [vi("x", [1, 3, 5, 5])],
        [vi("y", [1, 4, 3, 3])],
        [
            init("k", arr(3, 1, 1)),
            init("o", arr(1, 3, 1, 1)),
            init("w", arr(4, 3, 3, 3)),
            init("b", arr(4)),
        ],
        value_info=[vi("s", [1, 3, 5, 5])],
    )
    fused, modified, before, after = apply(fuse.FuseConvAffine(), model)
    assert modified and (before, after) == (3, 1)


def test_input_offset_stays_before_a_padded_conv():
    nodes = [
        helper.make_node("Add", ["x", "o"], ["t"]),
        helper.make_node("Conv", ["t", "w"], ["y"], pads=[1, 1, 1, 1]),
    ]
    model = build(
        nodes,
        [vi("x", [1, 3, 5, 5])],
        [vi("y", [1, 4, 5, 5])],
        [init("o", arr(3, 1, 1)), init("w", arr(4, 3, 3, 3))],
    )
    _, modified, _, _ = apply(fuse.FuseConvAffine(), model)
    assert not modified


# --------------------------------------------------------------------------- pad


def test_pad_folds_into_conv_and_average_pool():
    nodes = [
        helper.make_node("Pad", ["x", "pads"], ["p"]),
        helper.make_node("Conv", ["p", "w"], ["y"], pads=[1, 0, 1, 0]),
        helper.make_node("Pad", ["x", "pads"], ["q"]),
        helper.make_node("AveragePool", ["q"], ["z"], kernel_shape=[3, 3]),
    ]
    model = build(
        nodes,
        [vi("x", [1, 3, 6, 6])],
        [vi("y", [1, 4, 8, 6]), vi("z", [1, 3, 6, 6])],
        [init("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)), init("w", arr(4, 3, 3, 3))],
    )
    fused, modified, before, after = apply(fuse.FusePad(), model)
    assert modified and (before, after) == (4, 2)
    pool = next(n for n in fused.graph if n.op_type == "AveragePool")
    assert pool.attributes.get_int("count_include_pad", 0) == 1


@pytest.mark.parametrize("op,value", [("Conv", 1.0), ("MaxPool", 0.0), ("AveragePool", 0.5)])
def test_pad_with_other_values_stays(op, value):
    consumer = (
        helper.make_node("Conv", ["p", "w"], ["y"])
        if op == "Conv"
        else helper.make_node(op, ["p"], ["y"], kernel_shape=[3, 3])
    )
    nodes = [helper.make_node("Pad", ["x", "pads", "v"], ["p"]), consumer]
    channels = 4 if op == "Conv" else 3
    model = build(
        nodes,
        [vi("x", [1, 3, 6, 6])],
        [vi("y", [1, channels, 6, 6])],
        [
            init("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)),
            init("w", arr(4, 3, 3, 3)),
            init("v", np.array(value, np.float32)),
        ],
    )
    _, modified, _, _ = apply(fuse.FusePad(), model)
    assert not modified


# --------------------------------------------------------------------------- matmul + add


def test_matmul_add_becomes_gemm_for_matrices_only():
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["y"]),
        helper.make_node("MatMul", ["x3", "w"], ["m3"]),
        helper.make_node("Add", ["m3", "b"], ["z"]),
    ]
    model = build(
        nodes,
        [vi("x", ["N", 8]), vi("x3", [2, 3, 8])],
        [vi("y", ["N", 5]), vi("z", [2, 3, 5])],
        [init("w", arr(8, 5)), init("b", arr(5))],
    )
    fused, modified, before, after = apply(fuse.FuseMatMulAddGemm(), model)
    assert modified and (before, after) == (4, 3)
    assert ops(fused) == ["Add", "Gemm", "MatMul"]
    assert fused.graph.outputs[0].name == "y"


def test_matmul_add_inside_loop_body():
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["h", "w"], ["m"]),
            helper.make_node("Add", ["b", "m"], ["a"]),
            helper.make_node("Tanh", ["a"], ["h_out"]),
            helper.make_node("Identity", ["c_in"], ["c_out"]),
        ],
        "body",
        [vi("i", [], TensorProto.INT64), vi("c_in", [], TensorProto.BOOL), vi("h", [2, 6])],
        [vi("c_out", [], TensorProto.BOOL), vi("h_out", [2, 6])],
    )
    nodes = [helper.make_node("Loop", ["trips", "", "h0"], ["y"], body=body)]
    model = build(
        nodes,
        [vi("h0", [2, 6])],
        [vi("y", [2, 6])],
        [init("trips", np.array(3, np.int64)), init("w", arr(6, 6)), init("b", arr(6))],
    )
    fused, modified, before, after = apply(fuse.FuseMatMulAddGemm(), model)
    assert modified and before - after == 1
    assert "Gemm" in ops(fused)


# --------------------------------------------------------------------------- layout chains


def test_layout_chains_merge_and_cancel():
    nodes = [
        helper.make_node("Transpose", ["x"], ["t1"], perm=[0, 2, 3, 1]),
        helper.make_node("Transpose", ["t1"], ["t2"], perm=[0, 3, 1, 2]),  # cancels
        helper.make_node("Transpose", ["t2"], ["t3"], perm=[1, 0, 2, 3]),
        helper.make_node("Transpose", ["t3"], ["a"], perm=[0, 1, 3, 2]),  # merges with t3
        helper.make_node("Reshape", ["x", "s1"], ["r1"]),
        helper.make_node("Reshape", ["r1", "s2"], ["b"]),
        helper.make_node("Unsqueeze", ["x", "ax0"], ["u1"]),
        helper.make_node("Unsqueeze", ["u1", "ax2"], ["c"]),
        helper.make_node("Unsqueeze", ["x", "ax0"], ["u2"]),
        helper.make_node("Squeeze", ["u2", "ax0"], ["d"]),  # cancels: d is x
        helper.make_node("Cast", ["x"], ["f64"], to=TensorProto.DOUBLE),
        helper.make_node("Cast", ["f64"], ["e"], to=TensorProto.FLOAT),  # cancels
        helper.make_node("Cast", ["x"], ["f16"], to=TensorProto.FLOAT16),
        helper.make_node("Cast", ["f16"], ["f"], to=TensorProto.FLOAT),  # rounds: stays
    ]
    outputs = [
        vi("a", [3, 2, 5, 4]),
        vi("b", [6, 20]),
        vi("c", [1, 2, 1, 3, 4, 5]),
        vi("d", [2, 3, 4, 5]),
        vi("e", [2, 3, 4, 5]),
        vi("f", [2, 3, 4, 5]),
    ]
    model = build(
        nodes,
        [vi("x", [2, 3, 4, 5])],
        outputs,
        [
            init("s1", np.array([6, -1], np.int64)),
            init("s2", np.array([6, 20], np.int64)),
            init("ax0", np.array([0], np.int64)),
            init("ax2", np.array([2], np.int64)),
        ],
    )
    fused, modified, before, after = apply(fuse.FuseLayoutChains(), model)
    # d and e are x itself; a graph input cannot take an output's name, so an Identity stays.
    assert modified and (before, after) == (14, 7)
    assert ops(fused) == [
        "Cast",
        "Cast",
        "Identity",
        "Identity",
        "Reshape",
        "Transpose",
        "Unsqueeze",
    ]
    assert [v.name for v in fused.graph.outputs] == ["a", "b", "c", "d", "e", "f"]


def test_reshape_with_copied_dims_is_kept():
    nodes = [
        helper.make_node("Reshape", ["x", "s1"], ["r"]),
        helper.make_node("Reshape", ["r", "s2"], ["y"]),
    ]
    model = build(
        nodes,
        [vi("x", [2, 3, 4])],
        [vi("y", [2, 12])],
        [init("s1", np.array([2, 12], np.int64)), init("s2", np.array([0, -1], np.int64))],
    )
    _, modified, _, _ = apply(fuse.FuseLayoutChains(), model)
    assert not modified
