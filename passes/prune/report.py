"""What a pruning run reports: per-layer sparsity and channels, sizes raw and gzipped,
accuracy on labelled data. Latency and parity come from onnxslim.validation.

Everything is measured on the models themselves (packed weights are unpacked for
the per-layer figures), so the report is true whatever passes produced them.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxslim.activations import coalesce_feeds
from onnxslim.calibration import open_feeds
from onnxslim.errors import DataError
from onnxslim.io import model_to_bytes
from onnxslim.passes.prune.layers import LAYER_OPS, find_layers, resolve_initializer
from onnxslim.passes.prune.storage import packed_weights
from onnxslim.runtime import Session

LABEL_KEYS = ("labels", "label")


@dataclass(frozen=True)
class LayerRow:
    """One weighted layer before and after pruning."""

    name: str
    op_type: str
    shape_before: tuple[int, ...]
    shape_after: tuple[int, ...] | None  # None: the layer is gone
    elements_before: int
    nonzero_after: int
    sparsity: float  # zeros / elements, of the pruned weight
    reduction: float  # 1 - nonzero_after / elements_before: what the layer lost, channels included

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Sizes:
    raw: int
    gzip: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def layer_table(original: ir.Model, pruned: ir.Model) -> list[LayerRow]:
    """Per-layer figures, layers matched by their output value (passes may name unnamed nodes;
    they never rename values); packed weights are unpacked first."""
    packed = packed_weights(pruned)
    after: dict[str, np.ndarray] = {}
    for node in pruned.graph:
        if node.op_type in LAYER_OPS and len(node.inputs) > 1 and node.inputs[1] is not None:
            source = resolve_initializer(node.inputs[1]) or node.inputs[1]
            if source.name in packed:
                after[node.outputs[0].name] = packed[source.name]
            elif source.const_value is not None:
                after[node.outputs[0].name] = source.const_value.numpy()
    rows = []
    for layer in find_layers(original)[0]:
        before = layer.array()
        pruned_w = after.get(layer.node.outputs[0].name)
        if pruned_w is None:
            rows.append(
                LayerRow(
                    layer.name, layer.op_type, tuple(before.shape), None, before.size, 0, 1.0, 1.0
                )
            )
            continue
        nonzero = int(np.count_nonzero(pruned_w))
        rows.append(
            LayerRow(
                layer.name,
                layer.op_type,
                tuple(before.shape),
                tuple(pruned_w.shape),
                int(before.size),
                nonzero,
                1.0 - nonzero / pruned_w.size if pruned_w.size else 0.0,
                1.0 - nonzero / before.size if before.size else 0.0,
            )
        )
    return rows


def model_sizes(model: ir.Model) -> Sizes:
    """Serialized size of the model, raw and gzip-compressed (level 6)."""
    data = model_to_bytes(model)
    return Sizes(len(data), len(gzip.compress(data, compresslevel=6)))


def overall_sparsity(rows: Sequence[LayerRow]) -> float:
    """Weights removed or zeroed over all weighted layers, relative to the original count."""
    total = sum(r.elements_before for r in rows)
    kept = sum(r.nonzero_after for r in rows)
    return 1.0 - kept / total if total else 0.0


def labelled(
    source: Any, model: ir.Model, limit: int | None = None
) -> tuple[list[dict[str, np.ndarray]], np.ndarray] | None:
    """(feeds, labels) from data carrying a `labels` array, or None when it carries none."""
    inputs = {v.name for v in model.graph.inputs}
    feeds, labels = [], []
    for feed in open_feeds(source, model, limit=limit, extra="keep"):
        key = next((k for k in LABEL_KEYS if k in feed and k not in inputs), None)
        if key is None:
            return None
        labels.append(np.asarray(feed[key]).reshape(-1))
        feeds.append({k: v for k, v in feed.items() if k in inputs})
    if not feeds:
        raise DataError("evaluation data holds no samples")
    return feeds, np.concatenate(labels)


def top1(
    models: Iterable[ir.Model], feeds: Sequence[dict[str, np.ndarray]], labels: np.ndarray
) -> list[float]:
    """Top-1 accuracy of each model's first output over the labelled feeds (batched)."""
    results = []
    batches = None
    for model in models:
        if batches is None:
            batches = coalesce_feeds(model, feeds, 256)
        session = Session(model)
        predictions = []
        for batch in batches:
            out = np.asarray(session.run(batch)[session.output_names[0]])
            predictions.append(
                out.reshape(-1, out.shape[-1]).argmax(-1) if out.ndim > 1 else out.reshape(-1)
            )
        predicted = np.concatenate(predictions)
        if len(predicted) != len(labels):
            raise DataError(
                f"{len(labels)} labels for {len(predicted)} predictions: "
                "one label per sample expected"
            )
        results.append(float(np.mean(predicted == labels)))
    return results
