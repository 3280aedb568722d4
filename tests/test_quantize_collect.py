"""Fetching intermediate tensors from ORT: main graph, If/Loop/Scan bodies, groups, no files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxslim.errors import DataError
from onnxslim.passes.quantize.collect import (
    CollectConfig,
    collect_stats,
    float_values,
    stream_tensors,
)


def _model(graph, opset=17) -> ir.Model:
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    return ir.serde.deserialize_model(proto)


def chain_model() -> ir.Model:
    """x -> Mul(2) -> h -> Relu -> r -> Add(1) -> y, plus a free batch dim."""
    nodes = [
        helper.make_node("Mul", ["x", "two"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Add", ["r", "one"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[
            numpy_helper.from_array(np.float32(2.0), "two"),
            numpy_helper.from_array(np.float32(1.0), "one"),
        ],
    )
    return _model(graph)


def control_flow_model() -> ir.Model:
    """If (sum(x) > 0) whose then-branch holds t = x * 3; a 3-step Loop of s = s * 0.5 + x."""
    then_graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "three"], ["t"]),
            helper.make_node("Neg", ["t"], ["then_out"]),
        ],
        "then",
        [],
        [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.float32(3.0), "three")],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["else_out"])],
        "else",
        [],
        [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, None)],
    )
    body = helper.make_graph(
        [
            helper.make_node("Mul", ["s_in", "half"], ["scaled"]),
            helper.make_node("Add", ["scaled", "x"], ["s_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("s_in", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("s_out", TensorProto.FLOAT, None),
        ],
        initializer=[numpy_helper.from_array(np.float32(0.5), "half")],
    )
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["positive"]),
        helper.make_node(
            "If", ["positive"], ["branch"], then_branch=then_graph, else_branch=else_graph
        ),
        helper.make_node("Loop", ["trips", "true", "x"], ["looped"], body=body),
        helper.make_node("Add", ["branch", "looped"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "cf",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[
            numpy_helper.from_array(np.float32(0.0), "zero"),
            numpy_helper.from_array(np.int64(3), "trips"),
            numpy_helper.from_array(np.bool_(True), "true"),
        ],
    )
    return _model(graph)


def scan_model() -> ir.Model:
    """Scan over rows of x: acc = acc + row * 2 (inner value `doubled`)."""
    body = helper.make_graph(
        [
            helper.make_node("Mul", ["row", "two"], ["doubled"]),
            helper.make_node("Add", ["acc_in", "doubled"], ["acc_out"]),
        ],
        "scan_body",
        [
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [4]),
            helper.make_tensor_value_info("row", TensorProto.FLOAT, [4]),
        ],
        [helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [4])],
        initializer=[numpy_helper.from_array(np.float32(2.0), "two")],
    )
    graph = helper.make_graph(
        [helper.make_node("Scan", ["init", "x"], ["y"], body=body, num_scan_inputs=1)],
        "scan",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        initializer=[numpy_helper.from_array(np.zeros(4, np.float32), "init")],
    )
    return _model(graph)


def test_main_graph_values_and_inputs_are_collected_per_feed():
    model = chain_model()
    rng = np.random.default_rng(0)
    feeds = [
        {"x": rng.standard_normal((n, 4)).astype(np.float32)} for n in (1, 3, 2)
    ]  # different shapes
    seen: list[tuple[int, dict[str, np.ndarray]]] = []
    count = stream_tensors(
        model, feeds, ["x", "h", "r", "y"], lambda i, arrays: seen.append((i, arrays))
    )
    assert count == 3
    merged: dict[int, dict[str, np.ndarray]] = {}
    for i, arrays in seen:
        merged.setdefault(i, {}).update(arrays)
    for i, feed in enumerate(feeds):
        x = feed["x"]
        np.testing.assert_allclose(merged[i]["h"], x * 2)
        np.testing.assert_allclose(merged[i]["r"], np.maximum(x * 2, 0))
        np.testing.assert_allclose(merged[i]["y"], np.maximum(x * 2, 0) + 1)
        np.testing.assert_array_equal(merged[i]["x"], x)


def test_stats_over_groups_equal_single_pass_and_one_shot_iterators_work():
    model = chain_model()
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal((2, 4)).astype(np.float32)} for _ in range(5)]
    one, n1 = collect_stats(model, feeds, ["h", "r", "y"])
    grouped, n2 = collect_stats(
        model, feeds, ["h", "r", "y"], config=CollectConfig(max_group_bytes=1)
    )
    one_shot, n3 = collect_stats(
        model, iter(feeds), ["h", "r", "y"], config=CollectConfig(max_group_bytes=1)
    )
    assert n1 == n2 == n3 == 5
    for name in ("h", "r", "y"):
        for other in (grouped, one_shot):
            assert other[name].min == one[name].min and other[name].max == one[name].max
            assert np.array_equal(other[name].histogram.counts, one[name].histogram.counts)
    assert one["h"].min == pytest.approx(float(min(f["x"].min() for f in feeds)) * 2)


def test_if_loop_bodies_are_threaded_out():
    model = control_flow_model()
    names = float_values(model)
    assert {"t", "then_out", "scaled", "s_out", "s_in"} <= set(names)
    x_pos = np.array([[1.0, 2.0, -0.5, 0.25]], np.float32)
    x_neg = -x_pos
    stats, count = collect_stats(
        model, [{"x": x_pos}, {"x": x_neg}], ["t", "scaled", "s_out", "y"], histogram=False
    )
    assert count == 2
    # t exists only where the then-branch ran (x_pos): 3 * x_pos.
    assert stats["t"].min == pytest.approx(-1.5) and stats["t"].max == pytest.approx(6.0)
    assert stats["t"].count == 4
    # scaled = s * 0.5 over 3 iterations per feed: s0 = x, s1 = 1.5x, s2 = 1.75x.
    expected = np.concatenate([x * k for x in (x_pos, x_neg) for k in (0.5, 0.75, 0.875)])
    assert stats["scaled"].min == pytest.approx(expected.min()) and stats[
        "scaled"
    ].max == pytest.approx(expected.max())
    assert stats["scaled"].count == expected.size


def test_scan_body_values_are_threaded_out():
    model = scan_model()
    x = np.arange(12, dtype=np.float32).reshape(3, 4) - 5
    stats, _ = collect_stats(model, [{"x": x}], ["doubled", "acc_out"], histogram=False)
    assert (
        stats["doubled"].min == -10.0
        and stats["doubled"].max == 12.0
        and stats["doubled"].count == 12
    )
    acc = np.cumsum(x * 2, axis=0)
    assert stats["acc_out"].min == acc.min() and stats["acc_out"].max == acc.max()


def test_progress_is_reported_and_no_file_is_written(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = control_flow_model()
    calls = []
    feeds = [{"x": np.ones((1, 4), np.float32) * k} for k in range(4)]
    collect_stats(
        model, feeds, ["t", "scaled"], progress=lambda done, total: calls.append((done, total))
    )
    assert calls[-1] == (4, 4)
    assert os.listdir(tmp_path) == []


def test_unknown_name_and_empty_source_are_data_errors():
    model = chain_model()
    with pytest.raises(DataError):
        stream_tensors(model, [{"x": np.ones((1, 4), np.float32)}], ["nope"], lambda i, a: None)
    with pytest.raises(DataError):
        stream_tensors(model, [], ["h"], lambda i, a: None)


def test_min_max_reduced_inside_ort_match_fetched_tensors():
    model = control_flow_model()
    rng = np.random.default_rng(3)
    feeds = [{"x": rng.standard_normal((n, 4)).astype(np.float32)} for n in (1, 3, 2)]
    names = ["t", "scaled", "s_out", "y", "branch"]
    reduced, _ = collect_stats(model, feeds, names, histogram=False)  # ReduceMin/Max in the probe
    fetched, _ = collect_stats(model, feeds, names, histogram=True)  # whole tensors
    for name in names:
        assert reduced[name].min == fetched[name].min and reduced[name].max == fetched[name].max
        assert reduced[name].count == fetched[name].count
    assert reduced["y"].shapes == {(1, 4), (3, 4), (2, 4)}


def test_infinite_values_mark_a_reduced_tensor_extreme():
    model = chain_model()
    x = np.array([[1.0, -np.inf, 0.5, 2.0]], np.float32)
    stats, _ = collect_stats(model, [{"x": x}], ["h", "y"], histogram=False)
    assert stats["h"].extreme and stats["h"].max == 4.0
