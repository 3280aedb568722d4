"""Activation-aware clustering: sensitivity-weighted k-means (importance.py) and palette
indices chosen with error feedback (assign.py), on the trained models of models/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir

from onnxslim import api
from onnxslim.io import load
from onnxslim.passes.cluster.assign import assign, hessians
from onnxslim.passes.cluster.cluster import prepare
from onnxslim.passes.cluster.importance import readers_of, weight_importance
from onnxslim.passes.cluster.kmeans import cluster_1d
from onnxslim.passes.cluster.palette import cluster_tensor
from onnxslim.passes.cluster.weights import find_weights
from onnxslim.passes.prune._common import load_feeds
from onnxslim.runtime import Session, SessionConfig

MODELS = Path(__file__).resolve().parents[1] / "models"


def _digits(name: str = "digits_cnn") -> tuple:
    model = load(MODELS / f"{name}.onnx")
    prepare(model)
    weights, _ = find_weights(model, min_elements=1024)
    feeds = load_feeds(MODELS / f"{name}.calib.npz", 256, model)
    assert feeds is not None
    return model, weights, feeds


def _weighted_sse(values: np.ndarray, clustered: np.ndarray, importance: np.ndarray) -> float:
    return float(np.sum(importance * (values - clustered) ** 2))


def test_importance_moves_the_palette_towards_the_heavy_values() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=4000)
    importance = np.where(values > 1.0, 50.0, 1.0)  # the upper tail costs 50x
    plain = cluster_1d(values, 4)
    weighted = cluster_1d(values, 4, importance=importance)
    assert np.sum(weighted.palette > 1.0) > np.sum(plain.palette > 1.0)
    assert _weighted_sse(values, weighted.values(), importance) < 0.8 * _weighted_sse(
        values, plain.values(), importance
    )


def test_weighted_kmeans_and_assignment_lower_the_layer_output_error() -> None:
    model, weights, feeds = _digits()
    importance = weight_importance(model, weights, feeds)
    found = hessians(model, readers_of(model, weights), feeds)
    assert set(found) <= set(importance) and len(found) >= 2
    totals = np.zeros(3)
    for weight in weights:
        if weight.name not in found:
            continue
        hessian = found[weight.name]
        layer, w = hessian.layer, hessian.layer.array()

        def output_error(clustered: np.ndarray, layer=layer, w=w, hessian=hessian) -> float:
            e = layer.to_matrix(w - clustered).astype(np.float64)
            per = e.shape[0] // hessian.gram.shape[0]
            return sum(
                float(
                    np.einsum(
                        "oi,ij,oj->", e[g * per : (g + 1) * per], h, e[g * per : (g + 1) * per]
                    )
                )
                for g, h in enumerate(hessian.gram)
            )

        plain, _ = cluster_tensor(w, 3)
        weighted, _ = cluster_tensor(w, 3, importance=importance[weight.name])
        assigned = assign(weighted, w, hessian)
        assert np.array_equal(assigned.palette, weighted.palette)  # only the indices move
        totals += [output_error(p.dense()) for p in (plain, weighted, assigned)]
    # the weighting alone is a diagonal estimate: about even on these two convs (1020.8
    # against 1018.4); the assignment, which uses the whole X^T X, is what lowers it
    assert totals[1] < 1.02 * totals[0]
    assert totals[2] < 0.7 * totals[0]


def test_assignment_holds_on_feeds_it_never_saw() -> None:
    model, weights, feeds = _digits()
    found = hessians(model, readers_of(model, weights), feeds)
    held = load_feeds(MODELS / "digits_cnn.eval.npz", 64, model)
    assert held is not None

    def outputs(m: ir.Model) -> np.ndarray:
        session = Session(m, SessionConfig(threads=1))
        return np.concatenate([next(iter(session.run(f).values())) for f in held])

    reference = outputs(model)
    errors = []
    for use in (False, True):
        copy = model.clone()
        for weight in weights:
            w = weight.value.const_value.numpy()
            p, _ = cluster_tensor(w, 2)
            if use and weight.name in found:
                p = assign(p, w, found[weight.name])
            copy.graph.initializers[weight.name].const_value = ir.Tensor(
                p.dense(), name=weight.name
            )
        errors.append(float(np.sqrt(np.mean((outputs(copy) - reference) ** 2))))
    assert errors[1] < 0.7 * errors[0]


def test_the_search_reaches_fewer_bits_with_activations() -> None:
    path, calib = MODELS / "digits_detector.onnx", MODELS / "digits_detector.calib.npz"
    uniform = api.cluster(path, calib=calib, importance="uniform")
    aware = api.cluster(path, calib=calib)
    # measured: 7.77 bits per weight plain, 6.19 with both
    assert aware.bits_per_weight < uniform.bits_per_weight - 0.5


def test_a_pruned_weight_keeps_its_zeros_through_the_assignment() -> None:
    model, weights, feeds = _digits()
    found = hessians(model, readers_of(model, weights), feeds)
    name = max(found, key=lambda n: found[n].layer.array().size)
    hessian = found[name]
    w = hessian.layer.array()
    pruned = np.where(np.abs(w) > np.median(np.abs(w)), w, 0).astype(w.dtype)
    nearest, _ = cluster_tensor(pruned, 3)  # zero keeps an entry of its own (kmeans keep_zero)
    chosen = assign(nearest, pruned, hessian)
    assert np.array_equal(chosen.dense() == 0, pruned == 0)

    def output_error(clustered: np.ndarray) -> float:
        e = hessian.layer.to_matrix(pruned - clustered).astype(np.float64)
        return float(np.einsum("oi,ij,oj->", e, hessian.gram[0], e))

    assert output_error(chosen.dense()) < 0.8 * output_error(nearest.dense())
