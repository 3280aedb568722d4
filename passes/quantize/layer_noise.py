"""Which quantized layers add the most error: one instrumented run of both models.

Why its own module: ranking layers by a full evaluation each (leave one out) costs
one ORT session and one pass over the data per layer. Instead, the float model and
the int8 model both expose every quantized layer's output (and input) as extra
graph outputs and run once on the held-out feeds; each layer's score is the
relative noise power it adds: the error of its output over float minus the worst
error already on its inputs. The fix loop (repair.py) measures the real output
error; this order only decides which layers it tries first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxslim.feeds import Feed
from onnxslim.runtime import Session

from .plan import QuantPlan

RANKED_ROLES = ("compute", "island", "embedding")
_GROUP = 48  # tensors fetched per session: bounds the memory of one run


def layer_tensors(model: ir.Model, plan: QuantPlan) -> dict[str, tuple[list[str], str]]:
    """Main-graph quantized layers: name -> (activation inputs, output), by tensor name."""
    layers: dict[str, tuple[list[str], str]] = {}
    for node in model.graph:
        node_plan = plan.nodes.get(node.name or "")
        if node_plan is None or node_plan.role not in RANKED_ROLES or not node.outputs:
            continue
        values = [node.inputs[i] for i in node_plan.activations if i < len(node.inputs)]
        inputs = [v.name or "" for v in values if v is not None]
        layers[node.name or ""] = ([n for n in inputs if n], node.outputs[0].name or "")
    return layers


def relative_noise(
    reference: ir.Model, candidate: ir.Model, names: Iterable[str], feeds: Sequence[Feed]
) -> dict[str, float]:
    """Per tensor: sum (candidate - reference)^2 / sum reference^2 over `feeds`.

    Tensors absent from either model's main graph, or not float, are left out.
    """
    wanted = [n for n in dict.fromkeys(names) if n]
    ref_values = _float_values(reference)
    cand_values = _float_values(candidate)
    common = [n for n in wanted if n in ref_values and n in cand_values]
    noise: dict[str, float] = {}
    for start in range(0, len(common), _GROUP):
        group = common[start : start + _GROUP]
        ref_session = Session(exposing(reference, group, ref_values))
        cand_session = Session(exposing(candidate, group, cand_values))
        signal = dict.fromkeys(group, 0.0)
        error = dict.fromkeys(group, 0.0)
        for feed in feeds:
            a = ref_session.run(feed, outputs=group)
            b = cand_session.run(feed, outputs=group)
            for name in group:
                x = np.asarray(a[name], dtype=np.float64)
                y = np.asarray(b[name], dtype=np.float64)
                if x.shape != y.shape:
                    error[name] = np.inf
                    continue
                signal[name] += float(np.sum(x * x))
                error[name] += float(np.sum((x - y) ** 2))
        for name in group:
            noise[name] = error[name] / signal[name] if signal[name] > 0 else error[name]
    return noise


def rank_layers(
    layers: Mapping[str, tuple[list[str], str]], noise: Mapping[str, float]
) -> list[tuple[str, float]]:
    """(layer, noise it adds) for every layer, the largest first."""
    rows = []
    for name, (inputs, output) in layers.items():
        out = noise.get(output)
        if out is None:
            continue
        before = max((noise.get(i, 0.0) for i in inputs), default=0.0)
        rows.append((name, max(out - before, 0.0), out))
    # Ties (layers that add no noise of their own: a Sigmoid squashing it) by the noise
    # they carry: the later in the chain, the less it has left to be attenuated.
    rows.sort(key=lambda row: (-row[1], -row[2]))
    return [(name, added) for name, added, _ in rows]


def _float_values(model: ir.Model) -> dict[str, ir.Value]:
    values: dict[str, ir.Value] = {}  # graph inputs are equal in both: never exposed
    for node in model.graph:
        for value in node.outputs:
            if value.name and value.dtype == ir.DataType.FLOAT:
                values[value.name] = value
    return values


def exposing(
    model: ir.Model, names: Iterable[str], values: Mapping[str, ir.Value] | None = None
) -> ir.Model:
    """A clone of `model` with the float tensors `names` (computed in its main graph, and in
    `values` when given) added to its graph outputs."""
    clone = model.clone()
    by_name = _float_values(clone)
    present = {v.name for v in clone.graph.outputs}
    for name in dict.fromkeys(names):
        if name not in present and name in by_name and (values is None or name in values):
            clone.graph.outputs.append(by_name[name])
            present.add(name)
    return clone
