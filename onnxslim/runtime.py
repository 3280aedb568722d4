"""Run an in-memory model on ONNX Runtime's CPU execution provider.

The model is never written to disk for this: large main-graph weights are handed
to ORT as OrtValues sharing numpy's (often memory-mapped) buffers, and only the
graph skeleton is serialized. That keeps models over 2 GB runnable and avoids
holding every weight twice.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import os
import tempfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from onnxslim.budget import Budget, address_space_ceiling, budget_problem, watchdog
from onnxslim.errors import BudgetExceeded, ModelLoadError, RuntimeFailure
from onnxslim.graphs import nbytes
from onnxslim.io import as_saved
from onnxslim.loop_bounds import endless_loop

# Tensors at least this large go to ORT as in-memory external initializers.
_OFFLOAD_BYTES = 1024
_MEMORY_LOCATION = "__onnxslim_in_memory__"
# Where ORT looks for external data files of a model given as bytes.
_EXTERNAL_FOLDER_KEY = "session.model_external_initializers_file_folder_path"
_OFFLOADABLE = {
    ir.DataType.FLOAT,
    ir.DataType.FLOAT16,
    ir.DataType.DOUBLE,
    ir.DataType.INT8,
    ir.DataType.UINT8,
    ir.DataType.INT16,
    ir.DataType.UINT16,
    ir.DataType.INT32,
    ir.DataType.INT64,
    ir.DataType.UINT32,
    ir.DataType.UINT64,
    ir.DataType.BOOL,
}
# Past these sizes ONNX Runtime's own session creation turns super-linear (ORT 1.32):
# every initializer it drops from its graph (after copying it out, and in each graph
# optimization that folds or shares constants) is a linear search of the graph's list,
# so 100,000 initializers took 44 CPU s to open and 100,000 Relu nodes 3 s. A session over
# such a model runs it unoptimized, and ORT keeps its initializers when they are small
# enough to write once into a scratch file (its only switch for that): 44 -> 2.2 CPU s.
HEAVY_INITIALIZERS = 20_000
HEAVY_NODES = 100_000
_KEEP_INITIALIZER_BYTES = 256 << 20
# The last ORT sessions over heavy graphs, by content: see Session._reuse_heavy.
_HEAVY_SESSIONS: OrderedDict[bytes, tuple[ort.InferenceSession, list[object]]] = OrderedDict()
_HEAVY_KEPT = 2
_OPTIMIZATION = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(frozen=True, kw_only=True)
class SessionConfig:
    """How to build an ORT session; the defaults are what a deployed model gets."""

    threads: int = 1
    optimization: str = "all"
    optimized_model_path: str | None = None
    profile: bool = False
    profile_prefix: str | None = None  # where the profile file goes (ORT's default: the cwd)
    # Time per run and memory per run or session creation: a hostile model (an endless
    # Loop, a ConstantOfShape to terabytes) fails with BudgetExceeded instead of hanging.
    budget: Budget = Budget()


# (id(model), config) -> (model, session): see shared_sessions.
_SHARED: contextvars.ContextVar[dict[tuple[int, SessionConfig], tuple[object, Session]] | None] = (
    contextvars.ContextVar("onnxslim_shared_sessions", default=None)
)


@contextlib.contextmanager
def shared_sessions() -> Iterator[None]:
    """Within this block, a Session over the same in-memory model object with the same
    config is created once and shared: a workflow's validation, held-out check and
    latency timing each open the reference model, which on a 30,000-node graph costs
    seconds of serialization and session creation every time. Only for models no longer
    modified inside the block (the cache is keyed by object identity)."""
    token = _SHARED.set({})
    try:
        yield
    finally:
        _SHARED.reset(token)


class Session:
    """An ORT CPU session over an ir.Model or a model file."""

    _keep_alive: list[object]
    _budget: Budget
    _memory: int | None
    _session: ort.InferenceSession
    _endless: str | None  # why every budgeted run fails at once (onnxslim.loop_bounds)
    input_names: list[str]
    output_names: list[str]

    def __init__(
        self, model: ir.Model | str | os.PathLike[str], config: SessionConfig | None = None
    ):
        config = config or SessionConfig()
        shared = _SHARED.get()
        if not isinstance(model, ir.Model) or config.optimized_model_path or config.profile:
            shared = None  # a session made for its side effect (a file) is never shared
        key = (id(model), config)
        if shared is not None and key in shared:
            other = shared[key][1]
            self._keep_alive, self._budget, self._memory = (
                other._keep_alive,
                other._budget,
                other._memory,
            )
            self._session, self._endless = other._session, other._endless
            self.input_names, self.output_names = other.input_names, other.output_names
            return
        self._create(model, config)
        if shared is not None:
            shared[key] = (model, self)  # the model is kept: its id is not reused meanwhile

    def _create(self, model: ir.Model | str | os.PathLike[str], config: SessionConfig) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = config.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = _OPTIMIZATION[config.optimization]
        options.log_severity_level = 3
        scratch = None
        heavy = False
        if config.optimized_model_path:
            options.optimized_model_filepath = config.optimized_model_path
        elif isinstance(model, ir.Model) and not config.profile and heavy_graph(model):
            heavy = True
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            if _initializer_bytes(model) <= _KEEP_INITIALIZER_BYTES:
                scratch = tempfile.TemporaryDirectory(prefix="onnxslim-ort-")
                options.optimized_model_filepath = str(Path(scratch.name) / "unused.onnx")
        if config.profile:
            options.enable_profiling = True
            if config.profile_prefix:
                options.profile_file_prefix = config.profile_prefix
        try:
            self._open(model, config, options, heavy=heavy)
        finally:
            if scratch is not None:
                scratch.cleanup()

    def _open(
        self,
        model: ir.Model | str | os.PathLike[str],
        config: SessionConfig,
        options: ort.SessionOptions,
        *,
        heavy: bool = False,
    ) -> None:
        self._keep_alive = []
        self._budget = config.budget
        self._memory = config.budget.memory_bytes()
        # A Loop that cannot end within the run's time budget fails its runs at once.
        self._endless = (
            endless_loop(model, config.budget.seconds) if isinstance(model, ir.Model) else None
        )
        try:
            source = self._serialize(model, options) if isinstance(model, ir.Model) else model
            key = self._heavy_key(source, options) if heavy and isinstance(source, bytes) else None
            if key is not None and key in _HEAVY_SESSIONS:
                _HEAVY_SESSIONS.move_to_end(key)
                self._session, self._keep_alive = _HEAVY_SESSIONS[key]
            else:
                with address_space_ceiling(self._memory):
                    self._session = ort.InferenceSession(
                        source if isinstance(source, bytes) else str(Path(source)),
                        options,
                        providers=["CPUExecutionProvider"],
                    )
                if key is not None:
                    _HEAVY_SESSIONS[key] = (self._session, self._keep_alive)
                    while len(_HEAVY_SESSIONS) > _HEAVY_KEPT:
                        _HEAVY_SESSIONS.popitem(last=False)
        except Exception as exc:
            message = _first_line(exc)
            problem = budget_problem(message, self._budget, "creating the session")
            if problem:
                raise BudgetExceeded(problem) from exc
            if _is_model_problem(message):
                raise ModelLoadError(f"ONNX Runtime cannot load the model: {message}") from exc
            raise RuntimeFailure(f"ONNX Runtime session failed: {message}") from exc
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]

    def _heavy_key(self, source: bytes, options: ort.SessionOptions) -> bytes:
        """What makes two sessions over a heavy graph the same session: the serialized
        graph, the weights handed over apart from it, the threads and the external data
        folder. A heavy graph's session is always unoptimized (its config's optimization
        level does not apply), so the feed search's probe, a guard's reference, the
        held-out check and the parity check each opened the same session again: 4 of them
        on bombs/inits-100k in `cluster`, 3.4-3.9 CPU s each; on bombs/chain-300k ORT
        alone takes 19 s a session. Keyed by content, not by object, so a model changed
        in place (or another object holding the same graph) can never get a stale one;
        hashing costs a fraction of serializing, which is still done every time."""
        digest = hashlib.sha256(source)
        for kept in self._keep_alive:
            if isinstance(kept, np.ndarray):
                digest.update(kept.data)
        folder = _config_entry(options, _EXTERNAL_FOLDER_KEY)
        digest.update(f"|{options.intra_op_num_threads}|{folder}".encode())
        return digest.digest()

    @property
    def ort_session(self) -> ort.InferenceSession:
        return self._session

    def run(
        self,
        feeds: Mapping[str, np.ndarray],
        outputs: Sequence[str] | None = None,
        *,
        budgeted: bool = True,
    ) -> dict[str, np.ndarray]:
        """Run once; returns output name -> array. `budgeted=False` skips the time and memory
        budget (about 30 us a run): only for repeating a feed that already ran within it,
        as latency timing does."""
        names = list(outputs) if outputs is not None else self.output_names
        try:
            feed = {k: feeds[k] for k in self.input_names}
        except KeyError as exc:
            raise ModelLoadError(f"feed is missing model input {exc.args[0]!r}") from exc
        if budgeted and self._endless is not None:
            raise BudgetExceeded(self._endless)
        run_options = ort.RunOptions()
        run_options.log_severity_level = 4  # the error comes back as our one-line message
        try:
            if budgeted:
                with (
                    watchdog(run_options, self._budget.seconds),
                    address_space_ceiling(self._memory),
                ):
                    values = self._session.run(names, feed, run_options)
            else:
                values = self._session.run(names, feed, run_options)
        except Exception as exc:
            message = _first_line(exc)
            problem = budget_problem(message, self._budget, "one run")
            if problem:
                raise BudgetExceeded(problem) from exc
            raise RuntimeFailure(f"ONNX Runtime run failed: {message}") from exc
        return dict(zip(names, values, strict=True))

    def end_profiling(self) -> str:
        return self._session.end_profiling()

    def _serialize(self, model: ir.Model, options: ort.SessionOptions) -> bytes:
        """Serialize the graph with big main-graph weights replaced by in-memory references.

        Weights still in their external data files stay file references: ORT maps
        them itself from their folder, lazily and without a copy (OrtValues given
        to add_external_initializers are copied by ORT 1.32).
        """
        swapped: list[tuple[ir.Value, ir.TensorProtocol]] = []
        names: list[str] = []
        values: list[ort.OrtValue] = []
        folder = bind_external_data(model, options)
        try:
            for name, value in model.graph.initializers.items():
                tensor = value.const_value
                if (
                    tensor is None
                    or nbytes(tensor) < _OFFLOAD_BYTES
                    or tensor.dtype not in _OFFLOADABLE
                ):
                    continue
                if isinstance(tensor, ir.ExternalTensor) and _folder_of(tensor) == folder:
                    _unmap(tensor)
                    continue
                array = np.ascontiguousarray(tensor.numpy())
                ort_value = ort.OrtValue.ortvalue_from_numpy(array)
                self._keep_alive.append(array)
                names.append(name)
                values.append(ort_value)
                swapped.append((value, tensor))
                value.const_value = ir.ExternalTensor(
                    _MEMORY_LOCATION,
                    offset=0,
                    length=tensor.nbytes,
                    dtype=tensor.dtype,
                    shape=ir.Shape(tensor.shape.numpy()),
                    name=name,
                )
            with as_saved(model):  # the graph exactly as io.save writes it
                proto = ir.serde.serialize_model(model)
        finally:
            for value, tensor in swapped:
                value.const_value = tensor
        if names:
            self._keep_alive.extend(values)
            options.add_external_initializers(names, values)
        return proto.SerializeToString()


def _config_entry(options: ort.SessionOptions, key: str) -> str:
    try:
        return options.get_session_config_entry(key)
    except RuntimeError:  # ORT raises when the entry was never set
        return ""


def heavy_graph(model: ir.Model) -> str | None:
    """Why ORT's session creation on `model` is past its linear range, or None."""
    graph = model.graph
    if len(graph.initializers) >= HEAVY_INITIALIZERS:
        return f"{len(graph.initializers):,} initializers"
    if len(graph) >= HEAVY_NODES:
        return f"{len(graph):,} nodes"
    return None


def _initializer_bytes(model: ir.Model) -> int:
    tensors = (v.const_value for v in model.graph.initializers.values())
    return sum(nbytes(tensor) for tensor in tensors if tensor is not None)


def bind_external_data(model: ir.Model, options: ort.SessionOptions) -> str | None:
    """Tell ORT where the external data files of `model`, given as bytes, live (it refuses
    them as escaping its working directory otherwise); returns that folder, if any."""
    folder = _external_data_folder(model)
    if folder is not None:
        options.add_session_config_entry(_EXTERNAL_FOLDER_KEY, folder)
    return folder


def ort_optimized(
    model: ir.Model, optimization: str = "all", *, load_external_data: bool = True
) -> onnx.ModelProto:
    """The graph ORT runs: `model` after ORT's graph optimizations at `optimization`, as
    ORT writes it out (fusions, folded constants, its own contrib ops)."""
    with tempfile.TemporaryDirectory(prefix="onnxslim-ort-") as folder:
        path = Path(folder) / "optimized.onnx"
        Session(model, SessionConfig(optimization=optimization, optimized_model_path=str(path)))
        try:
            return onnx.load(str(path), load_external_data=load_external_data)
        except Exception as exc:  # ORT could not write it whole (over 2 GB, say)
            raise RuntimeFailure(f"cannot read ORT's optimized graph: {exc}") from exc


def _unmap(tensor: ir.ExternalTensor) -> None:
    """Drop our mapping of a weight ORT is about to read from its file itself.

    A pass that read every weight (quantization) leaves the whole data file resident in
    this process; ORT then holds its own copy, so a 2.35 GB model peaked at 2.7x its
    weights in `quantize --mode dynamic`. The tensor maps its file again if read later;
    a mapping still viewed by an array elsewhere stays open (BufferError)."""
    try:
        tensor.release()
    except BufferError:
        pass


def _folder_of(tensor: ir.ExternalTensor) -> str:
    return os.path.abspath(os.fspath(tensor.base_dir) or ".")


def _external_data_folder(model: ir.Model) -> str | None:
    """The folder holding most external weight bytes of the main graph, if any."""
    sizes: dict[str, int] = {}
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if isinstance(tensor, ir.ExternalTensor) and not os.path.isabs(os.fspath(tensor.location)):
            folder = _folder_of(tensor)
            sizes[folder] = sizes.get(folder, 0) + tensor.nbytes
    return max(sizes, key=sizes.__getitem__) if sizes else None


def _is_model_problem(message: str) -> bool:
    markers = (
        "INVALID_GRAPH",
        "INVALID_PROTOBUF",
        "NOT_IMPLEMENTED",
        "domain",
        "Unsupported model IR",
        "opset",
        "Could not find an implementation",
        "Load model",
        "is not a registered function/op",
    )
    return any(m in message for m in markers)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:500]
