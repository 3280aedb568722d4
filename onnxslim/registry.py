"""The pass registry: recipe names to pass classes, written out in code.

Third-party passes join through the `onnxslim.passes` entry-point group; nothing
registers itself by being imported.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import onnx_ir as ir

from onnxslim.errors import UsageError
from onnxslim.passes import cleanup, eliminate, fold
from onnxslim.passes import fuse
from onnxslim.passes import cluster, prune
from onnxslim.passes.quantize import equalize as quantize_equalize
from onnxslim.passes.quantize import smoothquant as quantize_smoothquant
from onnxslim.passes.quantize import dynamic as quantize_dynamic
from onnxslim.passes.quantize import static as quantize_static
from onnxslim.passes.quantize import weight_only as quantize_weight_only

PassClass = type[ir.passes.PassBase]

BUILTIN_PASSES: dict[str, PassClass] = {
    "fix-input-shapes": fold.FixInputShapes,
    "fold-constants": fold.FoldConstants,
    "remove-initializer-inputs": eliminate.RemoveInitializerInputs,
    "eliminate-identity": eliminate.EliminateIdentity,
    "eliminate-no-ops": eliminate.EliminateNoOps,
    "remove-unused": eliminate.RemoveUnused,
    "deduplicate-initializers": cleanup.DeduplicateInitializers,
    "eliminate-common-subexpressions": cleanup.EliminateCommonSubexpressions,
    "strip-debug-metadata": cleanup.StripDebugMetadata,
    "fuse-conv-bn": fuse.FuseConvBatchNorm,
    "fuse-conv-affine": fuse.FuseConvAffine,
    "fuse-pad": fuse.FusePad,
    "fuse-matmul-add-gemm": fuse.FuseMatMulAddGemm,
    "fuse-gelu": fuse.FuseGelu,
    "fuse-layernorm": fuse.FuseLayerNorm,
    "fuse-layout-chains": fuse.FuseLayoutChains,
    "prune-magnitude": prune.MagnitudePruning,
    "prune-nm": prune.NMSparsity,
    "prune-channels": prune.ChannelPruning,
    "pack-sparse": prune.PackSparseWeights,
    "unpack-sparse": prune.UnpackSparseWeights,
    "cross-layer-equalization": quantize_equalize.CrossLayerEqualization,
    "smooth-quant": quantize_smoothquant.SmoothQuant,
    "cluster-weights": cluster.ClusterWeights,
    "pack-palette": cluster.PackPalette,
    "unpack-palette": cluster.UnpackPalette,
    "quantize-static": quantize_static.QuantizeStatic,
    "quantize-dynamic": quantize_dynamic.QuantizeDynamic,
    "quantize-weight-only": quantize_weight_only.QuantizeWeightOnly,
}

# The lossless clean-up that `onnxslim optimize` runs by default, in order. Folding
# first gives every value a type and shape (the no-op rules read them); fusions go
# after the no-ops are gone, and merging duplicates last catches what they exposed.
# `--input-shape` puts fix-input-shapes in front.
DEFAULT_OPTIMIZE = (
    "remove-initializer-inputs",
    "fold-constants",
    "eliminate-no-ops",
    "fuse-layout-chains",
    "fuse-conv-bn",
    "fuse-conv-affine",
    "fuse-pad",
    "fuse-matmul-add-gemm",
    "fuse-gelu",
    "fuse-layernorm",
    "deduplicate-initializers",
    "eliminate-common-subexpressions",
    "remove-unused",
    "strip-debug-metadata",
)


@dataclass(frozen=True)
class OptionInfo:
    name: str
    type: str
    default: Any
    help: str


@dataclass(frozen=True)
class PassInfo:
    name: str
    summary: str
    lossless: bool
    options: tuple[OptionInfo, ...]


def available_passes() -> dict[str, PassClass]:
    """Built-in passes plus those installed through the entry-point group."""
    passes = dict(BUILTIN_PASSES)
    for entry in _installed_entry_points():
        passes.setdefault(entry.name, entry.load())
    return passes


@functools.lru_cache(maxsize=1)
def _installed_entry_points() -> tuple[Any, ...]:
    """Scanned once per process: listing entry points reads every installed package's
    metadata (~0.1 s), and pass_name() is called for every pass of every run."""
    return tuple(entry_points(group="onnxslim.passes"))


def pass_class(name: str) -> PassClass:
    passes = available_passes()
    if name not in passes:
        raise UsageError(f"unknown pass {name!r}; `onnxslim passes` lists them")
    return passes[name]


def pass_name(instance: ir.passes.PassBase) -> str:
    """The recipe name of a pass instance (its class name if unregistered)."""
    for name, cls in available_passes().items():
        if type(instance) is cls:
            return name
    return type(instance).__name__


def describe(name: str, cls: PassClass) -> PassInfo:
    """Name, one-line summary and options (with help) of a pass class."""
    summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
    options = tuple(
        OptionInfo(f.name, _type_name(f.type), f.default, f.metadata.get("help", ""))
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.init and not f.metadata.get("internal")
    )
    return PassInfo(name, summary, bool(getattr(cls, "lossless", False)), options)


def make_pass(name: str, options: dict[str, Any]) -> ir.passes.PassBase:
    """Build a pass from its recipe name and options, with a clear error for bad options."""
    cls = pass_class(name)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(options) - known)
    if unknown:
        raise UsageError(f"pass {name!r}: unknown option(s) {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(known)) or 'none'}")
    try:
        return cls(**options)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"pass {name!r}: {exc}") from exc


def _type_name(annotation: Any) -> str:
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
