"""Channel pruning on ORT: every consumer rewritten, the model valid and smaller, refusals clean."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper
from prune_fixtures import convnet, feeds, ffn

from onnxslim import io
from onnxslim.parity import compare_outputs
from onnxslim.passes._run_data import RunData
from onnxslim.passes.prune import ChannelPruning
from onnxslim.passes.prune._common import summary
from onnxslim.passes.prune.channels import channel_groups
from onnxslim.runtime import Session

CHECK = feeds((3, 16, 16), 8, seed=2)


def _set(model: onnx.ModelProto, name: str, array: np.ndarray) -> None:
    for i, init in enumerate(model.graph.initializer):
        if init.name == name:
            model.graph.initializer[i].CopyFrom(
                numpy_helper.from_array(array.astype(np.float32), name)
            )
            return
    raise KeyError(name)


def _get(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == name).copy()


def convnet_with_dead_channels() -> onnx.ModelProto:
    """convnet() where half of every prunable group's channels are read by nothing (zero consumer
    weights) and produce nothing (zero producer weights): removing exactly those is lossless."""
    model = convnet()
    rng = np.random.default_rng(7)
    dead = {
        name: np.sort(rng.choice(size, size // 2, replace=False))
        for name, size in (("stem", 16), ("trunk", 32), ("res1", 32), ("side", 16), ("fc1", 64))
    }
    producers = {
        "stem": ["stem.w"],
        "trunk": ["pw.w", "res2.w"],
        "res1": ["res1.w"],
        "side": ["side.w"],
    }
    for group, weights in producers.items():
        for name in weights:
            w = _get(model, name)
            w[dead[group]] = 0
            _set(model, name, w)
    for name, group in (
        ("pw.w", "stem"),
        ("res1.w", "trunk"),
        ("side.w", "trunk"),
        ("res2.w", "res1"),
    ):
        w = _get(model, name)
        w[:, dead[group]] = 0
        _set(model, name, w)
    fc1 = _get(model, "fc1.w")  # [48*16, 64]: rows c*16..c*16+15 read concat channel c
    concat_dead = np.concatenate([dead["trunk"], 32 + dead["side"]])
    fc1[(concat_dead[:, None] * 16 + np.arange(16)).ravel()] = 0
    fc1[:, dead["fc1"]] = 0
    _set(model, "fc1.w", fc1)
    fc2 = _get(model, "fc2.w")
    fc2[:, dead["fc1"]] = 0
    _set(model, "fc2.w", fc2)
    return model


def _outputs(model: ir.Model, data=CHECK) -> list[dict[str, np.ndarray]]:
    session = Session(model)
    return [session.run(f) for f in data]


def test_dead_channels_are_removed_losslessly_through_bn_depthwise_residual_concat_flatten(
    tmp_path,
) -> None:
    base = ir.serde.deserialize_model(convnet_with_dead_channels())
    model = base.clone()
    assert ChannelPruning(ratio=0.5, multiple=8)(model).modified
    path = tmp_path / "pruned.onnx"
    io.save(model, path)
    onnx.checker.check_model(str(path), full_check=True)
    shapes = {
        n.name: tuple(n.inputs[1].const_value.shape)
        for n in model.graph
        if n.op_type in ("Conv", "Gemm")
    }
    assert shapes == {
        "stem": (8, 3, 3, 3),
        "dw": (8, 1, 3, 3),
        "pw": (16, 8, 1, 1),
        "res1": (16, 16, 3, 3),
        "res2": (16, 16, 3, 3),
        "side": (8, 16, 1, 1),
        "fc1": (24 * 16, 32),
        "fc2": (10, 32),
    }
    dw = next(n for n in model.graph if n.name == "dw")
    assert dw.attributes.get_int("group") == 8
    bn = next(n for n in model.graph if n.name == "res2_bn")
    assert all(v.const_value.shape == (16,) for v in bn.inputs[1:])
    parity = compare_outputs(_outputs(base), _outputs(model), atol=1e-4, rtol=1e-4)
    assert all(p.passed for p in parity), parity


def test_refit_recovers_live_channels() -> None:
    base = ir.serde.deserialize_model(convnet())
    calib = feeds((3, 16, 16), 48, seed=1)
    plain, refit = base.clone(), base.clone()
    ChannelPruning(ratio=0.5, multiple=8)(plain)
    ChannelPruning(ratio=0.5, multiple=8, importance="activation").run(refit, RunData(feeds=calib))
    reference = _outputs(base)
    snr_plain = compare_outputs(reference, _outputs(plain))[0].snr_db
    snr_refit = compare_outputs(reference, _outputs(refit))[0].snr_db
    assert snr_refit > snr_plain + 5.0
    refit_layers = {r["name"] for r in summary(refit)["refit"] if not r["skipped"]}
    assert {"pw", "res1", "res2", "side", "fc1", "fc2"} <= refit_layers


def test_transformer_ffn_hidden_channels_go_and_frozen_ones_say_why() -> None:
    base = ir.serde.deserialize_model(ffn())
    groups = {tuple(g["producers"]): g for g in channel_groups(base)}
    assert groups[("fc1",)]["prunable"]
    assert "x" in groups[("fc2",)]["reason"]  # residual with the graph input: channels fixed
    assert "graph output" in groups[("head",)]["reason"]
    model = base.clone()
    ChannelPruning(ratio=0.5, multiple=8)(model)
    weights = {n.name: n.inputs[1].const_value.shape for n in model.graph if n.op_type == "MatMul"}
    assert weights["fc1"] == (32, 64) and weights["fc2"] == (64, 32)
    bias = next(n for n in model.graph if n.name == "fc1_bias").inputs[1].const_value.shape
    assert tuple(bias) == (64,)
    Session(model).run(feeds((6, 32), 1)[0])


def _attention_like() -> onnx.ModelProto:
    """MatMul -> Reshape into heads; MatMul -> LayerNorm; MatMul -> Split; MatMul -> Shape."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), f"w{i}")
        for i in range(5)
    ]
    inits += [
        numpy_helper.from_array(np.array([0, 0, 4, 4], np.int64), "heads"),
        numpy_helper.from_array(np.ones(16, np.float32), "g"),
        numpy_helper.from_array(np.array([8, 8], np.int64), "halves"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["q"], name="q"),
        helper.make_node("Reshape", ["q", "heads"], ["qh"], name="split_heads"),
        helper.make_node("ReduceSum", ["qh"], ["s0"], name="r0", keepdims=0),
        helper.make_node("MatMul", ["x", "w1"], ["n"], name="n"),
        helper.make_node("LayerNormalization", ["n", "g"], ["nl"], name="ln"),
        helper.make_node("MatMul", ["x", "w2"], ["p"], name="p"),
        helper.make_node("Split", ["p", "halves"], ["p0", "p1"], name="split", axis=2),
        helper.make_node("Add", ["p0", "p1"], ["pp"], name="padd"),
        helper.make_node("MatMul", ["x", "w3"], ["t"], name="t"),
        helper.make_node("Shape", ["t"], ["ts"], name="shape"),
        helper.make_node("MatMul", ["t", "w4"], ["u"], name="u"),
    ]
    graph = helper.make_graph(
        nodes,
        "attn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("s0", "nl", "pp", "u")]
        + [helper.make_tensor_value_info("ts", TensorProto.INT64, None)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    return model


def test_refuses_what_it_cannot_rewrite_and_leaves_the_model_alone() -> None:
    base = ir.serde.deserialize_model(_attention_like())
    reasons = {g["producers"][0]: g["reason"] for g in channel_groups(base)}
    assert "Reshape" in reasons["q"] and "LayerNormalization" in reasons["n"]
    assert "Split" in reasons["p"] and "Shape" in reasons["t"] and "graph output" in reasons["u"]
    model = base.clone()
    assert not ChannelPruning(ratio=0.5)(model).modified
    data = [{"x": np.random.default_rng(1).standard_normal((1, 3, 16)).astype(np.float32)}]
    parity = compare_outputs(_outputs(base, data), _outputs(model, data), atol=0, rtol=0)
    assert all(p.passed for p in parity)


def test_ratio_rounds_to_the_channel_multiple() -> None:
    model = ir.serde.deserialize_model(convnet(width=32))
    ChannelPruning(ratio=0.3, multiple=8)(model)
    kept = {tuple(g["producers"]): g["kept"] for g in summary(model)["groups"]}
    assert (
        kept[("res1",)] == 24 and kept[("stem",)] == 16
    )  # keep 22.4 -> 24; keep 11.2 -> 16 (nothing cut)


@pytest.mark.parametrize("bad", [{"ratio": 1.0}, {"importance": "taylor"}, {"multiple": -1}])
def test_bad_options(bad) -> None:
    with pytest.raises(ValueError):
        ChannelPruning(**bad)


def _tied_ffn() -> onnx.ModelProto:
    """One FFN (w1 -> Relu -> w2) applied twice with the same weights, the second time through
    Identity nodes (as exporters write weight tying); a quarter of the hidden units are dead."""
    rng = np.random.default_rng(5)
    w1 = rng.standard_normal((8, 32)).astype(np.float32)
    w2 = rng.standard_normal((32, 8)).astype(np.float32)
    dead = rng.choice(32, 8, replace=False)
    w1[:, dead] = 0
    w2[dead] = 0
    nodes = [
        helper.make_node("Identity", ["w1"], ["w1_tied"], name="tie1"),
        helper.make_node("Identity", ["w2"], ["w2_tied"], name="tie2"),
    ]
    x = "x"
    for step, (a, b) in enumerate((("w1", "w2"), ("w1_tied", "w2_tied"))):
        nodes += [
            helper.make_node("MatMul", [x, a], [f"h{step}"], name=f"up{step}"),
            helper.make_node("Relu", [f"h{step}"], [f"r{step}"], name=f"relu{step}"),
            helper.make_node("MatMul", [f"r{step}", b], [f"o{step}"], name=f"down{step}"),
            helper.make_node("Add", [x, f"o{step}"], [f"x{step}"], name=f"res{step}"),
        ]
        x = f"x{step}"
    graph = helper.make_graph(
        nodes,
        "tied",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 8])],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_tied_weights_lose_the_same_channels_and_stay_shared() -> None:
    base = ir.serde.deserialize_model(_tied_ffn())
    groups = {tuple(sorted(g["producers"])): g for g in channel_groups(base)}
    assert groups[("up0", "up1")]["prunable"]  # one group for both applications of w1
    model = base.clone()
    assert ChannelPruning(ratio=0.25, multiple=8)(model).modified
    assert set(model.graph.initializers) == {"w1", "w2"}  # still one copy of each, now smaller
    assert model.graph.initializers["w1"].const_value.shape == (8, 24)
    assert model.graph.initializers["w2"].const_value.shape == (24, 8)
    data = [{"x": np.random.default_rng(2).standard_normal((5, 8)).astype(np.float32)}]
    parity = compare_outputs(_outputs(base, data), _outputs(model, data), atol=1e-5, rtol=1e-5)
    assert all(p.passed for p in parity), parity
