"""Small models for the pruning tests, built with onnx.helper (weights seeded, not trained).

The weights follow a fan-in scaled normal so activations keep a sane range through
the layers; BatchNorm statistics are chosen so the normalisation is not the identity.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _w(rng: np.random.Generator, *shape: int) -> np.ndarray:
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def _bn(rng: np.random.Generator, name: str, c: int) -> list[onnx.TensorProto]:
    return [
        numpy_helper.from_array(
            (1 + 0.3 * rng.standard_normal(c)).astype(np.float32), f"{name}.scale"
        ),
        numpy_helper.from_array((0.1 * rng.standard_normal(c)).astype(np.float32), f"{name}.bias"),
        numpy_helper.from_array((0.1 * rng.standard_normal(c)).astype(np.float32), f"{name}.mean"),
        numpy_helper.from_array((0.5 + rng.random(c)).astype(np.float32), f"{name}.var"),
    ]


def convnet(*, seed: int = 0, width: int = 32, opset: int = 17) -> onnx.ModelProto:
    """x[N,3,16,16]: Conv-BN-Relu, depthwise Conv-BN-Relu, 1x1 Conv-BN, residual block
    (Conv-BN-Relu-Conv-BN, Add, Relu), Concat with a 1x1 branch, MaxPool, Flatten, Gemm, Relu,
    Gemm."""
    rng = np.random.default_rng(seed)
    c1, c2 = width // 2, width
    inits = [
        numpy_helper.from_array(_w(rng, c1, 3, 3, 3), "stem.w"),
        numpy_helper.from_array(_w(rng, c1, 1, 3, 3), "dw.w"),
        numpy_helper.from_array((0.1 * rng.standard_normal(c1)).astype(np.float32), "dw.b"),
        numpy_helper.from_array(_w(rng, c2, c1, 1, 1), "pw.w"),
        numpy_helper.from_array(_w(rng, c2, c2, 3, 3), "res1.w"),
        numpy_helper.from_array(_w(rng, c2, c2, 3, 3), "res2.w"),
        numpy_helper.from_array(_w(rng, c1, c2, 1, 1), "side.w"),
        numpy_helper.from_array((0.1 * rng.standard_normal(c1)).astype(np.float32), "side.b"),
        numpy_helper.from_array(
            _w(rng, 64, (c2 + c1) * 4 * 4).T.copy(), "fc1.w"
        ),  # [K, 64], transB=0
        numpy_helper.from_array((0.1 * rng.standard_normal(64)).astype(np.float32), "fc1.b"),
        numpy_helper.from_array(_w(rng, 10, 64), "fc2.w"),  # [10, 64], transB=1
        numpy_helper.from_array((0.1 * rng.standard_normal(10)).astype(np.float32), "fc2.b"),
    ]
    for name, c in (
        ("stem_bn", c1),
        ("dw_bn", c1),
        ("pw_bn", c2),
        ("res1_bn", c2),
        ("res2_bn", c2),
    ):
        inits += _bn(rng, name, c)

    def bn(x: str, name: str, y: str) -> onnx.NodeProto:
        return helper.make_node(
            "BatchNormalization",
            [x, f"{name}.scale", f"{name}.bias", f"{name}.mean", f"{name}.var"],
            [y],
            name=name,
        )

    nodes = [
        helper.make_node("Conv", ["x", "stem.w"], ["s0"], name="stem", pads=[1, 1, 1, 1]),
        bn("s0", "stem_bn", "s1"),
        helper.make_node("Relu", ["s1"], ["s2"], name="stem_relu"),
        helper.make_node(
            "Conv", ["s2", "dw.w", "dw.b"], ["d0"], name="dw", pads=[1, 1, 1, 1], group=c1
        ),
        bn("d0", "dw_bn", "d1"),
        helper.make_node("Relu", ["d1"], ["d2"], name="dw_relu"),
        helper.make_node("Conv", ["d2", "pw.w"], ["p0"], name="pw"),
        bn("p0", "pw_bn", "p1"),
        helper.make_node("Relu", ["p1"], ["p2"], name="pw_relu"),
        helper.make_node("Conv", ["p2", "res1.w"], ["r0"], name="res1", pads=[1, 1, 1, 1]),
        bn("r0", "res1_bn", "r1"),
        helper.make_node("Relu", ["r1"], ["r2"], name="res1_relu"),
        helper.make_node("Conv", ["r2", "res2.w"], ["r3"], name="res2", pads=[1, 1, 1, 1]),
        bn("r3", "res2_bn", "r4"),
        helper.make_node("Add", ["p2", "r4"], ["a0"], name="res_add"),
        helper.make_node("Relu", ["a0"], ["a1"], name="res_relu"),
        helper.make_node("Conv", ["a1", "side.w", "side.b"], ["b0"], name="side"),
        helper.make_node("Concat", ["a1", "b0"], ["c0"], name="cat", axis=1),
        helper.make_node(
            "MaxPool", ["c0"], ["m0"], name="pool", kernel_shape=[4, 4], strides=[4, 4]
        ),
        helper.make_node("Flatten", ["m0"], ["f0"], name="flat", axis=1),
        helper.make_node("Gemm", ["f0", "fc1.w", "fc1.b"], ["g0"], name="fc1"),
        helper.make_node("Relu", ["g0"], ["g1"], name="fc1_relu"),
        helper.make_node("Gemm", ["g1", "fc2.w", "fc2.b"], ["y"], name="fc2", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "convnet",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def ffn(*, seed: int = 0, dim: int = 32, hidden: int = 128, opset: int = 17) -> onnx.ModelProto:
    """x[N,T,dim]: LayerNorm, MatMul+Add, GELU (Erf form), MatMul+Add, residual Add, MatMul head."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(np.ones(dim, np.float32), "ln.scale"),
        numpy_helper.from_array(np.zeros(dim, np.float32), "ln.bias"),
        numpy_helper.from_array(_w(rng, hidden, dim).T.copy(), "fc1.w"),
        numpy_helper.from_array((0.1 * rng.standard_normal(hidden)).astype(np.float32), "fc1.b"),
        numpy_helper.from_array(_w(rng, dim, hidden).T.copy(), "fc2.w"),
        numpy_helper.from_array((0.1 * rng.standard_normal(dim)).astype(np.float32), "fc2.b"),
        numpy_helper.from_array(_w(rng, 10, dim).T.copy(), "head.w"),
        numpy_helper.from_array(np.array(np.sqrt(2.0), np.float32), "sqrt2"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
    ]
    nodes = [
        helper.make_node(
            "LayerNormalization", ["x", "ln.scale", "ln.bias"], ["h0"], name="ln", axis=-1
        ),
        helper.make_node("MatMul", ["h0", "fc1.w"], ["h1"], name="fc1"),
        helper.make_node("Add", ["h1", "fc1.b"], ["h2"], name="fc1_bias"),
        helper.make_node("Div", ["h2", "sqrt2"], ["g0"], name="gelu_div"),
        helper.make_node("Erf", ["g0"], ["g1"], name="gelu_erf"),
        helper.make_node("Add", ["g1", "one"], ["g2"], name="gelu_add"),
        helper.make_node("Mul", ["h2", "g2"], ["g3"], name="gelu_mul"),
        helper.make_node("Mul", ["g3", "half"], ["g4"], name="gelu_half"),
        helper.make_node("MatMul", ["g4", "fc2.w"], ["o0"], name="fc2"),
        helper.make_node("Add", ["o0", "fc2.b"], ["o1"], name="fc2_bias"),
        helper.make_node("Add", ["x", "o1"], ["o2"], name="residual"),
        helper.make_node("MatMul", ["o2", "head.w"], ["y"], name="head"),
    ]
    graph = helper.make_graph(
        nodes,
        "ffn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 10])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def feeds(
    shape: tuple[int, ...], n: int, *, seed: int = 1, name: str = "x"
) -> list[dict[str, np.ndarray]]:
    """`n` feeds of one sample each (leading axis 1), smooth-ish so convolutions see structure."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = rng.standard_normal((1, *shape)).astype(np.float32)
        if len(shape) == 3:  # images: blur a little so neighbouring pixels correlate
            a = (a + np.roll(a, 1, -1) + np.roll(a, 1, -2)) / 3
        out.append({name: a.astype(np.float32)})
    return out
