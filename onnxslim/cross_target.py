"""Parity of a candidate model on other CPUs' kernels (see onnxslim.targets).

For each target, REF and CAND run there on the same few feeds; the report gives the
target's own REF-vs-CAND parity (what a device would see) and CAND host-vs-target
(whether the int8 kernels of the target compute differently from this machine's).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx_ir as ir

from onnxslim import io, targets
from onnxslim.feeds import Feed
from onnxslim.parity import OutputParity, compare_outputs
from onnxslim.runtime import Session, SessionConfig


@dataclass
class TargetReport:
    target: str
    detail: str
    feeds: int
    on_target: list[OutputParity]  # CAND vs REF, both run on the target
    candidate_host_vs_target: list[OutputParity]  # CAND on host vs CAND on target
    reference_host_vs_target: list[OutputParity]

    @property
    def passed(self) -> bool:
        return all(p.passed for p in self.on_target)

    @property
    def candidate_differs_from_host(self) -> bool:
        return any(p.max_abs > 0 for p in self.candidate_host_vs_target)

    @property
    def candidate_differs_beyond_rounding(self) -> bool:
        """Different kernels, not just float summation order (int8 saturation, say)."""
        return any(p.max_rel > 1e-5 for p in self.candidate_host_vs_target)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "detail": self.detail,
            "feeds": self.feeds,
            "passed": self.passed,
            "candidate_differs_from_host": self.candidate_differs_from_host,
            "candidate_differs_beyond_rounding": self.candidate_differs_beyond_rounding,
            "on_target": [p.to_dict() for p in self.on_target],
            "candidate_host_vs_target": [p.to_dict() for p in self.candidate_host_vs_target],
            "reference_host_vs_target": [p.to_dict() for p in self.reference_host_vs_target],
        }


def validate_on_targets(
    reference: ir.Model | Path,
    candidate: ir.Model | Path,
    target_names: Sequence[str],
    feeds: Sequence[Feed],
    *,
    atol: float = 1e-5,
    rtol: float = 1e-5,
) -> list[TargetReport]:
    """Run REF and CAND on each target and compare, there and against this machine."""
    with tempfile.TemporaryDirectory(prefix="onnxslim-xval-") as tmp:
        paths = [
            _as_file(m, Path(tmp) / f"{label}.onnx")
            for m, label in ((reference, "reference"), (candidate, "candidate"))
        ]
        config = SessionConfig(threads=1)
        host = [[Session(p, config).run(f) for f in feeds] for p in paths]
        reports = []
        for name in target_names:
            ref_t, cand_t = targets.run(name, paths, feeds)
            reports.append(
                TargetReport(
                    target=name,
                    detail=targets.status(name).detail,
                    feeds=len(feeds),
                    on_target=compare_outputs(ref_t, cand_t, atol=atol, rtol=rtol),
                    candidate_host_vs_target=compare_outputs(host[1], cand_t, atol=0.0, rtol=0.0),
                    reference_host_vs_target=compare_outputs(host[0], ref_t, atol=atol, rtol=rtol),
                )
            )
        return reports


def _as_file(model: ir.Model | Path, path: Path) -> Path:
    if isinstance(model, ir.Model):
        return io.save(model, path)
    return Path(model)
