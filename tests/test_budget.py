"""Time and memory budgets on ORT runs (onnxslim.budget): hostile but valid models fail
with one line and exit 2 instead of hanging or exhausting the machine."""

from __future__ import annotations

import resource
import time
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from onnxslim import api, feed_search, io
from onnxslim.budget import Budget
from onnxslim.errors import BudgetExceeded
from onnxslim.loop_bounds import endless_loop as endless_loop_reason
from onnxslim.runtime import Session, SessionConfig


def endless_loop(path: Path, *, visible: bool = True) -> Path:
    """A Loop with no trip count whose condition stays true: runs forever. `visible`: the
    body passes its condition through (onnxslim.loop_bounds sees it before running);
    else the condition is computed from the data (not NaN), known only by running."""
    cond = (
        [helper.make_node("Identity", ["cond_in"], ["cond_out"])]
        if visible
        else [
            helper.make_node("IsNaN", ["v_out"], ["nan"]),
            helper.make_node("Cast", ["nan"], ["nan_f"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMax", ["nan_f"], ["nan_any"], keepdims=0),
            helper.make_node("Equal", ["nan_any", "zero"], ["cond_out"]),
        ]
    )
    body = helper.make_graph(
        [
            helper.make_node("Add", ["v_in", "one"], ["v_out"]),
            *cond,
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1]),
        ],
        initializer=[
            helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0]),
            helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        ],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["", "go", "x"], ["y"], body=body)],
        "loop",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        initializer=[helper.make_tensor("go", TensorProto.BOOL, [], [True])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def constant_bomb(path: Path) -> Path:
    """ConstantOfShape to a size read from the input, then reduced to a scalar."""
    graph = helper.make_graph(
        [
            helper.make_node("ConstantOfShape", ["shape"], ["big"]),
            helper.make_node("ReduceSum", ["big"], ["y"], keepdims=0),
        ],
        "bomb",
        [helper.make_tensor_value_info("shape", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_endless_loop_is_stopped_at_the_time_budget(tmp_path: Path) -> None:
    model = io.load(endless_loop(tmp_path / "loop.onnx", visible=False))
    session = Session(model, SessionConfig(budget=Budget(seconds=0.5)))
    start = time.monotonic()
    with pytest.raises(BudgetExceeded, match=r"within 0.5 s") as info:
        session.run({"x": np.zeros(1, np.float32)})
    assert time.monotonic() - start < 5
    assert info.value.exit_code == 2


def test_allocation_over_the_memory_budget_fails_and_the_limit_is_put_back(
    tmp_path: Path,
) -> None:
    before = resource.getrlimit(resource.RLIMIT_AS)
    model = io.load(constant_bomb(tmp_path / "bomb.onnx"))
    session = Session(model, SessionConfig(budget=Budget(memory=256 << 20)))
    with pytest.raises(BudgetExceeded, match="more than 0.3 GB of memory"):
        session.run({"shape": np.array([1 << 30], np.int64)})  # 4 GiB of floats
    assert resource.getrlimit(resource.RLIMIT_AS) == before
    assert float(session.run({"shape": np.array([1000], np.int64)})["y"]) == 0.0


def test_optimize_on_an_endless_loop_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe run hits the budget: the lossless run goes on unchecked, it does not hang."""
    path = endless_loop(tmp_path / "loop.onnx", visible=False)
    config = SessionConfig(optimization="basic", budget=Budget(seconds=0.5))
    monkeypatch.setattr(feed_search, "_PROBE_CONFIG", config)
    start = time.monotonic()
    result = api.optimize(path)
    assert time.monotonic() - start < 30
    assert result.verified_on.startswith("not verified")


def test_a_loop_that_cannot_end_fails_its_run_at_once(tmp_path: Path) -> None:
    """onnxslim.loop_bounds: no trip count and a condition passed through unchanged."""
    model = io.load(endless_loop(tmp_path / "loop.onnx"))
    session = Session(model)  # the default 120 s budget is not waited for
    start = time.monotonic()
    with pytest.raises(BudgetExceeded, match=r"a Loop never ends.*within 120 s"):
        session.run({"x": np.zeros(1, np.float32)})
    assert time.monotonic() - start < 1


def test_quantize_on_an_endless_loop_refuses_without_waiting_the_budget(tmp_path: Path) -> None:
    path = endless_loop(tmp_path / "loop.onnx")
    calib = [{"x": np.zeros(1, np.float32)}]
    start = time.monotonic()
    with pytest.raises(BudgetExceeded, match="never ends") as info:
        api.quantize(path, calib=calib)
    assert time.monotonic() - start < 20  # was the full 120 s run budget
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    ("trip", "depth", "endless"),
    [(1 << 62, 1, True), (10**9, 3, True), (2, 12, False), (1000, 2, False), (None, 1, True)],
)
def test_loop_iterations_known_from_the_graph(trip: int | None, depth: int, endless: bool) -> None:
    """Nested Loops multiply (fuzz cases loop-huge-trip, loop-nested-3, loop-nested-12)."""

    def body(level: int) -> onnx.GraphProto:
        inner = (
            helper.make_node("Loop", ["two", "true", "s_in"], ["s_out"], body=body(level + 1))
            if level < depth
            else helper.make_node("Add", ["s_in", "one"], ["s_out"])
        )
        return helper.make_graph(
            [inner, helper.make_node("Identity", ["cond_in"], ["cond_out"])],
            f"body{level}",
            [
                helper.make_tensor_value_info("i", TensorProto.INT64, []),
                helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [1]),
            ],
            [
                helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
                helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [1]),
            ],
        )

    inits = [
        helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0]),
        helper.make_tensor("two", TensorProto.INT64, [], [2]),
        helper.make_tensor("true", TensorProto.BOOL, [], [True]),
        helper.make_tensor("trip", TensorProto.INT64, [], [trip or 0]),
    ]
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trip" if trip else "", "true", "x"], ["y"], body=body(1))],
        "loops",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        initializer=inits,
    )
    model = ir.serde.deserialize_model(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    )
    assert (endless_loop_reason(model, 120.0) is not None) is endless
