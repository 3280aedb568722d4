"""onnxslim.agreement: output roles, the label-free measures and the default target."""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from onnxslim import agreement, decisions
from onnxslim.agreement import Role, Target


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _model(op: str, out_shape: list) -> ir.Model:
    """x -> op -> y, to give detect_roles a producing op; "head": x @ W + b (constants)."""
    attrs = {"axis": -1} if op in ("Softmax", "LogSoftmax") else {}
    width = out_shape[-1] if isinstance(out_shape[-1], int) else 4
    weights = [
        helper.make_tensor("W", TensorProto.FLOAT, [width, width], [0.0] * width * width),
        helper.make_tensor("b", TensorProto.FLOAT, [width], [0.0] * width),
    ]
    if op == "head":
        nodes = [
            helper.make_node("MatMul", ["x", "W"], ["h"]),
            helper.make_node("Add", ["h", "b"], ["y"]),
        ]
    elif op == "state":  # an Add of two activations, as a GRU's update
        nodes = [helper.make_node("Tanh", ["x"], ["h"]), helper.make_node("Add", ["h", "x"], ["y"])]
    else:
        nodes = [helper.make_node(op, ["x"], ["y"], **attrs)]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, out_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        initializer=weights,
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_roles_from_values_and_producers() -> None:
    rng = np.random.default_rng(0)
    outputs = [
        {
            "probs": _softmax(rng.normal(size=(4, 10))).astype(np.float32),
            "logprobs": np.log(_softmax(rng.normal(size=(4, 10)))).astype(np.float32),
            "ids": rng.integers(0, 5, size=(4, 7)),
            "boxes": rng.normal(size=(4, 1)).astype(np.float32),
            "unit": rng.uniform(size=(4, 1, 8, 8)).astype(np.float32),
        }
    ]
    roles = agreement.detect_roles(None, outputs)
    assert {k: r.role for k, r in roles.items()} == {
        "probs": "classifier",
        "logprobs": "classifier",
        "ids": "exact",
        "boxes": "regression",
        "unit": "map",
    }
    scores = [{"y": rng.normal(size=(4, 10)).astype(np.float32)}]
    assert agreement.detect_roles(_model("Softmax", [4, 10]), scores)["y"].role == "classifier"
    assert agreement.detect_roles(_model("Sigmoid", [4, 10]), scores)["y"].role == "map"
    assert agreement.detect_roles(_model("Relu", [4, 10]), scores)["y"].role == "regression"
    pooled = [{"y": rng.normal(size=(4, 64)).astype(np.float32)}]
    assert (
        agreement.detect_roles(_model("LpNormalization", [4, 64]), pooled)["y"].role == "embedding"
    )
    tags = [{"y": rng.normal(size=(2, 12, 9)).astype(np.float32)}]
    assert agreement.detect_roles(_model("head", [2, 12, 9]), tags)["y"].role == "tagger"
    assert agreement.detect_roles(_model("state", [2, 12, 9]), tags)["y"].role == "regression"
    assert agreement.detect_roles(_model("head", [4, 10]), scores)["y"].role == "classifier"


def test_ctc_detected_time_major_with_its_blank() -> None:
    """A [T, batch, C] output whose last class wins most frames is CTC; batch from the dim name."""
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(20, 2, 6)).astype(np.float32)
    scores[:, :, 5] += 3.0  # blank
    model = _model("head", [20, "batch", 6])
    role = agreement.detect_roles(model, [{"y": scores}])["y"]
    assert (role.role, role.time_axis, role.batch_axis, role.blank) == ("ctc", 0, 1, 5)


def test_ctc_decode_collapses_repeats_and_drops_blanks() -> None:
    best = [[0, 0, 3, 1, 1, 3, 1, 2, 2, 3]]  # blank 3
    frames = np.eye(4)[np.array(best).T]  # [T, 1, 4]
    assert decisions.ctc_decode(frames, blank=3) == [(0, 1, 1, 2)]


def test_ctc_agreement_counts_sequences_not_frames() -> None:
    """One changed frame in 20 changes the decoded text: 95 % frame agreement, 0 % text."""
    best = np.full((20, 1), 3)
    best[5, 0], best[12, 0] = 0, 1
    reference = np.eye(4)[best]
    changed = best.copy()
    changed[12, 0] = 2
    role = Role("y", "ctc", "", 0, 1, 3)
    assert decisions.ctc_loss([reference], [np.eye(4)[changed]], 0, 1, 3) == (1.0, 1, 1)
    assert decisions.top1_loss([reference], [np.eye(4)[changed]]) == (1.0, 1, 20)
    fig = agreement.assess([{"y": reference}], [{"y": np.eye(4)[changed]}], roles={"y": role})
    assert fig.figures[0].value == 100.0 and not fig.passed


def test_decision_loss_weighs_flips_by_the_originals_confidence() -> None:
    """A near tie that flips costs little, a confident decision that flips costs it all."""
    reference = np.log(np.array([[0.51, 0.49], [0.99, 0.01], [0.6, 0.4]]))
    candidate = np.log(np.array([[0.49, 0.51], [0.01, 0.99], [0.7, 0.3]]))
    changed, loss = decisions.decision_loss(reference, candidate)
    assert changed.tolist() == [True, True, False]
    assert loss == pytest.approx([0.02, 0.98, 0.0])
    result = agreement.assess([{"p": reference}], [{"p": candidate}])
    fig = result.figures[0]
    assert fig.role == "classifier" and fig.value == pytest.approx(100 / 3)
    assert fig.detail["disagreement_points"] == pytest.approx(200 / 3)
    # Raw logits go through softmax: a flip between logits 0.0 and 0.1 costs 5 %
    lost, changed_rows, rows = decisions.top1_loss(
        [np.array([[0.1, 0.0]])], [np.array([[0.0, 0.1]])]
    )
    assert (changed_rows, rows) == (1, 1) and lost == pytest.approx(0.04996, abs=1e-4)


def test_map_iou_and_fallback_without_decisions() -> None:
    ref = np.zeros((1, 1, 10, 10), np.float32)
    ref[..., :5, :] = 0.9  # half the map positive
    cand = ref.copy()
    cand[..., 4, :] = 0.1  # one row of ten lost: IoU 40/50
    iou, positive = decisions.map_iou([ref], [cand])
    assert iou == pytest.approx(0.8) and positive == pytest.approx(0.5)
    role = Role("m", "map", "")
    fig = agreement.assess([{"m": ref}], [{"m": cand}], roles={"m": role}).figures[0]
    assert fig.unit == "points" and fig.value == pytest.approx(20.0)
    # All below the threshold: no decisions to compare, the SQNR decides instead.
    faint = np.full((1, 1, 10, 10), 0.1, np.float32)
    fig = agreement.assess([{"m": faint}], [{"m": faint * 0.5}], roles={"m": role}).figures[0]
    assert fig.unit == "dB" and fig.value == pytest.approx(20 * math.log10(2)) and not fig.passed


def test_neighbour_loss() -> None:
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(16, 32))
    assert decisions.neighbour_loss(ref, ref + 1e-4 * rng.normal(size=ref.shape)) == (0.0, 0, 16)
    lost, changed, total = decisions.neighbour_loss(ref, rng.normal(size=ref.shape))
    assert total == 16 and changed > 8 and 0 < lost <= changed

    # Two near-equal neighbours swapping costs little; a far one, the whole decision.
    def at(degrees: list[float]) -> np.ndarray:
        radians = np.deg2rad(degrees)
        return np.stack([np.cos(radians), np.sin(radians)], 1)

    ref = at([0, 10, 11, 90, 180])
    lost, changed, _ = decisions.neighbour_loss(ref, at([0, 12, 11, 90, 180]))
    assert changed == 2 and lost == pytest.approx(0.1715, abs=1e-3)  # 0 and 3: near ties
    lost, changed, _ = decisions.neighbour_loss(ref, at([0, 10, 11, 5, 180]))
    assert changed == 3 and lost == pytest.approx(2.1634, abs=1e-3)  # 90 degrees moved to 5


def test_regression_threshold_follows_the_target() -> None:
    assert Target().regression_db == pytest.approx(
        -20 * math.log10(agreement.REGRESSION_ERROR_PER_POINT)
    )
    assert Target(2.0).regression_db == pytest.approx(Target().regression_db - 20 * math.log10(2))
    with pytest.raises(ValueError):
        Target(-1.0)
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(4, 1)).astype(np.float32)
    role = {"r": Role("r", "regression", "")}
    noise = ref * 10 ** (-(Target().regression_db + 3) / 20)  # 3 dB better than needed
    assert agreement.assess([{"r": ref}], [{"r": ref + noise}], roles=role).passed
    assert not agreement.assess([{"r": ref}], [{"r": ref + 3 * noise}], roles=role).passed


def test_assessment_names_the_output_figure_and_target() -> None:
    logits = np.zeros((50, 5), np.float32)
    logits[:, 0] = 20.0  # confident rows
    flipped = logits.copy()
    flipped[:2] = -flipped[:2]  # two of 50 confident decisions change
    result = agreement.assess([{"scores": logits}], [{"scores": flipped}], roles=None)
    fig = result.figures[0]
    assert (fig.role, fig.decisions) == ("classifier", 50)
    assert fig.value == pytest.approx(4.0, abs=1e-6)
    assert not result.passed
    assert result.message() == (
        "scores (classifier): 4.00 points of expected top-1 decisions lost "
        "(target <= 1.00, 50 decisions)"
    )
    assert agreement.assess([{"scores": logits}], [{"scores": flipped}], target=Target(5)).passed
    assert result.to_dict()["outputs"][0]["passed"] is False


def test_nan_candidate_fails() -> None:
    ref = np.ones((2, 3), np.float32)
    role = {"r": Role("r", "regression", "")}
    assert not agreement.assess([{"r": ref}], [{"r": ref * np.nan}], roles=role).passed


def test_hidden_state_feeding_a_decision_output_is_shown_not_gated() -> None:
    """x -> LayerNorm-like Tanh -> h (output) -> ReduceMean -> e (output, an embedding)."""
    graph = helper.make_graph(
        [
            helper.make_node("Tanh", ["x"], ["h"]),
            helper.make_node("ReduceMean", ["h"], ["pooled"], axes=[1], keepdims=0),
            helper.make_node("LpNormalization", ["pooled"], ["e"], axis=-1),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 5, 16])],
        [
            helper.make_tensor_value_info("h", TensorProto.FLOAT, [8, 5, 16]),
            helper.make_tensor_value_info("e", TensorProto.FLOAT, [8, 16]),
        ],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    rng = np.random.default_rng(5)
    h = np.tanh(rng.normal(size=(8, 5, 16))).astype(np.float32)
    e = h.mean(1) / np.linalg.norm(h.mean(1), axis=-1, keepdims=True)
    reference = [{"h": h, "e": e}]
    roles = agreement.detect_roles(model, reference)
    assert (roles["h"].role, roles["h"].feeds, roles["e"].role) == ("regression", "e", "embedding")
    noisy = [{"h": h + 0.05 * rng.normal(size=h.shape).astype(np.float32), "e": e}]
    result = agreement.assess(reference, noisy, roles=roles)
    figure = result.figures[0]
    assert figure.value < Target().regression_db and figure.passed and result.passed
    assert figure.text().endswith("(feeds e)")


def _detector_head() -> ir.Model:
    """boxes = x * 100 (pixels) and scores = Sigmoid(s), concatenated on axis 1, as a
    YOLOv8-style head writes them into one output [batch, 4 + classes, anchors]."""
    hundred = helper.make_tensor("hundred", TensorProto.FLOAT, [], [100.0])
    nodes = [
        helper.make_node("Mul", ["x", "hundred"], ["boxes"]),
        helper.make_node("Sigmoid", ["s"], ["scores"]),
        helper.make_node("Concat", ["boxes", "scores"], ["y"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "head",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 64]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, ["batch", 3, 64]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 7, 64])],
        [hundred],
    )
    model = ir.serde.deserialize_model(helper.make_model(graph))
    ir.passes.common.ShapeInferencePass()(model)
    return model


def test_concatenated_boxes_do_not_hide_the_scores_error() -> None:
    """Noisy scores next to exact boxes: over the whole output the boxes' values hide the
    error (SQNR far above the target); measured apart, the scores' decisions at 0.5 flip."""
    model = _detector_head()
    rng = np.random.default_rng(0)
    ref, cand = [], []
    for _ in range(4):
        boxes = rng.uniform(0, 300, (1, 4, 64)).astype(np.float32)
        scores = 1 / (1 + np.exp(-rng.normal(-1, 2, (1, 3, 64)))).astype(np.float32)
        noisy = scores + 0.1 * rng.standard_normal(scores.shape)  # decisions at 0.5 flip
        ref.append({"y": np.concatenate([boxes, scores], axis=1)})
        cand.append({"y": np.concatenate([boxes, noisy.astype(np.float32)], axis=1)})
    whole = decisions.sqnr_db([r["y"] for r in ref], [c["y"] for c in cand])
    assert whole > Target().regression_db  # one SQNR over both would pass
    roles = agreement.detect_roles(model, ref)
    assert [(p.start, p.stop) for p in roles["y"].parts] == [(0, 4), (4, 7)]
    figure = agreement.assess(ref, cand, roles=roles).figures[0]
    assert not figure.passed and "parts 4:7" in figure.measure and figure.unit == "points"
    assert figure.role == "regression" and figure.detail["part_0_4_dB"] == math.inf


def test_decisions_kept_by_scores_that_moved_far_do_not_vouch() -> None:
    """Issue 16 (d): rxnmap's attention rows kept 98.5 % of their argmaxes with every MatMul
    weight zeroed (0.05 points): rows that keep their decision but not their scores miss."""
    rng = np.random.default_rng(5)
    attention = rng.dirichlet(np.full(12, 0.3), size=40).astype(np.float32)
    flat = 0.2 * attention + 0.8 / 12  # same argmax, most of each row's mass moved
    result = agreement.assess([{"attention": attention}], [{"attention": flat}])
    fig = result.figures[0]
    assert fig.role == "classifier" and fig.unit == "dB" and not result.passed
    assert fig.detail["disagreement_points"] == 0.0 and fig.value < agreement.SCORES_FLOOR_DB
    # the same rows a little off still pass on their decisions
    near = attention + 0.01 * rng.random(attention.shape).astype(np.float32)
    near /= near.sum(-1, keepdims=True)
    assert agreement.assess([{"attention": attention}], [{"attention": near}]).passed
