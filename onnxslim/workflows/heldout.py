"""Held-out feeds and the accuracy-target check that quantize, prune and cluster share.

A compressed model measured on the feeds that set its ranges or refit its weights
looks better than it is on new inputs. So when the user gives only calibration
data, its last quarter (at least HELD_OUT_MINIMUM feeds) is held back: the pass
sees the rest, and the target (onnxslim.agreement) is measured on what it never saw.
Evaluation data (`--data` / `--eval`) is held out already and is used as given.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxslim.agreement import Assessment, Target, assess
from onnxslim.calibration import open_feeds
from onnxslim.errors import DataError
from onnxslim.evaluation import LabelledFeeds
from onnxslim.feed_search import plan_feeds
from onnxslim.feeds import Feed
from onnxslim.resolution import target_roles
from onnxslim.runtime import Session

HELD_OUT_FRACTION = 0.25
HELD_OUT_MINIMUM = 8
HELD_OUT_MAXIMUM = 256  # enough for a figure to 0.4 points; the rest still calibrates
CHECK_LIMIT = 64  # feeds of evaluation data the target is measured on
GENERATED = 8


def held_out_count(count: int) -> int:
    """How many of `count` calibration feeds to hold back: the last quarter, at least
    HELD_OUT_MINIMUM and at most HELD_OUT_MAXIMUM; none below 2 x HELD_OUT_MINIMUM
    (the pass needs feeds too)."""
    if count < 2 * HELD_OUT_MINIMUM:
        return 0
    return min(HELD_OUT_MAXIMUM, max(HELD_OUT_MINIMUM, math.ceil(HELD_OUT_FRACTION * count)))


class FirstFeeds:
    """The first `count` feeds of a data source, re-readable (what the pass fits on).

    Reading goes through open_feeds on the original source, so a bad sample is
    reported with its file and index.
    """

    def __init__(self, source: Any, model: ir.Model, count: int) -> None:
        self.source, self.model, self.count = source, model, count

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Feed]:
        stream = open_feeds(self.source, self.model, extra="ignore")
        return islice(iter(stream), self.count)


@dataclass
class CheckData:
    """What the pass fits on, and what the target is measured on."""

    fit: Any  # calibration source for the pass (the user's, or its first part)
    check: list[Feed]  # feeds the target is measured on
    description: str  # where `check` comes from, for the report
    held_back: int = 0  # calibration feeds kept from the pass


def split_data(model: ir.Model, calib: Any, data: Any, *, hold_back: bool = True) -> CheckData:
    """Evaluation data as given (a LabelledFeeds the workflow read: its first CHECK_LIMIT
    feeds); else the last quarter of `calib` held back; else generated.

    With fewer than 2 x HELD_OUT_MINIMUM calibration feeds nothing can be spared:
    the check runs on the calibration feeds themselves and says so.
    """
    if isinstance(data, LabelledFeeds):  # the workflow read it once: its first feeds
        check = data.feeds[:CHECK_LIMIT]
        return CheckData(calib, check, f"{data.source} ({len(check)} feeds)")
    if data is not None:
        stream = open_feeds(data, model, limit=CHECK_LIMIT, extra="ignore")
        check = list(stream)
        return CheckData(calib, check, f"{stream.description} ({len(check)} feeds)")
    if calib is None:
        # sizes the original model runs on (a detector on a 1x1 image, a declared
        # zero-size input fed 1 row: all-ones feeds made the check itself fail, exit 3)
        plan = plan_feeds(model, GENERATED, seed=0)
        if plan.feeds is None:
            raise DataError(f"cannot measure the target: {plan.problem}")
        return CheckData(None, plan.feeds, f"{plan.description}: no data given")
    stream = open_feeds(calib, model, extra="ignore")
    # A stream the workflow opened (FeedStream) names its file, not "given FeedStream".
    stream.description = getattr(calib, "description", None) or stream.description
    count = stream.count
    if not hold_back:
        check = list(islice(iter(stream), CHECK_LIMIT))
        return CheckData(calib, check, f"{stream.description} ({len(check)} calibration feeds)")
    fit: Any
    if count is None:  # a one-pass reader: read it once, hand the pass a list
        feeds = list(stream)
        kept = len(feeds) - held_out_count(len(feeds))
        fit, held = feeds[:kept], feeds[kept:]
    else:
        kept = count - held_out_count(count)
        held = list(islice(iter(stream), kept, None))
        fit = FirstFeeds(calib, model, kept) if held else calib
    if not held:
        check = list(islice(iter(open_feeds(fit, model, extra="ignore")), CHECK_LIMIT))
        return CheckData(
            fit,
            check,
            f"{stream.description}: the {len(check)} calibration feeds themselves "
            f"(fewer than {2 * HELD_OUT_MINIMUM}: none held back)",
        )
    return CheckData(
        fit,
        held,
        f"{stream.description}: last {len(held)} of {len(held) + len(fit)} feeds, "
        "held back from calibration",
        held_back=len(held),
    )


def check_target(
    original: ir.Model,
    candidate: ir.Model,
    data: CheckData,
    target: Target,
    roles: Mapping[str, Any] | None = None,
) -> Assessment:
    """Both models on `data.check` (ONNX Runtime), every output held to `target`;
    classifiers, taggers and CTC outputs also judged by the original's margins on the fit
    feeds (onnxslim.resolution)."""
    reference = _run(original, data.check)
    result = _run(candidate, data.check)
    if roles is None:
        roles = target_roles(
            original, reference, target, feeds=data.check, fit=fit_feeds(original, data)
        )
    return assess(reference, result, target=target, roles=roles, feeds=data.description)


def fit_feeds(model: ir.Model, data: CheckData) -> Iterator[Feed] | None:
    """The feeds the pass fitted on, for the original's margins (None: generated feeds)."""
    if data.fit is None or data.fit is data.check:
        return None
    return iter(open_feeds(data.fit, model, extra="ignore"))


def _run(model: ir.Model, feeds: list[Feed]) -> list[dict[str, np.ndarray]]:
    session = Session(model)
    return [session.run(feed) for feed in feeds]
