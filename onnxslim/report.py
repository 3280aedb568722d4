"""The run report: one object for the API, `report.json`, `report.md` and `report.html`.

The JSON form is `RunReport.to_dict()`, versioned by SCHEMA_VERSION and documented
in docs/report-schema.md; the CLI writes exactly that. The Markdown form is a
compact table for a pull-request comment (onnxslim.report_markdown); the HTML
form (onnxslim.report_html) adds the plots. Both render the dictionary only.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxslim._version import __version__
from onnxslim.evaluation import Evaluator, Measurement
from onnxslim.graphs import node_count
from onnxslim.report_html import html
from onnxslim.report_markdown import markdown

SCHEMA_VERSION = "1.0"


@dataclass
class StepReport:
    index: int
    name: str
    kind: str  # optimize | quantize | prune | cluster | pass
    options: dict[str, Any]
    seconds: float
    file_bytes: int
    nodes: int
    measurement: Measurement
    details: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    gzip_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "kind": self.kind,
            "options": self.options,
            "seconds": round(self.seconds, 4),
            "file_bytes": self.file_bytes,
            "gzip_bytes": self.gzip_bytes,
            "nodes": self.nodes,
            **self.measurement.to_dict(),
            "details": self.details,
            "warnings": list(self.warnings),
        }


@dataclass
class RunReport:
    """What `onnxslim run` did and decided; `passed` is the verdict of the gates."""

    recipe: dict[str, Any]
    recipe_source: str
    recipe_sha256: str
    input: dict[str, Any]
    data: dict[str, Any]
    baseline: Measurement
    baseline_nodes: int
    steps: list[StepReport] = field(default_factory=list)
    gates: list[Any] = field(default_factory=list)  # gates.GateResult
    output: dict[str, Any] = field(default_factory=dict)
    final: Measurement | None = None
    seconds: float = 0.0
    status: str = "running"  # passed | gate failed | pass failed
    error: str | None = None
    search: dict[str, Any] | None = None
    model: Any = field(default=None, repr=False, compare=False)  # the output ir.Model (API only)

    @classmethod
    def start(
        cls, recipe: Any, input_path: str | None, input_bytes: bytes, evaluator: Evaluator
    ) -> RunReport:
        return cls(
            recipe=recipe.to_dict(),
            recipe_source=recipe.source,
            recipe_sha256=recipe.sha256(),
            input={
                "path": input_path,
                "bytes": len(input_bytes),
                "gzip_bytes": gzip_size(input_bytes),
                "sha256": hashlib.sha256(input_bytes).hexdigest(),
            },
            data={
                "feeds": evaluator.description,
                "labels": evaluator.labels is not None,
                "classifier": evaluator.classifier,
            },
            baseline=evaluator.baseline,
            baseline_nodes=node_count(evaluator.reference),
        )

    def finish(self, model_bytes: bytes, final: Measurement, seconds: float) -> None:
        self.output = {
            "bytes": len(model_bytes),
            "gzip_bytes": gzip_size(model_bytes),
            "sha256": hashlib.sha256(model_bytes).hexdigest(),
        }
        self.final = final
        self.seconds = seconds
        self.status = "passed" if self.passed else "gate failed"

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    @property
    def failed_gates(self) -> list[Any]:
        return [g for g in self.gates if not g.passed]

    @property
    def size_reduction(self) -> float | None:
        if not self.output or not self.input["bytes"]:
            return None
        return 1.0 - self.output["bytes"] / self.input["bytes"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "onnxslim", "version": __version__},
            "status": self.status,
            "passed": self.passed and self.status == "passed",
            "error": self.error,
            "recipe": {
                "source": self.recipe_source,
                "sha256": self.recipe_sha256,
                "document": self.recipe,
            },
            "input": {**self.input, "nodes": self.baseline_nodes, **self.baseline.to_dict()},
            "output": {
                **self.output,
                "size_reduction": self.size_reduction,
                **(self.final.to_dict() if self.final else {}),
            },
            "data": self.data,
            "steps": [s.to_dict() for s in self.steps],
            "gates": [g.to_dict() for g in self.gates],
            "seconds": round(self.seconds, 3),
            "search": self.search,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str) + "\n"

    def to_markdown(self) -> str:
        return markdown(self.to_dict())

    def write(self, folder: str | Path) -> dict[str, Path]:
        """report.json, report.md and report.html into `folder` (created)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        data = self.to_dict()
        files = {
            "json": folder / "report.json",
            "md": folder / "report.md",
            "html": folder / "report.html",
        }
        files["json"].write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
        files["md"].write_text(markdown(data), encoding="utf-8")
        files["html"].write_text(html(data), encoding="utf-8")
        return files


GZIP_LIMIT = 256 << 20


def gzip_size(data: bytes) -> int | None:
    """Zipped size (level 6): what an app store or a zipped download ships; None over 256 MiB."""
    return len(gzip.compress(data, compresslevel=6)) if len(data) <= GZIP_LIMIT else None
