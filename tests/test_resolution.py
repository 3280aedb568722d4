"""onnxslim.resolution: a CTC output whose held-out strings are too few to resolve the
target is judged by the strings its frame margins say would change.

task_crnn (models/) is where it showed: default `prune` reached 80 % with 0 of its 8
held-out strings changed and read 15.2 % of the 256 evaluation strings differently
(exit 0). Scored here as the benchmark scores it (scripts/task_metrics.py)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from task_helpers import MODELS, eval_inputs, run, task_metrics

from onnxslim import api
from onnxslim.agreement import Role, Target, assess
from onnxslim.margins import estimated_string_changes
from onnxslim.resolution import with_margins


def _frames(margins: np.ndarray) -> np.ndarray:
    """[T, strings, 3] logits whose frames have the given top-1 margins (class 0 wins)."""
    frames = np.zeros((*margins.T.shape, 3))
    frames[..., 0] = margins.T
    return frames


def test_string_changes_estimated_from_frame_margins() -> None:
    """A string changes when any frame flips: frames at a margin of one spread flip with
    P = Phi(-1) = 0.159 each, so a 2-frame string changes with 1 - 0.841^2 = 0.293."""
    margins = np.full((4, 2), 1.0)
    moves = np.array([1.0, -1.0] * 50)  # mean 0, spread 1.005
    points, mean, spread = estimated_string_changes(moves, margins)
    assert mean == pytest.approx(0.0) and spread == pytest.approx(1.005, abs=1e-3)
    assert points == pytest.approx(100 * (1 - (1 - 0.1587) ** 2), abs=0.3)
    # margins shrinking on average flip more; wider margins fewer
    assert estimated_string_changes(moves - 0.5, margins)[0] > points
    assert estimated_string_changes(moves, 3 * margins)[0] < 1.0
    assert estimated_string_changes(np.zeros(0), margins)[0] == 0.0


def test_ctc_roles_get_frame_margins_and_the_figure_counts_them() -> None:
    """8 check strings that all decode as before still miss the target when their margins
    moved by as much as the original's frames are apart (the captcha reader's int8: 0 of
    16 held-out captchas changed, 4.3 % of 256 others)."""
    rng = np.random.default_rng(0)
    margins = rng.exponential(2.0, size=(8, 20))
    reference = [{"logits": _frames(margins[i : i + 1])} for i in range(8)]
    noise = [rng.normal(0, 0.4, r["logits"].shape) * [1, 0, 0] for r in reference]
    candidate = [{"logits": r["logits"] + n} for r, n in zip(reference, noise, strict=True)]
    roles = {"logits": Role("logits", "ctc", "blank wins", time_axis=0, batch_axis=1, blank=1)}
    model = ir.Model(ir.Graph([], [], nodes=[]), ir_version=10)
    given = with_margins(model, roles, reference, None, None)
    assert given["logits"].rows is not None and given["logits"].rows.margins.shape == (8, 20)
    figure = assess(reference, candidate, roles=given).figures[0]
    assert figure.role == "ctc" and figure.detail["estimated_points"] > Target().error
    assert figure.value == max(
        figure.detail["estimated_points"], figure.detail["disagreement_points"]
    )
    assert not figure.passed


def test_prune_at_the_target_keeps_the_crnn_strings() -> None:
    """The real search on task_crnn: judged by its frame margins, the strings users read
    stay within 1 point of float on the 256 evaluation images."""
    result = api.prune(
        MODELS / "task_crnn.onnx",
        calib=MODELS / "task_crnn.calib.npz",
        runs=0,
    )
    figure = result.target.figures[0] if result.target is not None else None
    assert figure is not None and figure.role == "ctc" and figure.passed, figure
    tm = task_metrics()
    inputs = eval_inputs("task_crnn")
    reference = tm.decode("ctc", run(MODELS / "task_crnn.onnx", inputs))
    got = tm.decode("ctc", run(result.model_bytes(), inputs))
    assert 100 * (1 - tm.task_score("ctc", got, reference)) <= 1.0
