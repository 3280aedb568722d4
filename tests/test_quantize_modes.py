"""--mode dynamic and --mode weight-only on ORT for real: kernels, parity, size; targets; CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from quantize_fixtures import cnn, feeds_for, lstm_model, mlp

from onnxslim import api, io
from onnxslim.cli import main
from onnxslim.graphs import iter_nodes, tensor_bytes
from onnxslim.passes.quantize.dynamic import QuantizeDynamic
from onnxslim.passes.quantize.policy import detect_target, resolve_target
from onnxslim.passes.quantize.weight_only import QuantizeWeightOnly
from onnxslim.runtime import Session

MODELS = Path(__file__).resolve().parents[1] / "models"


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def parity(model: ir.Model, quantized: ir.Model, feeds: list[dict]) -> float:
    ref, cand = Session(model), Session(quantized)
    return min(cosine(ref.run(f)[k], cand.run(f)[k]) for f in feeds for k in ref.output_names)


def ops(model: ir.Model) -> set[str]:
    return {n.op_type for n in iter_nodes(model)}


def test_dynamic_matmul_folds_bias_and_shrinks():
    model = mlp(hidden=256, features=64)
    quantized = model.clone()
    assert QuantizeDynamic()(quantized).modified
    assert ops(quantized) == {"DynamicQuantizeMatMul", "Relu"}  # both bias Adds folded in
    assert tensor_bytes(quantized) < tensor_bytes(model) / 3.5
    assert parity(model, quantized, feeds_for(model, 3)) > 0.999


def test_dynamic_lstm_and_gemm():
    model = lstm_model()
    quantized = model.clone()
    QuantizeDynamic()(quantized)
    assert "DynamicQuantizeLSTM" in ops(quantized)
    feed = {"x": np.random.default_rng(0).standard_normal((6, 2, 16)).astype(np.float32)}
    assert parity(model, quantized, [feed]) > 0.999
    classifier = cnn()
    quantized = classifier.clone()
    QuantizeDynamic()(quantized)
    assert "DynamicQuantizeMatMul" in ops(quantized) and "Conv" in ops(
        quantized
    )  # Conv stays float
    assert parity(classifier, quantized, feeds_for(classifier, 2)) > 0.999


@pytest.mark.parametrize("bits", [8, 4])
def test_weight_only(bits):
    model = mlp(hidden=256, features=64)
    quantized = model.clone()
    QuantizeWeightOnly(bits=bits)(quantized)
    expected = {"MatMulNBits"} if bits == 4 else {"DequantizeLinear", "MatMul"}
    assert expected <= ops(quantized)
    ratio = tensor_bytes(quantized) / tensor_bytes(model)
    assert ratio < (0.2 if bits == 4 else 0.3), ratio
    assert parity(model, quantized, feeds_for(model, 3)) > (0.99 if bits == 4 else 0.9995)


def test_targets_follow_cpu_flags():
    assert detect_target({"avx2", "fma"}, "x86_64") == "x86-avx2"
    assert detect_target({"avx2", "avx512_vnni"}, "x86_64") == "x86-vnni"
    assert detect_target(set(), "aarch64") == "arm64"
    assert (
        resolve_target("x86-avx2").reduce_range
        and resolve_target("x86-avx2").activation_type == "uint8"
    )
    assert resolve_target("arm64").activation_type == "int8"
    assert resolve_target("auto").name in ("x86-avx2", "x86-vnni", "arm64")


def _write(model: ir.Model, path: Path) -> Path:
    io.save(model, path)
    return path


def test_cli_static_end_to_end_with_labels(tmp_path, capsys):
    model = cnn()
    path = _write(model, tmp_path / "cnn.onnx")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((24, 1, 3, 16, 16)).astype(np.float32)
    labels = np.stack([Session(model).run({"x": s})["y"].argmax(-1) for s in x])
    np.savez(tmp_path / "calib.npz", x=x[:16])
    np.savez(tmp_path / "eval.npz", x=x[16:], labels=labels[16:])
    out = tmp_path / "cnn.int8.onnx"
    code = main(
        [
            "quantize",
            str(path),
            "-o",
            str(out),
            "--calib",
            str(tmp_path / "calib.npz"),
            "--data",
            str(tmp_path / "eval.npz"),
            "--no-latency-guard",
            "--json",
        ]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["report"]["int8_kernels"]["QLinearConv"] == 2
    assert report["accuracy"]["float"] == 1.0 and report["accuracy"]["quantized"] >= 0.875
    assert report["file_bytes"][1] < report["file_bytes"][0]
    assert report["latency_ratio"] is not None
    assert sorted(os.listdir(tmp_path)) == ["calib.npz", "cnn.int8.onnx", "cnn.onnx", "eval.npz"]


def test_cli_refuses_quantized_model_and_bad_usage(tmp_path, capsys):
    model = mlp()
    path = _write(model, tmp_path / "mlp.onnx")
    out = tmp_path / "mlp.dyn.onnx"
    assert main(["quantize", str(path), "-o", str(out), "--mode", "dynamic", "--no-verify"]) == 0
    assert (
        main(["quantize", str(out), "-o", str(tmp_path / "again.onnx"), "--mode", "dynamic"]) == 2
    )
    assert "already quantized" in capsys.readouterr().err
    assert (
        main(["quantize", str(path), "-o", str(tmp_path / "s.onnx")]) == 2
    )  # static without --calib
    assert main(["quantize", str(path), "-o", str(tmp_path / "s.onnx"), "--mode", "nope"]) == 2
    assert not (tmp_path / "s.onnx").exists() and not (tmp_path / "again.onnx").exists()


@pytest.mark.parametrize("name", ["digits_cnn", "digits_transformer"])
def test_trained_example_models_keep_accuracy(name):
    path, calib, evaluation = (
        MODELS / f"{name}.onnx",
        MODELS / f"{name}.calib.npz",
        MODELS / f"{name}.eval.npz",
    )
    # The accuracy of the int8 model itself: no latency guard (these models are too small
    # for int8 kernels to pay on every CPU, and the guard would keep them float).
    result = api.quantize(path, calib=calib, data=evaluation, max_samples=128, latency_guard=False)
    accuracy = result.accuracy
    assert accuracy is not None and accuracy["samples"] > 0
    assert accuracy["quantized"] >= accuracy["float"] - 0.01, accuracy
    assert result.bytes_after < result.bytes_before


@pytest.mark.parametrize("mode", ["static", "dynamic", "weight-only"])
def test_embedding_tables_gathered_in_int8_once_per_column(mode):
    from quantize_fixtures import embedding_model

    model = embedding_model()
    rng = np.random.default_rng(0)
    feeds = [
        {"ids": rng.integers(0, 500, (2, 7)), "ids2": rng.integers(0, 500, (2, 7))}
        for _ in range(4)
    ]
    options = {"latency_guard": False} if mode == "static" else {}
    result = api.quantize(model, mode=mode, calib=feeds, verify=False, **options)
    quantized = result.model
    gathers = [n for n in iter_nodes(quantized) if n.op_type == "Gather"]
    assert len(gathers) == 2 and all(g.inputs[0].dtype == ir.DataType.INT8 for g in gathers)
    assert gathers[0].inputs[0] is gathers[1].inputs[0]  # the tied table is stored once
    dq = [u for g in gathers for u, _ in g.outputs[0].uses()]
    assert all(n.op_type == "DequantizeLinear" and n.attributes.get_int("axis") == -1 for n in dq)
    assert "table" not in quantized.graph.initializers
    assert parity(model, quantized, feeds) > 0.999
