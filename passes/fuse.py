"""Lossless fusions: fewer nodes computing the same outputs (within float rounding).

One pass per family, each a `FusionPass` naming its rewrite in a `fuse_*` module
(the loop, opset gate and clean-up are written once, in the base), so a recipe can
run, skip or order them one by one and the pipeline guard checks each on its own.
Every pass rewrites the main graph, If/Loop/Scan bodies (nested) and local
functions, repeats until nothing more matches, and refuses any rewrite that would
change a weight another node also reads (see fuse_common).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ClassVar

import onnx_ir as ir

from onnxslim.passes._options import option
from onnxslim.passes.fuse_common import Namer, Scope, fixpoint, opset_version, scopes
from onnxslim.passes.fuse_conv import fuse_conv_affine, fuse_conv_batchnorm, fuse_pad
from onnxslim.passes.fuse_layout import fuse_layout_chains
from onnxslim.passes.fuse_linear import fuse_matmul_add
from onnxslim.passes.fuse_norm import fuse_gelu, fuse_layernorm

Rewrite = Callable[[Scope, Namer], int]


def run_rewrite(model: ir.Model, rewrite: Rewrite, max_rounds: int = 8) -> ir.passes.PassResult:
    """Apply `rewrite` everywhere until it stops matching; drop initializers it orphaned."""
    unused_before = _unused_initializers(model)
    namer = Namer(model)
    count = fixpoint(model, lambda scope: rewrite(scope, namer), max_rounds=max_rounds)
    if count:
        for graph, name in _unused_initializers(model) - unused_before:
            graph.initializers.pop(name, None)
    return ir.passes.PassResult(model, bool(count))


def _unused_initializers(model: ir.Model) -> set[tuple[ir.Graph, str]]:
    found = set()
    for scope in scopes(model):
        if isinstance(scope, ir.Graph):
            for name, value in scope.initializers.items():
                if not value.uses() and not value.is_graph_input() and not value.is_graph_output():
                    found.add((scope, name))
    return found


@dataclasses.dataclass(frozen=True, kw_only=True)
class FusionPass(ir.passes.InPlacePass):
    """One lossless fusion: its rewrite applied in every scope until it stops matching.

    A fusion declares `rewrite` (a function of fuse_conv/_layout/_linear/_norm) and,
    where the fused op needs it, the lowest opset (`min_opset`); below it the pass
    changes nothing. `max_rounds` bounds the repeats (chains may need many).
    """

    lossless: ClassVar[bool] = True
    max_rounds: ClassVar[int] = 8
    min_opset: ClassVar[int] = 0

    # Rewrites every match in one scope and returns how many it rewrote.
    rewrite: ClassVar[staticmethod[[Scope, Namer], int]]

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if opset_version(model) < self.min_opset:
            return ir.passes.PassResult(model, False)
        return run_rewrite(model, type(self).rewrite, max_rounds=self.max_rounds)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FuseConvBatchNorm(FusionPass):
    """Fold BatchNormalization into the Conv or ConvTranspose before it."""

    rewrite = staticmethod(fuse_conv_batchnorm)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FuseConvAffine(FusionPass):
    """Fold per-channel Mul/Div/Add/Sub by constants into the Conv before (or after) them."""

    rewrite = staticmethod(fuse_conv_affine)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FuseMatMulAddGemm(FusionPass):
    """Turn MatMul + Add of a constant into Gemm where both operands are matrices."""

    rewrite = staticmethod(fuse_matmul_add)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FuseLayoutChains(FusionPass):
    """Merge or cancel chains of Transpose, Reshape, Squeeze, Unsqueeze and widening Cast."""

    max_rounds: ClassVar[int] = 32

    rewrite = staticmethod(fuse_layout_chains)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FusePad(FusionPass):
    """Fold a Pad into the pads of the next Conv or pooling (zero; -inf or narrow edge: MaxPool)."""

    rewrite = staticmethod(fuse_pad)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FuseGelu(FusionPass):
    """Replace written-out GELU (erf or tanh form) with the Gelu op (opset 20+)."""

    contrib: bool = option(
        False,
        "Below opset 20, emit onnxruntime's com.microsoft Gelu/FastGelu "
        "(not in every runtime build, e.g. ORT Mobile).",
    )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if opset_version(model) >= 20:
            domain = ""
        elif self.contrib:
            domain = "com.microsoft"
        else:
            return ir.passes.PassResult(model, False)
        result = run_rewrite(model, lambda scope, namer: fuse_gelu(scope, namer, domain=domain))
        if result.modified and domain:
            model.opset_imports.setdefault(domain, 1)
            model.graph.opset_imports.setdefault(domain, 1)
        return result


@dataclasses.dataclass(frozen=True, kw_only=True)
class FuseLayerNorm(FusionPass):
    """Replace written-out layer normalization with LayerNormalization (opset 17+)."""

    min_opset: ClassVar[int] = 17

    rewrite = staticmethod(fuse_layernorm)
