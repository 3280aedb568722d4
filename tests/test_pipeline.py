"""Recipes, the registry and the pass loop: text round trips, records, bad recipes."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from onnxslim import io
from onnxslim.errors import PassFailed, UsageError
from onnxslim.pipeline import Pipeline, run_pipeline
from onnxslim.registry import BUILTIN_PASSES, DEFAULT_OPTIMIZE, available_passes, describe

RECIPE = """[[pass]]
name = "fold-constants"
size_limit = 2048

[[pass]]
name = "eliminate-identity"

[[pass]]
name = "deduplicate-initializers"
size_limit = 1048576
"""


def test_recipe_prints_back_as_the_same_text() -> None:
    pipeline = Pipeline.from_toml(RECIPE)
    assert pipeline.to_toml() == RECIPE
    assert Pipeline.from_toml(pipeline.to_toml()) == pipeline


def test_default_pipeline_round_trips() -> None:
    pipeline = Pipeline.from_names(DEFAULT_OPTIMIZE)
    assert Pipeline.from_toml(pipeline.to_toml()) == pipeline


@pytest.mark.parametrize(
    "text, message",
    [
        ('[[pass]]\nname = "no-such-pass"\n', "unknown pass"),
        ('[[pass]]\nname = "fold-constants"\nbogus = 1\n', "unknown option"),
        ("[[pass]]\nsize_limit = 1\n", "has no name"),
        ("not = [toml", "not valid TOML"),
        ('title = "x"\n', "only [[pass]] tables"),
    ],
)
def test_bad_recipes_are_usage_errors(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        Pipeline.from_toml(text)


def test_every_registered_pass_is_a_frozen_documented_dataclass() -> None:
    for name, cls in available_passes().items():
        assert dataclasses.is_dataclass(cls), name
        info = describe(name, cls)
        assert info.summary, f"{name} has no one-line description"
        for option in info.options:
            assert option.help, f"{name}.{option.name} has no help"
        instance = cls()
        with pytest.raises(dataclasses.FrozenInstanceError):
            instance.x_not_a_field = 1


def test_records_time_bytes_and_change(mlp_path: Path) -> None:
    model = io.load(mlp_path)
    result = run_pipeline(model, Pipeline.from_names(["eliminate-identity", "eliminate-identity"]))
    first, second = result.records
    assert first.status == "changed" and second.status == "unchanged"
    assert first.nodes_after == first.nodes_before - 1
    assert first.bytes_before == first.bytes_after > 0 and first.seconds >= 0


def test_a_raising_pass_is_pass_failed_or_rolled_back(mlp_path: Path) -> None:
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Explodes(BUILTIN_PASSES["eliminate-identity"]):  # type: ignore[misc,valid-type]
        def call(self, model):  # noqa: ANN001, ANN202
            model.graph.remove(model.graph.node(0), safe=False)
            raise RuntimeError("boom")

    model = io.load(mlp_path)
    nodes = len(model.graph)
    with pytest.raises(PassFailed, match="boom"):
        run_pipeline(model, Pipeline((Explodes(),)))
    result = run_pipeline(model, Pipeline((Explodes(),)), rollback_failures=True)
    assert result.records[0].status == "failed" and "boom" in result.records[0].reason
    assert len(result.model.graph) == nodes, "the half-done change is not kept"
