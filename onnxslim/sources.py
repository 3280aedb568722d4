"""What the API accepts as a model, and how its results give the model back.

Users hold a model in one of four forms: a path, an `onnx.ModelProto` (from
`onnx.load` or an exporter), its serialized bytes, or an `onnx_ir.Model`. Every API
function takes any of them; results carry the `onnx_ir.Model` and convert on
request (`model_proto()`, `model_bytes()`, `save(path)`), the way `onnxsim.simplify`
and OnnxSlim's `slim` hand back what they were given.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeAlias

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from onnxslim import io
from onnxslim.errors import ModelLoadError, UsageError
from onnxslim.graphs import iter_tensors

ModelSource: TypeAlias = ir.Model | onnx.ModelProto | bytes | str | os.PathLike[str]


def as_model(source: Any) -> ir.Model:
    """An onnx_ir.Model for any accepted form; a path is loaded with io.load's checks.

    A ModelProto is read, never changed: the IR refers to its tensors, and passes
    replace tensors rather than write into them. External data of an in-memory proto
    is looked up relative to the current folder (as onnx.load would), inside it only.
    """
    if isinstance(source, ir.Model):
        return source
    if isinstance(source, (str, os.PathLike)):
        return io.load(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        proto = onnx.ModelProto()
        try:
            proto.ParseFromString(bytes(source))
        except DecodeError as exc:
            raise ModelLoadError(f"<bytes>: not a serialized ONNX model ({exc})") from exc
        return _from_proto(proto, "<bytes>")
    if isinstance(source, onnx.ModelProto):
        return _from_proto(source, "<ModelProto>")
    raise UsageError(
        "expected a model path, onnx.ModelProto, serialized bytes or onnx_ir.Model, "
        f"got {type(source).__name__}"
    )


def is_path(source: Any) -> bool:
    return isinstance(source, (str, os.PathLike))


def _from_proto(proto: onnx.ModelProto, label: str) -> ir.Model:
    if not proto.HasField("graph") or proto.ir_version <= 0 or not proto.opset_import:
        raise ModelLoadError(f"{label}: not an ONNX model (no graph, IR version or opset import)")
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as exc:  # deserialize raises many types on malformed protos
        raise ModelLoadError(f"{label}: malformed ONNX model ({exc})") from exc
    base_dir = Path.cwd()
    for tensor in _external(model):
        tensor.base_dir = base_dir
    io.check_external_data(model, base_dir)
    io.check_domains(model, Path(label))
    return model


def _external(model: ir.Model) -> list[ir.ExternalTensor]:
    return [t for _, t in iter_tensors(model) if isinstance(t, ir.ExternalTensor)]


class ModelResult:
    """Gives a result's `model` back in the form the user wants (mixed into API results)."""

    model: ir.Model

    def model_proto(self) -> onnx.ModelProto:
        """The result as an onnx.ModelProto (weights loaded into memory)."""
        return ir.serde.serialize_model(self.model)

    def model_bytes(self) -> bytes:
        """The result serialized, as `onnx.save` would write it (under 2 GB)."""
        return io.model_to_bytes(self.model)

    def save(
        self,
        path: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        external_data: bool | None = None,
    ) -> Path:
        """Write the result atomically (external data past 2 GB or when asked)."""
        return io.save(self.model, path, overwrite=overwrite, external_data=external_data)
