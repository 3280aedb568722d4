"""The pass registry: recipe names to pass classes, written out in code.

Third-party passes join through the `onnxslim.passes` entry-point group; nothing
registers itself by being imported.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import onnx_ir as ir

from onnxslim.errors import UsageError
from onnxslim.passes._run_data import TakesData
from onnxslim.suggest import did_you_mean

PassClass = type[ir.passes.PassBase]


class PassTable(MutableMapping[str, PassClass]):
    """Recipe names to pass classes, each imported on first use.

    Importing every pass family (pruning, clustering, quantization pull in their
    numerics) costs ~0.15 s of each CLI start, while `onnxslim optimize` needs only
    the clean-up passes; so the table is written out as "module:Class" and a class is
    imported when a recipe or `pass_name` asks for it.
    """

    def __init__(self, specs: dict[str, str]) -> None:
        self._specs: dict[str, str | None] = dict(specs)
        self._classes: dict[str, PassClass] = {}

    def __getitem__(self, name: str) -> PassClass:
        if name not in self._classes:
            spec = self._specs[name]
            assert spec is not None  # classes set directly are in _classes
            module, _, attribute = spec.partition(":")
            self._classes[name] = getattr(importlib.import_module(module), attribute)
        return self._classes[name]

    def __setitem__(self, name: str, cls: PassClass) -> None:
        self._specs[name] = None
        self._classes[name] = cls

    def __delitem__(self, name: str) -> None:
        del self._specs[name]
        self._classes.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def name_of(self, cls: type) -> str | None:
        """The recipe name of `cls`, importing nothing but what its spec names."""
        spec = f"{cls.__module__}:{cls.__qualname__}"
        for name, written in self._specs.items():
            if written in (spec, None) and self[name] is cls:
                return name
        return None


_P = "onnxslim.passes"
BUILTIN_PASSES = PassTable(
    {
        "fix-input-shapes": f"{_P}.fold:FixInputShapes",
        "fold-constants": f"{_P}.fold:FoldConstants",
        "remove-initializer-inputs": f"{_P}.eliminate:RemoveInitializerInputs",
        "eliminate-identity": f"{_P}.eliminate:EliminateIdentity",
        "eliminate-no-ops": f"{_P}.eliminate:EliminateNoOps",
        "remove-unused": f"{_P}.eliminate:RemoveUnused",
        "deduplicate-initializers": f"{_P}.cleanup:DeduplicateInitializers",
        "eliminate-common-subexpressions": f"{_P}.cleanup:EliminateCommonSubexpressions",
        "strip-debug-metadata": f"{_P}.cleanup:StripDebugMetadata",
        "fuse-conv-bn": f"{_P}.fuse:FuseConvBatchNorm",
        "fuse-conv-affine": f"{_P}.fuse:FuseConvAffine",
        "fuse-pad": f"{_P}.fuse:FusePad",
        "fuse-matmul-add-gemm": f"{_P}.fuse:FuseMatMulAddGemm",
        "fuse-gelu": f"{_P}.fuse:FuseGelu",
        "fuse-layernorm": f"{_P}.fuse:FuseLayerNorm",
        "fuse-layout-chains": f"{_P}.fuse:FuseLayoutChains",
        "prune-magnitude": f"{_P}.prune.magnitude:MagnitudePruning",
        "prune-nm": f"{_P}.prune.nm:NMSparsity",
        "prune-channels": f"{_P}.prune.channels:ChannelPruning",
        "pack-sparse": f"{_P}.prune.storage:PackSparseWeights",
        "unpack-sparse": f"{_P}.prune.storage:UnpackSparseWeights",
        "cross-layer-equalization": f"{_P}.quantize.equalize:CrossLayerEqualization",
        "smooth-quant": f"{_P}.quantize.smoothquant:SmoothQuant",
        "cluster-weights": f"{_P}.cluster.cluster:ClusterWeights",
        "pack-palette": f"{_P}.cluster.storage:PackPalette",
        "unpack-palette": f"{_P}.cluster.storage:UnpackPalette",
        "quantize-static": f"{_P}.quantize.static:QuantizeStatic",
        "quantize-dynamic": f"{_P}.quantize.dynamic:QuantizeDynamic",
        "quantize-weight-only": f"{_P}.quantize.weight_only:QuantizeWeightOnly",
    }
)

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


# The variants of the user jobs (CLI commands and recipe steps) -> the pass each runs.
QUANTIZE_MODES = {
    "static": "quantize-static",
    "dynamic": "quantize-dynamic",
    "weight-only": "quantize-weight-only",
}
PRUNE_METHODS = {"magnitude": "prune-magnitude", "nm": "prune-nm", "channels": "prune-channels"}
PRUNE_STORAGE = ("packed", "dense")
CLUSTER_PASS = "cluster-weights"


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
    """Built-in passes plus those installed through the entry-point group (all imported)."""
    passes = {name: BUILTIN_PASSES[name] for name in BUILTIN_PASSES}
    for entry in _installed_entry_points():
        passes.setdefault(entry.name, entry.load())
    return passes


@functools.lru_cache(maxsize=1)
def _installed_entry_points() -> tuple[Any, ...]:
    """Scanned once per process: listing entry points reads every installed package's
    metadata (~0.1 s), and pass_name() is called for every pass of every run."""
    return tuple(entry_points(group="onnxslim.passes"))


def pass_class(name: str) -> PassClass:
    if name in BUILTIN_PASSES:
        return BUILTIN_PASSES[name]
    for entry in _installed_entry_points():
        if entry.name == name:
            return entry.load()
    known = [*BUILTIN_PASSES, *(entry.name for entry in _installed_entry_points())]
    raise UsageError(
        f"unknown pass {name!r}; `onnxslim passes` lists them{did_you_mean(name, known)}"
    )


def pass_name(instance: ir.passes.PassBase) -> str:
    """The recipe name of a pass instance (its class name if unregistered)."""
    builtin = BUILTIN_PASSES.name_of(type(instance))
    if builtin is not None:
        return builtin
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
        if f.init
    )
    return PassInfo(name, summary, bool(getattr(cls, "lossless", False)), options)


def make_pass(name: str, options: dict[str, Any]) -> ir.passes.PassBase:
    """Build a pass from its recipe name and options, with a clear error for bad options."""
    cls = pass_class(name)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(options) - known)
    if unknown:
        data = (
            "; its data is not an option: a recipe's [data] table (`onnxslim run`) hands it "
            "to the run"
            if issubclass(cls, TakesData) and "calib" in unknown
            else ""
        )
        raise UsageError(
            f"pass {name!r}: unknown option(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known)) or 'none'}{data}"
        )
    try:
        return cls(**options)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"pass {name!r}: {exc}") from exc


def _type_name(annotation: Any) -> str:
    return (
        annotation
        if isinstance(annotation, str)
        else getattr(annotation, "__name__", str(annotation))
    )


def pass_fields(cls: PassClass) -> dict[str, dataclasses.Field[Any]]:
    """A pass class's options (its dataclass fields) by name."""
    return {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]


def quantize_pass_class(mode: str) -> PassClass:
    if mode not in QUANTIZE_MODES:
        raise UsageError(f"mode {mode!r}: expected one of {', '.join(QUANTIZE_MODES)}")
    return BUILTIN_PASSES[QUANTIZE_MODES[mode]]


def prune_pass_class(method: str) -> PassClass:
    if method not in PRUNE_METHODS:
        raise UsageError(f"method {method!r}: expected one of {', '.join(PRUNE_METHODS)}")
    return BUILTIN_PASSES[PRUNE_METHODS[method]]


def make_quantize_pass(mode: str = "static", **options: Any) -> ir.passes.PassBase:
    """The pass for `mode` configured with `options`; options set to None are left out
    (the CLI passes every flag), any other unknown option is a UsageError."""
    cls = quantize_pass_class(mode)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(k for k, v in options.items() if k not in known and v is not None)
    if unknown:
        raise UsageError(f"--mode {mode} does not take {', '.join(unknown)}")
    try:
        return cls(**{k: v for k, v in options.items() if k in known})
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from exc


def make_prune_pass(method: str, **options: Any) -> ir.passes.PassBase:
    """The pass for `method` with `options` (its dataclass fields); unknown ones: UsageError."""
    cls = prune_pass_class(method)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(options) - known)
    if unknown:
        raise UsageError(
            f"prune --method {method}: option(s) {', '.join(unknown)} do not apply; "
            f"known: {', '.join(sorted(known))}"
        )
    try:
        return cls(**options)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"prune --method {method}: {exc}") from exc


def make_cluster_pass(**options: Any) -> ir.passes.PassBase:
    """ClusterWeights with `options` (its fields); unknown or bad options are a UsageError."""
    cls = BUILTIN_PASSES[CLUSTER_PASS]
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(options) - known)
    if unknown:
        raise UsageError(
            f"cluster: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    try:
        return cls(**options)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"cluster: {exc}") from exc
