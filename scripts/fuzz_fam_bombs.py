"""Fuzz family `bombs`: small files that ask for terabytes, forever, or huge graphs.

Legal models that explode when run or folded are "either" (write them, or refuse
cleanly); long chains, many initializers and deep nesting are "valid": a tool must
handle them in bounded time and memory. Initializers that claim data they do not
carry are "invalid".
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from fuzz_build import Case, make_model, save, value, write_calib
from onnx import TensorProto, helper, numpy_helper

TB = 1 << 40
I64_MAX = (1 << 63) - 1


def _i64(name: str, values: list[int] | int) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def _f32(name: str, values: float | list[float]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, dtype=np.float32), name)


def _x_plus(out: str) -> tuple[list[onnx.NodeProto], list[onnx.ValueInfoProto]]:
    """y = x + bomb: keeps a data input so feeds and calibration exist."""
    return (
        [helper.make_node("Add", ["x", out], ["y"])],
        [value("x", TensorProto.FLOAT, [1])],
    )


def _case(
    case_id: str,
    expect: str,
    note: str,
    build: object,
    heavy: bool = False,
    either_for: tuple[str, ...] = (),
) -> tuple:
    def write(folder: Path) -> bool:
        model = build()  # type: ignore[operator]
        save(model, folder)
        return write_calib(model, folder / "calib.npz")

    case = Case(case_id, "bombs", expect, note, heavy=heavy, either_for=list(either_for))
    return case, write


def _generator(
    op: str, inits: list[onnx.TensorProto], inputs: list[str], **attrs: object
) -> object:
    def build() -> onnx.ModelProto:
        add, ins = _x_plus("big")
        node = helper.make_node(op, inputs, ["big"], **attrs)
        return make_model([node, *add], ins, [value("y", TensorProto.FLOAT, None)], inits)

    return build


def _chain(length: int, op: str = "Relu", with_init: bool = False) -> object:
    def build() -> onnx.ModelProto:
        nodes, inits = [], []
        prev = "x"
        for i in range(length):
            out = "y" if i == length - 1 else f"v{i}"
            if with_init:
                inits.append(_f32(f"c{i}", float(i % 7) + 1.0))
                nodes.append(helper.make_node("Mul", [prev, f"c{i}"], [out], name=f"n{i}"))
            else:
                nodes.append(helper.make_node(op, [prev], [out], name=f"n{i}"))
            prev = out
        return make_model(
            nodes,
            [value("x", TensorProto.FLOAT, [1, 4])],
            [value("y", TensorProto.FLOAT, [1, 4])],
            inits,
        )

    return build


def _many_inits(count: int) -> object:
    def build() -> onnx.ModelProto:
        inits = [_f32(f"w{i}", [float(i)] * 4) for i in range(count)]
        nodes = [helper.make_node("Sum", [f"w{i}" for i in range(count)], ["s"])]
        nodes.append(helper.make_node("Add", ["x", "s"], ["y"]))
        return make_model(
            nodes, [value("x", TensorProto.FLOAT, [4])], [value("y", TensorProto.FLOAT, [4])], inits
        )

    return build


def _nested_if(depth: int) -> object:
    def build() -> onnx.ModelProto:
        inner_out = f"o{depth}"
        graph_nodes = [helper.make_node("Relu", ["x"], [inner_out])]
        for level in range(depth, 0, -1):
            out = f"o{level - 1}"
            then = helper.make_graph(
                graph_nodes, f"then{level}", [], [value(inner_out, TensorProto.FLOAT, [2])]
            )
            other = helper.make_graph(
                [helper.make_node("Neg", ["x"], [f"e{level}"])],
                f"else{level}",
                [],
                [value(f"e{level}", TensorProto.FLOAT, [2])],
            )
            graph_nodes = [
                helper.make_node("If", ["c"], [out], then_branch=then, else_branch=other)
            ]
            inner_out = out
        graph_nodes.append(helper.make_node("Identity", ["o0"], ["y"]))
        return make_model(
            graph_nodes,
            [value("x", TensorProto.FLOAT, [2]), value("c", TensorProto.BOOL, [])],
            [value("y", TensorProto.FLOAT, [2])],
        )

    return build


def _loop(trip: int | None, cond: bool, depth: int = 1) -> object:
    """Loop(trip, cond) adding 1 to a carried value; nested `depth` times."""

    def body(level: int) -> onnx.GraphProto:
        if level == depth:
            nodes = [
                helper.make_node("Add", ["s_in", "one"], ["s_out"]),
                helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            ]
        else:
            nodes = [
                helper.make_node(
                    "Loop", ["two", "true"], ["s_out"], body=body(level + 1), name=f"loop{level}"
                ),
                helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            ]
            nodes[0].input.append("s_in")
        return helper.make_graph(
            nodes,
            f"body{level}",
            [
                value("i", TensorProto.INT64, []),
                value("cond_in", TensorProto.BOOL, []),
                value("s_in", TensorProto.FLOAT, [1]),
            ],
            [value("cond_out", TensorProto.BOOL, []), value("s_out", TensorProto.FLOAT, [1])],
        )

    def build() -> onnx.ModelProto:
        inits = [
            _f32("one", [1.0]),
            _i64("two", 2),
            numpy_helper.from_array(np.array(True), "true"),
            numpy_helper.from_array(np.array(cond), "cond0"),
        ]
        if trip is not None:
            inits.append(_i64("trip", trip))
        node = helper.make_node(
            "Loop", ["trip" if trip is not None else "", "cond0", "x"], ["y"], body=body(1)
        )
        return make_model(
            [node],
            [value("x", TensorProto.FLOAT, [1])],
            [value("y", TensorProto.FLOAT, [1])],
            inits,
        )

    return build


def _no_data(dims: list[int], dtype: int = TensorProto.FLOAT) -> object:
    def build() -> onnx.ModelProto:
        t = onnx.TensorProto(name="w", data_type=dtype, dims=dims)
        add = helper.make_node("Add", ["x", "w"], ["y"])
        return make_model(
            [add], [value("x", TensorProto.FLOAT, [1])], [value("y", TensorProto.FLOAT, None)], [t]
        )

    return build


def _huge_input(dims: list[int | str]) -> object:
    def build() -> onnx.ModelProto:
        return make_model(
            [helper.make_node("Relu", ["x"], ["y"])],
            [value("x", TensorProto.FLOAT, dims)],
            [value("y", TensorProto.FLOAT, dims)],
        )

    return build


def cases(rng: np.random.Generator, *, big: bool = True) -> Iterator[tuple]:
    """Generators to terabytes, endless loops, huge graphs."""
    side = 1 << 20
    yield _case(
        "constantofshape-tb",
        "either",
        "ConstantOfShape [2**40]",
        _generator("ConstantOfShape", [_i64("shape", [TB])], ["shape"]),
    )
    yield _case(
        "constantofshape-2d",
        "either",
        "ConstantOfShape [2**20, 2**20]",
        _generator("ConstantOfShape", [_i64("shape", [side, side])], ["shape"]),
    )
    yield _case(
        "constantofshape-neg",
        "either",
        "ConstantOfShape [-1]",
        _generator("ConstantOfShape", [_i64("shape", [-1])], ["shape"]),
    )
    yield _case(
        "expand-tb",
        "either",
        "Expand [1] to [2**20, 2**20]",
        _generator("Expand", [_f32("one", [1.0]), _i64("shape", [side, side])], ["one", "shape"]),
    )
    yield _case(
        "range-tb",
        "either",
        "Range 0..2**40",
        _generator(
            "Range", [_f32("a", 0.0), _f32("b", float(TB)), _f32("d", 1.0)], ["a", "b", "d"]
        ),
    )
    yield _case(
        "range-tiny-step",
        "either",
        "Range 0..1 step 1e-12",
        _generator("Range", [_f32("a", 0.0), _f32("b", 1.0), _f32("d", 1e-12)], ["a", "b", "d"]),
    )
    yield _case(
        "tile-tb",
        "either",
        "Tile [1024] by 2**30",
        _generator("Tile", [_f32("t", [1.0] * 1024), _i64("r", [1 << 30])], ["t", "r"]),
    )
    yield _case(
        "pad-tb",
        "either",
        "Pad [1] by 2**40",
        _generator("Pad", [_f32("p", [1.0]), _i64("pads", [0, TB])], ["p", "pads"]),
    )
    yield _case(
        "resize-1e6",
        "either",
        "Resize scales 1e6 x 1e6",
        _generator(
            "Resize", [_f32("r", [[[[1.0]]]]), _f32("sc", [1, 1, 1e6, 1e6])], ["r", "", "sc"]
        ),
    )
    yield _case(
        "onehot-tb",
        "either",
        "OneHot depth 2**40",
        _generator(
            "OneHot",
            [_i64("idx", [1]), _i64("depth", TB), _f32("ov", [0.0, 1.0])],
            ["idx", "depth", "ov"],
        ),
    )
    yield _case(
        "init-64gb-nodata",
        "invalid",
        "initializer claims 64 GB, carries nothing",
        _no_data([1 << 34]),
    )
    yield _case(
        "init-tb-dims",
        "invalid",
        "initializer dims [2**20, 2**20, 2**20], no data",
        _no_data([side, side, side]),
    )
    yield _case(
        "init-overflow-dims",
        "invalid",
        "initializer dims whose product overflows int64",
        _no_data([1 << 62, 1 << 62]),
    )
    yield _case("input-2e40", "either", "an input declared [2**40]", _huge_input([TB]))
    yield _case(
        "input-huge-2d", "either", "an input declared [2**20, 2**20]", _huge_input([side, side])
    )
    yield _case(
        "input-huge-sym", "either", "[N, 2**30] with a symbolic batch", _huge_input(["N", 1 << 30])
    )
    yield _case(
        "loop-infinite", "either", "Loop with no trip count, cond always true", _loop(None, True)
    )
    yield _case("loop-huge-trip", "either", "Loop with trip count 2**62", _loop(1 << 62, True))
    yield _case("loop-max-trip", "either", "Loop with trip count INT64_MAX", _loop(I64_MAX, True))
    yield _case(
        "loop-nested-3",
        "either",
        "three nested Loops, outer trip 10**9",
        _loop(10**9, True, depth=3),
    )
    yield _case(
        "loop-nested-12", "valid", "12 nested Loops of 2 iterations", _loop(2, True, depth=12)
    )
    # ORT runs it as ONNX, but its .ort flatbuffer verifier stops near 20 nested Ifs
    yield _case(
        "if-nested-30",
        "valid",
        "If nested 30 deep (the ORT format cannot hold it: export may refuse)",
        _nested_if(30),
        either_for=("export",),
    )
    # protobuf's parser stops at nesting depth 100 (3 messages per If level): onnx.load
    # and ORT both refuse 32 levels ("Exceeded upb_DecodeOptions_MaxDepth")
    yield _case(
        "if-nested-32", "invalid", "If nested 32 deep, past protobuf's depth limit", _nested_if(32)
    )
    yield _case("chain-3k", "valid", "3,000-node Relu chain", _chain(3000))
    yield _case(
        "chain-mul-3k", "valid", "3,000 Mul-by-constant chain", _chain(3000, with_init=True)
    )
    yield _case("inits-5k", "valid", "Sum of 5,000 small initializers", _many_inits(5000))
    if big:
        yield _case("chain-30k", "valid", "30,000-node Relu chain", _chain(30_000), heavy=True)
        yield _case("chain-300k", "valid", "300,000-node Relu chain", _chain(300_000), heavy=True)
        yield _case(
            "chain-mul-100k",
            "valid",
            "100,000 Mul-by-constant chain",
            _chain(100_000, with_init=True),
            heavy=True,
        )
        yield _case(
            "inits-100k",
            "valid",
            "Sum of 100,000 small initializers",
            _many_inits(100_000),
            heavy=True,
        )
