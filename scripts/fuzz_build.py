"""Building blocks of the fuzz corpus: small models, cases, calibration feeds.

A case is a folder holding `model.onnx` (and whatever files the case needs beside
it), described by a `Case`: its family, what a correct tool does with it (`expect`)
and why. `expect` is one of:

- "valid":   a valid model; every command must accept it (exit 0, loadable output);
- "invalid": bad input; every command must refuse it (one line, exit 2, nothing written);
- "either":  legal but hostile (resource bombs, bit flips that still parse): accepted
             with a valid output or refused cleanly, never a crash, hang or blow-up.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR = 8
SECRET_NAME = "secret.bin"
# Bytes that must never show up in anything a tool writes: the secret file outside
# every model folder is this marker repeated (an escaping read copies it into a tensor).
SECRET_MARKER = b"FUZZ-SECRET-7f3a9c"


@dataclasses.dataclass
class Case:
    """One corpus entry; `path` is the case folder relative to the corpus root."""

    id: str
    family: str
    expect: str
    note: str
    path: str = ""
    calib: bool = False
    heavy: bool = False  # too slow for the test suite's sample
    # Commands for which a valid case may also be refused cleanly, with the reason in the
    # note: the command's output format cannot hold it (ORT format and deep nesting).
    either_for: list[str] = dataclasses.field(default_factory=list)


Writer = Callable[[Path], bool]  # writes the case folder; True when calib.npz was written


def value(name: str, elem: int, shape: Sequence[int | str | None] | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: Sequence[onnx.TensorProto] = (),
    *,
    opset: int = OPSET,
    ir_version: int = IR,
    value_info: Sequence[onnx.ValueInfoProto] = (),
    opsets: Sequence[onnx.OperatorSetIdProto] | None = None,
    name: str = "fuzz",
) -> onnx.ModelProto:
    """A ModelProto built as given: nothing is checked, so broken graphs stay broken."""
    graph = helper.make_graph(
        list(nodes), name, list(inputs), list(outputs), list(initializers), value_info=value_info
    )
    imports = list(opsets) if opsets is not None else [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=imports, producer_name="onnxslim-fuzz")
    model.ir_version = ir_version
    return model


def mlp(seed: int = 0, *, batch: int | str = 1, opset: int = OPSET) -> onnx.ModelProto:
    """x[batch,8] -> MatMul -> Add -> Relu -> MatMul -> y[batch,4]: the base valid model."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"], name="mm1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="add1"),
        helper.make_node("Relu", ["h1"], ["h2"], name="relu"),
        helper.make_node("MatMul", ["h2", "w2"], ["y"], name="mm2"),
    ]
    return make_model(
        nodes,
        [value("x", TensorProto.FLOAT, [batch, 8])],
        [value("y", TensorProto.FLOAT, [batch, 4])],
        [w1, b1, w2],
        opset=opset,
    )


def cnn(seed: int = 0) -> onnx.ModelProto:
    """x[1,3,8,8] -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> y[1,5]."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "cw")
    b = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "cb")
    g = numpy_helper.from_array(rng.standard_normal((5, 8)).astype(np.float32), "gw")
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "gw"], ["y"], transB=1, name="fc"),
    ]
    return make_model(
        nodes,
        [value("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [value("y", TensorProto.FLOAT, [1, 5])],
        [w, b, g],
    )


def random_feed(vi: onnx.ValueInfoProto, rng: np.random.Generator, free: int = 2) -> np.ndarray:
    """One input array for a declared input: symbolic dims `free`, small values."""
    tensor = vi.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else free for d in tensor.shape.dim]
    dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type)
    if dtype == np.bool_:
        return np.asarray(rng.random(dims) > 0.5)
    if np.issubdtype(dtype, np.integer):
        return np.asarray(rng.integers(0, 3, dims), dtype=dtype)
    if dtype is np.dtype(object):
        return np.full(dims, "s", dtype=object)
    return np.asarray(rng.standard_normal(dims), dtype=dtype)


def write_calib(model: onnx.ModelProto, path: Path, samples: int = 4, seed: int = 0) -> bool:
    """Generated calibration data (.npz, samples stacked on axis 0); False if not makeable."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    arrays: dict[str, np.ndarray] = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        if not vi.type.HasField("tensor_type"):
            return False
        dims = vi.type.tensor_type.shape.dim
        if (
            np.prod([d.dim_value if d.HasField("dim_value") else 2 for d in dims], dtype=float)
            > 1e5
        ):
            return False  # never allocate what a bomb declares
        try:
            stacked = np.stack([random_feed(vi, rng) for _ in range(samples)])
            # Strings as numpy unicode: an object array needs pickle, which data readers
            # rightly refuse (np.load allow_pickle=False); ORT takes either for a string input.
            arrays[vi.name] = stacked.astype(np.str_) if stacked.dtype == object else stacked
        except (ValueError, TypeError, KeyError, MemoryError):
            return False
    if not arrays:
        return False  # a model without inputs: an empty archive is no calibration data
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return True


def save(model: onnx.ModelProto, folder: Path) -> None:
    """Serialize without any check or external-data conversion (the case is the bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(model.SerializeToString())


def write_secret(root: Path) -> Path:
    """The file outside every model folder that external-data cases point at."""
    secret = root / SECRET_NAME
    secret.write_bytes(SECRET_MARKER * (1 << 12))
    os.chmod(secret, 0o644)
    return secret
