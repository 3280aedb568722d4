"""onnxslim.io on a model over protobuf's 2 GB cap: loaded memory-mapped, passed, saved with
external data and run, without a second copy of the weights in memory.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from test_io import clean, rss_bytes

from onnxslim import io
from onnxslim.graphs import tensor_bytes
from onnxslim.runtime import Session

# --- a model over 2 GB -----------------------------------------------------------------------


def make_sparse_big_model(folder: Path, total_bytes: int, dim: int = 1024) -> tuple[Path, int]:
    """Two float32 embedding tables [rows, dim] in one sparse data file (holes read as
    zeros; a few real rows at both ends), gathered and added, with an Identity to clean."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = total_bytes // 2 // (dim * 4)
    table_bytes = rows * dim * 4
    data = folder / "big.onnx.data"
    with open(data, "wb") as f:
        f.truncate(2 * table_bytes)
    tables = np.memmap(data, dtype=np.float32, mode="r+", shape=(2, rows, dim))
    rng = np.random.default_rng(0)
    inits, nodes = [], []
    for t in range(2):
        tables[t, :8] = rng.standard_normal((8, dim))
        tables[t, -8:] = rng.standard_normal((8, dim))
        init = TensorProto(
            name=f"table{t}",
            data_type=TensorProto.FLOAT,
            dims=[rows, dim],
            data_location=TensorProto.EXTERNAL,
        )
        for key, value in (
            ("location", data.name),
            ("offset", str(t * table_bytes)),
            ("length", str(table_bytes)),
        ):
            init.external_data.add(key=key, value=value)
        inits.append(init)
        nodes.append(helper.make_node("Gather", [f"table{t}", "ids"], [f"g{t}"]))
    tables.flush()
    del tables
    nodes += [
        helper.make_node("Add", ["g0", "g1"], ["s"]),
        helper.make_node("Identity", ["s"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "big",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", dim])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(folder / "big.onnx"))
    return folder / "big.onnx", rows


@pytest.mark.slow
def test_model_over_2gb_loads_passes_saves_and_runs(tmp_path: Path) -> None:
    """~2.1 GB of weights: loaded mapped, cleaned, saved with external data, run on ORT
    before and after with identical outputs, and the process never holds the weights."""
    start = time.perf_counter()
    folder = tmp_path / "big"
    try:
        path, rows = make_sparse_big_model(folder, 2_150_000_000)
        base = rss_bytes()
        model = io.load(path)
        assert tensor_bytes(model) > 2**31
        ids = np.array([0, 5, rows - 1, rows - 3, 7], np.int64)
        expected = Session(model).run({"ids": ids})["y"]
        assert np.abs(expected).sum() > 0
        clean(model)
        out = io.save(model, folder / "slim.onnx")
        assert (folder / "slim.onnx").stat().st_size < 10_000
        assert (folder / "slim.onnx.data").stat().st_size >= 2**31
        reloaded = io.load(out)
        assert "Identity" not in [n.op_type for n in reloaded.graph]
        np.testing.assert_array_equal(Session(reloaded).run({"ids": ids})["y"], expected)
        grew = rss_bytes() - base
        assert grew < 500_000_000, f"RSS grew by {grew / 1e6:.0f} MB for a 2.1 GB model"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(
        f"2.1 GB model: build+load+run+pass+save+reload+run in {time.perf_counter() - start:.1f} s"
    )
