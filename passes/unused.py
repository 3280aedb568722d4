"""Everything unused: dead nodes, initializers, functions, opsets, control-flow values.

Covers the main graph, every If / Loop / Scan body (nested) and local functions.
`RemoveInitializerInputs` undoes the legacy listing of every weight as a graph input.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import onnx_ir as ir
import onnx_ir.passes.common as common

from onnxslim.graphs import iter_graphs

_MAX_SWEEPS = 4

GraphLike = ir.Graph | ir.Function


@dataclasses.dataclass(frozen=True, kw_only=True)
class RemoveUnused(ir.passes.InPlacePass):
    """Remove dead nodes, unused initializers, functions, opsets and subgraph inputs/outputs.

    Besides what onnx_ir's dead-code pass does (nodes no output depends on, main
    graph initializers, unused optional outputs), this removes unused initializers
    of subgraphs and the control-flow values nothing reads:
      - an If output nobody uses, with both branches' matching output;
      - a Loop / Scan output nobody uses: a scan output goes with its body output;
        a loop-carried (state) value also goes with its initial value and its body
        input, when the body needs that input for nothing else;
      - a Scan input the body never reads (one scan input is always kept).
    """

    lossless: ClassVar[bool] = True

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for _ in range(_MAX_SWEEPS):
            changed = common.RemoveUnusedNodesPass()(model).modified
            changed |= _remove_unused_subgraph_initializers(model)
            changed |= _remove_unused_control_flow_values(model)
            if not changed:
                break
            modified = True
        modified |= common.RemoveUnusedFunctionsPass()(model).modified
        modified |= common.RemoveUnusedOpsetsPass()(model).modified
        return ir.passes.PassResult(model, modified)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RemoveInitializerInputs(ir.passes.InPlacePass):
    """Stop listing weights as graph inputs (IR >= 4), so they can be folded as constants.

    Legacy exporters (keep_initializers_as_inputs) list every initializer as a graph
    input too. ONNX Runtime then treats each weight as an input the caller may
    override and folds none of them (it warns and points to its own
    remove_initializer_from_input tool). Only that signature is undone: when every
    initializer is listed, none stays listed; the data inputs and outputs do not
    change, and overriding a weight at run time, which deployed models do not do, is
    what goes. When only some initializers are inputs, someone chose them as inputs
    with defaults (a temperature, a threshold): they stay. Below IR 4 the listing is
    required, and the model is left alone.
    """

    lossless: ClassVar[bool] = True

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        listed = [v for v in graph.inputs if v.name in graph.initializers]
        if model.ir_version < 4 or not listed or len(listed) != len(graph.initializers):
            return ir.passes.PassResult(model, False)
        kept = [v for v in graph.inputs if v.name not in graph.initializers]
        graph.inputs.clear()
        graph.inputs.extend(kept)
        return ir.passes.PassResult(model, True)


def _remove_unused_subgraph_initializers(model: ir.Model) -> bool:
    changed = False
    for graph in iter_graphs(model):
        if graph is model.graph or not isinstance(graph, ir.Graph):
            continue
        for name, value in list(graph.initializers.items()):
            if not value.uses() and not value.is_graph_output() and not value.is_graph_input():
                del graph.initializers[name]
                changed = True
    return changed


def _remove_unused_control_flow_values(model: ir.Model) -> bool:
    changed = False
    for graph in list(iter_graphs(model)):
        for node in list(graph):
            if node.domain != "" or node.graph is None:
                continue
            if node.op_type == "If":
                changed |= _trim_if(graph, node)
            elif node.op_type == "Loop":
                changed |= _trim_loop(graph, node)
            elif node.op_type == "Scan" and (node.version or model.opset_imports.get("", 1)) >= 9:
                changed |= _trim_scan(graph, node)
    return changed


def _unused(value: ir.Value) -> bool:
    return not value.uses() and not value.is_graph_output()


def _body(node: ir.Node, name: str) -> ir.Graph | None:
    attr = node.attributes.get(name)
    if attr is None or attr.is_ref() or attr.type != ir.AttributeType.GRAPH:
        return None
    return attr.as_graph()


def _live_values(body: ir.Graph, outputs: list[ir.Value]) -> set[ir.Value]:
    """Values the given body outputs depend on (nested subgraphs' reads included)."""
    live: set[ir.Value] = set()
    stack = list(outputs)
    while stack:
        value = stack.pop()
        if value in live:
            continue
        live.add(value)
        producer = value.producer()
        if producer is None or producer.graph is not body:
            continue
        stack.extend(v for v in producer.inputs if v is not None)
        for attr in producer.attributes.values():
            if attr.is_ref() or attr.type not in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
                continue
            graphs = (
                [attr.as_graph()] if attr.type == ir.AttributeType.GRAPH else list(attr.as_graphs())
            )
            for sub in graphs:
                for inner in ir.traversal.RecursiveGraphIterator(sub):
                    stack.extend(v for v in inner.inputs if v is not None)
    return live


def _trim_if(graph: GraphLike, node: ir.Node) -> bool:
    branches = [_body(node, "then_branch"), _body(node, "else_branch")]
    if any(b is None for b in branches):
        return False
    drop = [i for i, out in enumerate(node.outputs) if _unused(out)]
    if not drop or len(drop) == len(node.outputs):
        return False  # an If with no outputs at all is not valid; dead code removes it whole
    for branch in branches:
        _remove_positions(branch.outputs, drop)  # type: ignore[union-attr]
    _rebuild(graph, node, list(node.inputs), drop_outputs=drop)
    return True


def _trim_loop(graph: GraphLike, node: ir.Node) -> bool:
    body = _body(node, "body")
    if body is None:
        return False
    carried = len(node.inputs) - 2
    if carried < 0 or len(body.inputs) != carried + 2 or len(body.outputs) != len(node.outputs) + 1:
        return False
    drop_outputs = [i for i in range(carried, len(node.outputs)) if _unused(node.outputs[i])]
    drop_carried = _removable_states(body, node, carried, input_offset=2, output_offset=1)
    if not drop_outputs and not drop_carried:
        return False
    _remove_positions(body.outputs, [1 + i for i in sorted(drop_carried + drop_outputs)])
    _remove_positions(body.inputs, [2 + i for i in drop_carried])
    inputs = [v for i, v in enumerate(node.inputs) if i - 2 not in drop_carried]
    _rebuild(graph, node, inputs, drop_outputs=sorted(drop_carried + drop_outputs))
    return True


def _trim_scan(graph: GraphLike, node: ir.Node) -> bool:
    body = _body(node, "body")
    scan_inputs = node.attributes.get_int("num_scan_inputs")
    if body is None or scan_inputs is None:
        return False
    states = len(node.inputs) - scan_inputs
    if states < 0 or len(body.inputs) != len(node.inputs) or len(body.outputs) != len(node.outputs):
        return False
    drop_outputs = [i for i in range(states, len(node.outputs)) if _unused(node.outputs[i])]
    drop_states = _removable_states(body, node, states, input_offset=0, output_offset=0)
    drop_inputs = [i for i in range(scan_inputs) if not body.inputs[states + i].uses()]
    if len(drop_inputs) == scan_inputs:
        drop_inputs = drop_inputs[1:]
    if not (drop_outputs or drop_states or drop_inputs):
        return False
    attributes = dict(node.attributes)
    _drop_attr_entries(attributes, "scan_output_axes", [i - states for i in drop_outputs])
    _drop_attr_entries(attributes, "scan_output_directions", [i - states for i in drop_outputs])
    _drop_attr_entries(attributes, "scan_input_axes", drop_inputs)
    _drop_attr_entries(attributes, "scan_input_directions", drop_inputs)
    attributes["num_scan_inputs"] = ir.AttrInt64("num_scan_inputs", scan_inputs - len(drop_inputs))
    dropped_in = sorted(drop_states + [states + i for i in drop_inputs])
    dropped_out = sorted(drop_states + drop_outputs)
    _remove_positions(body.outputs, dropped_out)
    _remove_positions(body.inputs, dropped_in)
    inputs = [v for i, v in enumerate(node.inputs) if i not in dropped_in]
    _rebuild(graph, node, inputs, drop_outputs=dropped_out, attributes=list(attributes.values()))
    return True


def _removable_states(
    body: ir.Graph, node: ir.Node, count: int, *, input_offset: int, output_offset: int
) -> list[int]:
    """State k goes when its final value is unused and the body reads it only to update it."""
    candidates = [k for k in range(count) if _unused(node.outputs[k])]
    if not candidates:
        return []
    drop = set(candidates)
    kept_outputs = [v for i, v in enumerate(body.outputs) if i - output_offset not in drop]
    live = _live_values(body, kept_outputs)
    return [k for k in candidates if body.inputs[input_offset + k] not in live]


def _remove_positions(values: Any, positions: list[int]) -> None:
    """`values`: a graph's inputs or outputs (a list-like of onnx_ir values)."""
    for index in sorted(set(positions), reverse=True):
        values.pop(index)


def _drop_attr_entries(attributes: dict[str, ir.Attr], name: str, positions: list[int]) -> None:
    attr = attributes.get(name)
    if attr is None or not positions or attr.is_ref():
        return
    entries = [v for i, v in enumerate(attr.as_ints()) if i not in set(positions)]
    attributes[name] = ir.AttrInt64s(name, entries)


def _rebuild(
    graph: GraphLike,
    node: ir.Node,
    inputs: list[ir.Value | None],
    *,
    drop_outputs: list[int],
    attributes: list[ir.Attr] | None = None,
) -> ir.Node:
    """Replace `node` by a copy with other inputs, fewer outputs and maybe other attributes."""
    kept = [out for i, out in enumerate(node.outputs) if i not in set(drop_outputs)]
    new = ir.Node(
        node.domain,
        node.op_type,
        inputs,
        attributes if attributes is not None else list(node.attributes.values()),
        num_outputs=len(kept),
        version=node.version,
        name=node.name,
        doc_string=node.doc_string,
        metadata_props=dict(node.metadata_props),
    )
    graph.insert_before(node, new)
    for old, fresh in zip(kept, new.outputs, strict=True):
        fresh.type, fresh.shape = old.type, old.shape
    ir.convenience.replace_all_uses_with(kept, list(new.outputs), replace_graph_outputs=True)
    graph.remove(node, safe=True)
    for old, fresh in zip(kept, new.outputs, strict=True):
        fresh.name = old.name
    return new
