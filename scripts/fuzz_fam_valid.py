"""Fuzz family `valid`: legal edge cases every command must accept.

Empty graphs, scalars, zero-size tensors, every opset from 7 to the newest, every
tensor dtype onnx knows, odd names. A dtype ONNX Runtime cannot run is kept, but
marked "either" (the reference cannot run it either; see `fuzz_corpus.check_reference`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
from fuzz_build import Case, cnn, make_model, mlp, save, value, write_calib
from onnx import TensorProto, helper, numpy_helper


def _case(
    case_id: str, note: str, build: Callable[[], onnx.ModelProto], expect: str = "valid"
) -> tuple:
    def write(folder: Path) -> bool:
        model = build()
        save(model, folder)
        return write_calib(model, folder / "calib.npz")

    return Case(case_id, "valid", expect, note), write


def _unary(
    op: str, elem: int, shape: list[int | str], **attrs: object
) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        return make_model(
            [helper.make_node(op, ["x"], ["y"], **attrs)],
            [value("x", elem, shape)],
            [value("y", elem, shape)],
        )

    return build


def _opset_model(opset: int) -> Callable[[], onnx.ModelProto]:
    """MatMul + Add + Relu + Sigmoid, ops that exist unchanged-enough since opset 7."""

    def build() -> onnx.ModelProto:
        ir_version = 3 if opset < 8 else 4 if opset < 10 else 7 if opset < 15 else 8
        model = mlp(opset, opset=opset)
        model.ir_version = ir_version
        if ir_version < 4:  # IR 3: initializers must be listed as inputs
            for t in model.graph.initializer:
                model.graph.input.append(value(t.name, t.data_type, list(t.dims)))
        return model

    return build


def _dtype_model(elem: int) -> Callable[[], onnx.ModelProto]:
    """y = Identity(x) and w_out = Identity(w) for one dtype (an initializer of it too)."""

    def build() -> onnx.ModelProto:
        np_type = helper.tensor_dtype_to_np_dtype(elem)
        if elem == TensorProto.STRING:
            w = helper.make_tensor("w", elem, [2], [b"a", b"bc"])
        elif elem in (TensorProto.BOOL,):
            w = helper.make_tensor("w", elem, [3], [True, False, True])
        elif elem in (TensorProto.COMPLEX64, TensorProto.COMPLEX128):
            w = helper.make_tensor("w", elem, [2], [1 + 2j, 3 - 1j])
        else:
            values = np.array([0, 1, 2], dtype=np.float32)
            w = helper.make_tensor(
                "w",
                elem,
                [3],
                values.astype(np_type) if np_type is not np.dtype(object) else values,
            )
        if elem in _NUMPY_FEEDABLE:
            nodes = [
                helper.make_node("Identity", ["x"], ["y"]),
                helper.make_node("Identity", ["w"], ["w_out"]),
            ]
            io_type = elem
        else:  # ORT's Python API takes no such array: the dtype lives inside the graph
            f = TensorProto.FLOAT
            nodes = [
                helper.make_node("Cast", ["x"], ["xc"], to=elem),
                helper.make_node("Cast", ["xc"], ["y"], to=f),
                helper.make_node("Cast", ["w"], ["w_out"], to=f),
            ]
            io_type = f
        return make_model(
            nodes,
            [value("x", io_type, [2, 3])],
            [value("y", io_type, [2, 3]), value("w_out", io_type, list(w.dims))],
            [w],
            ir_version=10,
            opset=21,
        )

    return build


def _names(kind: str) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        model = mlp(5)
        odd = {
            "slash": "../../etc/passwd",
            "unicode": "é‍中文🙂",
            "long": "n" * 10_000,
            "space": "a b\tc",
        }[kind]
        renames = {"h1": odd, "w1": odd + "_w"}
        for node in model.graph.node:
            node.input[:] = [renames.get(n, n) for n in node.input]
            node.output[:] = [renames.get(n, n) for n in node.output]
            node.name = odd + node.name
        for t in model.graph.initializer:
            t.name = renames.get(t.name, t.name)
        return model

    return build


def _builders() -> dict[str, tuple[str, Callable[[], onnx.ModelProto]]]:
    def empty() -> onnx.ModelProto:
        return make_model(
            [], [value("x", TensorProto.FLOAT, [2])], [value("x", TensorProto.FLOAT, [2])]
        )

    def const_only() -> onnx.ModelProto:
        node = helper.make_node(
            "Constant", [], ["y"], value=numpy_helper.from_array(np.ones(3, np.float32))
        )
        return make_model([node], [], [value("y", TensorProto.FLOAT, [3])])

    def scalar_bool() -> onnx.ModelProto:
        return make_model(
            [helper.make_node("Not", ["x"], ["y"])],
            [value("x", TensorProto.BOOL, [])],
            [value("y", TensorProto.BOOL, [])],
        )

    def zero_size_matmul() -> onnx.ModelProto:
        w = numpy_helper.from_array(np.ones((8, 4), np.float32), "w")
        return make_model(
            [helper.make_node("MatMul", ["x", "w"], ["y"])],
            [value("x", TensorProto.FLOAT, [0, 8])],
            [value("y", TensorProto.FLOAT, [0, 4])],
            [w],
        )

    def zero_size_init() -> onnx.ModelProto:
        w = numpy_helper.from_array(np.zeros((0, 4), np.float32), "w")
        return make_model(
            [helper.make_node("Concat", ["x", "w"], ["y"], axis=0)],
            [value("x", TensorProto.FLOAT, [2, 4])],
            [value("y", TensorProto.FLOAT, [2, 4])],
            [w],
        )

    def input_is_output() -> onnx.ModelProto:
        model = mlp(6)
        model.graph.output.append(model.graph.input[0])
        return model

    def two_outputs_same() -> onnx.ModelProto:
        model = mlp(7)
        model.graph.node.append(helper.make_node("Identity", ["y"], ["y2"]))
        model.graph.output.append(value("y2", TensorProto.FLOAT, [1, 4]))
        return model

    def dynamic_batch() -> onnx.ModelProto:
        return mlp(8, batch="batch")

    def unnamed_dims() -> onnx.ModelProto:
        return mlp(9, batch=None)  # type: ignore[arg-type]

    def if_const() -> onnx.ModelProto:
        then = helper.make_graph(
            [helper.make_node("Relu", ["x"], ["t"])], "t", [], [value("t", TensorProto.FLOAT, [2])]
        )
        other = helper.make_graph(
            [helper.make_node("Neg", ["x"], ["e"])], "e", [], [value("e", TensorProto.FLOAT, [2])]
        )
        cond = numpy_helper.from_array(np.array(True), "c")
        return make_model(
            [helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)],
            [value("x", TensorProto.FLOAT, [2])],
            [value("y", TensorProto.FLOAT, [2])],
            [cond],
        )

    def local_function() -> onnx.ModelProto:
        fn = helper.make_function(
            "local",
            "Twice",
            ["a"],
            ["b"],
            [helper.make_node("Add", ["a", "a"], ["b"])],
            [helper.make_opsetid("", 17)],
        )
        model = make_model(
            [helper.make_node("Twice", ["x"], ["y"], domain="local")],
            [value("x", TensorProto.FLOAT, [3])],
            [value("y", TensorProto.FLOAT, [3])],
            opsets=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
        )
        model.functions.append(fn)
        return model

    def metadata() -> onnx.ModelProto:
        model = cnn(3)
        helper.set_model_props(model, {"author": "fuzz", "license": "none"})
        model.doc_string = "d" * 5000
        return model

    def no_inputs_two_consts() -> onnx.ModelProto:
        a = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "a")
        return make_model(
            [helper.make_node("Relu", ["a"], ["y"])],
            [],
            [value("y", TensorProto.FLOAT, [2, 3])],
            [a],
        )

    def shared_weight() -> onnx.ModelProto:
        w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
        return make_model(
            [
                helper.make_node("MatMul", ["x", "w"], ["h"]),
                helper.make_node("MatMul", ["h", "w"], ["y"]),
            ],
            [value("x", TensorProto.FLOAT, [1, 4])],
            [value("y", TensorProto.FLOAT, [1, 4])],
            [w],
        )

    def int_input() -> onnx.ModelProto:
        emb = numpy_helper.from_array(np.ones((10, 4), np.float32), "emb")
        return make_model(
            [helper.make_node("Gather", ["emb", "ids"], ["y"])],
            [value("ids", TensorProto.INT64, [1, 3])],
            [value("y", TensorProto.FLOAT, [1, 3, 4])],
            [emb],
        )

    return {
        "empty-graph": ("no nodes: the input is the output", empty),
        "constant-only": ("no inputs, one Constant", const_only),
        "scalar-float": ("a scalar float input", _unary("Relu", TensorProto.FLOAT, [])),
        "scalar-bool": ("a scalar bool input", scalar_bool),
        "zero-size-input": ("an input of shape [0, 8]", zero_size_matmul),
        "zero-size-init": ("an initializer of shape [0, 4]", zero_size_init),
        "zero-size-relu": ("Relu of shape [3, 0]", _unary("Relu", TensorProto.FLOAT, [3, 0])),
        "input-is-output": ("a graph input that is also an output", input_is_output),
        "two-outputs": ("an output and its Identity copy", two_outputs_same),
        "dynamic-batch": ("named dynamic batch", dynamic_batch),
        "unnamed-dims": ("dimension without name or value", unnamed_dims),
        "if-constant": ("If on a constant condition", if_const),
        "local-function": ("a local function", local_function),
        "metadata": ("metadata props and a long doc string", metadata),
        "no-inputs": ("no graph inputs at all", no_inputs_two_consts),
        "shared-weight": ("one weight read twice", shared_weight),
        "int-input": ("int64 ids into Gather", int_input),
        "cnn": ("the base CNN", cnn),
        "names-slash": ("names like ../../etc/passwd", _names("slash")),
        "names-unicode": ("unicode names", _names("unicode")),
        "names-long": ("10,000-character names", _names("long")),
        "names-space": ("names with spaces and tabs", _names("space")),
    }


_NUMPY_FEEDABLE = {
    TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.INT8,
    TensorProto.UINT8, TensorProto.INT16, TensorProto.UINT16, TensorProto.INT32,
    TensorProto.UINT32, TensorProto.INT64, TensorProto.UINT64, TensorProto.BOOL,
    TensorProto.STRING,
}  # fmt: skip

DTYPES = [
    TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16,
    TensorProto.INT8, TensorProto.UINT8, TensorProto.INT16, TensorProto.UINT16,
    TensorProto.INT32, TensorProto.UINT32, TensorProto.INT64, TensorProto.UINT64,
    TensorProto.BOOL, TensorProto.STRING, TensorProto.COMPLEX64, TensorProto.COMPLEX128,
    TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E4M3FNUZ, TensorProto.FLOAT8E5M2,
    TensorProto.FLOAT8E5M2FNUZ, TensorProto.INT4, TensorProto.UINT4,
]  # fmt: skip


def cases(rng: np.random.Generator) -> Iterator[tuple]:
    """Edge cases, one model per opset, one model per dtype."""
    for case_id, (note, build) in _builders().items():
        yield _case(case_id, note, build)
    for opset in range(7, onnx.defs.onnx_opset_version() + 1):
        yield _case(f"opset-{opset}", f"the MLP at opset {opset}", _opset_model(opset))
    for elem in DTYPES:
        name = TensorProto.DataType.Name(elem).lower()
        yield _case(f"dtype-{name}", f"Identity of {name}, and an initializer", _dtype_model(elem))
