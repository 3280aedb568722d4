"""Pipelines: a list of passes, its TOML recipe form, and the loop that runs it.

A recipe is a list of `[[pass]]` tables, each a `name` plus options; it reads into
pass instances and prints back as the same text (options at their defaults are
left out). Running records, per pass, whether the model changed, the time taken
and the tensor bytes before and after. With a guard, each lossless pass is checked
on ONNX Runtime against the model that went into it and rolled back on a mismatch.
"""

from __future__ import annotations

import dataclasses
import logging
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
from onnxslim.passes._run_data import RunData, run_pass
from onnxslim.registry import make_pass, pass_name
from onnxslim.runtime import Session, SessionConfig

logger = logging.getLogger("onnxslim")

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
        """The recipe as `[[pass]]` tables (tomli_w formats each value)."""
        tables = []
        for table in map(pass_table, self.passes):
            lines = ["[[pass]]"] + [tomli_w.dumps({k: v}).rstrip("\n") for k, v in table.items()]
            tables.append("\n".join(lines) + "\n")
        return "\n".join(tables)


def pass_table(instance: ir.passes.PassBase) -> dict[str, Any]:
    """The recipe table of one pass: its name and every option not at its default."""
    table: dict[str, Any] = {"name": pass_name(instance)}
    if dataclasses.is_dataclass(instance):
        for f in dataclasses.fields(instance):
            value = getattr(instance, f.name)
            if not f.init or value is f.default or value == f.default:
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
    # With a guard: the final model against the original, output by output.
    parity: list[OutputParity] | None = None

    @property
    def passed(self) -> bool:
        """False when the final check found an output beyond tolerance."""
        return self.parity is None or all(p.passed for p in self.parity)

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

    def check(
        self, reference: list[dict[str, Any]], model: ir.Model
    ) -> tuple[list[OutputParity], list[dict[str, Any]]]:
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
    data: RunData | None = None,
) -> PipelineResult:
    """Run each pass on a clone of the current model, keeping it only if it holds up.

    `data` is the workflow's data for this run (the user's feeds, opened once, and the
    run's progress): every pass that reads data gets it as an argument of its run
    (passes/_run_data.py); the others never see it.

    A pass that raises is rolled back and recorded when `rollback_failures` is set,
    and raised as PassFailed otherwise. With a `guard`, a lossless pass whose
    outputs moved beyond tolerance is rolled back, recorded with its parity and
    logged as a warning naming the outputs that moved.

    Consecutive lossless passes run on one clone and are checked together first: one
    clone and one ORT session for the lot instead of one per pass (each costs seconds
    on a 30,000-node graph); with no guard, a failing one is found the same way.
    Only when that check fails are they re-run one at a time, each checked against
    the model that went into it, so the pass at fault is found and rolled back.
    At the end, `result.parity` compares the final model with the original.
    """
    result = PipelineResult(model)
    reference = guard.outputs(model) if guard is not None else None
    original = reference
    passes = list(pipeline.passes)
    total = len(passes)
    index = 0
    while index < total:
        if _is_lossless(passes[index]):  # a run of them: one clone, and one check if guarded
            end = index
            while end < total and _is_lossless(passes[end]):
                end += 1
            reference = _run_lossless_run(
                result, passes, index, end, guard, reference, rollback_failures, on_pass, data
            )
            index = end
        else:
            reference = _run_checked(
                result,
                passes[index],
                index,
                total,
                guard,
                reference,
                rollback_failures,
                on_pass,
                data,
            )
            index += 1
    if guard is not None and original is not None and reference is not None:
        result.parity = compare_outputs(original, reference, atol=guard.atol, rtol=guard.rtol)
    return result


def _is_lossless(instance: ir.passes.PassBase) -> bool:
    return bool(getattr(instance, "lossless", False))


def _run_lossless_run(
    result: PipelineResult,
    passes: list[ir.passes.PassBase],
    begin: int,
    end: int,
    guard: Guard | None,
    reference: list[dict[str, Any]] | None,
    rollback_failures: bool,
    on_pass: ProgressCallback | None,
    data: RunData | None,
) -> list[dict[str, Any]] | None:
    """passes[begin:end] unchecked, one check at the end; one check per pass if that fails."""
    trial, records = _try_in_place(
        result.model, passes[begin:end], begin, len(passes), on_pass, data
    )
    if trial is not None:
        modified = [r for r in records if r.status == "changed"]
        if not modified or reference is None or guard is None:
            result.model = trial
            result.records.extend(records)
            return reference
        try:
            parity, outputs = guard.check(reference, trial)
        except OnnxSlimError:
            parity, outputs = None, None
        if parity is not None and all(p.passed for p in parity):
            for record in modified:
                record.parity = parity
            result.model = trial
            result.records.extend(records)
            return outputs
        logger.info(
            "lossless passes %s changed outputs together; checking them one by one",
            ", ".join(r.name for r in modified),
        )
    for index in range(begin, end):
        reference = _run_checked(
            result,
            passes[index],
            index,
            len(passes),
            guard,
            reference,
            rollback_failures,
            on_pass,
            data,
        )
    return reference


def _try_in_place(
    model: ir.Model,
    passes: list[ir.passes.PassBase],
    offset: int,
    total: int,
    on_pass: ProgressCallback | None,
    data: RunData | None,
) -> tuple[ir.Model | None, list[PassRecord]]:
    """Run `passes` one after the other on one clone; (None, []) if any of them raises."""
    candidate = model.clone()
    records = []
    bytes_now, nodes_now = tensor_bytes(candidate), node_count(candidate)
    for index, instance in enumerate(passes, offset):
        name = pass_name(instance)
        if on_pass is not None:
            on_pass(name, index, total)
        start = time.perf_counter()
        try:
            modified = run_pass(instance, candidate, data).modified
        except Exception:  # the one-by-one run reports (or raises) it properly
            return None, []
        seconds = time.perf_counter() - start
        bytes_before, nodes_before = bytes_now, nodes_now
        # Measured after every pass: one that drops a tensor but reports no change
        # must not have its bytes booked to the next pass that does.
        bytes_now, nodes_now = tensor_bytes(candidate), node_count(candidate)
        modified = modified or (bytes_now, nodes_now) != (bytes_before, nodes_before)
        records.append(
            PassRecord(
                name,
                "changed" if modified else "unchanged",
                seconds,
                bytes_before,
                bytes_now,
                nodes_before,
                nodes_now,
            )
        )
    return candidate, records


def _run_checked(
    result: PipelineResult,
    instance: ir.passes.PassBase,
    index: int,
    total: int,
    guard: Guard | None,
    reference: list[dict[str, Any]] | None,
    rollback_failures: bool,
    on_pass: ProgressCallback | None,
    data: RunData | None,
) -> list[dict[str, Any]] | None:
    """Run one pass on a clone of result.model; with a guard, check it against `reference`."""
    name = pass_name(instance)
    if on_pass is not None:
        on_pass(name, index, total)
    current = result.model
    bytes_before, nodes_before = tensor_bytes(current), node_count(current)
    candidate = current.clone()
    start = time.perf_counter()
    try:
        modified = run_pass(instance, candidate, data).modified
    except OnnxSlimError:
        raise
    except Exception as exc:
        seconds = time.perf_counter() - start
        reason = (
            f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        )
        if not rollback_failures:
            raise PassFailed(f"pass {name!r} failed: {reason}") from exc
        logger.warning("pass %s failed and was skipped: %s", name, reason)
        result.records.append(
            PassRecord(
                name,
                "failed",
                seconds,
                bytes_before,
                bytes_before,
                nodes_before,
                nodes_before,
                reason,
            )
        )
        return reference
    seconds = time.perf_counter() - start
    bytes_after, nodes_after = tensor_bytes(candidate), node_count(candidate)
    modified = modified or (bytes_after, nodes_after) != (bytes_before, nodes_before)
    record = PassRecord(
        name,
        "changed" if modified else "unchanged",
        seconds,
        bytes_before,
        bytes_after,
        nodes_before,
        nodes_after,
    )
    if guard is not None and reference is not None and modified:
        try:
            parity, outputs = guard.check(reference, candidate)
        except OnnxSlimError as exc:
            parity, outputs = None, None
            record.status, record.reason = (
                "rolled back",
                f"result does not run on ONNX Runtime: {exc}",
            )
        else:
            record.parity = parity
            failed = [p for p in parity or () if not p.passed]
            if _is_lossless(instance) and failed:
                record.status = "rolled back"
                record.reason = "outputs changed beyond tolerance: " + ", ".join(
                    f"{p.name} (max abs {p.max_abs:.3g}, {p.mismatched}/{p.elements} elements)"
                    for p in failed
                )
        if record.status == "rolled back":
            record.bytes_after, record.nodes_after = bytes_before, nodes_before
            logger.warning("pass %s rolled back: %s", name, record.reason)
        else:
            reference = outputs
    if record.status != "rolled back":
        result.model = candidate
    result.records.append(record)
    return reference
