"""What to quantize: int8 types for the target CPU, and which nodes and tensors get Q/DQ.

Everything here follows what ONNX Runtime's CPU kernels reward (notes/int8-speed.md):

Targets. x86 without VNNI takes U8 activations and S8 weights (the QDQ -> QLinearConv
fusion wants U8 activations there) with `reduce_range` (7-bit weights) because the
AVX2 u8s8 kernel's 16-bit intermediate sums saturate; x86 with VNNI takes U8S8 at
full range; ARM takes S8S8. `detect_target()` reads /proc/cpuinfo at run time.

Roles of the nodes that get quantized:
  compute   Conv, MatMul, Gemm with a constant weight: int8 weight (per channel:
            Conv axis 0, MatMul axis -1, Gemm axis 0 with transB else 1), int32
            bias with scale s_x * s_w, activation input quantized. A Conv always
            gets its output quantized (ORT fuses DQ-Conv-Q into QLinearConv only
            with it); a MatMul/Gemm only when every consumer is quantized, else ORT
            runs it as QGemm / MatMulIntegerToFloat with a float output.
  island    Add, Mul, Concat, AveragePool, GlobalAveragePool, Sigmoid, LeakyRelu:
            int8 versions are no faster than float, so they are quantized only when
            that removes a DQ/Q pair: every input already carries Q/DQ (made by a
            quantized producer) and every consumer of the output is quantized.
            Chains of such ops are decided together (a greatest fixed point). An
            op with a per-channel constant (a BatchNorm left after a residual Add)
            stays float: one uint8 scale for that constant blurs it.
  shared    data movement (Reshape, Transpose, MaxPool, Slice, Resize nearest, ...):
            same condition; the output reuses the input's scale and zero point, so
            ORT drops the Q/DQ pair and runs the op on the 8-bit tensor.
  absorbed  Relu / Clip(lo <= 0 <= hi) right after a quantized producer: removed,
            the producer's output is quantized with the activation's range (the
            quantizer's clamp does the clipping).
  embedding Gather from a large constant table: the table becomes int8 and the
            Gather runs on it, followed by one DequantizeLinear of the rows taken.
Everything else stays float: MatMul of two activations (attention; option),
Softmax and LayerNormalization (QLinearSoftmax is 3x
slower than float; Q/DQ inside LayerNorm blocks its fusion), recurrent ops
(`--mode dynamic` handles them), ConvTranspose (ORT's CPU provider has no int8
ConvTranspose: its Q/DQ would only add time), and depthwise Conv next to a float
op (int8 depthwise kernels are 1.4-2.4x slower than float). A depthwise Conv between
two int8 neighbours is quantized here, per channel: ORT 1.32 would otherwise
quantize it itself at session start, per tensor, which costs accuracy.

This module finds the candidates and their roles; which of them pay off together is
`membership`, the plan's data `plan`, constants behind Identity chains `constants`.
"""

from __future__ import annotations

import math
import platform
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir

from onnxslim.graphs import iter_graphs, iter_nodes

from .constants import const_array, is_constant
from .membership import fixed_point, tensor_plans
from .plan import NodePlan, QuantPlan

COMPUTE_OPS = frozenset({"Conv", "MatMul", "Gemm"})
ISLAND_OPS = frozenset(
    {"Add", "Mul", "Concat", "AveragePool", "GlobalAveragePool", "Sigmoid", "LeakyRelu"}
)
SHARED_SCALE_OPS = frozenset(
    {
        "Reshape",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Flatten",
        "Slice",
        "MaxPool",
        "Resize",
        "Gather",
        "Expand",
        "DepthToSpace",
        "SpaceToDepth",
        "Split",
        "Identity",
    }
)
ABSORBABLE_OPS = frozenset({"Relu", "Clip"})
# Ops whose presence means the model is already quantized.
QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "ConvInteger",
        "QLinearConv",
        "QLinearMatMul",
        "DynamicQuantizeMatMul",
        "DynamicQuantizeLSTM",
        "MatMulIntegerToFloat",
        "QGemm",
        "MatMulNBits",
        "QLinearAdd",
        "QLinearMul",
        "QAttention",
        "QEmbedLayerNormalization",
        "MatMulFpQ4",
        "GatherBlockQuantized",
    }
)
FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE)
MIN_EMBEDDING_ELEMENTS = 4096
# The CPU kernel families int8 types are chosen for (`--target` of quantize). Not the
# emulated validation targets of onnxslim.targets (EMULATED_TARGETS), which reuse two names.
KERNEL_TARGETS = ("auto", "x86-avx2", "x86-vnni", "arm64")


@dataclass(frozen=True)
class Target:
    """Integer types that run fast and accurately on one CPU family."""

    name: str
    activation_type: str  # "uint8" or "int8"
    reduce_range: bool
    why: str


_TARGETS = {
    "x86-avx2": Target(
        "x86-avx2",
        "uint8",
        True,
        "x86 without VNNI: U8 activations fuse into QLinearConv; 7-bit weights avoid "
        "the u8s8 kernel's 16-bit saturation",
    ),
    "x86-vnni": Target("x86-vnni", "uint8", False, "x86 with VNNI: U8S8 at full range"),
    "arm64": Target("arm64", "int8", False, "ARM: S8S8 kernels"),
}


def cpu_flags() -> set[str]:
    """Feature flags of this CPU from /proc/cpuinfo (empty where unavailable)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def detect_target(flags: set[str] | None = None, machine: str | None = None) -> str:
    """The target preset of the machine running this code."""
    machine = (machine or platform.machine()).lower()
    if machine in ("aarch64", "arm64") or machine.startswith("arm"):
        return "arm64"
    flags = cpu_flags() if flags is None else flags
    if flags & {"avx512_vnni", "avx_vnni", "avx512vnni", "amx_int8"}:
        return "x86-vnni"
    return "x86-avx2"


def resolve_target(name: str) -> Target:
    if name not in KERNEL_TARGETS:
        raise ValueError(f"target {name!r}: expected one of {', '.join(KERNEL_TARGETS)}")
    return _TARGETS[detect_target() if name == "auto" else name]


@dataclass(frozen=True, kw_only=True)
class PolicyConfig:
    """The choices that decide the plan (types come from the target unless overridden)."""

    activation_type: str = "uint8"
    per_channel: bool = True
    reduce_range: bool = False
    exclude: tuple[str, ...] = ()
    keep_float_outputs: bool = False
    quantize_depthwise: bool = False  # False: only between int8 neighbours
    quantize_activation_matmul: bool = False  # attention-style MatMul of two activations
    op_types: frozenset[str] | None = None  # restrict to these op types (None: all known)


def quantized_ops_in(model: ir.Model) -> list[str]:
    """Op types that show the model is already quantized."""
    return sorted({n.op_type for n in iter_nodes(model) if n.op_type in QUANTIZED_OPS})


def _is_float(value: ir.Value | None) -> bool:
    return value is not None and value.dtype in FLOAT_TYPES


def matches(node: ir.Node, patterns: Iterable[str]) -> bool:
    """True when a pattern names the node, its op type, or regex-matches its name."""
    name = node.name or ""
    for pattern in patterns:
        if pattern in (name, node.op_type):
            return True
        try:
            if re.fullmatch(pattern, name):
                return True
        except re.error:
            continue
    return False


def make_plan(
    model: ir.Model,
    config: PolicyConfig,
    *,
    float_nodes: Mapping[str, str] | None = None,
    float_tensors: Iterable[str] = (),
) -> QuantPlan:
    """Decide, for every graph of `model`, which nodes and tensors get quantized.

    `float_nodes` (name -> reason) and `float_tensors` come from checks and
    protections (ORT did not fuse, mask constants, mixed ranges, sensitivity).
    """
    float_nodes = dict(float_nodes or {})
    keep_float = set(float_tensors)
    graph_outputs = {
        id(v) for g in iter_graphs(model) if isinstance(g, ir.Graph) for v in g.outputs
    }
    nodes = [n for g in iter_graphs(model) if isinstance(g, ir.Graph) for n in g]
    skipped: dict[str, str] = {}
    candidates: dict[str, NodePlan] = {}
    by_name = {n.name or "": n for n in nodes}

    for node in nodes:
        name = node.name or ""
        role_plan = _candidate(node, config, graph_outputs, keep_float)
        if role_plan is None:
            continue
        if isinstance(role_plan, str):
            skipped[name] = role_plan
            continue
        if name in float_nodes:
            skipped[name] = float_nodes[name]
            continue
        if config.exclude and matches(node, config.exclude):
            skipped[name] = "excluded"
            continue
        if config.op_types is not None and node.op_type not in config.op_types:
            skipped[name] = "op type not selected"
            continue
        if config.keep_float_outputs and any(id(o) in graph_outputs for o in node.outputs):
            skipped[name] = "produces a graph output (--keep-float-outputs)"
            continue
        candidates[name] = role_plan

    members = fixed_point(candidates, by_name, graph_outputs, keep_float)
    for name in set(candidates) - set(members):
        if candidates[name].role not in (
            "shared",
            "absorbed",
        ):  # data movement left float needs no line
            skipped.setdefault(name, "int8 here would add Q/DQ pairs, not remove them")
    tensors = tensor_plans(members, by_name, graph_outputs)
    return QuantPlan(members, tensors, skipped)


def _candidate(
    node: ir.Node, config: PolicyConfig, graph_outputs: set[int], keep_float: set[str]
) -> NodePlan | str | None:
    """The node's plan if it could be quantized, a reason string if not, None if not a candidate."""
    if node.domain not in ("", "ai.onnx"):
        return None
    op = node.op_type
    name = node.name or ""
    inputs = list(node.inputs)
    if op == "ConvTranspose":
        return "ConvTranspose has no int8 kernel on ORT's CPU provider"
    if op in COMPUTE_OPS:
        return _compute_candidate(node, config, keep_float)
    if (
        op == "Gather"
        and is_constant(inputs[0])
        and _is_float(inputs[0])
        and not is_constant(inputs[1])
    ):
        table = inputs[0]
        size = (
            math.prod(table.shape.numpy())
            if table is not None and table.shape is not None and table.shape.is_static()
            else 0
        )
        if size >= MIN_EMBEDDING_ELEMENTS:
            return NodePlan(name, op, "embedding", weights={0: None})
        return None
    if op in SHARED_SCALE_OPS:
        if not _is_float(inputs[0]) or is_constant(inputs[0]):
            return None
        if op == "Resize" and node.attributes.get_string("mode", "nearest") != "nearest":
            return None
        if op == "MaxPool" and len(node.outputs) > 1:
            return None
        return NodePlan(name, op, "shared", activations=[0])
    if op in ABSORBABLE_OPS:
        if not _is_float(inputs[0]):
            return None
        if op == "Clip":
            low = const_array(inputs[1]) if len(inputs) > 1 and inputs[1] is not None else None
            high = const_array(inputs[2]) if len(inputs) > 2 and inputs[2] is not None else None
            if (len(inputs) > 1 and inputs[1] is not None and low is None) or (
                len(inputs) > 2 and inputs[2] is not None and high is None
            ):
                return None
            if low is not None and float(low) > 0.0:
                return None
            if high is not None and float(high) < 0.0:
                return None
        return NodePlan(name, op, "absorbed", activations=[0])
    if op in ISLAND_OPS:
        floats = [i for i, v in enumerate(inputs) if v is not None and _is_float(v)]
        if not floats or len(floats) != len([v for v in inputs if v is not None]):
            return None
        if op in ("AveragePool",) and len(node.outputs) > 1:
            return None
        activations = [i for i in floats if not is_constant(inputs[i])]
        constants = [i for i in floats if is_constant(inputs[i])]
        if not activations:
            return None
        for index in constants:
            array = const_array(inputs[index])
            if array is not None and array.size > 1 and float(np.ptp(array)) > 0.0:
                # A per-channel constant (a BatchNorm scale left after a residual Add) in one
                # uint8 scale loses about 1 % per channel, compounding op after op; in float
                # it costs no more time (int8 element-wise kernels are no faster).
                return "its constant varies per channel: one int8 scale would blur it"
        return NodePlan(name, op, "island", activations=activations, constants=constants)
    return None


def _compute_candidate(
    node: ir.Node, config: PolicyConfig, keep_float: set[str]
) -> NodePlan | str | None:
    op = node.op_type
    name = node.name or ""
    inputs = list(node.inputs) + [None] * 3
    x, w, b = inputs[0], inputs[1], inputs[2]
    if not _is_float(x) or (x is not None and x.dtype != ir.DataType.FLOAT):
        return None
    if x is not None and (x.name or "") in keep_float:
        return "its input must stay float"
    if op == "Conv":
        weight = const_array(w)
        if weight is None or weight.dtype != np.float32:
            return "weight is not a float32 constant"
        group = node.attributes.get_int("group", 1)
        depthwise = group > 1 and group == weight.shape[0] and weight.shape[1] == 1
        plan = NodePlan(
            name,
            op,
            "compute",
            weights={1: 0 if config.per_channel else None},
            activations=[0],
            output_quantized=True,
            sandwiched=depthwise and not config.quantize_depthwise,
        )
        if b is not None:
            if const_array(b) is None:
                return "bias is not constant"
            plan.bias = 2
        return plan
    if op == "MatMul":
        weight = const_array(w)
        if weight is None:
            if is_constant(x):
                return None
            if not config.quantize_activation_matmul:
                return "MatMul of two activations (attention) stays float"
            if not _is_float(w) or (w is not None and w.dtype != ir.DataType.FLOAT):
                return None
            return NodePlan(name, op, "compute", activations=[0, 1])
        if weight.dtype != np.float32 or weight.ndim < 2:
            return "weight is not a float32 matrix"
        axis = (weight.ndim - 1) if config.per_channel and weight.ndim == 2 else None
        return NodePlan(name, op, "compute", weights={1: axis}, activations=[0])
    if op == "Gemm":
        weight = const_array(w)
        if weight is None or weight.dtype != np.float32 or weight.ndim != 2:
            return "weight is not a float32 constant matrix"
        if refusal := gemm_refusal(node):
            return refusal
        trans_b = node.attributes.get_int("transB", 0)
        plan = NodePlan(
            name,
            op,
            "compute",
            weights={1: (0 if trans_b else 1) if config.per_channel else None},
            activations=[0],
        )
        if b is not None:
            bias = const_array(b)
            if bias is None:
                return "bias is not constant"
            n_out = weight.shape[0] if trans_b else weight.shape[1]
            if bias.size not in (1, n_out) or bias.ndim > 1 and bias.shape[0] != 1:
                return "bias is not a vector"
            if bias.ndim <= 1:
                plan.bias = 2
            else:
                return "bias is not a vector"
        return plan
    return None


def gemm_refusal(node: ir.Node) -> str:
    """Why int8 kernels cannot take this Gemm as X @ W (+ bias), or "" when they can: the
    quantized forms have no transposed input A and no alpha / beta scaling."""
    if node.attributes.get_int("transA", 0):
        return "Gemm with transA"
    if (
        node.attributes.get_float("alpha", 1.0) != 1.0
        or node.attributes.get_float("beta", 1.0) != 1.0
    ):
        return "Gemm with alpha or beta other than 1"
    return ""
