"""Data as an input (passes/_run_data.py): passes hold options only; the workflow opens the
user's data once and hands it to the run."""

from __future__ import annotations

import collections
import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import pytest
from prune_fixtures import ffn

import onnxslim.calibration as calibration
from onnxslim import api
from onnxslim.passes._run_data import RunData, TakesData, run_pass
from onnxslim.registry import available_passes

# What an option may be made of: what a recipe table or a CLI flag can write.
OPTION_TYPES = {bool, int, float, str, type(None), tuple, frozenset}
DATA_NAMES = {"calib", "check", "feeds", "progress", "accept", "requested", "probe_feeds"}


def _parts(annotation: Any) -> set[Any]:
    """Every type an annotation is built from (unions and generics unpacked)."""
    if annotation is Ellipsis:
        return set()
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_parts(a) for a in typing.get_args(annotation)))
    if origin is not None:
        return {origin}.union(*(_parts(a) for a in typing.get_args(annotation)))
    return {annotation}


@pytest.mark.parametrize("name, cls", sorted(available_passes().items()))
def test_no_pass_holds_data_or_progress(name: str, cls: type) -> None:
    assert dataclasses.is_dataclass(cls), f"{name}: options in a frozen dataclass"
    for f in dataclasses.fields(cls):
        assert f.name not in DATA_NAMES, f"{name}.{f.name}: data is an argument of the run"
        hint = _field_type(cls, f)
        odd = _parts(hint) - OPTION_TYPES
        assert not odd, f"{name}.{f.name}: {hint} is not an option type ({odd})"


def _field_type(cls: type, f: dataclasses.Field[Any]) -> Any:
    """A field's annotation resolved in the module of the class that declares it (class-wide
    get_type_hints would also evaluate ClassVars, some of which do not evaluate)."""
    if not isinstance(f.type, str):
        return f.type
    owner = next(c for c in cls.__mro__ if f.name in vars(c).get("__annotations__", {}))
    return eval(f.type, vars(sys.modules[owner.__module__]))  # noqa: S307 (our own source)


def test_the_check_sees_a_data_field() -> None:
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Holds(ir.passes.InPlacePass):
        calib: calibration.FeedSource | None = None

        def call(self, model: ir.Model) -> ir.passes.PassResult:
            return ir.passes.PassResult(model, False)

    (field,) = dataclasses.fields(Holds)
    assert _parts(_field_type(Holds, field)) - OPTION_TYPES


def test_the_pass_manager_hands_data_only_to_passes_that_take_it() -> None:
    seen: list[RunData] = []

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Reads(TakesData, ir.passes.InPlacePass):
        def run(self, model: ir.Model, data: RunData) -> ir.passes.PassResult:
            seen.append(data)
            return ir.passes.PassResult(model, False)

    model = ir.serde.deserialize_model(ffn())
    data = RunData(feeds=[{}], progress=lambda *_: None)
    run_pass(Reads(), model, data)
    Reads()(model)  # a plain call: no data
    assert seen == [data, RunData()]
    assert not run_pass(available_passes()["remove-unused"](), model, data).modified


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 1, 6, 32)).astype(np.float32)
    np.savez(folder / "calib.npz", x=x)
    np.savez(folder / "eval.npz", x=x[::-1], labels=rng.integers(0, 32, (40, 6)))
    return {"calib": folder / "calib.npz", "eval_data": folder / "eval.npz"}


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> collections.Counter[str]:
    """How many times each data file is opened (by name) during the test."""
    counts: collections.Counter[str] = collections.Counter()
    real = calibration._open_path

    def counting(path: Path, *args: Any, **kwargs: Any) -> Any:
        counts[path.name] += 1
        return real(path, *args, **kwargs)

    monkeypatch.setattr(calibration, "_open_path", counting)
    return counts


@pytest.mark.parametrize("job", ["prune", "cluster"])
@pytest.mark.parametrize("given", [("calib", "eval_data"), ("calib",)])
def test_prune_and_cluster_open_each_data_file_once(
    job: str, given: tuple[str, ...], files: dict[str, Path], opened: collections.Counter[str]
) -> None:
    """The held-out check, the pass, the parity feeds and top-1 take from one opening of
    each file (before: the evaluation data 3 times, calibration data alone 4 times)."""
    run = api.prune if job == "prune" else api.cluster
    result = run(ir.serde.deserialize_model(ffn()), runs=0, **{k: files[k] for k in given})
    assert result.target is not None and result.validation is not None
    assert opened == {files[k].name: 1 for k in given}


def test_run_opens_the_recipes_calibration_data_once(
    files: dict[str, Path], tmp_path: Path, opened: collections.Counter[str]
) -> None:
    """The evaluator and every step re-read one stream (before: once per step and the
    evaluator, 4 openings for this recipe)."""
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'[data]\ncalib = "{files["calib"]}"\n[[pass]]\nname = "optimize"\n'
        '[[pass]]\nname = "prune"\nallocation = "uniform"\nsparsity = 0.3\n'
    )
    outcome = api.run(recipe, ir.serde.deserialize_model(ffn()))
    assert [s.name for s in outcome.steps] == ["optimize", "prune"]
    assert opened == {"calib.npz": 1}
