"""Fusion passes on small onnx.helper models, checked on ONNX Runtime.

Each test builds a model, runs one pass on a copy, and asserts (a) the node count
moved as the case says and (b) ORT gives the same outputs before and after, within
rtol 1e-5 / atol 1e-6 (fused weights are recomputed in float64 and rounded once,
so the only difference is float rounding). Negative cases assert that nothing
changed: a shared weight, a broadcast that is not per channel, a narrowing cast.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxslim.graphs import iter_nodes, node_count
from onnxslim.passes import fuse
from onnxslim.registry import BUILTIN_PASSES, DEFAULT_OPTIMIZE, describe
from onnxslim.runtime import Session, SessionConfig

RTOL, ATOL = 1e-5, 1e-6
RNG = np.random.default_rng(0)
F = TensorProto.FLOAT


def arr(*shape: int, low: float = -1.0, high: float = 1.0) -> np.ndarray:
    return RNG.uniform(low, high, shape).astype(np.float32)


def init(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(value, name)


def vi(name: str, shape: list, dtype: int = F) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def build(
    nodes, inputs, outputs, inits=(), opset: int = 20, functions=(), value_info=()
) -> ir.Model:
    graph = helper.make_graph(
        nodes, "g", inputs, outputs, initializer=list(inits), value_info=list(value_info)
    )
    imports = [helper.make_opsetid("", opset)] + [
        helper.make_opsetid(f.domain, 1) for f in functions
    ]
    proto = helper.make_model(graph, opset_imports=imports, functions=list(functions))
    proto.ir_version = 9
    onnx.checker.check_model(proto, full_check=True)
    return ir.serde.deserialize_model(proto)


def feeds_for(model: ir.Model, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.inputs:
        shape = [d if isinstance(d, int) else 2 for d in value.shape]
        if value.dtype == ir.DataType.BOOL:
            feeds[value.name] = np.array(True)
        else:
            feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def run(model: ir.Model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return Session(model, SessionConfig(optimization="disable")).run(feeds)


def apply(pass_: ir.passes.PassBase, model: ir.Model, feed_list=None):
    """Run `pass_` on a clone; return (fused model, modified, node counts before/after).

    Asserts ORT parity on every feed and that a second run changes nothing.
    """
    feed_list = feed_list or [feeds_for(model, 1), feeds_for(model, 2)]
    before = [run(model, f) for f in feed_list]
    fused = model.clone()
    modified = pass_(fused).modified
    after = [run(fused, f) for f in feed_list]
    for ref, got in zip(before, after, strict=False):
        assert ref.keys() == got.keys()
        for name in ref:
            np.testing.assert_allclose(got[name], ref[name], rtol=RTOL, atol=ATOL, err_msg=name)
    again = fused.clone()
    assert not pass_(again).modified, "a second run must find nothing left to fuse"
    onnx.checker.check_model(ir.serde.serialize_model(fused), full_check=True)
    return fused, modified, node_count(model), node_count(fused)


def ops(model: ir.Model) -> list[str]:
    return sorted(n.op_type for n in iter_nodes(model))


# --------------------------------------------------------------------------- models


def conv_bn_nodes(
    prefix: str = "", x: str = "x", y: str = "y", weight: str = "w"
) -> list[onnx.NodeProto]:
    return [
        helper.make_node("Conv", [x, weight], [f"{prefix}c"], pads=[1, 1, 1, 1]),
        helper.make_node(
            "BatchNormalization", [f"{prefix}c", "gamma", "beta", "mean", "var"], [y], epsilon=1e-3
        ),
    ]


def bn_inits(channels: int = 4) -> list[onnx.TensorProto]:
    return [
        init("gamma", arr(channels, low=0.5, high=1.5)),
        init("beta", arr(channels)),
        init("mean", arr(channels)),
        init("var", arr(channels, low=0.5, high=2.0)),
    ]


def conv_bn_model(shared: bool = False) -> ir.Model:
    nodes = conv_bn_nodes()
    outputs = [vi("y", [1, 4, 5, 5])]
    if shared:  # the same weight feeds a second Conv whose output must not move
        nodes.append(helper.make_node("Conv", ["x", "w"], ["z"], pads=[1, 1, 1, 1]))
        outputs.append(vi("z", [1, 4, 5, 5]))
    return build(nodes, [vi("x", [1, 3, 5, 5])], outputs, [init("w", arr(4, 3, 3, 3)), *bn_inits()])


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
