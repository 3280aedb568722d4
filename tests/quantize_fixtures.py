"""Small float models for the quantization tests, built with onnx.helper."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper


def to_ir(graph, opset: int = 17) -> ir.Model:
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    return ir.serde.deserialize_model(proto)


def _init(array: np.ndarray, name: str):
    return numpy_helper.from_array(np.asarray(array), name)


def cnn(seed: int = 0, channels: int = 16) -> ir.Model:
    """Conv-Relu-MaxPool-Conv-Relu-GlobalAveragePool-Flatten-Gemm classifier, input [N,3,16,16]."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((channels, 3, 3, 3)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((2 * channels, channels, 3, 3)) * 0.1).astype(np.float32)
    w3 = (rng.standard_normal((10, 2 * channels)) * 0.2).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node(
            "MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], name="pool1"
        ),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        initializer=[
            _init(w1, "w1"),
            _init(rng.standard_normal(channels).astype(np.float32) * 0.1, "b1"),
            _init(w2, "w2"),
            _init(rng.standard_normal(2 * channels).astype(np.float32) * 0.1, "b2"),
            _init(w3, "w3"),
            _init(rng.standard_normal(10).astype(np.float32) * 0.1, "b3"),
        ],
    )
    return to_ir(graph)


def mlp(seed: int = 0, hidden: int = 256, features: int = 64, classes: int = 10) -> ir.Model:
    """x[N,T,F] -> MatMul+Add -> Relu -> MatMul+Add -> y: weight-dominated, free N and T."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"], name="mm1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="add1"),
        helper.make_node("Relu", ["h1"], ["h2"], name="relu"),
        helper.make_node("MatMul", ["h2", "w2"], ["h3"], name="mm2"),
        helper.make_node("Add", ["h3", "b2"], ["y"], name="add2"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "T", classes])],
        initializer=[
            _init(
                (rng.standard_normal((features, hidden)) / np.sqrt(features)).astype(np.float32),
                "w1",
            ),
            _init(rng.standard_normal(hidden).astype(np.float32) * 0.1, "b1"),
            _init(
                (rng.standard_normal((hidden, classes)) / np.sqrt(hidden)).astype(np.float32), "w2"
            ),
            _init(rng.standard_normal(classes).astype(np.float32) * 0.1, "b2"),
        ],
    )
    return to_ir(graph)


def conv_in_if(seed: int = 0) -> ir.Model:
    """If(flag): then = Conv+Relu+Conv (weights inside the branch), else = Identity."""
    rng = np.random.default_rng(seed)
    then_graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "tw1"], ["t1"], pads=[1, 1, 1, 1], name="then_conv1"),
            helper.make_node("Relu", ["t1"], ["t2"], name="then_relu"),
            helper.make_node(
                "Conv", ["t2", "tw2"], ["then_out"], pads=[1, 1, 1, 1], name="then_conv2"
            ),
        ],
        "then",
        [],
        [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, None)],
        initializer=[
            _init((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "tw1"),
            _init((rng.standard_normal((3, 8, 3, 3)) * 0.2).astype(np.float32), "tw2"),
        ],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["else_out"])],
        "else",
        [],
        [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, None)],
    )
    graph = helper.make_graph(
        [
            helper.make_node(
                "If", ["flag"], ["y"], then_branch=then_graph, else_branch=else_graph, name="branch"
            )
        ],
        "cond",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    return to_ir(graph)


def masked_attention(seed: int = 0, dim: int = 32) -> ir.Model:
    """q = x Wq, k = x Wk, scores = q k^T / c + mask (finfo.min on padding), Softmax, @ v, Wo."""
    rng = np.random.default_rng(seed)
    weights = {
        n: (rng.standard_normal((dim, dim)) / np.sqrt(dim)).astype(np.float32)
        for n in ("wq", "wk", "wv", "wo")
    }
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["x", "wk"], ["k"], name="k_proj"),
        helper.make_node("MatMul", ["x", "wv"], ["v"], name="v_proj"),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1], name="kt"),
        helper.make_node("MatMul", ["q", "kt"], ["s0"], name="scores"),
        helper.make_node("Div", ["s0", "scale"], ["s1"], name="scale_div"),
        helper.make_node("Sub", ["one", "mask"], ["inv"], name="inv"),
        helper.make_node("Mul", ["inv", "neg"], ["bias"], name="mask_bias"),
        helper.make_node("Unsqueeze", ["bias", "axis1"], ["bias3"], name="bias3"),
        helper.make_node("Add", ["s1", "bias3"], ["s2"], name="masked"),
        helper.make_node("Softmax", ["s2"], ["p"], axis=-1, name="softmax"),
        helper.make_node("MatMul", ["p", "v"], ["ctx"], name="context"),
        helper.make_node("MatMul", ["ctx", "wo"], ["y"], name="o_proj"),
    ]
    graph = helper.make_graph(
        nodes,
        "attn",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", dim]),
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", "T"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "T", dim])],
        initializer=[_init(w, n) for n, w in weights.items()]
        + [
            _init(np.float32(np.sqrt(dim)), "scale"),
            _init(np.float32(1.0), "one"),
            _init(np.finfo(np.float32).min, "neg"),
            _init(np.array([1], np.int64), "axis1"),
        ],
    )
    return to_ir(graph)


def lstm_model(seed: int = 0, hidden: int = 32, features: int = 16) -> ir.Model:
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((1, 4 * hidden, features)) * 0.2).astype(np.float32)
    r = (rng.standard_normal((1, 4 * hidden, hidden)) * 0.2).astype(np.float32)
    b = (rng.standard_normal((1, 8 * hidden)) * 0.1).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node(
                "LSTM", ["x", "w", "r", "b"], ["y", "yh"], hidden_size=hidden, name="lstm"
            )
        ],
        "lstm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "N", features])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("yh", TensorProto.FLOAT, None),
        ],
        initializer=[_init(w, "w"), _init(r, "r"), _init(b, "b")],
    )
    return to_ir(graph)


def feeds_for(
    model: ir.Model, count: int, seed: int = 0, **shapes: tuple[int, ...]
) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    result = []
    for _ in range(count):
        feed = {}
        for value in model.graph.inputs:
            if value.dtype == ir.DataType.BOOL:
                feed[value.name] = np.array(True)
                continue
            shape = shapes.get(value.name) or tuple(
                d if isinstance(d, int) else 2 for d in value.shape
            )
            feed[value.name] = rng.standard_normal(shape).astype(np.float32)
        result.append(feed)
    return result


def matmul_in_loop(seed: int = 0, dim: int = 32, trips: int = 3) -> ir.Model:
    """Loop of `trips` steps over s = tanh(s @ W) with W a constant inside the body."""
    rng = np.random.default_rng(seed)
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["s_in", "w"], ["h"], name="body_matmul"),
            helper.make_node("Tanh", ["h"], ["s_out"], name="body_tanh"),
            helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond"),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("s_in", TensorProto.FLOAT, ["N", dim]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("s_out", TensorProto.FLOAT, ["N", dim]),
        ],
        initializer=[
            _init((rng.standard_normal((dim, dim)) / np.sqrt(dim) * 1.5).astype(np.float32), "w")
        ],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "", "x"], ["y"], body=body, name="loop")],
        "looped",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", dim])],
        initializer=[_init(np.int64(trips), "trips")],
    )
    return to_ir(graph)


def embedding_model(seed: int = 0, vocab: int = 500, dim: int = 32) -> ir.Model:
    """ids[N,T] -> Gather(table[vocab,dim]) (twice: tied) -> Add -> MatMul(W) -> y."""
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((vocab, dim)).astype(np.float32)
    table[:, 3] *= 20.0  # one outlier dimension, as real embeddings have
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["e1"], name="embed"),
            helper.make_node("Gather", ["table", "ids2"], ["e2"], name="embed_tied"),
            helper.make_node("Add", ["e1", "e2"], ["e"], name="sum"),
            helper.make_node("MatMul", ["e", "w"], ["y"], name="proj"),
        ],
        "emb",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "T"]),
            helper.make_tensor_value_info("ids2", TensorProto.INT64, ["N", "T"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "T", dim])],
        initializer=[
            _init(table, "table"),
            _init(rng.standard_normal((dim, dim)).astype(np.float32), "w"),
        ],
    )
    return to_ir(graph)
