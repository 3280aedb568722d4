"""CLI behaviour across commands: exit codes, one-line errors, --debug, --help, --json.

Exit codes: 0 ok, 1 a parity check failed, 2 bad usage or bad input, 3 a pass failed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import typer
from conftest import make_mlp
from onnx import TensorProto, helper
from test_validation import make_if_model, scaled_copy

from onnxslim.cli import cli_logging, main
from onnxslim.cli._app import app

NO_TIMING = ["--runs", "0", "--no-memory"]


def _custom_op_model(path: Path, *, imported: bool) -> Path:
    """A node in domain com.example: without its opset import io.load refuses the file;
    with it the file loads, but ONNX Runtime knows no such op. Same interface as make_mlp."""
    node = helper.make_node("Foo", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph(
        [node],
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    opsets = [helper.make_opsetid("", 17)] + (
        [helper.make_opsetid("com.example", 1)] if imported else []
    )
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _bad_model(kind: str, folder: Path) -> Path:
    if kind == "missing":
        return folder / "absent.onnx"
    if kind == "directory":
        (folder / "folder.onnx").mkdir()
        return folder / "folder.onnx"
    if kind == "not_onnx":
        (folder / "text.onnx").write_text("this is not a protobuf, just text\n" * 20)
        return folder / "text.onnx"
    if kind == "truncated":
        whole = make_mlp(folder / "whole.onnx").read_bytes()
        (folder / "whole.onnx").unlink()
        (folder / "half.onnx").write_bytes(whole[: len(whole) // 2])
        return folder / "half.onnx"
    if kind == "undeclared_domain":
        return _custom_op_model(folder / "undeclared.onnx", imported=False)
    if kind == "unknown_to_ort":
        return _custom_op_model(folder / "unknown.onnx", imported=True)
    raise AssertionError(kind)


Command = Callable[[Path, Path, Path], list[str]]
COMMANDS: dict[str, Command] = {
    "inspect": lambda bad, good, folder: ["inspect", str(bad)],
    "validate-ref": lambda bad, good, folder: ["validate", str(bad), str(good), *NO_TIMING],
    "validate-cand": lambda bad, good, folder: ["validate", str(good), str(bad), *NO_TIMING],
    "optimize": lambda bad, good, folder: ["optimize", str(bad), "-o", str(folder / "out.onnx")],
}
BAD_MODELS = [
    "missing",
    "directory",
    "not_onnx",
    "truncated",
    "undeclared_domain",
    "unknown_to_ort",
]


def _one_line_error(captured: pytest.CaptureResult[str]) -> str:
    err = captured.err.strip()
    assert err, "an error must be reported on stderr"
    assert "\n" not in err, f"expected one line, got:\n{err}"
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("kind", BAD_MODELS)
@pytest.mark.parametrize("command", list(COMMANDS))
def test_bad_model_is_one_line_exit_2(tmp_path: Path, capsys, command: str, kind: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    good = make_mlp(tmp_path / "good.onnx")
    bad = _bad_model(kind, work)
    before = sorted(p.name for p in work.iterdir())
    code = main(COMMANDS[command](bad, good, work))
    captured = capsys.readouterr()
    if kind == "unknown_to_ort" and command == "inspect":
        assert code == 0, "inspect reads the file without running it; the op is listed"
        assert "com.example::Foo" in captured.out
        return
    assert code == 2, captured.err
    message = _one_line_error(captured)
    assert message.startswith("error:")
    if kind == "unknown_to_ort":
        assert "Foo" in message
        if command.startswith("validate"):
            assert str(bad) in message, "the error must say which of the two models failed"
    assert sorted(p.name for p in work.iterdir()) == before, "nothing may be left behind"


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(tmp_path: Path, capsys, where: str) -> None:
    args = ["inspect", str(tmp_path / "absent.onnx")]
    args = ["--debug", *args] if where == "before" else [*args, "--debug"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "no such file" in err


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("case", ["wrong_name", "wrong_dtype", "wrong_shape", "not_data", "absent"])
def test_data_that_does_not_fit_is_one_line_exit_2(
    mlp_path: Path, tmp_path: Path, capsys, case: str
) -> None:
    rng = np.random.default_rng(0)
    data = {
        "wrong_name": lambda: _npz(
            tmp_path / "d.npz", features=rng.standard_normal((2, 1, 8)).astype(np.float32)
        ),
        "wrong_dtype": lambda: _npz(tmp_path / "d.npz", x=rng.standard_normal((2, 1, 8))),
        "wrong_shape": lambda: _npz(
            tmp_path / "d.npz", x=rng.standard_normal((2, 1, 5)).astype(np.float32)
        ),
        "not_data": lambda: (
            (tmp_path / "d.npz").write_bytes(b"PK\x03\x04 broken zip") and tmp_path / "d.npz"
        ),
        "absent": lambda: tmp_path / "absent.npz",
    }[case]()
    code = main(["validate", str(mlp_path), str(mlp_path), "--data", str(data), *NO_TIMING])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    _one_line_error(captured)
    assert captured.out == ""


def test_every_command_has_help(capsys) -> None:
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    assert {"inspect", "validate", "optimize", "passes"} <= set(commands)
    for name in commands:
        assert main([name, "--help"]) == 0, name
        out = capsys.readouterr().out
        assert "Usage" in out and name in out, name
    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    assert all(name in top for name in commands)


def test_validate_same_model_json_exit_0(tmp_path: Path, capsys) -> None:
    model = make_if_model(tmp_path / "if.onnx")
    assert (
        main(
            [
                "validate",
                str(model),
                str(model),
                "--runs",
                "2",
                "--warmup",
                "1",
                "--no-memory",
                "--json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is True and report["feeds"]["generated"] is True
    assert [o["name"] for o in report["outputs"]] == ["logits", "score", "cls"]
    assert all(o["max_abs"] == 0 for o in report["outputs"])
    assert (
        report["outputs"][0]["top1_agreement"] == 1.0
        and report["outputs"][1]["top1_agreement"] is None
    )
    assert report["latency"]["reference"]["runs"] == 2 and report["threads"] == 1
    assert report["outputs"][0]["snr_db"] == "inf"


def test_validate_failed_parity_exits_1_after_the_report(
    mlp_path: Path, tmp_path: Path, capsys
) -> None:
    candidate = scaled_copy(mlp_path, tmp_path / "scaled.onnx", "w2", 1.05)
    assert main(["validate", str(mlp_path), str(candidate), *NO_TIMING, "--json"]) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["passed"] is False and report["outputs"][0]["max_abs"] > 0
    assert "parity check failed" in _one_line_error(captured)
    # Tolerances wide enough for a 5% weight change: the same pair passes.
    assert (
        main(
            ["validate", str(mlp_path), str(candidate), *NO_TIMING, "--atol", "10", "--rtol", "0.2"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "max abs" in out and "passed" in out and "generated inputs" in out


def test_validate_tables_with_data_latency_and_memory(
    mlp_path: Path, tmp_path: Path, capsys
) -> None:
    data = _npz(
        tmp_path / "d.npz", x=np.random.default_rng(1).standard_normal((3, 2, 8)).astype(np.float32)
    )
    assert (
        main(
            [
                "validate",
                str(mlp_path),
                str(mlp_path),
                "--data",
                str(data),
                "--runs",
                "3",
                "--warmup",
                "1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert f"{data} (3 feeds)" in out and "no --data given" not in out
    assert "median ms" in out and "peak memory" in out and "MiB" in out


def test_validate_interface_mismatch_and_bad_options_exit_2(
    mlp_path: Path, tmp_path: Path, capsys
) -> None:
    other = make_if_model(tmp_path / "if.onnx")
    assert main(["validate", str(mlp_path), str(other), *NO_TIMING]) == 2
    assert "different inputs" in _one_line_error(capsys.readouterr())
    assert main(["validate", str(mlp_path), str(mlp_path), "--runs", "-1"]) == 2
    assert main(["validate", str(mlp_path)]) == 2


def test_inspect_json_and_table(mlp_path: Path, capsys) -> None:
    assert main(["inspect", str(mlp_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert sum(summary["op_histogram"].values()) == summary["nodes"] == 6
    assert summary["inputs"][0] == {"name": "x", "dtype": "float32", "shape": ["N", 8]}
    assert summary["file_bytes"] == mlp_path.stat().st_size and summary["macs"] > 0
    assert main(["inspect", str(mlp_path), "--input-shape", "x:4,8"]) == 0
    out = capsys.readouterr().out
    assert "float32 [N, 8]" in out, "shapes must not be eaten as rich markup"
    assert "MatMul" in out and "estimated MACs" in out
    assert main(["inspect", str(mlp_path), "--input-shape", "x:4,eight"]) == 2


def test_library_warnings_stay_off_stderr_unless_debug(capsys) -> None:
    noisy = logging.getLogger("onnx_ir.passes.common.some_pass")
    level = noisy.getEffectiveLevel()
    with cli_logging(debug=False):
        noisy.warning("Skipped deduplication of initializer 'w'")
        noisy.error("a real error still shows")
    err = capsys.readouterr().err
    assert "Skipped deduplication" not in err and "a real error still shows" in err
    with cli_logging(debug=True):
        noisy.warning("Skipped deduplication of initializer 'w'")
    assert "Skipped deduplication" in capsys.readouterr().err
    assert noisy.getEffectiveLevel() == level, "main() must leave logging as it found it"
