"""Decision outputs the accuracy target cannot see through: decisions a model without
weights still makes.

A decision figure counts changed argmaxes. Where the inputs, not the weights, decide the
argmax, it vouches for any model: rxnmap's `attention` rows attend most to their first
token whatever the weights (p ~ 0.35), and its product-to-reactant argmaxes follow the
distance bias; with every MatMul weight of the transformer zeroed, 98.5 % of the row
argmaxes and all 119 product-to-reactant ones stayed, 0.05 points "lost". Pruning
"reached" 98.7 % there.

So once per check, the original runs with every float weight of at least
NULL_MIN_ELEMENTS values zeroed (the null model). A decision output (classifier,
tagger, ctc) whose decisions the null model keeps within the target is blind: it is held
to the SQNR of an output without decisions instead (regression, 34 dB at the default
target; docs/accuracy-target.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxslim.agreement import Role, Target, assess
from onnxslim.feeds import Feed
from onnxslim.runtime import Session

NULL_MIN_ELEMENTS = 1024
DECISION_ROLES = ("classifier", "tagger", "ctc")


def null_model(model: ir.Model) -> ir.Model:
    """A copy of `model` with every float initializer of NULL_MIN_ELEMENTS values or more zeroed."""
    copy = model.clone()
    for name, value in copy.graph.initializers.items():
        tensor = value.const_value
        if tensor is None or tensor.size < NULL_MIN_ELEMENTS:
            continue
        array = tensor.numpy()
        if array.dtype.kind == "f":
            value.const_value = ir.Tensor(np.zeros_like(array), name=name)
    return copy


def unblind(
    model: ir.Model,
    feeds: Sequence[Feed],
    reference: Sequence[Mapping[str, np.ndarray]],
    roles: Mapping[str, Role],
    target: Target,
) -> dict[str, Role]:
    """`roles`, with each blind decision output turned into a regression (see the module doc)."""
    # the null model's decisions are counted as they are (no margin estimate: its errors
    # are as large as the logits, so any estimate would call every output informative)
    decisions = {
        n: dataclasses.replace(r, rows=None) for n, r in roles.items() if r.role in DECISION_ROLES
    }
    if not decisions or not feeds:
        return dict(roles)
    try:
        session = Session(null_model(model))
        outputs = [session.run(feed) for feed in feeds]
    except Exception:  # a null model that does not run cannot keep decisions
        return dict(roles)
    assessment = assess(
        [{n: o[n] for n in decisions} for o in reference], outputs, target=target, roles=decisions
    )
    result = dict(roles)
    for figure in assessment.figures:
        floored = figure.unit == "dB" and "kept_rows_sqnr_db" in figure.detail
        if figure.passed or floored:  # the decisions alone passed (the floor aside)
            why = (
                f"{roles[figure.name].role} whose decisions a model with its weights zeroed "
                f"keeps ({figure.detail.get('disagreement_points', 0.0):.1f} points differ): "
                "held to SQNR"
            )
            result[figure.name] = dataclasses.replace(
                roles[figure.name], role="regression", reason=why
            )
    return result
