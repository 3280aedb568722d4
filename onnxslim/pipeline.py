"""Pipelines: a list of passes, its TOML recipe form, and the loop that runs it.

A recipe is a list of `[[pass]]` tables, each a `name` plus options; it reads into
pass instances and prints back as the same text (options at their defaults are
left out). Running records, per pass, whether the model changed, the time taken
and the tensor bytes before and after. With a guard, each lossless pass is checked
on ONNX Runtime against the model that went into it and rolled back on a mismatch.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx_ir as ir
import tomli_w

from onnxslim.errors import OnnxSlimError, PassFailed, UsageError
from onnxslim.feeds import Feed
from onnxslim.graphs import node_count, tensor_bytes
from onnxslim.parity import OutputParity, compare_outputs
from onnxslim.registry import make_pass, pass_name
from onnxslim.runtime import Session, SessionConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class Pipeline:
    """An ordered list of configured passes."""

    passes: tuple[ir.passes.PassBase, ...]

    @classmethod
    def from_names(cls, names: Sequence[str]) -> Pipeline:
        return cls(tuple(make_pass(name, {}) for name in names))

    @classmethod
    def from_toml(cls, text: str) -> Pipeline:
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"recipe is not valid TOML: {exc}") from exc
        tables = document.get("pass", [])
        if not isinstance(tables, list) or set(document) - {"pass"}:
            raise UsageError("a recipe holds only [[pass]] tables")
        passes = []
        for i, table in enumerate(tables, 1):
            options = dict(table)
            name = options.pop("name", None)
            if not isinstance(name, str):
                raise UsageError(f"recipe pass #{i} has no name")
            options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
            passes.append(make_pass(name, options))
        return cls(tuple(passes))

    @classmethod
    def from_file(cls, path: str | Path) -> Pipeline:
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"{path}: recipe file not found")
        return cls.from_toml(path.read_text(encoding="utf-8"))

    def to_toml(self) -> str:
        return tomli_w.dumps({"pass": [pass_table(p) for p in self.passes]})


def pass_table(instance: ir.passes.PassBase) -> dict[str, Any]:
    """The recipe table of one pass: its name and every option not at its default."""
    table: dict[str, Any] = {"name": pass_name(instance)}
    if dataclasses.is_dataclass(instance):
        for f in dataclasses.fields(instance):
            value = getattr(instance, f.name)
            if not f.init or f.metadata.get("internal") or value == f.default:
                continue
            table[f.name] = list(value) if isinstance(value, (tuple, frozenset)) else value
    return table


@dataclass
class PassRecord:
    """What one pass did."""

    name: str
    status: str  # "changed", "unchanged", "rolled back", "failed"
    seconds: float
    bytes_before: int
    bytes_after: int
    nodes_before: int
    nodes_after: int
    reason: str = ""
    parity: list[OutputParity] | None = None

    @property
    def changed(self) -> bool:
        return self.status == "changed"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["changed"] = self.changed
        data["parity"] = [p.to_dict() for p in self.parity] if self.parity is not None else None
        return data


@dataclass
class PipelineResult:
    model: ir.Model
    records: list[PassRecord] = field(default_factory=list)

    @property
    def rolled_back(self) -> list[PassRecord]:
        return [r for r in self.records if r.status in ("rolled back", "failed")]


@dataclass
class Guard:
    """Checks lossless passes on ORT against the model that went into them."""

    feeds: list[Feed]
    atol: float = 1e-5
    rtol: float = 1e-5
    config: SessionConfig = field(default_factory=lambda: SessionConfig(optimization="basic"))

    def outputs(self, model: ir.Model) -> list[dict[str, Any]]:
        session = Session(model, self.config)
        return [session.run(feed) for feed in self.feeds]

    def check(self, reference: list[dict[str, Any]], model: ir.Model) -> tuple[list[OutputParity], list[dict[str, Any]]]:
        outputs = self.outputs(model)
        return compare_outputs(reference, outputs, atol=self.atol, rtol=self.rtol), outputs


ProgressCallback = Callable[[str, int, int], None]


def run_pipeline(
    model: ir.Model,
    pipeline: Pipeline,
    *,
    guard: Guard | None = None,
    rollback_failures: bool = False,
    on_pass: ProgressCallback | None = None,
) -> PipelineResult:
    """Run each pass on a clone of the current model, keeping it only if it holds up.

    A pass that raises is rolled back and recorded when `rollback_failures` is set,
    and raised as PassFailed otherwise. With a `guard`, a lossless pass whose
    outputs moved beyond tolerance is rolled back and recorded with its parity.
    """
    result = PipelineResult(model)
    reference = guard.outputs(model) if guard is not None else None
    total = len(pipeline.passes)
    for index, instance in enumerate(pipeline.passes):
        name = pass_name(instance)
        if on_pass is not None:
            on_pass(name, index, total)
        current = result.model
        bytes_before, nodes_before = tensor_bytes(current), node_count(current)
        candidate = current.clone()
        start = time.perf_counter()
        try:
            modified = instance(candidate).modified
        except OnnxSlimError:
            raise
        except Exception as exc:
            seconds = time.perf_counter() - start
            reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            if not rollback_failures:
                raise PassFailed(f"pass {name!r} failed: {reason}") from exc
            result.records.append(PassRecord(name, "failed", seconds, bytes_before, bytes_before,
                                             nodes_before, nodes_before, reason))
            continue
        seconds = time.perf_counter() - start
        record = PassRecord(name, "changed" if modified else "unchanged", seconds, bytes_before,
                            tensor_bytes(candidate), nodes_before, node_count(candidate))
        if guard is not None and reference is not None and modified:
            try:
                parity, outputs = guard.check(reference, candidate)
            except OnnxSlimError as exc:
                parity, outputs = None, None
                record.status, record.reason = "rolled back", f"result does not run on ONNX Runtime: {exc}"
            else:
                record.parity = parity
                lossless = bool(getattr(instance, "lossless", False))
                failed = [p.name for p in parity if not p.passed]
                if lossless and failed:
                    record.status = "rolled back"
                    record.reason = f"outputs changed beyond tolerance: {', '.join(failed)}"
            if record.status == "rolled back":
                record.bytes_after, record.nodes_after = bytes_before, nodes_before
            else:
                reference = outputs
        if record.status != "rolled back":
            result.model = candidate
        result.records.append(record)
    return result
