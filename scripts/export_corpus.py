"""Export the benchmark corpus: small PyTorch architectures with random weights.

Random weights are enough to compare graph optimizers: what matters is the graph
structure each exporter produces (Conv+BatchNorm, depthwise blocks, detection
heads with Concat outputs, attention as MatMul/Softmax with a mask, recurrent
ops, If/Loop control flow, ConvTranspose decoders). Every model is exported with
torch's default exporter today, `torch.onnx.export(..., dynamo=True)`, unless its
entry says otherwise; `manifest.json` in the output folder records the exporter,
the opset and the feed shapes of each model, and `<name>.feeds.npz` holds the
example inputs the model was exported with (the benchmark's parity feed).

    python scripts/export_corpus.py [--out ~/.cache/onnxslim-bench/corpus] [--only a,b]

The exports live in a cache folder outside the repository and are never committed.
torch is used only here (scripts/), never by the library.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus_networks import (  # noqa: E402
    CondNet,
    GRUClassifier,
    LoopNet,
    LSTMTagger,
    MobileNetMini,
    ResNetMini,
    TransformerEncoder,
    UNetDecoder,
    YoloMini,
    erf_gelu,
    tanh_gelu,
)

DEFAULT_OUT = Path("~/.cache/onnxslim-bench/corpus").expanduser()


# --------------------------------------------------------------------------- corpus


@dataclass
class Entry:
    name: str
    family: str
    build: Callable[[], nn.Module]
    inputs: Callable[[], tuple[torch.Tensor, ...]]
    input_names: list[str]
    output_names: list[str]
    dynamo: bool = True
    optimize: bool = True  # dynamo only: False skips the exporter's own graph optimization
    note: str = ""
    extra: dict[str, object] = field(default_factory=dict)


def _ids(batch: int, length: int, vocab: int) -> torch.Tensor:
    return torch.randint(1, vocab, (batch, length))


def _mask(batch: int, length: int) -> torch.Tensor:
    mask = torch.ones(batch, length, dtype=torch.int64)
    mask[0, length - 3 :] = 0
    return mask


ENTRIES = [
    Entry(
        "resnet_mini",
        "classification CNN (ResNet-18 layout, BN)",
        ResNetMini,
        lambda: (torch.randn(1, 3, 64, 64),),
        ["image"],
        ["logits"],
    ),
    Entry(
        "mobilenet_mini",
        "classification CNN (depthwise, ReLU6/Hardswish, SE)",
        MobileNetMini,
        lambda: (torch.randn(1, 3, 64, 64),),
        ["image"],
        ["logits"],
    ),
    Entry(
        "yolo_mini",
        "detector with decoded head (boxes, scores via Concat)",
        YoloMini,
        lambda: (torch.randn(1, 3, 64, 64),),
        ["image"],
        ["boxes", "scores"],
    ),
    Entry(
        "bert_mini",
        "transformer encoder (attention as MatMul/Softmax, additive mask)",
        TransformerEncoder,
        lambda: (_ids(2, 16, 1000), _mask(2, 16)),
        ["input_ids", "attention_mask"],
        ["pooled"],
    ),
    Entry(
        "gpt_style_handwritten",
        "transformer encoder, hand-written LayerNorm and tanh GELU",
        lambda: TransformerEncoder(hand_written=True, gelu=tanh_gelu),
        lambda: (_ids(2, 16, 1000), _mask(2, 16)),
        ["input_ids", "attention_mask"],
        ["pooled"],
    ),
    Entry(
        "bert_torchscript",
        "transformer encoder, TorchScript exporter, hand-written erf GELU",
        lambda: TransformerEncoder(gelu=erf_gelu),
        lambda: (_ids(2, 16, 1000), _mask(2, 16)),
        ["input_ids", "attention_mask"],
        ["pooled"],
        dynamo=False,
        note="legacy TorchScript exporter (dynamo=False), opset 17",
    ),
    Entry(
        "lstm_tagger",
        "RNN tagger (embedding, 2-layer biLSTM, linear)",
        LSTMTagger,
        lambda: (_ids(2, 12, 500),),
        ["tokens"],
        ["tag_logprobs"],
    ),
    Entry(
        "gru_classifier",
        "sequence classifier (GRU, LayerNorm)",
        GRUClassifier,
        lambda: (torch.randn(2, 10, 16),),
        ["features"],
        ["logits"],
    ),
    Entry(
        "cond_cnn",
        "CNN with an If (torch.cond) head",
        CondNet,
        lambda: (torch.randn(1, 3, 32, 32),),
        ["image"],
        ["logits"],
    ),
    Entry(
        "loop_refiner",
        "MLP refined in a Loop (torch while_loop)",
        LoopNet,
        lambda: (torch.randn(2, 32),),
        ["x"],
        ["y"],
    ),
    Entry(
        "unet_decoder",
        "segmentation encoder-decoder (ConvTranspose+BN, Pad, skip concats)",
        UNetDecoder,
        lambda: (torch.randn(1, 3, 32, 32),),
        ["image"],
        ["mask_logits"],
    ),
]

# The same CNNs exported without the exporter's optimizer (`optimize=False`): BatchNormalization,
# Pad, Constant nodes and shape arithmetic left in, as older exporters and converters leave them.
ENTRIES += [
    dataclasses.replace(
        entry,
        name=f"{entry.name}_raw",
        optimize=False,
        note="dynamo=True, optimize=False: exporter's graph optimizer skipped",
    )
    for entry in ENTRIES
    if entry.name in ("resnet_mini", "mobilenet_mini", "yolo_mini", "unet_decoder")
]


def _randomize_norms(model: nn.Module) -> None:
    """Give BatchNorm layers non-trivial statistics, so a wrong fusion shows in the outputs."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            with torch.no_grad():
                module.running_mean.copy_(
                    torch.randn(module.num_features, generator=generator) * 0.1
                )
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.num_features, generator=generator) * 0.1)


def export(entry: Entry, out_dir: Path) -> dict[str, object]:
    torch.manual_seed(0)
    model = entry.build()
    _randomize_norms(model)
    model.eval()
    args = entry.inputs()
    path = out_dir / f"{entry.name}.onnx"
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        if entry.dynamo:
            program = torch.onnx.export(
                model,
                args,
                input_names=entry.input_names,
                output_names=entry.output_names,
                dynamo=True,
                optimize=entry.optimize,
            )
            program.save(str(path))
        else:
            torch.onnx.export(
                model,
                args,
                str(path),
                input_names=entry.input_names,
                output_names=entry.output_names,
                dynamo=False,
                opset_version=17,
            )
    seconds = time.perf_counter() - start
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    # The example inputs, stacked as one feed (`array[0]`), for the benchmark's parity check.
    np.savez(
        out_dir / f"{entry.name}.feeds.npz",
        **{n: a.numpy()[None] for n, a in zip(entry.input_names, args, strict=False)},
    )
    return {
        "name": entry.name,
        "family": entry.family,
        "exporter": (
            f"torch.onnx.export(dynamo=True{'' if entry.optimize else ', optimize=False'})"
            if entry.dynamo
            else "torch.onnx.export(dynamo=False)"
        ),
        "note": entry.note,
        "opset": next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None),
        "nodes": len(proto.graph.node),
        "feed_shapes": {n: list(a.shape) for n, a in zip(entry.input_names, args, strict=False)},
        "feed_dtypes": {
            n: str(a.dtype).replace("torch.", "")
            for n, a in zip(entry.input_names, args, strict=False)
        },
        "export_seconds": round(seconds, 2),
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="output folder (outside the repository)"
    )
    parser.add_argument("--only", default="", help="comma-separated model names to export")
    args = parser.parse_args(argv)
    out_dir = args.out.expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    only = {n for n in args.only.split(",") if n}
    manifest_path = out_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"models": {}}
    failures = 0
    for entry in ENTRIES:
        if only and entry.name not in only:
            continue
        try:
            info = export(entry, out_dir)
        except Exception as exc:  # one failed export must not hide the others
            failures += 1
            print(
                f"FAIL {entry.name}: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}"
            )
            continue
        manifest["models"][entry.name] = info
        print(
            f"ok   {entry.name:24s} {info['nodes']:5d} nodes  opset {info['opset']}  "
            f"{info['exporter']}  {info['export_seconds']}s"
        )
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
