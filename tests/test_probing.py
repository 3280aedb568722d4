"""WeightProbe on ORT: a probe with fewer feeds measures what a probe built on them measures."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

import onnxslim.probing as probing
from onnxslim.probing import WeightProbe


def _mlp() -> ir.Model:
    """x[1,16] -> MatMul w1 -> Relu -> MatMul w2 -> y[1,4] (a fixed batch: feed by feed)."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((16, 32)).astype(np.float32)
    w2 = rng.standard_normal((32, 4)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["y"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ir.serde.deserialize_model(model)


def test_restricted_probe_measures_like_a_probe_on_its_feeds(monkeypatch) -> None:
    model = _mlp()
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal((1, 16)).astype(np.float32)} for _ in range(8)]
    w1 = model.graph.initializers["w1"].const_value.numpy()
    override = {"w1": np.where(np.abs(w1) > 0.5, w1, 0).astype(np.float32)}
    fresh = WeightProbe(model, ["w1", "w2"], feeds[:3]).pooled_error(override)
    sessions: list[object] = []
    real = probing.Session

    def counted(*args: object, **kwargs: object) -> object:
        sessions.append(args)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(probing, "Session", counted)
    probe = WeightProbe(model, ["w1", "w2"], feeds)
    everything = probe.pooled_error(override)
    probe.restrict(3)
    assert probe.feed_count == 3 and len(sessions) == 1  # the same session
    assert probe.pooled_error(override) == fresh != everything
    # a budget the probes cannot fit in: the fewest feeds allowed, never fewer
    probe = WeightProbe(model, ["w1", "w2"], feeds)
    probe.fit(probes=10**9, seconds=1.0, minimum=2)
    assert probe.feed_count == 2
    probe.fit(probes=1, seconds=1e9, minimum=1)  # fits: nothing changes
    assert probe.feed_count == 2
