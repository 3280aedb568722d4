"""Models and checks shared by the fusion tests (test_fuse.py, test_fuse_ops.py)."""

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from onnxslim.graphs import iter_nodes, node_count
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
