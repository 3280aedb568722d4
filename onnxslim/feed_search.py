"""Generated inputs the model accepts: free dimensions sized by running the original model.

Setting every free dimension to 1 is not enough for real models: a detector's
upsampling joins fail on a 1x1 image, an audio model's reflect Pad fails on a
1-sample clip. So each free dimension gets, in order: the user's `--input-shape`;
the same name on another input; the exporter's hints (metadata such as
Ultralytics' `imgsz`, a metadata key named like the dimension, the channel count
of a Conv reading the input); then a short ladder (spatial 32 .. 640, sequence and
audio 16 .. 16000), batch dimensions staying 1. Each candidate is run once on the
original model (one session, stopping at the first that runs, under a time and
memory budget); the old all-ones shapes are tried last. When none runs, the plan
says why and how to fix it, and the caller decides (a lossless run goes on without
its check; `validate` stops with exit 2): inputs the tool made up never fail a run.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import onnx_ir as ir

from onnxslim.budget import Budget
from onnxslim.errors import BudgetExceeded, ModelLoadError, RuntimeFailure
from onnxslim.feeds import (
    DEFAULT_FEED_BYTES,
    Feed,
    FeedTooLarge,
    InputSpec,
    check_feed_size,
    generate_feeds,
    input_specs,
)
from onnxslim.runtime import Session, SessionConfig

SPATIAL_LADDER = (32, 64, 128, 224, 320, 640)
SEQUENCE_LADDER = (16, 160, 1600, 16000)
# One probe run of the original model: the smallest sizes that run come first and take
# well under a second on the devmodels; it must stay under the CPU limit a caller
# (a CI job, the fuzz runner: 15-30 s) gives the whole command.
PROBE_SECONDS = 10.0

_BATCH = re.compile(r"batch|^(n|b|bs|num_?samples?)$", re.IGNORECASE)
_SPATIAL = re.compile(r"height|width|^(h|w|img_?[hw]|image_?size|size)$", re.IGNORECASE)
DimKey = str | tuple[str, int]  # a dimension's name, or (input, axis) when unnamed


@dataclass
class FeedPlan:
    """Generated feeds the original model ran on, or why there are none."""

    feeds: list[Feed] | None
    shapes: dict[str, tuple[int, ...]]
    description: str
    problem: str | None = None  # one line with the fix, when `feeds` is None


def plan_feeds(
    model: ir.Model,
    count: int,
    *,
    seed: int = 0,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    max_bytes: int = DEFAULT_FEED_BYTES,
) -> FeedPlan:
    """`count` generated feeds with sizes the original `model` is measured to run on."""
    specs = input_specs(model)
    candidates = candidate_shapes(model, specs, shapes or {})
    session: Session | None = None
    failures: list[str] = []
    index = 0
    while index < len(candidates):
        chosen = candidates[index]
        last = index == len(candidates) - 1
        try:
            check_feed_size(specs, chosen, max_bytes)
            feed = generate_feeds(specs, 1, seed=seed, shapes=chosen, max_bytes=max_bytes)[0]
            if session is None:
                session = _session(model)
            session.run(feed)
        except (FeedTooLarge, BudgetExceeded) as exc:
            failures.append(f"{_sizes(specs, chosen)}: {exc}")
            index = len(candidates) - 1 if not last else index + 1  # larger sizes cost more
            continue
        except RuntimeFailure as exc:
            failures.append(f"{_sizes(specs, chosen)}: {exc}")
            index += 1
            continue
        feeds = generate_feeds(specs, count, seed=seed, shapes=chosen, max_bytes=max_bytes)
        description = f"generated inputs ({count} feeds)"
        if chosen != candidates[-1]:  # sizes other than the all-ones ones: say which
            description = f"generated inputs ({count} feeds, {_sizes(specs, chosen)})"
        return FeedPlan(feeds, chosen, description)
    reason = failures[-1] if failures else "no input sizes to try"
    problem = (
        f"the input model does not run on generated inputs ({len(failures)} input "
        f"size(s) tried; last {reason}); give --data or --input-shape"
    )
    return FeedPlan(None, {}, "no generated inputs", problem)


_PROBE_CONFIG = SessionConfig(optimization="basic", budget=Budget(seconds=PROBE_SECONDS))


def _session(model: ir.Model) -> Session:
    """A session on the input model; one ORT cannot create is bad input (exit 2)."""
    try:
        return Session(model, _PROBE_CONFIG)
    except RuntimeFailure as exc:
        raise ModelLoadError(f"ONNX Runtime cannot load the model: {exc}") from exc


def candidate_shapes(
    model: ir.Model, specs: list[InputSpec], overrides: Mapping[str, tuple[int, ...]]
) -> list[dict[str, tuple[int, ...]]]:
    """Input shapes to try, best guess first, the all-ones shapes last, no repeats."""
    fixed = _known_sizes(model, specs, overrides)
    hinted = {**fixed, **_metadata_hints(model, specs, fixed)}
    roles = _roles(specs)
    fills: list[dict[DimKey, int]] = []
    if len(hinted) > len(fixed):
        fills.append(_fill(roles, hinted, SPATIAL_LADDER[0], SEQUENCE_LADDER[0]))
    for rung in range(max(len(SPATIAL_LADDER), len(SEQUENCE_LADDER))):
        spatial = SPATIAL_LADDER[min(rung, len(SPATIAL_LADDER) - 1)]
        sequence = SEQUENCE_LADDER[min(rung, len(SEQUENCE_LADDER) - 1)]
        fills.append(_fill(roles, fixed, spatial, sequence))
    fills.append(_fill(roles, fixed, 1, 1))
    result: list[dict[str, tuple[int, ...]]] = []
    # A dimension declared 0 is read as free, but ORT holds a model to its declared
    # sizes: the zero-size shapes as declared come first (valid models of zero-size
    # inputs were refused: every generated size failed "invalid dimensions").
    if any(d == 0 for s in specs for d in s.shape or ()):
        declared = _fill(roles, fixed, 1, 1)
        result.append({s.name: _shape_of(s, overrides, declared, keep_zero=True) for s in specs})
    for sizes in fills:
        shapes = {s.name: _shape_of(s, overrides, sizes) for s in specs}
        if shapes not in result:
            result.append(shapes)
    return result


def _shape_of(
    spec: InputSpec,
    overrides: Mapping[str, tuple[int, ...]],
    sizes: Mapping[DimKey, int],
    *,
    keep_zero: bool = False,
) -> tuple[int, ...]:
    if spec.name in overrides:
        return tuple(overrides[spec.name])
    if spec.shape is None:
        return ()  # rank unknown: a scalar is the only guess
    return tuple(
        d
        if isinstance(d, int) and (d > 0 or (keep_zero and d == 0))
        else sizes[_key(spec, axis, d)]
        for axis, d in enumerate(spec.shape)
    )


def _key(spec: InputSpec, axis: int, dim: int | str | None) -> DimKey:
    return dim if isinstance(dim, str) else (spec.name, axis)


def _free(specs: list[InputSpec]) -> list[tuple[InputSpec, int, DimKey]]:
    return [
        (spec, axis, _key(spec, axis, d))
        for spec in specs
        if spec.shape is not None
        for axis, d in enumerate(spec.shape)
        if not (isinstance(d, int) and d > 0)
    ]


def _roles(specs: list[InputSpec]) -> dict[DimKey, str]:
    """batch, spatial or sequence for each free dimension, from its name and position."""
    roles: dict[DimKey, str] = {}
    for spec, axis, key in _free(specs):
        name = key if isinstance(key, str) else ""
        rank = len(spec.shape or ())
        lengths = rank == 1 and "len" in spec.name.lower()  # per-sample lengths: [batch]
        if _BATCH.search(name) or lengths or (axis == 0 and rank >= 2 and not name):
            role = "batch"
        elif _SPATIAL.search(name) or (rank >= 4 and spec.dtype.kind == "f"):
            role = "spatial"
        elif axis == 0 and rank >= 2 and not _SPATIAL.search(name):
            role = "batch"  # a leading dimension with a name we cannot read
        else:
            role = "sequence"
        roles.setdefault(key, role)
    return roles


def _fill(
    roles: Mapping[DimKey, str], known: Mapping[DimKey, int], spatial: int, sequence: int
) -> dict[DimKey, int]:
    sizes = {"batch": 1, "spatial": spatial, "sequence": sequence}
    return {key: known.get(key, sizes[role]) for key, role in roles.items()}


def _known_sizes(
    model: ir.Model, specs: list[InputSpec], overrides: Mapping[str, tuple[int, ...]]
) -> dict[DimKey, int]:
    """Sizes fixed by --input-shape (shared names included) and by a Conv's channel count."""
    known: dict[DimKey, int] = {}
    for spec in specs:
        given = overrides.get(spec.name)
        if given is None or spec.shape is None or len(given) != len(spec.shape):
            continue
        for axis, d in enumerate(spec.shape):
            if not (isinstance(d, int) and d > 0):
                known.setdefault(_key(spec, axis, d), int(given[axis]))
    values = {v.name: v for v in model.graph.inputs}
    for spec in specs:
        value = values.get(spec.name)
        if value is None or spec.shape is None or len(spec.shape) < 3:
            continue
        channels = _conv_channels(value)
        if channels and not (isinstance(spec.shape[1], int) and spec.shape[1] > 0):
            known.setdefault(_key(spec, 1, spec.shape[1]), channels)
    return known


def _conv_channels(value: ir.Value) -> int | None:
    """Input channels a Conv reading `value` directly needs (weight [M, C/group, ...])."""
    for node, index in value.uses():
        if node.op_type == "Conv" and node.domain == "" and index == 0 and len(node.inputs) > 1:
            weight = node.inputs[1]
            if weight is not None and weight.shape is not None and len(weight.shape) > 1:
                per_group = weight.shape[1]
                if isinstance(per_group, int):
                    return per_group * node.attributes.get_int("group", 1)
    return None


def _metadata_hints(
    model: ir.Model, specs: list[InputSpec], fixed: Mapping[DimKey, int]
) -> dict[DimKey, int]:
    """Sizes the exporter wrote down: `imgsz` (Ultralytics: "[640, 640]") for the two
    trailing spatial axes of image inputs, and keys named like a free dimension."""
    props = model.metadata_props
    hints: dict[DimKey, int] = {}
    for spec, axis, key in _free(specs):
        if key in fixed:
            continue
        if isinstance(key, str) and key in props:
            number = _ints(props[key])
            if len(number) == 1 and number[0] > 0:
                hints[key] = number[0]
                continue
        image = _ints(props.get("imgsz", ""))
        rank = len(spec.shape or ())
        if image and rank == 4 and spec.dtype.kind == "f" and axis >= 1:
            trailing = axis - (rank - len(image[-2:]))  # NCHW: H, W are the last two
            if 0 <= trailing < len(image[-2:]) and image[-2:][trailing] > 0:
                hints[key] = image[-2:][trailing]
    return hints


def _ints(text: str) -> list[int]:
    return [int(t) for t in re.findall(r"\d+", text)][:4]


def _sizes(specs: list[InputSpec], shapes: Mapping[str, tuple[int, ...]]) -> str:
    """The shapes of inputs with free dimensions, e.g. `images:1x3x64x64`."""
    free = {spec.name for spec, _, _ in _free(specs)}
    parts = [f"{n}:{'x'.join(map(str, s)) or 'scalar'}" for n, s in shapes.items() if n in free]
    return ", ".join(parts) if parts else "declared shapes"
