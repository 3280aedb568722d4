"""README.md's results table against what the code produces now (scripts/readme_tables.py).

Every row's file bytes (input -> output) and exit code are checked against a real
`onnxslim run PRESET` on the bundled model: the written model is byte-reproducible, so
these must match exactly. gzip bytes, top-1 and parity move with the CPU's int8
choices and are not compared here; `python scripts/readme_tables.py --write`
regenerates the whole table.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from conftest import REPO


def load_script() -> ModuleType:
    path = REPO / "scripts" / "readme_tables.py"
    spec = importlib.util.spec_from_file_location("readme_tables", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["readme_tables"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_readme_table_file_bytes_match_the_code(tmp_path: Path) -> None:
    tables = load_script()
    documented = tables.parse_rows((REPO / "README.md").read_text(encoding="utf-8"))
    expected = {(m, p) for m in tables.EXAMPLES for p in tables.PRESETS}
    assert set(documented) == expected, sorted(set(documented) ^ expected)
    stale = []
    for model, preset in sorted(expected):
        row = tables.run_row(model, preset, tmp_path, latency=False)
        cells = documented[(model, preset)]
        measured = row.markdown().strip("|").split("|")
        file_bytes, exit_code = measured[2].strip(), measured[6].strip()
        if cells[2] != file_bytes or cells[6] != exit_code:
            stale.append(
                f"{model} {preset}: README {cells[2]}, exit {cells[6]}; "
                f"code {file_bytes}, exit {exit_code}"
            )
    assert not stale, (
        "README.md's table is stale (python scripts/readme_tables.py --write):\n" + "\n".join(stale)
    )
