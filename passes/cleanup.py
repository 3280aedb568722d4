"""Lossless clean-up: passes that leave outputs bit-identical.

The first clean-up composes what onnx_ir ships (dead code, identity elimination,
initializer deduplication, common subexpressions) so `onnxslim optimize` does real
work on any model; the richer folding and fusion passes sit beside it.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import onnx_ir as ir
import onnx_ir.passes.common as common

from onnxslim.passes._options import option


@dataclasses.dataclass(frozen=True, kw_only=True)
class RemoveDeadCode(ir.passes.InPlacePass):
    """Remove nodes, initializers and functions that no output depends on."""

    lossless: ClassVar[bool] = True

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for inner in (common.RemoveUnusedNodesPass(), common.RemoveUnusedFunctionsPass(),
                      common.RemoveUnusedOpsetsPass()):
            modified |= inner(model).modified
        return ir.passes.PassResult(model, modified)


@dataclasses.dataclass(frozen=True, kw_only=True)
class EliminateIdentity(ir.passes.InPlacePass):
    """Bypass Identity nodes, keeping graph output names intact."""

    lossless: ClassVar[bool] = True

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return common.IdentityEliminationPass()(model)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DeduplicateInitializers(ir.passes.InPlacePass):
    """Merge initializers with identical dtype, shape and contents."""

    lossless: ClassVar[bool] = True
    size_limit: int = option(1 << 30, "Skip tensors larger than this many bytes (hashing cost).")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return common.DeduplicateHashedInitializersPass(size_limit=self.size_limit)(model)


@dataclasses.dataclass(frozen=True, kw_only=True)
class EliminateCommonSubexpressions(ir.passes.InPlacePass):
    """Merge nodes that compute the same op on the same inputs with the same attributes."""

    lossless: ClassVar[bool] = True

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return common.CommonSubexpressionEliminationPass()(model)
