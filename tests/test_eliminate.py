"""eliminate-no-ops, CSE and dedup on tiny models (remove-unused: test_unused.py).

Every case checks node counts before/after and exact ORT parity (optimizations off and on),
in the main graph and, for the no-op rules, inside If / Loop bodies and a local function.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from cleanup_helpers import (
    I64,
    F,
    apply_and_compare,
    const,
    copy,
    init,
    model,
    op_types,
    rng_feed,
    vi,
)
from onnx import TensorProto, helper

from onnxslim.passes.cleanup import DeduplicateInitializers, EliminateCommonSubexpressions
from onnxslim.passes.eliminate import EliminateNoOps

INT64_MAX = np.iinfo(np.int64).max


def case(
    op: str,
    inputs: list[str],
    attrs: dict | None = None,
    inits: list | None = None,
    x_shape: list | None = None,
    y_shape: list | None = None,
    x_elem: int = F,
    y_elem: int | None = None,
    opset: int = 17,
    extra_nodes: tuple = (),
):
    """x -> op(x, consts) -> Neg -> y: one candidate node between an input and an output."""
    x_shape = [2, 3] if x_shape is None else x_shape
    nodes = [
        *extra_nodes,
        helper.make_node(op, inputs, ["m"], **(attrs or {})),
        helper.make_node("Neg", ["m"], ["y"]),
    ]
    return model(
        nodes,
        [vi("x", x_shape, x_elem)],
        [
            vi(
                "y",
                y_shape if y_shape is not None else x_shape,
                y_elem if y_elem is not None else x_elem,
            )
        ],
        inits or [],
        opset=opset,
    )


def feed_for(m: ir.Model) -> list[dict[str, np.ndarray]]:
    value = m.graph.inputs[0]
    shape = tuple(d if isinstance(d, int) else 2 for d in value.shape.dims)
    dtype = value.dtype.numpy()
    rng = np.random.default_rng(0)
    if dtype.kind == "f":
        data = rng.standard_normal(shape).astype(dtype)
        data.flat[0] = -0.0
        return [{"x": data}]
    return [{"x": rng.integers(-50, 50, shape).astype(dtype)}]


REMOVED = {
    "identity": lambda: case("Identity", ["x"]),
    "dropout-opset13": lambda: case("Dropout", ["x"]),
    "dropout-training-false": lambda: case(
        "Dropout", ["x", "r", "t"], inits=[init("r", np.float32(0.5)), init("t", np.array(False))]
    ),
    "dropout-ratio-zero-training": lambda: case(
        "Dropout", ["x", "r", "t"], inits=[init("r", np.float32(0.0)), init("t", np.array(True))]
    ),
    "dropout-opset10": lambda: case("Dropout", ["x"], attrs={"ratio": 0.3}, opset=10),
    "cast-same-type": lambda: case("Cast", ["x"], attrs={"to": F}),
    "castlike-same-type": lambda: case("CastLike", ["x", "t"], inits=[init("t", np.float32(1))]),
    "reshape-same-static": lambda: case("Reshape", ["x", "s"], inits=[init("s", np.int64([2, 3]))]),
    "reshape-same-symbolic": lambda: case(
        "Reshape", ["x", "s"], inits=[init("s", np.int64([0, -1, 4]))], x_shape=["N", 3, 4]
    ),
    "flatten-rank2": lambda: case("Flatten", ["x"], attrs={"axis": 1}, x_shape=["N", 5]),
    "transpose-identity": lambda: case("Transpose", ["x"], attrs={"perm": [0, 1]}),
    "pad-zero": lambda: case("Pad", ["x", "p"], inits=[init("p", np.int64([0, 0, 0, 0]))]),
    "pad-zero-opset2": lambda: case("Pad", ["x"], attrs={"pads": [0, 0, 0, 0]}, opset=10),
    "slice-full-symbolic": lambda: case(
        "Slice",
        ["x", "b", "e", "a"],
        inits=[
            init("b", np.int64([0])),
            init("e", np.int64([INT64_MAX])),
            init("a", np.int64([0])),
        ],
        x_shape=["N", 3],
    ),
    "slice-full-static-two-axes": lambda: case(
        "Slice",
        ["x", "b", "e", "a", "s"],
        inits=[
            init("b", np.int64([-9, 0])),
            init("e", np.int64([7, 3])),
            init("a", np.int64([1, 0])),
            init("s", np.int64([1, 1])),
        ],
    ),
    "expand-broadcast-to-self": lambda: case(
        "Expand", ["x", "s"], inits=[init("s", np.int64([1, 3]))], x_shape=["N", 3]
    ),
    "concat-single": lambda: case("Concat", ["x"], attrs={"axis": 0}),
    "sum-single": lambda: case("Sum", ["x"]),
    "max-single": lambda: case("Max", ["x"]),
    "split-single": lambda: case("Split", ["x"], attrs={"axis": 0, "num_outputs": 1}, opset=18),
    "tile-ones": lambda: case("Tile", ["x", "r"], inits=[init("r", np.int64([1, 1]))]),
    "add-zero-scalar": lambda: case("Add", ["z", "x"], inits=[init("z", np.float32(0))]),
    "add-zero-row": lambda: case(
        "Add", ["x", "z"], inits=[init("z", np.zeros((1, 3), np.float32))]
    ),
    "sub-zero": lambda: case("Sub", ["x", "z"], inits=[init("z", np.float32(0))]),
    "mul-one": lambda: case("Mul", ["x", "o"], inits=[init("o", np.float32(1))]),
    "div-one-int": lambda: case(
        "Div", ["x", "o"], inits=[init("o", np.int32(1))], x_elem=TensorProto.INT32
    ),
    "pow-one": lambda: case("Pow", ["x", "o"], inits=[init("o", np.float32(1))]),
    "cast-roundtrip-exact": lambda: case(
        "Cast",
        ["w"],
        attrs={"to": TensorProto.INT32},
        x_elem=TensorProto.INT32,
        extra_nodes=(helper.make_node("Cast", ["x"], ["w"], to=TensorProto.INT64),),
    ),
}

KEPT = {
    "reshape-changes-shape": lambda: case(
        "Reshape", ["x", "s"], inits=[init("s", np.int64([3, 2]))], y_shape=[3, 2]
    ),
    "expand-broadcasts": lambda: case(
        "Expand", ["x", "s"], inits=[init("s", np.int64([4, 2, 3]))], y_shape=[4, 2, 3]
    ),
    "mul-ones-broadcast-grows": lambda: case(
        "Mul", ["x", "o"], inits=[init("o", np.ones((2, 2, 3), np.float32))], y_shape=[2, 2, 3]
    ),
    "add-almost-zero": lambda: case("Add", ["x", "z"], inits=[init("z", np.float32(1e-30))]),
    "slice-step-2": lambda: case(
        "Slice",
        ["x", "b", "e", "a", "s"],
        inits=[
            init("b", np.int64([0])),
            init("e", np.int64([9])),
            init("a", np.int64([1])),
            init("s", np.int64([2])),
        ],
        y_shape=[2, 2],
    ),
    "slice-symbolic-short-end": lambda: case(
        "Slice",
        ["x", "b", "e", "a"],
        inits=[init("b", np.int64([0])), init("e", np.int64([100])), init("a", np.int64([0]))],
        x_shape=["N", 3],
        y_shape=[None, 3],
    ),
    # seeded: an unseeded mask made both models drop different elements once in ~400 runs
    "dropout-training": lambda: case(
        "Dropout",
        ["x", "r", "t"],
        attrs={"seed": 0},
        inits=[init("r", np.float32(0.0001)), init("t", np.array(True))],
    ),
    "cast-narrowing-roundtrip": lambda: case(
        "Cast",
        ["w"],
        attrs={"to": F},
        extra_nodes=(helper.make_node("Cast", ["x"], ["w"], to=TensorProto.INT32),),
    ),
    "flatten-rank3": lambda: case(
        "Flatten", ["x"], attrs={"axis": 1}, x_shape=[2, 3, 4], y_shape=[2, 12]
    ),
    "transpose-swap": lambda: case("Transpose", ["x"], attrs={"perm": [1, 0]}, y_shape=[3, 2]),
}


@pytest.mark.parametrize("name", sorted(REMOVED))
def test_no_op_is_removed(name: str) -> None:
    m = REMOVED[name]()
    out, before, after = apply_and_compare(EliminateNoOps(), m, feed_for(m))
    assert after == before - 1 - (1 if name == "cast-roundtrip-exact" else 0), op_types(out)
    assert op_types(out) == ["Neg"]


@pytest.mark.parametrize("name", sorted(KEPT))
def test_lookalike_is_kept(name: str) -> None:
    m = KEPT[name]()
    out, before, after = apply_and_compare(EliminateNoOps(), m, feed_for(m))
    assert after == before, op_types(out)


def test_graph_input_to_output_identity_is_kept_but_inner_ones_go() -> None:
    m = model(
        [
            helper.make_node("Identity", ["x"], ["a"]),
            helper.make_node("Relu", ["a"], ["b"]),
            helper.make_node("Identity", ["b"], ["y"]),
            helper.make_node("Identity", ["x"], ["z"]),
        ],
        [vi("x", [2])],
        [vi("y", [2]), vi("z", [2])],
    )
    out, before, after = apply_and_compare(EliminateNoOps(), m, [{"x": np.float32([1, -1])}])
    assert op_types(out) == ["Relu", "Identity"]
    assert [v.name for v in out.graph.outputs] == ["y", "z"]


def test_chains_collapse() -> None:
    """Transpose pair -> nothing; Reshape pair -> one Reshape; Unsqueeze pair -> one."""
    m = model(
        [
            helper.make_node("Transpose", ["x"], ["t1"], perm=[1, 0, 2]),
            helper.make_node("Transpose", ["t1"], ["t2"], perm=[1, 0, 2]),
            helper.make_node("Reshape", ["t2", "s1"], ["r1"]),
            helper.make_node("Reshape", ["r1", "s2"], ["r2"]),
            helper.make_node("Unsqueeze", ["r2", "a0"], ["u1"]),
            helper.make_node("Unsqueeze", ["u1", "a0"], ["y"]),
        ],
        [vi("x", [2, 3, 4])],
        [vi("y", [1, 1, 4, 6])],
        [init("s1", np.int64([24])), init("s2", np.int64([4, 6])), init("a0", np.int64([0]))],
    )
    out, before, after = apply_and_compare(EliminateNoOps(), m, [rng_feed({"x": (2, 3, 4)})])
    assert op_types(out) == ["Reshape", "Unsqueeze"]


# ---------------------------------------------------------------- subgraphs and functions


def _noop_body(name: str, out: str) -> list[onnx.NodeProto]:
    """x -> Cast(same type) -> Transpose(identity) -> Dropout -> Mul(1) -> out."""
    return [
        helper.make_node("Cast", ["x"], [f"{name}_c"], to=F),
        helper.make_node("Transpose", [f"{name}_c"], [f"{name}_t"], perm=[0]),
        helper.make_node("Dropout", [f"{name}_t"], [f"{name}_d"]),
        const(f"{name}_one", np.float32(1)),
        helper.make_node("Mul", [f"{name}_d", f"{name}_one"], [f"{name}_m"]),
        helper.make_node("Relu", [f"{name}_m"], [out]),
    ]


def test_no_ops_go_inside_if_branches() -> None:
    then = helper.make_graph(_noop_body("t", "ty"), "then", [], [vi("ty", [3])])
    other = helper.make_graph(_noop_body("e", "ey"), "else", [], [vi("ey", [3])])
    m = model(
        [helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)],
        [vi("cond", [], TensorProto.BOOL), vi("x", [3])],
        [vi("y", [3])],
        value_info=[vi("t_c", [3]), vi("e_c", [3])],
    )
    feeds = [{"cond": np.array(c), "x": np.float32([1, -2, 3])} for c in (True, False)]
    out, before, after = apply_and_compare(EliminateNoOps(), m, feeds)
    assert op_types(out) == ["If", "Relu", "Relu"], op_types(out)


def test_no_ops_go_inside_loop_body() -> None:
    body = helper.make_graph(
        [
            *_noop_body("b", "r"),
            helper.make_node("Add", ["acc_in", "r"], ["acc_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [vi("i", [], I64), vi("cond_in", [], TensorProto.BOOL), vi("acc_in", [3])],
        [vi("cond_out", [], TensorProto.BOOL), vi("acc_out", [3])],
    )
    m = model(
        [helper.make_node("Loop", ["trip", "", "acc0"], ["acc"], body=body)],
        [vi("x", [3]), vi("acc0", [3])],
        [vi("acc", [3])],
        [init("trip", np.int64(2))],
    )
    feeds = [{"x": np.float32([1, -2, 3]), "acc0": np.float32([0, 1, 2])}]
    out, before, after = apply_and_compare(EliminateNoOps(), m, feeds)
    assert sorted(op_types(out)) == ["Add", "Identity", "Loop", "Relu"], op_types(out)


def test_no_ops_go_inside_local_function() -> None:
    function = helper.make_function(
        "local",
        "Body",
        ["x"],
        ["y"],
        _noop_body("f", "y"),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    m = model(
        [helper.make_node("Body", ["x"], ["y"], domain="local")],
        [vi("x", [3])],
        [vi("y", [3])],
        functions=[function],
        extra_opsets=[helper.make_opsetid("local", 1)],
    )
    # Types inside functions are unknown until inference: Cast-same-type needs the input type.
    out, before, after = apply_and_compare(EliminateNoOps(), m, [{"x": np.float32([1, -2, 3])}])
    fn = next(iter(out.functions.values()))
    assert [n.op_type for n in fn] in (["Relu"], ["Cast", "Relu"]), [n.op_type for n in fn]
    assert after <= before - 3


# ---------------------------------------------------------------- CSE and dedup


def test_cse_merges_commutative_duplicates_in_main_graph_and_bodies() -> None:
    body_nodes = [
        helper.make_node("Add", ["x", "k"], ["p"]),
        helper.make_node("Add", ["k", "x"], ["q"]),
        helper.make_node("Mul", ["p", "q"], ["by"]),
    ]
    body = helper.make_graph(body_nodes, "then", [], [vi("by", [2])])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["ey"])], "else", [], [vi("ey", [2])])
    m = model(
        [
            helper.make_node("Exp", ["x"], ["e1"]),
            helper.make_node("Exp", ["x"], ["e2"]),
            helper.make_node("Add", ["e1", "e2"], ["s"]),
            helper.make_node("If", ["cond"], ["b"], then_branch=body, else_branch=other),
            helper.make_node("Add", ["s", "b"], ["y"]),
        ],
        [vi("cond", [], TensorProto.BOOL), vi("x", [2])],
        [vi("y", [2])],
        [init("k", np.float32([1, 2]))],
    )
    feeds = [{"cond": np.array(c), "x": np.float32([0.5, -1])} for c in (True, False)]
    out, before, after = apply_and_compare(EliminateCommonSubexpressions(), m, feeds)
    assert after == before - 2


def test_cse_keeps_random_ops_apart() -> None:
    m = model(
        [
            helper.make_node("RandomUniformLike", ["x"], ["r1"], seed=1.0),
            helper.make_node("RandomUniformLike", ["x"], ["r2"], seed=1.0),
            helper.make_node("Sub", ["r1", "r2"], ["y"]),
        ],
        [vi("x", [2])],
        [vi("y", [2])],
    )
    out = copy(m)
    assert not EliminateCommonSubexpressions()(out).modified


def test_cse_keeps_two_outputs_named() -> None:
    m = model(
        [helper.make_node("Neg", ["x"], ["a"]), helper.make_node("Neg", ["x"], ["b"])],
        [vi("x", [2])],
        [vi("a", [2]), vi("b", [2])],
    )
    out, before, after = apply_and_compare(
        EliminateCommonSubexpressions(), m, [{"x": np.float32([1, 2])}]
    )
    assert [v.name for v in out.graph.outputs] == ["a", "b"]


def test_duplicate_initializers_merge() -> None:
    w = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
    m = model(
        [
            helper.make_node("MatMul", ["x", "w1"], ["a"]),
            helper.make_node("MatMul", ["x", "w2"], ["b"]),
            helper.make_node("Add", ["a", "b"], ["y"]),
        ],
        [vi("x", [1, 4])],
        [vi("y", [1, 4])],
        [init("w1", w), init("w2", w.copy())],
    )
    out, _, _ = apply_and_compare(DeduplicateInitializers(), m, [rng_feed({"x": (1, 4)})])
    assert len(out.graph.initializers) == 1


def test_zero_initial_state_of_gru_is_dropped_with_its_computation() -> None:
    """GRU initial_h = Expand(0.0, [2, batch, 4]) with batch from Shape(x): the default."""
    rng = np.random.default_rng(0)
    w, r = (
        rng.standard_normal((2, 12, 3)).astype(np.float32),
        rng.standard_normal((2, 12, 4)).astype(np.float32),
    )
    m = model(
        [
            helper.make_node("Shape", ["x"], ["s"]),
            helper.make_node("Slice", ["s", "one", "two"], ["batch"]),
            helper.make_node("Concat", ["dirs", "batch", "hidden"], ["hshape"], axis=0),
            helper.make_node("Expand", ["zero", "hshape"], ["h0"]),
            helper.make_node(
                "GRU",
                ["x", "w", "r", "b", "", "h0"],
                ["y", "yh"],
                hidden_size=4,
                direction="bidirectional",
            ),
        ],
        [vi("x", ["T", "B", 3])],
        [vi("y", ["T", 2, "B", 4]), vi("yh", [2, "B", 4])],
        [
            init("w", w),
            init("r", r),
            init("b", np.zeros((2, 24), np.float32)),
            init("one", np.int64([1])),
            init("two", np.int64([2])),
            init("dirs", np.int64([2])),
            init("hidden", np.int64([4])),
            init("zero", np.float32([0.0])),
        ],
    )
    feeds = [rng_feed({"x": (5, 3, 3)})]
    out, before, after = apply_and_compare(EliminateNoOps(), m, feeds)
    assert op_types(out) == ["GRU"] and len(out.graph.node(0).inputs) == 3, "B, initial_h dropped"
