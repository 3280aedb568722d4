"""The one rule for which model outputs are classifier-shaped (top-1 and agreement read them).

Used wherever a figure is top-1 or top-1 agreement (quantize, prune, cluster, run,
validate reports), so that no command calls an output a classifier's while another
says it is not. The rule reads only the output's name, shape and dtype:

1. floating point scores;
2. class scores on the last axis, 2 to 100,000 of them;
3. rank 2 ([batch, classes]); higher ranks only when every axis between the first and
   the last is 1 ([1, 1, classes]), or when the name says logits ([batch, tokens, vocab]);
4. not a state or a regression by name: recurrent states (`hidden_out`, `h_n`, `cell`),
   caches (`present.*`, `past_key_values`), embeddings and features, boxes, landmarks,
   masks, heatmaps are never argmax-ed, whatever their shape.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

MAX_CLASSES = 100_000

_NOT_SCORES = re.compile(
    r"hidden|state|cell|(^|[^a-z])[hc]_?n($|[^a-z])|present|past|cache|memory|embed|feature"
    r"|encoder|pooler|box|bbox|landmark|anchor|offset|regress|mask|heatmap|depth|kpt|keypoint",
    re.IGNORECASE,
)
_LOGITS = re.compile(r"logit", re.IGNORECASE)
_FLOAT_NAMES = ("float", "double", "bfloat16", "float16", "half")


def is_classifier_output(name: str, shape: Sequence[Any] | None, dtype: Any) -> bool:
    """Whether an output holds class scores that top-1 / agreement may argmax (rules 1-4)."""
    if not _is_float(dtype) or shape is None or _NOT_SCORES.search(name or ""):
        return False
    dims = list(shape)
    if len(dims) < 2:
        return False
    classes = dims[-1]
    if not isinstance(classes, (int, np.integer)) or not 2 <= int(classes) <= MAX_CLASSES:
        return False
    if len(dims) == 2:
        return True
    middle_ones = all(isinstance(d, (int, np.integer)) and int(d) == 1 for d in dims[1:-1])
    return middle_ones or bool(_LOGITS.search(name or ""))


def _is_float(dtype: Any) -> bool:
    """numpy dtypes, numpy scalar types, onnx_ir DataTypes and names all accepted."""
    try:
        numpy_dtype = np.dtype(dtype)
        return numpy_dtype.kind == "f" or numpy_dtype.name in _FLOAT_NAMES  # ml_dtypes' bfloat16
    except TypeError:
        pass
    text = str(getattr(dtype, "name", dtype)).lower()
    return any(text == f or text.endswith("." + f) for f in _FLOAT_NAMES)
