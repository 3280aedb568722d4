"""Decisions too few on the check feeds to resolve the target: resolved by margins.

The target is checked on the held-out quarter of 32 calibration feeds: 8 decisions of a
classifier, 8 decoded strings of a CTC reader, one of them 12.5 points, so "none
changed" cannot vouch for one point. A search for the most compression stops where such
a check still passes, far too late: `prune` on task_crnn reached 80 % with 0 of its 8
held-out strings changed and read 15.2 % of 256 other rendered strings differently;
task_mobilenetv3 pruned 70 % changed 4.7 % of 128 top-1s (both exit 0).

So `target_roles` gives classifiers, taggers and CTC outputs the original's margins on
the check and on the first FIT_FEEDS fit feeds (the float model's margins are not biased
by fitting), and agreement estimates the decisions a candidate changes from how the
check rows' margins moved (onnxslim.margins): top-1 flips of rows, or decoded strings
any of whose frames flip. SQNR was the rule for CTC before (34 dB): it passed the
captcha reader's int8 at 35.9 dB, which reads 4.3 % of 256 captchas differently; the
frame estimate says 4.05.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from itertools import islice

import numpy as np
import onnx_ir as ir

from onnxslim.agreement import Role, Target, detect_roles
from onnxslim.feeds import Feed
from onnxslim.margins import (
    MARGIN_ROWS,
    Padding,
    RowEvidence,
    find_padding,
    real_positions,
    rows_of,
    string_frames,
    string_margins,
    top_margin,
)
from onnxslim.runtime import Session

MARGIN_STRINGS = 1024  # decoded strings whose frame margins a CTC output keeps
FIT_FEEDS = 64  # calibration feeds the original runs on for its margins (besides the check)


def target_roles(
    model: ir.Model,
    reference: Sequence[Mapping[str, np.ndarray]],
    target: Target,
    *,
    feeds: Sequence[Feed] | None = None,
    fit: Iterable[Feed] | None = None,
) -> dict[str, Role]:
    """The roles the accuracy target holds `model`'s outputs to: detected on the original's
    outputs `reference` (on the check `feeds`), classifiers, taggers and CTC outputs given
    the margins of the original on the check and the first FIT_FEEDS `fit` feeds
    (onnxslim.margins); every `target` gets the same evidence."""
    return with_margins(model, detect_roles(model, reference), reference, feeds, fit)


def with_margins(
    model: ir.Model,
    roles: Mapping[str, Role],
    reference: Sequence[Mapping[str, np.ndarray]],
    feeds: Sequence[Feed] | None,
    fit: Iterable[Feed] | None,
) -> dict[str, Role]:
    """`roles`, each classifier, tagger and CTC output with its RowEvidence: the original's
    top-1 margins on the check rows and on `fit`'s (the original runs once on those), only
    real positions of a tagger (find_padding), frames by string for CTC."""
    result = dict(roles)
    decided = [n for n, r in roles.items() if r.role in ("classifier", "tagger", "ctc")]
    if not decided or not reference:
        return result
    margins: dict[str, list[np.ndarray]] = {name: [] for name in decided}
    checks: dict[str, tuple[np.ndarray | None, ...]] = {}
    paddings: dict[str, Padding | None] = {}
    for name in decided:
        paddings[name] = _padding(roles[name], feeds, reference)
        given = feeds if feeds is not None and len(feeds) == len(reference) else None
        checks[name] = tuple(
            real_positions(paddings[name], f, o[name], roles[name].time_axis)
            for f, o in zip(given or [{}] * len(reference), reference, strict=True)
        )
        for output, mask in zip(reference, checks[name], strict=True):
            margins[name].append(_margins(roles[name], output[name], mask))
    if fit is not None:  # one feed at a time: a model's outputs over 64 feeds can be large
        session = Session(model)
        for feed in islice(iter(fit), FIT_FEEDS):
            output = session.run(feed)
            for name in decided:
                mask = real_positions(paddings[name], feed, output[name], roles[name].time_axis)
                margins[name].append(_margins(roles[name], output[name], mask))
    for name in decided:
        values = np.concatenate([m for m in margins[name] if m.size] or [np.zeros(0)])
        keep = MARGIN_STRINGS if roles[name].role == "ctc" else MARGIN_ROWS
        if len(values) > keep:
            values = values[np.linspace(0, len(values) - 1, keep).astype(int)]
        evidence = RowEvidence(values, checks[name], roles[name].time_axis)
        result[name] = dataclasses.replace(roles[name], rows=evidence)
    return result


def _margins(role: Role, output: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The original's top-1 margins in one feed's output: per row (classifier, real
    positions of a tagger), or [strings, T] per frame of each decoded string (CTC)."""
    if role.role == "ctc":
        return string_margins(string_frames(output, role.time_axis, role.batch_axis))
    return top_margin(rows_of(output, mask))


def _padding(
    role: Role,
    feeds: Sequence[Feed] | None,
    outputs: Sequence[Mapping[str, np.ndarray]],
) -> Padding | None:
    """The input marking a tagger's padding on the check feeds (None: every row counts)."""
    if role.role != "tagger" or not feeds or len(feeds) != len(outputs):
        return None
    return find_padding(feeds, [np.asarray(o[role.name]) for o in outputs], role.time_axis)
