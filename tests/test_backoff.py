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
    """Prune costs 2 points per 0.5 sparsity over 0.3; int8 0.6 points, 0.2 with its fix loop."""
    lost = 0.0
    for step in model:
        if step is None:
            continue
        if step.name == "prune":
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
    # 0.8 alone misses (2 pt): prune is blamed before int8; 0.6 still misses alone;
    # 0.4 meets it alone (0.4 pt) but not with int8 (1.0 + ...): then int8 is blamed
    changed = [t.changed for t in result.trials]
    assert changed[0] == "as written" and changed[1] == "prune sparsity=0.6"
    assert result.steps[1] is not None and result.steps[1].options["sparsity"] == 0.4
    assert result.steps[2] is not None and result.steps[2].name == "quantize"
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


def test_ladders() -> None:
    assert [r and r.options["bits"] for r in ladder(Step("cluster", {"bits": 4}), TARGET)] == [
        5,
        6,
        8,
        None,
    ]
    prune = [r and r.options["sparsity"] for r in ladder(STEPS[1], TARGET)]
    assert prune == [0.6, 0.4, 0.2, None]
    fixes = [r and r.options["fix_target"] for r in ladder(STEPS[2], TARGET)]
    assert fixes == [0.5, 0.25, None]
