"""onnxslim.io: every refusal of a bad model, memory-mapped loading, atomic and safe saving.

Models are built here with onnx.helper; parity is checked on ONNX Runtime for real,
exact for the lossless clean-up.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from conftest import DEVMODELS_CACHE, MODELS, make_mlp
from onnx import TensorProto, helper, numpy_helper

from onnxslim import io
from onnxslim.errors import ModelLoadError, UsageError
from onnxslim.registry import BUILTIN_PASSES, DEFAULT_OPTIMIZE
from onnxslim.runtime import Session

# Clean-up that rewires the graph without reading weights, and the full default clean-up.
GRAPH_ONLY = ("eliminate-identity", "remove-unused")


def clean(model: ir.Model, names: tuple[str, ...] = GRAPH_ONLY) -> ir.Model:
    for name in names:
        BUILTIN_PASSES[name]()(model)
    return model


# --- model builders ----------------------------------------------------------------------


def make_external_mlp(
    folder: Path,
    *,
    name: str = "model.onnx",
    hidden: int = 256,
    location: str | None = None,
    seed: int = 0,
) -> Path:
    """x[N,64] -> MatMul w1 -> Add b1 -> Relu -> Identity -> MatMul w2 -> y[N,16],
    plus a dead MatMul on a big weight placed between the live ones in the data file
    (so removing it shifts the live weights' offsets), all weights external."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((64, hidden)).astype(np.float32)
    dead = rng.standard_normal((hidden, 512)).astype(np.float32)
    b1 = rng.standard_normal(hidden).astype(np.float32)
    w2 = rng.standard_normal((hidden, 16)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"], name="mm1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="add1"),
        helper.make_node("Relu", ["h1"], ["h2"], name="relu"),
        helper.make_node("Identity", ["h2"], ["h3"], name="id"),
        helper.make_node("MatMul", ["h3", "dead"], ["unused"], name="dead_mm"),
        helper.make_node("MatMul", ["h3", "w2"], ["y"], name="mm2"),
    ]
    graph = helper.make_graph(
        nodes,
        "ext_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
        initializer=[
            numpy_helper.from_array(a, n)
            for a, n in ((w1, "w1"), (dead, "dead"), (b1, "b1"), (w2, "w2"))
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / name
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location or f"{name}.data",
        size_threshold=0,
    )
    return path


def with_location(
    src: Path, dst: Path, location: str, *, offset: int | None = None, length: int | None = None
) -> Path:
    """A copy of the model at `src` whose first initializer points at `location`."""
    model = onnx.load(str(src), load_external_data=False)
    init = model.graph.initializer[0]
    entries = {e.key: e.value for e in init.external_data}
    entries["location"] = location
    if offset is not None:
        entries["offset"] = str(offset)
    if length is not None:
        entries["length"] = str(length)
    del init.external_data[:]
    for key, value in entries.items():
        init.external_data.add(key=key, value=value)
    onnx.save(model, str(dst))
    return dst


def ort_run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".tmp")


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


X = np.random.default_rng(7).standard_normal((3, 64)).astype(np.float32)


# --- refusals ----------------------------------------------------------------------------


@pytest.fixture
def ext_model(tmp_path: Path) -> Path:
    return make_external_mlp(tmp_path / "m")


def _case_absolute(model: Path) -> Path:
    return with_location(model, model.parent / "abs.onnx", str(model.parent / "model.onnx.data"))


def _case_dotdot(model: Path) -> Path:
    shutil.copy(model.parent / "model.onnx.data", model.parent.parent / "outside.data")
    return with_location(model, model.parent / "up.onnx", "../outside.data")


def _case_dotdot_back_in(model: Path) -> Path:
    # `sub/../../m/model.onnx.data` lands back in the folder, but only through `..`.
    return with_location(
        model, model.parent / "upin.onnx", f"../{model.parent.name}/model.onnx.data"
    )


def _case_symlink_out(model: Path) -> Path:
    outside = model.parent.parent / "secret.data"
    shutil.copy(model.parent / "model.onnx.data", outside)
    (model.parent / "link.data").symlink_to(outside)
    return with_location(model, model.parent / "link.onnx", "link.data")


def _case_symlinked_folder_out(model: Path) -> Path:
    outside = model.parent.parent / "elsewhere"
    outside.mkdir()
    shutil.copy(model.parent / "model.onnx.data", outside / "w.data")
    (model.parent / "sub").symlink_to(outside, target_is_directory=True)
    return with_location(model, model.parent / "subdir.onnx", "sub/w.data")


def _case_missing(model: Path) -> Path:
    return with_location(model, model.parent / "missing.onnx", "nope.data")


def _case_truncated(model: Path) -> Path:
    data = (model.parent / "model.onnx.data").read_bytes()
    (model.parent / "short.data").write_bytes(data[:1000])
    return with_location(model, model.parent / "short.onnx", "short.data")


def _case_length(model: Path) -> Path:
    return with_location(model, model.parent / "len.onnx", "model.onnx.data", length=12)


def _case_hardlink(model: Path) -> Path:
    outside = model.parent.parent / "linked.data"
    shutil.copy(model.parent / "model.onnx.data", outside)
    os.link(outside, model.parent / "hard.data")
    return with_location(model, model.parent / "hard.onnx", "hard.data")


def _case_folder_as_data(model: Path) -> Path:
    (model.parent / "dir.data").mkdir()
    return with_location(model, model.parent / "dirdata.onnx", "dir.data")


@pytest.mark.parametrize(
    "make, message",
    [
        (_case_absolute, "absolute path"),
        (_case_dotdot, r"outside the model's folder .*\(`\.\.`\)"),
        (_case_dotdot_back_in, r"\(`\.\.`\)"),
        (_case_symlink_out, "link leading outside"),
        (_case_symlinked_folder_out, "link leading outside"),
        (_case_missing, "file not found"),
        (_case_truncated, "truncated"),
        (_case_length, "declares 12 bytes"),
        (_case_hardlink, "hard links"),
        (_case_folder_as_data, "not a regular file"),
    ],
    ids=lambda v: v.__name__[6:] if callable(v) else None,
)
def test_external_data_refusals(ext_model: Path, make, message: str) -> None:
    bad = make(ext_model)
    with pytest.raises(ModelLoadError, match=message) as info:
        io.load(bad)
    text = str(info.value)
    assert "\n" not in text and "'w1'" in text, "one line naming the tensor"
    io.load(ext_model)  # the good model beside it still loads


def test_symlink_inside_the_folder_is_accepted(ext_model: Path) -> None:
    (ext_model.parent / "alias.data").symlink_to("model.onnx.data")
    good = with_location(ext_model, ext_model.parent / "alias.onnx", "alias.data")
    model = io.load(good)
    np.testing.assert_array_equal(Session(model).run({"x": X})["y"], ort_run(ext_model, X))


def _real_model(tmp_path: Path) -> list[Path]:
    """Real model files to cut: the example models and a corpus model when present."""
    paths = [make_mlp(tmp_path / "mlp.onnx")]
    paths += sorted(MODELS.glob("*.onnx"))[:1]
    corpus = sorted(DEVMODELS_CACHE.glob("*.onnx"), key=lambda p: p.stat().st_size)
    paths += corpus[:1]
    return paths


def test_not_onnx_inputs_are_refused(tmp_path: Path) -> None:
    cases = {
        "text.onnx": (b"hello, this is not a model\n" * 10, "not an ONNX model"),
        "random.onnx": (np.random.default_rng(0).bytes(4096), "not an ONNX model"),
        "empty.onnx": (b"", "empty file"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ModelLoadError, match=message):
            io.load(tmp_path / name)
    with pytest.raises(ModelLoadError, match="is a folder"):
        io.load(tmp_path)
    with pytest.raises(ModelLoadError, match="no such file"):
        io.load(tmp_path / "absent.onnx")


def test_truncated_protobuf_is_refused(tmp_path: Path) -> None:
    for source in _real_model(tmp_path):
        data = source.read_bytes()
        for fraction in (0.5, 0.25, 0.9):
            cut = tmp_path / f"cut_{source.stem}_{fraction}.onnx"
            cut.write_bytes(data[: int(len(data) * fraction)])
            with pytest.raises(ModelLoadError) as info:
                io.load(cut)
            assert "\n" not in str(info.value)


def test_unknown_domain_is_refused(tmp_path: Path) -> None:
    node = helper.make_node("Foo", ["x"], ["y"], domain="com.nowhere")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "foo.onnx"))
    with pytest.raises(ModelLoadError, match="com.nowhere"):
        io.load(tmp_path / "foo.onnx")


# --- loading maps, never reads -----------------------------------------------------------


def test_external_data_is_memory_mapped_not_read(tmp_path: Path) -> None:
    folder = tmp_path / "big"
    path = make_external_mlp(folder, hidden=16 * 1024)  # ~ 4 MB + 32 MB (dead) + 1 MB of weights
    data_bytes = (folder / "model.onnx.data").stat().st_size
    assert data_bytes > 30_000_000
    before = rss_bytes()
    model = io.load(path)
    grew = rss_bytes() - before
    externals = dict(io.external_tensors(model))
    assert set(externals) == {"w1", "dead", "b1", "w2"}
    assert all(isinstance(t, ir.ExternalTensor) for t in externals.values())
    assert grew < data_bytes / 4, f"RSS grew {grew} bytes loading {data_bytes} bytes of weights"
    # A pass that only rewires the graph and a save to another folder read no weights either.
    clean(model)
    io.save(model, tmp_path / "out.onnx")
    assert rss_bytes() - before < data_bytes / 4


# --- saving: round trip, atomicity, refusing to overwrite the input ------------------------


def test_round_trip_with_external_data_is_exact_on_ort(ext_model: Path, tmp_path: Path) -> None:
    model = io.load(ext_model)
    clean(model, DEFAULT_OPTIMIZE)
    (tmp_path / "out").mkdir()
    out = io.save(model, tmp_path / "out" / "slim.onnx")
    assert sorted(p.name for p in out.parent.iterdir()) == ["slim.onnx", "slim.onnx.data"]
    saved = onnx.load(str(out), load_external_data=False)
    assert {i.name for i in saved.graph.initializer} == {"w1", "b1", "w2"}, "dead weight removed"
    external = {i.name for i in saved.graph.initializer if i.data_location == TensorProto.EXTERNAL}
    assert external == {"w1", "w2"}, "b1 (1 KB) stays inline, the weights go to the data file"
    assert "Identity" not in [n.op_type for n in saved.graph.node]
    expected = ort_run(ext_model, X)
    np.testing.assert_array_equal(ort_run(out, X), expected)
    np.testing.assert_array_equal(Session(io.load(out)).run({"x": X})["y"], expected)
    np.testing.assert_array_equal(Session(model).run({"x": X})["y"], expected)
    assert (out.parent / "slim.onnx.data").stat().st_size < (
        ext_model.parent / "model.onnx.data"
    ).stat().st_size


def test_input_files_are_never_modified(ext_model: Path, tmp_path: Path) -> None:
    files = [ext_model, ext_model.parent / "model.onnx.data"]
    before = [(digest(f), f.stat().st_mtime_ns, f.stat().st_ino) for f in files]
    model = io.load(ext_model)
    clean(model)
    io.save(model, tmp_path / "a.onnx")
    io.save(model, ext_model.parent / "beside.onnx")
    io.save(model, tmp_path / "inline.onnx", external_data=False)
    assert [(digest(f), f.stat().st_mtime_ns, f.stat().st_ino) for f in files] == before


def test_inline_save_of_an_external_model_is_self_contained(
    ext_model: Path, tmp_path: Path
) -> None:
    model = io.load(ext_model)
    out = io.save(model, tmp_path / "inline.onnx", external_data=False)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("inline")) == [
        "inline.onnx"
    ]
    assert not any(
        i.data_location == TensorProto.EXTERNAL for i in onnx.load(str(out)).graph.initializer
    )
    np.testing.assert_array_equal(ort_run(out, X), ort_run(ext_model, X))
    assert isinstance(model.graph.initializers["w1"].const_value, ir.ExternalTensor), (
        "model unchanged"
    )


def test_save_leaves_no_temporary_files_and_replaces_previous_output(
    ext_model: Path, tmp_path: Path
) -> None:
    model = io.load(ext_model)
    out = tmp_path / "out.onnx"
    io.save(model, out)
    clean(model)
    io.save(model, out)
    assert leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [
        "out.onnx",
        "out.onnx.data",
    ]
    np.testing.assert_array_equal(ort_run(out, X), ort_run(ext_model, X))


def test_failure_while_writing_keeps_previous_output(
    ext_model: Path, tmp_path: Path, monkeypatch
) -> None:
    model = io.load(ext_model)
    out = tmp_path / "out.onnx"
    io.save(model, out)
    previous = (digest(out), digest(tmp_path / "out.onnx.data"))
    clean(model)

    def half_written(proto, path, *args, **kwargs):
        Path(path).write_bytes(proto.SerializeToString()[:100])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx, "save", half_written)
    with pytest.raises(UsageError, match="cannot write .*No space left"):
        io.save(model, out)
    assert (digest(out), digest(tmp_path / "out.onnx.data")) == previous
    assert leftovers(tmp_path) == []


def test_failure_between_renames_restores_previous_pair(
    ext_model: Path, tmp_path: Path, monkeypatch
) -> None:
    model = io.load(ext_model)
    out = tmp_path / "out.onnx"
    io.save(model, out)
    previous = (digest(out), digest(tmp_path / "out.onnx.data"))
    clean(model)  # the new data file differs from the previous one
    real_replace = os.replace

    def fail_on_model(src, dst, *args, **kwargs):
        if Path(dst) == out:
            raise OSError(5, "Input/output error")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", fail_on_model)
    with pytest.raises(UsageError, match="cannot write"):
        io.save(model, out)
    monkeypatch.undo()
    assert (digest(out), digest(tmp_path / "out.onnx.data")) == previous
    assert leftovers(tmp_path) == []
    np.testing.assert_array_equal(ort_run(out, X), ort_run(ext_model, X))


def test_output_equal_to_input_is_refused_unless_overwrite(ext_model: Path) -> None:
    model = io.load(ext_model)
    before = digest(ext_model)
    with pytest.raises(UsageError, match="--overwrite"):
        io.save(model, ext_model)
    with pytest.raises(UsageError, match="--overwrite"):
        io.save(model, ext_model, source=ext_model)
    link = ext_model.parent / "link.onnx"
    link.symlink_to(ext_model.name)
    with pytest.raises(UsageError, match="input model"):
        io.save(model, link, source=ext_model)
    hard = ext_model.parent / "hard.onnx"
    os.link(ext_model, hard)
    with pytest.raises(UsageError, match="input model"):
        io.save(model, hard, source=ext_model)
    assert digest(ext_model) == before and link.is_symlink()


def test_output_that_would_replace_the_inputs_data_is_refused(tmp_path: Path) -> None:
    # The input's weights live in `w.onnx.data`; saving to `w.onnx` would replace them.
    path = make_external_mlp(tmp_path, name="model.onnx", location="w.onnx.data")
    model = io.load(path)
    with pytest.raises(UsageError, match="external data of the input model"):
        io.save(model, tmp_path / "w.onnx")
    with pytest.raises(UsageError, match="external data of the input model"):
        io.save(model, tmp_path / "w.onnx.data")
    np.testing.assert_array_equal(Session(model).run({"x": X})["y"], ort_run(path, X))


def test_overwrite_replaces_in_place_and_model_stays_valid(ext_model: Path, tmp_path: Path) -> None:
    """Overwriting rewrites the data file the model's own tensors are mapped from."""
    expected = ort_run(ext_model, X)
    model = io.load(ext_model)
    # Mapped from the data file about to be replaced, and a view of it still held.
    held = model.graph.initializers["w2"].const_value.numpy()
    held_copy = held.copy()
    clean(model)  # removes `dead`, which sat between w1 and b1: offsets shift
    old_size = (ext_model.parent / "model.onnx.data").stat().st_size
    io.save(model, ext_model, source=ext_model, overwrite=True)
    assert (ext_model.parent / "model.onnx.data").stat().st_size < old_size
    assert leftovers(ext_model.parent) == []
    np.testing.assert_array_equal(ort_run(ext_model, X), expected)
    # The in-memory model still reads the right bytes (now from the new file) ...
    np.testing.assert_array_equal(Session(model).run({"x": X})["y"], expected)
    # ... and can be saved again elsewhere, correctly.
    again = io.save(model, tmp_path / "again.onnx")
    np.testing.assert_array_equal(ort_run(again, X), expected)
    np.testing.assert_array_equal(held, held_copy)  # old views still read the old bytes
    # Overwriting the same file once more without --overwrite is refused.
    with pytest.raises(UsageError, match="--overwrite"):
        io.save(model, ext_model)


def test_external_data_chosen_above_protobuf_cap(tmp_path: Path, monkeypatch) -> None:
    model = io.load(make_mlp(tmp_path / "mlp.onnx", hidden=512))  # inline weights, ~18 KB
    io.save(model, tmp_path / "small.onnx")
    assert not (tmp_path / "small.onnx.data").exists()
    monkeypatch.setattr(io, "PROTOBUF_SAFE_BYTES", 10_000)
    out = io.save(model, tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").stat().st_size > 10_000
    reloaded = io.load(out)
    assert any(True for _ in io.external_tensors(reloaded))
    x = np.ones((2, 8), np.float32)
    np.testing.assert_array_equal(
        Session(reloaded).run({"x": x})["y"], Session(model).run({"x": x})["y"]
    )
    with pytest.raises(UsageError, match="external data"):
        io.save(model, tmp_path / "forced.onnx", external_data=False)


def test_bad_output_paths(ext_model: Path, tmp_path: Path) -> None:
    model = io.load(ext_model)
    # A missing output folder is created with its parents, as peer tools do.
    out = io.save(model, tmp_path / "nowhere" / "deeper" / "out.onnx")
    assert out.is_file() and (out.parent / "out.onnx.data").is_file()
    # Only a path through an existing file is an error (and nothing is written).
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        io.save(model, tmp_path / "file" / "sub" / "out.onnx")
    assert (tmp_path / "file").read_text() == "x"
    with pytest.raises(UsageError, match="is a folder"):
        io.save(model, tmp_path)


def test_constant_attribute_with_external_data_survives_a_move(tmp_path: Path) -> None:
    """onnx_ir externalizes only initializers; a Constant node's external value must be
    carried into the output, not left pointing at a file the output folder lacks."""
    folder = tmp_path / "src"
    folder.mkdir()
    value = np.arange(600, dtype=np.float32)
    node = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(value, "c"))
    add = helper.make_node("Add", ["x", "c"], ["y"])
    graph = helper.make_graph(
        [node, add],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [600])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [600])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(
        model,
        str(folder / "c.onnx"),
        save_as_external_data=True,
        location="c.data",
        size_threshold=0,
        convert_attribute=True,
    )
    assert (
        onnx.load(str(folder / "c.onnx"), load_external_data=False)
        .graph.node[0]
        .attribute[0]
        .t.data_location
        == 1
    )
    loaded = io.load(folder / "c.onnx")
    out = io.save(loaded, tmp_path / "moved.onnx")
    x = np.ones(600, np.float32)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], x + value)


def _relu_pair(*, reversed_order: bool) -> ir.Model:
    """x -> Relu -> Relu -> y, the nodes held in order or reversed in memory."""
    x = ir.Value(name="x", shape=ir.Shape([2]), type=ir.TensorType(ir.DataType.FLOAT))
    first = ir.node("Relu", [x], num_outputs=1)
    first.outputs[0].name = "h"
    second = ir.node("Relu", [first.outputs[0]], num_outputs=1)
    second.outputs[0].name = "y"
    second.outputs[0].type = ir.TensorType(ir.DataType.FLOAT)
    second.outputs[0].shape = ir.Shape([2])
    nodes = [second, first] if reversed_order else [first, second]
    graph = ir.Graph([x], [second.outputs[0]], nodes=nodes, opset_imports={"": 17}, name="g")
    return ir.Model(graph, ir_version=8)


def test_save_sorts_only_a_graph_out_of_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real_sort = ir.Graph.sort

    def counting_sort(self: ir.Graph) -> None:
        calls.append(len(self))
        real_sort(self)

    monkeypatch.setattr(ir.Graph, "sort", counting_sort)
    io.save(_relu_pair(reversed_order=False), tmp_path / "sorted.onnx")
    assert calls == []  # in order already: no rebuild of the node list
    io.save(_relu_pair(reversed_order=True), tmp_path / "unsorted.onnx")
    assert calls == [2]
    for name in ("sorted.onnx", "unsorted.onnx"):
        proto = onnx.load(str(tmp_path / name))
        onnx.checker.check_model(proto, full_check=True)
        assert [n.output[0] for n in proto.graph.node] == ["h", "y"]
