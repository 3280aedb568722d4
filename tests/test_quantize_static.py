"""quantize-static on ORT for real: int8 kernels in the optimized graph, parity, size, subgraphs,
exclusions, mask trap, flat memory, no files in the working directory."""

from __future__ import annotations

import os
import tempfile
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from quantize_fixtures import cnn, conv_in_if, feeds_for, masked_attention, mlp

from onnxslim.errors import UsageError
from onnxslim.graphs import iter_nodes, tensor_bytes
from onnxslim.passes._run_data import RunData
from onnxslim.passes.quantize.collect import collect_stats
from onnxslim.passes.quantize.static import QuantizeStatic, quantize_static
from onnxslim.runtime import Session, SessionConfig


def Static(**options) -> QuantizeStatic:  # noqa: N802
    """The pass without the latency guard: these tests check the int8 graph it builds, which
    the guard (timing on a shared machine) could otherwise keep float."""
    return QuantizeStatic(latency_guard=False, **options)


def optimized_ops(model: ir.Model) -> list[str]:
    """Op types of ORT's optimized graph, subgraphs included."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "opt.onnx"
        Session(model, SessionConfig(optimized_model_path=str(path)))
        proto = onnx.load(str(path))

    def walk(graph: onnx.GraphProto) -> Iterator[str]:
        for node in graph.node:
            yield node.op_type
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    yield from walk(attr.g)

    return list(walk(proto.graph))


def outputs(model: ir.Model, feeds: list[dict]) -> list[dict]:
    session = Session(model)
    return [session.run(f) for f in feeds]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_cnn_runs_on_qlinearconv_and_qgemm_with_parity():
    model = cnn()
    calib = feeds_for(model, 16, seed=1)
    quantized, report = quantize_static(model, calib, Static(activations="static"))
    ops = optimized_ops(quantized)
    assert ops.count("QLinearConv") == 2 and ops.count("QGemm") == 1, ops
    assert "QLinearGlobalAveragePool" in ops
    assert "Conv" not in ops and "Relu" not in ops  # Relu folded into the Q clamp
    assert report.int8_kernels.get("QLinearConv") == 2
    test = feeds_for(model, 8, seed=2)
    ref, got = outputs(model, test), outputs(quantized, test)
    for r, g in zip(ref, got, strict=True):
        assert cosine(r["y"], g["y"]) > 0.995
        assert (
            np.array_equal(r["y"].argmax(-1), g["y"].argmax(-1)) or cosine(r["y"], g["y"]) > 0.999
        )
    assert not any(
        n.op_type == "Conv" and n.inputs[1].const_value is not None for n in iter_nodes(quantized)
    )


@pytest.mark.parametrize("activation_type", ["uint8", "int8"])
def test_weight_dominated_model_shrinks_4x_and_fuses_matmul(activation_type):
    model = mlp(hidden=512, features=128)
    calib = feeds_for(model, 8, seed=3)
    # the static kernels under test (auto could pick run-time ranges: activation_mode.py)
    options = Static(activation_type=activation_type, activations="static")
    quantized, report = quantize_static(model, calib, options)
    before, after = tensor_bytes(model), tensor_bytes(quantized)
    assert after <= before / 3.5, (before, after)
    ops = optimized_ops(quantized)
    assert (
        ops.count("QGemm") + ops.count("MatMulIntegerToFloat") + ops.count("QLinearMatMul") == 2
    ), ops
    assert "MatMul" not in ops
    q_types = {n.outputs[0].dtype for n in iter_nodes(quantized) if n.op_type == "QuantizeLinear"}
    assert q_types == {ir.DataType.UINT8 if activation_type == "uint8" else ir.DataType.INT8}
    test = feeds_for(model, 4, seed=4)
    for r, g in zip(outputs(model, test), outputs(quantized, test), strict=True):
        assert cosine(r["y"], g["y"]) > 0.999


def test_result_is_never_larger_even_without_weights():
    model = conv_in_if()
    feed = {"x": np.ones((1, 3, 8, 8), np.float32), "flag": np.array(False)}
    quantized, report = quantize_static(model, [feed], Static())
    assert tensor_bytes(quantized) <= tensor_bytes(model)


def test_if_branch_is_calibrated_and_quantized_inside():
    model = conv_in_if()
    rng = np.random.default_rng(0)
    calib = [
        {"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32), "flag": np.array(i % 2 == 0)}
        for i in range(8)
    ]
    quantized, report = quantize_static(model, calib, Static(method="minmax"))
    assert {"then_conv1", "then_conv2"} <= set(report.quantized_nodes)
    ops = optimized_ops(quantized)
    assert ops.count("QLinearConv") == 2, ops
    test = [{"x": rng.standard_normal((2, 3, 8, 8)).astype(np.float32), "flag": np.array(True)}]
    ref, got = outputs(model, test)[0]["y"], outputs(quantized, test)[0]["y"]
    assert cosine(ref, got) > 0.995


def test_exclusions_by_name_op_type_and_regex():
    model = cnn()
    calib = feeds_for(model, 4)
    for pattern, kept in (("conv1", {"conv1"}), ("Gemm", {"fc"}), ("conv[12]", {"conv1", "conv2"})):
        _, report = quantize_static(model, calib, Static(exclude=(pattern,), check_fusion=False))
        assert kept.isdisjoint(report.quantized_nodes), (pattern, report.quantized_nodes)
        assert all(report.skipped[name] == "excluded" for name in kept)


def test_keep_float_outputs_leaves_the_last_layer_float():
    model = cnn()
    quantized, report = quantize_static(model, feeds_for(model, 4), Static(keep_float_outputs=True))
    assert "fc" not in report.quantized_nodes and "conv2" in report.quantized_nodes
    gemm = next(n for n in iter_nodes(quantized) if n.op_type == "Gemm")
    assert (
        gemm.inputs[1].const_value is not None
        and gemm.inputs[1].const_value.dtype == ir.DataType.FLOAT
    )


def test_mask_constants_stay_float_and_div_becomes_mul():
    model = masked_attention()
    rng = np.random.default_rng(5)
    calib = []
    for length in (3, 7, 5, 9):  # variable-length feeds with padding
        mask = np.ones((1, length), np.float32)
        mask[0, length // 2 :] = 0
        calib.append({"x": rng.standard_normal((1, length, 32)).astype(np.float32), "mask": mask})
    for method in ("percentile", "entropy", "mse"):
        quantized, report = quantize_static(model, calib, Static(method=method))
        assert not any(n.op_type == "Div" for n in iter_nodes(quantized))
        assert any(n.op_type == "Mul" and n.name.endswith("_as_Mul") for n in iter_nodes(quantized))
        quantized_inputs = {
            n.inputs[0].name for n in iter_nodes(quantized) if n.op_type == "QuantizeLinear"
        }
        assert not quantized_inputs & {"s2", "bias", "bias3"}, quantized_inputs
        assert {"q_proj", "o_proj"} <= set(report.quantized_nodes)
        test = calib[:2]
        for r, g in zip(outputs(model, test), outputs(quantized, test), strict=True):
            assert cosine(r["y"], g["y"]) > 0.99, method


def test_already_quantized_model_is_refused_unless_forced():
    model = cnn()
    quantized, _ = quantize_static(model, feeds_for(model, 2), Static())
    with pytest.raises(UsageError, match="already quantized"):
        quantize_static(quantized, feeds_for(model, 2), Static())


def test_pass_in_place_and_missing_data():
    model = cnn()
    with pytest.raises(UsageError):
        QuantizeStatic()(model.clone())
    target = model.clone()
    result = Static().run(target, RunData(feeds=feeds_for(model, 4)))
    assert result.modified and any(n.op_type == "QuantizeLinear" for n in iter_nodes(target))


def test_no_file_is_written_into_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = conv_in_if()
    rng = np.random.default_rng(0)
    calib = [
        {"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32), "flag": np.array(True)}
        for _ in range(3)
    ]
    quantize_static(model, calib, Static(method="entropy"))
    assert os.listdir(tmp_path) == []


def _generator(count: int, shape: tuple[int, ...]) -> Iterator[dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    for _ in range(count):
        yield {"x": rng.standard_normal(shape).astype(np.float32)}


def test_calibration_memory_is_flat_in_the_number_of_samples():
    model = mlp(hidden=32, features=16)
    names = ["h0", "h1", "h2", "h3", "y"]
    peaks = {}
    for count in (100, 1000):
        tracemalloc.start()
        stats, seen = collect_stats(model, _generator(count, (4, 8, 16)), names)
        peaks[count] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert seen == count and stats["h0"].count == count * 4 * 8 * 32
    # Ten times the data (1000 feeds hold 2 MB of inputs alone), the same peak.
    assert peaks[1000] < peaks[100] * 1.2 + 128 * 1024, peaks


def test_whole_pass_streams_a_one_shot_generator():
    model = cnn(channels=4)
    quantized, report = quantize_static(
        model, _generator(300, (1, 3, 16, 16)), Static(check_fusion=False)
    )
    assert report.samples == 300 and "conv1" in report.quantized_nodes


def test_latency_guard_keeps_small_layers_float_while_int8_is_slower(monkeypatch):
    import onnxslim.passes.quantize.latency_guard as latency_guard

    ratios = iter([1.4, 1.2, 0.95, 0.96])  # all int8, each step of the ladder, confirmation
    monkeypatch.setattr(latency_guard, "latency_ratio", lambda *args, **kwargs: next(ratios))
    model = cnn()
    quantized, report = quantize_static(
        model, feeds_for(model, 4), QuantizeStatic(check_fusion=False, kernel_check=False)
    )
    assert [c["ratio"] for c in report.latency_checks] == [1.4, 1.2, 0.95, 0.96]
    assert report.latency_checks[-1]["confirmation"]
    # MACs per feed (batch 2): fc 640, conv1 221k, conv2 590k; the 2^18 step keeps conv2 only.
    assert "conv2" in report.quantized_nodes
    assert "fc" not in report.quantized_nodes and "conv1" not in report.quantized_nodes
    assert report.skipped["conv1"].startswith("too small for int8")
    assert not report.warnings


def test_recipe_carries_the_options_and_the_run_carries_the_data():
    """The pass holds options only: its recipe form has no data, and the pass manager
    hands the calibration feeds to its run (was: a `calib` field the recipe carried)."""
    from onnxslim.pipeline import Pipeline, run_pipeline

    recipe = Pipeline((QuantizeStatic(method="entropy", exclude=("conv1",)),)).to_toml()
    again = Pipeline.from_toml(recipe).passes[0]
    assert (again.method, again.exclude) == ("entropy", ("conv1",))
    assert "calib" not in recipe and 'name = "quantize-static"' in recipe
    with pytest.raises(UsageError, match="calib"):
        Pipeline.from_toml('[[pass]]\nname = "quantize-static"\ncalib = "data/calib.npz"\n')
    model = cnn()
    result = run_pipeline(model, Pipeline((Static(),)), data=RunData(feeds=feeds_for(model, 4)))
    assert any(n.op_type == "QuantizeLinear" for n in iter_nodes(result.model))


def test_ort_calibration_data_reader_through_the_api():
    from onnxslim import api

    model = cnn()

    class Reader:  # what onnxruntime.quantization.CalibrationDataReader offers
        def __init__(self) -> None:
            self.feeds = iter(feeds_for(model, 6, seed=9))

        def get_next(self):
            return next(self.feeds, None)

    result = api.quantize(model, calib=Reader(), verify=False, latency_guard=False)
    assert result.report.samples == 6 and "conv2" in result.report.quantized_nodes


def test_loop_body_is_calibrated_and_quantized_inside():
    from quantize_fixtures import matmul_in_loop

    model = matmul_in_loop()
    calib = feeds_for(model, 6, seed=11)
    quantized, report = quantize_static(model, calib, Static(activations="static"))
    assert "body_matmul" in report.quantized_nodes
    body = (
        next(n for n in iter_nodes(quantized) if n.op_type == "Loop").attributes["body"].as_graph()
    )
    assert any(n.op_type == "DequantizeLinear" for n in body)  # Q/DQ live in the body itself
    assert (
        sum(
            op in ("QGemm", "MatMulIntegerToFloat", "QLinearMatMul")
            for op in optimized_ops(quantized)
        )
        == 1
    )
    test = feeds_for(model, 3, seed=12)
    for r, g in zip(outputs(model, test), outputs(quantized, test), strict=True):
        assert cosine(r["y"], g["y"]) > 0.999


def test_fusion_check_finds_what_ort_leaves_float():
    """ORT's CPU provider has no int8 ConvTranspose: forced into the plan, the check reports it."""
    from onnx import TensorProto, helper, numpy_helper
    from quantize_fixtures import to_ir

    from onnxslim.passes.quantize.fusion_check import find_unfused
    from onnxslim.passes.quantize.plan import NodePlan, QuantPlan, TensorPlan
    from onnxslim.passes.quantize.qdq import insert_qdq
    from onnxslim.passes.quantize.qparams import activation_qparams
    from onnxslim.passes.quantize.ranges import Range

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("ConvTranspose", ["x", "w"], ["y0"], name="up"),
            helper.make_node("Relu", ["y0"], ["y"], name="act"),
        ],
        "up",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[
            numpy_helper.from_array(rng.standard_normal((4, 8, 3, 3)).astype(np.float32), "w")
        ],
    )
    model = to_ir(graph)
    plan = QuantPlan(
        {"up": NodePlan("up", "ConvTranspose", "compute", weights={1: 1}, activations=[0])},
        {"x": TensorPlan("x", "x"), "y0": TensorPlan("y0", "y0")},
        {},
    )
    params = {name: activation_qparams(Range(-3.0, 3.0)) for name in ("x", "y0")}
    report = insert_qdq(model, plan, params)
    unfused, kernels = find_unfused(model, plan, report)
    assert unfused == {"up"} and "QLinearConv" not in kernels
    # and the policy never plans it in the first place
    _, static_report = quantize_static(
        to_ir(graph), [{"x": np.ones((1, 4, 8, 8), np.float32)}], Static()
    )
    assert "no int8 kernel" in static_report.skipped["up"]


def test_latency_guard_keeps_everything_float_when_nothing_is_faster(monkeypatch):
    import onnxslim.passes.quantize.latency_guard as latency_guard

    monkeypatch.setattr(latency_guard, "latency_ratio", lambda *args, **kwargs: 1.3)
    model = cnn()
    quantized, report = quantize_static(
        model, feeds_for(model, 4), QuantizeStatic(check_fusion=False, kernel_check=False)
    )
    assert not report.quantized_nodes and report.warnings[0].startswith("kept float")
    assert not any(
        n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in iter_nodes(quantized)
    )
    test = feeds_for(model, 2, seed=3)
    for r, g in zip(outputs(model, test), outputs(quantized, test), strict=True):
        np.testing.assert_allclose(g["y"], r["y"], rtol=1e-4, atol=1e-5)


def test_latency_guard_keeps_float_when_a_second_timing_does_not_confirm_the_gain(monkeypatch):
    import onnxslim.passes.quantize.latency_guard as latency_guard

    ratios = iter([0.95, 1.02])  # accepted at once, then not confirmed
    monkeypatch.setattr(latency_guard, "latency_ratio", lambda *args, **kwargs: next(ratios))
    model = cnn()
    options = QuantizeStatic(check_fusion=False, kernel_check=False, activations="static")
    quantized, report = quantize_static(model, feeds_for(model, 4), options)
    assert [c["ratio"] for c in report.latency_checks] == [0.95, 1.02]
    assert not report.quantized_nodes
    assert "timed 0.95x then 1.02x" in report.warnings[0]
    assert not any(n.op_type == "QuantizeLinear" for n in iter_nodes(quantized))


def test_target_presets_decide_types_and_skip_local_checks_for_other_cpus():
    from onnxslim.passes.quantize.policy import detect_target

    model = cnn()
    calib = feeds_for(model, 4)
    quantized, report = quantize_static(model, calib, Static(target="x86-avx2"))
    weights = [
        v.const_value.numpy()
        for v in quantized.graph.initializers.values()
        if v.const_value is not None
        and v.const_value.dtype == ir.DataType.INT8
        and v.const_value.size > 1
    ]
    assert report.activation_type == "uint8" and report.reduce_range
    assert weights and max(int(np.abs(w.astype(np.int32)).max()) for w in weights) <= 64  # 7-bit
    other = "arm64" if detect_target() != "arm64" else "x86-avx2"
    _, report = quantize_static(model, calib, QuantizeStatic(target=other))
    assert any("is not this CPU" in w for w in report.warnings) and not report.int8_kernels


def test_input_that_is_also_an_output_keeps_its_name_and_value():
    """x is read by the MatMul and returned as is (fuzz case valid/input-is-output): the
    int8 model keeps the input named x (it became x_float) and returns it unchanged."""
    model = mlp(features=8, hidden=16)
    x = next(v for v in model.graph.inputs if v.name == "x")
    model.graph.outputs.append(x)
    calib = feeds_for(model, 8, seed=1)
    quantized, _ = quantize_static(model, calib, Static())
    assert [v.name for v in quantized.graph.inputs] == ["x"]
    assert [v.name for v in quantized.graph.outputs] == ["y", "x"]
    (got,) = outputs(quantized, calib[:1])
    np.testing.assert_array_equal(got["x"], calib[0]["x"])
    assert "QuantizeLinear" in {node.op_type for node in iter_nodes(quantized)}


def test_model_without_inputs_needs_no_calibration_data(tmp_path, capsys):
    """A Constant-only model (fuzz case valid/constant-only) takes one feed, the empty one:
    static quantize calibrates on it instead of asking for --calib, exit 0, output valid."""
    from onnx import TensorProto, helper

    from onnxslim.cli import main

    value = helper.make_tensor("v", TensorProto.FLOAT, [2, 3], [0.5, -1, 2, 3, 4, 5])
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["y"], value=value)],
        "constant",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    source = tmp_path / "constant.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), source)
    out = tmp_path / "out.onnx"
    assert main(["quantize", str(source), "-o", str(out)]) == 0, capsys.readouterr().err
    onnx.checker.check_model(str(out))
    (got,) = outputs(ir.load(str(out)), [{}])
    np.testing.assert_array_equal(got["y"], np.array([[0.5, -1, 2], [3, 4, 5]], np.float32))


def _old_mlp_proto(opset: int, ir_version: int) -> onnx.ModelProto:
    """x[1,8] -> MatMul -> Relu -> MatMul -> y, weights also listed as graph inputs (IR 3)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {
        "w1": rng.standard_normal((8, 32)).astype(np.float32),
        "w2": rng.standard_normal((32, 4)).astype(np.float32),
    }
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["y"]),
        ],
        "old",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])]
        + [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, w.shape) for n, w in weights.items()
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(w, n) for n, w in weights.items()],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version
    )


def test_ir3_opset7_model_converts_and_quantizes():
    """IR 3 lists every weight as a graph input (fuzz case valid/opset-7): once they are
    plain initializers the opset converter read them as undefined unless IR goes to 4."""
    model = ir.serde.deserialize_model(_old_mlp_proto(7, 3))
    calib = feeds_for(model, 8, seed=1)
    quantized, report = quantize_static(model, calib, Static())
    assert "QuantizeLinear" in {node.op_type for node in iter_nodes(quantized)}
    (got,) = outputs(quantized, calib[:1])
    (want,) = outputs(model, calib[:1])
    assert cosine(got["y"], want["y"]) > 0.99


def test_opset_past_ort_int8_kernels_keeps_the_float_model():
    """At an opset newer than the installed ORT's Q/DQ kernels (fuzz case valid/opset-28:
    no QuantizeLinear(28)), the result must still load: the float model, with the reason."""
    model = ir.serde.deserialize_model(_old_mlp_proto(onnx.defs.onnx_opset_version(), 8))
    for value in list(model.graph.inputs)[1:]:
        model.graph.inputs.remove(value)
    calib = feeds_for(model, 8, seed=1)
    quantized, report = quantize_static(model, calib, Static())
    Session(quantized)  # was: NOT_IMPLEMENTED QuantizeLinear(28) when ORT lacks it
    if "QuantizeLinear" not in {node.op_type for node in iter_nodes(quantized)}:
        assert any("no int8 QuantizeLinear" in w for w in report.warnings), report.warnings


def test_the_fix_loops_kept_float_line_says_which_timing_failed():
    from onnxslim.passes.quantize.fix_glue import kept_float_warning
    from onnxslim.passes.quantize.latency_guard import GuardOutcome

    slower = GuardOutcome(None, [{"threshold_macs": 0, "ratio": 1.31}], warning="kept float: x")
    assert "ran slower than float on this CPU (1.31x)" in kept_float_warning(slower)
    unconfirmed = GuardOutcome(
        None,
        [{"threshold_macs": 0, "ratio": 0.93}, {"confirmation": True, "ratio": 1.01}],
        warning="kept float: int8 timed 0.93x then 1.01x the float time on this CPU, not",
    )
    assert kept_float_warning(unconfirmed).startswith(
        "kept float: the fixed int8 model timed 0.93x then 1.01x"
    )
