"""SmoothQuant: float outputs equal on ORT within rounding; activation outliers flattened."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxslim.passes.quantize.smoothquant import (
    SmoothQuant,
    channel_absmax,
    find_targets,
    smooth_graph,
)
from onnxslim.runtime import Session

K = 16


def _block(kind: str, *, residual: bool = False) -> ir.Model:
    """x[B,T,K] -> LayerNorm (or Mul, or decomposed affine) -> two MatMuls (q, v) -> Add -> y."""
    rng = np.random.default_rng(0)
    gamma = np.ones(K, np.float32)
    gamma[[2, 11]] = 40.0  # outlier channels, as LayerNorm gammas of real transformers have
    beta = (rng.standard_normal(K) * 0.1).astype(np.float32)
    wq = rng.standard_normal((K, 8)).astype(np.float32)
    wv = rng.standard_normal((K, 8)).astype(np.float32)
    inits = [
        numpy_helper.from_array(a, n)
        for a, n in ((gamma, "gamma"), (beta, "beta"), (wq, "wq"), (wv, "wv"))
    ]
    if kind == "layernorm":
        pre = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], axis=-1)]
    elif kind == "mul":
        pre = [helper.make_node("Mul", ["x", "gamma"], ["h"])]
    else:  # decomposed affine: h = x * gamma + beta
        pre = [
            helper.make_node("Mul", ["x", "gamma"], ["g"]),
            helper.make_node("Add", ["g", "beta"], ["h"]),
        ]
    nodes = pre + [
        helper.make_node("MatMul", ["h", "wq"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["h", "wv"], ["v"], name="v_proj"),
        helper.make_node("Add", ["q", "v"], ["y"]),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if residual:
        nodes.append(helper.make_node("Identity", ["h"], ["skip"]))
        outputs.append(helper.make_tensor_value_info("skip", TensorProto.FLOAT, None))
    graph = helper.make_graph(
        nodes,
        "block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 5, K])],
        outputs,
        initializer=inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return ir.serde.deserialize_model(proto)


def _feeds(n: int = 4) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"x": rng.standard_normal((2, 5, K)).astype(np.float32)} for _ in range(n)]


@pytest.mark.parametrize("kind", ["layernorm", "mul", "affine"])
def test_outputs_equal_and_outliers_flattened(kind: str) -> None:
    model = _block(kind)
    feeds = _feeds()
    before = [Session(model).run(f)["y"] for f in feeds]
    targets, _ = find_targets(model.graph)
    assert [t.name for t in targets] == ["h"]
    stats = channel_absmax(model, feeds, ["h"])
    report = smooth_graph(model.graph, stats, alpha=0.5)
    assert report.smoothed == ["h"]
    spread_before, spread_after = report.spread["h"]
    assert spread_before > 10 and spread_after < spread_before / 3
    after_stats = channel_absmax(model, feeds, ["h"])
    assert after_stats["h"].max() / np.median(after_stats["h"]) < spread_before / 3
    session = Session(model)
    for feed, ref in zip(feeds, before, strict=True):
        got = session.run(feed)["y"]
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * float(np.abs(ref).max()))


def test_tensor_also_read_elsewhere_gets_an_inserted_mul() -> None:
    """Post-LN transformers: the LayerNorm output also feeds the residual Add. Its gamma must
    not change, so a Mul(X, 1/s) goes in front of the MatMuls only; every output is kept."""
    model = _block("layernorm", residual=True)
    feeds = _feeds()
    before = [Session(model).run(f) for f in feeds]
    targets, _ = find_targets(model.graph)
    assert [t.insert_mul for t in targets] == [True]
    report = smooth_graph(model.graph, channel_absmax(model, feeds, ["h"]), alpha=0.5)
    assert report.smoothed == ["h"]
    muls = [n for n in model.graph if n.op_type == "Mul"]
    assert len(muls) == 1 and {u.name for u, _ in muls[0].outputs[0].uses()} == {"q_proj", "v_proj"}
    session = Session(model)
    for feed, ref in zip(feeds, before, strict=True):
        got = session.run(feed)
        np.testing.assert_array_equal(got["skip"], ref["skip"])
        np.testing.assert_allclose(
            got["y"], ref["y"], rtol=1e-4, atol=1e-5 * float(np.abs(ref["y"]).max())
        )


def test_pass_with_generated_inputs_keeps_outputs() -> None:
    model = _block("layernorm")
    feeds = _feeds(2)
    before = [Session(model).run(f)["y"] for f in feeds]
    result = SmoothQuant(alpha=0.6, samples=8)(model)
    assert result.modified
    for feed, ref in zip(feeds, before, strict=True):
        np.testing.assert_allclose(
            Session(result.model).run(feed)["y"],
            ref,
            rtol=1e-4,
            atol=1e-5 * float(np.abs(ref).max()),
        )
    with pytest.raises(ValueError):
        SmoothQuant(alpha=1.5)
