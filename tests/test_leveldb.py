"""LevelDB, Caffe's default Data layer backend: read, write, convert-lmdb, compute-mean, Caffe's Siamese net.

LevelDB comes through the optional plyvel package (prebuilt for CPython <= 3.12
on Linux x86-64): the tests that need it skip without it, saying so. The
reference for what we write and read is plyvel itself, used directly with the
options of Caffe's db_leveldb.cpp, and Caffe's own LMDB outputs.
"""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import cv2
import lmdb
import numpy as np
import pytest
from google.protobuf import text_format

from caffecompat import glog
from caffecompat.cli import main
from caffecompat.data import datum as codec
from caffecompat.data import db as dbs
from caffecompat.data import make_source
from caffecompat.data.image_mean import compute_mean
from caffecompat.errors import CaffeCompatError
from caffecompat.formats.blob import read_binaryproto
from caffecompat.proto import caffe_pb2

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST
NO_PLYVEL = ("plyvel is not installed: LevelDB support is the optional extra caffecompat[leveldb] (prebuilt for "
             "CPython <= 3.12 on Linux x86-64; elsewhere build plyvel against libleveldb)")


@pytest.fixture
def plyvel():
    """The plyvel module; skips the test when it is not installed."""
    return pytest.importorskip("plyvel", reason=NO_PLYVEL)


def caffe_leveldb(plyvel, path: Path, records: list[tuple[bytes, bytes]]) -> Path:
    """A LevelDB written as Caffe's tools write one (db_leveldb.cpp's options, one write batch)."""
    db = plyvel.DB(str(path), create_if_missing=True, error_if_exists=True, block_size=65536,
                   write_buffer_size=268435456, max_open_files=100)
    with db.write_batch() as batch:
        for k, v in records:
            batch.put(k, v)
    db.close()
    return path


def plyvel_records(plyvel, path: Path) -> list[tuple[bytes, bytes]]:
    db = plyvel.DB(str(path), create_if_missing=False)
    try:
        return list(db.iterator())
    finally:
        db.close()


def lmdb_records(path: Path) -> list[tuple[bytes, bytes]]:
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        items = list(txn.cursor())
    env.close()
    return items


def datum_records(n: int, shape=(3, 4, 5), seed=0) -> list[tuple[bytes, bytes]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = rng.integers(0, 256, shape[1:] + (shape[0],), dtype=np.uint8)
        out.append((f"{i:08d}".encode(), codec.from_image(img, i % 7).SerializeToString()))
    return out


def data_layer(source: Path, batch: int, backend: int | None = None, top=("data", "label")):
    lp = caffe_pb2.LayerParameter(name="data", type="Data", top=list(top))
    lp.data_param.source = str(source)
    lp.data_param.batch_size = batch
    if backend is not None:
        lp.data_param.backend = backend
    return lp


# ---- without plyvel: one clear line -------------------------------------------------------------


def test_without_plyvel_the_error_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "plyvel", None)  # import plyvel raises ImportError
    assert not dbs.leveldb_db.available()
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "CURRENT").write_text("MANIFEST-000001\n")  # what a LevelDB folder holds
    lp = data_layer(tmp_path / "db", 2)  # backend unset: Caffe's default LEVELDB
    with pytest.raises(CaffeCompatError, match=r"layer 'data' \(Data\) data_param.source: LevelDB databases need "
                                               r"the plyvel package, which is not installed for this Python"):
        make_source(lp, TRAIN, np.random.default_rng(0))
    (tmp_path / "a.png").write_bytes(cv2.imencode(".png", np.zeros((2, 2, 3), np.uint8))[1].tobytes())
    (tmp_path / "list.txt").write_text("a.png 0\n")
    assert main(["convert-lmdb", "-backend", "leveldb", f"{tmp_path}/", str(tmp_path / "list.txt"),
                 str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert line.startswith("caffecompat convert-lmdb: error: ") and "pip install 'caffecompat[leveldb]'" in line
    assert "libleveldb-dev" in line and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_backend_names():
    assert dbs.backend_name(caffe_pb2.DataParameter.LEVELDB, "x") == "leveldb"
    assert dbs.backend_name(caffe_pb2.DataParameter().backend, "x") == "leveldb"  # Caffe's default
    assert dbs.backend_name("LMDB", "x") == "lmdb"
    with pytest.raises(CaffeCompatError, match="x: unknown database backend 'hdf5'; use lmdb or leveldb"):
        dbs.backend_name("hdf5", "x")


# ---- with plyvel ------------------------------------------------------------------------------------


def test_written_database_reads_back_identically(plyvel, tmp_path):
    records = datum_records(2500, seed=1)  # more than one write batch of convert_imageset (1000)
    writer = dbs.open_writer(str(tmp_path / "ours"), "leveldb")
    for i, (k, v) in enumerate(reversed(records)):  # put out of order: LevelDB keeps keys sorted
        writer.put(k, v)
        if (i + 1) % 1000 == 0:
            writer.commit()
    writer.finish()
    assert plyvel_records(plyvel, tmp_path / "ours") == records  # read by plyvel alone
    reader = dbs.open_reader(str(tmp_path / "ours"), "leveldb", "")
    try:
        assert list(reader.records()) == records
        assert reader.count() == len(records) and reader.first() == records[0]
    finally:
        reader.close()
    # Caffe's database read by us.
    caffe_leveldb(plyvel, tmp_path / "caffe", records[:10])
    reader = dbs.open_reader(str(tmp_path / "caffe"), caffe_pb2.DataParameter.LEVELDB, "")
    cycle = reader.cycle()
    assert [next(cycle) for _ in range(25)] == (records[:10] * 3)[:25]
    cycle.close()
    reader.close()


def test_writer_is_all_or_nothing(plyvel, tmp_path):
    path = tmp_path / "db"
    writer = dbs.open_writer(str(path), "leveldb")
    writer.put(b"a", b"1")
    writer.commit()
    writer.abort()
    assert list(tmp_path.iterdir()) == []
    caffe_leveldb(plyvel, path, [(b"old", b"x")])
    with pytest.raises(CaffeCompatError, match="already exists; choose another name or pass -overwrite"):
        dbs.open_writer(str(path), "leveldb")
    writer = dbs.open_writer(str(path), "leveldb", overwrite=True)
    writer.put(b"new", b"y")
    writer.finish()
    assert plyvel_records(plyvel, path) == [(b"new", b"y")]
    assert [p.name for p in tmp_path.iterdir()] == ["db"]


def test_data_layer_reads_leveldb_by_default_and_shares_it_between_phases(plyvel, tmp_path):
    records = datum_records(5, shape=(3, 4, 5))
    caffe_leveldb(plyvel, tmp_path / "db", records)
    expected = [codec.to_array(codec.parse(v, ""), codec.ColorMode.NATIVE, "") for _, v in records]
    log = io.StringIO()
    glog.set_stream(log)
    try:
        train = make_source(data_layer(tmp_path / "db", 3), TRAIN, np.random.default_rng(0))
        test = make_source(data_layer(tmp_path / "db", 2), TEST, np.random.default_rng(0))
        a, la = train.next_batch()
        b, _ = train.next_batch()
        c, lc = test.next_batch()
        train.close()
        test.close()
    finally:
        glog.set_stream(None)
    assert "db_leveldb.cpp:18] Opened leveldb" in log.getvalue()
    np.testing.assert_array_equal(a, np.stack(expected[:3]).astype(np.float32))
    np.testing.assert_array_equal(b, np.stack(expected[3:] + expected[:1]).astype(np.float32))  # wraps
    assert la.tolist() == [0, 1, 2] and lc.tolist() == [0, 1]
    np.testing.assert_array_equal(c, np.stack(expected[:2]).astype(np.float32))


def test_wrong_backend_is_named(plyvel, tmp_path):
    env = lmdb.open(str(tmp_path / "lmdb"), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(*datum_records(1)[0])
    env.close()
    with pytest.raises(CaffeCompatError, match="is an LMDB database, not a LevelDB one; set `backend: LMDB`"):
        make_source(data_layer(tmp_path / "lmdb", 1), TRAIN, np.random.default_rng(0))
    caffe_leveldb(plyvel, tmp_path / "ldb", datum_records(1))
    with pytest.raises(CaffeCompatError, match="is a LevelDB database, not an LMDB one; set `backend: LEVELDB`"):
        make_source(data_layer(tmp_path / "ldb", 1, caffe_pb2.DataParameter.LMDB), TRAIN, np.random.default_rng(0))
    (tmp_path / "plain").mkdir()
    with pytest.raises(CaffeCompatError, match="plain is not a LevelDB database"):
        make_source(data_layer(tmp_path / "plain", 1), TRAIN, np.random.default_rng(0))


def test_convert_and_compute_mean_on_leveldb_match_caffes_lmdb(plyvel, golden, tmp_path, monkeypatch):
    monkeypatch.chdir(golden)
    out = tmp_path / "train_32_leveldb"
    assert main(["convert-lmdb", "-backend", "leveldb", "-resize_height", "32", "-resize_width", "32",
                 "images/", "images/train.txt", str(out)]) == 0
    ours = plyvel_records(plyvel, out)
    caffe = lmdb_records(golden / "lmdb" / "train_32")
    assert [k for k, _ in ours] == [k for k, _ in caffe]
    for (key, a), (_, b) in zip(ours, caffe):
        da, db = codec.parse(a, ""), codec.parse(b, "")
        assert (da.channels, da.height, da.width, da.label) == (db.channels, db.height, db.width, db.label)
        diff = np.abs(np.frombuffer(da.data, np.uint8).astype(int) - np.frombuffer(db.data, np.uint8).astype(int))
        assert diff.max() <= (0 if key.endswith(b".png") else 1), key  # JPEG decoders may differ by 1
    # compute-mean on a LevelDB holding Caffe's own records gives Caffe's mean.
    caffe_leveldb(plyvel, tmp_path / "caffe_records", caffe)
    mean, count = compute_mean(str(tmp_path / "caffe_records"), "leveldb", progress=False)
    assert count == len(caffe)
    np.testing.assert_allclose(mean, read_binaryproto(golden / "mean" / "train_32_mean.binaryproto"), atol=1e-4)
    assert main(["compute-mean", "-backend", "leveldb", str(tmp_path / "caffe_records"),
                 str(tmp_path / "m.binaryproto")]) == 0
    np.testing.assert_array_equal(read_binaryproto(tmp_path / "m.binaryproto"), mean)


# ---- Caffe's Siamese example on a generated LevelDB -----------------------------------------------------


def _pairs(rng: np.random.Generator, n: int) -> list[tuple[bytes, bytes]]:
    """convert_mnist_siamese_data's records: two 28x28 grey digits-like images per Datum, label = same class."""
    def image(cls: int) -> np.ndarray:
        img = rng.normal(40, 20, (28, 28))
        angle = np.pi * cls / 4 + rng.normal(0, 0.1)
        c, s = np.cos(angle), np.sin(angle)
        p0 = (14 - 10 * c + rng.normal(0, 1), 14 - 10 * s + rng.normal(0, 1))
        p1 = (14 + 10 * c + rng.normal(0, 1), 14 + 10 * s + rng.normal(0, 1))
        canvas = np.clip(img, 0, 255).astype(np.uint8)
        cv2.line(canvas, tuple(int(round(v)) for v in p0), tuple(int(round(v)) for v in p1), 230, 3)
        return canvas

    out = []
    for i in range(n):
        a, b = rng.integers(4), rng.integers(4) if rng.random() < 0.5 else None
        b = a if b is None else b
        datum = caffe_pb2.Datum(channels=2, height=28, width=28, label=int(a == b))
        datum.data = np.stack([image(int(a)), image(int(b))]).tobytes()
        out.append((f"{i:08d}".encode(), datum.SerializeToString()))
    return out


def test_caffes_siamese_example_trains_on_leveldb(plyvel, bvlc, tmp_path, monkeypatch):
    rng = np.random.default_rng(7)
    caffe_leveldb(plyvel, tmp_path / "mnist_siamese_train_leveldb", _pairs(rng, 256))
    caffe_leveldb(plyvel, tmp_path / "mnist_siamese_test_leveldb", _pairs(rng, 100))
    net = caffe_pb2.NetParameter()
    text_format.Parse((bvlc / "examples/siamese/mnist_siamese_train_test.prototxt").read_text(), net)
    for lp in net.layer:
        if lp.type == "Data":
            assert not lp.data_param.HasField("backend")  # Caffe's default: LevelDB
            lp.data_param.source = str(tmp_path / Path(lp.data_param.source).name)
    (tmp_path / "net.prototxt").write_text(text_format.MessageToString(net))
    # mnist_siamese_solver.prototxt's settings, for 30 iterations.
    solver = caffe_pb2.SolverParameter(net=str(tmp_path / "net.prototxt"), test_interval=30, base_lr=0.01,
                                       momentum=0.9, weight_decay=0.0, lr_policy="inv", gamma=0.0001, power=0.75,
                                       display=10, max_iter=30, snapshot_prefix=str(tmp_path / "siamese"),
                                       random_seed=1701, solver_mode=caffe_pb2.SolverParameter.CPU)
    solver.test_iter.append(1)
    (tmp_path / "solver.prototxt").write_text(text_format.MessageToString(solver))
    log = io.StringIO()
    glog.set_stream(log)
    try:
        assert main(["train", "-solver", str(tmp_path / "solver.prototxt")]) == 0
    finally:
        glog.set_stream(None)
    text = log.getvalue()
    assert text.count("Opened leveldb") == 2
    tests = [float(v) for v in re.findall(r"Test net output #0: loss = (\S+)", text)]
    assert len(tests) == 2 and all(np.isfinite(tests))
    assert tests[1] < 0.8 * tests[0], text[-3000:]  # the contrastive loss falls on the held-out pairs
    assert (tmp_path / "siamese_iter_30.caffemodel").is_file()
