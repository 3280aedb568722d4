"""The default `optimize` on every real model of the corpus (skipped when it is not fetched).

Each model goes through api.optimize with realistic feeds (the corpus' own generator),
the guard on, then is saved and reloaded: outputs must match the original on ORT within
1e-5 of each output's scale (exactly for integer and boolean outputs), the file must not
grow, the node count must not rise, and no pass may have been rolled back or failed (a
rollback would mean a lossless pass is wrong on a real model).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import DEVMODELS_CACHE, devmodel_feeds, devmodel_params

from onnxslim import api, io
from onnxslim.graphs import node_count
from onnxslim.runtime import Session, SessionConfig

RTOL = 1e-5


@pytest.mark.devmodels
@pytest.mark.slow
@pytest.mark.parametrize("entry", devmodel_params())
def test_default_optimize_on_real_model(entry: dict, tmp_path: Path) -> None:
    source = DEVMODELS_CACHE / f"{entry['id']}.onnx"
    feeds = devmodel_feeds(entry["id"], 2, seed=0)
    original = io.load(source)
    nodes_before = node_count(original)
    result = api.optimize(original, feeds=feeds)
    assert not result.result.rolled_back, [(r.name, r.reason) for r in result.result.rolled_back]
    assert result.passed
    target = tmp_path / "out.onnx"
    api.save(result.model, target)
    assert target.stat().st_size <= source.stat().st_size, "the file grew"
    optimized = io.load(target)
    assert node_count(optimized) <= nodes_before
    reference = Session(source, SessionConfig(optimization="disable"))
    candidate = Session(target, SessionConfig(optimization="disable"))
    assert candidate.input_names == [n for n in reference.input_names if n in candidate.input_names]
    for feed in feeds:
        ref, got = reference.run(feed), candidate.run(feed)
        assert list(ref) == list(got)
        for name in ref:
            assert ref[name].dtype == got[name].dtype and ref[name].shape == got[name].shape, name
            if ref[name].dtype.kind in "fc":
                scale = float(np.max(np.abs(ref[name]), initial=0.0))
                np.testing.assert_allclose(
                    got[name], ref[name], rtol=0, atol=RTOL * max(scale, 1e-30), err_msg=name
                )
            else:
                np.testing.assert_array_equal(got[name], ref[name], err_msg=name)
    print(
        f"{entry['id']}: {nodes_before} -> {node_count(optimized)} nodes, "
        f"{source.stat().st_size} -> {target.stat().st_size} bytes"
    )
