"""Palettized storage (passes/cluster/storage.py) on ORT: exact expansion, folded at load, small."""

from __future__ import annotations

import collections
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxslim.io import model_to_bytes
from onnxslim.passes.cluster import expansion, storage
from onnxslim.passes.cluster import packing as index_packing
from onnxslim.passes.cluster.palette import cluster_tensor, snap_int8
from onnxslim.runtime import Session, SessionConfig

RNG = np.random.default_rng(0)
X = RNG.normal(size=(2, 4, 8, 8)).astype(np.float32)


def conv_matmul(opset: int, seed: int = 0) -> ir.Model:
    """x[2,4,8,8] -> Conv(W[8,4,3,3]) -> Reshape -> MatMul(M[288,10]) -> y."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(8, 4, 3, 3)).astype(np.float32)
    M = rng.normal(size=(8 * 6 * 6, 10)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "W"], ["c"]),
            helper.make_node("Reshape", ["c", "s"], ["r"]),
            helper.make_node("MatMul", ["r", "M"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 10])],
        [
            numpy_helper.from_array(W, "W"),
            numpy_helper.from_array(M, "M"),
            numpy_helper.from_array(np.array([2, -1], np.int64), "s"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return ir.serde.deserialize_model(model)


def palettize(
    model: ir.Model, bits: int, grouped: bool, int8: bool, packing: str = "auto"
) -> dict[str, np.ndarray]:
    """Cluster W (axis 0) and M (axis 1) and store them; returns the dense weights they make."""
    dense = {}
    for name, axis in (("W", 0), ("M", 1)):
        value = model.graph.initializers[name]
        p, _ = cluster_tensor(
            value.const_value.numpy(), bits, axis=axis if grouped else None, group_size=3
        )
        if int8:
            p = snap_int8(p, 64)
        dense[name] = p.dense()
        storage.write(model.graph, model, value, p, packing=packing)
    return dense


def optimized_ops(model: ir.Model) -> collections.Counter:
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "optimized.onnx")
        Session(model, SessionConfig(optimized_model_path=path))
        return collections.Counter(n.op_type for n in onnx.load(path).graph.node)


CASES = [  # (opset, bits, grouped, int8, packing, expected index format)
    (13, 4, False, False, "auto", "lut"),
    (13, 4, True, False, "auto", "planes"),
    (17, 1, False, True, "auto", "lut"),
    (13, 3, True, True, "auto", "planes"),
    (17, 7, True, False, "auto", "planes"),
    (20, 8, False, True, "auto", "uint8"),
    (21, 4, True, False, "auto", "uint4"),
    (21, 2, False, False, "auto", "lut"),
    (21, 2, True, False, "bits", "planes"),
    (25, 2, True, True, "auto", "uint2"),
    (21, 4, False, False, "uint8", "uint8"),
    (21, 5, False, False, "bits", "planes"),
]


@pytest.mark.parametrize("opset,bits,grouped,int8,packing,kind", CASES)
def test_palettized_model_matches_dense_weights_exactly(opset, bits, grouped, int8, packing, kind):
    model = conv_matmul(opset)
    assert index_packing.index_format(bits, opset, packing, grouped) == kind
    dense = palettize(model, bits, grouped, int8, packing)
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    reference = conv_matmul(opset)
    for name, array in dense.items():
        reference.graph.initializers[name].const_value = ir.Tensor(array, name=name)
    got = Session(model).run({"x": X})["y"]
    want = Session(reference).run({"x": X})["y"]
    np.testing.assert_array_equal(got, want)  # same weights, same kernels: bit-identical
    back = storage.packed_weights(model)
    for name, array in dense.items():
        np.testing.assert_array_equal(back[name], array)
    # ORT folded every expansion at load: its optimized graph holds only the model's own ops.
    assert set(optimized_ops(model)) == set(optimized_ops(reference))


def test_file_shrinks_about_32_over_bits_on_a_weight_dominated_model():
    rng = np.random.default_rng(1)
    w1 = rng.normal(size=(256, 512)).astype(np.float32)
    w2 = rng.normal(size=(512, 16)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["y"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    float_bytes = len(model_to_bytes(ir.serde.deserialize_model(proto)))
    for bits in (2, 3, 4, 8):
        model = ir.serde.deserialize_model(proto)
        for name in ("w1", "w2"):
            value = model.graph.initializers[name]
            storage.write(
                model.graph, model, value, cluster_tensor(value.const_value.numpy(), bits)[0]
            )
        ratio = len(model_to_bytes(model)) / float_bytes
        assert ratio <= bits / 32 * 1.03 + 0.004, (bits, ratio)
        if bits == 4:
            assert ratio <= 1 / 6


def test_pack_palette_is_lossless_and_unpack_restores_the_initializers():
    model = conv_matmul(18, seed=3)
    originals = {}
    for name, axis in (
        ("W", 0),
        ("M", 1),
    ):  # weights that already hold few values (clustered elsewhere)
        value = model.graph.initializers[name]
        p, _ = cluster_tensor(value.const_value.numpy(), 3, axis=axis, group_size=1)
        value.const_value = ir.Tensor(p.dense(), name=name)
        originals[name] = p.dense()
    before = Session(model).run({"x": X})["y"]
    size_before = len(model_to_bytes(model))
    assert storage.PackPalette()(model).modified
    assert {n.op_type for n in model.graph if n.domain == expansion.DOMAIN} >= {"ExpandGrouped"}
    assert len(model_to_bytes(model)) < 0.5 * size_before
    np.testing.assert_array_equal(Session(model).run({"x": X})["y"], before)
    assert not storage.PackPalette()(model).modified  # nothing left to pack
    assert storage.UnpackPalette()(model).modified
    assert not any(n.domain == expansion.DOMAIN for n in model.graph) and not model.functions
    assert expansion.DOMAIN not in model.opset_imports
    for name, array in originals.items():
        np.testing.assert_array_equal(model.graph.initializers[name].const_value.numpy(), array)
    np.testing.assert_array_equal(Session(model).run({"x": X})["y"], before)


def test_pack_palette_leaves_tensors_with_many_values_alone():
    model = conv_matmul(18)
    assert not storage.PackPalette()(model).modified


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_bit_planes_round_trip_in_numpy(bits):
    values = np.random.default_rng(bits).integers(0, 1 << bits, size=1001)
    remaining, index = bits, np.zeros(values.size, np.int64)
    for width in index_packing.plane_widths(bits):
        remaining -= width
        plane = index_packing.pack_plane((values >> remaining) & ((1 << width) - 1), width)
        assert plane.nbytes == -(-values.size * width // 8)
        index = (index << width) | index_packing.unpack_plane(plane, width, values.size)
    np.testing.assert_array_equal(index, values)


def test_float16_palettes_widen_exactly_and_halve_palette_bytes():
    model, reference = conv_matmul(17), conv_matmul(17)
    for name, axis in (("W", 0), ("M", 1)):
        value = model.graph.initializers[name]
        p, _ = cluster_tensor(value.const_value.numpy(), 4, axis=axis, group_size=1)
        narrow = p.narrowed(np.float16)
        assert narrow.palette.dtype == np.float16 and narrow.dense().dtype == np.float32
        assert (
            index_packing.stored_bytes(narrow, 17)
            == index_packing.stored_bytes(p, 17) - p.palette.size * 2
        )
        reference.graph.initializers[name].const_value = ir.Tensor(narrow.dense(), name=name)
        storage.write(model.graph, model, value, narrow)
    assert any(n.op_type == "WidenPalette" for n in model.graph)
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    np.testing.assert_array_equal(
        Session(model).run({"x": X})["y"], Session(reference).run({"x": X})["y"]
    )
    for name, array in storage.packed_weights(model).items():
        np.testing.assert_array_equal(array, reference.graph.initializers[name].const_value.numpy())
    assert set(optimized_ops(model)) == set(optimized_ops(reference))
