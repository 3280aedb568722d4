"""The guarded pipeline: a pass that changes outputs is rolled back, named in the report and
the log; --no-verify skips the checks; a failed final check exits 1 and writes nothing.

The faulty passes live only here (added to the registry for one test with monkeypatch).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx_ir as ir
import pytest
from cleanup_helpers import assert_exact, init, model, run, vi
from onnx import helper

from onnxslim import api, registry
from onnxslim.cli import main
from onnxslim.passes.eliminate import EliminateNoOps, RemoveUnused
from onnxslim.pipeline import Pipeline


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScaleConstant(ir.passes.InPlacePass):
    """Multiply the constant `k` by `factor` (a "lossless" pass that is not)."""

    lossless: ClassVar[bool] = True
    factor: float = 1.1

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        value = model.graph.initializers["k"]
        # A new tensor: clones share tensors with the model that went in.
        value.const_value = ir.tensor(value.const_value.numpy() * np.float32(self.factor), name="k")
        return ir.passes.PassResult(model, True)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Crash(ir.passes.InPlacePass):
    """A pass with a bug."""

    lossless: ClassVar[bool] = True

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        raise RuntimeError("bug in pass")


def _model() -> ir.Model:
    """y = Identity(x) * k with k = 1000 (outputs up to a few thousand)."""
    return model(
        [helper.make_node("Identity", ["x"], ["xi"]), helper.make_node("Mul", ["xi", "k"], ["y"])],
        [vi("x", ["N", 8])],
        [vi("y", ["N", 8])],
        [init("k", np.float32(1000))],
    )


def _feeds() -> list[dict[str, np.ndarray]]:
    return [
        {"x": np.random.default_rng(s).standard_normal((4, 8)).astype(np.float32)} for s in range(2)
    ]


def test_broken_pass_is_rolled_back_named_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    m = _model()
    pipeline = Pipeline((EliminateNoOps(), ScaleConstant(), RemoveUnused()))
    with caplog.at_level(logging.WARNING, logger="onnxslim"):
        result = api.optimize(m, pipeline=pipeline, max_samples=2)
    statuses = {r.name: r.status for r in result.result.records}
    assert statuses == {
        "eliminate-no-ops": "changed",
        "ScaleConstant": "rolled back",
        "remove-unused": "unchanged",
    }
    rolled = result.result.rolled_back
    assert [r.name for r in rolled] == ["ScaleConstant"] and "y" in rolled[0].reason
    assert any(
        "ScaleConstant" in rec.getMessage() and "y" in rec.getMessage() for rec in caplog.records
    )
    assert result.passed and all(p.passed for p in result.result.parity)
    assert_exact(run(m, _feeds()), run(result.model, _feeds()))
    assert [n.op_type for n in result.model.graph] == ["Mul"], "the good pass before it was kept"


@pytest.fixture
def faulty_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.BUILTIN_PASSES, "scale-k", ScaleConstant)
    monkeypatch.setitem(registry.BUILTIN_PASSES, "crash", Crash)


def test_cli_report_names_the_rolled_back_pass(tmp_path: Path, faulty_passes, capsys) -> None:
    source, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    ir.save(_model(), source)
    code = main(
        [
            "optimize",
            str(source),
            "-o",
            str(out),
            "--passes",
            "eliminate-no-ops,scale-k,crash",
            "--json",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0
    report = json.loads(captured.out)
    assert report["rolled_back"] == ["scale-k", "crash"] and report["passed"]
    by_name = {p["name"]: p for p in report["passes"]}
    assert by_name["scale-k"]["status"] == "rolled back" and "y" in by_name["scale-k"]["reason"]
    assert by_name["crash"]["status"] == "failed" and "bug in pass" in by_name["crash"]["reason"]
    assert "scale-k" in captured.err and "crash" in captured.err
    assert_exact(run(_model(), _feeds()), run(ir.load(out), _feeds()))
    # The table form says the same.
    assert (
        main(["optimize", str(source), "-o", str(tmp_path / "t.onnx"), "--passes", "scale-k"]) == 0
    )
    captured = capsys.readouterr()
    assert "rolled back" in captured.out and "scale-k" in captured.err


def test_no_verify_skips_the_checks(tmp_path: Path, faulty_passes, capsys) -> None:
    source, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    ir.save(_model(), source)
    assert (
        main(
            [
                "optimize",
                str(source),
                "-o",
                str(out),
                "--passes",
                "scale-k",
                "--no-verify",
                "--json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["passes"][0]["status"] == "changed" and report["passes"][0]["parity"] is None
    assert report["parity"] is None and report["verified_on"] == "not verified"
    got = run(ir.load(out), _feeds())[0]["y"]
    np.testing.assert_allclose(got, run(_model(), _feeds())[0]["y"] * 1.1, rtol=1e-6)


def test_failed_final_check_exits_1_and_writes_nothing(
    tmp_path: Path, faulty_passes, capsys
) -> None:
    """Two nudges each within tolerance on their own add up to more than the tolerance."""
    source, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    ir.save(_model(), source)
    recipe = tmp_path / "nudge.toml"
    recipe.write_text(
        '[[pass]]\nname = "scale-k"\nfactor = 1.000008\n\n'
        '[[pass]]\nname = "scale-k"\nfactor = 1.000008\n'
    )
    code = main(["optimize", str(source), "-o", str(out), "--recipe", str(recipe), "--json"])
    captured = capsys.readouterr()
    assert code == 1 and not out.exists()
    report = json.loads(captured.out)
    assert not report["passed"] and report["output"] is None
    assert [p["status"] for p in report["passes"]] == ["changed", "changed"], (
        "each nudge passed alone"
    )
    assert "differ from the input model" in captured.err and "nothing written" in captured.err
    assert main(["optimize", str(source), "-o", str(out), "--recipe", str(recipe), "--force"]) == 1
    assert out.exists() and "--force" in capsys.readouterr().err
