"""A float model that runs is never refused (issue 14, item 5): weights shared by If
branches are quantized once, and where int8 pays nowhere the result is the cleaned
float model, exit 0, with the reason in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxslim import api, io
from onnxslim.cli import main
from onnxslim.graphs import iter_graphs
from onnxslim.runtime import Session

WIDTH = 64


def _branch(name: str, negate: bool) -> onnx.GraphProto:
    """x @ W -> Relu (-> Neg): both branches read the outer W."""
    nodes = [
        helper.make_node("MatMul", ["x", "W"], [f"{name}_h"], name=f"{name}_mm"),
        helper.make_node("Relu", [f"{name}_h"], [f"{name}_r"], name=f"{name}_relu"),
        helper.make_node(
            "Neg" if negate else "Identity", [f"{name}_r"], [f"{name}_out"], name=f"{name}_end"
        ),
    ]
    out = helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, ["N", WIDTH])
    return helper.make_graph(nodes, name, [], [out])


def _if_model(path: Path) -> Path:
    """y = If(sum(x) > 0, then: relu(x @ W), else: -relu(x @ W)) @ W (the `head`)."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((WIDTH, WIDTH)) * 0.1).astype(np.float32)
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0, name="sum"),
        helper.make_node("Greater", ["s", "zero"], ["cond"], name="positive"),
        helper.make_node(
            "If",
            ["cond"],
            ["branch_out"],
            then_branch=_branch("then", False),
            else_branch=_branch("else", True),
            name="if",
        ),
        helper.make_node("MatMul", ["branch_out", "W"], ["y"], name="head"),
    ]
    graph = helper.make_graph(
        nodes,
        "branches",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", WIDTH])],
        initializer=[
            numpy_helper.from_array(w, "W"),
            numpy_helper.from_array(np.array(0, np.float32), "zero"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _feeds(count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Half the feeds take the then branch, half the else branch."""
    rng = np.random.default_rng(seed)
    feeds = []
    for i in range(count):
        x = rng.standard_normal((4, WIDTH)).astype(np.float32)
        x += np.float32(0.5 if i % 2 else -0.5)
        feeds.append({"x": x})
    return feeds


def _int8_weights(model) -> list[str]:
    """Every int8 initializer holding a [WIDTH, WIDTH] matrix, in any graph."""
    return [
        name
        for graph in iter_graphs(model)
        for name, value in graph.initializers.items()
        if value.const_value is not None
        and value.const_value.dtype.name == "INT8"
        and tuple(value.const_value.shape) == (WIDTH, WIDTH)
    ]


def test_a_weight_shared_by_if_branches_is_quantized_once(tmp_path: Path) -> None:
    path = _if_model(tmp_path / "if.onnx")
    result = api.quantize(
        path, calib=_feeds(16), verify=False, latency_guard=False, target_error=None
    )
    assert sorted(result.report.quantized_nodes) == ["else_mm", "head", "then_mm"]
    # One int8 copy of W, in the main graph, read through a DQ in each branch and beside it.
    (stored,) = _int8_weights(result.model)
    assert stored in result.model.graph.initializers
    assert result.bytes_after < 0.3 * result.bytes_before
    assert result.kept_float is None
    original, quantized = Session(io.load(path)), Session(result.model)
    for feed in _feeds(4, seed=1):  # both branches run, both close to float
        a, b = original.run(feed)["y"], quantized.run(feed)["y"]
        cosine = float(np.sum(a * b) / np.linalg.norm(a) / np.linalg.norm(b))
        assert cosine > 0.99


def test_int8_that_would_be_larger_gives_the_float_model_and_exit_0(tmp_path: Path, capsys) -> None:
    """The head that also reads W is kept float (--exclude): W's float copy stays beside
    its int8 one, more weight bytes than the input; the result is the float model."""
    path = _if_model(tmp_path / "if.onnx")
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.stack([f["x"] for f in _feeds(32)]))
    out = tmp_path / "q.onnx"
    args = ["quantize", str(path), "-o", str(out), "--calib", str(calib), "--exclude", "head"]
    assert main([*args, "--no-latency-guard", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["kept_float"].startswith("int8 would hold more weight bytes")
    assert result["bytes_after"] <= result["bytes_before"] and result["target"]["passed"]
    written = onnx.load(str(out))
    assert not [n for n in written.graph.node if n.op_type == "QuantizeLinear"]
    assert main([*args, "--no-latency-guard", "--overwrite"]) == 0
    assert "kept the float model (cleaned up): int8 would hold more" in " ".join(
        capsys.readouterr().out.split()
    )
