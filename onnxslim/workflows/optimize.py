"""`onnxslim optimize`: the lossless clean-up, each pass guarded on ONNX Runtime.

The passes run through the pass manager with a Guard: the result is compared with
the model that went in on the validation feeds (the user's data, else generated
inputs with the fixed shapes), and the passes at fault are rolled back.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx_ir as ir

from onnxslim.calibration import FeedSource, ImagePreprocessing
from onnxslim.errors import DataError
from onnxslim.feed_search import plan_feeds
from onnxslim.feeds import Feed, parse_input_shapes
from onnxslim.passes.cleanup import StripDebugMetadata
from onnxslim.passes.fold import (
    FixInputShapes,
    drop_added_annotations,
    remember_annotations,
    resolved_input_shapes,
)
from onnxslim.pipeline import Guard, Pipeline, PipelineResult, run_pipeline
from onnxslim.registry import DEFAULT_OPTIMIZE
from onnxslim.sources import ModelResult
from onnxslim.validation import resolve_feeds

logger = logging.getLogger("onnxslim")


@dataclass
class OptimizeResult(ModelResult):
    model: ir.Model
    pipeline: Pipeline
    result: PipelineResult
    verified_on: str  # "generated inputs", "DATA (N feeds)", or "not verified"
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """False when the result's outputs moved beyond tolerance from the original's."""
        return self.result.passed


def validation_feeds(
    model: ir.Model,
    data: FeedSource | None,
    *,
    count: int = 4,
    seed: int = 0,
    image_preprocessing: ImagePreprocessing | str | None = None,
) -> tuple[list[Feed], str]:
    """Feeds to check parity on: the user's data when given, generated inputs otherwise.

    `data` is anything `open_feeds` reads (.npz, folder, reader, iterable); each
    feed is checked against the model's inputs, and arrays that are not inputs
    (an eval file's `labels`) are dropped.
    """
    feeds, description, _ = resolve_feeds(
        model, data, count=count, seed=seed, image_preprocessing=image_preprocessing
    )
    return feeds, description


def default_optimize_pipeline() -> Pipeline:
    """The lossless clean-up `onnxslim optimize` runs when no recipe is given."""
    return Pipeline.from_names(DEFAULT_OPTIMIZE)


def optimize(
    model: ir.Model,
    *,
    pipeline: Pipeline | None = None,
    verify: bool = True,
    data: FeedSource | None = None,
    feeds: Sequence[Feed] | None = None,
    input_shapes: Mapping[str, Sequence[int]] | Sequence[str] | None = None,
    feed_count: int = 4,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    keep_metadata: bool = False,
) -> OptimizeResult:
    """Run the lossless clean-up (or `pipeline`) with each pass guarded on ORT.

    Validation feeds are `feeds` when given, else the first `feed_count` of `data`,
    else generated. `input_shapes` ({"x": (1, 3, 224, 224)} or ["x:1,3,224,224"])
    fixes dynamic input dimensions first (the fix-input-shapes pass) so shapes
    propagate and fold; generated feeds then take those shapes, and given feeds
    must have them. `result.passed` is False when the final model's outputs moved
    beyond tolerance from the original's (the CLI then writes nothing, exit 1).
    `keep_metadata` leaves out strip-debug-metadata (exporter stack traces and scope
    names stay in the file).
    """
    pipeline = pipeline or default_optimize_pipeline()
    if keep_metadata:
        pipeline = Pipeline(
            tuple(p for p in pipeline.passes if not isinstance(p, StripDebugMetadata))
        )
    fixed_shapes = shape_texts(input_shapes)
    if fixed_shapes:
        pipeline = Pipeline((FixInputShapes(shapes=fixed_shapes), *pipeline.passes))
    # Feeds must have the shapes the model will be fixed to, wherever the fix comes from.
    fixed = [t for p in pipeline.passes if isinstance(p, FixInputShapes) for t in p.shapes]
    generation_shapes = resolved_input_shapes(model, parse_input_shapes(fixed)) if fixed else None
    guard = None
    verified_on = "not verified"
    if verify:
        if feeds is not None:
            feeds = list(feeds)
            verified_on = f"given feeds ({len(feeds)})"
        elif data is not None:
            feeds, verified_on = validation_feeds(model, data, count=feed_count)
        else:
            plan = plan_feeds(model, feed_count, shapes=generation_shapes)
            feeds, verified_on = plan.feeds, plan.description
            if feeds is None:  # made-up inputs never fail a lossless run: go on unchecked
                logger.warning("outputs not checked: %s", plan.problem)
                verified_on = "not verified (no generated input ran)"
        for feed in feeds if generation_shapes and feeds else ():
            for name, shape in generation_shapes.items():  # type: ignore[union-attr]
                if name in feed and tuple(feed[name].shape) != tuple(shape):
                    raise DataError(
                        f"validation feed {name!r} has shape {list(feed[name].shape)}, "
                        f"but --input-shape fixes it to {list(shape)}"
                    )
        guard = Guard(list(feeds), atol=atol, rtol=rtol) if feeds is not None else None
    remember_annotations(model)
    result = run_pipeline(model, pipeline, guard=guard, rollback_failures=verify)
    drop_added_annotations(result.model)  # inferred value_info would only grow the file
    return OptimizeResult(result.model, pipeline, result, verified_on)


def shape_texts(shapes: Mapping[str, Sequence[int]] | Sequence[str] | None) -> tuple[str, ...]:
    """{"x": (1, 3, 8, 8)} or ["x:1,3,8,8"] -> ("x:1,3,8,8",), the --input-shape form."""
    if not shapes:
        return ()
    if isinstance(shapes, Mapping):
        return tuple(
            f"{name}:{','.join(str(int(d)) for d in dims)}" for name, dims in shapes.items()
        )
    return tuple(shapes)
