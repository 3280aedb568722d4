"""onnxslim.margins: the top-1 flips a few held-out rows cannot count, and tagger padding."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from conftest import DEVMODELS_CACHE, devmodel_feeds

from onnxslim import api
from onnxslim.agreement import Target, assess
from onnxslim.margins import estimated_flips, flip_share, margin_moves, padding_masks, top_margin
from onnxslim.resolution import target_roles
from onnxslim.runtime import Session
from onnxslim.workflows.heldout import split_data

MODELS = Path(__file__).resolve().parents[1] / "models"


def test_padding_is_the_trailing_run_of_the_pad_value_of_an_aligned_integer_input() -> None:
    ids = np.array([[5, 7, 7, 0, 0], [3, 4, 9, 9, 9], [8, 0, 0, 0, 0]], dtype=np.int64)
    feeds = [{"ids": ids, "length": np.array([3, 5, 1])}]
    masks = padding_masks(feeds, [np.zeros((3, 5, 4), np.float32)], time_axis=1)
    assert masks[0] is not None
    # 0 ends most rows and runs: it is the pad; the 9s of a full row are real tokens
    assert masks[0].tolist() == [
        [True, True, True, False, False],
        [True, True, True, True, True],
        [True, False, False, False, False],
    ]
    # the same output laid out [positions, batch]: the mask follows the output's layout
    swapped = padding_masks(feeds, [np.zeros((5, 3, 4), np.float32)], time_axis=0)
    assert swapped[0] is not None and np.array_equal(swapped[0], masks[0].T)
    # no integer input of the output's leading shape: every position counts
    assert padding_masks(feeds, [np.zeros((3, 6, 4), np.float32)], time_axis=1) == (None,)


def test_the_estimate_follows_the_normal_tail_over_the_margins() -> None:
    rng = np.random.default_rng(0)
    margins = rng.uniform(0.0, 10.0, 4000)  # density 0.1 per logit from 0 to 10
    # d ~ N(-1, 0.5): P(m + d < 0) = integral over m of 0.1 * Phi((-m + 1) / 0.5) ~ 0.1
    assert abs(flip_share(margins, -1.0, 0.5) - 0.1) < 0.01
    assert flip_share(margins, 0.0, 0.0) == 0.0
    # a candidate equal to the reference moves no margin: nothing estimated
    logits = rng.standard_normal((8, 5))
    assert estimated_flips(margin_moves(logits, logits.copy()), margins)[0] == 0.0
    # the same candidate judged over rows of smaller margins flips more of them
    moves = margin_moves(logits, logits + rng.normal(0.0, 0.3, logits.shape))
    assert estimated_flips(moves, margins / 4)[0] > estimated_flips(moves, margins)[0]
    assert np.all(top_margin(logits) >= 0)


def test_a_pruned_classifier_the_held_out_count_passed_misses_and_it_did_lose() -> None:
    """task_mobilenetv3 pruned to 70 %: none of its 8 held-out top-1s changed (the figure
    before the margins passed it), 4.7 % of 128 evaluation images changed (bench_task's
    measure); the margin estimate misses the target."""
    model, calib = MODELS / "task_mobilenetv3.onnx", MODELS / "task_mobilenetv3.calib.npz"
    result = api.prune(model, calib=calib, sparsity=0.7, runs=0)
    assert result.target is not None and not result.target.passed
    figure = result.target.figures[0]
    assert figure.decisions == 8 and figure.detail["changed"] == 0
    assert figure.detail["estimated_points"] > 1.0
    # the figure before: expected top-1 decisions lost on the 8 held-out rows, passed
    original = ir.load(model)
    split = split_data(original, str(calib), None)
    reference = [Session(original).run(feed) for feed in split.check]
    candidate = [Session(result.model).run(feed) for feed in split.check]
    roles = target_roles(original, reference, Target())
    plain = {n: dataclasses.replace(r, rows=None) for n, r in roles.items()}
    assert assess(reference, candidate, roles=plain).passed
    # and it did lose: top-1 agreement with the original on the evaluation images
    with np.load(MODELS / "task_mobilenetv3.eval.npz") as data:
        images = data["images"].astype(np.float32) / 255.0
    name = original.graph.inputs[0].name
    sessions = [Session(original), Session(result.model)]
    picks = np.array(
        [[s.run({name: image[None]})[figure.name].argmax() for image in images] for s in sessions]
    )
    assert 100.0 * np.mean(picks[0] != picks[1]) > 2.0


def test_the_tagger_counts_the_real_positions_its_length_input_names() -> None:
    """lac_bigru pads its token ids with trailing 0s and says how many are real in `length`:
    the padding rule, which reads no input by name, finds the same positions."""
    path = DEVMODELS_CACHE / "lac_bigru.onnx"
    if not path.is_file():
        pytest.skip("lac_bigru not fetched; run ../shared/devmodels/fetch.py")
    model = ir.load(path)
    feeds = devmodel_feeds("lac_bigru", 12, seed=1)
    reference = [Session(model).run(feed) for feed in feeds[8:]]  # the check feeds'
    roles = target_roles(model, reference, Target(), feeds=feeds[8:], fit=feeds[:8])
    tagger = roles["fetch_name_0"]
    assert tagger.role == "tagger" and tagger.rows is not None
    real = tagger.rows.real
    assert len(real) == 4 and all(m is not None for m in real)
    for feed, mask in zip(feeds[8:], real, strict=True):
        assert mask is not None
        assert mask.sum(axis=1).tolist() == feed["length"].tolist()
    # every real position of all 12 feeds gave a margin
    assert len(tagger.rows.margins) == sum(int(f["length"].sum()) for f in feeds)
