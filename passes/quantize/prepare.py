"""Bring a float model into the shape quantization needs; every step keeps its outputs.

1. weights listed as graph inputs become plain initializers (old exporters list
   them, which stops ORT from treating them as constants);
2. opsets below 13 are converted to 13 (per-channel DequantizeLinear needs it);
3. ONNX Runtime's basic graph optimizations run once (in memory, the optimized
   model goes through a temporary folder, never the working directory): they fold
   BatchNormalization and Mul/Add chains into Conv weights and fold constants, so
   no float op is left stranded between a Conv and its output Q/DQ;
4. Constant nodes holding tensors become initializers (weights can be quantized);
5. Div by a constant becomes Mul by its reciprocal (a float Div between two Q/DQ
   pairs cost 19-26 % of int8 time in notes/int8-speed.md);
6. every node and value gets a unique name (plans refer to them by name), and
   types are inferred (float tensors must be told from integer ones).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, version_converter
from onnx_ir.passes.common import (
    LiftConstantsToInitializersPass,
    NameFixPass,
    RemoveInitializersFromInputsPass,
)

from onnxslim import runtime
from onnxslim.errors import OnnxSlimError, UsageError
from onnxslim.graphs import iter_graphs, tensor_bytes
from onnxslim.runtime import Session, ort_optimized

from .collect import infer_types
from .constants import const_array, is_constant

MIN_OPSET = 13
# ORT's optimized-model writer keeps everything in one protobuf message.
_PREOPTIMIZE_LIMIT_BYTES = 1_500_000_000


@dataclass
class PrepareReport:
    steps: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def prepare(model: ir.Model, *, pre_optimize: bool = True) -> tuple[ir.Model, PrepareReport]:
    """A new model equivalent to `model`, ready for planning; `model` is not modified."""
    report = PrepareReport()
    work = model.clone()
    if RemoveInitializersFromInputsPass()(work).modified:
        report.steps.append("weights listed as graph inputs made plain initializers")
        # Below IR 4 an initializer must be a graph input: the opset converter reads one
        # that is not as undefined (fuzz case valid/opset-7, IR 3).
        work.ir_version = max(work.ir_version, 4)
    opset = work.opset_imports.get("", work.opset_imports.get("ai.onnx", MIN_OPSET))
    if opset < MIN_OPSET:
        try:
            work = _convert_opset(work, MIN_OPSET)
        except Exception as exc:  # the converter lacks an adapter for some op
            raise UsageError(
                f"opset {opset} model: cannot convert it to opset {MIN_OPSET}, which int8 "
                f"DequantizeLinear per channel needs ({str(exc).splitlines()[0][:200]})"
            ) from exc
        report.steps.append(f"opset {opset} converted to {MIN_OPSET}")
    if pre_optimize:
        heavy = runtime.heavy_graph(work)
        if tensor_bytes(work) > _PREOPTIMIZE_LIMIT_BYTES:
            report.warnings.append("model too large for ORT's in-memory pre-optimization; skipped")
        elif heavy:  # ORT's folding drops initializers one by one, each a linear search
            report.warnings.append(f"ORT pre-optimization skipped: {heavy}, past its linear range")
        else:
            try:
                work = _ort_basic_optimize(work)
                report.steps.append("ORT basic optimizations (BatchNorm and constant folding)")
            except Exception as exc:  # the model still quantizes, only less well
                report.warnings.append(
                    f"ORT pre-optimization skipped: {str(exc).splitlines()[0][:200]}"
                )
    if LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=1)(work).modified:
        report.steps.append("Constant nodes made initializers")
    divisions = rewrite_constant_division(work)
    if divisions:
        report.steps.append(f"{divisions} Div by constant rewritten as Mul by reciprocal")
    NameFixPass()(work)
    infer_types(work)
    return work, report


def rewrite_constant_division(model: ir.Model) -> int:
    """Div(x, c) with a float constant c of nonzero finite entries -> Mul(x, 1/c)."""
    count = 0
    for graph in iter_graphs(model):
        if not isinstance(graph, ir.Graph):
            continue
        for node in list(graph):
            if node.op_type != "Div" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
                continue
            divisor = node.inputs[1]
            if divisor is None or not is_constant(divisor):
                continue
            array = const_array(divisor)
            if (
                array is None
                or array.dtype.kind != "f"
                or array.size == 0
                or not np.all(np.isfinite(array))
                or np.any(array == 0)
            ):
                continue
            reciprocal = (np.ones((), dtype=array.dtype) / array).astype(array.dtype)
            name = f"{divisor.name or 'divisor'}_reciprocal"
            value = ir.Value(
                name=name,
                shape=ir.Shape(reciprocal.shape),
                type=ir.TensorType(ir.DataType.from_numpy(reciprocal.dtype)),
                const_value=ir.tensor(reciprocal, name=name),
            )
            while name in graph.initializers:
                name += "_"
                value.name = name
            graph.register_initializer(value)
            mul = ir.node("Mul", [node.inputs[0], value], name=f"{node.name or 'Div'}_as_Mul")
            graph.insert_before(node, mul)
            old = node.outputs[0]
            new = mul.outputs[0]
            new.type, new.shape = old.type, old.shape
            is_output = old.is_graph_output()
            old.replace_all_uses_with(new, replace_graph_outputs=True)
            output_name = old.name
            old.name = None
            new.name = output_name
            graph.remove(node, safe=True)
            if not is_output and not divisor.uses() and divisor.is_initializer():
                graph.initializers.pop(divisor.name or "", None)
            count += 1
    return count


def missing_int8_kernels(model: ir.Model) -> str | None:
    """Why ONNX Runtime cannot run Q/DQ at this model's opset (None when it can): an opset
    newer than the installed ORT's kernels (fuzz case valid/opset-28: no QuantizeLinear(28))
    would turn a float model ORT runs into an int8 one it cannot load."""
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", MIN_OPSET))
    return _qdq_refusal(opset, model.ir_version)


@functools.cache
def _qdq_refusal(opset: int, ir_version: int) -> str | None:
    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
        ],
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [
            helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]),
            helper.make_tensor("z", TensorProto.INT8, [], [0]),
        ],
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=max(ir_version, 7)
    )
    try:
        Session(ir.serde.deserialize_model(proto))
    except OnnxSlimError as exc:
        return f"ONNX Runtime has no int8 QuantizeLinear/DequantizeLinear at opset {opset} ({exc})"
    return None


def _convert_opset(model: ir.Model, target: int) -> ir.Model:
    proto = ir.serde.serialize_model(model)
    converted = version_converter.convert_version(proto, target)
    return ir.serde.deserialize_model(converted)


def _ort_basic_optimize(model: ir.Model) -> ir.Model:
    optimized = ir.serde.deserialize_model(ort_optimized(model, "basic"))
    # ORT writes the opset imports it knows; keep the model's metadata.
    optimized.producer_name = model.producer_name
    optimized.producer_version = model.producer_version
    optimized.doc_string = model.doc_string
    for key, value in model.metadata_props.items():
        optimized.metadata_props.setdefault(key, value)
    return optimized
