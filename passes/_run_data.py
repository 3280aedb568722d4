"""What a workflow hands a pass for one run: the user's data, opened once, and the run's
progress. Never options: a pass's dataclass holds only options (what a recipe table or a
CLI flag sets), so two passes with the same options are the same pass whatever data they
are run on, and the catalogue (`onnxslim passes`) lists no data.

A pass that reads data subclasses `TakesData` and implements `run(model, data)`; the pass
manager (onnxslim.pipeline.run_pipeline) hands every such pass the workflow's `RunData`
through `run_pass`, and passes that need no data are called as onnx_ir passes always are.
Calling a data-taking pass plainly (`pass_(model)`) runs it with no data: the passes that
cannot work without it say so (a UsageError naming the data), as they always did.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Iterator, Sequence

import onnx_ir as ir

from onnxslim.agreement import Assessment
from onnxslim.calibration import FeedSource as DataSource
from onnxslim.feeds import Feed

# A candidate model -> its assessment against the accuracy target (the workflow's check).
Accept = Callable[[ir.Model], Assessment]
# Calibration data as a pass reads it: anything open_feeds reads (a path to a data file or
# folder, an ORT reader, a list or iterable of feeds), or a zero-argument factory returning
# a fresh iterator each time it is called (re-iterable without a list).
FeedSource = DataSource | Callable[[], Iterator[Feed]]
# A stage's progress: (stage, done, total or None); quantize-static's stages are
# "calibrate" (runs over the data), "latency" (the guard) and "fix".
StageProgress = Callable[[str, int, int | None], None]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunData:
    """The data of one run. Every field is optional: a pass reads what it needs.

    feeds       the calibration / fit feeds (quantize-static calibrates on them, the
                prune and cluster passes refit and rank layers on them);
    check       held-out feeds the accuracy target is measured on (quantize-static's
                fix loop; the workflow's split of the user's data);
    progress    the run's progress (the CLI's progress bars), None: report none;
    accept      allocation=target: a candidate model -> its assessment against the
                accuracy target (the workflow's check);
    requested   allocation=target: the amount (sparsity, bits) was asked for: it bounds
                the search, and a miss writes the model at the request (and fails);
    probe_feeds allocation=target: feeds for the sensitivities when `feeds` is absent;
    caller_measures  the caller measures the result itself (a recipe's back-off): when
                quantize's fixes miss the target on `check`, the closest int8 model is the
                result for the caller to judge, not the float model.
    """

    feeds: FeedSource | None = None
    check: Sequence[Feed] | None = None
    progress: StageProgress | None = None
    accept: Accept | None = None
    requested: bool = False
    probe_feeds: Sequence[Feed] | None = None
    caller_measures: bool = False


NO_DATA = RunData()


class TakesData(abc.ABC):
    """A pass that reads data: `run(model, data)` is its run; `call` runs it without any."""

    @abc.abstractmethod
    def run(self, model: ir.Model, data: RunData) -> ir.passes.PassResult:
        """Run the pass on `model` with the workflow's `data`."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return self.run(model, NO_DATA)


def run_pass(
    instance: ir.passes.PassBase, model: ir.Model, data: RunData | None = None
) -> ir.passes.PassResult:
    """Run `instance` on `model`: a data-taking pass gets `data` as an argument of the run
    (with onnx_ir's pre- and postconditions checked as `instance(model)` checks them);
    any other pass is called as it always is."""
    if data is None or not isinstance(instance, TakesData):
        return instance(model)
    instance.requires(model)
    result = instance.run(model, data)
    instance.ensures(result.model)
    if instance.in_place and result.model is not model:
        raise ir.passes.PassError(f"{type(instance).__name__} is in-place but returned a new model")
    return result
