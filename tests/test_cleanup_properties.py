"""Property test of the default clean-up on random small graphs.

Graphs of element-wise ops, Identity, Cast, Reshape, Transpose, Concat, Expand, Slice,
Dropout and constants (zeros, ones, random) are drawn by hypothesis; after the default
`onnxslim optimize` pipeline they must give the same outputs on ORT (bit for bit), still
pass the ONNX checker, and a second run must change nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_ir as ir
from cleanup_helpers import assert_exact, check_valid, copy, run
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxslim.graphs import node_count
from onnxslim.pipeline import Pipeline, run_pipeline
from onnxslim.registry import DEFAULT_OPTIMIZE

SHAPE = (2, 3, 4)
UNARY = ("Relu", "Neg", "Abs", "Sigmoid", "Identity", "Floor")
BINARY = ("Add", "Sub", "Mul", "Max")


@dataclass
class Builder:
    draw: st.DrawFn
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    values: list[tuple[str, tuple[int, ...], int]] = field(
        default_factory=list
    )  # name, shape, elem
    constants: int = 0

    def fresh(self, shape: tuple[int, ...], elem: int = TensorProto.FLOAT) -> str:
        name = f"v{len(self.values)}"
        self.values.append((name, shape, elem))
        return name

    def constant(self, shape: tuple[int, ...], kind: str) -> str:
        name = f"c{self.constants}"
        self.constants += 1
        if kind == "zeros":
            array = np.zeros(shape, np.float32)
        elif kind == "ones":
            array = np.ones(shape, np.float32)
        else:
            array = np.random.default_rng(len(self.inits)).standard_normal(shape).astype(np.float32)
        if self.draw(st.booleans()):
            self.nodes.append(
                helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array))
            )
        else:
            self.inits.append(numpy_helper.from_array(array, name))
        return name

    def pick(self) -> tuple[str, tuple[int, ...]]:
        """A float value of the model's shape (intermediate shapes are not reused)."""
        pool = [(n, s) for n, s, e in self.values if e == TensorProto.FLOAT and s == SHAPE]
        return self.draw(st.sampled_from(pool))

    def step(self) -> None:
        kind = self.draw(
            st.sampled_from(
                (
                    "unary",
                    "binary",
                    "const-binary",
                    "cast",
                    "reshape",
                    "transpose",
                    "concat",
                    "expand",
                    "slice",
                    "dropout",
                    "shape-reshape",
                )
            )
        )
        src, shape = self.pick()
        if kind == "unary":
            op = self.draw(st.sampled_from(UNARY))
            self.nodes.append(helper.make_node(op, [src], [self.fresh(shape)]))
        elif kind == "binary":
            other, _ = self.pick()
            op = self.draw(st.sampled_from(BINARY))
            self.nodes.append(helper.make_node(op, [src, other], [self.fresh(shape)]))
        elif kind == "const-binary":
            cshape = self.draw(st.sampled_from(((), (1,), (4,), (3, 1), SHAPE)))
            c = self.constant(cshape, self.draw(st.sampled_from(("zeros", "ones", "random"))))
            op = self.draw(st.sampled_from(BINARY))
            operands = [src, c] if self.draw(st.booleans()) else [c, src]
            self.nodes.append(helper.make_node(op, operands, [self.fresh(shape)]))
        elif kind == "cast":
            to = self.draw(
                st.sampled_from(
                    (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.INT32)
                )
            )
            mid = self.fresh(shape, to) if to != TensorProto.FLOAT else self.fresh(shape)
            self.nodes.append(helper.make_node("Cast", [src], [mid], to=to))
            if to != TensorProto.FLOAT:
                self.nodes.append(
                    helper.make_node("Cast", [mid], [self.fresh(shape)], to=TensorProto.FLOAT)
                )
        elif kind == "reshape":
            target = self.draw(st.sampled_from(((2, 3, 4), (0, -1, 4), (6, 4), (-1,))))
            t = f"s{len(self.inits)}"
            self.inits.append(numpy_helper.from_array(np.array(target, np.int64), t))
            flat = self.fresh((24,) if target == (-1,) else (6, 4) if target == (6, 4) else SHAPE)
            self.nodes.append(helper.make_node("Reshape", [src, t], [flat]))
            if target in ((-1,), (6, 4)):
                back = f"s{len(self.inits)}"
                self.inits.append(numpy_helper.from_array(np.array(SHAPE, np.int64), back))
                self.nodes.append(helper.make_node("Reshape", [flat, back], [self.fresh(SHAPE)]))
        elif kind == "transpose":
            perm = self.draw(st.sampled_from(((0, 1, 2), (0, 2, 1), (1, 0, 2))))
            mid = self.fresh(tuple(shape[p] for p in perm))
            self.nodes.append(helper.make_node("Transpose", [src], [mid], perm=list(perm)))
            self.nodes.append(
                helper.make_node(
                    "Transpose", [mid], [self.fresh(shape)], perm=list(np.argsort(perm))
                )
            )
        elif kind == "concat":
            operands = [src] if self.draw(st.booleans()) else [src, self.pick()[0]]
            out_shape = (shape[0] * len(operands), *shape[1:])
            mid = self.fresh(out_shape)
            self.nodes.append(helper.make_node("Concat", operands, [mid], axis=0))
            if len(operands) == 2:
                starts, ends = f"s{len(self.inits)}", f"s{len(self.inits) + 1}"
                self.inits += [
                    numpy_helper.from_array(np.int64([2]), starts),
                    numpy_helper.from_array(np.int64([4]), ends),
                ]
                self.nodes.append(
                    helper.make_node("Slice", [mid, starts, ends], [self.fresh(shape)])
                )
        elif kind == "expand":
            t = f"s{len(self.inits)}"
            self.inits.append(
                numpy_helper.from_array(
                    np.int64(self.draw(st.sampled_from(([1, 4], [3, 1], [2, 3, 4])))), t
                )
            )
            self.nodes.append(helper.make_node("Expand", [src, t], [self.fresh(shape)]))
        elif kind == "slice":
            starts, ends, axes = (f"s{len(self.inits) + i}" for i in range(3))
            self.inits += [
                numpy_helper.from_array(np.int64([0]), starts),
                numpy_helper.from_array(np.int64([np.iinfo(np.int64).max]), ends),
                numpy_helper.from_array(np.int64([self.draw(st.integers(0, 2))]), axes),
            ]
            self.nodes.append(
                helper.make_node("Slice", [src, starts, ends, axes], [self.fresh(shape)])
            )
        elif kind == "dropout":
            self.nodes.append(helper.make_node("Dropout", [src], [self.fresh(shape)]))
        else:  # Reshape(src, Shape(other)): a shape computation that folds
            other, _ = self.pick()
            s = self.fresh((3,), TensorProto.INT64)
            self.nodes.append(helper.make_node("Shape", [other], [s]))
            self.nodes.append(helper.make_node("Reshape", [src, s], [self.fresh(shape)]))


@st.composite
def graphs(draw: st.DrawFn) -> ir.Model:
    builder = Builder(draw)
    builder.values.append(("x", SHAPE, TensorProto.FLOAT))
    for _ in range(draw(st.integers(1, 10))):
        builder.step()
    floats = [n for n, s, e in builder.values if e == TensorProto.FLOAT and s == SHAPE]
    outputs = [floats[-1]]
    extra = draw(st.sampled_from(floats))
    if extra not in outputs:
        outputs.append(extra)
    graph = helper.make_graph(
        builder.nodes,
        "random",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, SHAPE) for o in outputs],
        initializer=builder.inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto, full_check=True)
    return ir.serde.deserialize_model(proto)


FEEDS = [
    {"x": np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32) * 3}
    for seed in range(2)
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_default_cleanup_keeps_outputs_validity_and_is_idempotent(m: ir.Model) -> None:
    pipeline = Pipeline.from_names(DEFAULT_OPTIMIZE)
    once = run_pipeline(copy(m), pipeline).model
    note(f"{_text(m)}\n--- after one run:\n{_text(once)}")
    check_valid(once)
    assert node_count(once) <= node_count(m)
    assert_exact(run(m, FEEDS), run(once, FEEDS))
    again = run_pipeline(copy(once), pipeline)
    changed = [r.name for r in again.records if r.status != "unchanged"]
    assert not changed, f"second run changed the model: {changed}"


def _text(m: ir.Model) -> str:
    return onnx.printer.to_text(ir.serde.serialize_model(m).graph)
