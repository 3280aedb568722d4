"""Accuracy protections of static int8: bias correction, mixed ranges, the accuracy-aware mode.

Every check runs the float and the int8 model on ONNX Runtime. models/digits_cnn.onnx
and models/digits_detector.onnx are used when present (trained weights); otherwise
a CNN / detector head built here stands in, so the checks always run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxslim.errors import DataError
from onnxslim.passes.quantize import static
from onnxslim.passes.quantize.bias_correction import REPORT_KEY, correct_biases
from onnxslim.passes.quantize.collect import collect_stats, float_values
from onnxslim.passes.quantize.protect import find_protections
from onnxslim.runtime import Session
from onnxslim.workflows.accuracy_aware import (
    accuracy_aware,
    quantize_accuracy_aware,
    static_quantizer,
)

MODELS = Path(__file__).resolve().parents[1] / "models"
# These tests are about accuracy mechanics, so every layer is quantized: the latency guard
# (which keeps layers float where int8 does not pay on this CPU) is off. Trials of the
# accuracy-aware loop also skip ORT's fusion check (tested with the static pass).
NO_GUARD = static.QuantizeStatic(latency_guard=False)
FAST = static.QuantizeStatic(check_fusion=False, latency_guard=False)


def _built_cnn() -> ir.Model:
    """x[1,1,16,16] -> 3 x (Conv3x3 + Relu), one without bias -> GAP -> Gemm(10)."""
    rng = np.random.default_rng(0)
    nodes, inits, x, c = [], [], "x", 1
    for i, (cout, bias) in enumerate([(8, True), (16, False), (16, True)]):
        w = (rng.standard_normal((cout, c, 3, 3)) / np.sqrt(c * 9)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        inputs = [x, f"w{i}"]
        if bias:
            inits.append(
                numpy_helper.from_array(
                    (rng.standard_normal(cout) * 0.1).astype(np.float32), f"b{i}"
                )
            )
            inputs.append(f"b{i}")
        nodes += [
            helper.make_node("Conv", inputs, [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"),
        ]
        x, c = f"r{i}", cout
    inits += [
        numpy_helper.from_array((rng.standard_normal((16, 10)) * 0.5).astype(np.float32), "fc_w"),
        numpy_helper.from_array(np.zeros(10, np.float32), "fc_b"),
    ]
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        initializer=inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return ir.serde.deserialize_model(proto)


def _cnn_case() -> tuple[
    ir.Model, list[dict[str, np.ndarray]], list[dict[str, np.ndarray]], np.ndarray | None
]:
    """(model, calibration feeds, evaluation feeds, labels or None) from models/ or built here."""
    path = MODELS / "digits_cnn.onnx"
    if path.is_file() and (MODELS / "digits_cnn.eval.npz").is_file():
        model = ir.load(path)
        name = model.graph.inputs[0].name
        with np.load(MODELS / "digits_cnn.calib.npz") as data:
            calib = [{name: a} for a in data[name][:32]]
        with np.load(MODELS / "digits_cnn.eval.npz") as data:
            evals = [{name: a} for a in data[name][:120]]
            labels = data["labels"][:120]
        return model, calib, evals, labels
    rng = np.random.default_rng(1)
    feeds = [{"x": (rng.random((1, 1, 16, 16)) * 2).astype(np.float32)} for _ in range(96)]
    return _built_cnn(), feeds[:48], feeds[48:], None


def _outputs(model: ir.Model, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    session = Session(model)
    return np.concatenate([session.run(f)[session.output_names[0]] for f in feeds])


def test_bias_correction_reduces_output_error(monkeypatch: pytest.MonkeyPatch) -> None:
    model, calib, evals, _ = _cnn_case()
    monkeypatch.setattr(static, "bias_correction_hook", lambda *args: None)
    quantized, _ = static.quantize_static(model, calib, NO_GUARD)
    prepared, _ = static.prepare(model)
    reference = _outputs(model, evals)
    error_before = _outputs(quantized, evals) - reference
    report = correct_biases(quantized, prepared, calib)
    assert report.corrected, report.skipped
    error_after = _outputs(quantized, evals) - reference
    # Measured on held-out feeds: the mean (systematic) error and the squared error both fall.
    assert np.abs(error_after.mean(0)).mean() < 0.5 * np.abs(error_before.mean(0)).mean()
    assert np.mean(error_after**2) < 0.8 * np.mean(error_before**2)


def test_static_pass_applies_bias_correction() -> None:
    model, calib, _, _ = _cnn_case()
    quantized, report = static.quantize_static(model, calib, NO_GUARD)
    assert quantized.meta[REPORT_KEY].corrected
    assert "bias_correction" in report.seconds


def _detector_head() -> ir.Model:
    """A YOLO-style head: boxes in pixels (0-320) and sigmoid class scores meet in one Concat."""
    rng = np.random.default_rng(2)
    inits = [
        numpy_helper.from_array((rng.standard_normal((8, 4, 1, 1)) * 0.5).astype(np.float32), "w"),
        numpy_helper.from_array((rng.standard_normal((4, 8, 1, 1)) * 0.5).astype(np.float32), "wb"),
        numpy_helper.from_array((rng.standard_normal((3, 8, 1, 1)) * 0.5).astype(np.float32), "wc"),
        numpy_helper.from_array(np.array(320.0, np.float32), "stride"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["h"], name="stem"),
        helper.make_node("Relu", ["h"], ["hr"], name="stem_relu"),
        helper.make_node("Conv", ["hr", "wb"], ["braw"], name="box_conv"),
        helper.make_node("Sigmoid", ["braw"], ["bsig"], name="box_sigmoid"),
        helper.make_node("Mul", ["bsig", "stride"], ["boxes"], name="to_pixels"),
        helper.make_node("Conv", ["hr", "wc"], ["craw"], name="cls_conv"),
        helper.make_node("Sigmoid", ["craw"], ["scores"], name="cls_sigmoid"),
        helper.make_node("Concat", ["boxes", "scores"], ["det4"], name="head_concat", axis=1),
        helper.make_node("Reshape", ["det4", "shape"], ["detections"], name="head_reshape"),
    ]
    inits.append(numpy_helper.from_array(np.array([1, 7, 64], np.int64), "shape"))
    graph = helper.make_graph(
        nodes,
        "det",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("detections", TensorProto.FLOAT, [1, 7, 64])],
        initializer=inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return ir.serde.deserialize_model(proto)


def _detector_case() -> tuple[ir.Model, list[dict[str, np.ndarray]]]:
    path = MODELS / "digits_detector.onnx"
    if path.is_file() and (MODELS / "digits_detector.calib.npz").is_file():
        model = ir.load(path)
        name = model.graph.inputs[0].name
        with np.load(MODELS / "digits_detector.calib.npz") as data:
            return model, [{name: a} for a in data[name][:32]]
    rng = np.random.default_rng(3)
    return _detector_head(), [
        {"x": rng.standard_normal((1, 4, 8, 8)).astype(np.float32)} for _ in range(32)
    ]


def test_protect_finds_the_detector_concat_and_keeps_scores() -> None:
    model, calib = _detector_case()
    prepared, _ = static.prepare(model)
    names = list(float_values(prepared))
    stats, _ = collect_stats(prepared, calib, names, histogram=False)
    protections = find_protections(prepared, stats)
    rules = {p.rule for p in protections}
    assert "mixed-join" in rules, protections
    concat = next(p for p in protections if p.rule == "mixed-join")
    assert "Concat" in concat.reason and "apart" in concat.reason
    # End to end: the output Concat runs in float (no shared scale over boxes and scores),
    # and the class scores keep their resolution: one uint8 scale over the boxes' range
    # would move them by up to half a step (range / 510), here many times the error left.
    reference = _outputs(model, calib)
    protected, report = static.quantize_static(model, calib, NO_GUARD)
    assert any(p["rule"] == "mixed-join" for p in report.protections)
    output_producer = protected.graph.outputs[0].producer()
    assert output_producer is not None and output_producer.op_type != "DequantizeLinear"
    channels = reference.shape[1]
    scores = slice(channels - 3, channels) if model.graph.name == "det" else slice(4, channels)
    boxes = slice(0, 4)
    shared_half_step = float(reference[:, boxes].max() - min(reference.min(), 0.0)) / 510
    score_error = float(np.abs(_outputs(protected, calib)[:, scores] - reference[:, scores]).mean())
    assert score_error < shared_half_step / 4, (score_error, shared_half_step)


def _labelled_cnn() -> tuple[ir.Model, list[dict[str, np.ndarray]], object]:
    model, calib, evals, labels = _cnn_case()
    if labels is None:  # built model: its own float predictions are the labels
        labels = _outputs(model, evals).argmax(-1)

    def metric(candidate: ir.Model) -> float:
        return float(np.mean(_outputs(candidate, evals).argmax(-1) == labels))

    return model, calib, metric


def _quantized_layers(model: ir.Model) -> set[str]:
    """Conv/Gemm nodes whose weight comes through DequantizeLinear."""
    return {
        n.name
        for n in model.graph
        if n.op_type in ("Conv", "Gemm")
        and any(
            v is not None
            and v.producer() is not None
            and v.producer().op_type == "DequantizeLinear"
            for v in n.inputs[1:2]
        )
    }


def test_accuracy_aware_falls_back_until_the_drop_is_met() -> None:
    model, calib, metric = _labelled_cnn()
    quantize, layers, _ = static_quantizer(model, calib, FAST)
    assert len(layers) >= 3
    float_metric = metric(model)
    # A metric that rewards each float layer forces the loop to fall back, in the ranked order.
    penalty = {name: 0.01 * (i + 1) for i, name in enumerate(layers)}

    def strict(candidate: ir.Model) -> float:
        return metric(candidate) - sum(penalty[n] for n in _quantized_layers(candidate))

    result = accuracy_aware(quantize, strict, layers, max_drop=0.035, float_metric=float_metric)
    assert result.table and len(result.table) == len(layers)
    assert result.table[0].gain >= result.table[-1].gain
    assert result.met and result.excluded, result.to_dict()
    assert result.drop <= 0.035 + 1e-9
    assert any(n.op_type == "DequantizeLinear" for n in result.model.graph)


def test_accuracy_aware_miss_returns_best_model_and_table() -> None:
    model, calib, metric = _labelled_cnn()
    # Every int8 layer costs 0.1: with one fallback trial allowed, 0 drop is out of reach.
    result = quantize_accuracy_aware(
        model,
        calib,
        max_drop=0.0,
        max_trials=1,
        options=FAST,
        metric=lambda m: metric(m) - 0.1 * len(_quantized_layers(m)),
    )
    assert not result.met
    assert result.model is not None and result.table and len(result.trials) == 1
    assert result.metric == max([result.int8_metric] + [t.metric for t in result.trials])
    assert result.metric >= max(row.metric for row in result.table)
    # The best model is the one trial: its fallback layer runs float, the others stay int8
    # (a depthwise Conv quantized only between int8 neighbours may follow it back to float).
    remaining = _quantized_layers(result.model)
    assert result.excluded[0] not in remaining
    assert 0 < len(remaining) < len(_quantized_layers(static_quantizer(model, calib, FAST)[2]))
    text = result.table_text()
    assert all(row.layer in text for row in result.table)


def test_cli_missed_target_writes_model_and_table_and_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from onnxslim.cli import main
    from onnxslim.workflows import accuracy_aware as sensitivity

    # The small built CNN (4 layers) keeps the full ranking + every fallback trial quick.
    model = _built_cnn()
    rng = np.random.default_rng(4)
    feeds = [{"x": (rng.random((1, 1, 16, 16)) * 2).astype(np.float32)} for _ in range(48)]
    calib, evals, labels = feeds[:16], feeds[16:], None
    model_path, out = tmp_path / "float.onnx", tmp_path / "int8.onnx"
    ir.save(model, model_path)
    name = model.graph.inputs[0].name
    np.savez(tmp_path / "calib.npz", **{name: np.stack([f[name] for f in calib])})
    if labels is None:
        labels = _outputs(model, evals).argmax(-1)
    np.savez(tmp_path / "eval.npz", **{name: np.stack([f[name] for f in evals]), "labels": labels})
    real = sensitivity.top1_metric
    calls: list[int] = []

    def harsh(*args: object, **kwargs: object) -> object:
        metric = real(*args, **kwargs)  # type: ignore[arg-type]

        def score(candidate: ir.Model) -> float:
            calls.append(1)  # the loop scores the float model first; every int8 model loses 0.5
            return metric(candidate) - (0.0 if len(calls) == 1 else 0.5)

        return score

    monkeypatch.setattr(sensitivity, "top1_metric", harsh)
    code = main(
        [
            "quantize",
            str(model_path),
            "-o",
            str(out),
            "--calib",
            str(tmp_path / "calib.npz"),
            "--eval",
            str(tmp_path / "eval.npz"),
            "--max-drop",
            "1",
            "--max-samples",
            "16",
            "--no-verify",
            "--no-latency-guard",
        ]
    )
    assert code == 1
    assert out.is_file()
    table = json.loads((tmp_path / "int8.onnx.sensitivity.json").read_text())
    assert table["met"] is False and table["sensitivity"]
    assert Session(ir.load(out)).run(evals[0])  # the best model found runs


def test_top1_metric_reads_every_label_key(tmp_path: Path) -> None:
    # The accuracy-aware loop reads labels through evaluation.read_labelled, like every other
    # command: a `y` array is a label (its own .npz reader knew only `labels`).
    from onnxslim.evaluation import LABEL_KEYS
    from onnxslim.workflows.accuracy_aware import top1_metric

    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["scores"])],
        "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 3])],
        [numpy_helper.from_array(w, "w")],
    )
    model = ir.serde.deserialize_model(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    )
    x = rng.standard_normal((12, 1, 4)).astype(np.float32)
    truth = (x[:, 0] @ w).argmax(-1)
    labels = truth.copy()
    labels[:3] = (labels[:3] + 1) % 3  # three of twelve wrong: accuracy 0.75
    assert "y" in LABEL_KEYS
    np.savez(tmp_path / "eval.npz", x=x, y=labels)
    assert top1_metric(tmp_path / "eval.npz", model)(model) == pytest.approx(0.75)
    np.savez(tmp_path / "unlabelled.npz", x=x)
    with pytest.raises(DataError, match="no labels"):
        top1_metric(tmp_path / "unlabelled.npz", model)
