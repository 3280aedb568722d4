"""fold-constants and fix-input-shapes on tiny models: counts before/after, exact ORT parity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from cleanup_helpers import (
    I64,
    F,
    apply_and_compare,
    assert_exact,
    const,
    copy,
    init,
    model,
    op_types,
    rng_feed,
    run,
    vi,
)
from onnx import TensorProto, helper

from onnxslim import api
from onnxslim.cli import main
from onnxslim.errors import UsageError
from onnxslim.graphs import node_count
from onnxslim.passes.fold import FixInputShapes, FoldConstants

X = {"x": (2, 3, 4, 4)}


def test_constant_subexpression_folds_exactly() -> None:
    a, b = np.float32([1.5, -2.0, 3.25]), np.float32([0.1, 0.2, 0.3])
    m = model(
        [
            helper.make_node("Mul", ["a", "b"], ["ab"]),
            helper.make_node("Mul", ["ab", "ab"], ["ab2"]),
            helper.make_node("Sqrt", ["ab2"], ["s"]),
            helper.make_node("Add", ["x", "s"], ["y"]),
        ],
        [vi("x", [2, 3])],
        [vi("y", [2, 3])],
        [init("a", a), init("b", b)],
    )
    out, before, after = apply_and_compare(FoldConstants(), m, [rng_feed({"x": (2, 3)})])
    assert (before, after) == (4, 1)
    assert op_types(out) == ["Add"]


def test_static_shape_computation_folds() -> None:
    """Shape -> Gather(scalar) -> Unsqueeze -> Concat -> Reshape: the target becomes a constant."""
    m = model(
        [
            helper.make_node("Shape", ["x"], ["s"]),
            helper.make_node("Gather", ["s", "i0"], ["n"], axis=0),
            helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"]),
            helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
            helper.make_node("Reshape", ["x", "target"], ["y"]),
        ],
        [vi("x", [2, 3, 4, 4])],
        [vi("y", [2, None])],
        [init("i0", np.int64(0)), init("ax0", np.int64([0])), init("minus1", np.int64([-1]))],
    )
    out, before, after = apply_and_compare(FoldConstants(), m, [rng_feed(X)])
    assert (before, after) == (5, 1)
    assert op_types(out) == ["Reshape"]
    assert out.graph.node(0).inputs[1].const_value.numpy().tolist() == [2, -1]


def test_symbolic_dims_stay_symbolic() -> None:
    """With a free batch dim only the static part of the shape folds; N stays a name."""
    m = model(
        [
            helper.make_node("Shape", ["x"], ["s"]),
            helper.make_node("Gather", ["s", "i0"], ["n"], axis=0),
            helper.make_node("Gather", ["s", "i1"], ["c"], axis=0),
            helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"]),
            helper.make_node("Unsqueeze", ["c", "ax0"], ["c1"]),
            helper.make_node("Concat", ["n1", "c1", "minus1"], ["target"], axis=0),
            helper.make_node("Reshape", ["x", "target"], ["y"]),
        ],
        [vi("x", ["N", 3, 4, 4])],
        [vi("y", ["N", 3, None])],
        [
            init("i0", np.int64(0)),
            init("i1", np.int64(1)),
            init("ax0", np.int64([0])),
            init("minus1", np.int64([-1])),
        ],
    )
    feeds = [rng_feed({"x": (1, 3, 4, 4)}), rng_feed({"x": (5, 3, 4, 4)}, seed=1)]
    out, before, after = apply_and_compare(FoldConstants(), m, feeds)
    assert after < before
    assert "Shape" in op_types(out), "the batch size is only known at run time"
    assert str(out.graph.inputs[0].shape) == "[N,3,4,4]"
    reshape = next(n for n in out.graph if n.op_type == "Reshape")
    assert [str(d) for d in reshape.outputs[0].shape.dims][:2] == ["N", "3"]


def test_shape_computations_with_equal_symbolic_content_are_shared() -> None:
    """Two layers computing [N, 12] from different tensors of shape [N, 3, 4] share one."""
    nodes, inits = (
        [],
        [init("i0", np.int64(0)), init("ax0", np.int64([0])), init("c12", np.int64([12]))],
    )
    previous = "x"
    for k in range(2):
        nodes += [
            helper.make_node("Relu", [previous], [f"r{k}"]),
            helper.make_node("Shape", [f"r{k}"], [f"s{k}"]),
            helper.make_node("Gather", [f"s{k}", "i0"], [f"n{k}"], axis=0),
            helper.make_node("Unsqueeze", [f"n{k}", "ax0"], [f"u{k}"]),
            helper.make_node("Concat", [f"u{k}", "c12"], [f"t{k}"], axis=0),
            helper.make_node("Reshape", [f"r{k}", f"t{k}"], [f"f{k}"]),
            helper.make_node("Reshape", [f"f{k}", f"s{k}"], [f"b{k}"]),
        ]
        previous = f"b{k}"
    m = model(nodes, [vi("x", ["N", 3, 4])], [vi(previous, ["N", 3, 4])], inits)
    feeds = [rng_feed({"x": (1, 3, 4)}), rng_feed({"x": (3, 3, 4)}, seed=1)]
    out, before, after = apply_and_compare(FoldConstants(), m, feeds)
    assert op_types(out).count("Shape") == 1 and op_types(out).count("Concat") == 1


def test_constant_of_shape_of_4_mib_is_not_folded() -> None:
    m = model(
        [
            helper.make_node(
                "ConstantOfShape", ["shape"], ["big"], value=helper.make_tensor("v", F, [1], [1.0])
            ),
            helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
            helper.make_node("Add", ["x", "total"], ["y"]),
        ],
        [vi("x", [2])],
        [vi("y", [2])],
        [init("shape", np.int64([1024, 1024]))],
    )
    out, before, after = apply_and_compare(FoldConstants(), m, [{"x": np.float32([1, 2])}])
    assert "ConstantOfShape" in op_types(out)
    assert all(
        v.const_value is None or v.const_value.nbytes < 1024
        for v in out.graph.initializers.values()
    )


def test_small_constant_of_shape_is_folded() -> None:
    m = model(
        [
            helper.make_node(
                "ConstantOfShape",
                ["shape"],
                ["zeros"],
                value=helper.make_tensor("v", F, [1], [0.5]),
            ),
            helper.make_node("Add", ["x", "zeros"], ["y"]),
        ],
        [vi("x", [4])],
        [vi("y", [4])],
        [init("shape", np.int64([4]))],
    )
    out, before, after = apply_and_compare(FoldConstants(), m, [{"x": np.float32([1, 2, 3, 4])}])
    assert (before, after) == (2, 1)


def test_tile_that_would_grow_the_file_is_not_folded() -> None:
    """A 256-byte tensor tiled 64 times would store 16 KiB instead of 256 bytes."""
    base = np.arange(64, dtype=np.float32)
    m = model(
        [
            helper.make_node("Tile", ["base", "reps"], ["tiled"]),
            helper.make_node("Add", ["x", "tiled"], ["y"]),
        ],
        [vi("x", [64 * 64])],
        [vi("y", [64 * 64])],
        [init("base", base), init("reps", np.int64([64]))],
    )
    out, _, _ = apply_and_compare(FoldConstants(), m, [rng_feed({"x": (4096,)})])
    assert "Tile" in op_types(out)
    # The same Tile folds when the growth allowance covers it.
    out, before, after = apply_and_compare(
        FoldConstants(growth_limit=1 << 20), m, [rng_feed({"x": (4096,)})]
    )
    assert (before, after) == (2, 1)


def test_shared_weight_is_not_duplicated_but_sole_use_folds() -> None:
    """Mul(W, 2) where W also feeds a MatMul would store W twice: not folded."""
    w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    nodes = [
        helper.make_node("Mul", ["w", "two"], ["w2"]),
        helper.make_node("MatMul", ["x", "w2"], ["a"]),
        helper.make_node("MatMul", ["x", "w"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["y"]),
    ]
    m = model(
        nodes, [vi("x", [2, 64])], [vi("y", [2, 64])], [init("w", w), init("two", np.float32(2))]
    )
    out, before, after = apply_and_compare(FoldConstants(), m, [rng_feed({"x": (2, 64)})])
    assert before == after and "Mul" in op_types(out)
    sole = model(
        nodes[:2],
        [vi("x", [2, 64])],
        [vi("a", [2, 64])],
        [init("w", w), init("two", np.float32(2))],
    )
    out, before, after = apply_and_compare(FoldConstants(), sole, [rng_feed({"x": (2, 64)})])
    assert (before, after) == (2, 1)


def test_weight_sliced_four_ways_and_reordered_folds_without_growth() -> None:
    """The exporters' LSTM gate reordering: one weight, four Slices, a Concat. The
    Slices share the weight but all fold, so together they free it: one reordered
    constant of the weight's size remains. A Slice beside a MatMul on the same
    weight does not fold (it would store a quarter of the weight twice)."""
    w = np.random.default_rng(0).standard_normal((256, 16)).astype(np.float32)
    bounds = [(0, 64), (64, 128), (128, 192), (192, 256)]  # 4 KiB each, over the allowance
    slices = [helper.make_node("Slice", ["w", f"s{i}", f"e{i}", "ax"], [f"q{i}"]) for i in range(4)]
    params = [init("ax", np.int64([0]))]
    for i, (start, end) in enumerate(bounds):
        params += [init(f"s{i}", np.int64([start])), init(f"e{i}", np.int64([end]))]
    nodes = [
        *slices,
        helper.make_node("Concat", ["q0", "q3", "q1", "q2"], ["wr"], axis=0),
        helper.make_node("MatMul", ["x", "wr"], ["y"], name="mm"),
    ]
    m = model(nodes, [vi("x", [2, 256])], [vi("y", [2, 16])], [init("w", w), *params])
    out, before, after = apply_and_compare(FoldConstants(), m, [rng_feed({"x": (2, 256)})])
    assert (before, after) == (6, 1) and op_types(out) == ["MatMul"]
    kept = [v.const_value.nbytes for v in out.graph.initializers.values() if v.uses()]
    assert kept == [w.nbytes]
    shared = model(
        [
            slices[0],
            helper.make_node("MatMul", ["x", "q0"], ["a"]),
            helper.make_node("MatMul", ["z", "w"], ["b"]),
        ],
        [vi("x", [2, 64]), vi("z", [2, 256])],
        [vi("a", [2, 16]), vi("b", [2, 16])],
        [init("w", w), *params],
    )
    feeds = [rng_feed({"x": (2, 64), "z": (2, 256)})]
    out, before, after = apply_and_compare(FoldConstants(), shared, feeds)
    assert before == after and "Slice" in op_types(out)


def test_size_limit_caps_even_size_neutral_folds() -> None:
    """Transpose of a 2 MiB weight used once: within the default 1 MiB cap? No; with 4 MiB, yes."""
    w = np.random.default_rng(0).standard_normal((512, 1024)).astype(np.float32)
    m = model(
        [
            helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
            helper.make_node("MatMul", ["x", "wt"], ["y"]),
        ],
        [vi("x", [1, 1024])],
        [vi("y", [1, 512])],
        [init("w", w)],
    )
    feeds = [rng_feed({"x": (1, 1024)})]
    out, before, after = apply_and_compare(FoldConstants(), m, feeds)
    assert before == after
    # ORT multiplies by a constant weight with another kernel (prepacked): float rounding.
    out, before, after = apply_and_compare(FoldConstants(size_limit=4 << 20), m, feeds, rtol=1e-6)
    assert after == before - 1 and len(out.graph.initializers) == 1


def test_dequantize_linear_is_never_folded() -> None:
    q = np.arange(-8, 8, dtype=np.int8).reshape(4, 4)
    m = model(
        [
            helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["w"]),
            helper.make_node("MatMul", ["x", "w"], ["y"]),
        ],
        [vi("x", [1, 4])],
        [vi("y", [1, 4])],
        [init("q", q), init("scale", np.float32(0.1)), init("zp", np.int8(0))],
    )
    out, before, after = apply_and_compare(FoldConstants(), m, [rng_feed({"x": (1, 4)})])
    assert (
        "DequantizeLinear" in op_types(out)
        and out.graph.initializers["q"].dtype == ir.DataType.INT8
    )


def _branch(name: str, scale: float) -> onnx.GraphProto:
    """A body with a foldable constant expression: y = x * (c * c)."""
    return helper.make_graph(
        [
            const(f"{name}_c", np.float32(scale)),
            helper.make_node("Mul", [f"{name}_c", f"{name}_c"], [f"{name}_cc"]),
            helper.make_node("Mul", ["x", f"{name}_cc"], [f"{name}_y"]),
        ],
        name,
        [],
        [vi(f"{name}_y", [3])],
    )


def test_folds_inside_if_branches() -> None:
    m = model(
        [
            helper.make_node(
                "If",
                ["cond"],
                ["y"],
                then_branch=_branch("then", 2.0),
                else_branch=_branch("else", 3.0),
            )
        ],
        [vi("cond", [], TensorProto.BOOL), vi("x", [3])],
        [vi("y", [3])],
    )
    feeds = [{"cond": np.array(c), "x": np.float32([1, 2, 3])} for c in (True, False)]
    out, before, after = apply_and_compare(FoldConstants(), m, feeds)
    assert (before, after) == (7, 3), op_types(out)


def test_folds_inside_loop_body() -> None:
    body = helper.make_graph(
        [
            const("c", np.float32(0.5)),
            helper.make_node("Add", ["c", "c"], ["one"]),
            helper.make_node("Mul", ["acc_in", "one"], ["m"]),
            helper.make_node("Add", ["m", "x"], ["acc_out"]),
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
        [init("trip", np.int64(3))],
    )
    feeds = [{"x": np.float32([1, 2, 3]), "acc0": np.float32([0.5, -1, 2])}]
    out, before, after = apply_and_compare(FoldConstants(), m, feeds)
    assert after == before - 2, op_types(out)


def test_folds_inside_local_function() -> None:
    function = helper.make_function(
        "local",
        "Scaled",
        ["x"],
        ["y"],
        [
            const("c", np.float32(1.5)),
            helper.make_node("Mul", ["c", "c"], ["cc"]),
            helper.make_node("Mul", ["x", "cc"], ["y"]),
        ],
        opset_imports=[helper.make_opsetid("", 17)],
    )
    m = model(
        [helper.make_node("Scaled", ["x"], ["y"], domain="local")],
        [vi("x", [3])],
        [vi("y", [3])],
        functions=[function],
        extra_opsets=[helper.make_opsetid("local", 1)],
    )
    out, before, after = apply_and_compare(FoldConstants(), m, [{"x": np.float32([1, 2, 3])}])
    fn = next(iter(out.functions.values()))
    assert [n.op_type for n in fn] == ["Constant", "Mul"], (
        "functions keep constants as Constant nodes"
    )
    assert after == before - 1


def test_if_with_constant_condition_is_inlined() -> None:
    m = model(
        [
            helper.make_node(
                "If",
                ["cond"],
                ["y"],
                then_branch=_branch("then", 2.0),
                else_branch=_branch("else", 3.0),
            )
        ],
        [vi("x", [3])],
        [vi("y", [3])],
        [init("cond", np.array(False))],
    )
    out, _, after = apply_and_compare(FoldConstants(), m, [{"x": np.float32([1, 2, 3])}])
    assert "If" not in op_types(out) and after == 1


def test_fold_is_idempotent_and_leaves_no_metadata() -> None:
    m = model(
        [helper.make_node("Mul", ["a", "a"], ["aa"]), helper.make_node("Add", ["x", "aa"], ["y"])],
        [vi("x", [3])],
        [vi("y", [3])],
        [init("a", np.float32([1, 2, 3]))],
    )
    once = copy(m)
    assert FoldConstants()(once).modified
    assert not FoldConstants()(once).modified
    text = onnx.printer.to_text(ir.serde.serialize_model(once))
    assert "folded_from" not in text


# ---------------------------------------------------------------- fix-input-shapes / --input-shape


def _dynamic_model() -> ir.Model:
    """x[N,3,H,W] -> Reshape(x, [Shape(x)[0], -1]) -> y."""
    return model(
        [
            helper.make_node("Shape", ["x"], ["s"]),
            helper.make_node("Slice", ["s", "zero", "one"], ["n"]),
            helper.make_node("Concat", ["n", "minus1"], ["target"], axis=0),
            helper.make_node("Reshape", ["x", "target"], ["y"]),
            helper.make_node("Relu", ["y"], ["z"]),
        ],
        [vi("x", ["N", 3, "H", "W"])],
        [vi("z", ["N", None])],
        [init("zero", np.int64([0])), init("one", np.int64([1])), init("minus1", np.int64([-1]))],
    )


def test_fix_input_shapes_then_shapes_fold() -> None:
    m = _dynamic_model()
    fixed = copy(m)
    assert FixInputShapes(shapes=("x:2,3,8,8",))(fixed).modified
    assert str(fixed.graph.inputs[0].shape) == "[2,3,8,8]"
    feeds = [rng_feed({"x": (2, 3, 8, 8)})]
    out, before, after = apply_and_compare(FoldConstants(), fixed, feeds)
    assert op_types(out) == ["Reshape", "Relu"]
    assert_exact(run(m, feeds), run(out, feeds))


@pytest.mark.parametrize(
    "text, message",
    [
        ("x:2,4,8,8", "dimension 1 is fixed to 3"),
        ("x:2,3,8", "rank 3 given"),
        ("nope:1,2", "no input 'nope'"),
        ("x:2,3,0,8", "must be positive"),
        ("x:a,b", "must be integers"),
    ],
)
def test_fix_input_shapes_refuses_contradictions(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        FixInputShapes(shapes=(text,))(copy(_dynamic_model()))


def test_cli_input_shape_fixes_and_folds(tmp_path: Path, capsys) -> None:
    source = tmp_path / "dyn.onnx"
    ir.save(_dynamic_model(), source)
    out = tmp_path / "out.onnx"
    assert (
        main(["optimize", str(source), "-o", str(out), "--input-shape", "x:2,3,8,8", "--json"]) == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and not report["rolled_back"]
    assert (
        report["passes"][0]["name"] == "fix-input-shapes"
        and report["passes"][0]["status"] == "changed"
    )
    result = onnx.load(str(out))
    assert [d.dim_value for d in result.graph.input[0].type.tensor_type.shape.dim] == [2, 3, 8, 8]
    assert [n.op_type for n in result.graph.node] == ["Reshape", "Relu"]


def test_cli_input_shape_contradiction_is_exit_2_and_writes_nothing(tmp_path: Path, capsys) -> None:
    source = tmp_path / "dyn.onnx"
    ir.save(_dynamic_model(), source)
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(source), "-o", str(out), "--input-shape", "x:2,4,8,8"]) == 2
    err = capsys.readouterr().err
    assert "fixed to 3" in err and "Traceback" not in err and err.strip().count("\n") == 0
    assert not out.exists()


def test_generated_feeds_take_the_fixed_shapes() -> None:
    """Two inputs share the named dim S; fixing it on one fixes the other, and the guard runs."""
    m = model(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        [vi("a", ["B", "S"]), vi("b", ["B", "S"])],
        [vi("y", ["B", "S"])],
    )
    result = api.optimize(m, pipeline=api.Pipeline(()), input_shapes={"a": (2, 5)}, max_samples=2)
    assert result.passed
    record = result.result.records[0]
    assert record.name == "fix-input-shapes" and record.status == "changed", record.reason
    assert [str(v.shape) for v in result.model.graph.inputs] == ["[2,5]", "[2,5]"]


def test_given_feeds_must_match_fixed_shapes() -> None:
    from onnxslim.errors import DataError

    m = model([helper.make_node("Relu", ["a"], ["y"])], [vi("a", ["B", 4])], [vi("y", ["B", 4])])
    with pytest.raises(DataError, match="fixes it to"):
        api.optimize(m, input_shapes=["a:2,4"], feeds=[{"a": np.zeros((3, 4), np.float32)}])


def test_node_count_helper_counts_subgraphs() -> None:
    m = model(
        [
            helper.make_node(
                "If",
                ["cond"],
                ["y"],
                then_branch=_branch("then", 2.0),
                else_branch=_branch("else", 3.0),
            )
        ],
        [vi("cond", [], TensorProto.BOOL), vi("x", [3])],
        [vi("y", [3])],
    )
    assert node_count(m) == 7


def test_recipe_with_fix_input_shapes_generates_matching_feeds(tmp_path: Path, capsys) -> None:
    source, out, recipe = tmp_path / "dyn.onnx", tmp_path / "out.onnx", tmp_path / "r.toml"
    ir.save(_dynamic_model(), source)
    recipe.write_text(
        '[[pass]]\nname = "fix-input-shapes"\nshapes = ["x:1,3,4,4"]\n\n'
        '[[pass]]\nname = "fold-constants"\n'
    )
    assert main(["optimize", str(source), "-o", str(out), "--recipe", str(recipe), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [p["status"] for p in report["passes"]] == ["changed", "changed"]


def test_random_ops_on_constants_are_not_folded() -> None:
    m = model(
        [
            helper.make_node("Bernoulli", ["p"], ["mask"], seed=1.0),
            helper.make_node("Dropout", ["w", "ratio", "train"], ["dropped"], seed=3),
            helper.make_node("Add", ["mask", "dropped"], ["noise"]),
            helper.make_node("Add", ["x", "noise"], ["y"]),
        ],
        [vi("x", [4])],
        [vi("y", [4])],
        [
            init("p", np.float32([0.5] * 4)),
            init("w", np.float32([1, 2, 3, 4])),
            init("ratio", np.float32(0.5)),
            init("train", np.array(True)),
        ],
    )
    out = copy(m)
    FoldConstants()(out)
    assert {"Bernoulli", "Dropout"} <= set(op_types(out))
