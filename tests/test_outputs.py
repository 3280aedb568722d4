"""The one rule for classifier-shaped outputs, and that parity's top-1 follows it."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from onnxslim.outputs import is_classifier_output
from onnxslim.parity import compare_outputs


@pytest.mark.parametrize(
    "name,shape,dtype,expected",
    [
        ("logits", (1, 10), np.float32, True),
        ("output", ("N", 1000), ir.DataType.FLOAT, True),
        ("probs", (1, 1, 10), np.float16, True),  # [1, 1, C]
        ("logits", (2, 7, 3000), "float32", True),  # token logits, named so
        ("hidden_out", (1, 1, 64), np.float32, False),  # recurrent state, whatever its shape
        ("h_n", (1, 64), np.float32, False),
        ("present.0.key", (1, 4, 8, 16), np.float32, False),
        ("boxes", (100, 4), np.float32, False),
        ("output0", (1, 25200, 85), np.float32, False),  # detector grid: not one label per row
        ("heatmap", (1, 1, 56, 56), np.float32, False),
        ("labels", (1, 10), np.int64, False),  # integer: already decided
        ("y", (1, 1), np.float32, False),  # one score is not a choice
        ("y", (1, "C"), np.float32, False),  # unknown class count
        ("y", (10,), np.float32, False),
    ],
)
def test_rule(name: str, shape: tuple, dtype: object, expected: bool) -> None:
    assert is_classifier_output(name, shape, dtype) is expected


def test_parity_reports_top1_only_on_classifier_outputs() -> None:
    """The bug: a recurrent state got "top-1 agree 0.375" at cosine 0.99999."""
    rng = np.random.default_rng(0)
    ref = [{"logits": rng.standard_normal((4, 10)), "hidden_out": rng.standard_normal((1, 4, 64))}]
    cand = [{k: v + 1e-3 * rng.standard_normal(v.shape) for k, v in ref[0].items()}]
    by_name = {p.name: p for p in compare_outputs(ref, cand)}
    assert by_name["logits"].top1_agreement == 1.0
    assert by_name["hidden_out"].top1_agreement is None and by_name["hidden_out"].cosine > 0.999
