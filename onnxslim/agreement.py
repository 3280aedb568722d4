"""Does a compressed model still decide like the original? Label-free, per output.

A lossy command (quantize, prune, cluster) promises one thing: the result misses no
accuracy target silently. Users rarely have labels, so the target is stated against
the original model: `target_error`, the points of task accuracy the result may lose
(default 1.0), estimated without labels from the decisions each output drives.

What a decision is depends on what the output is for, so each output gets a role
(`detect_roles`) and the measure that fits it:

    exact        integer/bool outputs (ids, tags, masks)    elements that differ
    classifier   [batch, classes] scores, probabilities,    top-1 decisions changed, or the
                 log-probabilities, attention rows          estimate from the original's
                                                            margins if larger (onnxslim.margins;
                                                            without them: expected top-1
                                                            decisions lost, decision_loss)
    tagger       [batch, positions, classes] scores          the same, per real position
    ctc          [T, batch, C] / [batch, T, C] class-score   decoded sequences changed
                 sequences with a dominant blank class       (argmax, repeats collapsed,
                                                             blanks removed), or the estimate
                                                             from the original's frame margins
                                                             if larger (onnxslim.margins)
    map          sigmoid outputs in [0, 1]                   area lost: 1 - IoU of the maps
                                                             thresholded at 0.5
    embedding    [batch, dim] pooled/normalised vectors      expected nearest neighbours lost
                                                             across the held-out batch
    regression   boxes, offsets, hidden states, the rest     SQNR in dB (no decision to count);
                                                             shown, not gated, when another
                                                             output is computed from it

"Expected decisions lost" weighs each changed decision by how sure the original
was of it (its probability of its own pick minus that of the new pick): with the
original's probabilities taken as the truth that is the expected accuracy change,
and it never exceeds the plain disagreement, which every figure also carries
(`detail["disagreement_points"]`). It matters on uncertain inputs: int8 on the
captcha reader re-decodes 4 of 32 synthetic captchas whose text the float model
itself gave 9-29 % (0.45 points expected), while 4-bit clustering changes 13 of
which it was sure (11.8 points).

Regressions carry no decision to count, so their threshold is an SQNR the target
implies (`Target.regression_db`): the relative RMS error at which the decision
outputs of the development models reached one point (`REGRESSION_ERROR_PER_POINT`,
measured by scripts/calibrate_target.py). This module imports no passes: it is the
evaluation layer the workflows and gates share.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from onnxslim.decisions import (
    MAP_THRESHOLD,
    classifier_shaped,
    cosine,
    ctc_loss,
    exact_agreement,
    is_distribution,
    map_iou,
    neighbour_loss,
    probabilities,
    sqnr_db,
    top1_loss,
)
from onnxslim.margins import (
    RowEvidence,
    estimated_flips,
    estimated_string_changes,
    margin_moves,
    rows_of,
    string_frames,
)

ROLES = ("exact", "classifier", "tagger", "ctc", "map", "embedding", "regression")
DEFAULT_TARGET_ERROR = 1.0  # points of task accuracy the result may lose (estimated)
# Relative RMS error (fraction of the output's RMS) that costs one point: where the most
# sensitive decision output of the development models crossed one point when their
# weights were rounded at 8..3 bits per row (scripts/calibrate_target.py, 8 realistic
# feeds each): the captcha reader's CTC logits, 0.67 points at 0.016, 5.8 at 0.064, so
# about 0.02 (the tagger crossed near 0.085, the embedding and the classifiers later).
# An output with no decision to count is held to that: 34 dB SQNR at the default.
REGRESSION_ERROR_PER_POINT = 0.02
BLANK_SHARE = 0.4  # a CTC blank wins at least this share of the frames
# Decisions vouch for a model only while its class probabilities resemble the original's
# (rxnmap's attention kept 98.5 % of its row argmaxes with every MatMul weight zeroed, at
# 2.4 dB): under this SQNR, on the rows that kept their argmax, a classifier or tagger
# misses whatever its decisions say. digits_cnn pruned 90 %: 8.7 dB, its decisions kept.
SCORES_FLOOR_DB = 6.0
# Ops that move or reshape values without computing new ones: looked through when
# asking which op produced an output.
_LAYOUT_OPS = frozenset(
    {"Identity", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Concat", "Cast"}
)
_NORMALISING_OPS = frozenset(
    {"Div", "LpNormalization", "LayerNormalization", "ReduceMean", "Tanh", "ReduceL2"}
)


@dataclass(frozen=True)
class Target:
    """The one number users set, and the per-role thresholds that implement it."""

    error: float = DEFAULT_TARGET_ERROR  # points of decision disagreement (0-100)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.error) and 0 <= self.error <= 100):
            raise ValueError(f"target error must be in [0, 100] points, got {self.error}")

    @property
    def regression_db(self) -> float:
        """The SQNR a regression output must keep: the error one point costs, times the target."""
        relative = REGRESSION_ERROR_PER_POINT * max(self.error, 1e-6)
        return -20.0 * math.log10(relative)


@dataclass(frozen=True)
class Role:
    """What one output is for, and where its batch / time axes are."""

    name: str
    role: str
    reason: str
    time_axis: int = 0  # ctc: the axis of frames
    batch_axis: int = 1  # ctc: the axis of sequences
    blank: int = 0  # ctc: the blank class
    feeds: str = ""  # regression: a decision output computed from this one (it is not gated)
    # A Concat of parts with roles of their own (box coordinates next to sigmoid scores):
    # each part is measured on its own along `part_axis`, the output's figure is the worst.
    parts: tuple[Part, ...] = ()
    part_axis: int = 0
    # classifier, tagger: the original's margins on every calibration row and the check
    # feeds' real positions (onnxslim.margins); without it the figure is the older one,
    # expected decisions lost on the check rows
    rows: RowEvidence | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Part:
    """A slice [start, stop) of a concatenated output, with the role of its producer."""

    start: int
    stop: int
    role: str
    why: str


@dataclass(frozen=True)
class OutputFigure:
    """One output's figure against the target."""

    name: str
    role: str
    measure: str  # what was counted, in words
    value: float  # points of disagreement, or dB for regression
    limit: float  # the target the value is held to
    unit: str  # "points" (lower is better) or "dB" (higher is better)
    decisions: int  # how many decisions the figure counts (0: a continuous measure)
    detail: dict[str, float] = field(default_factory=dict)
    feeds: str = ""  # shown, not gated: the decision output computed from it carries the target

    @property
    def passed(self) -> bool:
        if self.feeds:
            return True
        if self.unit == "dB":
            return self.value >= self.limit - 1e-9
        return self.value <= self.limit + 1e-9

    def text(self) -> str:
        """`logits (ctc): 43.75 points of decoded sequences that differ (target <= 1.00)`."""
        if self.unit == "dB":
            shown = "exact" if math.isinf(self.value) else f"{self.value:.1f} dB"
            if self.feeds:
                return f"{self.name} ({self.role}): {self.measure} {shown} (feeds {self.feeds})"
            return (
                f"{self.name} ({self.role}): {self.measure} {shown} (target >= {self.limit:.1f} dB)"
            )
        count = f", {self.decisions:,} decisions" if self.decisions else ""
        return (
            f"{self.name} ({self.role}): {self.value:.2f} points of {self.measure}"
            f" (target <= {self.limit:.2f}{count})"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "role": self.role,
            "measure": self.measure,
            "value": _json(self.value),
            "limit": self.limit,
            "unit": self.unit,
            "decisions": self.decisions,
            "passed": self.passed,
            "feeds": self.feeds or None,
            "detail": {k: _json(v) for k, v in self.detail.items()},
        }


@dataclass(frozen=True)
class Assessment:
    """Every output's figure against one target, on the feeds named by `feeds`."""

    target: Target
    figures: tuple[OutputFigure, ...]
    feeds: str  # where the feeds came from: "held-out calibration feeds (8)", ...

    @property
    def passed(self) -> bool:
        return all(f.passed for f in self.figures)

    @property
    def missed(self) -> list[OutputFigure]:
        return [f for f in self.figures if not f.passed]

    def message(self) -> str:
        """One line naming each output that missed, its figure and the target."""
        return "; ".join(f.text() for f in self.missed) or "every output meets the target"

    def to_dict(self) -> dict[str, object]:
        return {
            "target_error": self.target.error,
            "regression_db": self.target.regression_db,
            "feeds": self.feeds,
            "passed": self.passed,
            "outputs": [f.to_dict() for f in self.figures],
        }


# --- roles -----------------------------------------------------------------------------


def ctc_blank(sequences: Sequence[np.ndarray]) -> int | None:
    """The blank class of CTC-like [T, batch, C] scores: class 0 or C-1 winning most frames.

    CTC outputs emit blank between and around characters, so one end class wins
    many frames (73 % in the captcha reader); a tagger's most frequent tag is not
    tied to the ends of the class axis (lac_bigru's: 25 %, class 44 of 59).
    """
    winners = np.concatenate([np.asarray(s).argmax(-1).ravel() for s in sequences])
    classes = np.asarray(sequences[0]).shape[-1]
    if winners.size == 0 or classes < 3:
        return None
    for blank in (classes - 1, 0):
        if np.count_nonzero(winners == blank) >= BLANK_SHARE * winners.size:
            return blank
    return None


def _computing_node(value: ir.Value | None) -> ir.Node | None:
    """The node computing `value`, looking through layout-only ops (Reshape, Concat...)."""
    for _ in range(8):
        node = value.producer() if value is not None else None
        if node is None or node.op_type not in _LAYOUT_OPS or not node.inputs:
            return node
        value = node.inputs[0]
    return None


def producer_op(model: ir.Model, name: str) -> str | None:
    """The op computing output `name`, looking through layout-only ops (Reshape, Concat...)."""
    value = next((v for v in model.graph.outputs if v.name == name), None)
    node = _computing_node(value)
    return node.op_type if node is not None else None


def _constant(value: ir.Value | None) -> bool:
    if value is None:
        return False
    producer = value.producer()
    return value.const_value is not None or (
        producer is not None and producer.op_type == "Constant"
    )


def linear_head(model: ir.Model, name: str) -> bool:
    """Output `name` is a linear layer's: MatMul/Gemm by a constant weight, maybe plus a
    constant bias. Class scores come from such a head; a recurrent state computed by
    an Add of two activations (a GRU's update) does not."""
    value = next((v for v in model.graph.outputs if v.name == name), None)
    node = _computing_node(value)
    if node is not None and node.op_type == "Add" and any(_constant(v) for v in node.inputs):
        other = next((v for v in node.inputs if not _constant(v)), None)
        node = _computing_node(other)
    return (
        node is not None
        and node.op_type in ("Gemm", "MatMul", "MatMulInteger", "QGemm")
        and any(_constant(v) for v in node.inputs)
    )


def _batch_axis(model: ir.Model | None, name: str, shape: tuple[int, ...]) -> int:
    """Which axis of a rank-3 output holds the batch: the one whose dimension is named like
    the first input's first (dynamic) dimension or like a batch; else axis 0."""
    if model is None:
        return 0
    value = next((v for v in model.graph.outputs if v.name == name), None)
    first = next(iter(model.graph.inputs), None)
    batch_name = None
    if first is not None and first.shape is not None and len(first.shape) > 0:
        dim = first.shape[0]
        batch_name = None if isinstance(dim, int) else str(dim.value or "") or None
    if value is not None and value.shape is not None and len(value.shape) == len(shape):
        for axis, dim in enumerate(value.shape):
            label = "" if isinstance(dim, int) else str(dim.value or "")
            if label and (label == batch_name or "batch" in label.lower()):
                return axis
    return 0


def detect_roles(
    model: ir.Model | None, outputs: Sequence[Mapping[str, np.ndarray]]
) -> dict[str, Role]:
    """Each output's role from its values on the reference feeds and, given a model,
    the op that computes it (see the module docstring for the roles)."""
    if not outputs:
        return {}
    roles = {}
    for name in outputs[0]:
        arrays = [np.asarray(o[name]) for o in outputs]
        producer = producer_op(model, name) if model is not None else None
        roles[name] = _role(model, name, arrays, producer)
        split = _concat_parts(model, name, arrays[0]) if model is not None else None
        if split is not None:
            roles[name] = dataclasses.replace(roles[name], part_axis=split[0], parts=split[1])
    if model is not None:
        decided = [n for n, r in roles.items() if r.role != "regression"]
        for name, role in roles.items():
            if role.role == "regression":
                user = next((d for d in decided if _computed_from(model, d, name)), "")
                roles[name] = dataclasses.replace(role, feeds=user)
    return roles


def _concat_parts(
    model: ir.Model, name: str, first: np.ndarray
) -> tuple[int, tuple[Part, ...]] | None:
    """The parts of an output concatenated from producers of different kinds (sigmoid
    scores next to box coordinates): one SQNR over both lets the boxes' large values hide
    the scores' error (a YOLOv8-style head: boxes 36 dB, scores 29 dB, the whole 37 dB)."""
    value = next((v for v in model.graph.outputs if v.name == name), None)
    node = value.producer() if value is not None else None
    while node is not None and node.op_type == "Identity" and node.inputs:
        node = node.inputs[0].producer() if node.inputs[0] is not None else None
    if node is None or node.op_type != "Concat" or len(node.inputs) < 2 or first.ndim == 0:
        return None
    axis = node.attributes.get_int("axis", 0) % first.ndim
    spans: list[tuple[int, str, str]] = []
    for source in node.inputs:
        dims = source.shape if source is not None else None
        size = dims[axis] if dims is not None and len(dims) == first.ndim else None
        if not isinstance(size, int):
            return None
        computing = _computing_node(source)
        op = computing.op_type if computing is not None else "input"
        kind = "map" if op in ("Sigmoid", "HardSigmoid") else "regression"
        spans.append((size, kind, op))
    if sum(size for size, _, _ in spans) != first.shape[axis]:
        return None
    if len({kind for _, kind, _ in spans}) < 2:
        return None
    # Scores are decisions (the map measure: area lost at 0.5), boxes a regression (SQNR).
    parts: list[Part] = []
    start = 0
    for size, kind, op in spans:
        if parts and parts[-1].role == kind:
            last = parts[-1]
            parts[-1] = Part(last.start, start + size, kind, last.why)
        else:
            parts.append(Part(start, start + size, kind, f"{op} output"))
        start += size
    return axis, tuple(parts)


def _computed_from(model: ir.Model, output: str, source: str) -> bool:
    """Output `output` is computed from output `source` (main graph, producers walked back).

    A hidden state that the pooled embedding is computed from is judged through the
    embedding's decisions: its own SQNR is shown, not held to the target.
    """
    values = {v.name: v for v in model.graph.outputs}
    start, goal = values.get(output), values.get(source)
    stack, seen = [start], set()
    while stack:
        value = stack.pop()
        if value is None or id(value) in seen:
            continue
        seen.add(id(value))
        if value is goal and value is not start:
            return True
        node = value.producer()
        if node is not None:
            stack.extend(node.inputs)
    return False


def _role(
    model: ir.Model | None, name: str, arrays: list[np.ndarray], producer: str | None
) -> Role:
    first = arrays[0]
    if first.dtype.kind not in "fc":
        return Role(name, "exact", f"{first.dtype} values are decisions themselves")
    finite = all(np.all(np.isfinite(a)) for a in arrays)
    in_unit = finite and all(a.size and a.min() >= 0 and a.max() <= 1 for a in arrays)
    distribution = all(is_distribution(a) for a in arrays)
    if producer in ("Softmax", "LogSoftmax") or distribution:
        why = f"{producer} output" if producer in ("Softmax", "LogSoftmax") else "rows sum to 1"
        return _class_scores(model, name, arrays, why)
    if producer in ("Sigmoid", "HardSigmoid") or (producer is None and in_unit):
        why = f"{producer} output in [0, 1]" if producer else "values in [0, 1]"
        return Role(name, "map", why)
    if not classifier_shaped(first):
        return Role(name, "regression", "no class axis")
    if first.ndim == 2 and producer in _NORMALISING_OPS and first.shape[-1] >= 8:
        return Role(name, "embedding", f"[batch, {first.shape[-1]}] vectors from {producer}")
    head = linear_head(model, name) if model is not None else producer is None
    if first.ndim <= 3 and head:
        return _class_scores(model, name, arrays, "scores of a linear head")
    return Role(name, "regression", f"computed by {producer}")


def _class_scores(model: ir.Model | None, name: str, arrays: list[np.ndarray], why: str) -> Role:
    """Classifier, tagger or CTC for class-score outputs."""
    first = arrays[0]
    if first.ndim == 2:
        return Role(name, "classifier", why)
    if first.ndim == 3:
        batch = _batch_axis(model, name, first.shape)
        time = 1 if batch == 0 else 0
        frames = [np.moveaxis(a, (time, batch), (0, 1)) for a in arrays]
        blank = ctc_blank(frames)
        if blank is not None:
            return Role(
                name, "ctc", f"{why}; class {blank} wins most frames (blank)", time, batch, blank
            )
        return Role(name, "tagger", why, time, batch)
    return Role(name, "tagger", why)


# --- assessment -----------------------------------------------------------------------


def assess(
    reference: Sequence[Mapping[str, np.ndarray]],
    candidate: Sequence[Mapping[str, np.ndarray]],
    *,
    target: Target | None = None,
    roles: Mapping[str, Role] | None = None,
    model: ir.Model | None = None,
    feeds: str = "",
) -> Assessment:
    """Every output of `candidate` against `reference` (outputs per feed) under `target`.

    Roles come from `roles`, else are detected on `reference` (with `model`, the
    original, for the ops that compute the outputs).
    """
    target = target or Target()
    roles = dict(roles) if roles is not None else detect_roles(model, reference)
    figures = []
    for name in reference[0] if reference else ():
        ref = [np.asarray(o[name]) for o in reference]
        cand = [np.asarray(o[name]) for o in candidate]
        role = roles.get(name) or Role(name, "regression", "no role given")
        figures.append(_figure(role, ref, cand, target))
    return Assessment(target, tuple(figures), feeds)


def _figure(
    role: Role, ref: list[np.ndarray], cand: list[np.ndarray], target: Target
) -> OutputFigure:
    """The figure of one output; outputs identical to the reference (NaN where it has NaN)
    lose nothing, even where the measure itself is NaN (a model computing NaN on the data)."""
    figure = (
        _measured(role, ref, cand, target)
        if not role.parts
        else _worst_part(role, ref, cand, target)
    )
    if figure.passed or not all(
        r.shape == c.shape and np.array_equal(r, c, equal_nan=r.dtype.kind in "fc")
        for r, c in zip(ref, cand, strict=True)
    ):
        return figure
    return dataclasses.replace(figure, value=math.inf if figure.unit == "dB" else 0.0)


def _worst_part(
    role: Role, ref: list[np.ndarray], cand: list[np.ndarray], target: Target
) -> OutputFigure:
    """Each part of a concatenated output measured with its own role; the worst one (the
    furthest over its limit) is the output's figure, the others go to its detail."""
    if any(r.shape != c.shape for r, c in zip(ref, cand, strict=True)):
        return _measured(dataclasses.replace(role, parts=()), ref, cand, target)
    figures = []
    for part in role.parts:
        index = (slice(None),) * role.part_axis + (slice(part.start, part.stop),)
        sub = Role(role.name, part.role, part.why, feeds=role.feeds)
        figures.append(
            (part, _measured(sub, [r[index] for r in ref], [c[index] for c in cand], target))
        )
    worst_part, worst = max(figures, key=lambda pf: _over(pf[1]))
    detail = dict(worst.detail)
    for part, figure in figures:
        detail[f"part_{part.start}_{part.stop}_{figure.unit}"] = figure.value
    measure = (
        f"{worst.measure}, parts {worst_part.start}:{worst_part.stop} of axis {role.part_axis}"
    )
    return dataclasses.replace(worst, role=role.role, measure=measure, detail=detail)


def _over(figure: OutputFigure) -> float:
    """How far a figure is past its limit, comparable across units (<= 1: within it)."""
    if figure.unit == "dB":
        value = figure.value if not math.isnan(figure.value) else -math.inf
        return 10 ** ((figure.limit - min(value, 1e6)) / 20.0)
    return figure.value / figure.limit if figure.limit > 0 else float(figure.value > 0)


def _measured(
    role: Role, ref: list[np.ndarray], cand: list[np.ndarray], target: Target
) -> OutputFigure:
    figure = _decided(role, ref, cand, target)
    if role.role in ("classifier", "tagger") and figure.unit == "points" and figure.passed:
        kept = _kept_rows_sqnr(ref, cand)
        if kept < SCORES_FLOOR_DB:
            detail = dict(figure.detail, kept_rows_sqnr_db=kept)
            measure = "SQNR of the rows that kept their decision (too far to vouch for it)"
            return dataclasses.replace(
                figure, measure=measure, value=kept, limit=SCORES_FLOOR_DB, unit="dB", detail=detail
            )
    return figure


def _kept_rows_sqnr(ref: list[np.ndarray], cand: list[np.ndarray]) -> float:
    """SQNR of the class probabilities (softmax of logits) of the rows whose argmax did not
    change (inf when none)."""
    kept_ref, kept_cand = [], []
    for r, c in zip(ref, cand, strict=True):
        if r.ndim == 0 or r.shape[-1] < 2:
            continue
        a, b = (probabilities(x.reshape(-1, x.shape[-1])) for x in (r, c))
        kept_ref.append(a[a.argmax(-1) == b.argmax(-1)])
        kept_cand.append(b[a.argmax(-1) == b.argmax(-1)])
    return sqnr_db(kept_ref, kept_cand) if kept_ref else math.inf


def _decided(
    role: Role, ref: list[np.ndarray], cand: list[np.ndarray], target: Target
) -> OutputFigure:
    floating = ref[0].dtype.kind in "fc"
    detail = {"cosine": cosine(ref, cand), "sqnr_db": sqnr_db(ref, cand)} if floating else {}
    if any(r.shape != c.shape for r, c in zip(ref, cand, strict=True)):
        return OutputFigure(
            role.name, role.role, "outputs of another shape", 100.0, target.error, "points", 0
        )
    if role.role in ("classifier", "tagger") and role.rows is not None:
        return _estimated(role, role.rows, ref, cand, target, detail)
    if role.role in ("classifier", "tagger"):
        where = " per position" if role.role == "tagger" else ""
        return _points(
            role, f"expected top-1 decisions lost{where}", top1_loss(ref, cand), target, detail
        )
    if role.role == "ctc" and role.rows is not None:
        return _estimated_strings(role, role.rows, ref, cand, target, detail)
    if role.role == "ctc":
        return _points(
            role,
            "expected decoded sequences lost",
            ctc_loss(ref, cand, role.time_axis, role.batch_axis, role.blank),
            target,
            detail,
        )
    if role.role == "exact":
        same, total = exact_agreement(ref, cand)
        return _points(
            role, "elements that differ", (total - same, total - same, total), target, detail
        )
    if role.role == "embedding":
        counts = neighbour_loss(np.concatenate(ref), np.concatenate(cand))
        if counts[2]:
            return _points(role, "expected nearest neighbours lost", counts, target, detail)
    if role.role == "map":
        iou, positive = map_iou(ref, cand)
        detail["positive_share"] = positive
        if 0.01 <= positive <= 0.99:
            decided = sum(int(np.count_nonzero(r > MAP_THRESHOLD)) for r in ref)
            measure = f"map area lost (1 - IoU at {MAP_THRESHOLD})"
            value = 100.0 * (1.0 - iou)
            return OutputFigure(
                role.name, role.role, measure, value, target.error, "points", decided, detail
            )
        detail["no_decisions_at_threshold"] = 1.0  # the reference is all below or all above
    value = detail.get("sqnr_db", math.inf)
    limit = target.regression_db
    return OutputFigure(role.name, role.role, "SQNR", value, limit, "dB", 0, detail, role.feeds)


def _estimated(
    role: Role,
    evidence: RowEvidence,
    ref: list[np.ndarray],
    cand: list[np.ndarray],
    target: Target,
    detail: dict[str, float],
) -> OutputFigure:
    """Top-1 decisions changed on the check's real rows, or the margin estimate over every
    calibration row when that is larger (onnxslim.margins): with 8 check rows one flip is
    12.5 points and none says little."""
    masks = evidence.real if len(evidence.real) == len(ref) else (None,) * len(ref)
    # per feed: rows of attention over a feed's own tokens differ in length between feeds
    a = [rows_of(r, m) for r, m in zip(ref, masks, strict=True)]
    b = [rows_of(c, m) for c, m in zip(cand, masks, strict=True)]
    total = sum(len(x) for x in a)
    changed = sum(
        int(np.count_nonzero(x.argmax(-1) != y.argmax(-1))) for x, y in zip(a, b, strict=True)
    )
    moves = [margin_moves(x, y) for x, y in zip(a, b, strict=True) if len(x)]
    estimate, mean, spread = estimated_flips(
        np.concatenate(moves) if moves else np.zeros(0), evidence.margins
    )
    lost, _, _ = top1_loss(a, b) if total else (0.0, 0, 0)
    where = " per real position" if role.role == "tagger" else ""
    measure = f"top-1 decisions changed{where} (counted, or estimated from margins if more)"
    detail = dict(detail, margin_rows=float(len(evidence.margins)))
    return _counted_or_estimated(
        role, measure, (lost, changed, total), (estimate, mean, spread), target, detail
    )


def _estimated_strings(
    role: Role,
    evidence: RowEvidence,
    ref: list[np.ndarray],
    cand: list[np.ndarray],
    target: Target,
    detail: dict[str, float],
) -> OutputFigure:
    """Decoded strings changed on the check feeds, or the estimate from the original's
    frame margins on every calibration string when that is larger (onnxslim.margins)."""
    counts = ctc_loss(ref, cand, role.time_axis, role.batch_axis, role.blank)
    frames = [
        (
            string_frames(r, role.time_axis, role.batch_axis),
            string_frames(c, role.time_axis, role.batch_axis),
        )
        for r, c in zip(ref, cand, strict=True)
    ]
    moves = [
        margin_moves(r.reshape(-1, r.shape[-1]), c.reshape(-1, c.shape[-1])) for r, c in frames
    ]
    estimate = estimated_string_changes(
        np.concatenate(moves) if moves else np.zeros(0), evidence.margins
    )
    measure = "decoded sequences changed (counted, or estimated from frame margins if more)"
    detail = dict(detail, margin_strings=float(len(evidence.margins)))
    return _counted_or_estimated(role, measure, counts, estimate, target, detail)


def _counted_or_estimated(
    role: Role,
    measure: str,
    counts: tuple[float, int, int],
    estimate: tuple[float, float, float],
    target: Target,
    detail: dict[str, float],
) -> OutputFigure:
    """The figure of decisions changed: counted on the check (`counts`: expected lost,
    changed, total) or `estimate`d from the margins (points, mean and spread of the margin
    moves), the larger."""
    lost, changed, total = counts
    counted = 100.0 * changed / total if total else 0.0
    points, mean, spread = estimate
    detail = dict(
        detail,
        changed=float(changed),
        disagreement_points=counted,
        estimated_points=points,
        expected_points=100.0 * lost / total if total else 0.0,
        margin_shift=mean,
        margin_spread=spread,
    )
    value = max(counted, points)
    return OutputFigure(role.name, role.role, measure, value, target.error, "points", total, detail)


def _points(
    role: Role,
    measure: str,
    counts: tuple[float, int, int],
    target: Target,
    detail: dict[str, float],
) -> OutputFigure:
    lost, changed, total = counts
    value = 100.0 * lost / total if total else 0.0
    detail = dict(
        detail,
        changed=float(changed),
        disagreement_points=100.0 * changed / total if total else 0.0,
    )
    return OutputFigure(role.name, role.role, measure, value, target.error, "points", total, detail)


def _json(value: float) -> float | str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value
