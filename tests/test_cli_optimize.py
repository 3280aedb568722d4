"""`onnxslim optimize` end to end on ORT: real clean-up, identical outputs, atomic output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from onnxslim.cli import main


def run_model(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_optimize_removes_identity_and_dead_code_keeping_outputs(
    mlp_path: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out.onnx"
    before = mlp_path.read_bytes()
    assert main(["optimize", str(mlp_path), "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert mlp_path.read_bytes() == before, "input model must not change"
    import onnx

    optimized = onnx.load(str(out))
    ops = [n.op_type for n in optimized.graph.node]
    assert "Identity" not in ops, ops
    assert len(ops) < 6, "the dead MatMul must be removed"
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    np.testing.assert_array_equal(run_model(mlp_path, x), run_model(out, x))
    assert any(p["status"] == "changed" for p in report["passes"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary files left"


def test_optimize_refuses_to_overwrite_input(mlp_path: Path, capsys) -> None:
    before = mlp_path.read_bytes()
    assert main(["optimize", str(mlp_path), "-o", str(mlp_path)]) == 2
    assert mlp_path.read_bytes() == before


def test_missing_model_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    code = main(["optimize", str(tmp_path / "nope.onnx"), "-o", str(tmp_path / "o.onnx")])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.strip().count("\n") == 0 and "no such file" in captured.err
    assert "Traceback" not in captured.err


def test_not_onnx_is_exit_2(tmp_path: Path, capsys) -> None:
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"\x00\x01garbage" * 10)
    assert main(["optimize", str(bogus), "-o", str(tmp_path / "o.onnx")]) == 2
    assert "not an ONNX model" in capsys.readouterr().err
    assert not (tmp_path / "o.onnx").exists()


def test_exporter_debug_metadata_is_stripped_unless_kept(mlp_path: Path, tmp_path: Path) -> None:
    """Node stack traces and doc strings go (outputs bit-identical); model metadata stays."""
    import onnx

    proto = onnx.load(str(mlp_path))
    for node in proto.graph.node:
        node.doc_string = "File model.py, line 12, in forward " * 8
        onnx.helper.set_metadata_props(node, {"pkg.torch.onnx.stack_trace": "x" * 300})
    onnx.helper.set_model_props(proto, {"licence": "Apache-2.0"})
    source = tmp_path / "exported.onnx"
    onnx.save(proto, str(source))
    stripped, kept = tmp_path / "stripped.onnx", tmp_path / "kept.onnx"
    assert main(["optimize", str(source), "-o", str(stripped)]) == 0
    assert main(["optimize", str(source), "-o", str(kept), "--keep-metadata"]) == 0
    slim, full = onnx.load(str(stripped)), onnx.load(str(kept))
    assert not any(n.metadata_props or n.doc_string for n in slim.graph.node)
    assert any(n.metadata_props and n.doc_string for n in full.graph.node)  # fused nodes are new
    assert {p.key: p.value for p in slim.metadata_props} == {"licence": "Apache-2.0"}
    assert stripped.stat().st_size < kept.stat().st_size
    x = np.random.default_rng(2).standard_normal((3, 8)).astype(np.float32)
    np.testing.assert_array_equal(run_model(stripped, x), run_model(kept, x))
