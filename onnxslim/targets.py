"""Run models on other CPUs' kernels from an x86-64 machine, under QEMU user-mode emulation.

Two targets:
- `arm64`: ONNX Runtime's own aarch64 wheel, run by an aarch64 Python from Debian's
  packages, under `qemu-aarch64-static -L ROOT`. QEMU remaps absolute paths into ROOT,
  so the guest finds its stdlib and a fake /proc/cpuinfo there (QEMU 7.2 passes the
  host's cpuinfo through, and ORT's CPU detection crashes on an x86 one).
- `x86-avx2`: this machine's Python and ORT under `qemu-x86_64-static -cpu Haswell`, so
  ORT sees a CPU without VNNI/AVX-512 and picks the AVX2 int8 kernels (whose u8s8 sums
  can saturate where VNNI's do not).

`setup` builds a target once into a cache folder; `run` executes models on feeds there.
Emulation is 60-700x slower than native: validate on a handful of feeds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

from onnxslim.errors import OnnxSlimError, RuntimeFailure, UsageError
from onnxslim.feeds import Feed

ARM64_DEBS = (
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "libc6",
    "libgcc-s1",
    "libstdc++6",
    "zlib1g",
    "libexpat1",
    "libffi8",
    "libssl3",
    "libbz2-1.0",
    "liblzma5",
    "libsqlite3-0",
    "libncursesw6",
    "libtinfo6",
    "libreadline8",
    "libuuid1",
    "libcrypt1",
)
# A Neoverse-N1 (CPU part 0xd0c) with the dot-product extension ORT's int8 kernels use.
_ARM_FEATURES = (
    "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop "
    "asimddp ssbs"
)
FAKE_ARM_CPUINFO = f"""processor\t: 0
BogoMIPS\t: 50.00
Features\t: {_ARM_FEATURES}
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x3
CPU part\t: 0xd0c
CPU revision\t: 1

"""
# Emulated validation targets (`validate --target`, gates.targets): where a model is run.
# Not the CPU kernel families quantize picks int8 types for (policy.KERNEL_TARGETS).
EMULATED_TARGETS = ("arm64", "x86-avx2")
Progress = Callable[[str], None]


class TargetUnavailable(OnnxSlimError):
    """QEMU or a package the target needs cannot be had on this machine."""

    exit_code = 2


@dataclass(frozen=True)
class TargetStatus:
    name: str
    ready: bool
    detail: str
    path: Path


def cache_root() -> Path:
    """Where targets are built: $ONNXSLIM_CACHE/targets or ~/.cache/onnxslim/targets."""
    base = os.environ.get("ONNXSLIM_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "onnxslim") / "targets"


def status(name: str) -> TargetStatus:
    """Whether `name` is set up, and what it runs (from its marker file)."""
    _check_name(name)
    folder = cache_root() / name
    marker = folder / "ready.json"
    if not marker.is_file():
        return TargetStatus(
            name, False, "not set up; run `onnxslim targets setup " + name + "`", folder
        )
    info = json.loads(marker.read_text())
    qemu = shutil.which(info.get("qemu", ""))
    if qemu is None:
        return TargetStatus(name, False, f"{info.get('qemu')} is no longer installed", folder)
    return TargetStatus(name, True, info.get("detail", ""), folder)


def setup(name: str, progress: Progress | None = None) -> TargetStatus:
    """Build target `name` into the cache (idempotent) and smoke-test it."""
    _check_name(name)
    say = progress or (lambda _msg: None)
    folder = cache_root() / name
    folder.mkdir(parents=True, exist_ok=True)
    if name == "arm64":
        detail = _setup_arm64(folder, say)
        qemu = "qemu-aarch64-static"
    else:
        detail = _setup_x86_avx2(say)
        qemu = "qemu-x86_64-static"
    (folder / "ready.json").write_text(json.dumps({"qemu": qemu, "detail": detail}))
    return status(name)


def run(
    name: str, model_paths: Sequence[Path], feeds: Sequence[Feed], *, timeout: float = 1800.0
) -> list[list[dict[str, np.ndarray]]]:
    """Run each model on every feed on target `name`; result[model][feed] = outputs."""
    state = status(name)
    if not state.ready:
        raise TargetUnavailable(f"target {name}: {state.detail}")
    with tempfile.TemporaryDirectory(prefix="onnxslim-target-") as tmp:
        work = Path(tmp)
        # Any: numpy's stub would also match a bool array to savez's keyword allow_pickle.
        arrays: dict[str, Any] = {
            f"{i}\x1f{k}": v for i, feed in enumerate(feeds) for k, v in feed.items()
        }
        np.savez(work / "feeds.npz", **arrays)
        (work / "runner.py").write_text(_RUNNER)
        job = {"models": [str(Path(p).resolve()) for p in model_paths], "feeds": len(feeds)}
        (work / "job.json").write_text(json.dumps(job))
        command = _command(name, state.path) + [str(work / "runner.py"), str(work)]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout, env=_env(name)
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeFailure(f"target {name}: run timed out after {timeout:.0f} s") from exc
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RuntimeFailure(f"target {name}: ONNX Runtime failed: {tail[0]}")
        results = []
        for m in range(len(model_paths)):
            with np.load(work / f"out{m}.npz") as archive:
                names = json.loads((work / f"out{m}.json").read_text())
                results.append(
                    [
                        {n: archive[f"{i}_{j}"] for j, n in enumerate(names)}
                        for i in range(len(feeds))
                    ]
                )
        return results


def _command(name: str, folder: Path) -> list[str]:
    if name == "arm64":
        root = folder / "root"
        return ["qemu-aarch64-static", "-L", str(root), str(root / "usr/bin/python3.11")]
    return ["qemu-x86_64-static", "-cpu", "Haswell", sys.executable]


def _env(name: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "OMP_"))}
    if name == "arm64":
        env["PYTHONPATH"] = "/opt/site"  # remapped into ROOT by qemu -L
        env["PYTHONNOUSERSITE"] = "1"
    return env


def _check_name(name: str) -> None:
    if name not in EMULATED_TARGETS:
        raise UsageError(f"unknown target {name!r}; known: {', '.join(EMULATED_TARGETS)}")


def _require(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise TargetUnavailable(
            f"{tool} not found; install the Debian package {package} (apt-get install {package})"
        )
    return path


def _setup_x86_avx2(say: Progress) -> str:
    _require("qemu-x86_64-static", "qemu-user-static")
    say("smoke test: ONNX Runtime under qemu-x86_64 -cpu Haswell")
    probe = "import onnxruntime, numpy; print(onnxruntime.__version__)"
    done = subprocess.run(
        ["qemu-x86_64-static", "-cpu", "Haswell", sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=600,
        env=_env("x86-avx2"),
    )
    if done.returncode != 0:
        raise TargetUnavailable(
            f"x86-avx2: ONNX Runtime does not start under QEMU: "
            f"{(done.stderr.strip().splitlines() or ['?'])[-1]}"
        )
    return f"qemu-x86_64 -cpu Haswell, onnxruntime {done.stdout.strip()} (host install)"


def _setup_arm64(folder: Path, say: Progress) -> str:
    _require("qemu-aarch64-static", "qemu-user-static")
    apt = _require("apt-get", "apt")
    _require("dpkg-deb", "dpkg")
    root, debs, wheels, state = (folder / d for d in ("root", "debs", "wheels", "apt"))
    for d in (
        root,
        debs,
        wheels,
        state / "lists" / "partial",
        state / "cache" / "archives" / "partial",
    ):
        d.mkdir(parents=True, exist_ok=True)
    (state / "status").touch()
    options = [
        "-o",
        "APT::Architecture=arm64",
        "-o",
        "APT::Architectures=arm64",
        "-o",
        f"Dir::State::Lists={state / 'lists'}",
        "-o",
        f"Dir::Cache={state / 'cache'}",
        "-o",
        f"Dir::State::status={state / 'status'}",
        "-o",
        "APT::Sandbox::User=root",
    ]
    if not all(any(debs.glob(f"{p}_*.deb")) for p in ARM64_DEBS):
        say("apt-get update (arm64 package lists, private state)")
        _checked([apt, *options, "update", "-qq"], "apt-get update for arm64", cwd=debs)
        say(f"apt-get download {len(ARM64_DEBS)} arm64 packages")
        _checked([apt, *options, "download", *ARM64_DEBS], "apt-get download", cwd=debs)
    say("unpacking .deb files")
    for deb in sorted(debs.glob("*.deb")):
        _checked(["dpkg-deb", "-x", str(deb), str(root)], f"dpkg-deb -x {deb.name}")
    versions = _host_versions()
    if not any(wheels.glob(f"onnxruntime-{versions['onnxruntime']}-*.whl")) or not any(
        wheels.glob(f"numpy-{versions['numpy']}-*.whl")
    ):
        say(
            f"pip download onnxruntime=={versions['onnxruntime']} "
            f"numpy=={versions['numpy']} (aarch64)"
        )
        _checked(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--only-binary=:all:",
                "--no-deps",
                "--platform",
                "manylinux_2_28_aarch64",
                "--python-version",
                "3.11",
                "--implementation",
                "cp",
                "-d",
                str(wheels),
                f"onnxruntime=={versions['onnxruntime']}",
                f"numpy=={versions['numpy']}",
            ],
            "pip download of the aarch64 wheels",
        )
    site = root / "opt" / "site"
    if site.exists():
        shutil.rmtree(site)
    site.mkdir(parents=True)
    for wheel in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
    (root / "proc").mkdir(exist_ok=True)
    (root / "proc" / "cpuinfo").write_text(FAKE_ARM_CPUINFO)
    say("smoke test: ONNX Runtime under qemu-aarch64")
    done = subprocess.run(
        _command("arm64", folder)
        + [
            "-c",
            "import onnxruntime, platform; print(platform.machine(), onnxruntime.__version__)",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=_env("arm64"),
    )
    if done.returncode != 0:
        raise TargetUnavailable(
            f"arm64: ONNX Runtime does not start under QEMU: "
            f"{(done.stderr.strip().splitlines() or ['?'])[-1]}"
        )
    return f"qemu-aarch64, {done.stdout.strip()} (Neoverse-N1 cpuinfo)"


def _host_versions() -> dict[str, str]:
    return {"onnxruntime": onnxruntime.__version__, "numpy": np.__version__}


def _checked(command: list[str], what: str, cwd: Path | None = None) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TargetUnavailable(f"{what} failed: {exc}") from exc
    if done.returncode != 0:
        lines = [ln for ln in (done.stderr or done.stdout).strip().splitlines() if ln.strip()]
        errors = (
            [ln for ln in lines if ln.startswith(("E:", "ERROR"))] or lines[-1:] or ["no output"]
        )
        raise TargetUnavailable(f"{what} failed: {errors[0]}")


# Runs inside the target: numpy and onnxruntime only, single thread, no graph rewriting
# beyond what a deployed session does (ORT_ENABLE_ALL).
_RUNNER = r"""
import json, sys
from pathlib import Path
import numpy as np
import onnxruntime as ort

work = Path(sys.argv[1])
job = json.loads((work / "job.json").read_text())
archive = np.load(work / "feeds.npz")
feeds = [{} for _ in range(job["feeds"])]
for key in archive.files:
    index, name = key.split("\x1f", 1)
    feeds[int(index)][name] = archive[key]
options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
for m, path in enumerate(job["models"]):
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    inputs = [i.name for i in session.get_inputs()]
    outputs = {}
    for i, feed in enumerate(feeds):
        for j, value in enumerate(session.run(names, {k: feed[k] for k in inputs})):
            outputs[f"{i}_{j}"] = value
    np.savez(work / f"out{m}.npz", **outputs)
    (work / f"out{m}.json").write_text(json.dumps(names))
"""
