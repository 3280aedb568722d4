"""Recipe documents for `onnxslim run` / `search`: parse, validate, resolve data paths.

A recipe (TOML, or YAML with the same schema) names the steps, the data, the gates
and an optional search grid:

    description = "int8 for phones"
    [data]
    calib = "calib.npz"          # paths are relative to the recipe file
    eval = "eval.npz"
    image_preprocess = "scale=1/255;order=RGB"   # for folders of images (--image-preprocess)
    [[pass]]                     # `onnxslim optimize --recipe` tables, plus the steps
    name = "optimize"            # optimize | quantize | prune | cluster | any registry pass
    [[pass]]
    name = "quantize"
    method = "minmax"
    [gates]
    metric = "auto"
    max_accuracy_drop = 1.0
    [search]
    method = ["minmax", "entropy"]

The whole document is checked before any work starts; every mistake is a
UsageError naming the file and the key path (`gates.max_latency_ratio: expected
a number, got "fast"`), so a CI log points at the line to fix.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import yaml as pyyaml

from onnxslim import presets
from onnxslim.errors import UsageError
from onnxslim.images import ImagePreprocessing
from onnxslim.recipe_steps import Step, bad_value, check_step, unknown_keys
from onnxslim.suggest import did_you_mean
from onnxslim.targets import EMULATED_TARGETS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SCHEMA_KEYS = ("description", "data", "pass", "gates", "measure", "search")
DATA_KEYS = ("calib", "eval", "max_samples", "eval_max_samples", "image_preprocess")
# Old spellings of the sample caps, read (with a deprecation note) for one more release:
# `max_samples` is the name every command's --max-samples uses.
OLD_DATA_KEYS = {"calib_limit": "max_samples", "eval_limit": "eval_max_samples"}
GATE_KEYS = (
    "metric",
    "max_accuracy_drop",
    "max_parity_error",
    "min_size_reduction",
    "max_latency_ratio",
    "target_error",
    "targets",
)
MEASURE_KEYS = ("latency_runs", "parity_feeds", "target_feeds")
METRICS = ("auto", "top1", "agreement")
OBJECTIVES = ("smallest", "fastest")
# Search axes that need no step prefix: alias -> (step, option).
SEARCH_ALIASES = {
    "bits": ("cluster", "bits"),
    "sparsity": ("prune", "sparsity"),
    "method": ("quantize", "method"),
    "keep_float": ("quantize", "exclude"),
    "calibration": ("quantize", "method"),
}

_T = TypeVar("_T")


@dataclass(frozen=True)
class Gates:
    metric: str = "auto"
    max_accuracy_drop: float | None = None  # points
    max_parity_error: float | None = None  # relative RMS error of the worst output
    min_size_reduction: float | None = None  # fraction of the input file's bytes
    max_latency_ratio: float | None = None  # output median latency / input median latency
    target_error: float | None = None  # points lost at most (workflows/backoff.py)
    targets: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["targets"] = list(self.targets)
        return data


@dataclass(frozen=True)
class Measure:
    latency_runs: int = 20
    parity_feeds: int = 64
    target_feeds: int = 4


@dataclass(frozen=True)
class Recipe:
    """A validated recipe; data paths are absolute (resolved against the recipe's folder)."""

    source: str  # file name or "preset NAME" or "<dict>", for error messages and the report
    steps: tuple[Step, ...]
    description: str = ""
    calib: str | None = None
    eval: str | None = None
    max_samples: int | None = None  # calibration samples read (--max-samples)
    eval_max_samples: int | None = None  # evaluation samples read
    image_preprocess: str | None = None  # ImagePreprocessing text, for image folders
    deprecations: tuple[str, ...] = field(default=(), compare=False)  # old keys used
    gates: Gates = field(default_factory=Gates)
    measure: Measure = field(default_factory=Measure)
    search: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe as a plain document (what the report records)."""
        data: dict[str, Any] = {"description": self.description}
        data["data"] = {k: getattr(self, k) for k in DATA_KEYS if getattr(self, k) is not None}
        data["pass"] = [s.to_dict() for s in self.steps]
        data["gates"] = {k: v for k, v in self.gates.to_dict().items() if v not in (None, [])}
        data["measure"] = dataclasses.asdict(self.measure)
        if self.search:
            data["search"] = copy.deepcopy(self.search)
        return data

    def sha256(self) -> str:
        """Hash of what decides the output: steps and data contents (not paths, not gates).

        Data files enter by content, so moving the project does not change the hash
        while editing the calibration set does.
        """
        digest = {
            "pass": [s.to_dict() for s in self.steps],
            "calib": file_sha256(self.calib) if self.calib else None,
            "calib_limit": self.max_samples,  # the key's old name: hashes stay the same
        }
        if self.image_preprocess is not None:  # how images become feeds decides the output
            digest["image_preprocess"] = self.image_preprocess
        text = json.dumps(digest, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def with_data(
        self,
        calib: str | None = None,
        eval: str | None = None,
        image_preprocess: str | None = None,
    ) -> Recipe:
        """CLI `--calib` / `--eval` / `--image-preprocess` override the recipe's data."""
        changes: dict[str, Any] = {}
        if image_preprocess is not None:
            ImagePreprocessing.parse(image_preprocess)  # a UsageError before any work
            changes["image_preprocess"] = image_preprocess
        if calib is not None:
            changes["calib"] = str(Path(calib).absolute())
        if eval is not None:
            changes["eval"] = str(Path(eval).absolute())
        return dataclasses.replace(self, **changes) if changes else self

    def with_options(self, assignments: Mapping[tuple[str, str], Any]) -> Recipe:
        """A copy with step options set: {(step name, option): value} (search candidates)."""
        steps = []
        for step in self.steps:
            options = dict(step.options)
            for (name, key), value in assignments.items():
                if name == step.name:
                    options[key] = value
            steps.append(Step(step.name, options))
        recipe = dataclasses.replace(self, steps=tuple(steps))
        for step in recipe.steps:
            check_step(step, f"{self.source}: search", len(steps))
        return recipe


def file_sha256(path: str | Path) -> str:
    """A data file's content hash; a folder (of samples or images): each file's name and
    content, in name order (the files the readers take: not hidden, not in subfolders)."""
    digest = hashlib.sha256()
    path = Path(path)
    files = [path]
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.is_file() and not f.name.startswith("."))
    for file in files:
        if file is not path:
            digest.update(file.name.encode() + b"\0")
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def load_recipe(spec: str | Path | Mapping[str, Any] | Recipe) -> Recipe:
    """A Recipe from a file path, a preset name, a parsed document, or a Recipe."""
    if isinstance(spec, Recipe):
        return spec
    if isinstance(spec, Mapping):
        return parse_document(spec, source="<recipe>", base=Path.cwd())
    path = Path(spec)
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"{path}: not a recipe (a TOML or YAML text file)") from None
        return parse_text(
            text,
            source=path.name,
            base=path.parent,
            yaml=path.suffix.lower() in (".yaml", ".yml"),
        )
    if str(spec) in presets.names():
        return parse_text(presets.text(str(spec)), source=f"preset {spec}", base=Path.cwd())
    raise UsageError(
        f"{spec}: no such recipe file or preset (`onnxslim recipes` lists presets)"
        + did_you_mean(str(spec), presets.names())
    )


def parse_text(text: str, *, source: str, base: Path, yaml: bool = False) -> Recipe:
    if yaml:
        try:
            document = pyyaml.safe_load(text) or {}
        except pyyaml.YAMLError as exc:
            raise UsageError(f"{source}: not valid YAML: {str(exc).splitlines()[0]}") from exc
    else:
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"{source}: not valid TOML: {exc}") from exc
    if not isinstance(document, Mapping):
        raise UsageError(f"{source}: a recipe is a table of keys, got {type(document).__name__}")
    return parse_document(document, source=source, base=base)


def parse_document(document: Mapping[str, Any], *, source: str, base: Path) -> Recipe:
    """Validate every key of `document`; data paths resolve against `base`.

    Every error is collected and reported at once (one line, `;`-separated), so a
    recipe is fixed in one round, not one key per run.
    """
    where = source
    errors: list[str] = []

    def attempt(check: Callable[[], _T], default: _T) -> _T:
        try:
            return check()
        except UsageError as exc:
            message = str(exc)
            errors.append(
                message[len(where) + 2 :] if message.startswith(f"{where}: ") else message
            )
            return default

    attempt(lambda: unknown_keys(document, SCHEMA_KEYS, where, ""), None)
    description = document.get("description", "")
    if not isinstance(description, str):
        attempt(lambda: bad_value(where, "description", "a string", description), None)
        description = ""
    data: Mapping[str, Any] = attempt(lambda: _table(document, "data", where), {})
    attempt(lambda: unknown_keys(data, DATA_KEYS, where, "data.", old=OLD_DATA_KEYS), None)
    paths = {}
    for key in ("calib", "eval"):
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            attempt(partial(bad_value, where, f"data.{key}", "a path", value), None)
            continue
        path = (base / value).absolute()
        if not path.exists():
            errors.append(f"data.{key}: {value!r} does not exist (looked in {base})")
        paths[key] = str(path)
    limits: dict[str, int | None] = {}
    deprecations = []
    for old, new in OLD_DATA_KEYS.items():
        key = new
        if old in data and new in data:
            errors.append(f"data.{old}: the old name of data.{new}; give only data.{new}")
        elif old in data:
            key = old
            deprecations.append(
                f"{where}: data.{old} is deprecated and will be removed in the next release; "
                f"use data.{new}"
            )
        limits[new] = attempt(partial(_int, data, key, where, "data.", minimum=1), None)
    image_preprocess = data.get("image_preprocess")
    if image_preprocess is not None:
        if not isinstance(image_preprocess, str):
            errors.append(
                f"data.image_preprocess: expected text such as 'size=224,224;scale=1/255', "
                f"got {image_preprocess!r}"
            )
            image_preprocess = None
        else:
            try:
                ImagePreprocessing.parse(image_preprocess)
            except UsageError as exc:
                errors.append(f"data.image_preprocess: {exc}")
                image_preprocess = None
    tables = document.get("pass")
    steps = []
    if tables is None:
        errors.append("pass: a recipe needs at least one [[pass]] table")
    elif not isinstance(tables, list) or not all(isinstance(t, Mapping) for t in tables):
        attempt(lambda: bad_value(where, "pass", "a list of [[pass]] tables", tables), None)
    else:
        for i, table in enumerate(tables):
            options = {k: v for k, v in table.items() if k != "name"}
            name = table.get("name")
            if not isinstance(name, str):
                errors.append(f"pass[{i}].name: every [[pass]] needs a name")
                continue
            step = Step(name, options)
            attempt(partial(check_step, step, where, i), None)
            steps.append(step)
    gates = attempt(lambda: _gates(_table(document, "gates", where), where), Gates())
    measure_table: Mapping[str, Any] = attempt(lambda: _table(document, "measure", where), {})
    attempt(lambda: unknown_keys(measure_table, MEASURE_KEYS, where, "measure."), None)
    measure = attempt(
        lambda: Measure(
            **{
                k: v
                for k in MEASURE_KEYS
                if (v := _int(measure_table, k, where, "measure.", minimum=0)) is not None
            }
        ),
        Measure(),
    )
    search: dict[str, Any] = attempt(
        lambda: _search(_table(document, "search", where), where, steps), {}
    )
    if errors:
        count = f"{len(errors)} errors: " if len(errors) > 1 else ""
        raise UsageError(f"{where}: {count}{'; '.join(errors)}")
    return Recipe(
        source=source,
        steps=tuple(steps),
        description=description,
        calib=paths.get("calib"),
        eval=paths.get("eval"),
        image_preprocess=image_preprocess,
        deprecations=tuple(deprecations),
        gates=gates,
        measure=measure,
        search=search,
        **limits,
    )


def _gates(table: Mapping[str, Any], where: str) -> Gates:
    unknown_keys(table, GATE_KEYS, where, "gates.")
    metric = table.get("metric", "auto")
    if metric not in METRICS:
        bad_value(where, "gates.metric", f"one of {', '.join(METRICS)}", metric)
    values: dict[str, Any] = {"metric": metric}
    for key in GATE_KEYS[1:6]:
        value = table.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            bad_value(where, f"gates.{key}", "a number", value)
        if value < 0 or (key == "min_size_reduction" and value >= 1):
            bad_value(
                where,
                f"gates.{key}",
                "a number >= 0" + (" and < 1" if key.startswith("min") else ""),
                value,
            )
        values[key] = float(value)
    targets = table.get("targets", [])
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(targets, list) or any(t not in EMULATED_TARGETS for t in targets):
        bad_value(where, "gates.targets", f"a list of {', '.join(EMULATED_TARGETS)}", targets)
    values["targets"] = tuple(targets)
    return Gates(**values)


def _search(table: Mapping[str, Any], where: str, steps: list[Step]) -> dict[str, Any]:
    """The grid: {"objective": ..., "axes": {"step.option": [values]}} (validated)."""
    if not table:
        return {}
    objective = table.get("objective", "smallest")
    if objective not in OBJECTIVES:
        bad_value(where, "search.objective", f"one of {', '.join(OBJECTIVES)}", objective)
    names = {s.name for s in steps}
    axes: dict[str, list[Any]] = {}
    for key, values in table.items():
        if key == "objective":
            continue
        step, _, option = key.partition(".")
        if not option:
            if key not in SEARCH_ALIASES:
                raise UsageError(
                    f"{where}: search.{key}: unknown axis; use STEP.OPTION "
                    f"(quantize.method) or one of {', '.join(SEARCH_ALIASES)}"
                )
            step, option = SEARCH_ALIASES[key]
        if step not in names:
            raise UsageError(f"{where}: search.{key}: the recipe has no {step!r} step to vary")
        if not isinstance(values, list) or not values:
            bad_value(where, f"search.{key}", "a non-empty list of values", values)
        for value in values:
            trial = [
                Step(s.name, {**s.options, option: value}) if s.name == step else s for s in steps
            ]
            index = next(i for i, s in enumerate(trial) if s.name == step)
            try:
                check_step(trial[index], where, index)
            except UsageError as exc:
                raise UsageError(f"search.{key} = {value!r}: {exc}") from None
        axes[f"{step}.{option}"] = values
    if not axes:
        raise UsageError(f"{where}: search: no axis to vary (for example bits = [2, 4])")
    return {"objective": objective, "axes": axes}


def _table(document: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = document.get(key, {})
    if not isinstance(value, Mapping):
        bad_value(where, key, "a table", value)
    return value


def _int(table: Mapping[str, Any], key: str, where: str, prefix: str, minimum: int) -> int | None:
    value = table.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        bad_value(where, prefix + key, f"an integer >= {minimum}", value)
    return int(value)
