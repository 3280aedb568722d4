"""remove-unused and remove-initializer-inputs on tiny models: dead nodes, unused If / Loop /
Scan outputs and state, unused initializers, initializers listed as inputs.

Every case checks node counts before/after and exact ORT parity (optimizations off and on).
"""

from __future__ import annotations

import numpy as np
import onnx
from cleanup_helpers import (
    I64,
    apply_and_compare,
    const,
    copy,
    init,
    model,
    op_types,
    vi,
)
from onnx import TensorProto, helper

from onnxslim.passes.eliminate import RemoveInitializerInputs, RemoveUnused

INT64_MAX = np.iinfo(np.int64).max


# ---------------------------------------------------------------- remove-unused


def test_dead_nodes_and_unused_initializers_go() -> None:
    m = model(
        [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Mul", ["x", "w"], ["dead"])],
        [vi("x", [2])],
        [vi("y", [2])],
        [init("w", np.float32([1, 2])), init("unused", np.float32([3]))],
    )
    out, before, after = apply_and_compare(RemoveUnused(), m, [{"x": np.float32([1, -1])}])
    assert (before, after) == (2, 1) and not out.graph.initializers


def test_if_output_nobody_reads_is_removed_from_both_branches() -> None:
    def branch(name: str, k: float) -> onnx.GraphProto:
        return helper.make_graph(
            [
                const(f"{name}_k", np.float32(k)),
                helper.make_node("Mul", ["x", f"{name}_k"], [f"{name}_a"]),
                helper.make_node("Sin", ["x"], [f"{name}_b"]),
                helper.make_node("Cos", ["x"], [f"{name}_c"]),
            ],
            name,
            [],
            [vi(f"{name}_a", [2]), vi(f"{name}_b", [2]), vi(f"{name}_c", [2])],
        )

    m = model(
        [
            helper.make_node(
                "If",
                ["cond"],
                ["a", "b", "c"],
                then_branch=branch("t", 2),
                else_branch=branch("e", 3),
            ),
            helper.make_node("Add", ["a", "c"], ["y"]),
        ],
        [vi("cond", [], TensorProto.BOOL), vi("x", [2])],
        [vi("y", [2])],
    )
    feeds = [{"cond": np.array(c), "x": np.float32([0.5, -1])} for c in (True, False)]
    out, before, after = apply_and_compare(RemoveUnused(), m, feeds)
    node = next(n for n in out.graph if n.op_type == "If")
    assert len(node.outputs) == 2 and "Sin" not in op_types(out)
    assert after == before - 2


def test_loop_state_and_scan_output_nobody_reads_are_removed() -> None:
    """Loop carries acc (used) and junk (its final value unused, only feeding itself), plus a
    scan output nobody reads; junk and the scan output go, acc stays."""
    body = helper.make_graph(
        [
            helper.make_node("Add", ["acc_in", "x"], ["acc_out"]),
            helper.make_node("Mul", ["junk_in", "junk_in"], ["junk_out"]),
            helper.make_node("Neg", ["acc_in"], ["scan_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [
            vi("i", [], I64),
            vi("cond_in", [], TensorProto.BOOL),
            vi("acc_in", [2]),
            vi("junk_in", [2]),
        ],
        [
            vi("cond_out", [], TensorProto.BOOL),
            vi("acc_out", [2]),
            vi("junk_out", [2]),
            vi("scan_out", [2]),
        ],
    )
    m = model(
        [
            helper.make_node(
                "Loop", ["trip", "", "acc0", "junk0"], ["acc", "junk", "scanned"], body=body
            )
        ],
        [vi("x", [2]), vi("acc0", [2]), vi("junk0", [2])],
        [vi("acc", [2])],
        [init("trip", np.int64(3))],
    )
    feeds = [{"x": np.float32([1, 2]), "acc0": np.float32([0, 0]), "junk0": np.float32([3, 4])}]
    out, before, after = apply_and_compare(RemoveUnused(), m, feeds)
    loop = next(n for n in out.graph if n.op_type == "Loop")
    assert len(loop.inputs) == 3 and len(loop.outputs) == 1
    assert after == before - 2  # Mul and Neg are gone with their outputs
    assert [v.name for v in out.graph.inputs] == ["x", "acc0", "junk0"], (
        "graph inputs are the interface"
    )


def test_loop_state_read_by_others_is_kept() -> None:
    body = helper.make_graph(
        [
            helper.make_node("Add", ["acc_in", "aux_in"], ["acc_out"]),
            helper.make_node("Mul", ["aux_in", "aux_in"], ["aux_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [
            vi("i", [], I64),
            vi("cond_in", [], TensorProto.BOOL),
            vi("acc_in", [2]),
            vi("aux_in", [2]),
        ],
        [vi("cond_out", [], TensorProto.BOOL), vi("acc_out", [2]), vi("aux_out", [2])],
    )
    m = model(
        [helper.make_node("Loop", ["trip", "", "acc0", "aux0"], ["acc", "aux"], body=body)],
        [vi("acc0", [2]), vi("aux0", [2])],
        [vi("acc", [2])],
        [init("trip", np.int64(3))],
    )
    feeds = [{"acc0": np.float32([0, 1]), "aux0": np.float32([1.5, -1])}]
    out, before, after = apply_and_compare(RemoveUnused(), m, feeds)
    assert before == after


def test_scan_unused_output_and_input_are_removed() -> None:
    body = helper.make_graph(
        [
            helper.make_node("Add", ["s_in", "a_t"], ["s_out"]),
            helper.make_node("Neg", ["a_t"], ["o1"]),
            helper.make_node("Abs", ["a_t"], ["o2"]),
        ],
        "body",
        [vi("s_in", [2]), vi("a_t", [2]), vi("b_t", [2])],
        [vi("s_out", [2]), vi("o1", [2]), vi("o2", [2])],
    )
    m = model(
        [
            helper.make_node(
                "Scan",
                ["s0", "a", "b"],
                ["s", "neg", "abs"],
                body=body,
                num_scan_inputs=2,
                scan_input_directions=[0, 1],
                scan_output_axes=[0, 0],
            )
        ],
        [vi("s0", [2]), vi("a", [4, 2]), vi("b", [4, 2])],
        [vi("s", [2]), vi("abs", [4, 2])],
    )
    rng = np.random.default_rng(0)
    feeds = [
        {
            "s0": np.float32([0, 1]),
            "a": rng.standard_normal((4, 2)).astype(np.float32),
            "b": rng.standard_normal((4, 2)).astype(np.float32),
        }
    ]
    out, before, after = apply_and_compare(RemoveUnused(), m, feeds)
    scan = next(n for n in out.graph if n.op_type == "Scan")
    assert len(scan.inputs) == 2 and len(scan.outputs) == 2
    assert scan.attributes.get_int("num_scan_inputs") == 1
    assert list(scan.attributes.get_ints("scan_input_directions")) == [0]
    assert after == before - 1


def test_unused_subgraph_initializer_goes() -> None:
    then = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["ty"])],
        "then",
        [],
        [vi("ty", [2])],
        initializer=[init("spare", np.float32([1, 2, 3]))],
    )
    other = helper.make_graph([helper.make_node("Abs", ["x"], ["ey"])], "else", [], [vi("ey", [2])])
    m = model(
        [helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)],
        [vi("cond", [], TensorProto.BOOL), vi("x", [2])],
        [vi("y", [2])],
    )
    feeds = [{"cond": np.array(c), "x": np.float32([1, -2])} for c in (True, False)]
    out, _, _ = apply_and_compare(RemoveUnused(), m, feeds)
    then_graph = next(n for n in out.graph).attributes["then_branch"].as_graph()
    assert not then_graph.initializers


# ---------------------------------------------------------------- remove-initializer-inputs


def test_initializers_listed_as_inputs_stop_being_inputs_from_ir4() -> None:
    w = init("w", np.float32([[1, 2], [3, 4]]))
    b = init("b", np.float32([0.5, -0.5]))
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["y"]),
    ]
    every = model(
        nodes,
        [vi("x", [1, 2]), vi("w", [2, 2]), vi("b", [2])],
        [vi("y", [1, 2])],
        [w, b],
        ir_version=4,
        opset=9,
    )
    out, before, after = apply_and_compare(
        RemoveInitializerInputs(), every, [{"x": np.float32([[1, -1]])}]
    )
    assert [v.name for v in out.graph.inputs] == ["x"]
    # Only `b` listed: a deliberate input with a default, kept.
    chosen = model(
        nodes, [vi("x", [1, 2]), vi("b", [2])], [vi("y", [1, 2])], [w, b], ir_version=4, opset=9
    )
    assert not RemoveInitializerInputs()(copy(chosen)).modified
    legacy = model(
        nodes,
        [vi("x", [1, 2]), vi("w", [2, 2]), vi("b", [2])],
        [vi("y", [1, 2])],
        [w, b],
        ir_version=3,
        opset=8,
    )
    assert not RemoveInitializerInputs()(copy(legacy)).modified
