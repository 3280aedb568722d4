"""The accuracy-target fix loop of static int8 (passes/quantize/repair.py, fix_glue.py):
a missed target is fixed layer by layer, cheapest fix first, and the report says how."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from onnxslim.agreement import Assessment, OutputFigure, Target
from onnxslim.cli import main
from onnxslim.cli.quantize import _print_fixes
from onnxslim.passes.quantize import fix_glue
from onnxslim.passes.quantize.repair import Choice, RepairOutcome, excess, repair

MODELS = Path(__file__).resolve().parents[1] / "models"
DETECTOR = MODELS / "digits_detector.onnx"
DETECTOR_CALIB = MODELS / "digits_detector.calib.npz"
# digits_detector's output concatenates boxes and sigmoid scores; the scores are measured
# apart from the boxes as decisions (agreement.py): int8 changes 0.55 points of them, met at
# the default target and missed at 0.5 points, which makes the loop work. Measured with the
# x86-avx2 kernel target (7-bit weights), pinned so the case is the same on every CPU: with
# a VNNI CPU's full-range weights int8 meets 0.5 points at once and there is nothing to fix.
TIGHT = 0.5
KERNELS = ["--target", "x86-avx2"]


def _assessment(db: float, limit: float = 40.0) -> Assessment:
    figure = OutputFigure("y", "regression", "SQNR", db, limit, "dB", 0)
    return Assessment(Target(), (figure,), "test feeds")


def test_the_loop_tries_ranges_first_then_the_fewest_layers_float() -> None:
    """Only layer `c` matters: ranges do not help, and float `c` alone meets the target."""
    tried: list[Choice] = []

    def evaluate(choice: Choice) -> tuple[object, Assessment]:
        tried.append(choice)
        return choice, _assessment(50.0 if "c" in choice.float_nodes else 30.0)

    ranked = ["a", "b", "c", "d", "e", "f"]
    tensors = {name: [f"{name}_out"] for name in ranked}
    outcome = repair(evaluate, (None, _assessment(30.0)), ranked, tensors, method="minmax")
    assert outcome.met and outcome.choice.float_nodes == ("c",)
    assert [s.kind for s in outcome.steps] == ["range", "float"]
    assert not outcome.steps[0].kept and outcome.steps[1].kept
    assert outcome.steps[1].before == {"y": 30.0} and outcome.steps[1].after == {"y": 50.0}
    # range methods first (percentile, mse, entropy), then float sets, never all layers at once
    assert [c.methods[0][1] for c in tried[:3]] == ["percentile", "mse", "entropy"]
    assert all(len(c.float_nodes) < len(ranked) for c in tried)
    assert outcome.evaluations == len(tried) < 12


def test_excess_is_one_at_the_limit() -> None:
    assert abs(excess(_assessment(40.0)) - 1.0) < 1e-9
    assert abs(excess(_assessment(20.0)) - 10.0) < 1e-6
    assert excess(_assessment(60.0)) < 1.0


def test_cli_lists_the_fixes_and_exits_0_when_they_meet_the_target(tmp_path: Path, capsys) -> None:
    out = tmp_path / "q.onnx"
    args = ["quantize", str(DETECTOR), "-o", str(out), "--calib", str(DETECTOR_CALIB)]
    args += ["--target-error", str(TIGHT), "--no-latency-guard", *KERNELS]
    assert main([*args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    report, target = result["report"], result["target"]
    assert report["target_before"]["passed"] is False and target["passed"]
    assert report["fixes"][0]["kind"] == "range"  # the cheapest fix is tried first
    assert report["target_after"]["passed"] is True
    (figure,) = target["outputs"]
    before = report["target_before"]["outputs"]["detections"]
    assert figure["unit"] == "points" and figure["value"] <= figure["limit"] < before
    assert report["quantized_nodes"]  # still int8: the fix did not give up on the model
    # every figure carries its unit (a concatenated output's worst part can switch units)
    assert report["target_before"]["units"] == {"detections": "points"}
    assert all(set(f["units_before"]) == set(f["before"]) for f in report["fixes"])
    # the text names each figure's unit and whether the fix was kept ("[kept]" is not markup)
    _print_fixes(
        SimpleNamespace(
            **{k: report[k] for k in ("fixes", "fix_evaluations")},
            target_before=report["target_before"],
        )
    )  # type: ignore[arg-type]
    text = " ".join(capsys.readouterr().out.split())
    assert f"detections {before:.2f} points" in text and "[kept]" in text
    assert main([*args, "--no-fix", "--overwrite"]) == 1 and out.is_file()
    assert "accuracy target missed" in " ".join(capsys.readouterr().err.split())


def test_int8_that_misses_after_every_fix_gives_the_float_model_exit_0(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    """When no fix meets the target, the float model (cleaned up) is the result, exit 0, and
    the reason is one line: never an int8 model that misses it shipped as a success."""

    def nothing_helps(evaluate, start, ranked, tensors, **_):  # every fix tried, none met
        return RepairOutcome(Choice(), start[0], start[1])

    monkeypatch.setattr(fix_glue, "repair", nothing_helps)
    out = tmp_path / "q.onnx"
    args = ["quantize", str(DETECTOR), "-o", str(out), "--calib", str(DETECTOR_CALIB)]
    args += ["--target-error", str(TIGHT), "--no-latency-guard", *KERNELS, "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    report = result["report"]
    assert report["target_before"]["passed"] is False and result["target"]["passed"]
    assert report["quantized_nodes"] == [] and report["fixes"][-1]["kind"] == "float model"
    assert "missed the accuracy target after every fix" in result["kept_float"]
