"""When guessing an image model's preprocessing would be a silent trap.

Why its own module: `images` guesses what it is not told (scale 1/255, RGB, no mean/std)
from the input's shape and dtype; this module looks at what the model itself says
about its pixels (metadata, the op that first touches the input, the input's dtype)
and names every guess that evidence contradicts, with the setting to state instead.
The reader then refuses rather than calibrate on pixels the model never saw.

What counts as evidence (rule numbers are referred to in `doubts`):
1. An integer input (uint8 ...) takes raw pixels 0..255 and normalizes inside the
   model, so nothing says whether it was trained on RGB or BGR: order must be stated.
2. The first arithmetic op on the input (through Cast / Transpose / Reshape) scales
   pixel units: Div by a constant >= 2, Mul by one <= 1/20, or Add/Sub of one >= 2 in
   magnitude (a Caffe mean such as 104,117,123, or 127.5). A 0..1 input's mean and
   std are below 1, so these say the model takes 0..255: scale must be stated.
3. Metadata that names a channel order (BGR; WinML's `Image.BitmapPixelFormat`),
   a pixel range (`Image.NominalPixelRange`, "0_255") or a mean/std: the matching
   fields must be stated when the metadata disagrees with the guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnx_ir.convenience import get_const_tensor

_PASS_THROUGH = ("Cast", "Transpose", "Reshape", "Unsqueeze", "Identity")
_MAX_WALK = 6  # ops to follow from the input before giving up
_NUMBER = r"-?\d+(?:\.\d+)?(?:e-?\d+)?"


@dataclass(frozen=True)
class Doubt:
    """A guess the model contradicts: which fields, why, and what to state."""

    fields: tuple[str, ...]  # ImagePreprocessing fields the user must state
    reason: str
    suggestion: str  # key=value;... to pass


def doubts(model: ir.Model | None, input_name: str, dtype: np.dtype) -> list[Doubt]:
    """Every piece of evidence against the default guesses, in rule order (without
    the model, only its input's dtype: rule 1)."""
    found = []
    if dtype.kind in "iu":  # rule 1
        found.append(
            Doubt(
                ("order",),
                f"input {input_name!r} is {dtype} (raw pixels 0..255, normalized inside the "
                "model), so its channel order cannot be guessed (order=RGB or order=BGR)",
                "order=RGB",
            )
        )
    elif model is not None:
        first = _first_scaling(model, input_name)  # rule 2
        if first is not None:
            found.append(Doubt(("scale",), first, "scale=1"))
    if model is not None:
        found.extend(_metadata_doubts(model))  # rule 3
    return found


def _first_scaling(model: ir.Model, input_name: str) -> str | None:
    """Rule 2: the first arithmetic op on the input works in pixel units."""
    value = next((v for v in model.graph.inputs if v.name == input_name), None)
    for _ in range(_MAX_WALK):
        if value is None:
            return None
        uses = list(value.uses())
        if len(uses) != 1:
            return None
        node = uses[0].node
        if node.op_type in _PASS_THROUGH:
            value = node.outputs[0]
            continue
        if node.op_type not in ("Div", "Mul", "Sub", "Add") or len(node.inputs) != 2:
            return None
        other = node.inputs[1 - uses[0].idx]
        tensor = get_const_tensor(other) if other is not None else None
        if tensor is None:
            return None
        magnitude = np.abs(np.asarray(tensor.numpy(), dtype=np.float64))
        if magnitude.size == 0:
            return None
        if node.op_type == "Div" and uses[0].idx == 0 and magnitude.min() >= 2:
            what = f"divides it by {_values(magnitude)}"
        elif node.op_type == "Mul" and 0 < magnitude.max() <= 1 / 20:
            what = f"multiplies it by {_values(magnitude)}"
        elif node.op_type in ("Sub", "Add") and magnitude.max() >= 2:
            what = f"{'subtracts' if node.op_type == 'Sub' else 'adds'} {_values(magnitude)}"
        else:
            return None
        named = f"{node.op_type} {node.name!r}" if node.name else node.op_type
        return (
            f"the model's first op on input {input_name!r} ({named}) {what}: it takes "
            "pixels 0..255, not the guessed 0..1"
        )
    return None


def _values(magnitude: np.ndarray) -> str:
    flat = magnitude.ravel()
    shown = ",".join(f"{v:.4g}" for v in flat[:3])
    return shown + (",..." if flat.size > 3 else "")


def _metadata_doubts(model: ir.Model) -> list[Doubt]:
    """Rule 3: metadata naming the channel order, pixel range or a mean/std."""
    props = dict(model.metadata_props)
    if model.doc_string:
        props["doc_string"] = model.doc_string
    found = []
    for key, text in props.items():
        both = f"{key}={text}"
        if re.search(r"\bbgr|bgr8\b", both, re.IGNORECASE):
            found.append(
                Doubt(("order",), f"metadata {key!r} names BGR channel order", "order=BGR")
            )
        if key == "Image.NominalPixelRange" and "0_255" in text:
            found.append(Doubt(("scale",), f"metadata {key!r} is {text!r}", "scale=1"))
        named = {
            name: values
            for name in ("mean", "std")
            if (values := _numbers_after(name, both)) is not None
        }
        if named:
            suggestion = ";".join(
                f"{name}={','.join(values) if values else '...'}" for name, values in named.items()
            )
            what = "/".join(named)
            fields = tuple(named)
            if any(abs(float(v)) >= 2 for v in named.get("mean") or ()):  # pixel units
                fields, suggestion = ("scale", *fields), f"scale=1;{suggestion}"
            found.append(
                Doubt(fields, f"metadata {key!r} names a {what} normalization", suggestion)
            )
    return found


def _numbers_after(word: str, text: str) -> list[str] | None:
    """The numbers following `word` in metadata text ([] when named without numbers)."""
    match = re.search(rf"\b{word}\w*\W{{0,6}}((?:{_NUMBER}[\s,;]*){{1,4}})", text, re.IGNORECASE)
    if match:
        return re.findall(_NUMBER, match.group(1))[:4]
    return [] if re.search(rf"\b{word}\b", text, re.IGNORECASE) else None
