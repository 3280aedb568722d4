"""The accuracy target on the lossy commands: one option, the per-output lines, exit 1 on a miss.

quantize, prune and cluster share it: `--target-error P` (points of task accuracy the
result may lose against the original, estimated without labels; onnxslim.agreement),
each output's figure printed against it, and when one misses, the model is still
written and the command fails (exit 1) naming the output, its figure, the target
and what to try next.
"""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape

from onnxslim.agreement import DEFAULT_TARGET_ERROR, Assessment
from onnxslim.cli._app import out
from onnxslim.errors import GateFailed
from onnxslim.passes._options import EFFORTS

TARGET_HELP = (
    "Accuracy target: the points of task accuracy the result may lose against the "
    "original, estimated without labels on held-out feeds (the last quarter of --calib, "
    "or --data/--eval), each output by its role (top-1, decoded sequences, map IoU, "
    "nearest neighbours, SQNR). Missed: the model is written and the exit code is 1. "
    "100 turns the check off."
)


def target_option() -> float:
    """The `--target-error` option (default 1.0 point)."""
    return typer.Option(
        DEFAULT_TARGET_ERROR, "--target-error", min=0.0, max=100.0, help=TARGET_HELP
    )


def effort_option() -> str:
    """The `--effort` option of prune and cluster (the target search's measuring)."""
    return typer.Option(
        "default",
        "--effort",
        help="How much the search at the target measures: fast (fewer probe feeds, forms and "
        "refit rows), default (about 2 minutes on a 2-core machine for a devmodel), thorough; "
        "the target check on held-out feeds decides the result either way.",
    )


def check_effort(effort: str) -> str:
    if effort not in EFFORTS:
        raise typer.BadParameter(
            f"{effort!r}: expected one of {', '.join(EFFORTS)}", param_hint="--effort"
        )
    return effort


def print_target(assessment: Assessment | None) -> None:
    """One line per output: its role, figure and target, PASS/MISSED."""
    if assessment is None:
        return
    out.print(
        f"accuracy target: at most {assessment.target.error:g} point(s) lost, measured on "
        f"{escape(assessment.feeds)}:"
    )
    for figure in assessment.figures:
        verdict = "[green]ok[/]" if figure.passed else "[red]MISSED[/]"
        out.print(f"  {verdict} {escape(figure.text())}")
    note = resolution_note(assessment)
    if note:
        out.print(f"  [yellow]note[/] {escape(note)}")


def resolution_note(assessment: Assessment) -> str:
    """Say so when one decision is worth more than the target: with 16 held-out decisions
    one changed decoded string is 6.25 points, so "0.00 points" cannot vouch for one point
    (captcha_crnn: 0.00 on its held-out feeds, 3.1 points lost on 64 others)."""
    target = assessment.target.error
    coarse = [
        f
        for f in assessment.figures
        if f.unit == "points"
        and f.decisions
        and not f.feeds
        and 100.0 / f.decisions > target
        and "estimated_points" not in f.detail  # resolved by the margins (onnxslim.margins)
    ]
    if not coarse or target <= 0:
        return ""
    fewest = min(coarse, key=lambda f: f.decisions)
    needed = int(-(-100 // target))
    return (
        f"{fewest.name}: {fewest.decisions} decisions, one is {100.0 / fewest.decisions:.1f} "
        f"points: the figure cannot resolve the {target:g}-point target; --data with feeds "
        f"giving at least {needed} decisions checks it"
    )


def fail_on_target(assessment: Assessment | None, output: object, advice: str) -> None:
    """GateFailed (exit 1) when an output missed the target; the model is already written."""
    if assessment is None or assessment.passed:
        return
    raise GateFailed(
        f"accuracy target missed: {assessment.message()}; {advice} "
        f"(the model was written to {output})"
    )


def fail_on_max_drop(gate: dict[str, Any] | None, output: object, advice: str) -> None:
    """GateFailed (exit 1) when --max-drop failed, naming the output the drop was measured on
    and what to try next; the model is already written."""
    if gate is None or gate["passed"]:
        return
    on = f" on output {gate['output']!r}" if gate.get("output") else ""
    raise GateFailed(
        f"accuracy dropped {gate['drop_points']:.2f} points{on} > --max-drop "
        f"{gate['max_drop']:g}; next: {advice}; or a looser --max-drop "
        f"(the model was written to {output})"
    )
