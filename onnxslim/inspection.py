"""What a model is made of: interface, op histogram, parameters, estimated MACs, file size.

Everything is counted over every graph (If/Loop/Scan bodies and local functions
included), because a compressor that only looks at the main graph misses weights
and ops. MACs come from ONNX shape inference run on a clone whose free input
dimensions are pinned (to 1 unless the caller gives shapes), with big
initializers stripped before the C API call as onnx_ir's ShapeInferencePass does,
so the input model is not touched and no 2 GB protobuf is built.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx_ir as ir

from onnxslim import io
from onnxslim.budget import Budget
from onnxslim.feeds import generate_feeds, input_specs
from onnxslim.graphs import iter_graphs, iter_nodes, iter_tensors
from onnxslim.runtime import Session, SessionConfig
from onnxslim.shapes import infer_shapes

ModelSource = ir.Model | str | os.PathLike[str]
Dim = int | str | None

# Ops whose presence means the model already carries quantized arithmetic.
_QUANT_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "ConvInteger",
        "MatMulIntegerToFloat",
        "MatMulNBits",
        "QGemm",
        "QAttention",
        "GatherBlockQuantized",
    }
)
_QUANT_PREFIXES = ("QLinear", "DynamicQuantize", "QOrdered")
_DEFAULT_DOMAINS = ("", "ai.onnx")
# Above this many nodes the MAC estimate reads declared shapes only (linear, seconds)
# instead of cloning, inferring and running the model (about 3 ms a node here).
MAC_INFERENCE_NODES = 5000
# The run that measures shapes inference missed: an estimate is not worth a long wait.
_MEASURE_SECONDS = 10.0


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output: dims are ints, symbolic names, or None when unknown."""

    name: str
    dtype: str
    shape: list[Dim] | None

    def describe(self) -> str:
        if self.shape is None:
            return f"{self.dtype} ?"
        return f"{self.dtype} [{', '.join('?' if d is None else str(d) for d in self.shape)}]"


@dataclass(frozen=True)
class DtypeStats:
    """Parameters (initializers and constant tensors) of one element type."""

    tensors: int
    elements: int
    bytes: int


@dataclass
class ModelSummary:
    """The answer of `onnxslim inspect`; `to_dict()` is its JSON form."""

    path: str | None
    file_bytes: int | None  # the .onnx file plus its external data files
    ir_version: int
    producer: str
    opset_imports: dict[str, int]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    nodes: int  # every graph and function
    main_graph_nodes: int
    subgraphs: int  # If/Loop/Scan bodies, nested ones included
    functions: int
    op_histogram: dict[str, int]  # "Op" for the default domain, "domain::Op" otherwise
    parameters: dict[str, DtypeStats]
    macs: int | None  # None when no counted op had known shapes
    macs_by_op: dict[str, int]
    macs_notes: list[str] = field(default_factory=list)
    quantized: bool = False
    quantization_ops: dict[str, int] = field(default_factory=dict)
    initializer_inputs: int = 0  # initializers also listed as graph inputs (IR < 4 style)

    @property
    def parameter_count(self) -> int:
        return sum(s.elements for s in self.parameters.values())

    @property
    def parameter_bytes(self) -> int:
        return sum(s.bytes for s in self.parameters.values())

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["parameter_count"] = self.parameter_count
        data["parameter_bytes"] = self.parameter_bytes
        return data


def inspect_model(
    source: ModelSource, *, input_shapes: Mapping[str, tuple[int, ...]] | None = None
) -> ModelSummary:
    """Summarise `source` (a path or an ir.Model); never modifies it.

    `input_shapes` pins free input dimensions for the MAC estimate; dimensions
    left free are counted as 1 and the notes say which.
    """
    path = None if isinstance(source, ir.Model) else Path(source)
    model = source if isinstance(source, ir.Model) else io.load(source)
    initializer_names = set(model.graph.initializers)
    histogram = Counter(_op_key(node) for node in iter_nodes(model))
    quant = {op: n for op, n in histogram.items() if _is_quant_op(op)}
    macs, macs_by_op, notes = estimate_macs(model, input_shapes)
    return ModelSummary(
        path=str(path) if path else None,
        file_bytes=_file_bytes(model, path) if path else None,
        ir_version=model.ir_version,
        producer=" ".join(p for p in (model.producer_name, model.producer_version) if p),
        opset_imports={
            domain or "ai.onnx": version for domain, version in model.opset_imports.items()
        },
        inputs=[_tensor_info(v) for v in model.graph.inputs if v.name not in initializer_names],
        outputs=[_tensor_info(v) for v in model.graph.outputs],
        nodes=sum(histogram.values()),
        main_graph_nodes=len(model.graph),
        subgraphs=sum(1 for g in iter_graphs(model) if isinstance(g, ir.Graph)) - 1,
        functions=len(model.functions),
        op_histogram=dict(histogram.most_common()),
        parameters=_parameters(model),
        macs=macs,
        macs_by_op=macs_by_op,
        macs_notes=notes,
        quantized=bool(quant),
        quantization_ops=dict(sorted(quant.items())),
        initializer_inputs=sum(1 for v in model.graph.inputs if v.name in initializer_names),
    )


def estimate_macs(
    model: ir.Model, input_shapes: Mapping[str, tuple[int, ...]] | None = None
) -> tuple[int | None, dict[str, int], list[str]]:
    """(total, per op type, notes): multiply-accumulates of Conv, ConvTranspose, MatMul,
    Gemm, their integer/QLinear forms and LSTM/GRU/RNN, from inferred shapes.

    Nodes of local functions are not counted (their shapes are not inferred), and
    subgraph nodes are counted once each (both If branches, one Loop iteration).
    """
    total_nodes = 0
    countable = False
    for node in iter_nodes(model):
        total_nodes += 1
        countable = countable or (_domain(node), node.op_type) in _MAC_RULES
    if not countable:  # nothing to count: no clone, no inference (a Sum of 100,000 weights)
        return None, {}, []
    if total_nodes > MAC_INFERENCE_NODES:
        return _declared_macs(model, total_nodes)
    clone = model.clone()
    notes = _pin_free_dims(clone, input_shapes or {})
    try:  # best effort: a failed inference leaves the clone's shapes as declared
        infer_shapes(clone, check_type=False, strict_mode=False, data_prop=True)
    except Exception:  # the nodes left without shapes are measured or noted below
        pass
    counted = [
        (graph, node, rule)
        for graph in [clone.graph, *clone.graph.subgraphs()]
        for node in graph
        if (rule := _MAC_RULES.get((_domain(node), node.op_type))) is not None
    ]
    unresolved = [
        node for graph, node, rule in counted if graph is clone.graph and rule(node) is None
    ]
    if unresolved:
        notes.extend(_measure_shapes(clone, unresolved, input_shapes or {}))
    per_op: Counter[str] = Counter()
    unknown: Counter[str] = Counter()
    in_subgraphs = 0
    for graph, node, counter in counted:
        macs = counter(node)
        if macs is None:
            unknown[node.op_type] += 1
            continue
        per_op[node.op_type] += macs
        in_subgraphs += graph is not clone.graph
    if unknown:
        notes.append(
            "not counted, shapes unknown: "
            + ", ".join(f"{n} {op}" for op, n in sorted(unknown.items()))
        )
    if in_subgraphs:
        notes.append(f"{in_subgraphs} counted node(s) sit in subgraphs, counted once each")
    if clone.functions:
        notes.append("nodes inside local functions are not counted")
    total = sum(per_op.values()) if per_op else None
    return total, dict(per_op.most_common()), notes


def _declared_macs(
    model: ir.Model, total_nodes: int
) -> tuple[int | None, dict[str, int], list[str]]:
    """MACs from the shapes the file declares, one linear sweep: on a graph this large the
    clone, shape inference and ORT run of the full estimate would take minutes."""
    per_op: Counter[str] = Counter()
    unknown = 0
    for node in iter_nodes(model):
        rule = _MAC_RULES.get((_domain(node), node.op_type))
        if rule is None:
            continue
        macs = rule(node)
        if macs is None:
            unknown += 1
        else:
            per_op[node.op_type] += macs
    notes = [
        f"{total_nodes} nodes (over {MAC_INFERENCE_NODES}): shapes not inferred, "
        f"MACs from declared shapes only ({unknown} node(s) without them not counted)"
    ]
    total = sum(per_op.values()) if per_op else None
    return total, dict(per_op.most_common()), notes


def _measure_shapes(
    model: ir.Model, nodes: list[ir.Node], shapes: Mapping[str, tuple[int, ...]]
) -> list[str]:
    """Fill in shapes inference could not (shapes computed by ops it cannot fold, such as
    Reshape/Transpose feeding Pad) by running the model once on ORT with generated inputs."""
    outputs = set(model.graph.outputs)
    wanted: dict[str, ir.Value] = {}
    for node in nodes:
        for value in (*node.inputs, *node.outputs):
            if (
                value is not None
                and value.producer() is not None
                and value not in outputs
                and _dims(value) is None
            ):
                wanted[value.name or ""] = value
    if not wanted:
        return []
    model.graph.outputs.extend(wanted.values())
    try:
        feed = generate_feeds(input_specs(model), 1, shapes=shapes)[0]
        config = SessionConfig(optimization="disable", budget=Budget(seconds=_MEASURE_SECONDS))
        results = Session(model, config).run(feed, list(wanted))
    except Exception as exc:  # inspection must work on models ORT cannot run
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return [f"could not run the model to measure missing shapes ({text[:200]})"]
    for name, array in results.items():
        wanted[name].shape = ir.Shape(getattr(array, "shape", ()))
    return [f"shapes of {len(nodes)} node(s) measured by one ONNX Runtime run on generated inputs"]


def _domain(node: ir.Node) -> str:
    return "" if node.domain in _DEFAULT_DOMAINS else node.domain


def _pin_free_dims(model: ir.Model, shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Give every graph input of the clone a concrete shape; notes say what was assumed."""
    pinned = []
    for value in model.graph.inputs:
        name = value.name or ""
        if name in model.graph.initializers:
            continue
        if name in shapes:
            value.shape = ir.Shape(shapes[name])
            continue
        if value.shape is None:
            continue
        free = [
            str(d) if not isinstance(d, int) and d.value else f"{value.name}[{i}]"
            for i, d in enumerate(value.shape)
            if not isinstance(d, int)
        ]
        if free:
            value.shape = ir.Shape([d if isinstance(d, int) else 1 for d in value.shape])
            pinned.extend(free)
    if pinned:
        return [f"free dimensions counted as 1: {', '.join(dict.fromkeys(pinned))}"]
    return []


def _dims(value: ir.Value | None) -> list[int] | None:
    if value is None or value.shape is None:
        return None
    dims = list(value.shape)
    if not all(isinstance(d, int) and d >= 0 for d in dims):
        return None
    return dims  # type: ignore[return-value]


def _conv(weight_index: int) -> Any:
    def count(node: ir.Node) -> int | None:
        out = _dims(node.outputs[0])
        weight = _dims(node.inputs[weight_index] if len(node.inputs) > weight_index else None)
        if out is None or weight is None or len(weight) < 2:
            return None
        return math.prod(out) * math.prod(weight[1:])  # each output element: C/group * kernel MACs

    return count


def _conv_transpose(node: ir.Node) -> int | None:
    x, weight = _dims(node.inputs[0]), _dims(node.inputs[1])
    if x is None or weight is None or len(weight) < 2:
        return None
    return math.prod(x) * math.prod(weight[1:])  # each input element scatters into M/group * kernel


def _matmul(node: ir.Node) -> int | None:
    a, out = _dims(node.inputs[0]), _dims(node.outputs[0])
    if a is None or out is None or not a:
        return None
    return math.prod(out) * a[-1]


def _gemm(node: ir.Node) -> int | None:
    a, out = _dims(node.inputs[0]), _dims(node.outputs[0])
    if a is None or out is None or len(a) != 2:
        return None
    k = a[0] if node.attributes.get_int("transA", 0) else a[1]
    return math.prod(out) * k


def _recurrent(node: ir.Node) -> int | None:
    """seq * batch * (|W| + |R|): every step multiplies input and hidden state by all gates."""
    x, w, r = (_dims(node.inputs[i]) if len(node.inputs) > i else None for i in range(3))
    if x is None or w is None or r is None or len(x) != 3:
        return None
    return x[0] * x[1] * (math.prod(w) + math.prod(r))


_MAC_RULES: dict[tuple[str, str], Any] = {
    ("", "Conv"): _conv(1),
    ("", "ConvInteger"): _conv(1),
    ("", "QLinearConv"): _conv(3),
    ("", "ConvTranspose"): _conv_transpose,
    ("", "MatMul"): _matmul,
    ("", "MatMulInteger"): _matmul,
    ("", "QLinearMatMul"): _matmul,
    ("", "Gemm"): _gemm,
    ("", "LSTM"): _recurrent,
    ("", "GRU"): _recurrent,
    ("", "RNN"): _recurrent,
    ("com.microsoft", "DynamicQuantizeLSTM"): _recurrent,
    ("com.microsoft", "MatMulIntegerToFloat"): _matmul,
    ("com.microsoft", "DynamicQuantizeMatMul"): _matmul,
}


def _op_key(node: ir.Node) -> str:
    return node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}"


def _is_quant_op(key: str) -> bool:
    op = key.rsplit("::", 1)[-1]
    return op in _QUANT_OPS or op.startswith(_QUANT_PREFIXES)


def _dtype_name(dtype: ir.DataType) -> str:
    try:
        return str(dtype.numpy())
    except Exception:  # types numpy cannot name (e.g. string, 4-bit)
        return dtype.name.lower()


def _tensor_info(value: ir.Value) -> TensorInfo:
    dtype = _dtype_name(value.dtype) if value.dtype is not None else "?"
    shape: list[Dim] | None = None
    if value.shape is not None:
        shape = [
            d if isinstance(d, int) else (str(d.value) if d.value is not None else None)
            for d in value.shape
        ]
    return TensorInfo(value.name or "", dtype, shape)


def _parameters(model: ir.Model) -> dict[str, DtypeStats]:
    counts: dict[str, list[int]] = {}
    seen: set[int] = set()
    for _, tensor in iter_tensors(model):
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        entry = counts.setdefault(_dtype_name(tensor.dtype), [0, 0, 0])
        entry[0] += 1
        entry[1] += math.prod(tensor.shape.numpy())
        try:
            entry[2] += tensor.nbytes
        except TypeError:  # UNDEFINED and other types without a size: no bytes to count
            pass
    ordered = sorted(counts.items(), key=lambda item: -item[1][2])
    return {name: DtypeStats(*entry) for name, entry in ordered}


def _file_bytes(model: ir.Model, path: Path) -> int:
    files = {path.resolve()}
    for _, tensor in iter_tensors(model):
        if isinstance(tensor, ir.ExternalTensor):
            files.add((path.parent / tensor.location).resolve())
    return sum(f.stat().st_size for f in files if f.is_file())
