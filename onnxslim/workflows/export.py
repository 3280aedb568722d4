"""Prepare a model for a device: fixed shapes, opset, fp16, stripping, ORT format, bundle.

Each step works on the in-memory IR and the result is checked on ONNX Runtime against
the input model before anything is written; a model that fails that check is not
written unless forced. ORT-format conversion, the reduced-operator configuration and
the mobile pre-flight use what onnxruntime ships (`onnxruntime.tools`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io as _stdio
import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import onnx_ir as ir
import onnxruntime

from onnxslim import io
from onnxslim._version import __version__
from onnxslim.errors import (
    DataError,
    GateFailed,
    ModelLoadError,
    PassFailed,
    RuntimeFailure,
    UsageError,
)
from onnxslim.feed_search import plan_feeds
from onnxslim.feeds import Feed, input_specs, parse_input_shapes
from onnxslim.graphs import iter_graphs, iter_nodes
from onnxslim.parity import OutputParity, compare_outputs
from onnxslim.pipeline import Pipeline, run_pipeline
from onnxslim.registry import DEFAULT_OPTIMIZE, make_pass
from onnxslim.runtime import Session, SessionConfig

# Ops whose float16 versions lose too much (reductions, exponentials, normalizations,
# ops whose inputs are often out of fp16 range): they stay float32 by default.
FP16_SENSITIVE_OPS = (
    "Softmax",
    "LogSoftmax",
    "LayerNormalization",
    "BatchNormalization",
    "InstanceNormalization",
    "GroupNormalization",
    "ReduceMean",
    "ReduceSum",
    "ReduceSumSquare",
    "ReduceLogSumExp",
    "ReduceL2",
    "Exp",
    "Log",
    "Pow",
    "Sqrt",
    "Reciprocal",
    "Div",
    "Erf",
    "Range",
    "CumSum",
    "Resize",
    "TopK",
    "NonMaxSuppression",
    "RoiAlign",
    "Einsum",
)
TRAINING_DOMAINS = ("ai.onnx.preview.training", "ai.onnx.training")
STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")


@dataclass(frozen=True, kw_only=True)
class ExportOptions:
    """What `onnxslim export` does to the model; defaults keep it float32 and dynamic."""

    input_shapes: tuple[str, ...] = ()
    opset: int | None = None
    fp16: bool = False
    fp16_block_ops: tuple[str, ...] = FP16_SENSITIVE_OPS
    keep_io_float32: bool = True
    strip: bool = True
    optimize: bool = True
    ort_format: bool = False
    optimization_style: str = "fixed"  # or "runtime"
    atol: float | None = None  # default: 1e-5 float32, 1e-2 with fp16
    rtol: float | None = None

    def tolerances(self) -> tuple[float, float]:
        loose = 1e-2 if self.fp16 else 1e-5
        return (
            self.atol if self.atol is not None else loose,
            self.rtol if self.rtol is not None else loose,
        )


@dataclass
class Preflight:
    """What a mobile build would reject or run slowly."""

    problems: list[str] = field(default_factory=list)  # would fail on ORT Mobile
    warnings: list[str] = field(default_factory=list)  # would run, maybe slowly
    usability_log: list[str] = field(default_factory=list)  # onnxruntime's checker, verbatim

    def to_dict(self) -> dict[str, Any]:
        return {
            "problems": self.problems,
            "warnings": self.warnings,
            "usability_checker": self.usability_log,
        }


@dataclass
class ExportResult:
    model_path: Path
    ort_path: Path | None
    operator_config: Path | None
    parity: list[OutputParity]
    preflight: Preflight
    steps: list[str]
    metadata_path: Path | None = None

    @property
    def passed(self) -> bool:
        return all(p.passed for p in self.parity)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": str(self.model_path),
            "ort": str(self.ort_path) if self.ort_path else None,
            "operator_config": str(self.operator_config) if self.operator_config else None,
            "metadata": str(self.metadata_path) if self.metadata_path else None,
            "steps": self.steps,
            "passed": self.passed,
            "parity": [p.to_dict() for p in self.parity],
            "preflight": self.preflight.to_dict(),
        }


def export(
    source: Path,
    output: Path,
    options: ExportOptions,
    *,
    feeds: Sequence[Feed] | None = None,
    bundle: Path | None = None,
    overwrite: bool = False,
    force: bool = False,
    external_data: bool | None = None,
    external_threshold: int = io.EXTERNAL_THRESHOLD_BYTES,
) -> ExportResult:
    """Export `source` to `output` (.onnx or .ort); with `bundle`, a deploy folder instead.

    `force` writes a model that fails the parity check; `external_data` (None: when
    needed) stores weights of `external_threshold` bytes or more in `NAME.onnx.data`.
    """
    if output.suffix not in (".onnx", ".ort"):
        raise UsageError(f"{output}: the output must end in .onnx or .ort")
    if output.suffix == ".ort":
        options = ExportOptions(**{**options.__dict__, "ort_format": True})
    original = io.load(source)
    model, steps = _transform(io.load(source), options)
    if feeds is None:
        shapes = parse_input_shapes(list(options.input_shapes))
        plan = plan_feeds(original, 4, seed=0, shapes=shapes)  # sizes the input model runs on
        if plan.feeds is None:
            raise DataError(plan.problem or "no generated inputs")
        feeds = plan.feeds
    atol, rtol = options.tolerances()
    parity = _parity(original, model, feeds, atol, rtol)
    if not all(p.passed for p in parity) and not force:
        failed = ", ".join(p.name for p in parity if not p.passed)
        raise GateFailed(
            f"exported model differs from the input beyond atol={atol:g}, rtol={rtol:g} "
            f"on output(s) {failed}; nothing written (--write-anyway writes it)"
        )
    target_dir = io.make_folder(bundle if bundle is not None else output.parent)
    onnx_name = output.with_suffix(".onnx").name
    with tempfile.TemporaryDirectory(prefix=".onnxslim-export-", dir=target_dir) as tmp:
        staging = Path(tmp)
        staged_onnx = io.save(
            model,
            staging / onnx_name,
            external_data=external_data,
            size_threshold=external_threshold,
        )
        preflight = preflight_check(model, staged_onnx)
        ort_path = config_path = None
        if options.ort_format:
            ort_path, config_path = _convert_to_ort(
                staged_onnx, staging, options.optimization_style
            )
            _check_ort_loads(ort_path, feeds[:1], parity_model=model)
        final = _publish(
            staging,
            target_dir,
            source=source,
            overwrite=overwrite,
            keep_onnx=bundle is not None or output.suffix == ".onnx",
        )
    result = ExportResult(
        model_path=target_dir / onnx_name,
        ort_path=target_dir / ort_path.name if ort_path else None,
        operator_config=target_dir / config_path.name if config_path else None,
        parity=parity,
        preflight=preflight,
        steps=steps,
    )
    if bundle is not None:
        result.metadata_path = write_bundle_metadata(bundle, source, result, options)
    del final
    return result


def _transform(model: ir.Model, options: ExportOptions) -> tuple[ir.Model, list[str]]:
    """Apply the export steps in order; returns the new model and what was done."""
    steps: list[str] = []
    if options.input_shapes:
        make_pass("fix-input-shapes", {"shapes": tuple(options.input_shapes)})(model)
        steps.append(f"fixed input shapes {', '.join(options.input_shapes)}")
    if options.strip:
        stripped = strip_for_inference(model)
        steps.append(f"stripped doc strings and {stripped} training-only node(s)")
    if options.optimize:
        result = run_pipeline(model, Pipeline.from_names(DEFAULT_OPTIMIZE), rollback_failures=True)
        model = result.model
        steps.append(
            "lossless clean-up ("
            + ", ".join(r.name for r in result.records if r.status == "changed")
            + ")"
        )
    if options.opset is not None:
        convert_opset(model, options.opset)
        steps.append(f"opset converted to {options.opset}")
    if options.fp16:
        model = to_fp16(model, options)
        steps.append(
            "float16 weights and compute (block list: "
            f"{len(options.fp16_block_ops)} op types, I/O float32={options.keep_io_float32})"
        )
    return model, steps


def strip_for_inference(model: ir.Model) -> int:
    """Drop doc strings everywhere and nodes of training-only domains; returns nodes removed."""
    model.doc_string = None
    removed = 0
    for graph in iter_graphs(model):
        graph.doc_string = None
        for node in list(graph):
            node.doc_string = None
            if node.domain in TRAINING_DOMAINS:
                if any(v.uses() or v.is_graph_output() for v in node.outputs):
                    raise UsageError(
                        f"training-only node {node.name or node.op_type!r} "
                        "feeds the model's outputs; cannot strip it"
                    )
                graph.remove(node, safe=True)
                removed += 1
    for domain in TRAINING_DOMAINS:
        model.opset_imports.pop(domain, None)
    return removed


def convert_opset(model: ir.Model, opset: int) -> None:
    """Convert the default-domain opset with onnxscript's IR version converter."""
    from onnxscript import version_converter  # heavy (~1 s to import): only --opset needs it

    current = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
    if current == opset:
        return
    try:
        version_converter.convert_version(model, target_version=opset)
    except Exception as exc:
        raise PassFailed(f"opset conversion {current} -> {opset} failed: {exc}") from exc
    if model.opset_imports.get("", None) != opset:
        raise PassFailed(f"opset conversion {current} -> {opset} could not convert every node")


def to_fp16(model: ir.Model, options: ExportOptions) -> ir.Model:
    """float16 weights and compute, with sensitive ops and (by default) I/O kept float32."""
    # Deferred: ORT's transformers tools load only for --fp16.
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    proto = ir.serde.serialize_model(model)
    converted = convert_float_to_float16(
        proto,
        keep_io_types=options.keep_io_float32,
        op_block_list=sorted(set(DEFAULT_OP_BLOCK_LIST) | set(options.fp16_block_ops)),
        disable_shape_infer=False,
    )
    return ir.serde.deserialize_model(converted)


def preflight_check(model: ir.Model, path: Path) -> Preflight:
    """Our checks plus onnxruntime's mobile usability checker, captured as text."""
    report = Preflight()
    custom = sorted(
        {
            n.domain
            for n in iter_nodes(model)
            if n.domain not in STANDARD_DOMAINS
            and (n.domain, n.op_type, n.overload) not in model.functions
        }
    )
    if custom:
        report.problems.append(
            f"custom op domain(s) {', '.join(custom)}: a mobile build needs "
            "their kernels compiled in"
        )
    contrib = sorted({n.op_type for n in iter_nodes(model) if n.domain == "com.microsoft"})
    if contrib:
        report.warnings.append(
            f"com.microsoft contrib ops ({', '.join(contrib)}): check they are in "
            "the reduced build's operator config"
        )
    dynamic = [
        f"{s.name} {s.describe()}"
        for s in input_specs(model)
        if s.shape is None or any(not isinstance(d, int) for d in s.shape)
    ]
    if dynamic:
        report.warnings.append(
            "dynamic input shapes left (NNAPI/CoreML need fixed shapes; "
            "use --input-shape): " + "; ".join(dynamic)
        )
    if any(g is not model.graph for g in iter_graphs(model)):
        report.warnings.append("control flow (If/Loop/Scan subgraphs): mobile EPs run them on CPU")
    report.usability_log = _usability_checker(path)
    return report


def _usability_checker(path: Path) -> list[str]:
    from onnxruntime.tools.mobile_helpers import usability_checker  # deferred: export only

    records: list[str] = []

    class _Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("onnxslim.usability_checker")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = _Capture()
    logger.addHandler(handler)
    try:
        with contextlib.redirect_stdout(_stdio.StringIO()):
            usability_checker.analyze_model(path, skip_optimize=False, logger=logger)
    except Exception as exc:  # the checker is advisory: report, do not fail the export
        records.append(f"usability checker could not analyze the model: {exc}")
    finally:
        logger.removeHandler(handler)
    return [r for r in records if r.strip()]


def _convert_to_ort(onnx_path: Path, staging: Path, style: str) -> tuple[Path, Path]:
    # Deferred: ORT's converter tools take ~0.1 s to import and only .ort output needs them.
    from onnxruntime.tools.convert_onnx_models_to_ort import (
        OptimizationStyle,
        convert_onnx_models_to_ort,
    )

    styles = {"fixed": OptimizationStyle.Fixed, "runtime": OptimizationStyle.Runtime}
    if style not in styles:
        raise UsageError(f"optimization style {style!r}: expected fixed or runtime")
    out_dir = staging / "ort"
    quiet = [
        logging.getLogger(name)
        for name in list(logging.root.manager.loggerDict)
        if name.startswith("ort_format_model")
    ] + [logging.getLogger("ort_format_model.utils")]
    previous_levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(_stdio.StringIO()):
            convert_onnx_models_to_ort(
                onnx_path, output_dir=out_dir, optimization_styles=[styles[style]]
            )
    except Exception as exc:
        raise PassFailed(
            f"ORT format conversion failed: {str(exc).splitlines()[0] if str(exc) else exc}"
        ) from exc
    finally:
        for logger, level in zip(quiet, previous_levels, strict=True):
            logger.setLevel(level)
    ort_files = sorted(out_dir.glob("*.ort"))
    configs = sorted(out_dir.glob("*.config"))
    if not ort_files or not configs:
        raise PassFailed("ORT format conversion produced no .ort file or operator config")
    ort_path = staging / onnx_path.with_suffix(".ort").name
    config_path = staging / (onnx_path.stem + ".required_operators.config")
    shutil.move(str(ort_files[0]), ort_path)
    shutil.move(str(configs[0]), config_path)
    shutil.rmtree(out_dir, ignore_errors=True)
    return ort_path, config_path


def _check_ort_loads(ort_path: Path, feeds: Sequence[Feed], parity_model: ir.Model) -> None:
    """The .ort file must load in ORT and compute what the exported ONNX model computes."""
    expected = [Session(parity_model, SessionConfig()).run(f) for f in feeds]
    try:
        written = Session(ort_path, SessionConfig())
    except (ModelLoadError, RuntimeFailure) as exc:
        # ORT loads the ONNX model but not the .ort file it wrote from it: the format's own
        # limit (its flatbuffer verifier refuses subgraphs nested ~20 If deep), not a bug here.
        raise UsageError(
            f"this model does not fit the ORT format: ONNX Runtime cannot load the .ort file "
            f"it converts it to ({exc}); export to .onnx instead"
        ) from exc
    got = [written.run(f) for f in feeds]
    bad = [p.name for p in compare_outputs(expected, got, atol=1e-4, rtol=1e-4) if not p.passed]
    if bad:
        raise PassFailed(
            f"{ort_path.name}: ORT-format model differs from the ONNX model on {', '.join(bad)}"
        )


def _parity(
    original: ir.Model, exported: ir.Model, feeds: Sequence[Feed], atol: float, rtol: float
) -> list[OutputParity]:
    ref = Session(original, SessionConfig())
    cand = Session(exported, SessionConfig())
    dtypes = {spec.name: spec.dtype for spec in input_specs(exported)}  # fp16 I/O takes fp16 feeds
    cand_feeds = [{k: v.astype(dtypes.get(k, v.dtype)) for k, v in f.items()} for f in feeds]
    return compare_outputs(
        [ref.run(f) for f in feeds], [cand.run(f) for f in cand_feeds], atol=atol, rtol=rtol
    )


def _publish(
    staging: Path, target_dir: Path, *, source: Path, overwrite: bool, keep_onnx: bool
) -> list[Path]:
    """Move staged files into place (data files first, the model files last)."""
    staged = [p for p in staging.iterdir() if p.is_file()]
    if not keep_onnx:
        staged = [p for p in staged if p.suffix != ".onnx" and not p.name.endswith(".onnx.data")]
    for path in staged:
        destination = target_dir / path.name
        if io.same_file(source, destination) and not overwrite:
            raise UsageError(
                f"{destination}: output is the input model; pass --overwrite to replace it"
            )
    ordered = sorted(staged, key=lambda p: p.suffix in (".onnx", ".ort"))
    moved = []
    for path in ordered:
        destination = target_dir / path.name
        path.replace(destination)
        moved.append(destination)
    return moved


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_bundle_metadata(
    bundle: Path, source: Path, result: ExportResult, options: ExportOptions
) -> Path:
    """metadata.json and validation.json: hashes, provenance, the checks that were run."""
    validation = bundle / "validation.json"
    validation.write_text(
        json.dumps(
            {
                "parity": [p.to_dict() for p in result.parity],
                "passed": result.passed,
                "preflight": result.preflight.to_dict(),
            },
            indent=2,
        )
    )
    files = sorted(p for p in bundle.iterdir() if p.is_file() and p.name != "metadata.json")
    metadata = {
        "tool": {
            "name": "onnxslim",
            "version": __version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input": {"path": str(source), "sha256": sha256(source)},
        "pipeline": Pipeline.from_names(DEFAULT_OPTIMIZE).to_toml() if options.optimize else "",
        "export_steps": result.steps,
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.__dict__.items()},
        "files": {p.name: {"sha256": sha256(p), "bytes": p.stat().st_size} for p in files},
    }
    path = bundle / "metadata.json"
    path.write_text(json.dumps(metadata, indent=2))
    return path
