"""Calibration from images, as a user meets it: --image-preprocess on every command that
reads data and in the recipe's data table, the preprocessing printed and recorded, and a
guess the model contradicts refused (exit 2, one line saying what to pass).

The folder of PNGs is written here; the CLI runs as a subprocess where the exact process
behaviour is the point (the refusal, the printed line), in-process (`main()`, the same
exit code, stdout and stderr) elsewhere, since a fresh interpreter costs ~4 s of CPU.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import MODELS, python_m_onnxslim
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import onnxslim
from onnxslim.cli import main
from onnxslim.errors import UsageError

CNN = MODELS / "digits_cnn.onnx"  # one-channel 16x16 float input, first op a Conv
Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def pngs(tmp_path: Path) -> Path:
    """Six RGB photos-to-be of 20x24 pixels: the model sizes differ, so resizing runs too."""
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(6):
        pixels = (np.random.default_rng(i).random((20, 24, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"photo_{i}.png")
    return folder


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.setenv("COLUMNS", "200")

    def run(*args: object) -> subprocess.CompletedProcess[str]:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, captured.out, captured.err)

    return run


def shell(*args: object) -> subprocess.CompletedProcess[str]:
    return python_m_onnxslim(*args, env={"COLUMNS": "200"})


def image_model(
    path: Path,
    *,
    first: tuple[str, float] | None = None,
    metadata: dict[str, str] | None = None,
    dtype: int = TensorProto.FLOAT,
) -> Path:
    """x [N,3,16,16] -> (optional first op with a constant) -> Conv -> pool -> logits [N,4]."""
    nodes, inits, x = [], [], "img"
    if dtype != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", ["img"], ["f"], to=TensorProto.FLOAT))
        x = "f"
    if first is not None:
        inits.append(helper.make_tensor("c", TensorProto.FLOAT, [], [first[1]]))
        nodes.append(helper.make_node(first[0], [x, "c"], ["s"], name="normalize"))
        x = "s"
    weight = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    inits.append(numpy_helper.from_array(weight, "w"))
    nodes += [
        helper.make_node("Conv", [x, "w"], ["y"]),
        helper.make_node("GlobalAveragePool", ["y"], ["p"]),
        helper.make_node("Flatten", ["p"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("img", dtype, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    for key, value in (metadata or {}).items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, path)
    return path


def test_a_doubtful_guess_is_refused_in_one_line_and_the_stated_one_is_printed(
    tmp_path: Path, pngs: Path, cli: Cli
) -> None:
    """The issue's trap: a model that takes 0..255 (it divides by 255 itself) was fed
    pixels scaled by 1/255 with nothing said. Now: exit 2, one line naming the evidence
    and what to pass, nothing written; with it stated, one line says what is applied."""
    model = image_model(tmp_path / "div255.onnx", first=("Div", 255.0))
    out = tmp_path / "out" / "model.onnx"
    refused = shell("optimize", model, "-o", out, "--data", pngs)
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in refused.stderr
    assert "first op on input 'img' (Div 'normalize') divides it by 255" in lines[0]
    assert "--image-preprocess 'scale=1'" in lines[0]
    assert not out.exists()

    done = cli("optimize", model, "-o", out, "--data", pngs, "--image-preprocess", "scale=1")
    assert done.returncode == 0, done.stderr
    notice = [line for line in done.stderr.splitlines() if "images read as" in line]
    assert notice == [
        f"--data {pngs}: images read as size=16,16;layout=NCHW;scale=1;mean=0;std=1;"
        "order=RGB;resize=stretch;channels=3; guessed: mean, order, std"
    ]
    assert out.is_file()


@pytest.mark.parametrize(
    ("kind", "evidence", "suggestion"),
    [
        ("mul", "multiplies it by 0.003922", "scale=1"),
        ("caffe-mean", "(Sub 'normalize') subtracts 123.7", "scale=1"),
        (
            "bgr",
            "metadata 'preprocess' names BGR channel order",
            "order=BGR;scale=1;mean=104,117,123",
        ),
        ("winml", "metadata 'Image.BitmapPixelFormat' names BGR", "order=BGR"),
        ("uint8", "input 'img' is uint8", "order=RGB"),
    ],
)
def test_each_kind_of_evidence_is_refused_by_cli_and_api(
    tmp_path: Path, pngs: Path, cli: Cli, kind: str, evidence: str, suggestion: str
) -> None:
    model = image_model(
        tmp_path / f"{kind}.onnx",
        first={"mul": ("Mul", 1 / 255), "caffe-mean": ("Sub", 123.7)}.get(kind),
        metadata={
            "bgr": {"preprocess": "BGR, mean=[104, 117, 123]"},
            "winml": {"Image.BitmapPixelFormat": "Bgr8"},
        }.get(kind),
        dtype=TensorProto.UINT8 if kind == "uint8" else TensorProto.FLOAT,
    )
    done = cli("optimize", model, "-o", tmp_path / "o.onnx", "--data", pngs)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert evidence in done.stderr and f"--image-preprocess '{suggestion}'" in done.stderr
    with pytest.raises(UsageError, match="will not guess the image preprocessing"):
        onnxslim.optimize(str(model), data=pngs)
    # What the message says to pass is accepted.
    done = cli("optimize", model, "-o", tmp_path / "o.onnx", "--data", pngs,
               "--image-preprocess", suggestion, "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    recorded = json.loads(done.stdout)["image_preprocessing"]["--data"]["preprocessing"]
    assert all(item in recorded.split(";") for item in suggestion.split(";"))


STATED = "scale=1/255;mean=0.5;std=0.25;order=RGB"


@pytest.mark.parametrize(
    ("command", "option"),
    [
        (["quantize", CNN, "--no-latency-guard", "--calib"], "--calib"),
        (["prune", CNN, "--runs", "0", "--calib"], "--calib"),
        (["cluster", CNN, "--bits", "4", "--calib"], "--calib"),
        (["validate", CNN, CNN, "--runs", "0", "--no-memory", "--data"], "--data"),
        (["export", CNN, "--data"], "--data"),
    ],
)
def test_every_command_that_reads_data_applies_prints_and_records_it(
    tmp_path: Path, pngs: Path, cli: Cli, command: list, option: str
) -> None:
    output = [] if command[0] == "validate" else ["-o", tmp_path / "out.onnx"]
    done = cli(*command, pngs, *output, "--image-preprocess", STATED, "--json")
    assert done.returncode == 0, done.stderr
    applied = f"size=16,16;layout=NCHW;{STATED};resize=stretch;channels=1"
    assert f"{option} {pngs}: images read as {applied}\n" in done.stderr
    report = json.loads(done.stdout)
    assert report["image_preprocessing"] == {
        option: {"folder": str(pngs), "preprocessing": applied}
    }


def test_recipe_data_table_and_run_report(tmp_path: Path, pngs: Path, cli: Cli) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'[data]\ncalib = "{pngs.name}"\nimage_preprocess = "{STATED}"\n'
        '[[pass]]\nname = "quantize"\nlatency_guard = false\n[measure]\nlatency_runs = 0\n'
    )
    done = cli("run", recipe, CNN, "-o", tmp_path / "o.onnx", "--report", tmp_path / "rep")
    assert done.returncode == 0, done.stderr
    applied = f"size=16,16;layout=NCHW;{STATED};resize=stretch;channels=1"
    assert f"data.calib {pngs}: images read as {applied}\n" in done.stderr
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["data"]["image_preprocessing"]["data.calib"]["preprocessing"] == applied
    line = f"image preprocessing of data.calib `{pngs}`: `{applied}`"
    assert line in (tmp_path / "rep" / "report.md").read_text()
    assert applied in (tmp_path / "rep" / "report.html").read_text()

    # search settles the folders before any candidate runs: a doubtful guess stops it.
    recipe.write_text(
        f'[data]\ncalib = "{pngs.name}"\n[[pass]]\nname = "quantize"\n'
        '[search]\nmethod = ["minmax", "entropy"]\n'
    )
    div = image_model(tmp_path / "div.onnx", first=("Div", 255.0))
    done = cli("search", recipe, div, "-o", tmp_path / "s.onnx")
    assert done.returncode == 2 and "--image-preprocess 'scale=1'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_bad_preprocessing_text_and_misplaced_option_are_one_line_errors(
    tmp_path: Path, pngs: Path, cli: Cli
) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'[data]\ncalib = "{pngs.name}"\nimage_preprocess = "scale=1/255;odrer=RGB"\n'
        '[[pass]]\nname = "quantize"\n'
    )
    done = cli("run", recipe, CNN, "-o", tmp_path / "o.onnx")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "data.image_preprocess: image preprocessing: unknown key 'odrer'" in done.stderr
    calib = MODELS / "digits_cnn.calib.npz"
    done = cli("quantize", CNN, "-o", tmp_path / "q.onnx", "--calib", calib,
               "--image-preprocess", "scale=1")  # fmt: skip
    assert done.returncode == 2 and "applies to folders of images" in done.stderr
    done = cli("optimize", CNN, "-o", tmp_path / "o.onnx", "--data", pngs,
               "--image-preprocess", "layout=NHCW")  # fmt: skip
    assert done.returncode == 2 and "image layout must be NCHW or NHWC" in done.stderr
    assert not (tmp_path / "o.onnx").exists() and not (tmp_path / "q.onnx").exists()


def test_python_api_takes_an_image_folder_with_its_preprocessing(
    tmp_path: Path, pngs: Path
) -> None:
    div = image_model(tmp_path / "div.onnx", first=("Div", 255.0))
    with pytest.raises(UsageError, match=r"onnxslim.ImageFolder\(folder, '...'\) in Python"):
        onnxslim.validate(div, div, feeds=pngs, runs=0, measure_memory=False)
    report = onnxslim.validate(
        div, div, feeds=onnxslim.ImageFolder(pngs, "scale=1"), runs=0, measure_memory=False
    )
    assert report.passed and "scale=1;mean=0;std=1;order=RGB" in report.summary()
