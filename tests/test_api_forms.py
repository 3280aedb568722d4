"""The API takes the model as users hold it and gives it back: path, ModelProto, bytes, IR."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from conftest import make_mlp

import onnxslim
from onnxslim.errors import ModelLoadError, UsageError
from onnxslim.runtime import Session


def _forms(path: Path) -> dict[str, object]:
    proto = onnx.load(str(path))
    return {
        "path": path,
        "str": str(path),
        "ModelProto": proto,
        "bytes": proto.SerializeToString(),
        "onnx_ir.Model": ir.load(path),
    }


@pytest.fixture
def mlp(tmp_path: Path) -> Path:
    return make_mlp(tmp_path / "mlp.onnx")


def test_optimize_takes_every_form_and_gives_the_model_back(mlp: Path, tmp_path: Path) -> None:
    x = {"x": np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)}
    expected = Session(ir.load(mlp)).run(x)["y"]
    for form, source in _forms(mlp).items():
        before = source.SerializeToString() if isinstance(source, onnx.ModelProto) else None
        result = onnxslim.optimize(source)
        assert result.passed, form
        proto = result.model_proto()
        assert isinstance(proto, onnx.ModelProto) and len(proto.graph.node) < 6, form
        written = result.save(tmp_path / f"{form}.onnx")
        again = Session(ir.load(written)).run(x)["y"]
        np.testing.assert_allclose(again, expected, rtol=1e-5, atol=1e-6)
        assert onnx.load_from_string(result.model_bytes()).graph.output[0].name == "y"
        if before is not None:  # the caller's proto is never modified
            assert source.SerializeToString() == before  # type: ignore[union-attr]


def test_every_function_takes_a_modelproto(mlp: Path, tmp_path: Path) -> None:
    proto = onnx.load(str(mlp))
    rng = np.random.default_rng(0)
    calib = [{"x": rng.standard_normal((1, 8)).astype(np.float32)} for _ in range(16)]
    summary = onnxslim.inspect(proto)
    assert summary.inputs[0].name == "x" and summary.path is None
    int8 = onnxslim.quantize(
        proto, calib=calib, latency_guard=False, verify=False, input_shapes={"x": (1, 8)}
    )
    assert int8.report.quantized_nodes and isinstance(int8.model_proto(), onnx.ModelProto)
    assert _dims(int8.model_proto()) == [1, 8]  # input_shapes, as --input-shape does
    pruned = onnxslim.prune(proto, sparsity=0.5, min_elements=16, runs=0, input_shapes=["x:2,8"])
    assert pruned.sparsity > 0.3 and _dims(pruned.model_proto()) == [2, 8]
    assert _dims(proto) == [0, 8]  # the caller's model keeps its dynamic batch
    # wider layers: on the 8x16 ones every 2-bit palette (with its table) outweighs float
    wide = onnx.load(str(make_mlp(tmp_path / "wide.onnx", hidden=64)))
    clustered = onnxslim.cluster(wide.SerializeToString(), bits=2, min_elements=16, runs=0)
    assert clustered.weights and clustered.save(tmp_path / "c.onnx").is_file()
    report = onnxslim.validate(
        proto, int8.model_proto(), feeds=calib, max_samples=4, runs=0, measure_memory=False
    )
    assert "tolerance int8" in report.notes[-1] and report.outputs[0].name == "y"
    assert "4 feeds" in report.feeds
    run = onnxslim.run("lossless", proto.SerializeToString())
    assert run.passed and run.model_proto().graph.output[0].name == "y"
    grid = {
        "pass": [{"name": "prune", "sparsity": 0.5, "min_elements": 16, "allocation": "uniform"}],
        "search": {"prune.sparsity": [0.25, 0.5]},
        "measure": {"latency_runs": 0},
    }
    searched = onnxslim.search(grid, proto.SerializeToString(), jobs=1)
    assert searched.input["path"] is None and searched.model_proto().graph.output[0].name == "y"


def _dims(proto: onnx.ModelProto) -> list[int]:
    return [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]


def test_verify_is_the_one_name_and_validate_still_works_with_a_warning(mlp: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet = onnxslim.prune(mlp, sparsity=0.5, min_elements=16, verify=False, runs=0)
    assert quiet.validation is None
    with pytest.warns(DeprecationWarning, match="verify="):
        old = onnxslim.prune(mlp, sparsity=0.5, min_elements=16, validate=False, runs=0)
    assert old.validation is None
    # The sample cap is max_samples everywhere (`count=`, `feed_count=` were its old names).
    with pytest.warns(DeprecationWarning, match=r"validate\(count=...\).*max_samples="):
        capped = onnxslim.validate(mlp, mlp, max_samples=None, count=2, runs=0)
    assert "2 feeds" in capped.feeds or "(2" in capped.feeds, capped.feeds
    with pytest.warns(DeprecationWarning, match=r"optimize\(feed_count=...\)"):
        assert onnxslim.optimize(mlp, feed_count=2).passed


def test_wrong_forms_are_one_line_usage_errors() -> None:
    with pytest.raises(UsageError, match="expected a model path, onnx.ModelProto"):
        onnxslim.optimize(42)  # type: ignore[arg-type]
    with pytest.raises(ModelLoadError, match="not a serialized ONNX model|not an ONNX model"):
        onnxslim.optimize(b"this is not a protobuf")
