"""Packed sparse weights: ORT gives bit-identical outputs, the file shrinks raw, unpack restores."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from prune_fixtures import convnet, feeds

from onnxslim import io
from onnxslim.passes.prune import (
    MagnitudePruning,
    NMSparsity,
    PackSparseWeights,
    UnpackSparseWeights,
)
from onnxslim.passes.prune._common import summary
from onnxslim.passes.prune.storage import DOMAIN, densify, pack

CHECK = feeds((3, 16, 16), 4, seed=2)


def _run_file(path, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [session.run(None, f)[0] for f in CHECK]


@pytest.fixture(scope="module")
def pruned(tmp_path_factory) -> tuple[ir.Model, object]:
    model = ir.serde.deserialize_model(convnet())
    MagnitudePruning(sparsity=0.5, min_elements=100)(model)
    path = tmp_path_factory.mktemp("dense") / "dense.onnx"
    io.save(model, path)
    return model, path


def test_pack_round_trip_in_numpy() -> None:
    rng = np.random.default_rng(0)
    for shape in [(7,), (3, 5, 2), (64, 33)]:
        w = rng.standard_normal(shape).astype(np.float32) * (rng.random(shape) < 0.4)
        values, mask = pack(w)
        assert values[-1] == 0 and len(values) == np.count_nonzero(w) + 1
        np.testing.assert_array_equal(densify(values, mask, w.size).reshape(shape), w)


@pytest.mark.parametrize(
    "level",
    [
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    ],
)
def test_packed_file_is_smaller_raw_and_runs_bit_identical(pruned, tmp_path, level) -> None:
    model, dense_path = pruned
    packed = model.clone()
    assert PackSparseWeights(min_elements=100)(packed).modified
    path = tmp_path / "packed.onnx"
    io.save(packed, path)
    onnx.checker.check_model(str(path), full_check=True)
    assert (
        path.stat().st_size < 0.65 * dense_path.stat().st_size
    )  # 50% sparse: ~0.53 of the weight bytes
    for a, b in zip(_run_file(dense_path, level), _run_file(path, level), strict=False):
        if level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL:
            # Unfolded, the weight is a computed tensor: ORT skips weight prepacking, so
            # the Conv kernel rounds differently; the values it multiplies are the same.
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(a, b)
    reloaded = io.load(path)  # standard ops only: any ONNX tool reads it
    assert any((n.name or "").startswith(DOMAIN + "/") for n in reloaded.graph)
    assert all(n.domain == "" for n in reloaded.graph) and not reloaded.functions


def test_ort_folds_the_expansion_at_session_start(pruned, tmp_path) -> None:
    model, _ = pruned
    packed = model.clone()
    PackSparseWeights(min_elements=100)(packed)
    path, optimized = tmp_path / "packed.onnx", tmp_path / "optimized.onnx"
    io.save(packed, path)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(optimized)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(str(optimized)).graph.node}
    assert not ops & {"CumSum", "BitShift", "Gather", "Split"}, (
        ops
    )  # nothing left to run per inference


def test_unpack_restores_the_dense_initializers(pruned) -> None:
    model, _ = pruned
    packed = model.clone()
    PackSparseWeights(min_elements=100)(packed)
    assert UnpackSparseWeights()(packed).modified
    assert not any((n.name or "").startswith(DOMAIN) for n in packed.graph)
    assert not any(name.startswith(DOMAIN) for name in packed.graph.initializers)
    for name, value in model.graph.initializers.items():
        np.testing.assert_array_equal(
            packed.graph.initializers[name].const_value.numpy(), value.const_value.numpy()
        )


def test_dense_or_small_tensors_are_left_alone_and_old_opsets_refused() -> None:
    dense = ir.serde.deserialize_model(convnet())
    assert not PackSparseWeights()(dense).modified
    old = ir.serde.deserialize_model(convnet(opset=10))
    NMSparsity(min_elements=100)(old)
    assert not PackSparseWeights(min_elements=100)(old).modified
    assert "opset 10" in summary(old)["storage"]["reason"]


def test_a_packed_model_prunes_again(pruned) -> None:
    """Magnitude pruning, packed, then channel pruning and packing again: composes on ORT."""
    from onnxslim.passes.prune import ChannelPruning

    model, _ = pruned
    packed = model.clone()
    PackSparseWeights(min_elements=100)(packed)
    assert ChannelPruning(ratio=0.5, multiple=8)(packed).modified
    stem = next(n for n in packed.graph if n.name == "stem")
    assert stem.inputs[1].const_value.shape == (8, 3, 3, 3)
    assert np.mean(stem.inputs[1].const_value.numpy() == 0) > 0.3  # the zeros survived the cut
    assert PackSparseWeights(min_elements=100)(packed).modified
    from onnxslim.runtime import Session

    assert Session(packed).run(CHECK[0])["y"].shape == (1, 10)


def test_layer_table_finds_a_packed_weight_shared_through_identity(tmp_path) -> None:
    """rxnmap reads one block's weights through Identity nodes 8 times: once packed, 53 of
    61 layers were counted as removed and 93 % sparsity reported for 50 %."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from onnxslim import api

    w = np.random.default_rng(1).normal(size=(64, 64)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["w"], ["w_a"]),
            helper.make_node("Identity", ["w"], ["w_b"]),
            helper.make_node("MatMul", ["x", "w_a"], ["h"]),
            helper.make_node("MatMul", ["h", "w_b"], ["y"]),
        ],
        "shared",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 64])],
        [numpy_helper.from_array(w, "w")],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    result = api.prune(
        model, sparsity=0.5, allocation="uniform", storage="packed", runs=0, target_error=None
    )
    assert [r.shape_after for r in result.layers] == [(64, 64), (64, 64)]
    assert abs(result.sparsity - 0.5) < 0.01
