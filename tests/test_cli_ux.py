"""The CLI as a user meets it, run as a subprocess: version, help text, one name and unit
per idea, tolerance presets, written sizes, external data, the distribution-name clash."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import MODELS, make_mlp, python_m_onnxslim

from onnxslim.cli import _app as cli_app
from onnxslim.cli import main
from onnxslim.cli._app import clashing_distribution

CNN = MODELS / "digits_cnn.onnx"
CALIB = MODELS / "digits_cnn.calib.npz"
EVAL = MODELS / "digits_cnn.eval.npz"
Cli = Callable[..., subprocess.CompletedProcess[str]]


def subprocess_cli(*args: object, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m onnxslim ARGS` in a fresh interpreter, the way a shell runs it."""
    return python_m_onnxslim(*args, env=env)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    """The CLI's main() in this process (a fresh interpreter costs ~3 s of CPU per call),
    with the same exit code, stdout and stderr a shell would see, on a wide terminal."""
    monkeypatch.setenv("COLUMNS", "200")
    # The consoles read COLUMNS once, when created: under pytest-xdist another test file may
    # have imported the CLI first, so their width is set here too (a row label wrapped at 80).
    for console in (cli_app.out, cli_app.err):
        monkeypatch.setattr(console, "_width", 200)

    def run(*args: object) -> subprocess.CompletedProcess[str]:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, captured.out, captured.err)

    return run


def test_version_and_python_m() -> None:
    from onnxslim import __version__

    done = subprocess_cli("--version", env={})
    assert done.returncode == 0 and done.stdout.startswith(f"onnxslim {__version__} ")
    assert "onnxruntime" in done.stdout and done.stderr == ""
    # The distribution has its own name; import and command names stay `onnxslim`.
    assert "distribution onnxslim-edge" in done.stdout
    assert importlib.metadata.version("onnxslim-edge") == __version__


def test_help_text_shows_what_the_user_types(cli: Cli) -> None:
    optimize = cli("optimize", "--help").stdout
    assert "[[pass]]" in optimize, "rich markup must not eat the recipe table name"
    assert "<bool>" not in optimize and "--write-anyway" in optimize
    usages = [
        line.strip()
        for cmd in ("optimize", "quantize", "prune", "cluster", "export", "inspect")
        for line in cli(cmd, "--help").stdout.splitlines()
        if "Usage:" in line
    ]
    assert len(usages) == 6 and all("MODEL" in u and "{model}" not in u for u in usages), usages
    commands = ("optimize", "quantize", "prune", "cluster", "export", "validate", "inspect", "run")
    for command in (*commands, "search"):  # placeholders a user can read, one per idea
        shown = cli(command, "--help").stdout
        assert not re.search(r"<[a-z][^>]*>", shown), command  # no <bool>, <str>, <list[str]>
        for line in shown.splitlines():
            if re.match(r"\W*--(calib|eval|data) ", line):
                assert " PATH " in line, line
            if "--input-shape " in line:
                assert "NAME:D1,D2,..." in line, line
    cluster = cli("cluster", "--help").stdout
    assert "1<=x<=8" in cluster and "(1-8)" in cluster and "(2-8)" not in cluster


def test_validate_tolerance_presets_and_the_hint(tmp_path: Path, cli: Cli) -> None:
    int8 = tmp_path / "int8.onnx"
    done = cli("quantize", CNN, "-o", int8, "--calib", CALIB, "--no-latency-guard", "--no-verify")
    assert done.returncode == 0, done.stderr
    common = ["--data", EVAL, "--max-samples", "64", "--runs", "0", "--no-memory"]
    auto = cli("validate", CNN, int8, *common, "--json")
    report = json.loads(auto.stdout)
    assert auto.returncode == 0 and report["tolerance"]["preset"] == "int8", auto.stderr
    assert "QuantizeLinear" in report["tolerance"]["why"] or "holds" in report["tolerance"]["why"]
    assert report["notes"][-1].endswith(f"({report['tolerance']['why']})")  # not "(given)"
    strict = cli("validate", CNN, int8, *common, "--tolerance", "float")
    lines = strict.stderr.strip().splitlines()
    assert strict.returncode == 1 and len(lines) == 1
    assert "logits" in lines[0] and "--tolerance int8 fits" in lines[0]
    typo = cli("validate", CNN, int8, *common, "--tolerance", "flaot")
    assert typo.returncode == 2 and "did you mean 'float'?" in typo.stderr
    old = cli("validate", CNN, CNN, "--count", "2", "--runs", "0", "--no-memory")
    assert old.returncode == 0 and "--max-samples" in old.stderr and "deprecated" in old.stderr


def test_optimize_reports_the_written_size_and_external_data(tmp_path: Path, cli: Cli) -> None:
    out = tmp_path / "o.onnx"
    done = cli("optimize", CNN, "-o", out, "--external-data", "--json")
    assert done.returncode == 0, done.stderr
    data = out.with_name("o.onnx.data")
    assert data.is_file() and data.stat().st_size > out.stat().st_size
    assert json.loads(done.stdout)["output_bytes"] == out.stat().st_size + data.stat().st_size
    proto = onnx.load(str(out), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    shown = cli("inspect", out).stdout
    assert "external data included" in shown
    inline = tmp_path / "inline.onnx"
    table = cli("optimize", CNN, "-o", inline).stdout
    assert f"-> {inline.stat().st_size}" in table  # the table's last row is the written file
    assert "external data included" not in cli("inspect", inline).stdout
    # Sizes are binary units, labelled as such (MiB, not "MB").
    size = CNN.stat().st_size
    assert f"{size / 1024:.1f} KiB ({size:,} bytes)" in cli("inspect", CNN).stdout
    # A threshold above every tensor keeps them all inside the .onnx file.
    big = tmp_path / "big.onnx"
    assert cli("optimize", CNN, "-o", big, "--external-data", "--external-threshold", 10**9)
    assert onnx.load(str(big), load_external_data=False).graph.initializer[0].data_location == 0


def test_old_force_spelling_still_works_with_a_warning(tmp_path: Path, cli: Cli) -> None:
    model = make_mlp(tmp_path / "mlp.onnx")
    int8 = tmp_path / "int8.onnx"
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).random((8, 1, 8), np.float32))
    common = ["--calib", tmp_path / "calib.npz", "--no-verify", "--no-latency-guard"]
    assert cli("quantize", model, "-o", int8, *common).returncode == 0
    again = tmp_path / "again.onnx"
    refused = cli("quantize", int8, "-o", again, *common)
    assert refused.returncode == 2 and not again.exists()
    old = cli("quantize", int8, "-o", again, *common, "--force")
    assert "deprecated" in old.stderr and "--requantize" in old.stderr
    new = cli("quantize", int8, "-o", again, *common, "--requantize", "--overwrite")
    assert new.returncode == old.returncode and "deprecated" not in new.stderr
    # In optimize and export --force meant "write despite a failed check": --write-anyway.
    done = cli("optimize", model, "-o", tmp_path / "o.onnx", "--force")
    assert done.returncode == 0 and "`optimize --force` is deprecated" in done.stderr
    assert "use --write-anyway" in done.stderr


def test_quantize_max_drop_is_in_points(tmp_path: Path, cli: Cli) -> None:
    """--max-drop 1 is one point everywhere; an old fraction (0.01) is read as 1 point, with
    a warning; the accuracy-aware table says points."""
    common = ["--calib", CALIB, "--eval", EVAL, "--max-samples", "32", "--no-latency-guard"]
    done = cli("quantize", CNN, "-o", tmp_path / "a.onnx", *common, "--max-drop", "1", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["max_drop_points"] == 1
    old = cli("quantize", CNN, "-o", tmp_path / "b.onnx", *common, "--max-drop", "0.01", "--json")
    assert old.returncode == 0 and "read as a fraction (1 points)" in old.stderr
    assert json.loads(old.stdout)["max_drop_points"] == pytest.approx(1)


def test_clash_with_pypi_onnxslim_is_one_line(tmp_path: Path) -> None:
    """PyPI's OnnxSlim installs a distribution named `onnxslim`: say so, in one line."""
    site = tmp_path / "site"
    info = site / "onnxslim-0.1.98.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: onnxslim\nVersion: 0.1.98\n"
        "Summary: OnnxSlim: A Toolkit to Help Optimize Onnx Model\n"
    )
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    done = subprocess_cli("--version", env={"PYTHONPATH": path})
    warnings = [line for line in done.stderr.splitlines() if "OnnxSlim" in line]
    assert done.returncode == 0 and len(warnings) == 1
    assert "0.1.98" in warnings[0] and "separate virtual environments" in warnings[0]
    assert clashing_distribution() is None  # this environment: no clash
    readme = " ".join((MODELS.parent / "README.md").read_text().split())
    assert "distribution is `onnxslim-edge`" in readme and "separate virtual environments" in readme


def test_did_you_mean_and_every_recipe_error_at_once(tmp_path: Path, cli: Cli) -> None:
    preset = cli("run", "mobile-int9", CNN, "-o", tmp_path / "x.onnx")
    assert preset.returncode == 2 and "did you mean 'mobile-int8'?" in preset.stderr
    passes = cli("optimize", CNN, "-o", tmp_path / "x.onnx", "--passes", "fold-constant")
    assert passes.returncode == 2 and "did you mean 'fold-constants'?" in passes.stderr
    recipe = tmp_path / "bad.toml"
    recipe.write_text(
        'descripton = "x"\n[data]\ncalb = "nope.npz"\n[[pass]]\nname = "quantise"\n'
        '[[pass]]\nname = "prune"\nsparsty = 0.5\n[gates]\nmax_acuracy_drop = 1.0\n'
    )
    done = cli("run", recipe, CNN, "-o", tmp_path / "x.onnx")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "5 errors" in lines[0]
    for hint in ("'description'", "'calib'", "'quantize'", "'sparsity'", "'max_accuracy_drop'"):
        assert f"did you mean {hint}?" in lines[0]
    assert "calib_limit" not in lines[0]  # old names still read, never offered
    assert not (tmp_path / "x.onnx").exists()


def test_run_takes_input_shape_and_data(tmp_path: Path, cli: Cli) -> None:
    out = tmp_path / "r.onnx"
    done = cli(
        "run",
        "lossless",
        CNN,
        "-o",
        out,
        "--input-shape",
        "input:1,1,16,16",
        "--data",
        EVAL,
        "--json",
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert "digits_cnn.eval.npz" in report["data"]["feeds"] and report["input"]["top1"] > 0.9
    dims = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 1, 16, 16]
    both = cli("run", "lossless", CNN, "-o", out, "--overwrite", "--data", EVAL, "--eval", CALIB)
    assert both.returncode == 2 and "give one of them" in both.stderr


def test_every_command_that_runs_the_model_takes_input_shape_and_data(
    tmp_path: Path, cli: Cli
) -> None:
    """Before: quantize, prune and cluster had no --input-shape, prune and cluster no --data.
    A failed --max-drop names the output the drop was measured on and what to try next."""
    for command in ("optimize", "quantize", "prune", "cluster", "export", "validate", "run"):
        shown = cli(command, "--help").stdout
        assert "--input-shape" in shown and "--data" in shown, command
    out = tmp_path / "p.onnx"
    done = cli(
        "prune",
        CNN,
        "-o",
        out,
        "--sparsity",
        "0.9",
        "--allocation",
        "uniform",
        "--data",
        EVAL,
        "--input-shape",
        "input:1,1,16,16",
        "--max-drop",
        "0.5",
        "--runs",
        "0",
        "--target-error",
        "100",
        "--json",
    )
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert report["accuracy"]["samples"] == 540 and report["gate"]["output"] == "logits"
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert "on output 'logits' > --max-drop 0.5; next: a lower --sparsity" in line
    assert "a looser --max-drop" in line
    dims = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 1, 16, 16]
    both = cli("cluster", CNN, "-o", tmp_path / "c.onnx", "--data", EVAL, "--eval", CALIB)
    assert both.returncode == 2 and "give one of them" in both.stderr


def test_quantize_times_the_cleanup_and_the_int8_step_apart(tmp_path: Path, cli: Cli) -> None:
    done = cli(
        "quantize",
        CNN,
        "-o",
        tmp_path / "q.onnx",
        "--calib",
        CALIB,
        "--max-samples",
        "32",
        "--no-latency-guard",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    latency = json.loads(done.stdout)["latency"]
    for key in ("input_ms", "cleaned_ms", "quantized_ms"):
        assert latency[key] > 0
    assert latency["cleanup_ratio"] == pytest.approx(latency["cleaned_ms"] / latency["input_ms"])
    assert latency["int8_ratio"] == pytest.approx(latency["quantized_ms"] / latency["cleaned_ms"])
    table = cli(
        "quantize",
        CNN,
        "-o",
        tmp_path / "q2.onnx",
        "--calib",
        CALIB,
        "--max-samples",
        "32",
        "--no-latency-guard",
    ).stdout
    assert "clean-up (input -> float)" in table and "int8 step (float -> int8)" in table


def test_a_failed_gate_names_the_output_and_reports_carry_per_output_parity(
    tmp_path: Path, cli: Cli
) -> None:
    recipe = tmp_path / "strict.toml"
    recipe.write_text(
        '[[pass]]\nname = "cluster"\nbits = 2\n[gates]\nmax_parity_error = 1e-6\n'
        "[measure]\nlatency_runs = 0\n"
    )
    report = tmp_path / "dist" / "report"  # created, parents included
    done = cli("run", recipe, CNN, "-o", tmp_path / "c.onnx", "--report", report)
    assert done.returncode == 1
    line = done.stderr.strip().splitlines()[-1]
    assert "'logits'" in line and "next:" in line
    data = json.loads((report / "report.json").read_text())
    (output,) = data["output"]["outputs"]
    assert output["name"] == "logits" and output["parity_error"] > 1e-6
    assert output["top1_agreement"] is not None
    assert "| logits |" in (report / "report.md").read_text()
    assert "<td>logits</td>" in (report / "report.html").read_text()


WRITERS = {  # every command that writes a model, with what it needs besides MODEL and -o
    "optimize": ["optimize"],
    "quantize": ["quantize", "--calib", CALIB],
    "prune": ["prune"],
    "cluster": ["cluster"],
    "export": ["export"],
    "run": ["run", "lossless"],
    "search": ["search", "lossless"],
}


def _writer_args(name: str, model: Path, output: Path) -> list[object]:
    command = WRITERS[name]
    if name in ("run", "search"):  # RECIPE comes before MODEL
        return [*command, model, "-o", output]
    return [command[0], model, "-o", output, *command[1:]]


@pytest.mark.parametrize("name", list(WRITERS))
def test_output_equal_to_the_input_is_one_line_for_every_writer(
    tmp_path: Path, cli: Cli, name: str
) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(CNN.read_bytes())
    done = cli(*_writer_args(name, model, model))
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: {model}: output is the input model; pass --overwrite to replace it"
    ]
    assert model.read_bytes() == CNN.read_bytes()
    shown = cli(name, "--help").stdout
    assert "--external-data" in shown and "--external-threshold" in shown


FAST = {  # the cheapest run of each writer that still writes its model
    "quantize": ["--no-latency-guard", "--no-verify", "--max-samples", "8",
                 "--target-error", "100"],
    "prune": ["--runs", "0", "--no-verify", "--target-error", "100", "--allocation", "uniform"],
    "cluster": ["--runs", "0", "--no-verify", "--target-error", "100", "--bits", "4",
                "--allocation", "uniform", "--no-optimize"],
}  # fmt: skip


@pytest.mark.parametrize("name", ["quantize", "prune", "cluster", "export", "run"])
def test_every_writer_writes_external_data_on_request(tmp_path: Path, cli: Cli, name: str) -> None:
    out = tmp_path / "m.onnx"
    args = [*_writer_args(name, CNN, out), *FAST.get(name, [])]
    done = cli(*args, "--external-data", "--external-threshold", "0")
    assert done.returncode == 0, done.stderr
    proto = onnx.load(str(out), load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    assert out.with_name("m.onnx.data").stat().st_size > 0


def test_output_folders_are_created_and_a_file_in_the_way_is_one_line(
    tmp_path: Path, cli: Cli
) -> None:
    """Before: `optimize -o newdir/x.onnx` exited 2 (`output folder does not exist`) and
    `-o` equal to the input printed a Typer box; a shell now sees one line for the latter."""
    nested = tmp_path / "new" / "deeper" / "x.onnx"
    done = cli("optimize", CNN, "-o", nested)
    assert done.returncode == 0 and nested.is_file(), done.stderr
    # README's `run ... -o dist/model.onnx` on a fresh checkout (--report dist/report: the
    # failed-gate test below writes its report into a folder that did not exist)
    done = cli("run", "lossless", CNN, "-o", tmp_path / "dist" / "model.onnx")
    assert done.returncode == 0 and (tmp_path / "dist" / "model.onnx").is_file(), done.stderr
    (tmp_path / "file").write_text("x")
    blocked = cli("optimize", CNN, "-o", tmp_path / "file" / "x.onnx")
    assert blocked.returncode == 2 and len(blocked.stderr.strip().splitlines()) == 1
    assert "is a file" in blocked.stderr and (tmp_path / "file").read_text() == "x"
    # Usage errors Typer finds (a value out of range, a misspelled option or command) are one
    # line too, with the help to read, exit 2; they were a multi-line box.
    for args, says in (
        (("cluster", CNN, "-o", nested, "--bits", "0"), "Invalid value for '--bits'"),
        (("quantize", CNN, "-o", nested, "--max-sample", "3"), "--max-samples"),
        (("quantise", CNN), "Did you mean 'quantize'?"),
        (("optimize", CNN), "Missing option '-o'"),
    ):
        bad = cli(*args)
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
        assert bad.stderr.startswith("error: ") and says in bad.stderr and "--help`)" in bad.stderr
    same = subprocess_cli("optimize", nested, "-o", nested, env={"COLUMNS": "80"})
    assert same.returncode == 2 and same.stdout == ""
    assert (
        same.stderr
        == f"error: {nested}: output is the input model; pass --overwrite to replace it\n"
    )


def test_recipe_sample_cap_is_max_samples_and_the_old_key_warns(tmp_path: Path, cli: Cli) -> None:
    """One name per idea: `max_samples` as in --max-samples; `calib_limit` still works this
    release with a one-line warning naming the new key."""
    recipe = tmp_path / "r.toml"
    body = '[[pass]]\nname = "optimize"\n[measure]\nlatency_runs = 0\n'
    recipe.write_text(f'[data]\ncalib = "{CALIB}"\ncalib_limit = 8\n{body}')
    old = cli("run", recipe, CNN, "-o", tmp_path / "old.onnx", "--json")
    assert old.returncode == 0, old.stderr
    assert "data.calib_limit is deprecated" in old.stderr and "use data.max_samples" in old.stderr
    assert json.loads(old.stdout)["recipe"]["document"]["data"]["max_samples"] == 8
    recipe.write_text(f'[data]\ncalib = "{CALIB}"\nmax_samples = 8\n{body}')
    new = cli("run", recipe, CNN, "-o", tmp_path / "new.onnx")
    assert new.returncode == 0 and "deprecated" not in new.stderr, new.stderr
    assert "max_samples = 64" in cli("recipes", "show", "mobile-int8").stdout
