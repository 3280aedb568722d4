"""Helpers shared by the clean-up tests: tiny models, running them on ORT, exact parity."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from onnxslim.graphs import iter_nodes, node_count
from onnxslim.runtime import Session, SessionConfig

F = TensorProto.FLOAT
I64 = TensorProto.INT64


def vi(name: str, shape: Sequence[int | str | None] | None, elem: int = F) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def const(name: str, array: np.ndarray) -> onnx.NodeProto:
    return helper.make_node(
        "Constant", [], [name], value=numpy_helper.from_array(np.asarray(array))
    )


def model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: Sequence[onnx.TensorProto] = (),
    *,
    opset: int = 17,
    ir_version: int = 8,
    functions: Sequence[onnx.FunctionProto] = (),
    value_info: Sequence[onnx.ValueInfoProto] = (),
    extra_opsets: Sequence[onnx.OperatorSetIdProto] = (),
) -> ir.Model:
    """A checked onnx.helper model, returned as an ir.Model."""
    graph = helper.make_graph(
        nodes, "g", inputs, outputs, initializer=list(initializers), value_info=list(value_info)
    )
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset), *extra_opsets],
        functions=list(functions),
    )
    proto.ir_version = ir_version
    onnx.checker.check_model(proto, full_check=True)
    return ir.serde.deserialize_model(proto)


def copy(m: ir.Model) -> ir.Model:
    """An independent copy (passes run in place)."""
    return ir.serde.deserialize_model(ir.serde.serialize_model(m))


def run(
    m: ir.Model, feeds: Sequence[dict[str, np.ndarray]], optimization: str = "disable"
) -> list[dict[str, np.ndarray]]:
    session = Session(m, SessionConfig(optimization=optimization))
    return [session.run(feed) for feed in feeds]


def assert_exact(
    reference: list[dict[str, np.ndarray]],
    candidate: list[dict[str, np.ndarray]],
    rtol: float | None = None,
) -> None:
    """Same output names, dtypes, shapes and bits (NaN equal to NaN).

    With `rtol`, float outputs may differ by rtol times the output's largest
    magnitude (a different but equally valid summation order in ORT's kernels).
    """
    assert len(reference) == len(candidate)
    for ref, cand in zip(reference, candidate, strict=True):
        assert list(ref) == list(cand), (list(ref), list(cand))
        for name in ref:
            assert ref[name].dtype == cand[name].dtype, name
            assert ref[name].shape == cand[name].shape, name
            if rtol is None or ref[name].dtype.kind != "f":
                np.testing.assert_array_equal(ref[name], cand[name], err_msg=name)
            else:
                scale = float(np.max(np.abs(ref[name]), initial=0.0))
                np.testing.assert_allclose(
                    cand[name], ref[name], rtol=0, atol=rtol * scale, err_msg=name
                )


def check_valid(m: ir.Model) -> None:
    onnx.checker.check_model(ir.serde.serialize_model(m), full_check=True)


def apply_and_compare(
    pass_instance: ir.passes.PassBase,
    m: ir.Model,
    feeds: Sequence[dict[str, np.ndarray]],
    rtol: float | None = None,
) -> tuple[ir.Model, int, int]:
    """Run the pass on a copy; assert exact ORT parity (ORT optimizations off and on) and validity.

    Returns the optimized model and the node counts before and after.
    """
    before = node_count(m)
    optimized = copy(m)
    pass_instance(optimized)
    check_valid(optimized)
    for level in ("disable", "all"):
        assert_exact(run(m, feeds, level), run(optimized, feeds, level), rtol)
    return optimized, before, node_count(optimized)


def op_types(m: ir.Model) -> list[str]:
    return [n.op_type for n in iter_nodes(m)]


def rng_feed(
    shapes: dict[str, tuple[int, ...]], seed: int = 0, dtype: type = np.float32
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(dtype) for name, shape in shapes.items()}
