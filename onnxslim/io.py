"""Load and save models: external-data policy, atomic writes, the input never touched.

Loading goes through onnx_ir, which memory-maps external weights instead of reading
them, so a 5 GB model costs address space, not RAM. Saving writes into a temporary
folder beside the target and renames into place, so a crash never leaves a
half-written model, and a model over protobuf's 2 GB cap goes to external data.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from onnxslim.errors import ModelLoadError, UsageError
from onnxslim.graphs import iter_tensors, tensor_bytes

# Protobuf refuses messages over 2 GiB; leave headroom for the graph itself.
PROTOBUF_SAFE_BYTES = 1_800_000_000
# Tensors smaller than this stay inside the .onnx file even when saving external data.
EXTERNAL_THRESHOLD_BYTES = 1024

PathLike = str | os.PathLike[str]


def load(path: PathLike) -> ir.Model:
    """Read a model, refusing anything that is not a well-formed ONNX file.

    External data must live inside the model's folder: absolute locations, `..`
    and symbolic links leading out are refused, because a model file from the
    internet must not make us read (and later copy into an artifact) arbitrary files.
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if not path.is_file():
        raise ModelLoadError(f"{path}: not a file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"{path}: not an ONNX model ({_first_line(exc)})") from exc
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if not proto.HasField("graph") or proto.ir_version <= 0 or not proto.opset_import:
        raise ModelLoadError(f"{path}: not an ONNX model (no graph, IR version or opset import)")
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as exc:  # deserialize raises many types on malformed protos
        raise ModelLoadError(f"{path}: malformed ONNX model ({_first_line(exc)})") from exc
    del proto
    ir.external_data.set_base_dir(model.graph, path.parent)
    check_external_data(model, path.parent)
    check_domains(model, path)
    return model


def check_external_data(model: ir.Model, base_dir: Path) -> None:
    """Refuse external data outside `base_dir`, missing, or shorter than declared."""
    root = base_dir.resolve()
    for name, tensor in iter_tensors(model):
        if not isinstance(tensor, ir.ExternalTensor):
            continue
        location = tensor.location
        if os.path.isabs(location):
            raise ModelLoadError(
                f"tensor {name!r}: external data location {location!r} is absolute; "
                "only files inside the model's folder are accepted"
            )
        target = (root / location).resolve()
        if target != root and root not in target.parents:
            raise ModelLoadError(
                f"tensor {name!r}: external data {location!r} points outside the model's "
                f"folder {root}"
            )
        if not target.is_file():
            raise ModelLoadError(f"tensor {name!r}: external data file {location!r} not found")
        end = (tensor.offset or 0) + (tensor.length or 0)
        if end > target.stat().st_size:
            raise ModelLoadError(
                f"tensor {name!r}: external data {location!r} is truncated "
                f"(needs {end} bytes, file has {target.stat().st_size})"
            )


def check_domains(model: ir.Model, path: Path) -> None:
    """Every node's domain must be imported by the model or be a local function."""
    from onnxslim.graphs import iter_nodes

    known = set(model.opset_imports) | {"ai.onnx"}
    functions = {(f.domain, f.name, f.overload) for f in model.functions.values()}
    for node in iter_nodes(model):
        if (node.domain, node.op_type, node.overload) in functions:
            continue
        if node.domain not in known:
            raise ModelLoadError(
                f"{path}: node {node.name or node.op_type!r} uses op domain "
                f"{node.domain!r}, which the model does not import"
            )


def save(
    model: ir.Model,
    path: PathLike,
    *,
    source: PathLike | None = None,
    overwrite: bool = False,
    external_data: bool | None = None,
) -> Path:
    """Write `model` atomically to `path` and return it.

    `source` is the file the model was loaded from: writing onto it is refused
    unless `overwrite` is set. `external_data=None` chooses external data when the
    model already had some or would not fit in one protobuf message.
    """
    path = Path(path)
    if source is not None and same_file(source, path) and not overwrite:
        raise UsageError(f"{path}: output is the input model; pass --overwrite to replace it")
    if path.exists() and path.is_dir():
        raise UsageError(f"{path}: is a folder, expected a file name")
    if not path.parent.exists():
        raise UsageError(f"{path.parent}: output folder does not exist")
    if external_data is None:
        external_data = _has_external_data(model) or tensor_bytes(model) > PROTOBUF_SAFE_BYTES
    data_name = f"{path.name}.data"
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        staged = staging / path.name
        if external_data:
            ir.save(
                model,
                staged,
                external_data=data_name,
                size_threshold_bytes=EXTERNAL_THRESHOLD_BYTES,
            )
            if (staging / data_name).exists():
                os.replace(staging / data_name, path.parent / data_name)
        else:
            ir.save(model, staged)
        os.replace(staged, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def model_to_bytes(model: ir.Model) -> bytes:
    """Serialize a model that fits in one protobuf message (tests, small models)."""
    return ir.serde.serialize_model(model).SerializeToString()


def _has_external_data(model: ir.Model) -> bool:
    return any(isinstance(t, ir.ExternalTensor) for _, t in iter_tensors(model))


def same_file(a: PathLike, b: PathLike) -> bool:
    """True when `a` and `b` name the same file (links resolved)."""
    a, b = Path(a), Path(b)
    try:
        return a.resolve() == b.resolve() or (b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
