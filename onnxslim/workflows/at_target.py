"""The accuracy target as a yes/no a search can ask many times: the original run once.

prune and cluster search for the most compression that meets the target; every
candidate is judged by the same measure the final report uses (onnxslim.agreement on
the held-out feeds of workflows/heldout.py), so a search never trusts a proxy. The
original's outputs and the outputs' roles are computed once; a candidate costs one
ORT session on the held-out feeds. Decision outputs a model without weights still gets
right (onnxslim.blindness) are held to SQNR instead; classifiers, taggers and CTC outputs,
whose held-out decisions are too few to resolve the target, are also judged by the
original's margins on the fit feeds (onnxslim.resolution).
"""

from __future__ import annotations

import onnx_ir as ir

from onnxslim.agreement import Assessment, Target, assess
from onnxslim.blindness import unblind
from onnxslim.resolution import target_roles
from onnxslim.runtime import Session
from onnxslim.workflows.heldout import CheckData, check_target, fit_feeds


class TargetCheck:
    """`check(candidate)`: the candidate's Assessment against the original on `data.check`."""

    def __init__(self, original: ir.Model, data: CheckData, target: Target) -> None:
        self.data, self.target = data, target
        session = Session(original)
        self.reference = [session.run(feed) for feed in data.check]
        roles = target_roles(
            original, self.reference, target, feeds=data.check, fit=fit_feeds(original, data)
        )
        self.roles = unblind(original, data.check, self.reference, roles, target)
        self.calls = 0

    def __call__(self, candidate: ir.Model) -> Assessment:
        self.calls += 1
        session = Session(candidate)
        outputs = [session.run(feed) for feed in self.data.check]
        return assess(
            self.reference,
            outputs,
            target=self.target,
            roles=self.roles,
            feeds=self.data.description,
        )


def final_target(
    accept: object,
    original: ir.Model,
    result: ir.Model,
    split: CheckData | None,
    target: Target | None,
) -> Assessment | None:
    """The result's figure against the target for the report: through the search's own
    TargetCheck (`accept`, the run data's) when there was a search (the original's outputs
    already computed), else both models run on the held-out feeds; None without a target
    or feeds."""
    if isinstance(accept, TargetCheck):
        return accept(result)
    if target is not None and split is not None:
        return check_target(original, result, split, target)
    return None
