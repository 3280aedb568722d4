"""onnxslim.calibration: every source kind, strict checks, streaming, images; fed to ORT."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import MODELS, make_mlp
from onnx import TensorProto, helper
from onnxruntime.quantization import CalibrationDataReader
from PIL import Image

from onnxslim import api, io
from onnxslim.calibration import FeedStream, iter_npz, open_feeds, read_feeds
from onnxslim.errors import DataError, UsageError
from onnxslim.feeds import InputSpec, input_specs
from onnxslim.images import ImagePreprocessing, parse_image_preprocessing
from onnxslim.runtime import Session


def two_input_model(path: Path) -> Path:
    """a[N,4] float32, ids[N] int64 -> y = a * Cast(ids)[:, None]."""
    nodes = [
        helper.make_node("Cast", ["ids"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["f", "axes"], ["f2"]),
        helper.make_node("Mul", ["a", "f2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "two",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["N"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[onnx.numpy_helper.from_array(np.array([1], np.int64), "axes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def image_model(path: Path, shape: list, channels_axis: int = 1) -> Path:
    """ReduceMean over the image: runs on any image-shaped float input."""
    node = helper.make_node("ReduceMean", ["img"], ["m"], keepdims=0)
    graph = helper.make_graph(
        [node],
        "img",
        [helper.make_tensor_value_info("img", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("m", TensorProto.FLOAT, [])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture
def mlp(tmp_path: Path):
    return io.load(make_mlp(tmp_path / "mlp.onnx"))


def samples(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 2, 8)).astype(np.float32)


def run_all(model, stream) -> list[np.ndarray]:
    session = Session(model)
    return [session.run(feed)["y"] for feed in stream]


# --- sources -----------------------------------------------------------------------------


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed], ids=["stored", "deflated"])
def test_stacked_npz_streams_each_sample(mlp, tmp_path: Path, save) -> None:
    x = samples(5)
    save(tmp_path / "calib.npz", x=x)
    stream = open_feeds(tmp_path / "calib.npz", mlp)
    assert isinstance(stream, FeedStream) and len(stream) == 5
    feeds = list(stream)
    assert [f.keys() for f in feeds] == [{"x"}] * 5
    for i, feed in enumerate(feeds):
        np.testing.assert_array_equal(feed["x"], x[i])
        assert feed["x"].flags.writeable and feed["x"].dtype == np.float32
    again = [f["x"] for f in stream]  # files re-open: a second pass reads the same data
    np.testing.assert_array_equal(np.stack(again), x)
    outputs = run_all(mlp, stream)
    reference = Session(mlp)
    for i, y in enumerate(outputs):
        np.testing.assert_array_equal(y, reference.run({"x": x[i]})["y"])


def test_fortran_ordered_and_multi_input_npz(tmp_path: Path) -> None:
    model = io.load(two_input_model(tmp_path / "two.onnx"))
    a = np.asfortranarray(np.random.default_rng(1).standard_normal((6, 3, 4)).astype(np.float32))
    ids = np.arange(18, dtype=np.int64).reshape(6, 3)
    np.savez(tmp_path / "two.npz", a=a, ids=ids)
    feeds = read_feeds(tmp_path / "two.npz", model)
    assert len(feeds) == 6
    for i, feed in enumerate(feeds):
        np.testing.assert_array_equal(feed["a"], a[i])
        np.testing.assert_array_equal(feed["ids"], ids[i])
        y = Session(model).run(feed)["y"]
        np.testing.assert_array_equal(y, a[i] * ids[i][:, None].astype(np.float32))


def test_npy_file_and_folders_of_arrays(mlp, tmp_path: Path) -> None:
    x = samples(12)
    np.save(tmp_path / "stacked.npy", x)
    np.testing.assert_array_equal(
        np.stack([f["x"] for f in open_feeds(tmp_path / "stacked.npy", mlp)]), x
    )

    npy = tmp_path / "npy"
    npy.mkdir()
    for i in range(12):  # natural order: s2 before s10
        np.save(npy / f"s{i}.npy", x[i])
    (npy / "README.txt").write_text("not data")
    stream = open_feeds(npy, mlp)
    assert len(stream) == 12
    np.testing.assert_array_equal(np.stack([f["x"] for f in stream]), x)

    npz = tmp_path / "npz"
    npz.mkdir()
    for i in range(12):
        np.savez(npz / f"s{i}.npz", x=x[i])
    np.testing.assert_array_equal(np.stack([f["x"] for f in open_feeds(npz, mlp, limit=5)]), x[:5])
    assert len(open_feeds(npz, mlp, limit=5)) == 5


def test_ort_calibration_data_reader_used_unchanged(mlp) -> None:
    x = samples(4)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"x": s} for s in x])

        def get_next(self):
            return next(self.items, None)

    class RewindingReader(Reader):
        def rewind(self) -> None:
            self.items = iter([{"x": s} for s in x])

        def __len__(self) -> int:
            return len(x)

    once = open_feeds(Reader(), mlp)
    assert once.count is None
    np.testing.assert_array_equal(np.stack([f["x"] for f in once]), x)
    with pytest.raises(DataError, match="only once.*rewind"):
        list(once)

    twice = open_feeds(RewindingReader(), mlp)
    assert len(twice) == 4
    first, second = [np.stack([f["x"] for f in twice]) for _ in range(2)]
    np.testing.assert_array_equal(first, x)
    np.testing.assert_array_equal(second, x)
    assert len(run_all(mlp, twice)) == 4


def test_iterables(mlp) -> None:
    x = samples(3)
    listed = open_feeds([{"x": s} for s in x], mlp)
    assert len(listed) == 3 and len(list(listed)) == len(list(listed)) == 3

    generated = open_feeds(({"x": s} for s in x), mlp)
    assert generated.count is None
    assert len(list(generated)) == 3
    with pytest.raises(DataError, match="only once"):
        list(generated)
    with pytest.raises(DataError, match="ambiguous"):
        open_feeds({"x": x[0]}, mlp)
    with pytest.raises(DataError, match="holds no samples"):
        list(open_feeds([], mlp))
    with pytest.raises(DataError, match="cannot read feeds from a int"):
        open_feeds(3, mlp)  # type: ignore[arg-type]


def test_api_validation_feeds_reads_every_source(mlp, tmp_path: Path) -> None:
    x = samples(6)
    np.savez(tmp_path / "eval.npz", x=x, labels=np.arange(6))  # labels are not an input: dropped
    feeds, description = api.validation_feeds(mlp, tmp_path / "eval.npz", count=4)
    assert len(feeds) == 4 and set(feeds[0]) == {"x"} and "eval.npz (4 feeds)" in description
    feeds, _ = api.validation_feeds(mlp, [{"x": s} for s in x], count=2)
    assert len(feeds) == 2
    with pytest.raises(DataError, match="float64"):
        api.validation_feeds(mlp, [{"x": x[0].astype(np.float64)}])


@pytest.mark.parametrize("name", ["digits_cnn", "digits_transformer"])
def test_example_models_calibration_files(name: str) -> None:
    model_path, calib = MODELS / f"{name}.onnx", MODELS / f"{name}.calib.npz"
    model = io.load(model_path)
    stream = open_feeds(calib, model, limit=8)
    outputs = run_all_outputs(model, stream)
    assert len(outputs) == min(8, stream.count or 8)
    evaluation = MODELS / f"{name}.eval.npz"
    with_labels = list(open_feeds(evaluation, model, limit=2, extra="keep"))
    assert "labels" in with_labels[0]
    with pytest.raises(DataError, match="'labels' is not an input"):
        open_feeds(evaluation, model)


def run_all_outputs(model, stream) -> list[dict[str, np.ndarray]]:
    session = Session(model)
    return [session.run(feed) for feed in stream]


# --- checks ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "feed, message",
    [
        (
            {"input": np.zeros((1, 8), np.float32)},
            r"sample 0: missing input 'x' \(expects float32 \[N,8\]\); got arrays 'input'",
        ),
        (
            {"x": np.zeros((1, 8), np.float32), "z": np.zeros(1)},
            r"sample 0: 'z' is not an input of the model \(inputs: 'x'\)",
        ),
        (
            {"x": np.zeros((1, 8), np.float64)},
            r"input 'x' expects float32 \[N,8\], got float64 \[1, 8\] "
            r"\(convert with \.astype\(np\.float32\)\)",
        ),
        ({"x": np.zeros(8, np.float32)}, r"rank 1 instead of 2 \(missing the batch axis"),
        ({"x": np.zeros((1, 7), np.float32)}, r"got float32 \[1, 7\]: axis 1 is 7, must be 8"),
        ({"x": "text"}, r"input 'x' is a str, expected a numpy array"),
    ],
)
def test_data_that_does_not_fit_names_input_expected_and_got(mlp, feed, message) -> None:
    good = {"x": np.zeros((1, 8), np.float32)}
    with pytest.raises(DataError, match=message) as info:
        list(open_feeds([feed], mlp))
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match="given feeds, sample 2"):
        list(open_feeds([good, good, feed], mlp))


def test_sample_that_is_not_a_mapping(mlp) -> None:
    with pytest.raises(DataError, match="sample 0: expected a mapping .* got ndarray"):
        list(open_feeds([np.zeros((1, 8), np.float32)], mlp))


def test_extra_arrays_policy(mlp) -> None:
    feed = {"x": np.zeros((1, 8), np.float32), "labels": np.array([3])}
    assert set(read_feeds([feed], mlp, extra="ignore")[0]) == {"x"}
    assert set(read_feeds([feed], mlp, extra="keep")[0]) == {"x", "labels"}
    with pytest.raises(DataError, match="'labels' is not an input"):
        read_feeds([feed], mlp)
    with pytest.raises(UsageError, match="extra must be"):
        open_feeds([feed], mlp, extra="drop")  # type: ignore[arg-type]


def test_npz_headers_are_checked_before_reading(mlp, tmp_path: Path) -> None:
    cases = {
        "missing": (
            {"input": np.zeros((2, 1, 8), np.float32)},
            r"no array for input 'x' \(expects float32 \[N,8\] per sample.*arrays: 'input'",
        ),
        "dtype": (
            {"x": np.zeros((2, 1, 8), np.float64)},
            r"array 'x' \(per sample.*expects float32 \[N,8\], got float64 \[1, 8\]",
        ),
        "rank": ({"x": np.zeros((2, 8), np.float32)}, "rank 1 instead of 2"),
        "extra": (
            {"x": np.zeros((2, 1, 8), np.float32), "w": np.zeros((2, 3))},
            "array 'w' is not an input",
        ),
        "count": (
            {"x": np.zeros((2, 1, 8), np.float32), "w": np.zeros((3, 3))},
            r"disagree on the number of samples \('x': 2, 'w': 3\)",
        ),
        "scalar": ({"x": np.float32(1)}, "is a scalar"),
    }
    for name, (arrays, message) in cases.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
        with pytest.raises(DataError, match=message):
            open_feeds(tmp_path / f"{name}.npz", mlp)
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="broken.npz: cannot read"):
        open_feeds(tmp_path / "broken.npz", mlp)
    with pytest.raises(DataError, match="not found"):
        open_feeds(tmp_path / "absent.npz", mlp)
    (tmp_path / "data.csv").write_text("1,2")
    with pytest.raises(DataError, match="unsupported data file"):
        open_feeds(tmp_path / "data.csv", mlp)


def test_truncated_npz_member_names_the_sample(mlp, tmp_path: Path) -> None:
    np.savez(tmp_path / "full.npz", x=samples(50))
    data = (tmp_path / "full.npz").read_bytes()
    # Keep the zip directory intact but lie about nothing: cut the stored member's data
    # by rewriting the archive with a shorter payload under the same header.
    import zipfile

    with zipfile.ZipFile(tmp_path / "full.npz") as archive:
        member = archive.read("x.npy")
    with zipfile.ZipFile(tmp_path / "short.npz", "w") as archive:
        archive.writestr("x.npy", member[: len(member) // 2])
    assert len(data) > 0
    stream = open_feeds(tmp_path / "short.npz", mlp)
    with pytest.raises(DataError, match="ends early at sample 2[0-9]"):
        list(stream)


def test_folder_errors(mlp, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no .npz, .npy or image files"):
        open_feeds(empty, mlp)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    np.save(mixed / "a.npy", np.zeros((1, 8), np.float32))
    Image.new("RGB", (4, 4)).save(mixed / "b.png")
    with pytest.raises(DataError, match="both array files .* and images"):
        open_feeds(mixed, mlp)
    two = io.load(two_input_model(tmp_path / "two.onnx"))
    npy = tmp_path / "npy"
    npy.mkdir()
    np.save(npy / "a.npy", np.zeros((1, 4), np.float32))
    with pytest.raises(DataError, match="model has 2 inputs; use .npz files"):
        open_feeds(npy, two)
    bad = tmp_path / "bad"
    bad.mkdir()
    np.save(bad / "0.npy", np.zeros((1, 8), np.float32))
    (bad / "1.npy").write_bytes(b"garbage")
    stream = open_feeds(bad, mlp)
    with pytest.raises(DataError, match=r"1.npy: cannot read"):
        list(stream)
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    np.save(wrong / "0.npy", np.zeros((1, 8), np.float32))
    np.save(wrong / "1.npy", np.zeros((1, 8), np.float64))
    with pytest.raises(DataError, match=r"wrong/1.npy: input 'x' expects float32"):
        list(open_feeds(wrong, mlp))


# --- streaming ---------------------------------------------------------------------------


def peak_bytes(read: Callable[[], Iterator]) -> tuple[int, int]:
    """(number of feeds, peak traced bytes) while consuming the stream one feed at a time."""
    gc.collect()
    tracemalloc.start()
    try:
        count = 0
        for _ in read():
            count += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return count, peak


@pytest.mark.parametrize(
    "kind", ["npz", "npz-deflated", "npy", "npy-folder", "npz-folder", "images", "generator"]
)
def test_memory_does_not_grow_with_the_number_of_samples(tmp_path: Path, kind: str) -> None:
    """Reading 10x more samples must not raise the peak: one sample in memory at a time."""
    shape = (1, 3, 32, 32)  # 12 KB a sample; 200 samples = 2.4 MB if they were all held
    specs = [InputSpec("img", np.dtype(np.float32), shape)]

    def source(n: int):
        folder = tmp_path / f"{kind}{n}"
        folder.mkdir()
        data = np.random.default_rng(n).standard_normal((n, *shape)).astype(np.float32)
        if kind == "npz":
            np.savez(folder / "d.npz", img=data)
            return folder / "d.npz"
        if kind == "npz-deflated":
            np.savez_compressed(folder / "d.npz", img=data)
            return folder / "d.npz"
        if kind == "npy":
            np.save(folder / "d.npy", data)
            return folder / "d.npy"
        if kind == "npy-folder":
            for i in range(n):
                np.save(folder / f"{i}.npy", data[i])
            return folder
        if kind == "npz-folder":
            for i in range(n):
                np.savez(folder / f"{i}.npz", img=data[i])
            return folder
        if kind == "images":
            for i in range(n):
                pixels = (np.random.default_rng(i).random((32, 32, 3)) * 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
            return folder
        return None

    def reader(n: int) -> Callable[[], Iterator]:
        if kind == "generator":
            rng = np.random.default_rng(0)
            return lambda: iter(
                open_feeds(
                    ({"img": rng.standard_normal(shape).astype(np.float32)} for _ in range(n)),
                    specs,
                )
            )
        path = source(n)
        return lambda: iter(open_feeds(path, specs))

    few, many = 20, 200
    count_few, peak_few = peak_bytes(reader(few))
    count_many, peak_many = peak_bytes(reader(many))
    assert (count_few, count_many) == (few, many)
    sample = int(np.prod(shape)) * 4
    # A folder's file names and, while sorting them at open, their sort keys are the one
    # thing allowed to grow: < 600 bytes a file, against 12 KB a sample.
    names = 600 * (many - few) if kind in ("npy-folder", "npz-folder", "images") else 0
    assert peak_many < peak_few + 4 * sample + names, (
        f"{kind}: peak {peak_few} bytes for {few} samples, {peak_many} for {many}"
    )
    assert peak_many < 40 * sample, f"{kind}: peak {peak_many} bytes holds far more than a sample"


def test_iter_npz_kept_for_older_callers(tmp_path: Path) -> None:
    x = samples(3)
    np.savez(tmp_path / "d.npz", x=x, labels=np.arange(3))
    feeds = list(iter_npz(tmp_path / "d.npz"))
    assert len(feeds) == 3 and set(feeds[0]) == {"x", "labels"}
    np.testing.assert_array_equal(feeds[2]["x"], x[2])


# --- images ------------------------------------------------------------------------------


def write_images(folder: Path, count: int, size: tuple[int, int] = (6, 5)) -> list[np.ndarray]:
    """PNG files with known pixels (height, width = size); returns the HWC uint8 arrays."""
    folder.mkdir()
    images = []
    for i in range(count):
        pixels = (np.random.default_rng(i).random((*size, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img_{i}.png")
        images.append(pixels)
    return images


def test_image_folder_with_stated_preprocessing_nchw(tmp_path: Path) -> None:
    images = write_images(tmp_path / "imgs", 11)
    model = io.load(image_model(tmp_path / "m.onnx", ["N", 3, 6, 5]))
    text = "size=6,5;layout=NCHW;scale=1/255;mean=0.485,0.456,0.406;std=0.229,0.224,0.225;order=RGB"
    stream = open_feeds(tmp_path / "imgs", model, image_preprocessing=text)
    feeds = list(stream)
    assert len(stream) == 11 and len(feeds) == 11
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    # natural order: img_2 comes before img_10
    for i, feed in enumerate(feeds):
        expected = ((images[i].astype(np.float32) * np.float32(1 / 255) - mean) / std).transpose(
            2, 0, 1
        )[None]
        np.testing.assert_allclose(feed["img"], expected, rtol=0, atol=1e-6)
        assert feed["img"].shape == (1, 3, 6, 5) and feed["img"].dtype == np.float32
    session = Session(model)
    for feed in feeds[:3]:
        np.testing.assert_allclose(session.run(feed)["m"], feed["img"].mean(), rtol=1e-5)


def test_image_preprocessing_inferred_from_model_nhwc_bgr_and_gray(tmp_path: Path) -> None:
    images = write_images(tmp_path / "imgs", 2, size=(10, 12))
    nhwc = io.load(image_model(tmp_path / "nhwc.onnx", [1, 4, 6, 3]))
    feeds = read_feeds(tmp_path / "imgs", nhwc, image_preprocessing=ImagePreprocessing(order="BGR"))
    assert feeds[0]["img"].shape == (1, 4, 6, 3)
    resized = np.asarray(
        Image.fromarray(images[0]).resize((6, 4), Image.Resampling.BILINEAR), np.float32
    )
    np.testing.assert_allclose(feeds[0]["img"][0], resized[:, :, ::-1] / 255, atol=1e-6)

    gray = io.load(image_model(tmp_path / "gray.onnx", ["N", 1, 10, 12]))
    feeds = read_feeds(tmp_path / "imgs", gray)
    expected = np.asarray(Image.fromarray(images[1]).convert("L"), np.float32) / 255
    np.testing.assert_allclose(feeds[1]["img"][0, 0], expected, atol=1e-6)
    assert len(run_all_outputs(gray, feeds)) == 2

    chw = io.load(image_model(tmp_path / "chw.onnx", [3, 8, 8]))  # no batch axis
    feeds = read_feeds(tmp_path / "imgs", chw, image_preprocessing="resize=crop")
    assert feeds[0]["img"].shape == (3, 8, 8)
    crop = Image.fromarray(images[0]).resize((10, 8), Image.Resampling.BILINEAR).crop((1, 0, 9, 8))
    np.testing.assert_allclose(
        feeds[0]["img"], np.asarray(crop, np.float32).transpose(2, 0, 1) / 255, atol=1e-6
    )


def test_uint8_image_input_gets_raw_pixels(tmp_path: Path) -> None:
    images = write_images(tmp_path / "imgs", 1, size=(4, 4))
    node = helper.make_node("Cast", ["img"], ["f"], to=TensorProto.FLOAT)
    graph = helper.make_graph(
        [node],
        "u8",
        [helper.make_tensor_value_info("img", TensorProto.UINT8, [1, 4, 4, 3])],
        [helper.make_tensor_value_info("f", TensorProto.FLOAT, [1, 4, 4, 3])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.save(proto, str(tmp_path / "u8.onnx"))
    model = io.load(tmp_path / "u8.onnx")
    # Raw uint8 pixels say nothing about the channel order: refused until it is stated.
    with pytest.raises(UsageError, match=r"is uint8 .* --image-preprocess 'order=RGB'"):
        read_feeds(tmp_path / "imgs", model)
    feed = read_feeds(tmp_path / "imgs", model, image_preprocessing="order=RGB")[0]
    np.testing.assert_array_equal(feed["img"][0], images[0])
    np.testing.assert_array_equal(Session(model).run(feed)["f"][0], images[0].astype(np.float32))


def test_image_errors(tmp_path: Path) -> None:
    write_images(tmp_path / "imgs", 1)
    (tmp_path / "imgs" / "zz_broken.png").write_bytes(b"not a png")
    square = io.load(image_model(tmp_path / "sq.onnx", [1, 3, 3, 3]))
    with pytest.raises(DataError, match="cannot tell the layout .* layout=NCHW"):
        open_feeds(tmp_path / "imgs", square)
    free = io.load(image_model(tmp_path / "free.onnx", ["N", 3, "H", "W"]))
    with pytest.raises(DataError, match="no fixed height and width; state them with size=H,W"):
        open_feeds(tmp_path / "imgs", free)
    stream = open_feeds(tmp_path / "imgs", free, image_preprocessing="size=6,5")
    with pytest.raises(DataError, match="zz_broken.png: cannot read as an image"):
        list(stream)
    two = io.load(two_input_model(tmp_path / "two.onnx"))
    with pytest.raises(DataError, match="one input; this model has 2"):
        open_feeds(tmp_path / "imgs", two)
    fixed = io.load(image_model(tmp_path / "fixed.onnx", [1, 3, 6, 5]))
    with pytest.raises(UsageError, match="mean has 2 values; the model takes 3 channels"):
        open_feeds(tmp_path / "imgs", fixed, image_preprocessing="mean=0.5,0.5")
    with pytest.raises(
        DataError,
        match=r"img_0.png: input 'img' expects float32 \[1,3,6,5\], got float32 \[1, 3, 7, 5\]",
    ):
        list(open_feeds(tmp_path / "imgs", fixed, image_preprocessing="size=7,5"))


def test_image_preprocessing_parser() -> None:
    parsed = ImagePreprocessing.parse(
        "size=224,224;layout=nchw;scale=0.00392;mean=0.485,0.456,0.406;std=0.229,0.224,0.225;order=BGR"
    )
    assert parsed == ImagePreprocessing(
        size=(224, 224),
        layout="NCHW",
        scale=0.00392,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        order="BGR",
    )
    assert ImagePreprocessing.parse("size=96 scale=1/255").size == (96, 96)
    assert ImagePreprocessing.parse(parsed.describe()) == parsed
    assert parse_image_preprocessing(None) is None
    for bad, message in [
        ("size=0,3", "positive"),
        ("layout=NCWH", "NCHW or NHWC"),
        ("order=RBG", "RGB or BGR"),
        ("std=0,1,1", "std must not contain 0"),
        ("colour=RGB", "unknown key 'colour'"),
        ("size", "expected key=value"),
        ("scale=abc", "scale=abc"),
        ("resize=fit", "stretch"),
    ]:
        with pytest.raises(UsageError, match=message):
            ImagePreprocessing.parse(bad)


def test_specs_can_be_given_instead_of_a_model(mlp) -> None:
    specs = input_specs(mlp)
    feeds = read_feeds([{"x": np.zeros((2, 8), np.float32)}], specs)
    assert feeds[0]["x"].shape == (2, 8)
    unchecked = read_feeds([{"anything": np.zeros(1)}], None)
    assert set(unchecked[0]) == {"anything"}
