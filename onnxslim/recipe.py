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
from onnxslim.registry import (
    CLUSTER_PASS,
    PRUNE_METHODS,
    PRUNE_STORAGE,
    QUANTIZE_MODES,
    available_passes,
    make_cluster_pass,
    make_pass,
    make_prune_pass,
    make_quantize_pass,
    pass_class,
    prune_pass_class,
    quantize_pass_class,
)
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
STEPS = ("optimize", "quantize", "prune", "cluster")
OBJECTIVES = ("smallest", "fastest")
# Search axes that need no step prefix: alias -> (step, option).
SEARCH_ALIASES = {
    "bits": ("cluster", "bits"),
    "sparsity": ("prune", "sparsity"),
    "method": ("quantize", "method"),
    "keep_float": ("quantize", "exclude"),
    "calibration": ("quantize", "method"),
}
# Options of the high-level steps that are not fields of their pass classes.
_STEP_EXTRAS: dict[str, dict[str, Any]] = {
    "quantize": {"mode": "static", "max_drop": None},
    "prune": {"method": "magnitude", "sparsity": 0.5, "storage": "packed"},
    "cluster": {"bits": 4, "strip_metadata": True},
    "optimize": {},
}


@dataclass(frozen=True)
class Step:
    """One entry of the recipe's `[[pass]]` list: a name and its options (JSON values)."""

    name: str
    options: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.name if self.name in STEPS else "pass"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.options}


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
            _check_step(step, f"{self.source}: search", len(steps))
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

    attempt(lambda: _unknown(document, SCHEMA_KEYS, where, ""), None)
    description = document.get("description", "")
    if not isinstance(description, str):
        attempt(lambda: _bad(where, "description", "a string", description), None)
        description = ""
    data: Mapping[str, Any] = attempt(lambda: _table(document, "data", where), {})
    attempt(lambda: _unknown(data, (*DATA_KEYS, *OLD_DATA_KEYS), where, "data."), None)
    paths = {}
    for key in ("calib", "eval"):
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            attempt(partial(_bad, where, f"data.{key}", "a path", value), None)
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
        attempt(lambda: _bad(where, "pass", "a list of [[pass]] tables", tables), None)
    else:
        for i, table in enumerate(tables):
            options = {k: v for k, v in table.items() if k != "name"}
            name = table.get("name")
            if not isinstance(name, str):
                errors.append(f"pass[{i}].name: every [[pass]] needs a name")
                continue
            step = Step(name, options)
            attempt(partial(_check_step, step, where, i), None)
            steps.append(step)
    gates = attempt(lambda: _gates(_table(document, "gates", where), where), Gates())
    measure_table: Mapping[str, Any] = attempt(lambda: _table(document, "measure", where), {})
    attempt(lambda: _unknown(measure_table, MEASURE_KEYS, where, "measure."), None)
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


def _check_step(step: Step, where: str, index: int) -> None:
    """Build the step's pass once (without data) so bad options fail before any work."""
    key = f"pass[{index}]"
    options = step.options
    if step.name in STEPS:
        extras = _STEP_EXTRAS[step.name]
        classes = _step_classes(step, where, key)
        known = set(extras) | {
            f.name
            for cls in classes
            for f in dataclasses.fields(cls)
            if f.init and not f.metadata.get("internal")
        }
        _unknown(options, sorted(known), where, f"{key}.", what=f"option of {step.name}")
        for name, default in extras.items():
            if name in options:
                _check_value(options[name], default, None, where, f"{key}.{name}")
        fields = {f.name: f for cls in classes for f in dataclasses.fields(cls)}
        for name, value in options.items():
            if name in fields and name not in extras:
                f = fields[name]
                _check_value(value, f.default, f.metadata.get("choices"), where, f"{key}.{name}")
        if step.name == "quantize" and options.get("max_drop") is not None:
            if options.get("mode", "static") != "static":
                raise UsageError(f"{where}: {key}.max_drop: accuracy-aware mode needs mode static")
        try:
            _build(step)
        except UsageError as exc:
            raise UsageError(f"{where}: {key} ({step.name}): {exc}") from None
        return
    cls = available_passes().get(step.name)
    if cls is None:
        raise UsageError(
            f"{where}: {key}.name: unknown pass {step.name!r}; expected one of "
            f"{', '.join(STEPS)} or a pass `onnxslim passes` lists"
            f"{did_you_mean(step.name, [*STEPS, *available_passes()])}"
        )
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    _unknown(options, sorted(fields), where, f"{key}.", what=f"option of {step.name}")
    for name, value in options.items():
        f = fields[name]
        if not f.metadata.get("data"):
            _check_value(value, f.default, f.metadata.get("choices"), where, f"{key}.{name}")
    try:
        make_pass(
            step.name, {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
        )
    except UsageError as exc:
        raise UsageError(f"{where}: {key} ({step.name}): {exc}") from None


def _step_classes(step: Step, where: str, key: str) -> list[type]:
    options = step.options
    if step.name == "quantize":
        mode = options.get("mode", "static")
        if mode not in QUANTIZE_MODES:
            _bad(where, f"{key}.mode", f"one of {', '.join(QUANTIZE_MODES)}", mode)
        return [quantize_pass_class(mode)]
    if step.name == "prune":
        method = options.get("method", "magnitude")
        if method not in PRUNE_METHODS:
            _bad(where, f"{key}.method", f"one of {', '.join(PRUNE_METHODS)}", method)
        return [prune_pass_class(method)]
    if step.name == "cluster":
        return [pass_class(CLUSTER_PASS)]
    return []


def _build(step: Step) -> None:
    """Construct the step's pass with its options (the pass's own checks run here)."""
    options: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in step.options.items()
    }
    if step.name == "quantize":
        mode = options.pop("mode", "static")
        options.pop("max_drop", None)
        make_quantize_pass(mode, **options)
    elif step.name == "prune":
        method = options.pop("method", "magnitude")
        sparsity = options.pop("sparsity", 0.5)
        storage = options.pop("storage", "packed")
        if storage not in PRUNE_STORAGE:
            raise UsageError(
                f"storage: expected one of {', '.join(PRUNE_STORAGE)}, got {storage!r}"
            )
        if not 0 <= sparsity < 1:
            raise UsageError(f"sparsity: expected 0 <= S < 1, got {sparsity}")
        if method == "channels":
            options.setdefault("ratio", sparsity)
        elif method == "magnitude":
            options.setdefault("sparsity", sparsity)
        make_prune_pass(method, **options)
    elif step.name == "cluster":
        options.pop("strip_metadata", None)
        make_cluster_pass(**options)


def _check_value(value: Any, default: Any, choices: Any, where: str, key: str) -> None:
    """The value's JSON type must match the option's default (bool, number, string, list)."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            _bad(where, key, "true or false", value)
    elif isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _bad(where, key, "a number", value)
        if (
            isinstance(default, int)
            and not isinstance(default, bool)
            and isinstance(value, float)
            and not value.is_integer()
        ):
            _bad(where, key, "an integer", value)
    elif isinstance(default, str):
        if not isinstance(value, str):
            _bad(where, key, "a string", value)
    elif isinstance(default, (tuple, frozenset)):
        if not isinstance(value, list):
            _bad(where, key, "a list", value)
    if choices is not None and value not in choices:
        _bad(where, key, f"one of {', '.join(map(str, choices))}", value)


def _gates(table: Mapping[str, Any], where: str) -> Gates:
    _unknown(table, GATE_KEYS, where, "gates.")
    metric = table.get("metric", "auto")
    if metric not in METRICS:
        _bad(where, "gates.metric", f"one of {', '.join(METRICS)}", metric)
    values: dict[str, Any] = {"metric": metric}
    for key in GATE_KEYS[1:6]:
        value = table.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _bad(where, f"gates.{key}", "a number", value)
        if value < 0 or (key == "min_size_reduction" and value >= 1):
            _bad(
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
        _bad(where, "gates.targets", f"a list of {', '.join(EMULATED_TARGETS)}", targets)
    values["targets"] = tuple(targets)
    return Gates(**values)


def _search(table: Mapping[str, Any], where: str, steps: list[Step]) -> dict[str, Any]:
    """The grid: {"objective": ..., "axes": {"step.option": [values]}} (validated)."""
    if not table:
        return {}
    objective = table.get("objective", "smallest")
    if objective not in OBJECTIVES:
        _bad(where, "search.objective", f"one of {', '.join(OBJECTIVES)}", objective)
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
            _bad(where, f"search.{key}", "a non-empty list of values", values)
        for value in values:
            trial = [
                Step(s.name, {**s.options, option: value}) if s.name == step else s for s in steps
            ]
            index = next(i for i, s in enumerate(trial) if s.name == step)
            try:
                _check_step(trial[index], where, index)
            except UsageError as exc:
                raise UsageError(f"search.{key} = {value!r}: {exc}") from None
        axes[f"{step}.{option}"] = values
    if not axes:
        raise UsageError(f"{where}: search: no axis to vary (for example bits = [2, 4])")
    return {"objective": objective, "axes": axes}


def _table(document: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = document.get(key, {})
    if not isinstance(value, Mapping):
        _bad(where, key, "a table", value)
    return value


def _int(table: Mapping[str, Any], key: str, where: str, prefix: str, minimum: int) -> int | None:
    value = table.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _bad(where, prefix + key, f"an integer >= {minimum}", value)
    return int(value)


def _unknown(
    table: Mapping[str, Any], known: Any, where: str, prefix: str, what: str = "key"
) -> None:
    """Every unknown key of `table` at once, each with its closest known key."""
    known = list(known)
    bad = [
        f"{prefix}{key}: unknown {what}{did_you_mean(str(key), known)}"
        for key in table
        if key not in known
    ]
    if bad:
        raise UsageError(f"{where}: {'; '.join(bad)} (expected one of {', '.join(known)})")


def _bad(where: str, key: str, expected: str, value: Any) -> None:
    raise UsageError(f"{where}: {key}: expected {expected}, got {json.dumps(value, default=str)}")
