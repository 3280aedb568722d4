"""The workers of scripts/bench_quantize.py: one tool quantizes one model, in its own process.

    python scripts/bench_quantize_workers.py TOOL --model M --calib-file C --out O --result R

Run by bench_quantize.py under scripts/peak_rss.py's launcher, so wall time and peak
RSS are the tool's alone; the NNCF, Quark and AIMET workers run in their own virtual
environments (bench_quantize.peer_python).
Writes the quantized model and {"seconds": ..., "note": ...} as JSON to `--result`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"


def worker(args: argparse.Namespace) -> int:
    """Quantize `args.model` with `args.worker`, write the model and {"seconds": ...}."""
    start = time.perf_counter()
    note = ""
    if args.worker.startswith("onnxslim"):
        note = _onnxslim_quantize(args.model, args.calib_file, args.out, args.extra)
    elif args.worker == "ort":
        note = _ort_quantize(args.model, args.calib_file, args.out)
    elif args.worker == "ort-dynamic":
        note = _ort_dynamic(args.model, args.out)
    elif args.worker == "nncf":
        note = _nncf_quantize(args.model, args.calib_file, args.out)
    elif args.worker in QUARK_CONFIGS:
        note = _quark_quantize(args.model, args.calib_file, args.out, args.worker)
    elif args.worker in AIMET_WORKERS:
        note = _aimet_quantize(args.model, args.calib_file, args.out, args.worker)
    else:
        raise SystemExit(f"unknown worker {args.worker}")
    seconds = time.perf_counter() - start
    Path(args.result).write_text(json.dumps({"seconds": seconds, "note": note}))
    return 0


def _onnxslim_quantize(model_path: str, calib: str, out: str, extra: list[str]) -> str:
    """What `onnxslim quantize --no-verify` runs: load, quantize_static (or the accuracy-aware
    loop when `extra` is ["--eval", DATA, "--max-drop", X]), save."""
    from onnxslim import io
    from onnxslim.passes.quantize.static import quantize_static

    model = io.load(model_path)
    if extra:
        from onnxslim.workflows.accuracy_aware import quantize_accuracy_aware

        options = dict(zip(extra[::2], extra[1::2], strict=True))
        metric = _eval_metric(Path(model_path).stem, options["--eval"])
        result = quantize_accuracy_aware(
            model, calib, max_drop=float(options["--max-drop"]), metric=metric
        )
        io.save(result.model, out)
        return (
            f"{len(result.excluded)} layer(s) float: {', '.join(result.excluded)}; "
            f"{result.evaluations} evaluations; {'met' if result.met else 'target MISSED'}"
        )
    quantized, report = quantize_static(model, calib)
    io.save(quantized, out)
    return f"{len(report.quantized_nodes)} nodes int8, {len(report.protections)} protections"


def _eval_metric(name: str, eval_path: str) -> Any:
    """The model's own metric (scripts/model_metrics.py) on its eval set, as an API callable."""
    from onnxslim.workflows.accuracy_aware import run_outputs

    metrics = metrics_module()
    with np.load(eval_path) as data:
        arrays = {k: data[k] for k in data.files}
    names = input_names(Path(MODELS / f"{name}.onnx"))
    feeds = [{n: arrays[n][i] for n in names} for i in range(len(arrays["labels"]))]

    def metric(model: Any) -> float:
        return float(metrics.score(name, np.concatenate(run_outputs(model, feeds), axis=0), arrays))

    return metric


def stacked_feeds(calib: str, input_names: list[str]) -> list[dict[str, np.ndarray]]:
    with np.load(calib) as data:
        arrays = {n: data[n] for n in input_names}
    count = len(next(iter(arrays.values())))
    return [{n: arrays[n][i] for n in input_names} for i in range(count)]


def _ort_quantize(model: str, calib: str, out: str) -> str:
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        quantize_static,
    )

    names = [
        i.name for i in ort.InferenceSession(model, providers=["CPUExecutionProvider"]).get_inputs()
    ]
    feeds = stacked_feeds(calib, names)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as tmp:
        pre, note = _pre_processed(model, tmp)
        quantize_static(
            pre,
            out,
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
        )
    return note


def _ort_dynamic(model: str, out: str) -> str:
    """onnxruntime.quantization.quantize_dynamic with its defaults, after quant_pre_process."""
    from onnxruntime.quantization import quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        pre, note = _pre_processed(model, tmp)
        quantize_dynamic(pre, out)
    return note


def _pre_processed(model: str, folder: str) -> tuple[str, str]:
    """ORT's quant_pre_process into `folder`; the raw model and a note when it fails."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = str(Path(folder) / "pre.onnx")
    try:
        quant_pre_process(model, pre)
    except Exception as exc:  # ORT's symbolic shape inference fails on some exports
        return model, f"quant_pre_process failed ({type(exc).__name__}); raw model quantized"
    return pre, ""


def _nncf_quantize(model: str, calib: str, out: str) -> str:
    import nncf  # type: ignore[import-not-found]
    import onnx

    proto = onnx.load(model)
    initializers = {i.name for i in proto.graph.initializer}
    names = [i.name for i in proto.graph.input if i.name not in initializers]
    feeds = stacked_feeds(calib, names)
    try:
        quantized = nncf.quantize(proto, nncf.Dataset(feeds), subset_size=len(feeds))
        note = ""
    except Exception as exc:  # NNCF's ONNX backend cannot read weights held in Constant nodes
        if "no tensor with the name" not in str(exc):
            raise
        proto = _lift_constants(onnx.load(model))
        quantized = nncf.quantize(proto, nncf.Dataset(feeds), subset_size=len(feeds))
        note = "Constant nodes lifted to initializers first (NNCF fails on them)"
    onnx.save(quantized, out)
    return note


def _graph_inputs(proto: Any) -> list[str]:
    initializers = {i.name for i in proto.graph.initializer}
    return [i.name for i in proto.graph.input if i.name not in initializers]


# Quark's presets per worker: its general CPU int8 (A8W8) alone, with AdaRound, with AdaQuant
QUARK_CONFIGS = {
    "quark": "A8W8_QCONFIG",
    "quark-adaround": "A8W8_ADAROUND_QCONFIG",
    "quark-adaquant": "A8W8_ADAQUANT_QCONFIG",
}
# A8W8_ADAQUANT_QCONFIG's AdaQuantConfig asks 3000 iterations per layer (lr 1e-5); Quark's
# legacy AdaQuant preset (DEFAULT_ADAQUANT_PARAMS) and its AdaRound preset use 1000: 1000
# keeps AdaQuant's cost that of the quark-adaround column (2-20 minutes per small model here)
QUARK_ADAQUANT_ITERATIONS = 1000


def _quark_quantize(model: str, calib: str, out: str, worker: str) -> str:
    """AMD Quark's ONNX quantizer with its preset for general CPU int8, A8W8 (int8 symmetric
    activations and weights, per tensor, percentile calibration, QDQ); A8W8_ADAROUND (the
    same plus AdaRound, Quark's defaults: 1000 iterations per layer, on the CPU) or
    A8W8_ADAQUANT (plus AdaQuant, its defaults but QUARK_ADAQUANT_ITERATIONS)."""
    import copy

    import onnx
    from quark.onnx import ModelQuantizer  # type: ignore[import-not-found]
    from quark.onnx.quantization.config import custom_config  # type: ignore[import-not-found]

    feeds = stacked_feeds(calib, _graph_inputs(onnx.load(model, load_external_data=False)))
    preset = QUARK_CONFIGS[worker]
    config = copy.deepcopy(getattr(custom_config, preset))
    note = preset.removesuffix("_QCONFIG")
    if worker == "quark-adaquant":
        (algo,) = [a for a in config.algo_config if a.name == "adaquant"]
        algo.num_iterations = QUARK_ADAQUANT_ITERATIONS
        note += f"; {algo.num_iterations} iterations per layer, lr {algo.learning_rate:g}"
    ModelQuantizer(config).quantize_model(model, out, _Reader(feeds))
    return note


class _Reader:
    """An onnxruntime CalibrationDataReader over in-memory feeds, rewindable (AdaRound re-reads)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds, self.it = feeds, iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.it, None)

    def rewind(self) -> None:
        self.it = iter(self.feeds)

    def __len__(self) -> int:
        return len(self.feeds)


AIMET_WORKERS = ("aimet", "aimet-adaround", "aimet-seqmse")
AIMET_ADAROUND_ITERATIONS = 2000  # AIMET recommends 10,000 per layer for 8-bit weights (hours here)
AIMET_SEQMSE_CANDIDATES = 20  # apply_seq_mse's default: weight ranges tried per layer


def _aimet_quantize(model: str, calib: str, out: str, worker: str) -> str:
    """Qualcomm AIMET-ONNX's post-training flow: batch norms folded into the weights,
    QuantizationSimModel with its defaults (int8 weights and activations, min-max, the
    default per-channel config), compute_encodings on the calibration feeds, exported as
    ONNX QDQ (to_onnx_qdq); aimet-adaround applies AdaRound to the weights before the
    encodings, aimet-seqmse sequential MSE (apply_seq_mse: each layer's weight encodings
    chosen, in order, by the MSE of its output against float on the calibration feeds)."""
    import onnx
    from aimet_onnx import (  # type: ignore[import-not-found]
        QuantizationSimModel,
        apply_adaround,
        apply_seq_mse,
    )
    from aimet_onnx.batch_norm_fold import (  # type: ignore[import-not-found]
        fold_all_batch_norms_to_weight,
    )

    proto = onnx.load(model)
    feeds = stacked_feeds(calib, _graph_inputs(proto))
    note = ""
    if worker == "aimet-seqmse":  # what AIMET's warning asks for weights shared by several
        # nodes; SeqMSE fails without it (captcha_crnn's LSTM biases: "Invalid input name")
        from aimet_onnx.utils import duplicate_shared_initializers  # type: ignore[import-not-found]

        note = f"{duplicate_shared_initializers(proto.graph)} shared weights duplicated; "
    folded = fold_all_batch_norms_to_weight(proto)
    sim = QuantizationSimModel(proto)
    note += f"{sum(len(pairs) for pairs in folded)} batch norms folded"
    if worker == "aimet-adaround":
        apply_adaround(sim, feeds, num_iterations=AIMET_ADAROUND_ITERATIONS)
        note += f"; AdaRound {AIMET_ADAROUND_ITERATIONS} iterations per layer"
    elif worker == "aimet-seqmse":  # sets and freezes the weight encodings
        apply_seq_mse(sim, feeds, num_candidates=AIMET_SEQMSE_CANDIDATES)
        note += f"; SeqMSE {AIMET_SEQMSE_CANDIDATES} candidates per layer"
    sim.compute_encodings(feeds)
    onnx.save(sim.to_onnx_qdq(), out)
    return note


def _lift_constants(proto: Any) -> Any:
    """Main-graph Constant nodes holding a tensor become initializers (what a user would do)."""
    from onnx import helper, numpy_helper

    keep = []
    for node in proto.graph.node:
        if (
            node.op_type == "Constant"
            and len(node.attribute) == 1
            and node.attribute[0].name == "value"
        ):
            tensor = numpy_helper.to_array(helper.get_attribute_value(node.attribute[0]))
            proto.graph.initializer.append(numpy_helper.from_array(tensor, node.output[0]))
        else:
            keep.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(keep)
    return proto


def metrics_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "model_metrics", REPO / "scripts" / "model_metrics.py"
    )
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def input_names(path: Path) -> list[str]:
    import onnxruntime as ort

    return [
        i.name
        for i in ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()
    ]


WORKERS = ("onnxslim", "onnxslim+acc", "ort", "ort-dynamic", "nncf", *QUARK_CONFIGS, *AIMET_WORKERS)


def main() -> int:
    return worker(make_parser().parse_args())


def make_parser() -> argparse.ArgumentParser:
    """The command line: a worker of WORKERS and its files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("worker", choices=WORKERS)
    parser.add_argument("--model", required=True)
    parser.add_argument("--calib-file", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--result", required=True)
    parser.add_argument("--extra", action="append", default=[])
    return parser


if __name__ == "__main__":
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    sys.exit(main())
