"""Fuzz families `structure` (broken graphs) and `lies` (metadata that contradicts data).

Every case starts from a small valid model and breaks one thing, so a tool that
accepts it has missed exactly that thing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
from fuzz_build import Case, mlp, save, value, write_calib
from onnx import TensorProto, helper, numpy_helper

Mutation = Callable[[onnx.ModelProto], None]


def _case(family: str, case_id: str, expect: str, note: str, mutate: Mutation) -> tuple:
    def write(folder: Path) -> bool:
        model = mlp(3)
        calib_ok = True
        mutate(model)
        save(model, folder)
        return calib_ok and write_calib(model, folder / "calib.npz")

    return Case(case_id, family, expect, note), write


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def _set_attr(node: onnx.NodeProto, attr: onnx.AttributeProto) -> None:
    del node.attribute[:]
    node.attribute.append(attr)


def _if_node(branch_nodes: list[onnx.NodeProto], out: str) -> onnx.NodeProto:
    then = helper.make_graph(branch_nodes, "then", [], [value(out, TensorProto.FLOAT, None)])
    other = helper.make_graph(
        [helper.make_node("Identity", ["h2"], [out])],
        "else",
        [],
        [value(out, TensorProto.FLOAT, None)],
    )
    return helper.make_node("If", ["cond"], ["hif"], then_branch=then, else_branch=other)


def structure(rng: np.random.Generator) -> Iterator[tuple]:  # noqa: C901 (a flat list of cases)
    """Dangling names, cycles, duplicates, opsets, domains, attribute types, subgraphs."""
    family = "structure"

    def dangling(m: onnx.ModelProto) -> None:
        _node(m, "add1").input[0] = "nowhere"

    def cycle(m: onnx.ModelProto) -> None:
        _node(m, "mm1").input[0] = "h2"

    def self_loop(m: onnx.ModelProto) -> None:
        _node(m, "relu").input[0] = "h2"

    def dup_output(m: onnx.ModelProto) -> None:
        _node(m, "relu").output[0] = "h1"

    def dup_init(m: onnx.ModelProto) -> None:
        m.graph.initializer.append(numpy_helper.from_array(np.ones(16, np.float32), "b1"))

    def dup_input(m: onnx.ModelProto) -> None:
        m.graph.input.append(m.graph.input[0])

    def input_is_init_output(m: onnx.ModelProto) -> None:
        m.graph.input.append(value("h1", TensorProto.FLOAT, [1, 16]))

    def no_opset(m: onnx.ModelProto) -> None:
        del m.opset_import[:]

    def dup_opset(m: onnx.ModelProto) -> None:
        m.opset_import.append(helper.make_opsetid("", 11))

    def opset_future(m: onnx.ModelProto) -> None:
        m.opset_import[0].version = 9999

    def opset_zero(m: onnx.ModelProto) -> None:
        m.opset_import[0].version = 0

    def unknown_domain(m: onnx.ModelProto) -> None:
        _node(m, "relu").domain = "com.example.nothere"

    def unknown_domain_imported(m: onnx.ModelProto) -> None:
        _node(m, "relu").domain = "com.example.nothere"
        m.opset_import.append(helper.make_opsetid("com.example.nothere", 1))

    def unknown_op(m: onnx.ModelProto) -> None:
        _node(m, "relu").op_type = "NoSuchOp"

    def empty_op(m: onnx.ModelProto) -> None:
        _node(m, "relu").op_type = ""

    def wrong_arity(m: onnx.ModelProto) -> None:
        _node(m, "relu").input.append("h0")

    def missing_input(m: onnx.ModelProto) -> None:
        del _node(m, "mm2").input[1]

    def attr_type_float(m: onnx.ModelProto) -> None:
        n = m.graph.node[2]
        n.op_type = "Transpose"
        _set_attr(n, helper.make_attribute("perm", [1.5, 0.5]))

    def attr_bad_perm(m: onnx.ModelProto) -> None:
        n = m.graph.node[2]
        n.op_type = "Transpose"
        _set_attr(n, helper.make_attribute("perm", [0, 0]))

    def attr_perm_range(m: onnx.ModelProto) -> None:
        n = m.graph.node[2]
        n.op_type = "Transpose"
        _set_attr(n, helper.make_attribute("perm", [5, -9]))

    def attr_unknown(m: onnx.ModelProto) -> None:
        _node(m, "relu").attribute.append(helper.make_attribute("bogus", 3))

    def attr_undefined_type(m: onnx.ModelProto) -> None:
        attr = onnx.AttributeProto(name="alpha")
        n = _node(m, "relu")
        n.op_type = "LeakyRelu"
        n.attribute.append(attr)

    def out_of_order(m: onnx.ModelProto) -> None:
        nodes = list(m.graph.node)
        del m.graph.node[:]
        m.graph.node.extend(reversed(nodes))

    def output_not_produced(m: onnx.ModelProto) -> None:
        m.graph.output.append(value("ghost", TensorProto.FLOAT, [1]))

    def no_outputs(m: onnx.ModelProto) -> None:
        del m.graph.output[:]

    def empty_names(m: onnx.ModelProto) -> None:
        _node(m, "relu").output[0] = ""

    def output_no_type(m: onnx.ModelProto) -> None:
        m.graph.output[0].ClearField("type")

    def input_no_type(m: onnx.ModelProto) -> None:
        m.graph.input[0].ClearField("type")

    def init_undefined_dtype(m: onnx.ModelProto) -> None:
        m.graph.initializer[1].data_type = 0

    def init_bad_dtype(m: onnx.ModelProto) -> None:
        m.graph.initializer[1].data_type = 99

    def init_no_name(m: onnx.ModelProto) -> None:
        m.graph.initializer.append(numpy_helper.from_array(np.ones(3, np.float32), ""))

    def segmented(m: onnx.ModelProto) -> None:
        seg = m.graph.initializer[1].segment
        seg.begin, seg.end = 0, 8

    def ir_zero(m: onnx.ModelProto) -> None:
        m.ir_version = 0

    def ir_future(m: onnx.ModelProto) -> None:
        m.ir_version = 99

    def if_captures_undefined(m: onnx.ModelProto) -> None:
        m.graph.input.append(value("cond", TensorProto.BOOL, []))
        m.graph.node.insert(
            3, _if_node([helper.make_node("Relu", ["undefined_outer"], ["t"])], "t")
        )
        _node(m, "mm2").input[0] = "hif"

    def if_no_else(m: onnx.ModelProto) -> None:
        m.graph.input.append(value("cond", TensorProto.BOOL, []))
        node = _if_node([helper.make_node("Relu", ["h2"], ["t"])], "t")
        del node.attribute[1]
        m.graph.node.insert(3, node)
        _node(m, "mm2").input[0] = "hif"

    def if_branch_arity(m: onnx.ModelProto) -> None:
        m.graph.input.append(value("cond", TensorProto.BOOL, []))
        node = _if_node([helper.make_node("Relu", ["h2"], ["t"])], "t")
        node.attribute[0].g.output.append(value("h2", TensorProto.FLOAT, None))
        m.graph.node.insert(3, node)
        _node(m, "mm2").input[0] = "hif"

    def loop_bad_body(m: onnx.ModelProto) -> None:
        body = helper.make_graph(
            [helper.make_node("Identity", ["c_in"], ["c_out"])],
            "body",
            [value("i", TensorProto.INT64, []), value("c_in", TensorProto.BOOL, [])],
            [value("c_out", TensorProto.BOOL, []), value("extra", TensorProto.FLOAT, None)],
        )
        m.graph.initializer.append(numpy_helper.from_array(np.array(2, np.int64), "trip"))
        m.graph.node.insert(
            3, helper.make_node("Loop", ["trip", ""], ["scan_out"], body=body, name="loop")
        )
        m.graph.output.append(value("scan_out", TensorProto.FLOAT, None))

    def graph_attr_as_int(m: onnx.ModelProto) -> None:
        m.graph.input.append(value("cond", TensorProto.BOOL, []))
        m.graph.node.insert(
            3,
            helper.make_node("If", ["cond"], ["hif"], then_branch=1, else_branch=2),
        )
        _node(m, "mm2").input[0] = "hif"

    def function_recursive(m: onnx.ModelProto) -> None:
        fn = helper.make_function(
            "local",
            "F",
            ["a"],
            ["b"],
            [helper.make_node("F", ["a"], ["b"], domain="local")],
            [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
        )
        m.functions.append(fn)
        m.opset_import.append(helper.make_opsetid("local", 1))
        n = _node(m, "relu")
        n.op_type, n.domain = "F", "local"

    mutations: dict[str, tuple[Mutation, str]] = {
        "dangling-input": (dangling, "a node reads a name nothing defines"),
        "cycle": (cycle, "mm1 reads relu's output: a cycle"),
        "self-loop": (self_loop, "a node reads its own output"),
        "dup-node-output": (dup_output, "two nodes write the same name"),
        "dup-initializer": (dup_init, "two initializers share a name"),
        "dup-graph-input": (dup_input, "the same graph input listed twice"),
        "input-shadows-node": (input_is_init_output, "a graph input named like a node output"),
        "no-opset": (no_opset, "no opset import at all"),
        "dup-opset": (dup_opset, "the default domain imported twice"),
        "opset-9999": (opset_future, "opset 9999"),
        "opset-0": (opset_zero, "opset 0"),
        "unknown-domain": (unknown_domain, "op in a domain never imported"),
        "unknown-domain-imported": (unknown_domain_imported, "op in an unknown imported domain"),
        "unknown-op": (unknown_op, "an op that does not exist"),
        "empty-op": (empty_op, "a node without op_type"),
        "wrong-arity": (wrong_arity, "Relu with two inputs"),
        "missing-input": (missing_input, "MatMul with one input"),
        "attr-float-perm": (attr_type_float, "Transpose perm given as floats"),
        "attr-bad-perm": (attr_bad_perm, "Transpose perm [0, 0]"),
        "attr-perm-range": (attr_perm_range, "Transpose perm out of range"),
        "attr-unknown": (attr_unknown, "an attribute the op does not have"),
        "attr-undefined": (attr_undefined_type, "an attribute of type UNDEFINED"),
        "out-of-order": (out_of_order, "nodes listed in reverse topological order"),
        "output-not-produced": (output_not_produced, "a graph output nothing produces"),
        "no-outputs": (no_outputs, "a graph with no outputs"),
        "empty-value-name": (empty_names, "a node output with an empty name read later"),
        "output-no-type": (output_no_type, "a graph output without a type"),
        "input-no-type": (input_no_type, "a graph input without a type"),
        "init-undefined-dtype": (init_undefined_dtype, "initializer of dtype UNDEFINED"),
        "init-dtype-99": (init_bad_dtype, "initializer of dtype 99"),
        "init-no-name": (init_no_name, "an initializer with no name"),
        "segmented": (segmented, "a segmented tensor"),
        "ir-0": (ir_zero, "IR version 0"),
        "ir-99": (ir_future, "IR version 99"),
        "if-captures-undefined": (if_captures_undefined, "If branch reads an undefined name"),
        "if-no-else": (if_no_else, "If without else_branch"),
        "if-branch-arity": (if_branch_arity, "If branches with different output counts"),
        "loop-bad-body": (loop_bad_body, "Loop body signature does not match the node"),
        "graph-attr-int": (graph_attr_as_int, "If branches given as ints"),
        "function-recursive": (function_recursive, "a local function that calls itself"),
    }
    # Legal ONNX (a custom op in an imported domain): only ONNX Runtime refuses it, so a
    # reader (inspect) may describe it; a writer still cannot pass, its output must load in ORT.
    legal = {"unknown-domain-imported"}
    for case_id, (mutate, note) in mutations.items():
        yield _case(family, case_id, "either" if case_id in legal else "invalid", note, mutate)


def lies(rng: np.random.Generator) -> Iterator[tuple]:
    """Annotations, sizes and types that contradict the data or the graph."""
    family = "lies"

    def vi_shape(m: onnx.ModelProto) -> None:
        m.graph.value_info.append(value("h1", TensorProto.FLOAT, [3, 5, 7]))

    def vi_type(m: onnx.ModelProto) -> None:
        m.graph.value_info.append(value("h1", TensorProto.INT64, [1, 16]))

    def out_shape(m: onnx.ModelProto) -> None:
        m.graph.output[0].CopyFrom(value("y", TensorProto.FLOAT, [7, 7]))

    def out_type(m: onnx.ModelProto) -> None:
        m.graph.output[0].CopyFrom(value("y", TensorProto.INT32, [1, 4]))

    def in_type(m: onnx.ModelProto) -> None:
        m.graph.input[0].CopyFrom(value("x", TensorProto.INT64, [1, 8]))

    def in_rank(m: onnx.ModelProto) -> None:
        m.graph.input[0].CopyFrom(value("x", TensorProto.FLOAT, [1, 8, 3]))

    def raw_short(m: onnx.ModelProto) -> None:
        t = m.graph.initializer[1]
        t.raw_data = t.raw_data[:20]

    def raw_long(m: onnx.ModelProto) -> None:
        t = m.graph.initializer[1]
        t.raw_data = t.raw_data + b"\0" * 12

    def raw_odd(m: onnx.ModelProto) -> None:
        t = m.graph.initializer[1]
        t.raw_data = t.raw_data[:-1]

    def dims_lie(m: onnx.ModelProto) -> None:
        t = m.graph.initializer[0]
        del t.dims[:]
        t.dims.extend([16, 8])

    def dims_negative(m: onnx.ModelProto) -> None:
        t = m.graph.initializer[1]
        del t.dims[:]
        t.dims.extend([-16])

    def float_data_count(m: onnx.ModelProto) -> None:
        t = m.graph.initializer[1]
        t.ClearField("raw_data")
        t.float_data.extend([1.0] * 5)

    def both_data(m: onnx.ModelProto) -> None:
        m.graph.initializer[1].float_data.extend([1.0] * 16)

    def const_two_values(m: onnx.ModelProto) -> None:
        node = helper.make_node(
            "Constant", [], ["b1c"], value=numpy_helper.from_array(np.ones(16, np.float32))
        )
        node.attribute.append(helper.make_attribute("value_float", 2.0))
        m.graph.node.insert(0, node)
        _node(m, "add1").input[1] = "b1c"

    def const_no_value(m: onnx.ModelProto) -> None:
        m.graph.node.insert(0, helper.make_node("Constant", [], ["b1c"]))
        _node(m, "add1").input[1] = "b1c"

    def init_and_output(m: onnx.ModelProto) -> None:
        m.graph.output.append(value("b1", TensorProto.FLOAT, [16]))

    def init_output_no_vi(m: onnx.ModelProto) -> None:
        m.graph.output.append(value("w2", TensorProto.FLOAT, [16, 4]))
        m.graph.value_info.append(value("w2", TensorProto.FLOAT, [16, 4]))

    def init_type_vs_input(m: onnx.ModelProto) -> None:
        m.graph.input.append(value("b1", TensorProto.INT32, [16]))

    def string_bad_utf8(m: onnx.ModelProto) -> None:
        t = helper.make_tensor("s", TensorProto.STRING, [2], [b"ok", b"\xff\xfe\x80"])
        m.graph.initializer.append(t)
        m.graph.output.append(value("s", TensorProto.STRING, [2]))

    def int64_data_for_float(m: onnx.ModelProto) -> None:
        t = m.graph.initializer[1]
        t.ClearField("raw_data")
        t.int64_data.extend([1] * 16)

    def metadata_lie(m: onnx.ModelProto) -> None:
        helper.set_model_props(m, {"onnx.opset": "3", "": "empty key"})
        m.metadata_props.append(onnx.StringStringEntryProto(key="dup", value="a"))
        m.metadata_props.append(onnx.StringStringEntryProto(key="dup", value="b"))

    def shape_vs_dims_sym(m: onnx.ModelProto) -> None:
        m.graph.value_info.append(value("w1", TensorProto.FLOAT, [8, 99]))

    def bool_out_of_range(m: onnx.ModelProto) -> None:
        m.graph.initializer.append(helper.make_tensor("bb", TensorProto.BOOL, [2], [7, 300]))
        m.graph.output.append(value("bb", TensorProto.BOOL, [2]))

    listed: dict[str, tuple[Mutation, str, str]] = {
        "vi-shape": (vi_shape, "invalid", "value_info shape contradicts the graph"),
        "vi-type": (vi_type, "invalid", "value_info type contradicts the graph"),
        "output-shape": (out_shape, "invalid", "graph output shape contradicts the graph"),
        "output-type": (out_type, "invalid", "graph output type contradicts the graph"),
        "input-type": (in_type, "invalid", "input declared int64, used as float"),
        "input-rank": (in_rank, "invalid", "input declared rank 3, MatMul needs [.,8]"),
        "raw-short": (raw_short, "invalid", "raw_data shorter than dims say"),
        "raw-long": (raw_long, "invalid", "raw_data longer than dims say"),
        "raw-odd": (raw_odd, "invalid", "raw_data one byte short"),
        "dims-lie": (dims_lie, "invalid", "initializer dims transposed (MatMul mismatch)"),
        "dims-negative": (dims_negative, "invalid", "initializer with a negative dim"),
        "float-data-count": (float_data_count, "invalid", "float_data has 5 of 16 values"),
        "raw-and-float-data": (both_data, "invalid", "raw_data and float_data both set"),
        "int64-data-float": (int64_data_for_float, "invalid", "float tensor in int64_data"),
        "constant-two-values": (const_two_values, "invalid", "Constant with two values"),
        "constant-no-value": (const_no_value, "invalid", "Constant with no value"),
        "init-is-output": (init_and_output, "valid", "an initializer listed as graph output"),
        "init-output-vi": (init_output_no_vi, "valid", "initializer output with value_info"),
        "init-input-type": (init_type_vs_input, "invalid", "initializer and input types differ"),
        "string-bad-utf8": (string_bad_utf8, "either", "string tensor with invalid UTF-8"),
        "metadata-odd": (metadata_lie, "valid", "duplicate and empty metadata keys"),
        "vi-initializer": (shape_vs_dims_sym, "invalid", "value_info contradicts initializer"),
        "bool-300": (bool_out_of_range, "either", "bool tensor holding 7 and 300"),
    }
    for case_id, (mutate, expect, note) in listed.items():
        yield _case(family, case_id, expect, note, mutate)
