"""cluster-weights on ORT: which tensors, sharing, sparsity, int8 grid via `quantize`, devmodels."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from conftest import DEVMODELS_CACHE, devmodel_feeds, devmodel_params
from onnx import TensorProto, helper, numpy_helper

from onnxslim.io import model_to_bytes
from onnxslim.passes._run_data import RunData
from onnxslim.passes.cluster import storage
from onnxslim.passes.cluster.cluster import ClusterWeights, summary
from onnxslim.registry import make_pass
from onnxslim.runtime import Session


def mixed_model() -> ir.Model:
    """Gather(table) -> MatMul(w_shared) -> Add(bias) -> MatMul(w_shared) -> MatMul(DQ(int8))
    -> MatMul(w_skip)."""
    rng = np.random.default_rng(0)
    arrays = {
        "table": rng.normal(size=(50, 32)).astype(np.float32),
        "w_shared": rng.normal(size=(32, 32)).astype(np.float32) * 0.2,
        "bias": rng.normal(size=(32,)).astype(np.float32),
        "w_int8": rng.integers(-127, 128, size=(32, 32)).astype(np.int8),
        "w_scale": np.array(0.01, np.float32),
        "w_skip": rng.normal(size=(32, 32)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
        helper.make_node("MatMul", ["e", "w_shared"], ["m1"], name="mm1"),
        helper.make_node("Add", ["m1", "bias"], ["a1"], name="add"),
        helper.make_node("MatMul", ["a1", "w_shared"], ["m2"], name="mm2"),
        helper.make_node("DequantizeLinear", ["w_int8", "w_scale"], ["w_deq"], name="dq"),
        helper.make_node("MatMul", ["m2", "w_deq"], ["m3"], name="mm3"),
        helper.make_node("MatMul", ["m3", "w_skip"], ["y"], name="mm_skip"),
    ]
    graph = helper.make_graph(
        nodes,
        "mixed",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 32])],
        [numpy_helper.from_array(a, n) for n, a in arrays.items()],
    )
    return ir.serde.deserialize_model(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    )


IDS = {"ids": np.random.default_rng(1).integers(0, 50, size=(3, 4)).astype(np.int64)}


def test_weights_chosen_shared_once_and_skips_give_reasons():
    model = mixed_model()
    original = model.clone()
    result = make_pass("cluster-weights", {"bits": 3, "min_elements": 64, "exclude": ("mm_skip",)})(
        model
    )
    assert result.modified
    info = summary(model)
    rows = {row["weight"]: row for row in info["weights"]}
    assert set(rows) == {"table", "w_shared"}
    assert rows["w_shared"]["readers"] == ["mm1", "mm2"]
    skipped = {entry["name"]: entry["reason"] for entry in info["skipped"]}
    assert skipped["w_int8"].startswith("already INT8")
    assert skipped["w_skip"] == "excluded"
    assert "bias" not in skipped  # 32 elements: under min_elements, not worth a line
    expansions = storage.expansion_nodes(model)
    assert len(expansions) == 2
    shared = next(n for n in expansions if n.outputs[0].name == "w_shared")
    assert {user.name for user, _ in shared.outputs[0].uses()} == {"mm1", "mm2"}  # still one tensor
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    dense = model.clone()
    storage.UnpackPalette()(dense)
    for name in ("table", "w_shared"):
        assert len(np.unique(dense.graph.initializers[name].const_value.numpy())) <= 8
    np.testing.assert_array_equal(Session(model).run(IDS)["y"], Session(dense).run(IDS)["y"])
    got, want = Session(model).run(IDS)["y"], Session(original).run(IDS)["y"]
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.9


def test_running_twice_reclusters_from_the_expanded_weights():
    model = mixed_model()
    ClusterWeights(bits=3, min_elements=64)(model)
    ClusterWeights(bits=2, min_elements=64)(model)
    assert "palettized weights expanded before re-clustering" in summary(model)["notes"]
    assert all(row["palette_size"] == 4 for row in summary(model)["weights"])
    assert sorted(n.outputs[0].name for n in storage.expansion_nodes(model)) == [
        "table",
        "w_shared",
        "w_skip",
    ]
    Session(model).run(IDS)


def mlp(seed: int = 0, width: int = 64, hidden: int = 128) -> ir.Model:
    """x[N,width] -> Gemm(transB, hidden) -> Relu -> MatMul(hidden x 32) -> Add -> y."""
    rng = np.random.default_rng(seed)
    arrays = {
        "w1": rng.normal(size=(hidden, width)).astype(np.float32) * 0.2,
        "b1": rng.normal(size=hidden).astype(np.float32) * 0.1,
        "w2": rng.normal(size=(hidden, 32)).astype(np.float32) * 0.1,
        "b2": rng.normal(size=32).astype(np.float32) * 0.1,
    }
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1, name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["m"], name="fc2"),
        helper.make_node("Add", ["m", "b2"], ["y"], name="fc2_bias"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 32])],
        [numpy_helper.from_array(a, n) for n, a in arrays.items()],
    )
    return ir.serde.deserialize_model(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    )


@pytest.mark.parametrize("refine", [False, True])
def test_pruned_and_sparse_packed_model_keeps_its_zeros(refine):
    from onnxslim.passes.prune import MagnitudePruning, PackSparseWeights

    model = mlp()
    MagnitudePruning(sparsity=0.6, min_elements=1024)(model)
    pruned = {n: model.graph.initializers[n].const_value.numpy().copy() for n in ("w1", "w2")}
    assert PackSparseWeights()(model).modified
    rng = np.random.default_rng(8)
    calib = (
        [{"x": rng.normal(size=(8, 64)).astype(np.float32)} for _ in range(4)] if refine else None
    )
    ClusterWeights(bits=3, min_elements=1024).run(model, RunData(feeds=calib))
    info = summary(model)
    assert "sparse-packed weights expanded (zeros are kept as a palette entry)" in info["notes"]
    assert [layer["refit"] for layer in info["layers"]] == [True, True] * refine
    clustered = storage.packed_weights(model)
    for name, before in pruned.items():
        np.testing.assert_array_equal(clustered[name] == 0, before == 0)
        assert len(np.unique(clustered[name])) <= 8
    assert all(row["zero_kept"] for row in info["weights"])


def test_int8_grid_survives_quantize_exactly_and_repacks():
    from onnxslim import api

    rng = np.random.default_rng(5)
    calib = [{"x": rng.normal(size=(8, 256)).astype(np.float32)} for _ in range(8)]
    clustered = mlp(1, width=256, hidden=256)
    ClusterWeights(
        bits=4,
        granularity="per-channel-group",
        group_size=1,
        int8_grid=True,
        min_elements=1024,
    ).run(clustered, RunData(feeds=calib))
    dense = storage.packed_weights(clustered)
    # static QDQ's weights are the subject (auto may time run-time activations faster)
    result = api.quantize(
        clustered, calib=calib, verify=False, latency_guard=False, activations="static"
    )
    quantized = result.model
    assert result.report.quantized_nodes
    qmax = 64 if result.report.reduce_range else 127
    int8 = {
        n: v.const_value.numpy()
        for n, v in quantized.graph.initializers.items()
        if v.const_value is not None
        and v.const_value.dtype == ir.DataType.INT8
        and v.const_value.size >= 1024
    }
    assert len(int8) == 2
    checked = 0
    for q in int8.values():
        source = "w1" if q.shape == (256, 256) else "w2"
        axis = 0 if source == "w1" else 1
        w = dense[source]
        scale = np.abs(w).max(axis=1 - axis, keepdims=True) / qmax
        np.testing.assert_array_equal(
            q, np.rint(w / scale).astype(np.int8)
        )  # the palette's own integers
        per_channel = [len(np.unique(np.take(q, c, axis=axis))) for c in range(q.shape[axis])]
        assert max(per_channel) <= 16 and np.abs(q).max() == qmax
        checked += 1
    assert checked == 2
    x = calib[0]
    before = Session(quantized).run(x)["y"]
    size = len(model_to_bytes(quantized))
    assert storage.PackPalette()(quantized).modified  # the int8 weights hold 16 values per channel
    assert (
        len(model_to_bytes(quantized)) < 0.75 * size
    )  # int8 weights as 4-bit indices + int8 palettes
    np.testing.assert_array_equal(Session(quantized).run(x)["y"], before)


# Two small corpus models cover the float and the already-int8 case; bench_cluster runs them all.
SMALL_CORPUS = ("name_romanizer_decoder", "tashkeel_ensemble_int8")


@pytest.mark.devmodels
@pytest.mark.parametrize(
    "entry",
    [p for p in devmodel_params() if p.values[0] is None or p.values[0]["id"] in SMALL_CORPUS],
)
def test_devmodel_clusters_or_skips_cleanly(entry):
    """A float corpus model keeps parity at 8 bits; an int8 one is left alone, with reasons."""
    from onnxslim import api

    feeds = devmodel_feeds(entry["id"], 2)
    path = DEVMODELS_CACHE / f"{entry['id']}.onnx"
    result = api.cluster(path, bits=8, allocation="uniform", eval_data=feeds, runs=0)
    assert result.checker == "ok"
    if entry["id"] == "tashkeel_ensemble_int8":
        assert not result.weights
        reasons = {s["reason"] for s in result.skipped}
        assert {
            "already INT8: quantized weights are not clustered",
            "already UINT8: quantized weights are not clustered",
        } <= reasons
        assert all(o.passed for o in result.validation.outputs)
    else:
        assert len(result.weights) == 8 and result.weight_ratio < 0.26
        assert result.size_after.raw < 0.3 * result.size_before.raw
        assert min(o.cosine for o in result.validation.outputs) > 0.9999


def test_conv_transpose_and_lstm_weights_cluster_per_channel():
    rng = np.random.default_rng(9)
    arrays = {
        "wt": rng.normal(size=(4, 6, 3, 3)).astype(
            np.float32
        ),  # ConvTranspose: output channels on axis 1
        "W": rng.normal(size=(1, 32, 6)).astype(np.float32) * 0.3,  # LSTM [dirs, 4H, input]
        "R": rng.normal(size=(1, 32, 8)).astype(np.float32) * 0.3,
    }
    nodes = [
        helper.make_node("ConvTranspose", ["x", "wt"], ["ct"], name="deconv"),
        helper.make_node("ReduceMean", ["ct"], ["m"], axes=[3], keepdims=0, name="mean"),
        helper.make_node("Transpose", ["m"], ["seq"], perm=[2, 0, 1], name="to_seq"),
        helper.make_node("LSTM", ["seq", "W", "R"], ["", "y"], hidden_size=8, name="lstm"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8])],
        [numpy_helper.from_array(a, n) for n, a in arrays.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model = ir.serde.deserialize_model(proto)
    ClusterWeights(bits=3, granularity="per-channel-group", group_size=2, min_elements=64)(model)
    rows = {row["weight"]: row for row in summary(model)["weights"]}
    assert rows["wt"]["axis"] == 1 and rows["wt"]["groups"] == 3
    # 6 and 8 values per channel: merged until each palette has 4 x 8 values behind it
    assert rows["W"]["axis"] == 1 and rows["W"]["groups"] == 6 and rows["R"]["groups"] == 8
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    dense = model.clone()
    storage.UnpackPalette()(dense)
    wt = dense.graph.initializers["wt"].const_value.numpy()
    assert all(len(np.unique(wt[:, c : c + 2])) <= 8 for c in range(0, 6, 2))
    x = {"x": rng.normal(size=(2, 4, 5, 5)).astype(np.float32)}
    np.testing.assert_array_equal(Session(model).run(x)["y"], Session(dense).run(x)["y"])


def test_recipe_round_trip():
    from onnxslim.errors import UsageError
    from onnxslim.pipeline import Pipeline

    text = (
        '[[pass]]\nname = "cluster-weights"\nbits = 3\ninit = "density"\n\n'
        '[[pass]]\nname = "pack-palette"\n'
    )
    pipeline = Pipeline.from_toml(text)
    assert pipeline.passes[0] == ClusterWeights(bits=3, init="density")
    assert Pipeline.from_toml(pipeline.to_toml()).passes == pipeline.passes
    with pytest.raises(UsageError, match="bits"):
        Pipeline.from_toml('[[pass]]\nname = "cluster-weights"\nbits = 12\n')


def test_weights_read_in_if_branches_and_through_slices_are_clustered():
    rng = np.random.default_rng(11)
    w = rng.normal(size=(16, 16)).astype(np.float32)
    v = rng.normal(size=(16, 16)).astype(np.float32)

    def branch(name: str) -> onnx.GraphProto:  # reads the outer-scope weight w
        return helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], [f"{name}_y"], name=f"{name}_mm")],
            name,
            [],
            [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, ["n", 16])],
        )

    consts = {
        "zero": np.array([0], np.int64),
        "eight": np.array([8], np.int64),
        "end": np.array([16], np.int64),
    }
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0, name="sum"),
        helper.make_node("ReduceSum", ["s"], ["t"], keepdims=0, name="total"),
        helper.make_node("Greater", ["t", "zero_f"], ["c"], name="positive"),
        helper.make_node(
            "If", ["c"], ["b"], then_branch=branch("then"), else_branch=branch("else"), name="if"
        ),
        helper.make_node("Slice", ["v", "zero", "eight"], ["top"], name="top"),  # gate reorder
        helper.make_node("Slice", ["v", "eight", "end"], ["bottom"], name="bottom"),
        helper.make_node("Concat", ["bottom", "top"], ["v2"], axis=0, name="swap"),
        helper.make_node("MatMul", ["b", "v2"], ["y"], name="mm"),
    ]
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(v, "v"),
        numpy_helper.from_array(np.array(0, np.float32), "zero_f"),
    ]
    inits += [numpy_helper.from_array(a, n) for n, a in consts.items()]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16])],
        inits,
    )
    model = ir.serde.deserialize_model(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    )
    calib = [{"x": rng.normal(size=(4, 16)).astype(np.float32)} for _ in range(4)]
    ClusterWeights(bits=2, granularity="per-channel-group", min_elements=64).run(
        model, RunData(feeds=calib)
    )
    layers = {row["weight"]: row for row in summary(model)["layers"]}
    assert layers["w"]["skipped"].startswith(
        "inside an If/Loop body"
    )  # said, not silently left out
    assert layers["v"]["skipped"].startswith("read by Slice")
    rows = {row["weight"]: row for row in summary(model)["weights"]}
    assert set(rows) == {"w", "v"}
    assert sorted(rows["w"]["readers"]) == ["else_mm", "then_mm"] and rows["w"]["axis"] == 1
    assert rows["v"]["axis"] is None  # reached through Slice/Concat: one palette
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    dense = model.clone()
    storage.UnpackPalette()(dense)
    x = {"x": rng.normal(size=(3, 16)).astype(np.float32)}
    np.testing.assert_array_equal(Session(model).run(x)["y"], Session(dense).run(x)["y"])
    assert len(np.unique(dense.graph.initializers["v"].const_value.numpy())) <= 4


@pytest.mark.devmodels
@pytest.mark.parametrize(
    "entry",
    [p for p in devmodel_params() if p.values[0] is None or p.values[0]["id"] == SMALL_CORPUS[0]],
)
def test_devmodel_mixed_allocation_is_closer_to_float_at_the_uniform_size(entry):
    """Real weights: bits chosen per weight from measured errors beat one width for all, at
    no more bytes (probes on generated feeds; parity on other feeds)."""
    from onnxslim import api

    path = DEVMODELS_CACHE / f"{entry['id']}.onnx"
    calib, check = devmodel_feeds(entry["id"], 8, seed=0), devmodel_feeds(entry["id"], 8, seed=5)
    common = dict(bits=4, calib=calib, eval_data=check, runs=0, refine=False)
    uniform = api.cluster(path, allocation="uniform", **common)
    mixed = api.cluster(path, allocation="mixed", **common)
    assert mixed.checker == "ok"
    a = mixed.allocation
    assert a["chosen_bytes"] <= a["budget_bytes"] == a["uniform_bytes"]
    assert a["chosen_error"] <= a["uniform_error"]
    assert mixed.size_after.raw <= uniform.size_after.raw + 1000  # small weights join in
    worst = {r.name: r.cosine for r in uniform.validation.outputs}
    for output in mixed.validation.outputs:
        assert 1 - output.cosine <= 1.05 * (1 - worst[output.name]) + 1e-6
