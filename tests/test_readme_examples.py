"""README.md's examples, run as a user would: a README example that fails is a failing test.

Every code block of README.md (indented or fenced) holding a command that starts with
`onnxslim` is run in a fresh folder by bash (redirections included; in `a && onnxslim
...` only the onnxslim part), commands of one block in order; every ```python block
runs with `python -c`. The folder holds a copy of models/, and `model.onnx`,
`calib.npz`, `eval.npz` (the digits_cnn example and its data), the names the prose
examples use. A block the test machine cannot run is marked in README with
`<!-- readme-test: skip REASON -->` just before it; the test skips it with that reason.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import MODELS, REPO

README = REPO / "README.md"
SKIP_MARK = re.compile(r"<!--\s*readme-test:\s*skip\s+(.*?)\s*-->")
TIMEOUT = 300


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the block's first line in README.md
    kind: str  # "shell" or "python"
    text: str
    skip: str | None  # the README's reason, when marked


def code_blocks(text: str) -> list[tuple[int, str, str, str | None]]:
    """(line, fence language or "", body, skip reason) of every code block in `text`."""
    lines = text.splitlines()
    blocks: list[tuple[int, str, str, str | None]] = []
    pending_skip: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        mark = SKIP_MARK.search(line)
        if mark:
            pending_skip = mark.group(1)
            i += 1
            continue
        fence = re.match(r"^\s*(```+|~~~+)\s*([\w+-]*)", line)
        if fence:
            end = i + 1
            while end < len(lines) and not lines[end].strip().startswith(fence.group(1)):
                end += 1
            blocks.append(
                (i + 1, fence.group(2).lower(), "\n".join(lines[i + 1 : end]), pending_skip)
            )
            pending_skip, i = None, end + 1
            continue
        after_blank = i == 0 or not lines[i - 1].strip()
        if line.startswith("    ") and line.strip() and after_blank:
            end = i
            while end < len(lines) and (lines[end].startswith("    ") or not lines[end].strip()):
                end += 1
            body = "\n".join(row[4:] for row in lines[i:end]).strip("\n")
            blocks.append((i + 1, "", body, pending_skip))
            pending_skip, i = None, end
            continue
        if line.strip():
            pending_skip = None  # a mark applies to the very next block only
        i += 1
    return blocks


def onnxslim_commands(body: str) -> list[str]:
    """The `onnxslim ...` commands of a shell block, continuations joined, comments dropped."""
    logical = re.sub(r"\\\n\s*", " ", body).splitlines()
    commands = []
    for row in logical:
        row = re.sub(r"^\s*\$\s+", "", row)
        row = re.split(r"\s+#", row, maxsplit=1)[0].strip()
        for part in row.split("&&"):
            if part.strip().startswith("onnxslim "):
                commands.append(part.strip())
    return commands


def readme_blocks() -> list[Block]:
    found = []
    for line, language, body, skip in code_blocks(README.read_text(encoding="utf-8")):
        if language == "python":
            found.append(Block(line, "python", body, skip))
        elif language in ("", "sh", "bash", "shell", "console") and onnxslim_commands(body):
            found.append(Block(line, "shell", body, skip))
    return found


BLOCKS = readme_blocks()


def _id(block: Block) -> str:
    first = onnxslim_commands(block.text)[0] if block.kind == "shell" else "python"
    return f"L{block.line}-{first[:48]}"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    shutil.copytree(MODELS, tmp_path / "models")
    for alias, name in (
        ("model.onnx", "digits_cnn.onnx"),
        ("calib.npz", "digits_cnn.calib.npz"),
        ("eval.npz", "digits_cnn.eval.npz"),
    ):
        shutil.copy(MODELS / name, tmp_path / alias)
    return tmp_path


def _env() -> dict[str, str]:
    """This interpreter's scripts folder first on PATH, so `onnxslim` is the one under test."""
    scripts = Path(sys.executable).parent
    script = scripts / "onnxslim"
    if not script.is_file() and shutil.which("onnxslim") is None:
        pytest.fail("the onnxslim command is not installed (pip install -e .)")
    return dict(os.environ, PATH=f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}")


def test_readme_has_examples() -> None:
    """The extractor sees the README's runnable examples (an empty list would pass anything)."""
    kinds = [b.kind for b in BLOCKS]
    assert kinds.count("shell") >= 2 and "python" in kinds, BLOCKS
    commands = [c for b in BLOCKS for c in onnxslim_commands(b.text) if b.kind == "shell"]
    assert any(c.startswith("onnxslim run mobile-int8") for c in commands), commands
    skipped = [b for b in BLOCKS if b.skip]
    assert len(skipped) <= 3, skipped  # marked blocks stay very few


@pytest.mark.parametrize("block", BLOCKS, ids=[_id(b) for b in BLOCKS])
def test_readme_example_runs(block: Block, workdir: Path) -> None:
    if block.skip:
        pytest.skip(f"README.md line {block.line} is marked: {block.skip}")
    env = _env()
    if block.kind == "python":
        # A deprecated name in README's own code is an error: the README shows the new ones.
        steps = [[sys.executable, "-W", "error::DeprecationWarning:__main__", "-c", block.text]]
    else:
        steps = [["bash", "-c", command] for command in onnxslim_commands(block.text)]
    for step in steps:
        done = subprocess.run(
            step, cwd=workdir, env=env, capture_output=True, text=True, timeout=TIMEOUT
        )
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        assert done.returncode == 0, (
            f"README.md line {block.line}: `{step[-1][:200]}` exited {done.returncode}:\n{tail}"
        )
        assert "is deprecated" not in done.stderr, f"README.md line {block.line}: {tail}"
