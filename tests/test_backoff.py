"""workflows/backoff.py: a recipe measured once at the end, the step that broke the target
backed off. The steps here are stand-ins (a "model" is the tuple of steps applied) and
the check a formula, so the search itself is tested in milliseconds; tests/test_run_recipe.py
runs the presets for real."""

from __future__ import annotations

from typing import Any

from onnxslim.agreement import Assessment, OutputFigure, Target
from onnxslim.recipe import Step
from onnxslim.workflows.backoff import back_off, ladder, target_gate

TARGET = Target(1.0)
STEPS = [
    Step("optimize", {}),
    Step("prune", {"method": "magnitude", "sparsity": 0.8}),
    Step("quantize", {"mode": "static"}),
]


def execute(first: int, start: Any, steps: list[Step | None]) -> list[tuple[Any, Any]]:
    outputs, model = [], start
    for step in steps[first:]:
        model = (*model, step)
        outputs.append((model, ({}, [], 0.0)))
    return outputs


def points(model: tuple) -> float:
    """Prune costs 4 points per unit of sparsity over 0.3, at the target what it was given;
    int8 0.6 points, 0.2 with its fix loop."""
    lost = 0.0
    for step in model:
        if step is None:
            continue
        if step.name == "prune" and "at_target" in step.options:
            lost += step.options["at_target"]
        elif step.name == "prune":
            lost += max(0.0, step.options["sparsity"] - 0.3) * 4
        if step.name == "quantize":
            lost += 0.2 if step.options.get("fix_target") else 0.6
    return lost


def check(model: tuple) -> Assessment:
    figure = OutputFigure("y", "classifier", "top-1", points(model), TARGET.error, "points", 64)
    return Assessment(TARGET, (figure,), "held-out feeds (8)")


def test_the_step_that_broke_the_target_is_backed_off_and_the_rest_kept() -> None:
    result = back_off((), STEPS, check, TARGET, execute)
    assert result.passed
    # 0.8 alone misses (2 pt): prune is blamed before int8 and searched at the target
    # (1 pt), which int8 then breaks (1.6): int8 is blamed, its fix loop (0.2) is not
    # enough; int8 is not dropped while prune can give ground: prune at half the target
    changed = [t.changed for t in result.trials]
    assert changed == [
        "as written",
        "prune at the target (1 pt)",
        "quantize fix loop at 0.5 pt",
        "quantize fix loop at 0.25 pt",
        "prune at the target (0.5 pt)",
    ]
    assert result.steps[2] is not None and result.steps[2].options["fix_target"] == 0.25
    assert [t.kept for t in result.trials].count(True) == 1 and result.trials[-1].kept
    gate = target_gate(result.assessment, result.to_dict())
    assert gate.passed and "backed off in" in gate.reason


def test_a_target_nothing_meets_fails_with_the_closest_trial() -> None:
    tight = Target(0.1)

    def strict(model: tuple) -> Assessment:
        figure = OutputFigure("y", "classifier", "top-1", points(model) + 0.5, 0.1, "points", 64)
        return Assessment(tight, (figure,), "held-out feeds (8)")

    result = back_off((), STEPS, strict, tight, execute)
    assert not result.passed
    assert len(result.trials) <= 8
    # the closest trial is kept: every lossy step backed off as far as the trials went
    assert result.assessment.figures[0].value == min(
        t.assessment.figures[0].value for t in result.trials
    )
    assert not target_gate(result.assessment, result.to_dict()).passed


def test_a_trial_that_meets_the_target_but_fails_a_quality_gate_is_backed_off() -> None:
    """`holds`: the recipe's max_parity_error here stands in as "sparsity at most 0.4"."""

    def holds(model: tuple) -> str | None:
        prune = next(s for s in model if s is not None and s.name == "prune")
        sparsity = prune.options.get("sparsity", 0.8) if "at_target" not in prune.options else 0.8
        return None if sparsity <= 0.4 else f"max_parity_error: sparsity {sparsity} too far"

    result = back_off((), STEPS, check, TARGET, execute, holds)
    assert result.passed and result.trials[-1].kept
    misses = [t for t in result.trials if t.assessment.passed and not t.passed]
    assert misses and all(t.gate_miss for t in misses)  # met the target, failed the gate
    assert result.steps[1] is not None and result.steps[1].options["sparsity"] == 0.4
    listed = result.to_dict()["trials"]
    assert listed[-1]["passed"] and "gate_miss" not in listed[-1]
    assert any(t.get("gate_miss", "").startswith("max_parity_error") for t in listed)


def test_ladders() -> None:
    cluster = ladder(Step("cluster", {"bits": 4}), TARGET)
    assert [r and r.options["at_target"] for r in cluster] == [1.0, 0.5, 0.25, None]
    # magnitude prune: its search at the target, then fixed shares of its sparsity (for a
    # recipe's max_parity_error, which can ask for less than the target does)
    assert [
        r and r.options.get("at_target", r.options["sparsity"]) for r in ladder(STEPS[1], TARGET)
    ] == [
        1.0,
        0.5,
        0.25,
        0.6,
        0.4,
        0.2,
        None,
    ]
    channels = Step("prune", {"method": "channels", "ratio": 0.8})
    assert [r and r.options["ratio"] for r in ladder(channels, TARGET)] == [0.6, 0.4, 0.2, None]
    fixes = [r and r.options["fix_target"] for r in ladder(STEPS[2], TARGET)]
    assert fixes == [0.5, 0.25, None]


def test_a_recipe_at_the_target_backs_off_a_real_prune(tmp_path) -> None:
    """The rung that searches prune at the target runs for real (api.run, a small MLP)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from onnxslim import api

    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(32, 64)).astype(np.float32) / 4
    w2 = rng.normal(size=(64, 10)).astype(np.float32) / 4
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["logits"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 10])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = tmp_path / "mlp.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=rng.normal(size=(64, 1, 32)).astype(np.float32))
    recipe = {
        "pass": [{"name": "prune", "sparsity": 0.95, "storage": "dense", "min_elements": 16}],
        "gates": {"target_error": 1.0},
        "measure": {"latency_runs": 0},
    }
    result = api.run(recipe, model, output=tmp_path / "out.onnx", calib=str(calib))
    trials = result.data["backoff"]["trials"]
    assert not trials[0]["passed"] and trials[1]["changed"] == "prune at the target (1 pt)"
    assert trials[-1]["passed"] and result.passed
    assert [g.name for g in result.gates] == ["target_error"]


def test_the_preset_backs_off_until_its_parity_gate_holds_too(tmp_path) -> None:
    """mobile-int8-pruned asked for 95 % sparsity on digits_cnn: prune at the target keeps
    every decision (0.00 points) with logits 0.37 relative RMS off, over the preset's
    max_parity_error 0.2; the back-off goes on to a sparsity that holds both (exit 0)."""
    import dataclasses
    from pathlib import Path

    from onnxslim import api
    from onnxslim.recipe import load_recipe

    models = Path(__file__).resolve().parents[1] / "models"
    recipe = load_recipe("mobile-int8-pruned")
    prune = next(s for s in recipe.steps if s.name == "prune")
    prune.options["sparsity"] = 0.95
    recipe = dataclasses.replace(
        recipe, measure=dataclasses.replace(recipe.measure, latency_runs=0)
    )
    result = api.run(
        recipe,
        models / "digits_cnn.onnx",
        output=tmp_path / "out.onnx",
        calib=str(models / "digits_cnn.calib.npz"),
    )
    gates = {g.name: g for g in result.gates}
    assert gates["max_parity_error"].passed and gates["target_error"].passed, gates
    trials = result.data["backoff"]["trials"]
    assert any(t.get("gate_miss", "").startswith("max_parity_error") for t in trials)
    kept = next(t for t in trials if t["kept"])
    assert kept["passed"] and "gate_miss" not in kept
