"""`onnxslim export`: ORT format, fixed shapes, opset, fp16, bundle; checked on ORT."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import MODELS

from onnxslim.cli import main
from onnxslim.workflows.export import ExportOptions, export, sha256

CNN = MODELS / "digits_cnn.onnx"
TRANSFORMER = MODELS / "digits_transformer.onnx"


def eval_inputs(name: str, n: int = 16) -> dict[str, np.ndarray]:
    with np.load(MODELS / f"{name}.eval.npz") as data:
        return {
            k: np.concatenate(list(data[k][:n])) for k in data.files if k not in ("labels", "boxes")
        }


def run(path: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)


@pytest.mark.parametrize(
    "name", ["digits_cnn", "digits_transformer", "digits_lstm", "digits_detector", "digits_gated"]
)
def test_ort_format_loads_and_matches_original(name: str, tmp_path: Path) -> None:
    out = tmp_path / f"{name}.ort"
    assert main(["export", str(MODELS / f"{name}.onnx"), "-o", str(out)]) == 0
    assert out.is_file() and (tmp_path / f"{name}.required_operators.config").is_file()
    config = (tmp_path / f"{name}.required_operators.config").read_text()
    assert "ai.onnx;" in config
    feed = eval_inputs(name, 1 if name == "digits_gated" else 16)  # gated routes per batch
    expected, got = run(MODELS / f"{name}.onnx", feed), run(out, feed)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-4, atol=1e-4)


def test_fixed_shape_opset_and_fp16_with_io_float32(tmp_path: Path) -> None:
    out = tmp_path / "cnn16.onnx"
    result = export(CNN, out, ExportOptions(fp16=True, opset=21, input_shapes=("input:4,1,16,16",)))
    model = onnx.load(str(out))
    assert {o.domain: o.version for o in model.opset_import}.get("", 0) == 21
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [4, 1, 16, 16]
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dtypes = {t.data_type for t in model.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in dtypes
    assert out.stat().st_size < CNN.stat().st_size * 0.7
    feed = eval_inputs("digits_cnn", 4)
    expected, got = run(CNN, feed)[0], run(out, feed)[0]
    assert np.array_equal(expected.argmax(1), got.argmax(1))
    assert result.passed  # the fp16 export matched the input on ORT
    # every input shape was fixed, so the pre-flight has no dynamic-shape warning left
    assert not [w for w in result.preflight.warnings if "dynamic" in w]


def test_bundle_has_hashes_and_provenance(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    assert main(["export", str(CNN), "-o", str(tmp_path / "cnn.ort"), "--bundle", str(bundle)]) == 0
    names = {p.name for p in bundle.iterdir()}
    assert {
        "cnn.onnx",
        "cnn.ort",
        "cnn.required_operators.config",
        "validation.json",
        "metadata.json",
    } <= names
    metadata = json.loads((bundle / "metadata.json").read_text())
    assert metadata["input"]["sha256"] == sha256(CNN)
    for name, info in metadata["files"].items():
        assert info["sha256"] == sha256(bundle / name)
    assert "[[pass]]" in metadata["pipeline"] and metadata["tool"]["name"] == "onnxslim"
    assert json.loads((bundle / "validation.json").read_text())["passed"] is True
    assert not [p for p in bundle.iterdir() if p.name.startswith(".")]


def test_preflight_flags_dynamic_shapes_and_custom_domains(tmp_path: Path) -> None:
    result = export(CNN, tmp_path / "cnn.onnx", ExportOptions())
    assert any("dynamic input shapes" in w for w in result.preflight.warnings)
    assert result.preflight.usability_log, "onnxruntime's usability checker ran"


def test_bad_output_suffix_is_usage_error(tmp_path: Path, capsys) -> None:
    assert main(["export", str(CNN), "-o", str(tmp_path / "cnn.tflite")]) == 2
    assert "must end in .onnx or .ort" in capsys.readouterr().err


def test_failed_parity_writes_nothing(tmp_path: Path, capsys) -> None:
    out = tmp_path / "t16.onnx"
    code = main(
        [
            "export",
            str(TRANSFORMER),
            "-o",
            str(out),
            "--fp16",
            "--fp16-io",
            "--atol",
            "0",
            "--rtol",
            "0",
        ]
    )
    assert code == 1 and not out.exists()
    assert "nothing written" in capsys.readouterr().err


def _nested_if(depth: int) -> onnx.ModelProto:
    """y = Relu(x) under `depth` nested If nodes: valid ONNX that ORT runs."""
    from onnx import TensorProto, helper

    def vec(name: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [2])

    nodes, inner = [helper.make_node("Relu", ["x"], [f"o{depth}"])], f"o{depth}"
    for level in range(depth, 0, -1):
        then = helper.make_graph(nodes, f"then{level}", [], [vec(inner)])
        other = helper.make_graph(
            [helper.make_node("Neg", ["x"], [f"e{level}"])], f"else{level}", [], [vec(f"e{level}")]
        )
        nodes = [
            helper.make_node("If", ["c"], [f"o{level - 1}"], then_branch=then, else_branch=other)
        ]
        inner = f"o{level - 1}"
    nodes.append(helper.make_node("Identity", ["o0"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "nested",
        [vec("x"), helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [vec("y")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_model_the_ort_format_cannot_hold_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    """20 nested Ifs load in ORT as ONNX, but ORT refuses the .ort file it converts them to
    (its flatbuffer verifier's depth limit; fuzz case bombs/if-nested-30): exit 2, nothing
    written, not `internal error` exit 3."""
    source = tmp_path / "nested.onnx"
    onnx.save(_nested_if(20), source)
    ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])  # valid as ONNX
    out = tmp_path / "out" / "nested.ort"
    assert main(["export", str(source), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "does not fit the ORT format" in err and "Traceback" not in err
    assert not out.exists() and sorted(p.name for p in out.parent.iterdir()) == []
