"""inspect_model: interface, op histogram over every graph, parameters, MACs, file size."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_validation import make_if_model

from onnxslim import inspect, io
from onnxslim.inspection import inspect_model


def test_mlp_summary(mlp_path: Path) -> None:
    summary = inspect(mlp_path)
    proto = onnx.load(str(mlp_path))
    assert summary.file_bytes == mlp_path.stat().st_size
    assert summary.opset_imports == {"ai.onnx": 17}
    assert summary.ir_version == proto.ir_version
    assert [(i.name, i.dtype, i.shape) for i in summary.inputs] == [("x", "float32", ["N", 8])]
    assert [(o.name, o.shape) for o in summary.outputs] == [("y", ["N", 4])]
    expected_ops: dict[str, int] = {}
    for node in proto.graph.node:
        expected_ops[node.op_type] = expected_ops.get(node.op_type, 0) + 1
    assert summary.op_histogram == expected_ops
    assert summary.nodes == summary.main_graph_nodes == len(proto.graph.node)
    weights = [numpy_helper.to_array(t) for t in proto.graph.initializer]
    assert summary.parameters["float32"].tensors == len(weights)
    assert summary.parameter_count == sum(w.size for w in weights)
    assert summary.parameter_bytes == sum(w.nbytes for w in weights)
    # N counted as 1: each MatMul does (rows=1) * K * M multiply-accumulates.
    by_name = {t.name: numpy_helper.to_array(t).shape for t in proto.graph.initializer}
    expected = sum(
        math.prod(by_name[n.input[1]]) for n in proto.graph.node if n.op_type == "MatMul"
    )
    assert summary.macs == expected
    assert any("N" in note and "as 1" in note for note in summary.macs_notes)
    assert not summary.quantized and summary.subgraphs == 0
    json.dumps(summary.to_dict())


def test_input_shapes_pin_free_dims_and_input_model_is_untouched(mlp_path: Path) -> None:
    model = io.load(mlp_path)
    before = io.model_to_bytes(model)
    pinned = inspect_model(model, input_shapes={"x": (5, 8)})
    assert pinned.macs == 5 * inspect_model(model).macs
    assert not any("as 1" in note for note in pinned.macs_notes)
    assert pinned.path is None and pinned.file_bytes is None
    assert io.model_to_bytes(model) == before, "inspection must not modify the model it is given"


def _conv_model(path: Path) -> tuple[Path, int]:
    """Conv, depthwise Conv, ConvTranspose and Gemm with their MACs worked out by hand."""
    rng = np.random.default_rng(0)
    w_conv = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w_dw = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    w_up = rng.standard_normal((4, 2, 2, 2)).astype(np.float32)
    w_fc = rng.standard_normal((5, 2 * 16 * 16)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w_conv"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c1", "w_dw"], ["c2"], pads=[1, 1, 1, 1], group=4),
        helper.make_node("ConvTranspose", ["c2", "w_up"], ["c3"], strides=[2, 2]),
        helper.make_node("Flatten", ["c3"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w_fc"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "convs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        initializer=[
            numpy_helper.from_array(a, n)
            for a, n in ((w_conv, "w_conv"), (w_dw, "w_dw"), (w_up, "w_up"), (w_fc, "w_fc"))
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    conv = (1 * 4 * 8 * 8) * (3 * 3 * 3)  # output elements * (C_in / group) * kernel
    depthwise = (1 * 4 * 8 * 8) * (1 * 3 * 3)  # group = C: one input channel per output
    transpose = (1 * 4 * 8 * 8) * (2 * 2 * 2)  # input elements * (C_out / group) * kernel
    gemm = 1 * 5 * 512
    return path, conv + depthwise + transpose + gemm


def test_macs_for_conv_depthwise_transpose_gemm(tmp_path: Path) -> None:
    path, expected = _conv_model(tmp_path / "convs.onnx")
    summary = inspect(path)
    assert summary.macs == expected
    assert set(summary.macs_by_op) == {"Conv", "ConvTranspose", "Gemm"}
    assert summary.macs_by_op["Gemm"] == 5 * 512
    assert not summary.macs_notes


def test_if_subgraph_ops_and_tensors_are_counted(tmp_path: Path) -> None:
    path = make_if_model(tmp_path / "if.onnx")
    summary = inspect(path)
    proto = onnx.load(str(path))
    if_node = next(n for n in proto.graph.node if n.op_type == "If")
    branches = [a.g for a in if_node.attribute]
    assert summary.subgraphs == 2
    assert summary.main_graph_nodes == len(proto.graph.node)
    assert summary.nodes == len(proto.graph.node) + sum(len(b.node) for b in branches)
    assert sum(summary.op_histogram.values()) == summary.nodes
    assert summary.op_histogram["Sub"] == 1 and summary.op_histogram["If"] == 1
    # The then-branch weight is a Constant inside the subgraph: still a parameter.
    branch_constants = sum(
        numpy_helper.to_array(a.t).size
        for b in branches
        for n in b.node
        for a in n.attribute
        if n.op_type == "Constant"
    )
    main = sum(numpy_helper.to_array(t).size for t in proto.graph.initializer)
    assert summary.parameter_count == main + branch_constants
    assert summary.macs_by_op.get("MatMul", 0) > 0
    assert any("subgraph" in note for note in summary.macs_notes)
    assert {i.name for i in summary.inputs} == {"x", "y"}


def test_custom_domains_functions_and_quantization_are_reported(tmp_path: Path) -> None:
    function = helper.make_function(
        "mylib",
        "Twice",
        ["a"],
        ["b"],
        [helper.make_node("Add", ["a", "a"], ["b"])],
        opset_imports=[helper.make_opsetid("", 17)],
    )
    nodes = [
        helper.make_node("Gelu", ["x"], ["g"], domain="com.microsoft"),
        helper.make_node("Twice", ["g"], ["t"], domain="mylib"),
        helper.make_node("QuantizeLinear", ["t", "scale", "zero"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "q",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        initializer=[
            numpy_helper.from_array(np.array(0.1, np.float32), "scale"),
            numpy_helper.from_array(np.array(0, np.uint8), "zero"),
        ],
    )
    model = helper.make_model(
        graph,
        functions=[function],
        opset_imports=[
            helper.make_opsetid("", 17),
            helper.make_opsetid("com.microsoft", 1),
            helper.make_opsetid("mylib", 1),
        ],
    )
    model.ir_version = 8
    path = tmp_path / "q.onnx"
    onnx.save(model, str(path))
    summary = inspect(path)
    assert summary.op_histogram == {
        "com.microsoft::Gelu": 1,
        "mylib::Twice": 1,
        "QuantizeLinear": 1,
        "DequantizeLinear": 1,
        "Add": 1,
    }
    assert summary.functions == 1 and summary.nodes == 5 and summary.main_graph_nodes == 4
    assert summary.quantized
    assert summary.quantization_ops == {"DequantizeLinear": 1, "QuantizeLinear": 1}
    assert summary.parameters["uint8"].elements == 1 and summary.parameters["float32"].elements == 1
    assert summary.opset_imports == {"ai.onnx": 17, "com.microsoft": 1, "mylib": 1}


def test_file_size_includes_external_data(mlp_path: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ext"
    folder.mkdir()
    target = folder / "mlp.onnx"
    onnx.save_model(
        onnx.load(str(mlp_path)),
        str(target),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="mlp.onnx.data",
        size_threshold=0,
    )
    data = folder / "mlp.onnx.data"
    assert data.stat().st_size > 0
    summary = inspect(target)
    assert summary.file_bytes == target.stat().st_size + data.stat().st_size
    assert summary.parameter_bytes == inspect(mlp_path).parameter_bytes


def test_symbolic_and_unknown_dims_are_kept(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "dims",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", None, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    summary = inspect_model(ir.serde.deserialize_model(model))
    assert summary.inputs[0].shape == ["batch", None, 3]
    assert summary.inputs[0].describe() == "float32 [batch, ?, 3]"
    assert summary.outputs[0].shape is None
    assert summary.macs is None


@pytest.mark.parametrize("bad", ["missing", "folder"])
def test_bad_path_is_a_load_error(tmp_path: Path, bad: str) -> None:
    from onnxslim.errors import ModelLoadError

    target = tmp_path / "nope.onnx" if bad == "missing" else tmp_path
    with pytest.raises(ModelLoadError):
        inspect(target)
