"""The one evaluation module: labels, top-1 and interleaved latency, on a real ORT model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import make_mlp

from onnxslim import io
from onnxslim.calibration import open_feeds
from onnxslim.errors import DataError
from onnxslim.evaluation import (
    Evaluator,
    Top1,
    is_class_scores,
    predicted_classes,
    read_labelled,
    split_label,
    time_interleaved,
    top1_accuracy,
    top1_by_model,
)
from onnxslim.runtime import Session


@pytest.fixture
def mlp(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """The MLP, 12 samples and the classes ORT itself predicts for them (not our code)."""
    path = make_mlp(tmp_path / "mlp.onnx")
    x = np.random.default_rng(3).standard_normal((12, 8)).astype(np.float32)
    scores = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        ["y"], {"x": x}
    )[0]
    return path, x, scores.argmax(-1)


def test_top1_counts_hits_and_refuses_a_label_count_that_does_not_match() -> None:
    count = Top1()
    assert np.isnan(count.value)
    count.add(np.array([1, 2, 3]), np.array([1, 0, 3]))
    count.add(np.array([[4]]), np.array([4]))
    assert (count.hits, count.total, count.value) == (3, 4, 0.75)
    with pytest.raises(DataError, match="2 labels for 3 predictions"):
        count.add(np.array([1, 2, 3]), np.array([1, 2]))


def test_predicted_classes_and_class_scores() -> None:
    scores = np.array([[0.1, 0.9], [0.8, 0.2]], np.float32)
    assert predicted_classes(scores).tolist() == [1, 0]
    assert predicted_classes(scores[None]).tolist() == [1, 0]  # leading axes flatten
    assert predicted_classes(np.array([3, 1])).tolist() == [3, 1]  # already classes
    assert is_class_scores(scores) and is_class_scores(scores, rows=2)
    assert not is_class_scores(scores, rows=3)
    assert not is_class_scores(scores[:, :1]) and not is_class_scores(scores.astype(np.int64))


def test_split_label_takes_any_label_key_that_is_not_an_input() -> None:
    feed = {"x": np.zeros((2, 8), np.float32), "y": np.array([[1], [2]])}
    arrays, label = split_label(feed, {"x"})
    assert set(arrays) == {"x"} and label is not None and label.tolist() == [1, 2]
    arrays, label = split_label(feed, {"x", "y"})  # `y` is an input there, not a label
    assert set(arrays) == {"x", "y"} and label is None


def test_read_labelled_reads_an_opened_stream_again(mlp, tmp_path: Path) -> None:
    path, x, classes = mlp
    model = io.load(path)
    np.savez(tmp_path / "eval.npz", x=x[:, None, :], labels=classes[:, None])
    stream = open_feeds(tmp_path / "eval.npz", model, extra="keep")
    head = read_labelled(stream, model, limit=3)
    everything = read_labelled(stream, model)
    assert len(head.feeds) == 3 and len(everything.feeds) == 12
    np.testing.assert_array_equal(head.feeds[0]["x"], everything.feeds[0]["x"])
    assert everything.label_array().tolist() == classes.tolist() and everything.labelled == 12
    np.savez(tmp_path / "plain.npz", x=x[:, None, :])
    plain = read_labelled(tmp_path / "plain.npz", model)
    assert plain.labels is None and plain.labelled == 0 and len(plain.feeds) == 12


def test_top1_accuracy_against_the_classes_ort_predicts(mlp) -> None:
    path, x, classes = mlp
    model = io.load(path)
    feeds = [{"x": x[i : i + 1]} for i in range(len(x))]
    wrong = classes.copy()
    wrong[:3] = (wrong[:3] + 1) % 4  # three labels no model output can match
    assert top1_accuracy(model, feeds, classes) == 1.0
    assert top1_accuracy(model, feeds, wrong) == pytest.approx(9 / 12)
    assert top1_accuracy(model, feeds, wrong, max_batch=256) == pytest.approx(9 / 12)


def test_top1_by_model_streams_and_defers_to_parity_when_labels_do_not_fit(mlp) -> None:
    path, x, classes = mlp
    model = io.load(path)
    labelled = [{"x": x[i : i + 4], "labels": classes[i : i + 4]} for i in range(0, 12, 4)]
    seen: list[tuple[str, int, int | None]] = []
    scores = top1_by_model(
        {"a": model, "b": model},
        labelled,
        {"x"},
        expected=3,
        progress=lambda *a: seen.append(a),
    )
    assert scores == {"a": 1.0, "b": 1.0, "samples": 12.0}
    assert seen == [("accuracy", 1, 3), ("accuracy", 2, 3), ("accuracy", 3, 3)]
    misfit = [{"x": x[:4], "labels": classes[:3]}]  # three labels for four rows
    assert top1_by_model({"a": model}, misfit, {"x"}) is None


def test_labelled_top1_reads_the_first_classifier_shaped_output(mlp, tmp_path: Path) -> None:
    """A recurrent state listed first ([N,16] `hidden_state`) is not argmax-ed against the
    labels: top-1 reads `y`, the output agreement reads (onnxslim.outputs' rule)."""
    path, x, classes = mlp
    proto = onnx.load(str(path))
    proto.graph.node.append(onnx.helper.make_node("Identity", ["h0"], ["hidden_state"]))
    state = onnx.helper.make_tensor_value_info("hidden_state", onnx.TensorProto.FLOAT, ["N", 16])
    proto.graph.output.insert(0, state)
    model = io.load(_saved(proto, tmp_path / "state_first.onnx"))
    feeds = [{"x": x[i : i + 1]} for i in range(len(x))]
    assert top1_accuracy(model, feeds, classes) == 1.0
    labelled = [{"x": x, "labels": classes}]
    assert top1_by_model({"a": model}, labelled, {"x"}) == {"a": 1.0, "samples": 12.0}


def _saved(proto: onnx.ModelProto, path: Path) -> Path:
    onnx.save(proto, str(path))
    return path


def test_time_interleaved_runs_what_it_is_asked(mlp) -> None:
    path, x, _ = mlp
    sessions = {"ref": Session(path), "cand": Session(path)}
    feeds = [{"x": x[:2]}, {"x": x[2:4]}]
    calls: list[tuple[str, int, int]] = []
    times = time_interleaved(sessions, feeds, runs=4, warmup=2, notify=lambda *a: calls.append(a))
    assert [len(t) for t in times.values()] == [4, 4]
    assert calls[0] == ("latency", 0, 6) and calls[-1] == ("latency", 6, 6)
    budgeted = time_interleaved(sessions, feeds, runs=2, budget_seconds=0.2, max_runs=30)
    assert all(2 < len(t) <= 30 for t in budgeted.values())  # more than the minimum, capped
    assert all(s > 0 for t in budgeted.values() for s in t)


def test_evaluator_figures_on_the_same_feeds(mlp, tmp_path: Path) -> None:
    path, x, classes = mlp
    model = io.load(path)
    wrong = classes.copy()
    wrong[0] = (wrong[0] + 1) % 4
    np.savez(tmp_path / "eval.npz", x=x[:, None, :], labels=wrong[:, None])
    evaluator = Evaluator(model, eval_data=tmp_path / "eval.npz")
    assert evaluator.baseline.top1 == pytest.approx(11 / 12)
    assert evaluator.baseline.agreement == 1.0 and evaluator.baseline.parity_error == 0.0
    ratio = evaluator.latency_ratio(io.load(path), runs=5)
    assert ratio is not None and ratio > 0
