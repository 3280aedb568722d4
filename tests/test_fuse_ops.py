"""Fusion passes, part two: GELU and LayerNorm written out, batched MatMul+Add, layout
wrappers, pads into pools, concats, transposes and reshapes (same checks as test_fuse.py)."""

import math

import numpy as np
import onnx
import pytest
from fuse_helpers import (
    ATOL,
    RTOL,
    apply,
    arr,
    build,
    feeds_for,
    init,
    ops,
    run,
    vi,
)
from onnx import helper

from onnxslim.passes import fuse

# --------------------------------------------------------------------------- gelu and layernorm


def erf_gelu_nodes(x: str = "x", y: str = "y") -> list[onnx.NodeProto]:
    return [
        helper.make_node("Div", [x, "sqrt2"], ["g1"]),
        helper.make_node("Erf", ["g1"], ["g2"]),
        helper.make_node("Add", ["g2", "one"], ["g3"]),
        helper.make_node("Mul", [x, "g3"], ["g4"]),
        helper.make_node("Mul", ["g4", "half"], [y]),
    ]


GELU_INITS = [
    init("sqrt2", np.array(math.sqrt(2), np.float32)),
    init("one", np.array(1.0, np.float32)),
    init("half", np.array(0.5, np.float32)),
]


@pytest.mark.parametrize(
    "opset,contrib,expected", [(20, False, "Gelu"), (17, False, None), (17, True, "Gelu")]
)
def test_erf_gelu(opset, contrib, expected):
    model = build(erf_gelu_nodes(), [vi("x", [2, 8])], [vi("y", [2, 8])], GELU_INITS, opset=opset)
    fused, modified, before, after = apply(fuse.FuseGelu(contrib=contrib), model)
    assert modified == (expected is not None)
    if expected:
        assert ops(fused) == [expected] and after == 1
        assert fused.graph.node(0).domain == ("com.microsoft" if contrib else "")


def test_tanh_gelu_written_out():
    c = math.sqrt(2 / math.pi)
    nodes = [
        helper.make_node("Mul", ["x", "x"], ["x2"]),
        helper.make_node("Mul", ["x2", "x"], ["x3"]),
        helper.make_node("Mul", ["k1", "x3"], ["a"]),
        helper.make_node("Add", ["x", "a"], ["b"]),
        helper.make_node("Mul", ["b", "k2"], ["t0"]),
        helper.make_node("Tanh", ["t0"], ["t"]),
        helper.make_node("Add", ["one", "t"], ["u"]),
        helper.make_node("Mul", ["half", "x"], ["hx"]),
        helper.make_node("Mul", ["hx", "u"], ["y"]),
    ]
    model = build(
        nodes,
        [vi("x", [2, 8])],
        [vi("y", [2, 8])],
        [
            init("k1", np.array(0.044715, np.float32)),
            init("k2", np.array(c, np.float32)),
            init("one", np.array(1.0, np.float32)),
            init("half", np.array(0.5, np.float32)),
        ],
    )
    fused, modified, before, after = apply(fuse.FuseGelu(), model)
    assert modified and (before, after) == (9, 1)
    assert fused.graph.node(0).attributes.get_string("approximate") == "tanh"


def test_gelu_keeps_an_intermediate_read_elsewhere():
    nodes = erf_gelu_nodes() + [helper.make_node("Relu", ["g3"], ["z"])]
    model = build(nodes, [vi("x", [2, 8])], [vi("y", [2, 8]), vi("z", [2, 8])], GELU_INITS)
    _, modified, _, _ = apply(fuse.FuseGelu(), model)
    assert not modified


def layernorm_nodes(axes_as_input: bool) -> list[onnx.NodeProto]:
    def mean(x: str, y: str) -> onnx.NodeProto:
        if axes_as_input:
            return helper.make_node("ReduceMean", [x, "axes"], [y])
        return helper.make_node("ReduceMean", [x], [y], axes=[-1])

    return [
        mean("x", "mu"),
        helper.make_node("Sub", ["x", "mu"], ["d"]),
        helper.make_node("Pow", ["d", "two"], ["d2"]),
        mean("d2", "var"),
        helper.make_node("Add", ["var", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["sd"]),
        helper.make_node("Mul", ["gamma", "d"], ["gd"]),
        helper.make_node("Div", ["gd", "sd"], ["n"]),
        helper.make_node("Add", ["n", "beta"], ["y"]),
    ]


@pytest.mark.parametrize("opset", [17, 18])
def test_layernorm_written_out(opset):
    inits = [
        init("two", np.array(2.0, np.float32)),
        init("eps", np.array(1e-5, np.float32)),
        init("gamma", arr(16, low=0.5, high=1.5)),
        init("beta", arr(16)),
    ]
    if opset >= 18:
        inits.append(init("axes", np.array([-1], np.int64)))
    model = build(
        layernorm_nodes(opset >= 18),
        [vi("x", ["B", 3, 16])],
        [vi("y", ["B", 3, 16])],
        inits,
        opset=opset,
    )
    fused, modified, before, after = apply(fuse.FuseLayerNorm(), model)
    assert modified and (before, after) == (9, 1)
    assert ops(fused) == ["LayerNormalization"]
    # gamma and beta are read as they are, not copied
    assert [v.name for v in fused.graph.node(0).inputs] == ["x", "gamma", "beta"]


def test_layernorm_not_on_a_leading_axis():
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["mu"], axes=[1]),
        helper.make_node("Sub", ["x", "mu"], ["d"]),
        helper.make_node("Mul", ["d", "d"], ["d2"]),
        helper.make_node("ReduceMean", ["d2"], ["var"], axes=[1]),
        helper.make_node("Add", ["var", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["sd"]),
        helper.make_node("Div", ["d", "sd"], ["y"]),
    ]
    model = build(
        nodes,
        [vi("x", [2, 16, 3])],
        [vi("y", [2, 16, 3])],
        [init("eps", np.array(1e-5, np.float32))],
        opset=17,
    )
    _, modified, _, _ = apply(fuse.FuseLayerNorm(), model)
    assert not modified


def test_batched_matmul_add_becomes_gemm_when_reshapes_vanish():
    # Three projections of one [2,3,8] activation, each viewed as heads: q/k/v in attention.
    nodes = []
    outputs = []
    for i in range(3):
        nodes += [
            helper.make_node("MatMul", ["x", f"w{i}"], [f"m{i}"]),
            helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
            helper.make_node("Reshape", [f"a{i}", "heads"], [f"y{i}"]),
        ]
        outputs.append(vi(f"y{i}", [2, 3, 2, 2]))
    inits = [init("heads", np.array([2, 3, 2, 2], np.int64))]
    inits += [init(f"w{i}", arr(8, 4)) for i in range(3)] + [
        init(f"b{i}", arr(4)) for i in range(3)
    ]
    model = build(nodes, [vi("x", [2, 3, 8])], outputs, inits)
    fused, modified, before, after = apply(fuse.FuseMatMulAddGemm(), model)
    assert modified and (before, after) == (
        9,
        7,
    )  # one shared Reshape in, three Gemms, three Reshapes
    assert ops(fused).count("Gemm") == 3


def test_channels_last_wrappers_cancel_and_affine_folds_into_conv():
    # A converter's NHWC graph: every Conv between Transposes, bias and BN as Add/Mul on [C].
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["xt", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Transpose", ["c1"], ["c1t"], perm=[0, 2, 3, 1]),
        helper.make_node("Add", ["c1t", "bias"], ["a1"]),
        helper.make_node("Mul", ["a1", "scale"], ["m1"]),
        helper.make_node("Relu", ["m1"], ["r1"]),
        helper.make_node("Transpose", ["r1"], ["r1t"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["r1t", "w2"], ["c2"]),
        helper.make_node("Transpose", ["c2"], ["c2t"], perm=[0, 2, 3, 1]),
        helper.make_node("Add", ["c2t", "r1"], ["s"]),  # residual, both sides channels-last
        helper.make_node("ReduceMean", ["s"], ["y"], axes=[1, 2], keepdims=0),
    ]
    model = build(
        nodes,
        [vi("x", [1, 6, 6, 3])],
        [vi("y", [1, 4])],
        [
            init("w1", arr(4, 3, 3, 3)),
            init("w2", arr(4, 4, 1, 1)),
            init("bias", arr(4)),
            init("scale", arr(4, low=0.5, high=1.5)),
        ],
        opset=17,
    )
    fused = model.clone()
    assert fuse.FuseLayoutChains()(fused).modified
    assert ops(fused).count("Transpose") == 1  # only the input's NHWC -> NCHW remains
    fused, modified, before, after = apply(fuse.FuseConvAffine(), fused)
    assert modified and (before, after) == (8, 6)
    assert ops(fused) == ["Add", "Conv", "Conv", "ReduceMean", "Relu", "Transpose"]
    # The whole thing still computes what the original did.
    for seed in (1, 2):
        f = feeds_for(model, seed)
        np.testing.assert_allclose(run(fused, f)["y"], run(model, f)["y"], rtol=RTOL, atol=ATOL)


def test_edge_pad_folds_into_max_pool():
    nodes = [
        helper.make_node("Pad", ["x", "pads"], ["p"], mode="edge"),
        helper.make_node("MaxPool", ["p"], ["y"], kernel_shape=[3, 3], strides=[2, 2]),
    ]
    model = build(
        nodes,
        [vi("x", [1, 2, 7, 7])],
        [vi("y", [1, 2, 4, 4])],
        [init("pads", np.array([0, 0, 0, 0, 0, 0, 2, 2], np.int64))],
    )
    fused, modified, before, after = apply(fuse.FusePad(), model)
    assert modified and (before, after) == (2, 1)


def test_gelu_inside_scan_body():
    body = helper.make_graph(
        erf_gelu_nodes("row", "out") + [helper.make_node("Add", ["acc", "out"], ["acc_out"])],
        "body",
        [vi("acc", [8]), vi("row", [8])],
        [vi("acc_out", [8]), vi("out", [8])],
    )
    nodes = [
        helper.make_node("Scan", ["init", "x"], ["total", "rows"], body=body, num_scan_inputs=1)
    ]
    model = build(
        nodes,
        [vi("init", [8]), vi("x", [3, 8])],
        [vi("total", [8]), vi("rows", [3, 8])],
        GELU_INITS,
    )
    fused, modified, before, after = apply(fuse.FuseGelu(), model)
    assert modified and (before, after) == (7, 3)  # Scan, Gelu, Add


def test_nested_concats_on_one_axis_merge():
    nodes = [
        helper.make_node("Concat", ["a", "b"], ["ab"], axis=1),
        helper.make_node("Concat", ["ab", "c"], ["y"], axis=-1),
    ]  # -1 is axis 1 at rank 2
    model = build(nodes, [vi("a", [2, 3]), vi("b", [2, 4]), vi("c", [2, 5])], [vi("y", [2, 12])])
    fused, modified, before, after = apply(fuse.FuseLayoutChains(), model)
    assert modified and (before, after) == (2, 1)
    other_axis = build(
        [
            helper.make_node("Concat", ["a", "b"], ["ab"], axis=0),
            helper.make_node("Concat", ["ab", "c"], ["y"], axis=1),
        ],
        [vi("a", [2, 3]), vi("b", [2, 3]), vi("c", [4, 2])],
        [vi("y", [4, 5])],
    )
    _, modified, _, _ = apply(fuse.FuseLayoutChains(), other_axis)
    assert not modified


def test_transpose_sinks_to_a_graph_output_keeping_its_name():
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
        helper.make_node("Add", ["t", "c"], ["a"]),
        helper.make_node("Relu", ["a"], ["y"]),
    ]
    model = build(nodes, [vi("x", [2, 3, 4])], [vi("y", [2, 4, 3])], [init("c", arr(3))])
    fused, modified, before, after = apply(fuse.FuseLayoutChains(), model)
    assert modified and before == after == 3
    assert fused.graph.outputs[0].name == "y"
    assert fused.graph.outputs[0].producer().op_type == "Transpose"


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_stack_of_unsqueezes_becomes_one_reshape(axis):
    n = 4
    nodes = [helper.make_node("Unsqueeze", [f"h{i}", "ax"], [f"u{i}"]) for i in range(n)]
    nodes.append(helper.make_node("Concat", [f"u{i}" for i in range(n)], ["y"], axis=axis))
    out = {0: [n, "B", 5], 1: ["B", n, 5], -1: ["B", 5, n]}[axis]
    model = build(
        nodes,
        [vi(f"h{i}", ["B", 5]) for i in range(n)],
        [vi("y", out)],
        [init("ax", np.array([axis], np.int64))],
    )
    fused, modified, before, after = apply(fuse.FuseLayoutChains(), model)
    if axis == -1:  # a new last axis interleaves the inputs: no Concat lays them out so
        assert not modified
        return
    assert modified and (before, after) == (n + 1, 2)
    assert ops(fused) == ["Concat", "Reshape"]


def test_reshape_to_shape_built_from_own_dims_becomes_constant():
    # y: x[B,T,8] -> [B, T, 2, 4] spelled with Shape/Gather/Unsqueeze/Concat: B, T become 0.
    # z: x -> [N, 8] where N is read off another input: the one dynamic entry becomes -1.
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "i0"], ["b"], axis=0),
        helper.make_node("Gather", ["s", "i1"], ["t"], axis=0),
        helper.make_node("Unsqueeze", ["b", "ax"], ["ub"]),
        helper.make_node("Unsqueeze", ["t", "ax"], ["ut"]),
        helper.make_node("Concat", ["ub", "ut", "heads"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
        helper.make_node("Shape", ["w"], ["sw"]),
        helper.make_node("Gather", ["sw", "i0v"], ["n"], axis=0),
        helper.make_node("Concat", ["n", "eight"], ["shape2"], axis=0),
        helper.make_node("Reshape", ["x", "shape2"], ["z"]),
    ]
    model = build(
        nodes,
        [vi("x", ["B", "T", 8]), vi("w", ["N", 3])],
        [vi("y", ["B", "T", 2, 4]), vi("z", ["N", 8])],
        [
            init("i0", np.array(0, np.int64)),
            init("i1", np.array(1, np.int64)),
            init("i0v", np.array([0], np.int64)),
            init("ax", np.array([0], np.int64)),
            init("heads", np.array([2, 4], np.int64)),
            init("eight", np.array([8], np.int64)),
        ],
    )
    rng = np.random.default_rng(1)
    feeds = [
        {
            "x": rng.standard_normal((3, 5, 8)).astype(np.float32),
            "w": rng.standard_normal((15, 3)).astype(np.float32),
        }
    ]
    fused, modified, before, after = apply(fuse.FuseLayoutChains(), model, feeds)
    assert modified and (before, after) == (11, 2)
    assert ops(fused) == ["Reshape", "Reshape"]
