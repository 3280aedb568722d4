"""deduplicate-initializers: twins merged (in subgraphs too), look-alikes kept, outputs exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnxslim import io
from onnxslim.pipeline import Pipeline, run_pipeline


def build(path: Path, *, external: bool) -> Path:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 64)).astype(np.float32)
    near = w.copy()
    near[5, 7] = np.nextafter(near[5, 7], np.float32(10))  # one ulp apart: not a twin
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(w.copy(), "w_twin"),
        numpy_helper.from_array(near, "w_near"),
        numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), "other"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"]),
        helper.make_node("MatMul", ["a", "w_twin"], ["b"]),
        helper.make_node("MatMul", ["b", "w_near"], ["c"]),
        helper.make_node("MatMul", ["c", "other"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 32])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if external:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            location=path.name + ".data",
            size_threshold=1024,
        )
    else:
        onnx.save(model, str(path))
    return path


def run(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[
        0
    ]


def test_twins_merge_look_alikes_stay_outputs_exact(tmp_path: Path) -> None:
    for external in (False, True):
        folder = tmp_path / ("ext" if external else "inline")
        folder.mkdir()
        source = build(folder / "m.onnx", external=external)
        result = run_pipeline(io.load(source), Pipeline.from_names(["deduplicate-initializers"]))
        assert result.records[0].status == "changed"
        assert sorted(result.model.graph.initializers) == ["other", "w", "w_near"]
        out = io.save(result.model, folder / "out.onnx")
        x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
        np.testing.assert_array_equal(run(source, x), run(out, x))
