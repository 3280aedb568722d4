"""Load and save models: external-data policy, atomic writes, the input never touched.

Loading goes through onnx_ir, which memory-maps external weights instead of reading
them, so a 5 GB model costs address space, not RAM. Saving writes into a temporary
folder beside the target and renames into place, so a crash never leaves a
half-written model; weights already on disk are copied file-to-file by the kernel
(onnx_ir uses copy_file_range), so saving never holds them in memory either, and a
model over protobuf's 2 GB cap goes to external data.

What atomic means here: a failure while writing leaves the previous output as it
was, and no temporary files. With external data two files are renamed, data first,
then the model; if the second rename fails the previous data file is put back, but a
process killed between the two renames (a window of microseconds) leaves the new data
beside the previous model. Files are not fsynced, as with onnx.save, so a power cut
right after a save may lose it.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from onnxslim.errors import ModelLoadError, PassFailed, UsageError
from onnxslim.graphs import iter_graphs, iter_nodes, iter_tensors, tensor_bytes
from onnxslim.model_checks import check_proto, check_written, run_checker

# Protobuf refuses messages over 2 GiB; leave headroom for the graph itself.
PROTOBUF_SAFE_BYTES = 1_800_000_000
# A file this large cannot be one protobuf message: its weights must be external.
PROTOBUF_LIMIT_BYTES = 2**31
# Tensors smaller than this stay inside the .onnx file even when saving external data.
EXTERNAL_THRESHOLD_BYTES = 1024
# Where load() records the file a model came from (not serialized; clones drop it).
SOURCE_META_KEY = "onnxslim.source"

PathLike = str | os.PathLike[str]
# A Windows drive (`C:\\...`, `C:/...`): absolute on Windows even when read on Linux.
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


def load(path: PathLike) -> ir.Model:
    """Read a model, refusing anything that is not a well-formed ONNX file.

    External data must live inside the model's folder: absolute locations, `..`
    and symbolic links leading out are refused, because a model file from the
    internet must not make us read (and later copy into an artifact) arbitrary files.
    Weights stay on disk, memory-mapped on first use.
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a folder, expected an .onnx file")
    if not path.is_file():
        raise ModelLoadError(f"{path}: not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise ModelLoadError(f"{path}: empty file, not an ONNX model")
    if size >= PROTOBUF_LIMIT_BYTES:
        raise ModelLoadError(
            f"{path}: {size / 1e9:.1f} GB in one file; protobuf cannot parse files over 2 GB, "
            "so weights this large must be stored as external data"
        )
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, TypeError) as exc:
        raise ModelLoadError(f"{path}: not an ONNX model ({_first_line(exc)})") from exc
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if not proto.HasField("graph") or proto.ir_version <= 0 or not proto.opset_import:
        raise ModelLoadError(f"{path}: not an ONNX model (no graph, IR version or opset import)")
    check_proto(proto, path)
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as exc:  # deserialize raises many types on malformed protos
        raise ModelLoadError(f"{path}: malformed ONNX model ({_first_line(exc)})") from exc
    base_dir = path.parent.absolute()
    for _, tensor in iter_tensors(model):
        # onnx_ir's set_base_dir skips local functions; every tensor needs it, or
        # its data would be looked up relative to the current directory.
        if isinstance(tensor, ir.ExternalTensor):
            tensor.base_dir = base_dir
    check_external_data(model, base_dir, path)
    check_domains(model, path)
    run_checker(path, size, proto)
    del proto
    model.meta[SOURCE_META_KEY] = str(path.absolute())
    return model


def check_external_data(model: ir.Model, base_dir: Path, model_file: Path | None = None) -> None:
    """Refuse external data outside `base_dir`, missing, hard-linked, shorter than declared
    or the model file itself (ORT refuses that one when it creates a session: exit 3).

    onnx_ir makes the same containment checks, but only when a tensor is first
    read, deep inside a pass; checking here turns them into one clear load error.
    """
    root = Path(os.path.realpath(base_dir))
    itself = Path(os.path.realpath(model_file)) if model_file is not None else None
    for name, tensor in iter_tensors(model):
        if not isinstance(tensor, ir.ExternalTensor):
            continue
        location = os.fspath(tensor.location)
        where = f"tensor {name!r}: external data {location!r}"
        if os.path.isabs(location) or location.startswith(("/", "\\")) or _DRIVE.match(location):
            raise ModelLoadError(
                f"{where} is an absolute path; only files inside the model's folder are accepted"
            )
        lexical = os.path.normpath(location)
        if lexical == ".." or lexical.startswith(".." + os.sep):
            raise ModelLoadError(f"{where} points outside the model's folder {root} (`..`)")
        try:
            target = Path(os.path.realpath(root / location))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{where}: unusable location ({exc})") from exc
        if root not in target.parents:
            raise ModelLoadError(
                f"{where} is a link leading outside the model's folder {root} (to {target})"
            )
        try:
            info = target.stat()
        except (OSError, ValueError):
            raise ModelLoadError(f"{where}: file not found beside the model") from None
        if not target.is_file():
            raise ModelLoadError(f"{where}: not a regular file")
        if target == itself:
            raise ModelLoadError(f"{where} is the model file itself, not a data file")
        if info.st_nlink > 1:
            raise ModelLoadError(
                f"{where}: file has {info.st_nlink} hard links; a hard link can lead outside "
                "the model's folder, so it is refused (copy the file instead)"
            )
        offset = tensor.offset or 0
        if tensor.length is not None and tensor.length != tensor.nbytes:
            raise ModelLoadError(
                f"{where}: declares {tensor.length} bytes but {tensor.dtype} "
                f"{list(tensor.shape)} needs {tensor.nbytes}"
            )
        end = offset + tensor.nbytes
        if end > info.st_size:
            raise ModelLoadError(
                f"{where} is truncated (needs bytes up to {end}, file has {info.st_size})"
            )


def check_domains(model: ir.Model, path: Path) -> None:
    """Every node's domain must be imported by the model or be a local function."""
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


def check_output_folder(folder: PathLike) -> Path:
    """Refuse, before any work, an output folder that cannot exist; missing ones are fine.

    Output and report folders are created with their parents when written (as every
    peer tool does); only a path through an existing file, or one under a folder this
    process cannot write, is an error.
    """
    folder = Path(folder)
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        if existing == folder.absolute():
            raise UsageError(f"{folder}: is a file, expected a folder")
        raise UsageError(f"{folder}: cannot create the folder ({existing} is a file)")
    if existing != folder.absolute() and not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{folder}: cannot create the folder ({existing} is not writable)")
    return folder


def make_folder(folder: PathLike) -> Path:
    """Create output folder `folder` with its parents (checked as check_output_folder says)."""
    folder = check_output_folder(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{folder}: cannot create the folder ({exc.strerror or exc})") from exc
    return folder


def save(
    model: ir.Model,
    path: PathLike,
    *,
    source: PathLike | None = None,
    overwrite: bool = False,
    external_data: bool | None = None,
    size_threshold: int = EXTERNAL_THRESHOLD_BYTES,
) -> Path:
    """Write `model` atomically to `path` (plus `<name>.data` for external data) and return it.

    Writing onto a file the model was read from (`source`, the file `load` read, or
    any external data file its tensors live in) is refused unless `overwrite` is
    set. `external_data=None` chooses external data when the model already had some
    or would not fit in one protobuf message; with external data, tensors under
    `size_threshold` bytes stay inside the .onnx file.

    When overwriting replaces the data file the model's own tensors are mapped
    from, those tensors are re-pointed at the new file, so the in-memory model
    stays valid after the save.
    """
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path}: is a folder, expected a file name")
    make_folder(path.parent)
    if external_data is None:
        external_data = _has_external_data(model) or tensor_bytes(model) > PROTOBUF_SAFE_BYTES
    elif not external_data and tensor_bytes(model) > PROTOBUF_SAFE_BYTES:
        raise UsageError(
            f"{path}: {tensor_bytes(model) / 1e9:.1f} GB of weights do not fit in one protobuf "
            "message (2 GB cap); save with external data"
        )
    data_name = f"{path.name}.data"
    data_path = path.parent / data_name
    targets = [path, data_path] if external_data else [path]
    if not overwrite:
        _refuse_overwriting_inputs(model, targets, source)

    _sort_nodes(model, path)
    _ir_version_for_initializers(model)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        staged = staging / path.name
        if external_data:
            rebind = _write_external(model, staged, data_name, data_path, size_threshold)
        else:
            with _in_memory_tensors(model), _initializer_annotations_hidden(model):
                ir.save(model, staged)
            rebind = None
        check_written(staged, path)
        _commit(staging, staged, path, data_name if external_data else None)
    except OSError as exc:
        raise UsageError(f"{path}: cannot write ({exc.strerror or exc})") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if rebind is not None:
        rebind(path.parent.absolute())
    return path


def _ir_version_for_initializers(model: ir.Model) -> None:
    """Below IR 4 every initializer must be a graph input; a pass that adds a weight (or
    drops one from the inputs) leaves the file invalid, so such a model is written as
    IR 4, where that rule ends (fuzz case valid/opset-7, IR 3, through cluster)."""
    graph = model.graph
    if model.ir_version < 4 and any(v not in graph.inputs for v in graph.initializers.values()):
        model.ir_version = 4


def _write_external(
    model: ir.Model, staged: Path, data_name: str, data_path: Path, threshold: int
) -> Callable[[Path], None]:
    """Save with external data into the staging folder; return how to re-point tensors.

    Tensors mapped from `data_path` (only when overwriting) keep reading the old
    file's inode until the rename; afterwards they must read the new file at its new
    offsets, which the save callback records.
    """
    replaced: list[tuple[ir.Value, ir.ExternalTensor]] = []
    for graph in iter_graphs(model):
        if not isinstance(graph, ir.Graph):
            continue
        for value in graph.initializers.values():
            tensor = value.const_value
            if isinstance(tensor, ir.ExternalTensor) and same_file(tensor.path, data_path):
                if tensor.nbytes <= threshold:
                    # Stays inline in the proto: keep a private copy of its bytes.
                    value.const_value = ir.Tensor(np.array(tensor.numpy()), name=tensor.name)
                else:
                    replaced.append((value, tensor))
    offsets: dict[int, int] = {}

    def record(tensor: ir.TensorProtocol, info: ir.external_data.CallbackInfo) -> None:
        offsets[id(tensor)] = info.offset

    with _in_memory_attribute_tensors(model), _initializer_annotations_hidden(model):
        ir.save(
            model,
            staged,
            external_data=data_name,
            size_threshold_bytes=threshold,
            callback=record if replaced else None,
        )

    def rebind(folder: Path) -> None:
        for value, old in replaced:
            value.const_value = ir.ExternalTensor(
                data_name,
                offsets[id(old)],
                old.nbytes,
                old.dtype,
                shape=old.shape,
                name=old.name,
                base_dir=folder,
            )
            try:
                old.release()  # unmap the replaced file's old inode
            except BufferError:
                pass  # arrays viewing it are still alive elsewhere; it unmaps when they go

    return rebind


def _commit(staging: Path, staged: Path, path: Path, data_name: str | None) -> None:
    """Rename the staged files into place: data first, then the model.

    If the model's rename fails after the data's, the previous data file (kept
    through a hard link made before) is put back, so the previous output stays a
    consistent pair.
    """
    _copy_mode(path, staged)
    if data_name is None:
        os.replace(staged, path)
        return
    new_data = staging / data_name
    data_path = path.parent / data_name
    backup = None
    if new_data.exists():
        _copy_mode(data_path, new_data)
        if data_path.is_file() and not data_path.is_symlink():
            backup = staging / f"{data_name}.previous"
            try:
                os.link(data_path, backup)
            except OSError:
                backup = None
        os.replace(new_data, data_path)
    try:
        os.replace(staged, path)
    except BaseException:
        if backup is not None:
            os.replace(backup, data_path)
        raise


def _refuse_overwriting_inputs(
    model: ir.Model, targets: list[Path], source: PathLike | None
) -> None:
    inputs: list[tuple[str, str]] = []
    if source is not None:
        inputs.append((str(source), "the input model"))
    recorded = model.meta.get(SOURCE_META_KEY)
    if recorded:
        inputs.append((recorded, "the input model"))
    seen = set()
    for name, tensor in iter_tensors(model):
        if isinstance(tensor, ir.ExternalTensor) and tensor.path not in seen:
            seen.add(tensor.path)
            inputs.append((tensor.path, f"external data of the input model (tensor {name!r})"))
    for target in targets:
        for used, what in inputs:
            if same_file(used, target):
                raise UsageError(
                    f"{target}: output would replace {what}; pass --overwrite to replace it"
                )


class _swap:
    """Temporarily replace tensors (values or attributes) and put them back on exit."""

    def __init__(self) -> None:
        self._undo: list = []

    def value(self, value: ir.Value, tensor: ir.TensorProtocol) -> None:
        self._undo.append((value, "const_value", value.const_value))
        value.const_value = tensor

    def attribute(self, node: ir.Node, name: str, attr: ir.Attr) -> None:
        self._undo.append((node.attributes, name, node.attributes[name]))
        node.attributes[name] = attr

    def __enter__(self) -> _swap:
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, key, old in reversed(self._undo):
            if key == "const_value":
                owner.const_value = old
            else:
                owner[key] = old


def _in_memory_attribute_tensors(model: ir.Model) -> _swap:
    """onnx_ir only externalizes initializers: attribute tensors mapped from a file
    would be written as references to a file the output folder may not have."""
    swap = _swap()
    for graph in iter_graphs(model):
        for node in graph:
            for name, attr in list(node.attributes.items()):
                if attr.is_ref():
                    continue
                if attr.type == ir.AttributeType.TENSOR and isinstance(
                    attr.value, ir.ExternalTensor
                ):
                    swap.attribute(node, name, ir.AttrTensor(name, _to_memory(attr.value)))
                elif attr.type == ir.AttributeType.TENSORS and any(
                    isinstance(t, ir.ExternalTensor) for t in attr.value
                ):
                    swap.attribute(
                        node, name, ir.AttrTensors(name, [_to_memory(t) for t in attr.value])
                    )
    return swap


class _in_memory_tensors(_swap):
    """Every external tensor read (mapped) for an inline save, put back afterwards."""

    def __init__(self, model: ir.Model) -> None:
        super().__init__()
        self._attributes = _in_memory_attribute_tensors(model)
        for graph in iter_graphs(model):
            if isinstance(graph, ir.Graph):
                for value in graph.initializers.values():
                    if isinstance(value.const_value, ir.ExternalTensor):
                        self.value(value, _to_memory(value.const_value))

    def __exit__(self, *exc: object) -> None:
        self._attributes.__exit__(*exc)
        super().__exit__(*exc)


class _initializer_annotations_hidden:
    """onnx_ir writes a value_info entry for every initializer, repeating the type and
    dims its TensorProto already holds (about 30 bytes each; ORT and onnx read them from
    the tensor). Hidden while saving, put back afterwards; initializers that are also
    graph inputs or outputs keep theirs, which the declaration needs (an output written
    without its type fails onnx.checker)."""

    def __init__(self, model: ir.Model) -> None:
        self._hidden: list[tuple[ir.Value, ir.TypeProtocol | None, ir.Shape | None]] = []
        self._typed: list[tuple[ir.Value, ir.TypeProtocol, ir.Shape]] = []  # declared, untyped
        for graph in iter_graphs(model):
            if not isinstance(graph, ir.Graph):
                continue
            declared = {id(v) for v in (*graph.inputs, *graph.outputs)}
            for value in graph.initializers.values():
                tensor = value.const_value
                if tensor is None:
                    continue
                if id(value) not in declared or value.type is None:
                    self._hidden.append((value, value.type, value.shape))
                if id(value) in declared and value.type is None:  # its type, from its data
                    self._typed.append(
                        (value, ir.TensorType(tensor.dtype), ir.Shape(tensor.shape.numpy()))
                    )

    def __enter__(self) -> _initializer_annotations_hidden:
        for value, _, _ in self._hidden:
            value.type = None
            value.shape = None
        for value, type_, shape in self._typed:
            value.type = type_
            value.shape = shape
        return self

    def __exit__(self, *exc: object) -> None:
        for value, type_, shape in self._hidden:
            value.type = type_
            value.shape = shape


def _to_memory(tensor: ir.TensorProtocol) -> ir.TensorProtocol:
    return ir.Tensor(tensor.numpy(), dtype=tensor.dtype, name=tensor.name)


def _copy_mode(existing: Path, new: Path) -> None:
    """Keep the permissions of the file being replaced."""
    try:
        if existing.is_file():
            shutil.copymode(existing, new)
    except OSError:
        pass


def _sort_nodes(model: ir.Model, path: Path) -> None:
    """Nodes in topological order, as ONNX requires (ORT runs unsorted graphs, so a pass
    that appends nodes out of order, such as export's fp16 casts, goes unnoticed until
    onnx.checker reads the file). Stable: a sorted graph keeps its order."""
    try:
        if not _in_order(model.graph):
            model.graph.sort()
        for function in model.functions.values():
            function.sort()
    except ValueError as exc:  # a cycle: our defect, nothing is written
        raise PassFailed(f"{path}: the model to be written has a cycle ({exc})") from exc


def _in_order(graph: ir.Graph) -> bool:
    """True when every node of `graph` comes after the producers of its inputs, told in one
    sweep: `Graph.sort` rebuilds the node list even when nothing moves (about 5 of the 19 CPU
    s that saving a 300,000-node chain took). A node holding a subgraph is left to `sort`
    (its captured outer values count there)."""
    seen: set[int] = set()
    for node in graph:
        for attr in node.attributes.values():
            if isinstance(attr, ir.Attr) and attr.type in (
                ir.AttributeType.GRAPH,
                ir.AttributeType.GRAPHS,
            ):
                return False
        for value in node.inputs:
            producer = value.producer() if value is not None else None
            if producer is not None and id(producer) not in seen:
                return False
        seen.add(id(node))
    return True


def as_saved(model: ir.Model) -> _initializer_annotations_hidden:
    """While active, `model` serializes as `save` writes it (what a session should run)."""
    return _initializer_annotations_hidden(model)


def model_to_bytes(model: ir.Model) -> bytes:
    """Serialize a model that fits in one protobuf message (tests, small models), as `save` does."""
    with _initializer_annotations_hidden(model):
        return ir.serde.serialize_model(model).SerializeToString()


def external_tensors(model: ir.Model) -> Iterator[tuple[str, ir.ExternalTensor]]:
    """(name, tensor) for each tensor whose data lives in a file."""
    for name, tensor in iter_tensors(model):
        if isinstance(tensor, ir.ExternalTensor):
            yield name, tensor


def _has_external_data(model: ir.Model) -> bool:
    return any(True for _ in external_tensors(model))


def same_file(a: PathLike, b: PathLike) -> bool:
    """True when `a` and `b` name the same file (links resolved)."""
    a, b = Path(a), Path(b)
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except (OSError, ValueError):
        return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
