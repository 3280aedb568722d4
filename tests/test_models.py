"""The example models in models/: their recorded accuracy, their data files, their shape.

Every pass's accuracy test and the quick start rely on these files, so this module
pins what they promise: the float figure in models/accuracy.json is what ONNX
Runtime measures on the eval set today, the .npz files feed the model as they are,
and each model still carries the ops it exists to exercise.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxslim import io
from onnxslim.feeds import input_specs
from onnxslim.runtime import Session

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
TOLERANCE = 0.005
MAX_MODEL_BYTES = 2_000_000
NAMES = ["digits_cnn", "digits_transformer", "digits_detector", "digits_lstm", "digits_gated"]


def _load_metrics():
    spec = importlib.util.spec_from_file_location(
        "model_metrics", REPO / "scripts" / "model_metrics.py"
    )
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


model_metrics = _load_metrics()


@pytest.fixture(scope="module")
def records() -> dict:
    return json.loads((MODELS / "accuracy.json").read_text())


def _eval_arrays(name: str) -> dict[str, np.ndarray]:
    with np.load(MODELS / f"{name}.eval.npz") as archive:
        return {key: archive[key] for key in archive.files}


def _run_eval(name: str, batch_one_only: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    model = io.load(MODELS / f"{name}.onnx")
    inputs_needed = [spec.name for spec in input_specs(model)]
    session = Session(model)
    arrays = _eval_arrays(name)
    inputs = {input_name: arrays[input_name] for input_name in inputs_needed}
    count = len(arrays["labels"])
    output = session.output_names[0]
    if batch_one_only:
        parts = [session.run({k: v[i] for k, v in inputs.items()})[output] for i in range(count)]
        return np.concatenate(parts), arrays
    # array[i] carries its own batch axis of 1: drop it to run the set as one batch.
    return session.run({k: v[:, 0] for k, v in inputs.items()})[output], arrays


@pytest.mark.parametrize("name", NAMES)
def test_float_accuracy_matches_record(name: str, records: dict) -> None:
    record = records[name]
    outputs, arrays = _run_eval(name, record["batch_one_only"])
    measured = model_metrics.score(name, outputs, arrays)
    assert measured == pytest.approx(record["value"], abs=TOLERANCE), (name, measured)
    # Better than chance by far, so a broken export cannot pass with a broken record.
    assert measured > 0.9


@pytest.mark.parametrize("name", NAMES)
def test_npz_files_feed_the_model(name: str, records: dict) -> None:
    specs = input_specs(io.load(MODELS / f"{name}.onnx"))
    with np.load(MODELS / f"{name}.calib.npz") as calib:
        assert sorted(calib.files) == sorted(s.name for s in specs)
        calib_arrays = {k: calib[k] for k in calib.files}
    arrays = _eval_arrays(name)
    count = records[name]["eval_samples"]
    for spec in specs:
        for stacked in (calib_arrays[spec.name], arrays[spec.name]):
            assert stacked.dtype == spec.dtype
            sample = stacked[0]
            assert spec.shape is not None and len(sample.shape) == len(spec.shape)
            for dim, declared in zip(sample.shape, spec.shape, strict=True):
                assert dim == (declared if isinstance(declared, int) else 1)
        assert len(calib_arrays[spec.name]) == 256
        assert len(arrays[spec.name]) == count
    labels = arrays["labels"]
    assert labels.dtype == np.int64 and labels.shape == (count,)
    assert set(np.unique(labels)) == set(range(10))
    if name == "digits_detector":
        boxes = arrays["boxes"]
        assert boxes.dtype == np.float32 and boxes.shape == (count, 4)
        assert np.all(boxes[:, 2:] > 0) and np.all(boxes[:, :2] - boxes[:, 2:] / 2 >= 0)
        assert np.all(boxes[:, :2] + boxes[:, 2:] / 2 <= 32)


@pytest.mark.parametrize("name", NAMES)
def test_model_is_small_self_contained_and_valid(name: str) -> None:
    path = MODELS / f"{name}.onnx"
    assert path.stat().st_size < MAX_MODEL_BYTES
    proto = onnx.load(str(path), load_external_data=False)
    onnx.checker.check_model(proto, full_check=True)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    assert {o.domain: o.version for o in proto.opset_import}.get("", 0) >= 17
    batch = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param, "the batch axis must be dynamic"


def _ops(name: str) -> list[str]:
    model = io.load(MODELS / f"{name}.onnx")
    from onnxslim.graphs import iter_nodes

    return [node.op_type for node in iter_nodes(model)]


# What each model exists to exercise; passes' tests count on these being there.
EXPECTED_OPS = {
    "digits_cnn": {"Conv", "BatchNormalization", "Relu", "MaxPool", "AveragePool", "Add", "Gemm"},
    "digits_transformer": {"MatMul", "Softmax", "LayerNormalization", "Erf", "Transpose", "Gemm"},
    "digits_detector": {"Conv", "BatchNormalization", "Sigmoid", "Concat", "Softplus"},
    "digits_lstm": {"LSTM", "Gemm"},
    "digits_gated": {"If", "Conv", "Gemm"},
}


@pytest.mark.parametrize("name", NAMES)
def test_model_keeps_the_ops_it_exists_for(name: str) -> None:
    assert EXPECTED_OPS[name] <= set(_ops(name))


def test_cnn_has_a_depthwise_separable_pair() -> None:
    model = io.load(MODELS / "digits_cnn.onnx")
    convs = [n for n in model.graph if n.op_type == "Conv"]
    depthwise = [n for n in convs if n.attributes.get_int("group", 1) > 1]
    assert depthwise, "no depthwise Conv"
    pointwise = [n for n in convs if list(n.inputs[1].shape)[2:] == [1, 1]]
    assert pointwise, "no pointwise Conv"


def test_detector_output_concatenates_boxes_and_scores() -> None:
    model = io.load(MODELS / "digits_detector.onnx")
    output = model.graph.outputs[0]
    assert output.producer() is not None and output.producer().op_type == "Concat"
    assert list(output.shape)[1:] == [14, 64]
    outputs, _ = _run_eval("digits_detector", batch_one_only=False)
    boxes, scores = outputs[:, :4], outputs[:, 4:]
    assert scores.min() >= 0 and scores.max() <= 1
    assert boxes[:, :2].max() > 16  # pixel coordinates: a range far beyond the scores'


def test_box_iou_and_detection_metric_on_known_boxes() -> None:
    a = np.array([[10, 10, 4, 4], [10, 10, 4, 4], [10, 10, 4, 4]], dtype=np.float32)
    b = np.array([[10, 10, 4, 4], [30, 30, 4, 4], [12, 10, 4, 4]], dtype=np.float32)
    np.testing.assert_allclose(model_metrics.box_iou_cxcywh(a, b), [1.0, 0.0, 1 / 3], rtol=1e-6)
    # Two images, three anchors: image 0's best anchor (score 0.9) is right in class
    # and box; image 1's best anchor has the right class but a box that misses.
    det = np.zeros((2, 4 + 10, 3), dtype=np.float32)
    det[0, :4, 1] = [10, 10, 4, 4]
    det[0, 4 + 3, 1] = 0.9
    det[0, 4 + 5, 2] = 0.5
    det[1, :4, 0] = [30, 30, 4, 4]
    det[1, 4 + 7, 0] = 0.8
    labels = np.array([3, 7])
    truth = np.array([[10, 10, 4, 4], [10, 10, 4, 4]], dtype=np.float32)
    assert model_metrics.detection_accuracy(det, labels, truth) == 0.5
    assert model_metrics.top1_accuracy(np.eye(3)[[0, 2, 1]], np.array([0, 2, 2])) == 2 / 3
