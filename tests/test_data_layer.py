"""The Data layer over LMDB: order, wrap, prefetch, determinism, errors, and Caffe's own batch."""

from __future__ import annotations

import os
import time
from pathlib import Path

import cv2
import lmdb
import numpy as np
import pytest
from google.protobuf import text_format

from caffecompat.data import SOURCE_TYPES, make_source
from caffecompat.data import datum as codec
from caffecompat.data.data_layer import DataLayerSource
from caffecompat.data.source import PrefetchingSource
from caffecompat.errors import CaffeCompatError, NotSupportedError
from caffecompat.formats.blob import read_binaryproto, read_blob_vector
from caffecompat.proto import caffe_pb2

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def write_db(path: Path, values: list[bytes]) -> Path:
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i, v in enumerate(values):
            txn.put(f"{i:08d}_img{i}.png".encode(), v)
    env.close()
    return path


def raw_records(n: int, shape=(3, 4, 5)) -> list[bytes]:
    """Record i has every pixel equal to i and label 10 + i."""
    return [codec.from_image(np.full(shape[1:] + (shape[0],), i, np.uint8), 10 + i).SerializeToString()
            for i in range(n)]


def layer(source: Path | str, batch: int = 3, tops=("data", "label"), **transform) -> caffe_pb2.LayerParameter:
    lp = caffe_pb2.LayerParameter(name="data", type="Data", top=list(tops))
    lp.data_param.source = str(source)
    lp.data_param.batch_size = batch
    lp.data_param.backend = caffe_pb2.DataParameter.LMDB
    for k, v in transform.items():
        if isinstance(v, list):
            getattr(lp.transform_param, k).extend(v)
        else:
            setattr(lp.transform_param, k, v)
    return lp


def batches(lp, n: int, phase=TRAIN, seed=0, **kw) -> list[list[np.ndarray]]:
    src = DataLayerSource(lp, phase, np.random.default_rng(seed), **kw)
    try:
        return [src.next_batch() for _ in range(n)]
    finally:
        src.close()


def test_records_in_cursor_order_wrapping_at_the_end(tmp_path):
    db = write_db(tmp_path / "db", raw_records(5))
    src = make_source(layer(db), TRAIN, np.random.default_rng(0))
    assert src.top_shapes() == [(3, 3, 4, 5), (3,)]
    got = [src.next_batch() for _ in range(3)]
    src.close()
    assert [list(b[1]) for b in got] == [[10, 11, 12], [13, 14, 10], [11, 12, 13]]
    for data, label in got:
        assert data.dtype == np.float32 and label.dtype == np.float32 and data.shape == (3, 3, 4, 5)
        for item, lab in zip(data, label):
            assert (item == lab - 10).all()


def test_one_top_gives_data_only(tmp_path):
    db = write_db(tmp_path / "db", raw_records(2))
    (data,) = batches(layer(db, batch=2, tops=("data",)), 1)[0]
    assert data.shape == (2, 3, 4, 5)


def test_prefetch_fills_ahead_so_the_consumer_does_not_wait(tmp_path):
    db = write_db(tmp_path / "db", raw_records(8, (3, 64, 64)))
    lp = layer(db, batch=4, crop_size=32, mirror=True)
    lp.data_param.prefetch = 3
    src = make_source(lp, TRAIN, np.random.default_rng(0))
    try:
        deadline = time.monotonic() + 5
        while src._queue.qsize() < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert src._queue.qsize() == 3  # filled without anyone asking
        t = time.monotonic()
        src.next_batch()
        assert time.monotonic() - t < 0.05
    finally:
        src.close()
    assert src._thread is None


def test_same_seed_same_batches_whatever_the_threads(tmp_path):
    rng = np.random.default_rng(5)
    imgs = rng.integers(0, 256, size=(6, 9, 10, 3), dtype=np.uint8)
    db = write_db(tmp_path / "db", [codec.from_image(im, i).SerializeToString() for i, im in enumerate(imgs)])
    lp = layer(db, batch=4, crop_size=5, mirror=True, scale=0.5)
    a = batches(lp, 4, seed=1, threads=1)
    b = batches(lp, 4, seed=1, threads=3)
    c = batches(lp, 4, seed=2)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x[0], y[0])
    assert any(not np.array_equal(x[0], z[0]) for x, z in zip(a, c))


def test_test_phase_centre_crop_and_mean_value(tmp_path):
    img = np.arange(6 * 7 * 3, dtype=np.uint8).reshape(6, 7, 3)
    db = write_db(tmp_path / "db", [codec.from_image(img, 1).SerializeToString()])
    data, label = batches(layer(db, batch=2, crop_size=4, mean_value=[1, 2, 3]), 1, phase=TEST)[0]
    chw = img.transpose(2, 0, 1).astype(np.float32)
    expected = chw[:, 1:5, 1:5] - np.array([1, 2, 3], np.float32).reshape(3, 1, 1)
    np.testing.assert_array_equal(data[0], expected)
    np.testing.assert_array_equal(data[1], expected)  # one record, wrapped


def test_encoded_records_and_force_gray(tmp_path):
    imgs = [np.random.default_rng(i).integers(0, 256, size=(8, 8, 3), dtype=np.uint8) for i in range(3)]
    db = write_db(tmp_path / "db", [codec.from_encoded(cv2.imencode(".png", im)[1].tobytes(), i)
                                    .SerializeToString() for i, im in enumerate(imgs)])
    data, label = batches(layer(db, batch=3), 1)[0]
    np.testing.assert_array_equal(data, np.stack([im.transpose(2, 0, 1) for im in imgs]).astype(np.float32))
    src = make_source(layer(db, batch=3, force_gray=True), TRAIN, np.random.default_rng(0))
    assert src.top_shapes()[0] == (3, 1, 8, 8)
    src.close()


def test_records_of_other_sizes_are_fine_with_crop_and_refused_without(tmp_path):
    vals = [codec.from_image(np.zeros((5, 5, 3), np.uint8), 0).SerializeToString(),
            codec.from_image(np.zeros((6, 7, 3), np.uint8), 1).SerializeToString()]
    db = write_db(tmp_path / "db", vals)
    assert batches(layer(db, batch=2, crop_size=4), 1)[0][0].shape == (2, 3, 4, 4)
    src = make_source(layer(db, batch=2), TRAIN, np.random.default_rng(0))
    with pytest.raises(CaffeCompatError, match=r"record '00000001_img1.png' is 3 x 6 x 7 but the first"):
        src.next_batch()
    with pytest.raises(CaffeCompatError):  # the error sticks
        src.next_batch()
    src.close()


def test_read_only_database_opens_without_a_lock_file(tmp_path):
    db = write_db(tmp_path / "db", raw_records(2))
    os.remove(db / "lock.mdb")
    os.chmod(db / "data.mdb", 0o444)
    os.chmod(db, 0o555)
    try:
        assert batches(layer(db, batch=2), 1)[0][1].tolist() == [10, 11]
        assert not (db / "lock.mdb").exists()
    finally:
        os.chmod(db, 0o755)


def test_relative_source_resolves_against_the_working_directory(tmp_path, monkeypatch):
    write_db(tmp_path / "db", raw_records(2))
    monkeypatch.chdir(tmp_path)
    src = make_source(layer("db", batch=2), TRAIN, np.random.default_rng(0))
    monkeypatch.chdir("/")
    assert src.next_batch()[1].tolist() == [10, 11]
    src.close()


@pytest.mark.parametrize("make_path, message", [
    (lambda p: p / "missing", r"layer 'data' \(Data\) data_param.source: no such LMDB database: .*missing"),
    (lambda p: (p / "file").write_text("x") and p / "file", "is a file; an LMDB database is a directory"),
    (lambda p: (p / "empty").mkdir() or p / "empty", r"is not an LMDB database \(no data.mdb in it\)"),
    (lambda p: write_db(p / "zero", []), "has no records"),
    (lambda p: write_db(p / "junk", [b"\xff\xfe garbage"]),
     r"layer 'data' \(Data\): .*junk record '00000000_img0.png': not a Caffe Datum record"),
    (lambda p: write_db(p / "text", [b"hello world"]), "not a Caffe Datum record"),
])
def test_bad_databases_raise_one_clear_error(tmp_path, make_path, message):
    path = make_path(tmp_path)
    with pytest.raises(CaffeCompatError, match=message):
        make_source(layer(path), TRAIN, np.random.default_rng(0))


def test_backend_and_layer_checks(tmp_path):
    db = write_db(tmp_path / "db", raw_records(1))
    lp = layer(db)
    lp.data_param.ClearField("backend")  # Caffe's default is LEVELDB: an LMDB there is named as one
    with pytest.raises(CaffeCompatError, match="is an LMDB database, not a LevelDB one; set `backend: LMDB`"):
        make_source(lp, TRAIN, np.random.default_rng(0))
    with pytest.raises(CaffeCompatError, match="batch_size must be positive"):
        make_source(layer(db, batch=0), TRAIN, np.random.default_rng(0))
    with pytest.raises(NotSupportedError, match="data layer type 'VideoData' \\(layer 'w'\\)"):
        make_source(caffe_pb2.LayerParameter(name="w", type="VideoData"), TRAIN, np.random.default_rng(0))
    assert SOURCE_TYPES == {"Data", "ImageData", "HDF5Data", "DummyData", "MemoryData", "WindowData"}


def _golden_layers(golden: Path) -> list[caffe_pb2.LayerParameter]:
    net = text_format.Parse((golden / "train/net.prototxt").read_text(), caffe_pb2.NetParameter())
    return [lp for lp in net.layer if lp.type == "Data"]


def test_first_train_batch_equals_caffes(golden, monkeypatch):
    monkeypatch.chdir(golden)
    train = _golden_layers(golden)[0]
    names = (golden / "train/grad/blob_names.txt").read_text().split()
    blobs = dict(zip(names, read_blob_vector(golden / "train/grad/blobs.binaryproto")))
    src = make_source(train, TRAIN, np.random.default_rng(0))
    assert src.top_shapes() == [blobs["data"].shape, blobs["label"].shape]
    data, label = src.next_batch()
    src.close()
    np.testing.assert_allclose(data, blobs["data"], atol=1e-6, rtol=0)
    np.testing.assert_array_equal(label, blobs["label"])


def test_test_batches_read_caffes_val_database(golden, monkeypatch):
    monkeypatch.chdir(golden)
    val = _golden_layers(golden)[1]
    mean = read_binaryproto("mean/train_32_mean.binaryproto")[0]
    env = lmdb.open("lmdb/val_32", readonly=True, lock=False)
    with env.begin() as txn:
        records = [caffe_pb2.Datum.FromString(v) for _, v in txn.cursor()]
    env.close()
    src = make_source(val, TEST, np.random.default_rng(0))
    got = [src.next_batch() for _ in range(3)]  # 60 items: wraps once over the 40 records
    src.close()
    for b, (data, label) in enumerate(got):
        for i in range(20):
            d = records[(b * 20 + i) % 40]
            pixels = np.frombuffer(d.data, np.uint8).reshape(3, 32, 32).astype(np.float32)
            np.testing.assert_array_equal(data[i], (pixels - mean) * np.float32(0.00390625))
            assert label[i] == d.label


@pytest.mark.parametrize("name, shape", [
    ("train_32", (3, 16, 16)), ("val_32", (3, 16, 16)), ("val_gray_28", (1, 16, 16)),
    ("val_encoded_png", (3, 16, 16)), ("val_encoded_jpg_36x30", (3, 16, 16)),
])
def test_reads_every_caffe_database(golden, monkeypatch, name, shape):
    monkeypatch.chdir(golden)
    env = lmdb.open(f"lmdb/{name}", readonly=True, lock=False)
    with env.begin() as txn:
        records = [caffe_pb2.Datum.FromString(v) for _, v in txn.cursor()]
    env.close()
    # Encoded images keep their own sizes, so crop them all to one (the smallest side is 20).
    lp = layer(golden / "lmdb" / name, batch=len(records), crop_size=16)
    data, label = batches(lp, 1, phase=TEST)[0]
    assert data.shape == (len(records), *shape)
    assert label.tolist() == [d.label for d in records]
    for item, d in zip(data[:5], records):
        img = codec.to_array(d, codec.ColorMode.NATIVE, "r")
        h, w = (img.shape[1] - 16) // 2, (img.shape[2] - 16) // 2
        np.testing.assert_array_equal(item, img[:, h:h + 16, w:w + 16])


def test_a_record_smaller_than_the_crop_is_named(tmp_path):
    vals = [codec.from_image(np.zeros((6, 6, 3), np.uint8), 0).SerializeToString(),
            codec.from_image(np.zeros((3, 6, 3), np.uint8), 1).SerializeToString()]
    src = make_source(layer(write_db(tmp_path / "db", vals), batch=2, crop_size=4), TRAIN,
                      np.random.default_rng(0))
    with pytest.raises(CaffeCompatError, match=r"record '00000001_img1.png': crop_size 4 is larger than the 3 x 6"):
        src.next_batch()
    src.close()


class _Counting(PrefetchingSource):
    """A prefetching source whose batches count how many were loaded."""

    def __init__(self, prefetch: int) -> None:
        super().__init__(caffe_pb2.LayerParameter(name="count", type="Data", top=["data"]))
        self._shapes = [(1,)]
        self.loaded = 0
        self._start(prefetch)

    def _load_batch(self) -> list[np.ndarray]:
        self.loaded += 1
        return [np.full((1,), self.loaded, np.float32)]


def _settle(source: _Counting, expected: int) -> None:
    deadline = time.monotonic() + 5
    while source.loaded < expected and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # time for a loader that would overrun


@pytest.mark.parametrize("prefetch", [1, 2, 4])
def test_prefetch_holds_prefetch_batches_in_all_as_caffe(prefetch):
    """BasePrefetchingDataLayer: `prefetch` batches in all, the net's current one included."""
    source = _Counting(prefetch)
    try:
        _settle(source, prefetch)
        assert source.loaded == prefetch  # filled ahead, nothing more
        assert source.next_batch()[0][0] == 1
        _settle(source, prefetch)
        assert source.loaded == prefetch  # the batch in use is not free yet
        assert source.next_batch()[0][0] == 2  # batch 1 goes back to the free queue
        _settle(source, prefetch + 1)
        assert source.loaded == prefetch + 1
        assert source.next_batch()[0][0] == 3
    finally:
        source.close()
