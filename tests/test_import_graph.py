"""The import graph of onnxslim/ and passes/, read from the source (ast: nothing is imported).

Arrows only go down (../shared/DESIGN.md "Layers"): cli -> api -> workflows -> reports
and gates -> the pass manager and catalogue -> passes -> analyses, data, evaluation ->
io, errors. Imports inside functions count as arrows too: a cycle hidden in a function
body is still a cycle. A new module must be placed in LAYERS below.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Import name -> folder (pyproject maps the folder passes/ to onnxslim.passes).
SOURCES = {"onnxslim": ROOT / "onnxslim", "onnxslim.passes": ROOT / "passes"}

# Top to bottom. A module belongs to the first layer holding its name or a package above it;
# "onnxslim" alone is the package's __init__ (the public names, re-exported from the API).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("cli", ("onnxslim.cli", "onnxslim.__main__")),
    ("api", ("onnxslim", "onnxslim.api")),
    ("workflows", ("onnxslim.workflows",)),
    (
        "reports and gates",
        ("onnxslim.report", "onnxslim.report_html", "onnxslim.report_markdown", "onnxslim.gates"),
    ),
    (
        "pass manager and catalogue",
        (
            "onnxslim.pipeline",
            "onnxslim.registry",
            "onnxslim.recipe",
            "onnxslim.recipe_steps",
            "onnxslim.presets",
        ),
    ),
    ("passes", ("onnxslim.passes",)),
    (
        "analyses, data, evaluation",
        (
            "onnxslim.activations",
            "onnxslim.layer_rows",
            "onnxslim.column_energy",
            "onnxslim.probing",
            "onnxslim.calibration",
            "onnxslim.feed_checks",
            "onnxslim.npz_stream",
            "onnxslim.images",
            "onnxslim.image_checks",
            "onnxslim.feeds",
            "onnxslim.feed_search",
            "onnxslim.validation",
            "onnxslim.parity",
            "onnxslim.evaluation",
            "onnxslim.agreement",
            "onnxslim.blindness",
            "onnxslim.resolution",
            "onnxslim.decisions",
            "onnxslim.margins",
            "onnxslim.runtime",
            "onnxslim.budget",
            "onnxslim.loop_bounds",
            "onnxslim.targets",
            "onnxslim.cross_target",
            "onnxslim.inspection",
            "onnxslim.tolerance",
        ),
    ),
    (
        "io and errors",
        (
            "onnxslim.io",
            "onnxslim.sources",
            "onnxslim.errors",
            "onnxslim.graphs",
            "onnxslim._version",
            "onnxslim.outputs",
            "onnxslim.suggest",
            "onnxslim.model_checks",
            "onnxslim.shapes",
        ),
    ),
]

# Modules that may be imported inside a function, and why (heavy, optional or rarely used).
DEFERRED_OK = {
    "ray": "optional extra [ray], ~1 s to import; only `search --ray` needs it",
    "matplotlib": "optional extra [report], ~0.5 s to import; only report.html draws plots",
    "PIL": "optional extra [images]; only image folders need it",
    "onnxscript": "~1 s to import; only folding and opset conversion need it",
    "onnxruntime.transformers": "ORT's transformer tools; only export --fp16 needs them",
    "onnxruntime.tools": "ORT's converter tools (~0.1 s); only export needs them",
}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module (a project module, or the name as written)
    line: int
    local: bool  # inside a function body

    def __str__(self) -> str:
        where = "inside a function, " if self.local else ""
        return f"{self.source} -> {self.target} ({where}line {self.line})"


def modules(sources: dict[str, Path] = SOURCES) -> dict[str, Path]:
    """Import name -> file, for every module under the source folders."""
    found = {}
    for package, folder in sources.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def imports(known: dict[str, Path]) -> list[Import]:
    """Every import statement of every module; project targets resolved to their module."""

    def resolve(name: str) -> str:
        probe = name
        while probe and probe not in known:
            probe = probe.rpartition(".")[0]
        return probe or name

    found = []
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node, local in _walk(tree, local=False):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                # `from pkg import sub` imports the module pkg.sub when there is one.
                targets = [
                    f"{module}.{a.name}" if f"{module}.{a.name}" in known else module
                    for a in node.names
                ]
            for target in dict.fromkeys(resolve(t) for t in targets):
                if target != name:
                    found.append(Import(name, target, node.lineno, local))
    return found


def _walk(node: ast.AST, local: bool) -> Iterable[tuple[ast.Import | ast.ImportFrom, bool]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, local
        inside = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        yield from _walk(child, inside)


def find_cycle(edges: Iterable[tuple[str, str]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None (iterative depth-first search)."""
    graph: dict[str, list[str]] = {}
    for a, b in edges:
        graph.setdefault(a, []).append(b)
        graph.setdefault(b, [])
    state = dict.fromkeys(graph, 0)  # 0 new, 1 on the current path, 2 done
    for start in sorted(graph):
        if state[start]:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state[nxt] == 1:
                return path[path.index(nxt) :] + [nxt]
            elif state[nxt] == 0:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (length of the matching name, layer index)
    for index, (_, names) in enumerate(LAYERS):
        for name in names:
            matches = module == name or (name != "onnxslim" and module.startswith(name + "."))
            if matches and (best is None or len(name) > best[0]):
                best = (len(name), index)
    return None if best is None else best[1]


KNOWN = modules()
IMPORTS = imports(KNOWN)
PROJECT = [i for i in IMPORTS if i.target in KNOWN]


def _is(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_graph_is_read_from_every_module() -> None:
    # The reader must see the arrows the layering is about, or every test below passes vacuously.
    assert len(KNOWN) > 80 and "onnxslim.passes.quantize.static" in KNOWN
    pairs = {(i.source, i.target) for i in PROJECT}
    assert ("onnxslim.api", "onnxslim.workflows.quantize") in pairs
    assert ("onnxslim.passes.prune.channels", "onnxslim.passes.prune.groups") in pairs


def test_reader_resolves_relative_and_function_level_imports(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.sub import b\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text("def f():\n    from .. import a\n    from . import c\n")
    (package / "sub" / "c.py").write_text("import os\n")
    known = modules({"pkg": package})
    found = {(i.source, i.target, i.local) for i in imports(known)}
    assert ("pkg.a", "pkg.sub.b", False) in found
    assert ("pkg.sub.b", "pkg.a", True) in found
    assert ("pkg.sub.b", "pkg.sub.c", True) in found
    assert ("pkg.sub.c", "os", False) in found
    assert find_cycle((i.source, i.target) for i in imports(known)) == [
        "pkg.a",
        "pkg.sub.b",
        "pkg.a",
    ]


def test_no_import_cycle() -> None:
    cycle = find_cycle((i.source, i.target) for i in PROJECT)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(m for m in KNOWN if layer_of(m) is None)
    assert not unplaced, f"add these modules to LAYERS in {Path(__file__).name}: {unplaced}"


def test_arrows_only_go_down() -> None:
    upward = [
        f"{i} ({LAYERS[layer_of(i.source) or 0][0]} imports {LAYERS[layer_of(i.target) or 0][0]})"
        for i in PROJECT
        if layer_of(i.source) is not None
        and layer_of(i.target) is not None
        and layer_of(i.target) < layer_of(i.source)  # type: ignore[operator]
    ]
    assert not upward, "imports going up:\n" + "\n".join(upward)


FORBIDDEN = [
    (
        "a pass imports the CLI, the API, a workflow or the pass manager",
        lambda i: (
            _is(i.source, "onnxslim.passes")
            and (
                i.target == "onnxslim"
                or _is(i.target, "onnxslim.cli", "onnxslim.api", "onnxslim.workflows")
                or _is(i.target, "onnxslim.pipeline")
            )
        ),
    ),
    (
        "the API imports the CLI",
        lambda i: _is(i.source, "onnxslim.api") and _is(i.target, "onnxslim.cli"),
    ),
    (
        "a report imports a workflow",
        lambda i: (
            _is(i.source, "onnxslim.report", "onnxslim.report_html", "onnxslim.report_markdown")
            and _is(i.target, "onnxslim.workflows")
        ),
    ),
    (
        "io, data or evaluation imports a pass",
        lambda i: (
            layer_of(i.source) is not None
            and LAYERS[layer_of(i.source)][0] in ("analyses, data, evaluation", "io and errors")  # type: ignore[index]
            and _is(i.target, "onnxslim.passes")
        ),
    ),
]


@pytest.mark.parametrize("rule", FORBIDDEN, ids=[r[0] for r in FORBIDDEN])
def test_forbidden_arrows(rule: tuple[str, object]) -> None:
    what, matches = rule
    hits = [str(i) for i in PROJECT if matches(i)]  # type: ignore[operator]
    assert not hits, f"{what}:\n" + "\n".join(hits)


def test_function_level_imports_only_defer_heavy_dependencies() -> None:
    unexplained = [
        str(i) for i in IMPORTS if i.local and not any(_is(i.target, name) for name in DEFERRED_OK)
    ]
    assert not unexplained, (
        "import at module level (function-level imports only defer a heavy optional "
        "dependency, listed in DEFERRED_OK with the reason):\n" + "\n".join(unexplained)
    )


_NOT_A_REASON = re.compile(r"noqa(: ?[A-Z0-9, ]+)?|type: ?ignore(\[[^\]]*\])?")


def _says_why(line: str) -> bool:
    """A `#` comment with words other than noqa / type: ignore markers."""
    _, hash_, comment = line.partition("#")
    return bool(hash_) and any(c.isalpha() for c in _NOT_A_REASON.sub("", comment))


def has_reason(lines: list[str], lineno: int) -> bool:
    """The import's line, an import line just above it, or the comment line above that
    block says why the import is deferred."""
    index = lineno - 1
    if _says_why(lines[index]):
        return True
    index -= 1
    while index >= 0 and lines[index].strip().startswith(("import ", "from ")):
        if _says_why(lines[index]):
            return True
        index -= 1
    return index >= 0 and lines[index].strip().startswith("#") and _says_why(lines[index])


def test_reason_reader() -> None:
    lines = ["def f():", "    # ray: optional and heavy", "    import ray", "    import ray.util"]
    assert has_reason(lines, 3) and has_reason(lines, 4)
    assert not has_reason(["def f():", "    import PIL  # noqa: F401"], 2)
    assert has_reason(["def f():", "    import PIL  # noqa: F401  (optional extra)"], 2)


def test_every_function_level_import_says_why() -> None:
    texts = {name: path.read_text(encoding="utf-8").splitlines() for name, path in KNOWN.items()}
    silent = [str(i) for i in IMPORTS if i.local and not has_reason(texts[i.source], i.line)]
    assert not silent, (
        "a function-level import needs a one-line reason (a comment on its line or the "
        "line above):\n" + "\n".join(silent)
    )


def test_readme_layout_names_every_engine_module() -> None:
    # README's Layout section is the newcomer's map: a module it does not name is unplaced there.
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    layout = text[text.index("## Layout") :]
    layout = layout[: layout.index("\n## ")] if "\n## " in layout else layout
    words = set(re.findall(r"[A-Za-z_]+", layout))
    engine = [
        m
        for m in KNOWN
        if m.count(".") == 1 or _is(m, "onnxslim.workflows")
        if not _is(m, "onnxslim.passes", "onnxslim.cli") and m != "onnxslim.__main__"
    ]
    missing = sorted(m for m in engine if m.rpartition(".")[2] not in words)
    assert len(engine) > 40
    assert not missing, f"README.md's Layout section does not name: {missing}"
