"""`onnxslim run`: presets on every example model, gates both ways, exit codes, reports,
byte-identical reruns, provenance. Real ONNX Runtime runs on the models in models/."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import ClassVar

import onnx
import onnx_ir as ir
import pytest
from conftest import MODELS
from target_helpers import require_target

from onnxslim import api, presets
from onnxslim.cli import main
from onnxslim.errors import UsageError
from onnxslim.recipe import load_recipe

# One preset per example model, so every preset and every model is covered once.
PRESET_FOR = {
    "digits_cnn": "mobile-int8",
    "digits_transformer": "palettized-4bit",
    "digits_lstm": "mobile-int8-pruned",
    "digits_detector": "mobile-int8",
    "digits_gated": "lossless",
}
FAST = "\n[measure]\nlatency_runs = 3\n"


def data_args(name: str) -> list[str]:
    return [
        "--calib",
        str(MODELS / f"{name}.calib.npz"),
        "--eval",
        str(MODELS / f"{name}.eval.npz"),
    ]


def preset_copy(tmp_path: Path, preset: str, extra_gates: str = "") -> Path:
    """The preset's file, with gate lines added (its [gates] table is the last one)."""
    text = presets.text(preset)
    for line in extra_gates.splitlines():  # a gate given again replaces the preset's
        key = line.split("=")[0].strip()
        text = "\n".join(t for t in text.splitlines() if t.split("=")[0].strip() != key) + "\n"
    assert text.rstrip().splitlines()[-1].startswith(("max_", "min_", "metric"))
    path = tmp_path / f"{preset}.toml"
    path.write_text(text + extra_gates + FAST)
    return path


@pytest.mark.parametrize("name", list(PRESET_FOR))
def test_preset_passes_and_an_impossible_gate_fails(tmp_path: Path, name: str) -> None:
    preset = PRESET_FOR[name]
    model = MODELS / f"{name}.onnx"
    out, report = tmp_path / "out.onnx", tmp_path / "report"
    assert (
        main(["run", preset, str(model), "-o", str(out), "--report", str(report), *data_args(name)])
        == 0
    )
    data = json.loads((report / "report.json").read_text())
    assert data["schema_version"] == "1.0" and data["passed"] and data["status"] == "passed"
    assert all(g["passed"] for g in data["gates"]) and data["gates"]
    assert [s["name"] for s in data["steps"]] == [
        t["name"] for t in data["recipe"]["document"]["pass"]
    ]
    assert data["output"]["bytes"] == out.stat().st_size
    if preset in ("mobile-int8-pruned", "palettized-4bit"):  # measured once at the end
        assert "target_error" in [g["name"] for g in data["gates"]]
        assert data["data"]["backoff"]["trials"][0]["changed"] == "as written"
    html = (report / "report.html").read_text()
    assert html.count("<svg") >= 1 and "id='steps'" in html
    assert "PASS" in (report / "report.md").read_text()
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)

    # The same preset with a gate no model can meet: exit 1, model and report still written.
    recipe = preset_copy(tmp_path, preset, "min_size_reduction = 0.99\n")
    out2, report2 = tmp_path / "out2.onnx", tmp_path / "report2"
    assert (
        main(
            [
                "run",
                str(recipe),
                str(model),
                "-o",
                str(out2),
                "--report",
                str(report2),
                *data_args(name),
            ]
        )
        == 1
    )
    assert out2.is_file() and (report2 / "report.html").is_file()
    failed = json.loads((report2 / "report.json").read_text())
    assert not failed["passed"] and failed["status"] == "gate failed"
    assert [g["name"] for g in failed["gates"] if not g["passed"]] == ["min_size_reduction"]
    assert "FAIL" in (report2 / "report.md").read_text()


def test_same_run_twice_gives_identical_bytes_and_provenance(tmp_path: Path) -> None:
    """prune + int8 and clustering: the written model depends on input, recipe and data only."""
    recipe = tmp_path / "r.toml"
    recipe.write_text(f"""
[data]
calib = "{MODELS / "digits_cnn.calib.npz"}"
max_samples = 32
[[pass]]
name = "optimize"
[[pass]]
name = "prune"
sparsity = 0.4
storage = "dense"
[[pass]]
name = "quantize"
method = "entropy"
[[pass]]
name = "pack-sparse"
[measure]
latency_runs = 3
""")
    outputs = []
    for i in range(2):
        out = tmp_path / f"run{i}.onnx"
        assert main(["run", str(recipe), str(MODELS / "digits_cnn.onnx"), "-o", str(out)]) == 0
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    props = {p.key: p.value for p in onnx.load_from_string(outputs[0]).metadata_props}
    import hashlib

    import onnxslim

    assert props["onnxslim.version"] == onnxslim.__version__
    assert (
        props["onnxslim.input_sha256"]
        == hashlib.sha256((MODELS / "digits_cnn.onnx").read_bytes()).hexdigest()
    )
    assert props["onnxslim.recipe_sha256"] == load_recipe(recipe).sha256()
    # Moving the recipe and its data elsewhere changes neither the hash nor the bytes.
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(MODELS / "digits_cnn.calib.npz", moved / "c.npz")
    (moved / "r.toml").write_text(
        recipe.read_text().replace(str(MODELS / "digits_cnn.calib.npz"), "c.npz")
    )
    assert load_recipe(moved / "r.toml").sha256() == load_recipe(recipe).sha256()


def test_cluster_run_is_reproducible_and_plots_histograms(tmp_path: Path) -> None:
    name = "digits_transformer"
    reports = [
        api.run(
            "palettized-4bit",
            MODELS / f"{name}.onnx",
            output=tmp_path / f"{i}.onnx",
            report_dir=tmp_path / f"rep{i}",
            calib=str(MODELS / f"{name}.calib.npz"),
        )
        for i in range(2)
    ]
    assert (tmp_path / "0.onnx").read_bytes() == (tmp_path / "1.onnx").read_bytes()
    # The API returns the object whose to_dict() is report.json.
    on_disk = json.loads((tmp_path / "rep0" / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(reports[0].to_dict(), default=str))
    html = (tmp_path / "rep0" / "report.html").read_text()
    assert "weight histograms" in html and "class='plot histogram'" in html
    assert "<?xml" not in html and "dc:date" not in html  # inline SVG without dates
    hist = on_disk["steps"][1]["details"]["histogram"]
    assert hist["unique_after"] <= 16 * hist["weights"] and sum(hist["before"]) == sum(
        hist["after"]
    )


def test_yaml_recipe_and_sensitivity_plot(tmp_path: Path) -> None:
    """Same schema in YAML; accuracy-aware int8 yields the per-layer sensitivity plot
    (ranges clipped at the 60th percentile, so all-int8 misses and layers get ranked)."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
data:
  calib: {MODELS / "digits_cnn.calib.npz"}
  eval: {MODELS / "digits_cnn.eval.npz"}
  max_samples: 16
  eval_max_samples: 120
pass:
  - name: optimize
  - name: quantize
    method: percentile
    percentile: 60.0
    max_drop: 0.5
gates:
  metric: top1
  max_accuracy_drop: 0.5
measure:
  latency_runs: 0
""")
    report = api.run(
        recipe, MODELS / "digits_cnn.onnx", output=tmp_path / "o.onnx", report_dir=tmp_path / "rep"
    )
    details = report.steps[1].details["accuracy_aware"]
    assert details["sensitivity"] and details["float_layers"]
    assert report.passed == details["met"]
    assert "per-layer sensitivity" in (tmp_path / "rep" / "report.html").read_text()


BAD_RECIPES = [
    (
        '[[pass]]\nname = "optimize"\n[gates]\nmax_latency_ratio = "fast"\n',
        'gates.max_latency_ratio: expected a number, got "fast"',
    ),
    ('[[pass]]\nname = "optimize"\n[gate]\nmax_parity_error = 1\n', "gate: unknown key"),
    ('[[pass]]\nname = "optimize"\n[gates]\nmetric = "f1"\n', "gates.metric: expected one of"),
    ('[[pass]]\nname = "optimise"\n', "pass[0].name: unknown pass 'optimise'"),
    (
        '[[pass]]\nname = "optimize"\n[[pass]]\nname = "quantize"\nmethod = "best"\n',
        "pass[1].method: expected one of",
    ),
    ('[[pass]]\nname = "cluster"\nbits = "four"\n', 'pass[0].bits: expected a number, got "four"'),
    ('[[pass]]\nname = "prune"\nsparsity = 0.5\nspeed = 2\n', "pass[0].speed: unknown option"),
    (
        '[data]\ncalib = "nowhere.npz"\n[[pass]]\nname = "optimize"\n',
        "data.calib: 'nowhere.npz' does not exist",
    ),
    ('[[pass]]\nname = "cluster"\n[search]\nwidth = [1, 2]\n', "search.width: unknown axis"),
    ('[[pass]]\nname = "cluster"\n[search]\nbits = [2, 99]\n', "search.bits = 99"),
    ('[[pass]]\nname = "optimize"\n[gates]\ntargets = ["riscv"]\n', "gates.targets: expected"),
    ("[[pass]\nname = 1\n", "not valid TOML"),
    ("[gates]\nmax_parity_error = 0.1\n", "pass: a recipe needs at least one [[pass]]"),
]


@pytest.mark.parametrize(("text", "message"), BAD_RECIPES, ids=[m for _, m in BAD_RECIPES])
def test_bad_recipe_is_exit_2_naming_the_key(
    tmp_path: Path, capsys, text: str, message: str
) -> None:
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(text)
    out = tmp_path / "out.onnx"
    assert main(["run", str(recipe), str(MODELS / "digits_lstm.onnx"), "-o", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: recipe.toml: ") or "search." in error, error
    assert message in error and len(error.splitlines()) == 1 and "Traceback" not in error
    assert not out.exists()


def test_missing_data_and_same_output_are_usage_errors(tmp_path: Path, capsys) -> None:
    model = MODELS / "digits_cnn.onnx"
    assert main(["run", "mobile-int8", str(model), "-o", str(tmp_path / "o.onnx")]) == 2
    assert "needs calibration data" in capsys.readouterr().err
    assert main(["run", "no-such-preset", str(model), "-o", str(tmp_path / "o.onnx")]) == 2
    copy = tmp_path / "m.onnx"
    shutil.copy(model, copy)
    assert main(["run", "lossless", str(copy), "-o", str(copy)]) == 2
    assert copy.read_bytes() == model.read_bytes()
    with pytest.raises(UsageError):
        load_recipe({"pass": [{"name": "optimize"}], "extra": 1})


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExplodingPass(ir.passes.InPlacePass):
    """A pass with a bug (raises inside numpy-level code)."""

    lossless: ClassVar[bool] = False

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        raise ZeroDivisionError("division by zero in layer 3")


def test_failing_pass_is_exit_3_with_report_and_no_model(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    from onnxslim import registry

    monkeypatch.setitem(registry.BUILTIN_PASSES, "explode", ExplodingPass)
    recipe = tmp_path / "r.toml"
    recipe.write_text('[[pass]]\nname = "optimize"\n[[pass]]\nname = "explode"\n' + FAST)
    out, report = tmp_path / "o.onnx", tmp_path / "rep"
    assert (
        main(
            [
                "run",
                str(recipe),
                str(MODELS / "digits_lstm.onnx"),
                "-o",
                str(out),
                "--report",
                str(report),
            ]
        )
        == 3
    )
    error = capsys.readouterr().err.strip()
    assert "pass[1] (explode) failed: ZeroDivisionError" in error and "Traceback" not in error
    assert not out.exists()
    data = json.loads((report / "report.json").read_text())
    assert data["status"] == "pass failed" and not data["passed"]
    assert [s["name"] for s in data["steps"]] == ["optimize"]


def test_target_gate_fails_clearly_when_target_is_not_set_up(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("ONNXSLIM_CACHE", str(tmp_path / "empty-cache"))
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        '[[pass]]\nname = "optimize"\n[gates]\nmax_parity_error = 1e-4\n'
        'targets = ["arm64"]\n' + FAST
    )
    out = tmp_path / "o.onnx"
    assert (
        main(["run", str(recipe), str(MODELS / "digits_lstm.onnx"), "-o", str(out), "--json"]) == 1
    )
    captured = capsys.readouterr()
    gate = next(g for g in json.loads(captured.out)["gates"] if g["name"] == "target arm64")
    assert not gate["passed"] and "onnxslim targets setup arm64" in gate["reason"]
    assert out.is_file()


@pytest.mark.qemu
def test_int8_model_passes_the_arm64_target_gate(tmp_path: Path) -> None:
    require_target("arm64")  # skips only without QEMU; a failed set-up fails
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        presets.text("mobile-int8") + 'targets = ["arm64"]\n' + FAST + "target_feeds = 2\n"
    )
    report = api.run(recipe, MODELS / "digits_cnn.onnx", calib=str(MODELS / "digits_cnn.calib.npz"))
    gate = next(g for g in report.gates if g.name == "target arm64")
    assert gate.passed, gate.reason
    assert gate.value["host_vs_target"] <= 1e-2


def test_optimize_recipe_files_still_work_and_run_them(tmp_path: Path, capsys) -> None:
    """A recipe of `onnxslim optimize --recipe` (only [[pass]] tables) is a `run` recipe too."""
    model = MODELS / "digits_lstm.onnx"
    assert main(["optimize", str(model), "-o", str(tmp_path / "x.onnx"), "--print-recipe"]) == 0
    recipe = tmp_path / "clean.toml"
    recipe.write_text(capsys.readouterr().out)
    assert (
        main(["optimize", str(model), "-o", str(tmp_path / "opt.onnx"), "--recipe", str(recipe)])
        == 0
    )
    report = api.run(recipe, model, output=tmp_path / "run.onnx")
    assert report.passed and not report.gates  # no gates: nothing to fail
    assert [s.name for s in report.steps] == [t["name"] for t in report.recipe["pass"]]
    assert report.steps[-1].measurement.parity_error < 1e-5
    # Output and report folders are created with their parents; a file in the way is an
    # error before any work.
    api.run(recipe, model, output=tmp_path / "new" / "run.onnx", report_dir=tmp_path / "new/r")
    assert (tmp_path / "new" / "run.onnx").is_file() and (tmp_path / "new/r/report.json").is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        api.run(recipe, model, output=tmp_path / "file" / "run.onnx")
    with pytest.raises(UsageError, match="is a file"):
        api.run(recipe, model, output=tmp_path / "ok.onnx", report_dir=tmp_path / "file" / "r")
    assert not (tmp_path / "ok.onnx").exists()


def test_unmeasurable_metric_fails_its_gate(tmp_path: Path, capsys) -> None:
    """The detector has no [batch, classes] output: metric top1 cannot pass silently."""
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        '[[pass]]\nname = "optimize"\n[gates]\nmetric = "top1"\nmax_accuracy_drop = 1.0\n' + FAST
    )
    model = MODELS / "digits_detector.onnx"
    assert (
        main(
            [
                "run",
                str(recipe),
                str(model),
                "-o",
                str(tmp_path / "o.onnx"),
                "--eval",
                str(MODELS / "digits_detector.eval.npz"),
            ]
        )
        == 1
    )
    assert "not measurable" in capsys.readouterr().err


def test_run_never_times_the_activation_mode(tmp_path: Path, monkeypatch) -> None:
    # README "Reproducible": timing never decides what `run` writes. The quantizer's
    # activations = auto times static against run-time int8 (an LSTM has both), and on a
    # loaded machine the README row of digits_lstm mobile-int8-pruned flipped between them.
    from onnxslim.passes.quantize import activation_mode

    def timed(*args: object, **kwargs: object) -> None:
        raise AssertionError("run timed the activation mode")

    monkeypatch.setattr(activation_mode, "latency_ratios", timed)
    recipe = tmp_path / "r.toml"
    recipe.write_text('[data]\nmax_samples = 8\n[[pass]]\nname = "quantize"\n' + FAST)
    out = tmp_path / "lstm.onnx"
    args = ["run", str(recipe), str(MODELS / "digits_lstm.onnx"), "-o", str(out)]
    assert main([*args, "--calib", str(MODELS / "digits_lstm.calib.npz")]) == 0
