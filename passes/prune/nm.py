"""N:M semi-structured sparsity: at most N non-zeros in every M consecutive input channels.

The groups run along the input-channel axis (Conv weight axis 1, the K axis of a
Gemm/MatMul weight), for each output channel and kernel position: the layout
sparse tensor cores and N:M CPU kernels consume. Layers whose input channels per
group are not a multiple of M (a 3-channel stem, a depthwise Conv) stay dense and
are reported. With calibration data the kept weights are refit (zeros stay
zeros, so the N:M pattern holds after the refit).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from onnxslim.errors import UsageError
from onnxslim.passes._options import option
from onnxslim.passes._run_data import RunData
from onnxslim.passes.prune._common import store_summary
from onnxslim.passes.prune.layers import Skipped, find_layers, sparsity
from onnxslim.passes.prune.masks import nm_mask
from onnxslim.passes.prune.prepare import prepare
from onnxslim.passes.prune.reconstruct import RefitOptions, RefitRequest, reconstruct


@dataclasses.dataclass(frozen=True, kw_only=True)
class NMSparsity(RefitOptions, ir.passes.InPlacePass):
    """Keep the N largest of every M consecutive input-channel weights (2:4, 4:8)."""

    n: int = option(2, "Weights kept per group.")
    m: int = option(4, "Group length along the input-channel axis.")
    min_elements: int = option(1024, "Leave weights with fewer elements dense.")
    exclude: tuple[str, ...] = option((), "Node or weight names (fnmatch patterns) to leave dense.")

    def __post_init__(self) -> None:
        if not (0 < self.n < self.m):
            raise ValueError(f"n={self.n}, m={self.m}: expected 0 < n < m")

    def run(self, model: ir.Model, data: RunData) -> ir.passes.PassResult:
        feeds, refit = self.refit_data(model, data)
        if refit and feeds is None:
            raise UsageError("reconstruction needs calibration data (calib)")
        prepared = prepare(model)
        layers, skipped = find_layers(model, min_elements=self.min_elements, exclude=self.exclude)
        eligible = []
        for layer in layers:
            view = layer.input_channel_view(layer.array())
            channels = view.shape[-1]
            if layer.groups > 1 and layer.op_type == "Conv" and channels == 1:
                skipped.append(
                    Skipped(layer.name, layer.op_type, "depthwise: one input channel per group")
                )
            elif channels % self.m:
                skipped.append(
                    Skipped(
                        layer.name,
                        layer.op_type,
                        f"{channels} input channels not a multiple of {self.m}",
                    )
                )
            else:
                eligible.append(layer)
        if not eligible:
            store_summary(
                model,
                method=f"{self.n}:{self.m}",
                targets={},
                skipped=[s.__dict__ for s in skipped],
                refit=[],
            )
            return ir.passes.PassResult(model, prepared)
        original = model.clone() if refit else None
        done: set[int] = set()
        for layer in eligible:
            if id(layer.weight) in done:
                continue
            done.add(id(layer.weight))
            view = layer.input_channel_view(layer.array())
            kept = np.where(nm_mask(view, self.n, self.m), view, 0)
            layer.set_weight(layer.from_input_channel_view(kept))
        records = []
        if refit and original is not None and feeds is not None:
            requests = [RefitRequest(layer.name, keep_zeros=True) for layer in eligible]
            records = reconstruct(
                original, model, requests, feeds, ridge=self.ridge, max_rows=self.max_rows
            )
        store_summary(
            model,
            method=f"{self.n}:{self.m}",
            targets={layer.name: sparsity(layer.array()) for layer in eligible},
            skipped=[s.__dict__ for s in skipped],
            refit=[r.to_dict() for r in records],
        )
        return ir.passes.PassResult(model, True)
