"""Palette refinement (passes/cluster/refine.py): the least-squares math, layer errors on ORT."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxslim.activations import NormalEquations
from onnxslim.passes._run_data import RunData
from onnxslim.passes.cluster.cluster import ClusterWeights, summary
from onnxslim.passes.cluster.palette import cluster_tensor
from onnxslim.passes.cluster.refine import fit_palette, layer_error
from onnxslim.runtime import Session


def test_fit_equals_explicit_least_squares():
    rng = np.random.default_rng(0)
    R, K, n_out, k = 400, 12, 6, 4
    X = rng.normal(size=(R, K)) + 0.3
    W = rng.normal(size=(n_out, K))
    b = rng.normal(size=n_out)
    Y = X @ W.T + b + 0.05 * rng.normal(size=(R, n_out))
    p, _ = cluster_tensor(W, 2)
    assign = p.indices.astype(np.int64)
    sums = NormalEquations(groups=1)
    sums.add(X, Y)
    fit = fit_palette(
        sums,
        assign,
        np.zeros(n_out, np.int64),
        p.values().astype(np.float64),
        b,
        intercept=True,
        ridge=1e-12,
    )
    # The same problem written out: unknowns (palette[k], bias[n_out]) over all R*n_out outputs.
    A = np.zeros((R, n_out, k + n_out))
    for o in range(n_out):
        for c in range(k):
            A[:, o, c] = X[:, assign[o] == c].sum(axis=1)
        A[:, o, k + o] = 1.0
    solution = np.linalg.lstsq(A.reshape(R * n_out, -1), Y.reshape(-1), rcond=None)[0]
    np.testing.assert_allclose(fit.values[0], solution[:k], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(fit.bias, solution[k:], rtol=1e-6, atol=1e-8)
    assert fit.improved and fit.error_after < fit.error_before
    assert layer_error(
        sums, assign, np.zeros(n_out, np.int64), fit.values, fit.bias
    ) == pytest.approx(fit.error_after)


def test_fit_keeps_the_palette_when_nothing_improves():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(100, 8))
    W = np.repeat([[1.0, -1.0]], 4, axis=0).reshape(4, 2).repeat(4, axis=1)  # already two values
    Y = X @ W.T
    p, _ = cluster_tensor(W, 1)
    sums = NormalEquations(groups=1)
    sums.add(X, Y)
    fit = fit_palette(
        sums,
        p.indices.astype(np.int64),
        np.zeros(4, np.int64),
        p.values().astype(np.float64),
        None,
        intercept=False,
    )
    assert fit.error_before == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_array_equal(fit.values, p.values())


def grouped_conv_model() -> ir.Model:
    """x[N,4,8,8] -> Conv(group 2) -> Relu -> Conv -> Flatten -> Gemm(transB) -> y[N,5]."""
    rng = np.random.default_rng(2)
    w1 = rng.normal(size=(16, 2, 3, 3)).astype(np.float32) * 0.5
    b1 = rng.normal(size=16).astype(np.float32) * 0.1
    w2 = rng.normal(size=(8, 16, 3, 3)).astype(np.float32) * 0.2
    w3 = rng.normal(size=(5, 8 * 4 * 4)).astype(np.float32) * 0.1
    b3 = rng.normal(size=5).astype(np.float32)
    nodes = [
        helper.make_node(
            "Conv", ["x", "w1", "b1"], ["c1"], group=2, pads=[1, 1, 1, 1], name="conv1"
        ),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node(
            "Conv", ["r1", "w2"], ["c2"], strides=[2, 2], pads=[1, 1, 1, 1], name="conv2"
        ),
        helper.make_node("Flatten", ["c2"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])],
        [
            numpy_helper.from_array(a, n)
            for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (w3, "w3"), (b3, "b3"))
        ],
    )
    return ir.serde.deserialize_model(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    )


def output_error(original: ir.Model, candidate: ir.Model, feeds) -> float:
    a, b = Session(original), Session(candidate)
    ref = np.concatenate([a.run(f)["y"] for f in feeds])
    got = np.concatenate([b.run(f)["y"] for f in feeds])
    return float(np.sum((ref - got) ** 2) / np.sum(ref**2))


@pytest.mark.parametrize("granularity", ["per-tensor", "per-channel-group"])
def test_refinement_lowers_layer_and_model_error(granularity):
    original = grouped_conv_model()
    rng = np.random.default_rng(3)
    calib = [{"x": rng.normal(size=(4, 4, 8, 8)).astype(np.float32)} for _ in range(16)]
    held_out = [{"x": rng.normal(size=(4, 4, 8, 8)).astype(np.float32)} for _ in range(8)]
    options = dict(bits=2, granularity=granularity, group_size=4, min_elements=64)
    plain, refined = original.clone(), original.clone()
    ClusterWeights(refine=False, **options).run(plain, RunData(feeds=calib))
    ClusterWeights(**options).run(refined, RunData(feeds=calib))
    measured = {row["name"]: row for row in summary(plain)["layers"]}
    layers = {row["name"]: row for row in summary(refined)["layers"]}
    assert set(layers) == {"conv1", "conv2", "fc"} and set(measured) == set(layers)
    for name, row in layers.items():
        assert not row["skipped"] and row["rows"] > 0
        assert row["error_after"] <= row["error_before"]
        assert not measured[name]["refit"]
    assert (
        layers["conv1"]["error_after"] < layers["conv1"]["error_before"]
    )  # the first layer sees exact inputs
    assert layers["conv1"]["error_before"] == pytest.approx(
        measured["conv1"]["error_before"], rel=1e-6
    )
    assert output_error(original, refined, held_out) < output_error(
        original, plain, held_out
    )  # on unseen data


def test_refinement_needs_calibration_data():
    from onnxslim.errors import UsageError

    with pytest.raises(UsageError, match="calibration"):
        ClusterWeights(refine=True)(grouped_conv_model())


def test_refinement_stops_starting_levels_when_its_time_is_spent():
    """--effort: no level starts after `seconds`; the layers after keep their palettes."""
    from onnxslim.passes.cluster.palette import cluster_tensor
    from onnxslim.passes.cluster.refine import refine_layers

    original = grouped_conv_model()
    current = original.clone()
    palettes = {}
    for name in ("w1", "w2", "w3"):
        value = current.graph.initializers[name]
        p, _ = cluster_tensor(value.const_value.numpy(), 2, axis=None, group_size=1)
        palettes[name] = p
        value.const_value = ir.Tensor(p.dense(), name=name)
    feeds = [{"x": np.ones((2, 4, 8, 8), np.float32)}]
    records = refine_layers(original, current, palettes, feeds, ridge=1e-3, max_rows=256, seconds=0)
    assert len(records) == 3 and not any(r.refit for r in records)
    assert all("time budget" in r.skipped for r in records)
