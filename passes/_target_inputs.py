"""What the workflow hands a pass that searches for the most compression meeting the accuracy
target (allocation=target: prune-magnitude, cluster-weights). Never recipe options or CLI
flags: internal fields, kept out of equality, hashing and the catalogue."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import onnx_ir as ir

from onnxslim.agreement import Assessment
from onnxslim.feeds import Feed
from onnxslim.passes._options import internal_field

# A candidate model -> its assessment against the accuracy target (the workflow's check).
Accept = Callable[[ir.Model], Assessment]


@dataclasses.dataclass(frozen=True, kw_only=True)
class TargetInputs:
    accept: Accept | None = internal_field(None, "Candidate model -> accuracy-target assessment.")
    requested: bool = internal_field(
        False,
        "allocation=target: the amount (sparsity, bits) was asked for: it bounds the search, "
        "and a miss writes the model at the request (and fails).",
    )
    probe_feeds: Sequence[Feed] | None = internal_field(
        None, "Feeds for the sensitivities when calib is absent."
    )
