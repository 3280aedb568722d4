"""prune and cluster at the accuracy target: by default the most compression that meets it,
found by the target itself; a request beyond it exits 1 naming the layers that broke it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxslim import api
from onnxslim.agreement import Assessment, OutputFigure, Target
from onnxslim.cli import main
from onnxslim.passes._run_data import Accept, RunData
from onnxslim.passes.cluster.cluster import ClusterWeights
from onnxslim.passes.cluster.cluster import summary as cluster_summary
from onnxslim.runtime import Session

MODELS = Path(__file__).resolve().parents[1] / "models"


def _files(name: str) -> tuple[Path, Path]:
    """The example model and its calibration data: both are in git, so a missing one is
    breakage to see, not a reason to skip."""
    return MODELS / f"{name}.onnx", MODELS / f"{name}.calib.npz"


def test_prune_by_default_reaches_the_most_sparsity_the_target_allows() -> None:
    model, calib = _files("digits_cnn")
    # without the refit: with it, the first trial (0.9, the ladder's top) already passes
    result = api.prune(model, calib=calib, runs=0, reconstruct=False)
    search = result.search
    assert search is not None and result.target is not None and result.target.passed
    assert result.request is None  # nothing was asked for
    # the bound was found by the target: a trial above what was reached missed it
    missed = [t["sparsity"] for t in search["trials"] if not t["passed"]]
    assert missed and min(missed) > search["reached"] >= 0.5
    assert result.sparsity >= 0.45  # layers under min_elements stay dense
    layers = result.details["sensitivity"]
    assert len({round(v["allocated"], 3) for v in layers.values()}) > 1  # not uniform


def test_prune_trials_are_refit_and_the_result_is_the_refit_trial() -> None:
    # Trials used to skip the least-squares refit: digits_cnn stopped at 0.7 although
    # 0.85 meets the target refit. Now each trial is refit from statistics taken once.
    # (0.9 refit kept all 64 held-out decisions and changed 1.3 % of the 540 evaluation
    # ones: the margin estimate, 2.3 points, turns it down; 0.85 changed 0.56 %.)
    model, calib = _files("digits_cnn")
    result = api.prune(model, calib=calib, runs=0)
    search = result.search
    assert search is not None and result.target is not None and result.target.passed
    assert search["trials"][0]["sparsity"] == 0.9 and not search["trials"][0]["passed"]
    assert search["reached"] >= 0.8 and result.sparsity >= 0.75
    refit = result.details["refit"]
    assert refit and all(r["error_after"] <= r["error_before"] for r in refit)
    assert any(r["error_after"] < 0.5 * r["error_before"] for r in refit)


def test_prune_request_beyond_the_target_exits_1_and_names_the_layers(
    tmp_path: Path, capsys
) -> None:
    model, calib = _files("digits_cnn")
    out = tmp_path / "p90.onnx"
    code = main(
        ["prune", str(model), "-o", str(out), "--sparsity", "0.9", "--calib", str(calib)]
        + ["--no-reconstruct", "--runs", "0"]  # the refit rescues 0.9 on this model
    )
    error = " ".join(capsys.readouterr().err.split())
    assert code == 1 and out.is_file()
    assert "accuracy target missed: logits (classifier)" in error
    assert "--sparsity 0.9 breaks it at" in error and "of the measured error" in error
    assert "met it in the search" in error


def test_cluster_by_default_spends_the_fewest_bytes_that_meet_the_target() -> None:
    model, calib = _files("digits_lstm")
    result = api.cluster(model, calib=calib, runs=0)
    search = result.search
    assert search is not None and result.target is not None and result.target.passed
    assert result.request is None
    trials = search["trials"]
    assert any(not t["passed"] for t in trials)  # a smaller budget was tried and missed
    assert search["budget_bytes"] == min(t["budget_bytes"] for t in trials if t["passed"])
    assert 2.0 <= result.bits_per_weight <= 8.0
    assert result.size_after.raw < 0.35 * result.size_before.raw


def test_cluster_writes_the_searched_forms_without_clustering_them_again(monkeypatch) -> None:
    # The chosen forms were clustered once for the probes and the trials; the written
    # model used to cluster them again (21 of minilm's 206 clusterings).
    import onnxslim.passes.cluster.cluster as cluster_module

    real, real_widths = cluster_module.cluster_tensor, cluster_module.cluster_tensor_widths
    calls: list[tuple] = []

    def counted(array: np.ndarray, bits: int, **options: object):  # type: ignore[no-untyped-def]
        calls.append((array.tobytes(), bits, options.get("axis"), options.get("group_size")))
        return real(array, bits, **options)

    def counted_widths(array: np.ndarray, widths: list[int], **options: object):  # type: ignore[no-untyped-def]
        for bits in widths:
            calls.append((array.tobytes(), bits, options.get("axis"), options.get("group_size")))
        return real_widths(array, widths, **options)

    monkeypatch.setattr(cluster_module, "cluster_tensor", counted)
    monkeypatch.setattr(cluster_module, "cluster_tensor_widths", counted_widths)
    model, calib = _files("digits_lstm")
    result = api.cluster(model, calib=calib, runs=0)
    assert result.target is not None and result.target.passed and result.weights
    assert len(calls) == len(set(calls))  # no weight clustered twice in the same form
    probed = sum(len(w["candidates"]) - 1 for w in result.allocation["weights"])  # not float
    assert len(calls) == probed


def test_cluster_probes_within_the_effort_on_fewer_feeds(monkeypatch) -> None:
    # One probe per weight ran on every probe feed whatever it cost (open_nsfw_resnet: 54
    # probes on 16 feeds, 43 % of its time); now it fits the effort's seconds with fewer.
    import dataclasses

    import onnxslim.passes.cluster.cluster as cluster_module

    tight = dataclasses.replace(cluster_module.EFFORT["default"], probe_seconds=1e-6)
    monkeypatch.setitem(cluster_module.EFFORT, "default", tight)
    model, calib = _files("digits_lstm")
    result = api.cluster(model, calib=calib, runs=0)
    allocation = result.allocation
    assert allocation is not None and allocation["errors"] == "one probe per weight, scaled"
    assert allocation["probe_feeds"] == cluster_module.MIN_PROBE_FEEDS
    assert result.target is not None and result.target.passed  # the check still decides


def _shifted_mlp() -> tuple:
    """x[1,64] -> MatMul -> Relu -> MatMul -> y[1,10], and 32 feeds whose first 24 (the
    refinement's) excite only two input dims while the held-out 8 excite all 64: the
    least-squares palettes fit those two dims and move the held-out decisions."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((64, 128)) / 8.0).astype(np.float32)
    w2 = (rng.standard_normal((128, 10)) / np.sqrt(128)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["y"]),
        ],
        "shifted",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = []
    for i in range(32):
        x = rng.standard_normal((1, 64)).astype(np.float32)
        if i < 24:
            x[:, 2:] = 0
        feeds.append({"x": x})
    return model, feeds


def test_cluster_undoes_a_refinement_that_breaks_the_target() -> None:
    # The captcha CRNN's bug: the search passed on k-means palettes, the refinement run
    # after it lost 2.25 points, exit 1. The refined model is now checked, and when it
    # misses every weight and bias goes back to what the unrefined palettes give.
    model, feeds = _shifted_mlp()
    seen: list[str] = []

    def check(candidate: ir.Model) -> Assessment:  # the refined model misses, nothing else
        seen.append("refined" if not seen else "unrefined")
        value = 5.0 if len(seen) == 1 else 0.0
        figure = OutputFigure("y", "classifier", "decisions lost", value, 1.0, "points", 8)
        return Assessment(Target(1.0), (figure,), "scripted")

    def run(accept: Accept | None = None, **options: object) -> ir.Model:
        copy = ir.serde.deserialize_model(model)
        ClusterWeights(bits=3, allocation="uniform", **options).run(  # type: ignore[arg-type]
            copy, RunData(feeds=feeds, accept=accept)
        )
        return copy

    guarded = run(accept=check)
    plain = run(refine=False)
    refined = run()
    assert seen == ["refined", "unrefined"]
    details = cluster_summary(guarded)
    assert any("palette refinement undone" in n for n in details["notes"])
    assert not any(layer["refit"] for layer in details["layers"])
    assert any(layer["refit"] for layer in cluster_summary(refined)["layers"])
    x = {"x": feeds[-1]["x"]}
    assert np.array_equal(Session(guarded).run(x)["y"], Session(plain).run(x)["y"])
    assert not np.array_equal(Session(refined).run(x)["y"], Session(plain).run(x)["y"])


def _gated_mlp() -> tuple:
    """x[1,64] -> MatMul w0 -> If(sum > 0: MatMul w1, else: MatMul w2) -> Softmax -> y[1,16]:
    the branch taken depends on the input; the branches read main-graph weights."""
    rng = np.random.default_rng(1)
    weights = {
        "w0": rng.standard_normal((64, 256)) / 8.0,
        "w1": rng.standard_normal((256, 16)) / 16.0,
        "w2": rng.standard_normal((256, 16)) / 16.0,
    }
    branch = {
        name: helper.make_graph(
            [helper.make_node("MatMul", ["h", w], [f"y_{w}"])],
            name,
            [],
            [helper.make_tensor_value_info(f"y_{w}", TensorProto.FLOAT, [1, 16])],
        )
        for name, w in (("then", "w1"), ("else", "w2"))
    }
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w0"], ["h"]),
            helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
            helper.make_node("Greater", ["s", "zero"], ["c"]),
            helper.make_node(
                "If", ["c"], ["z"], then_branch=branch["then"], else_branch=branch["else"]
            ),
            helper.make_node("Softmax", ["z"], ["y"], axis=-1),
        ],
        "gated",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
        [numpy_helper.from_array(w.astype(np.float32), n) for n, w in weights.items()]
        + [numpy_helper.from_array(np.zeros((), np.float32), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = [{"x": rng.standard_normal((1, 64)).astype(np.float32)} for _ in range(32)]
    return model, feeds


def test_cluster_searches_models_with_if_subgraphs() -> None:
    # If/Loop/Scan models used to get --bits everywhere, no search ("even the float copy
    # measured as changed"); the float copy and the trials are measured like any model's.
    model, feeds = _gated_mlp()
    # Its random weights leave small top-1 margins (median 0.37 logits): clustered to 6.3
    # bits it changed 3.25 % of 4000 new inputs' top-1 and 0.8 % at 8 bits, so at the
    # 1-point target nothing under 8 bits is right (the margin estimate says so); at 5
    # points the search has room to show it clusters an If model.
    result = api.cluster(model, calib=feeds, runs=0, target_error=5.0)
    search = result.search
    assert search is not None and result.target is not None and result.target.passed
    assert not any("control flow" in n for n in result.notes)
    trials = search["trials"]
    assert trials and any(t["passed"] for t in trials)
    assert search["budget_bytes"] == min(t["budget_bytes"] for t in trials if t["passed"])
    assert {w["weight"] for w in result.weights} >= {"w0"}
    assert result.bits_per_weight < 8.0


def test_effort_orders_the_search_and_a_bad_value_is_usage(tmp_path: Path) -> None:
    """--effort fast|default|thorough: more effort measures more, never less; exit 2 else."""
    from onnxslim.passes.cluster.target import EFFORT as CLUSTER_EFFORT
    from onnxslim.passes.prune.magnitude import EFFORT as PRUNE_EFFORT
    from onnxslim.passes.prune.magnitude import MagnitudePruning

    for table in (PRUNE_EFFORT, CLUSTER_EFFORT):
        fast, default, thorough = (table[name] for name in ("fast", "default", "thorough"))
        assert fast.probe_seconds < default.probe_seconds < thorough.probe_seconds
        assert fast.probe_feeds < default.probe_feeds <= thorough.probe_feeds
    limits = [CLUSTER_EFFORT[n].exact_limit for n in ("fast", "default", "thorough")]
    assert limits == sorted(limits)
    assert (
        CLUSTER_EFFORT["fast"].refine_feeds == 0 and CLUSTER_EFFORT["thorough"].refine_feeds is None
    )
    with pytest.raises(ValueError, match="effort"):
        MagnitudePruning(effort="slow")
    with pytest.raises(ValueError, match="effort"):
        ClusterWeights(effort="slow")
    model, calib = _files("digits_cnn")
    for command in ("prune", "cluster"):
        out = tmp_path / f"{command}.onnx"
        args = [command, str(model), "-o", str(out), "--effort", "slow", "--calib", str(calib)]
        assert main(args) == 2 and not out.exists()
