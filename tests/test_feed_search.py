"""Generated inputs the original model accepts (onnxslim.feed_search), on models that
reproduce real failures of all-ones inputs and on the devmodels corpus."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import DEVMODELS_CACHE, devmodel_params
from onnx import TensorProto, helper, numpy_helper

from onnxslim import api, io
from onnxslim.errors import DataError
from onnxslim.feed_search import plan_feeds
from onnxslim.feeds import FeedTooLarge, generate_feeds, input_specs
from onnxslim.runtime import Session
from onnxslim.validation import validate


def _save(graph: onnx.GraphProto, path: Path, opset: int = 17, **meta: str) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def _conv(name: str, src: str, dst: str, cin: int, cout: int, rng: np.random.Generator):
    weight = numpy_helper.from_array(
        rng.standard_normal((cout, cin, 3, 3)).astype(np.float32), f"{name}_w"
    )
    node = helper.make_node(
        "Conv", [src, weight.name], [dst], name=name, strides=[2, 2], pads=[1, 1, 1, 1]
    )
    return node, weight


def detector_like(path: Path, **meta: str) -> Path:
    """YOLO-style join: a stride-4 map upsampled x2 and concatenated with the stride-2 map;
    on a 1x1 image both maps are 1x1 and the upsampled one 2x2, so the Concat fails."""
    rng = np.random.default_rng(0)
    c1, w1 = _conv("c1", "images", "a", 3, 4, rng)
    c2, w2 = _conv("c2", "a", "b", 4, 4, rng)
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    nodes = [
        c1,
        c2,
        helper.make_node("Resize", ["b", "", "scales"], ["up"], mode="nearest"),
        helper.make_node("Concat", ["a", "up"], ["out"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "h", "w"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 8, "oh", "ow"])],
        initializer=[w1, w2, scales],
    )
    return _save(graph, path, **meta)


def vad_like(path: Path, pad: int = 100) -> Path:
    """An audio input `['', '']` padded by reflection inside an If branch: needs more
    than `pad` samples (the voice-activity failure of the issue)."""
    pads = numpy_helper.from_array(np.array([0, pad, 0, pad], np.int64), "pads")
    then = helper.make_graph(
        [
            helper.make_node("Pad", ["audio", "pads"], ["padded"], mode="reflect"),
            helper.make_node("ReduceMean", ["padded"], ["then_out"], axes=[1], keepdims=0),
        ],
        "then",
        [],
        [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, ["n"])],
    )
    other = helper.make_graph(
        [helper.make_node("ReduceMax", ["audio"], ["else_out"], axes=[1], keepdims=0)],
        "else",
        [],
        [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, ["n"])],
    )
    zero = numpy_helper.from_array(np.array(0, np.int64), "zero")
    nodes = [
        helper.make_node("Size", ["audio"], ["samples"]),
        helper.make_node("Greater", ["samples", "zero"], ["cond"]),
        helper.make_node("If", ["cond"], ["score"], then_branch=then, else_branch=other),
    ]
    graph = helper.make_graph(
        nodes,
        "vad",
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["", ""])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["n"])],
        initializer=[pads, zero],
    )
    return _save(graph, path, opset=13)


def test_all_ones_inputs_fail_the_reproductions(tmp_path: Path) -> None:
    """The old feeds (every free dimension 1) really fail on both models."""
    for model in (
        io.load(detector_like(tmp_path / "d.onnx")),
        io.load(vad_like(tmp_path / "v.onnx")),
    ):
        feed = generate_feeds(input_specs(model), 1)[0]
        with pytest.raises(Exception, match="(?i)fail|invalid"):
            Session(model).run(feed)


def test_ladder_finds_an_image_size_the_detector_runs_on(tmp_path: Path) -> None:
    model = io.load(detector_like(tmp_path / "d.onnx"))
    plan = plan_feeds(model, 3)
    assert plan.feeds is not None and len(plan.feeds) == 3
    assert plan.shapes["images"] == (1, 3, 32, 32)
    Session(model).run(plan.feeds[0])


def test_exporter_hint_comes_before_the_ladder(tmp_path: Path) -> None:
    model = io.load(detector_like(tmp_path / "d.onnx", imgsz="[64, 96]"))
    plan = plan_feeds(model, 1)
    assert plan.shapes["images"] == (1, 3, 64, 96)


def test_ladder_climbs_until_the_reflect_pad_inside_if_runs(tmp_path: Path) -> None:
    model = io.load(vad_like(tmp_path / "v.onnx", pad=100))
    plan = plan_feeds(model, 2)
    assert plan.feeds is not None
    assert plan.shapes["audio"] == (1, 160)  # 16 samples cannot be reflect-padded by 100


def test_input_shape_and_shared_names_come_first(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq"])
    out = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", "seq"])
    graph = helper.make_graph([helper.make_node("Add", ["x", "y"], ["z"])], "g", [x, y], [out])
    model = io.load(_save(graph, tmp_path / "add.onnx"))
    plan = plan_feeds(model, 1, shapes={"x": (2, 7)})
    assert plan.shapes == {"x": (2, 7), "y": (2, 7)}


def test_optimize_goes_on_unchecked_when_no_generated_input_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A pad the ladder cannot satisfy: the lossless run is written, unchecked, with the fix."""
    path = vad_like(tmp_path / "v.onnx", pad=20000)
    with caplog.at_level(logging.WARNING, logger="onnxslim"):
        result = api.optimize(path)
    assert result.verified_on.startswith("not verified")
    assert result.result.parity is None
    warning = [r.getMessage() for r in caplog.records if "not checked" in r.getMessage()]
    assert len(warning) == 1 and "--data or --input-shape" in warning[0]
    assert "Pad" in warning[0] or "pad" in warning[0]
    with pytest.raises(DataError, match="--input-shape"):
        validate(path, path, runs=0, measure_memory=False)


def test_huge_declared_input_is_refused_before_allocation(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2**40])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2**40])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    model = io.load(_save(graph, tmp_path / "huge.onnx"))
    with pytest.raises(FeedTooLarge, match=r"'x'.*4\.0 TiB.*ceiling.*--input-shape"):
        generate_feeds(input_specs(model), 1)
    plan = plan_feeds(model, 1)
    assert plan.feeds is None and "ceiling" in (plan.problem or "")


def test_scalar_bool_string_and_negative_dims_are_generated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    flag = helper.make_tensor_value_info("flag", TensorProto.BOOL, [])
    text = helper.make_tensor_value_info("text", TensorProto.STRING, ["n"])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3])
    outs = [
        helper.make_tensor_value_info("flag_out", TensorProto.BOOL, []),
        helper.make_tensor_value_info("text_out", TensorProto.STRING, ["n"]),
        helper.make_tensor_value_info("x_out", TensorProto.FLOAT, [-1, 3]),
    ]
    nodes = [
        helper.make_node("Not", ["flag"], ["flag_out"]),
        helper.make_node("Identity", ["text"], ["text_out"]),
        helper.make_node("Relu", ["x"], ["x_out"]),
    ]
    graph = helper.make_graph(nodes, "edge", [flag, text, x], outs)
    model_proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model_proto.ir_version = 8
    onnx.save(model_proto, str(tmp_path / "edge.onnx"))
    with caplog.at_level(logging.WARNING, logger="onnxslim"):
        model = io.load(tmp_path / "edge.onnx")
        plan = plan_feeds(model, 2)
    assert any("declares dimension -1" in r.getMessage() for r in caplog.records)
    assert plan.feeds is not None
    feed = plan.feeds[0]
    assert isinstance(feed["flag"], np.ndarray) and feed["flag"].shape == ()
    assert feed["text"].dtype == object and isinstance(feed["text"].flat[0], str)
    outputs = Session(model).run(feed)
    np.testing.assert_array_equal(outputs["flag_out"], ~feed["flag"])
    assert list(outputs["text_out"]) == list(feed["text"])


@pytest.mark.parametrize("entry", devmodel_params())
def test_devmodels_run_on_generated_inputs(entry: dict) -> None:
    """Every real model gets generated inputs its original runs on, without --input-shape."""
    model = io.load(DEVMODELS_CACHE / f"{entry['id']}.onnx")
    plan = plan_feeds(model, 1)
    assert plan.feeds is not None, plan.problem
    outputs = Session(model).run(plan.feeds[0])
    assert all(np.asarray(v).size >= 0 for v in outputs.values())
