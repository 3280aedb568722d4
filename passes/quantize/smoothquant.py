"""SmoothQuant (Xiao et al. 2023): move activation outliers into the weights, a float rewrite.

Why: in transformer-style models a few channels of the input of a MatMul carry values
100x larger than the rest, so one int8 activation scale for the whole tensor rounds
the other channels to a few levels. Weights are easy to quantize (per channel).
For Y = X W with X's last axis j and any positive s_j,

    Y = (X diag(s)^-1) (diag(s) W)

and choosing s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) flattens X's channel
ranges at the cost of W's. The division by s is folded into whatever produced X,
so no op is added:
  (1) X = LayerNormalization(..., gamma, beta):      gamma /= s, beta /= s;
  (2) X = Mul(A, c) with constant c:                  c /= s (broadcast to [K]);
  (3) X = Add(Mul(A, g), b) with constants (the decomposed LayerNorm affine): g /= s, b /= s.
  (4) anything else, or X also read by other nodes (the residual Add of a post-LN
      BERT reads the LayerNorm output too): one Mul(X, 1/s) is inserted in front of
      the MatMul/Gemm readers only, and the other readers keep the original X.
Each MatMul (constant 2-D W, X as A) or Gemm (constant B, no transA) reading X has
its weight's row j multiplied by s_j.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any, ClassVar

import numpy as np
import onnx_ir as ir

from onnxslim.calibration import iter_npz
from onnxslim.feeds import Feed, generate_feeds, input_specs
from onnxslim.passes._options import option
from onnxslim.passes.quantize.collect import stream_tensors
from onnxslim.passes.quantize.ranges import Summary
from onnxslim.shapes import infer_shapes


@dataclass
class SmoothTarget:
    """A tensor X to smooth: how its producer absorbs 1/s and which weights absorb s."""

    value: ir.Value
    folds: list[tuple[ir.Value, str]]  # constants that get divided by s ("gamma", "beta", "scale")
    weights: list[tuple[ir.Node, ir.Value]]  # (MatMul/Gemm, its constant weight)
    insert_mul: bool = False  # case (4): no fold; a Mul(X, 1/s) feeds the weights' nodes

    @property
    def name(self) -> str:
        return self.value.name or ""


@dataclass
class SmoothReport:
    smoothed: list[str] = dataclasses.field(default_factory=list)
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    # Per smoothed tensor: activation channel-range spread (max/median) before and after.
    spread: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)


def find_targets(graph: ir.Graph) -> tuple[list[SmoothTarget], list[tuple[str, str]]]:
    """Tensors feeding constant-weight MatMul/Gemm that can be smoothed, and refusals."""
    seen: set[int] = set()
    targets: list[SmoothTarget] = []
    skipped: list[tuple[str, str]] = []
    for node in graph:
        if node.op_type not in ("MatMul", "Gemm") or node.domain not in ("", "ai.onnx"):
            continue
        x = node.inputs[0]
        if x is None or id(x) in seen or _weight_of(node) is None:
            continue
        seen.add(id(x))
        found = _target(x)
        if isinstance(found, str):
            skipped.append((x.name or "", found))
        else:
            targets.append(found)
    return targets, skipped


def smooth_scales(act_absmax: np.ndarray, weight_absmax: np.ndarray, alpha: float) -> np.ndarray:
    """s_j = max|X_j|^alpha / max|W_j|^(1-alpha), 1 where either side is zero or not finite."""
    a = np.asarray(act_absmax, dtype=np.float64)
    w = np.asarray(weight_absmax, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        s = np.power(a, alpha) / np.power(w, 1.0 - alpha)
    ok = np.isfinite(s) & (s > 0) & (a > 0) & (w > 0)
    return np.where(ok, np.clip(s, 1e-5, 1e5), 1.0)


def smooth_graph(
    graph: ir.Graph, act_absmax: Mapping[str, np.ndarray], *, alpha: float = 0.5
) -> SmoothReport:
    """Apply SmoothQuant in place to every target whose channel maxima are known."""
    targets, skipped = find_targets(graph)
    report = SmoothReport(skipped=skipped)
    for target in targets:
        stats = act_absmax.get(target.name)
        if stats is None:
            report.skipped.append((target.name, "no calibration statistics"))
            continue
        stats = np.asarray(stats, dtype=np.float64).reshape(-1)
        rows = [_weight_rows(node, w) for node, w in target.weights]
        if any(r.shape[0] != stats.size for r in rows):
            report.skipped.append(
                (target.name, "channel count differs between activation and weight")
            )
            continue
        w_absmax = np.max(np.stack([np.max(np.abs(r), axis=1) for r in rows]), axis=0)
        s = smooth_scales(stats, w_absmax, alpha)
        for const, _role in target.folds:
            _set(const, _divide_per_channel(const, s))
        if target.insert_mul:
            _insert_mul(graph, target, s)
        for node, weight in target.weights:
            _set(weight, _scale_rows(node, weight, s))
        report.smoothed.append(target.name)
        report.spread[target.name] = (_spread(stats), _spread(stats / s))
    return report


def channel_absmax(model: ir.Model, feeds: Any, names: list[str]) -> dict[str, np.ndarray]:
    """Per-last-axis-channel max|x| of the named tensors over `feeds`, streamed.

    `feeds` is anything `collect.stream_tensors` reads (a list, an iterator, a path);
    one feed's tensors are held at a time, so memory does not grow with the samples.
    """
    if not names:
        return {}
    result: dict[str, np.ndarray] = {}

    def consume(_: int, arrays: dict[str, np.ndarray | Summary]) -> None:
        for n, array in arrays.items():
            assert isinstance(array, np.ndarray)  # nothing is summarized: arrays only
            a = np.abs(np.asarray(array, dtype=np.float32))
            current = a.reshape(-1, a.shape[-1]).max(axis=0) if a.ndim else a.reshape(1)
            result[n] = current if n not in result else np.maximum(result[n], current)

    stream_tensors(_typed(model, names), feeds, names, consume)
    return result


def _typed(model: ir.Model, names: list[str]) -> ir.Model:
    """`model`, or a shape-inferred clone when a wanted tensor has no declared type
    (the collector fetches only tensors it knows to be float)."""
    wanted = set(names)
    if all(v.dtype is not None for node in model.graph for v in node.outputs if v.name in wanted):
        return model

    clone = model.clone()
    try:
        infer_shapes(clone, check_type=True, strict_mode=True)
    except Exception:  # best effort, as before: untyped tensors stay unfetched
        pass
    return clone


@dataclasses.dataclass(frozen=True, kw_only=True)
class SmoothQuant(ir.passes.InPlacePass):
    """Migrate MatMul/Gemm input outliers into the weights (outputs unchanged up to rounding)."""

    lossless: ClassVar[bool] = True
    alpha: float = option(
        0.5,
        "Migration strength: 0 leaves activations as they are, 1 moves all range into the weights.",
    )
    data: str = option(
        "", "Calibration .npz giving activation channel ranges; generated inputs when empty."
    )
    samples: int = option(64, "Calibration samples read for the channel ranges.")

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha={self.alpha}: expected a value in [0, 1]")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        targets, _ = find_targets(model.graph)
        if not targets:
            model.graph.meta["onnxslim.smoothquant"] = SmoothReport()
            return ir.passes.PassResult(model, False)
        stats = channel_absmax(
            model, _feeds(model, self.data, self.samples), [t.name for t in targets]
        )
        report = smooth_graph(model.graph, stats, alpha=self.alpha)
        model.graph.meta["onnxslim.smoothquant"] = report
        return ir.passes.PassResult(model, bool(report.smoothed))


# --- helpers -------------------------------------------------------------------------------


def _feeds(model: ir.Model, data: str, samples: int) -> Iterable[Feed]:

    if data:
        return islice(iter_npz(data), samples)
    return generate_feeds(input_specs(model), samples, seed=0)


def _weight_of(node: ir.Node) -> ir.Value | None:
    """The constant weight of a MatMul/Gemm that reads X as its first input, else None."""
    if len(node.inputs) < 2 or node.inputs[1] is None:
        return None
    weight = node.inputs[1]
    if weight.const_value is None or weight.const_value.numpy().ndim != 2:
        return None
    if node.op_type == "Gemm" and bool(node.attributes.get_int("transA", 0)):
        return None
    return weight


def _target(x: ir.Value) -> SmoothTarget | str:
    weights: list[tuple[ir.Node, ir.Value]] = []
    others = False
    for node, index in x.uses():
        weight = _weight_of(node) if node.op_type in ("MatMul", "Gemm") else None
        if index != 0 or weight is None:
            others = True
            continue
        if len(list(weight.uses())) != 1:
            return f"weight {weight.name!r} is shared with another node"
        weights.append((node, weight))
    if not weights:
        return "no MatMul/Gemm with a constant weight reads it"
    folds = (
        _folds(x)
        if not (others or x.is_graph_output() or x.is_graph_input())
        else "read by other nodes"
    )
    if isinstance(folds, str) or any(len(list(c.uses())) != 1 for c, _ in folds):
        return SmoothTarget(x, [], weights, insert_mul=True)  # case (4)
    return SmoothTarget(x, folds, weights)


def _const(value: ir.Value | None) -> bool:
    return value is not None and value.const_value is not None


def _folds(x: ir.Value) -> list[tuple[ir.Value, str]] | str:
    producer = x.producer()
    if producer is None:
        return "no producer to absorb the division"
    op = producer.op_type
    if op == "LayerNormalization" and producer.domain in ("", "ai.onnx"):  # case (1)
        if producer.attributes.get_int("axis", -1) != -1 and not _axis_is_last(producer):
            return "LayerNormalization over more than the last axis"
        gamma, beta = producer.inputs[1], (producer.inputs[2] if len(producer.inputs) > 2 else None)
        if gamma is None or not _const(gamma) or (beta is not None and not _const(beta)):
            return "LayerNormalization gamma/beta are not constants"
        return [(gamma, "gamma")] + ([(beta, "beta")] if beta is not None else [])
    if op == "Mul":  # case (2)
        const = next((v for v in producer.inputs if _const(v)), None)
        if const is None:
            return "Mul by a non-constant"
        tensor = const.const_value
        assert tensor is not None  # picked by _const
        shape = tensor.numpy().shape
        if int(np.prod(shape[:-1], dtype=np.int64)) != 1:
            return "Mul constant varies along more than the last axis"
        return [(const, "scale")]
    if op == "Add":  # case (3)
        bias = next((v for v in producer.inputs if _const(v)), None)
        other = next((v for v in producer.inputs if v is not bias), None)
        mul = other.producer() if other is not None else None
        if (
            bias is None
            or other is None
            or mul is None
            or mul.op_type != "Mul"
            or len(list(other.uses())) != 1
        ):
            return "Add is not the affine part of a decomposed LayerNorm"
        gamma = next((v for v in mul.inputs if _const(v)), None)
        if gamma is None:
            return "Add is not the affine part of a decomposed LayerNorm"
        return [(gamma, "gamma"), (bias, "beta")]
    return f"producer {op} cannot absorb the division"


def _insert_mul(graph: ir.Graph, target: SmoothTarget, s: np.ndarray) -> None:
    """Case (4): X_s = X * (1/s) feeds the MatMul/Gemm readers; other readers keep X."""
    x = target.value
    dtype = x.dtype.numpy() if x.dtype is not None else np.dtype(np.float32)
    base = f"{x.name}_smooth"
    inverse = ir.Value(
        name=f"{base}_inverse_scale",
        const_value=ir.tensor((1.0 / s).astype(dtype), name=f"{base}_inverse_scale"),
    )
    graph.register_initializer(inverse)
    mul = ir.Node("", "Mul", [x, inverse], name=f"{base}_mul")
    mul.outputs[0].name = base
    if x.dtype is not None:
        mul.outputs[0].dtype, mul.outputs[0].shape = x.dtype, x.shape
    producer = x.producer()
    if producer is not None and producer.graph is graph:
        graph.insert_after(producer, mul)
    else:  # a graph input: first node of the graph
        graph.insert_before(next(iter(graph)), mul)
    for node, _ in target.weights:
        node.replace_input_with(0, mul.outputs[0])


def _axis_is_last(node: ir.Node) -> bool:
    x = node.inputs[0]
    axis = node.attributes.get_int("axis", -1)
    return x is not None and x.shape is not None and axis == len(x.shape) - 1


def _weight_rows(node: ir.Node, weight: ir.Value) -> np.ndarray:
    """The weight as [K, N], K indexing the input channels of X."""
    w = weight.const_value.numpy()  # type: ignore[union-attr]
    return w.T if node.op_type == "Gemm" and bool(node.attributes.get_int("transB", 0)) else w


def _scale_rows(node: ir.Node, weight: ir.Value, s: np.ndarray) -> np.ndarray:
    w = weight.const_value.numpy().astype(np.float64)  # type: ignore[union-attr]
    if node.op_type == "Gemm" and bool(node.attributes.get_int("transB", 0)):
        return w * s[None, :]
    return w * s[:, None]


def _divide_per_channel(const: ir.Value, s: np.ndarray) -> np.ndarray:
    c = const.const_value.numpy().astype(np.float64)  # type: ignore[union-attr]
    if c.size == 1:
        return (np.full(s.shape, c.reshape(())) / s).reshape(s.shape)
    if c.shape[-1] == s.size and c.size == s.size:
        return c / s.reshape(c.shape)
    return c / s  # broadcasts along the last axis


def _set(value: ir.Value, array: np.ndarray) -> None:
    dtype = value.const_value.numpy().dtype  # type: ignore[union-attr]
    value.const_value = ir.tensor(array.astype(dtype), name=value.name)


def _spread(channel_max: np.ndarray) -> float:
    median = float(np.median(channel_max))
    return float(np.max(channel_max)) / median if median > 0 else float("inf")
