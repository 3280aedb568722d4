"""Checks at load (onnxslim.model_checks through io.load), the saved file's own check, and
the inspect paths that used to fail on hostile graphs."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxslim import api, io
from onnxslim.cli import main
from onnxslim.errors import ModelLoadError
from onnxslim.inspection import MAC_INFERENCE_NODES, inspect_model


def _base() -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _dup_init(m: onnx.ModelProto) -> None:
    m.graph.initializer.append(numpy_helper.from_array(np.zeros((2, 2), np.float32), "w"))


def _dup_input(m: onnx.ModelProto) -> None:
    m.graph.input.append(copy.deepcopy(m.graph.input[0]))


def _segment(m: onnx.ModelProto) -> None:
    m.graph.initializer[0].segment.begin = 0
    m.graph.initializer[0].segment.end = 2


def _raw_short(m: onnx.ModelProto) -> None:
    m.graph.initializer[0].raw_data = m.graph.initializer[0].raw_data[:8]


def _raw_long(m: onnx.ModelProto) -> None:
    m.graph.initializer[0].raw_data += b"\0" * 8


def _claims_64g(m: onnx.ModelProto) -> None:
    tensor = m.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.dims[:] = [4096, 4096, 1024]


def _claims_exabytes(m: onnx.ModelProto) -> None:  # onnx.checker lets this one through
    tensor = m.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.dims[:] = [1 << 20, 1 << 20, 1 << 20]


def _overflow_dims(m: onnx.ModelProto) -> None:  # the product overflows int64
    tensor = m.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.dims[:] = [1 << 62, 1 << 62]


def _typed_short(m: onnx.ModelProto) -> None:
    tensor = m.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.float_data[:] = [1.0, 2.0, 3.0]


def _output_shape_lie(m: onnx.ModelProto) -> None:
    m.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 5


def _output_type_lie(m: onnx.ModelProto) -> None:
    m.graph.output[0].type.tensor_type.elem_type = TensorProto.INT64


def _bad_utf8(m: onnx.ModelProto) -> None:
    m.graph.initializer.append(helper.make_tensor("s", TensorProto.STRING, [1], [b"\xff\xfe"]))
    m.graph.node.append(helper.make_node("Identity", ["s"], ["s_out"]))
    m.graph.output.append(helper.make_tensor_value_info("s_out", TensorProto.STRING, [1]))


def _bad_perm(m: onnx.ModelProto) -> None:  # output without shape: the checker's waived rule
    m.graph.node.append(helper.make_node("Transpose", ["y"], ["t"], perm=[0, 5]))
    m.graph.output.append(helper.make_tensor_value_info("t", TensorProto.FLOAT, None))


def _unknown_op(m: onnx.ModelProto) -> None:
    m.graph.node.append(helper.make_node("FooBar", ["y"], ["t"]))
    m.graph.output.append(helper.make_tensor_value_info("t", TensorProto.FLOAT, None))


def _unsorted(m: onnx.ModelProto) -> None:
    m.graph.node.insert(0, helper.make_node("Relu", ["y"], ["r"]))
    m.graph.output.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, ["n", 2]))


def _cycle(m: onnx.ModelProto) -> None:
    m.graph.node.append(helper.make_node("Relu", ["q"], ["r"]))
    m.graph.node.append(helper.make_node("Relu", ["r"], ["q"]))


def _dangling(m: onnx.ModelProto) -> None:
    m.graph.node.append(helper.make_node("Relu", ["nowhere"], ["r"]))
    m.graph.output.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, ["n", 2]))


def _undefined_dtype(m: onnx.ModelProto) -> None:
    m.graph.input[0].type.tensor_type.elem_type = TensorProto.UNDEFINED


def _undefined_output(m: onnx.ModelProto) -> None:  # onnx.checker lets this one through
    m.graph.output[0].type.tensor_type.elem_type = TensorProto.UNDEFINED


def _no_outputs(m: onnx.ModelProto) -> None:  # onnx.checker and ORT's loader accept it
    del m.graph.output[:]


def _producer_not_utf8(m: onnx.ModelProto) -> None:  # protobuf hands it back as bytes
    m.producer_name = "onnxslim-fuzz"
    data = bytearray(m.SerializeToString())
    at = data.index(b"onnxslim-fuzz")
    data[at + 2] ^= 0x80
    m.ParseFromString(bytes(data))


def _opset_9999(m: onnx.ModelProto) -> None:  # onnx.checker lets this one through
    m.opset_import[0].version = 9999


def _loop_output_from_nowhere(m: onnx.ModelProto) -> None:
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"])],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
        ],
        [
            helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("extra", TensorProto.FLOAT, None),
        ],
    )
    m.graph.initializer.append(helper.make_tensor("trip", TensorProto.INT64, [], [2]))
    m.graph.node.append(helper.make_node("Loop", ["trip", ""], ["scan"], body=body))
    m.graph.output.append(helper.make_tensor_value_info("scan", TensorProto.FLOAT, None))


BROKEN: dict[str, tuple[Callable[[onnx.ModelProto], None], str]] = {
    "duplicate initializer": (_dup_init, "not unique"),
    "duplicate input": (_dup_input, "graph input names multiple times"),
    "segmented tensor": (_segment, "segmented"),
    "raw_data too short": (_raw_short, "raw_data holds 8 bytes"),
    "raw_data too long": (_raw_long, "raw_data holds 24 bytes"),
    "64 GB claimed, no data": (_claims_64g, "carries no data"),
    "2**60 elements claimed, no data": (_claims_exabytes, "carries no data"),
    "dims overflow int64, no data": (_overflow_dims, "carries no data"),
    "float_data shorter than dims": (_typed_short, "holds 3 values but dims"),
    "output shape lies": (_output_shape_lie, "Inferred shape and existing shape differ"),
    "output type lies": (_output_type_lie, "elem type differs"),
    "invalid UTF-8": (_bad_utf8, "not UTF-8"),
    "bad Transpose perm": (_bad_perm, "perm"),
    "unknown op": (_unknown_op, "FooBar"),
    "unsorted nodes": (_unsorted, "topologically sorted"),
    "cycle": (_cycle, "topologically sorted"),
    "dangling input": (_dangling, "topologically sorted"),
    "UNDEFINED dtype": (_undefined_dtype, "unknown|UNDEFINED"),
    "UNDEFINED output dtype": (_undefined_output, "UNDEFINED"),
    "no outputs": (_no_outputs, "no outputs"),
    "producer name not UTF-8": (_producer_not_utf8, "not UTF-8 text"),
    "opset 9999": (_opset_9999, "opset 9999"),
    "Loop body output from nowhere": (_loop_output_from_nowhere, "computed by no node"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_model_is_refused_at_load(tmp_path: Path, case: str) -> None:
    breaker, message = BROKEN[case]
    model = _base()
    breaker(model)
    path = tmp_path / "broken.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelLoadError, match=message):
        io.load(path)


@pytest.mark.parametrize("command", ["optimize", "optimize --no-verify", "inspect"])
def test_cli_refuses_with_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    model = _base()
    _output_shape_lie(model)
    path = tmp_path / "lie.onnx"
    onnx.save(model, str(path))
    words = command.split()
    args = [*words[:1], str(path), *words[1:]]
    if words[0] == "optimize":
        args += ["-o", str(tmp_path / "out.onnx")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "invalid ONNX model" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lie.onnx"]


def test_valid_models_pass_the_checks(tmp_path: Path) -> None:
    path = tmp_path / "ok.onnx"
    onnx.save(_base(), str(path))
    io.load(path)
    for model in sorted((Path(__file__).parents[1] / "models").glob("*.onnx")):
        io.load(model)


def test_typed_value_fields_of_every_kind_pass(tmp_path: Path) -> None:
    """Values in the typed fields (not raw_data) load: packed int4, complex pairs, float16
    in int32_data, strings, scalars, zero-size tensors with no data."""
    model = _base()
    extra = [
        helper.make_tensor("i4", TensorProto.INT4, [3], [1, 2, 3]),
        helper.make_tensor("f16", TensorProto.FLOAT16, [2], np.ones(2, np.float16)),
        helper.make_tensor("c64", TensorProto.COMPLEX64, [2], [1 + 2j, 3]),
        helper.make_tensor("s", TensorProto.STRING, [2], [b"a", b"b"]),
        helper.make_tensor("scalar", TensorProto.INT64, [], [7]),
        helper.make_tensor("empty", TensorProto.FLOAT, [0, 4], []),
    ]
    for tensor in extra:
        assert not tensor.HasField("raw_data")
        model.graph.initializer.append(tensor)
    path = tmp_path / "typed.onnx"
    onnx.save(model, str(path))
    io.load(path)


def test_initializer_listed_as_output_keeps_its_type(tmp_path: Path) -> None:
    """The saved file used to lose the output's type (hidden initializer annotations)."""
    model = _base()
    model.graph.output.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 2]))
    source = tmp_path / "in.onnx"
    onnx.save(model, str(source))
    result = api.optimize(source)
    out = io.save(result.model, tmp_path / "out.onnx")
    written = onnx.load(str(out))
    onnx.checker.check_model(written, full_check=True)
    declared = {o.name: o.type.tensor_type.elem_type for o in written.graph.output}
    assert declared["w"] == TensorProto.FLOAT
    io.load(out)  # and it passes our own load checks


def test_inspect_counts_huge_graphs_from_declared_shapes(tmp_path: Path) -> None:
    """Over MAC_INFERENCE_NODES the estimate is one linear sweep, not clone + inference."""
    count = MAC_INFERENCE_NODES + 1
    nodes, previous = [], "x"
    infos = []
    for i in range(count):
        nodes.append(helper.make_node("MatMul", [previous, "w"], [f"v{i}"]))
        infos.append(helper.make_tensor_value_info(f"v{i}", TensorProto.FLOAT, [1, 4]))
        previous = f"v{i}"
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info(previous, TensorProto.FLOAT, [1, 4])],
        initializer=[numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")],
        value_info=infos[:-1],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "chain.onnx"
    onnx.save(model, str(path))
    summary = inspect_model(path)
    assert summary.macs == count * 16
    assert "shapes not inferred" in summary.macs_notes[0]
