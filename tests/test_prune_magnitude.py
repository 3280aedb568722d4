"""Magnitude and N:M pruning on ORT: exact sparsity, exclusions, allocation, reconstruction."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from prune_fixtures import convnet, feeds, ffn

from onnxslim.errors import UsageError
from onnxslim.parity import compare_outputs
from onnxslim.passes._run_data import RunData
from onnxslim.passes.prune import MagnitudePruning, NMSparsity
from onnxslim.passes.prune._common import summary
from onnxslim.passes.prune.masks import magnitude_mask, satisfies_nm
from onnxslim.runtime import Session

CALIB = feeds((3, 16, 16), 48, seed=1)
CHECK = feeds((3, 16, 16), 24, seed=2)


def _weights(model: ir.Model) -> dict[str, np.ndarray]:
    return {
        n.name: n.inputs[1].const_value.numpy()
        for n in model.graph
        if n.op_type in ("Conv", "Gemm", "MatMul") and n.inputs[1].const_value is not None
    }


def _snr(reference: ir.Model, candidate: ir.Model, data=CHECK) -> float:
    ref, cand = Session(reference), Session(candidate)
    return compare_outputs([ref.run(f) for f in data], [cand.run(f) for f in data])[0].snr_db


@pytest.fixture(scope="module")
def base() -> ir.Model:
    return ir.serde.deserialize_model(convnet())


@pytest.mark.parametrize("kind", ["normal", "ties", "nan"])
def test_magnitude_mask_drops_what_a_stable_sort_drops(kind: str) -> None:
    """The linear-time mask (a selection, not a sort) drops exactly the smallest |w|, ties
    in position order, NaN last: what the stable argsort it replaced dropped."""
    rng = np.random.default_rng(3)
    for _ in range(40):
        n = int(rng.integers(1, 300))
        w = rng.standard_normal(n).astype(np.float32)
        if kind != "normal":  # few distinct magnitudes: the threshold is tied many times
            w = rng.integers(-3, 4, n).astype(np.float32)
        if kind == "nan":
            w[rng.integers(0, n, 2)] = np.nan
        for sparsity in (0.0, 0.25, 0.5, 0.8, 1.0, float(rng.random())):
            drop = round(sparsity * n)
            expected = np.ones(n, dtype=bool)
            expected[np.argsort(np.abs(w), kind="stable")[:drop]] = False
            mask = magnitude_mask(w.reshape(1, n), sparsity)
            assert mask.shape == (1, n) and int((~mask).sum()) == drop
            assert np.array_equal(mask.ravel(), expected)


def test_per_layer_sparsity_is_exact_and_small_or_excluded_layers_stay_dense(base) -> None:
    model = base.clone()
    assert MagnitudePruning(sparsity=0.6, min_elements=500, exclude=("res2",))(model).modified
    before, after = _weights(base), _weights(model)
    for name, w in after.items():
        expected = 0.6 if before[name].size >= 500 and name != "res2" else 0.0
        assert np.count_nonzero(w == 0) == round(expected * w.size), name
        kept = (
            w != 0
        )  # the survivors are the largest-magnitude weights, unchanged (no calib: no refit)
        np.testing.assert_array_equal(w[kept], before[name][kept])
        if expected:
            assert np.abs(before[name][~kept]).max() <= np.abs(before[name][kept]).min()
    Session(model).run(CHECK[0])  # still runs on ORT


def test_global_threshold_meets_the_budget_and_caps_layers(base) -> None:
    model = base.clone()
    MagnitudePruning(sparsity=0.7, min_elements=100, scope="global", max_layer_sparsity=0.9)(model)
    after = _weights(model)
    total = sum(w.size for w in after.values())
    zeros = sum(np.count_nonzero(w == 0) for w in after.values())
    assert zeros == round(0.7 * total)
    per_layer = {n: np.mean(w == 0) for n, w in after.items()}
    assert max(per_layer.values()) <= 0.9 + 1e-9
    assert (
        max(per_layer.values()) - min(per_layer.values()) > 0.1
    )  # one threshold, not one sparsity


def test_sensitivity_allocation_meets_the_budget_and_beats_uniform(base) -> None:
    uniform, sensitive = base.clone(), base.clone()
    MagnitudePruning(sparsity=0.5, min_elements=100, reconstruct=False).run(
        uniform, RunData(feeds=CALIB)
    )
    MagnitudePruning(
        sparsity=0.5, min_elements=100, reconstruct=False, allocation="sensitivity"
    ).run(sensitive, RunData(feeds=CALIB))
    weights = _weights(sensitive)
    total = sum(w.size for w in weights.values())
    zeros = sum(np.count_nonzero(w == 0) for w in weights.values())
    assert abs(zeros / total - 0.5) < 0.01
    levels = {name: entry["allocated"] for name, entry in summary(sensitive)["sensitivity"].items()}
    assert len(set(np.round(list(levels.values()), 3))) > 1  # layers got different sparsities
    assert _snr(base, sensitive) > _snr(base, uniform) + 1.0


def test_reconstruction_improves_parity_and_keeps_zeros(base) -> None:
    plain, refit = base.clone(), base.clone()
    MagnitudePruning(sparsity=0.5, min_elements=100)(plain)
    MagnitudePruning(sparsity=0.5, min_elements=100).run(
        refit, RunData(feeds=CALIB)
    )  # refit: on by default with calib
    for name, w in _weights(plain).items():
        np.testing.assert_array_equal(
            _weights(refit)[name] == 0, w == 0, err_msg=name
        )  # same support
    assert _snr(base, refit) > _snr(base, plain) + 3.0
    records = summary(refit)["refit"]
    assert records and all(r["error_after"] <= r["error_before"] for r in records)


def test_nm_pattern_holds_after_refit_and_unfit_layers_are_reported(base) -> None:
    model = base.clone()
    NMSparsity(n=2, m=4, min_elements=100).run(model, RunData(feeds=CALIB))
    skipped = {s["name"]: s["reason"] for s in summary(model)["skipped"]}
    assert "not a multiple of 4" in skipped["stem"] and "depthwise" in skipped["dw"]
    for node in model.graph:
        if node.name in ("pw", "res1", "res2", "side"):
            view = np.moveaxis(node.inputs[1].const_value.numpy(), 1, -1)
            assert satisfies_nm(view, 2, 4), node.name
        if node.name == "fc1":  # Gemm, transB=0: K is axis 0
            assert satisfies_nm(node.inputs[1].const_value.numpy().T, 2, 4)
    assert _snr(base, model) > 10


def test_transformer_ffn_matmuls_with_their_add_bias() -> None:
    base = ir.serde.deserialize_model(ffn())
    calib, check = feeds((6, 32), 48, seed=1), feeds((6, 32), 16, seed=2)
    plain, refit = base.clone(), base.clone()
    MagnitudePruning(sparsity=0.5, min_elements=100)(plain)
    MagnitudePruning(sparsity=0.5, min_elements=100).run(refit, RunData(feeds=calib))
    assert {r["name"] for r in summary(refit)["refit"]} == {"fc1", "fc2", "head"}
    assert _snr(base, refit, check) > _snr(base, plain, check)


def test_refit_and_sensitivity_need_data(base) -> None:
    with pytest.raises(UsageError):
        MagnitudePruning(reconstruct=True)(base.clone())
    with pytest.raises(UsageError):
        MagnitudePruning(allocation="sensitivity")(base.clone())
    with pytest.raises(ValueError):
        MagnitudePruning(sparsity=1.0)
    with pytest.raises(ValueError):
        NMSparsity(n=4, m=4)
