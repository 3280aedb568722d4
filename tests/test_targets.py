"""Cross-target validation under QEMU: a quantized example on arm64 and x86-avx2 kernels.

Skipped, with the reason, only where QEMU user-mode emulation is not installed
(.ci/run installs Debian's qemu-user-static); where QEMU is installed, a target that
cannot be set up fails the test. Targets are built into the cache once.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import MODELS
from target_helpers import needs_qemu, require_target

from onnxslim import targets
from onnxslim.cli import main

CNN = MODELS / "digits_cnn.onnx"


def test_unknown_target_is_usage_error(capsys) -> None:
    assert main(["targets", "setup", "riscv"]) == 2
    assert "unknown target" in capsys.readouterr().err


def test_missing_qemu_is_clear_error(monkeypatch, capsys) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    monkeypatch.setenv("ONNXSLIM_CACHE", str(Path("/nonexistent-onnxslim-cache")))
    assert main(["targets", "setup", "x86-avx2"]) == 2
    assert "qemu-user-static" in capsys.readouterr().err


@pytest.fixture(scope="module")
def quantized_cnn(tmp_path_factory) -> Path:
    from onnxslim import api

    out = tmp_path_factory.mktemp("q") / "cnn_int8.onnx"
    # The example is too small for int8 to pay on x86; the guard would keep it float.
    # Built for the AVX2 kernels (7-bit weights), the strictest target: it must then
    # compute the same on every CPU, whichever this host is.
    result = api.quantize(
        CNN, calib=MODELS / "digits_cnn.calib.npz", latency_guard=False, target="x86-avx2"
    )
    api.save(result.model, out)
    import onnx

    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops, ops
    return out


@needs_qemu
def test_quantized_cnn_on_arm64_and_avx2(quantized_cnn: Path, capsys) -> None:
    for name in targets.EMULATED_TARGETS:
        require_target(name)
    assert main(["targets", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert all(t["ready"] for t in listed)
    with np.load(MODELS / "digits_cnn.eval.npz") as data:
        sample = {"input": data["input"][:3]}
    feeds = Path(quantized_cnn.parent / "feeds.npz")
    np.savez(feeds, **sample)
    code = main(
        [
            "validate",
            str(CNN),
            str(quantized_cnn),
            "--data",
            str(feeds),
            "--target",
            "arm64",
            "--target",
            "x86-avx2",
            "--target-feeds",
            "3",
            "--atol",
            "0.5",
            "--rtol",
            "0.1",
            "--runs",
            "0",
            "--no-memory",
            "--json",
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report
    by_target = {t["target"]: t for t in report["targets"]}
    assert set(by_target) == {"arm64", "x86-avx2"}
    for t in by_target.values():
        assert t["feeds"] == 3
        logits = t["on_target"][0]
        assert logits["top1_agreement"] == 1.0 and logits["cosine"] > 0.99
        # The float reference is the same on every CPU up to float rounding.
        assert t["reference_host_vs_target"][0]["max_abs"] < 1e-3
        assert isinstance(t["candidate_differs_from_host"], bool)


@needs_qemu
def test_full_range_int8_is_flagged_where_avx2_kernels_saturate(tmp_path: Path, capsys) -> None:
    """A model built for VNNI (8-bit weights) saturates in the AVX2 u8s8 kernel's 16-bit
    sums: validating it on x86-avx2 from a VNNI host must report that it computes
    differently there; from an AVX2 host both sides run the same kernels."""
    require_target("x86-avx2")
    from onnxslim import api
    from onnxslim.passes.quantize.policy import detect_target

    out = tmp_path / "cnn_vnni.onnx"
    api.save(
        api.quantize(
            CNN, calib=MODELS / "digits_cnn.calib.npz", latency_guard=False, target="x86-vnni"
        ).model,
        out,
    )
    with np.load(MODELS / "digits_cnn.eval.npz") as data:
        np.savez(tmp_path / "feeds.npz", input=data["input"][:3])
    main(
        [
            "validate",
            str(CNN),
            str(out),
            "--data",
            str(tmp_path / "feeds.npz"),
            "--target",
            "x86-avx2",
            "--target-feeds",
            "3",
            "--runs",
            "0",
            "--no-memory",
            "--json",
        ]
    )
    (report,) = json.loads(capsys.readouterr().out)["targets"]
    host_has_vnni = detect_target() == "x86-vnni"
    assert report["candidate_differs_beyond_rounding"] is host_has_vnni, report
    # the float reference agrees on both CPUs whatever the int8 model does
    assert report["reference_host_vs_target"][0]["max_abs"] < 1e-3
