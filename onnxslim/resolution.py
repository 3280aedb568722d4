"""Decoded sequences too few to resolve the target, in a search: held to SQNR instead.

A CTC figure counts decoded strings. On the held-out quarter of 32 calibration feeds
that is 8 strings, one of them 12.5 points: "0.00 points lost" then says only that none
of 8 changed. A search for the most compression stops where that check still passes,
and a check that coarse passes far too late: `prune` on task_crnn reached 80 % with
0 of 8 held-out strings changed, and read 15.2 % of 256 other rendered strings
differently (exit 0); its logits were at 13 dB SQNR. The SQNR that costs one point was
calibrated on CTC logits (REGRESSION_ERROR_PER_POINT, the captcha reader's: 36 dB for
0.67 points, 24 dB for 5.8), so a CTC output whose strings cannot resolve the target is
held to that SQNR, like an output without decisions: in the searches of prune and
cluster, run's back-off, and quantize's fix loop and final figure (int8 is well above it
where measured: captcha_crnn 35.9 dB, task_crnn 39.3 dB on their held-out feeds; the
captcha reader pruned 50 % was at 20.3 dB and read 9.4 % of 64 captchas differently).

Classifiers are left to their decisions: their logits keep the decisions at low SQNR
(task_mobilenetv3 clustered: 7.9 dB, 0.8 points), so SQNR would refuse what they can bear.
Their few check rows are resolved instead by the original's margins on every calibration
feed (onnxslim.margins), which `target_roles` attaches to classifier and tagger roles.
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
    top_margin,
)
from onnxslim.runtime import Session

FIT_FEEDS = 64  # calibration feeds the original runs on for its margins (besides the check)


def sequences(role: Role, reference: Sequence[Mapping[str, np.ndarray]]) -> int:
    """How many decoded strings a CTC output gives on the check feeds."""
    return sum(int(np.asarray(o[role.name]).shape[role.batch_axis]) for o in reference)


def resolve_coarse(
    roles: Mapping[str, Role],
    reference: Sequence[Mapping[str, np.ndarray]],
    target: Target,
) -> dict[str, Role]:
    """`roles`, with each CTC output whose strings cannot resolve `target` (one string is
    worth more than the target's points) turned into a regression held to SQNR."""
    result = dict(roles)
    if target.error <= 0:
        return result
    for name, role in roles.items():
        if role.role != "ctc" or not reference or name not in reference[0]:
            continue
        count = sequences(role, reference)
        if count and 100.0 / count > target.error:
            why = (
                f"ctc over {count} strings, one is {100.0 / count:.1f} points: too coarse for "
                f"the {target.error:g}-point target, held to SQNR"
            )
            result[name] = dataclasses.replace(role, role="regression", reason=why)
    return result


def target_roles(
    model: ir.Model,
    reference: Sequence[Mapping[str, np.ndarray]],
    target: Target,
    *,
    feeds: Sequence[Feed] | None = None,
    fit: Iterable[Feed] | None = None,
) -> dict[str, Role]:
    """The roles the accuracy target holds `model`'s outputs to: detected on the original's
    outputs `reference` (on the check `feeds`), CTC outputs too coarse to resolve `target`
    held to SQNR, classifiers and taggers given the margins of the original on the check
    and the first FIT_FEEDS `fit` feeds (onnxslim.margins)."""
    roles = resolve_coarse(detect_roles(model, reference), reference, target)
    return with_margins(model, roles, reference, feeds, fit)


def with_margins(
    model: ir.Model,
    roles: Mapping[str, Role],
    reference: Sequence[Mapping[str, np.ndarray]],
    feeds: Sequence[Feed] | None,
    fit: Iterable[Feed] | None,
) -> dict[str, Role]:
    """`roles`, each classifier and tagger with its RowEvidence: the original's top-1
    margins on the check rows and on `fit`'s (the original runs once on those), only real
    positions of a tagger (padding_masks)."""
    result = dict(roles)
    decided = [n for n, r in roles.items() if r.role in ("classifier", "tagger")]
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
            margins[name].append(top_margin(rows_of(output[name], mask)))
    if fit is not None:  # one feed at a time: a model's outputs over 64 feeds can be large
        session = Session(model)
        for feed in islice(iter(fit), FIT_FEEDS):
            output = session.run(feed)
            for name in decided:
                mask = real_positions(paddings[name], feed, output[name], roles[name].time_axis)
                margins[name].append(top_margin(rows_of(output[name], mask)))
    for name in decided:
        values = np.concatenate([m for m in margins[name] if m.size] or [np.zeros(0)])
        if len(values) > MARGIN_ROWS:
            values = values[np.linspace(0, len(values) - 1, MARGIN_ROWS).astype(int)]
        evidence = RowEvidence(values, checks[name], roles[name].time_axis)
        result[name] = dataclasses.replace(roles[name], rows=evidence)
    return result


def _padding(
    role: Role,
    feeds: Sequence[Feed] | None,
    outputs: Sequence[Mapping[str, np.ndarray]],
) -> Padding | None:
    """The input marking a tagger's padding on the check feeds (None: every row counts)."""
    if role.role != "tagger" or not feeds or len(feeds) != len(outputs):
        return None
    return find_padding(feeds, [np.asarray(o[role.name]) for o in outputs], role.time_axis)
