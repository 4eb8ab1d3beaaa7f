"""`caffecompat extract-features` against Caffe's golden forward blobs and extract_features' record format.

The golden forward nets (../shared/caffe-golden/forward) take their input from
an Input layer; extract_features runs a net on its own data layers, so the
tests feed the same input through an HDF5Data layer (exact float values).
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import h5py
import lmdb
import numpy as np
import pytest
from google.protobuf import text_format

from caffecompat.cli import main
from caffecompat.data.feature_writer import feature_datum, legacy_shape
from caffecompat.formats.blob import read_binaryproto, read_blob_vector
from caffecompat.proto import caffe_pb2
from tests.cli_run import run_cli

NO_PLYVEL = "plyvel is not installed: LevelDB support is the optional extra caffecompat[leveldb]"


def golden_blobs(net_dir: Path) -> dict[str, np.ndarray]:
    names = (net_dir / "blob_names.txt").read_text().split()
    return dict(zip(names, read_blob_vector(net_dir / "blobs.binaryproto")))


def net_on_hdf5(golden: Path, name: str, tmp_path: Path, label: bool = False) -> Path:
    """The golden net `name` with its Input layer replaced by an HDF5Data layer giving the golden input."""
    net_dir = golden / "forward" / name
    x = read_binaryproto(net_dir / "input.binaryproto")
    with h5py.File(tmp_path / "input.h5", "w") as f:
        f["data"] = x
        if label:
            f["label"] = np.arange(x.shape[0], dtype=np.float32) + 5
    (tmp_path / "input_list.txt").write_text(f"{tmp_path / 'input.h5'}\n")
    net = caffe_pb2.NetParameter()
    text_format.Parse((net_dir / "net.prototxt").read_text(), net)
    layer = next(lp for lp in net.layer if lp.type == "Input")
    layer.type = "HDF5Data"
    layer.ClearField("input_param")
    if label:
        layer.top.append("label")
    layer.hdf5_data_param.source = str(tmp_path / "input_list.txt")
    layer.hdf5_data_param.batch_size = x.shape[0]
    path = tmp_path / "net.prototxt"
    path.write_text(text_format.MessageToString(net))
    return path


def read_lmdb(path: Path) -> list[tuple[bytes, caffe_pb2.Datum]]:
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        items = [(k, caffe_pb2.Datum.FromString(v)) for k, v in txn.cursor()]
    env.close()
    return items


def close(ours: np.ndarray, caffe: np.ndarray) -> None:
    # The golden README's tolerance: max |ours - caffe| / max(1, max |caffe|) <= 1e-4.
    assert ours.shape == caffe.shape
    assert np.abs(ours - caffe).max() / max(1.0, float(np.abs(caffe).max())) <= 1e-4


def test_datum_record_is_extract_features_one():
    # Hand-encoded: channels 3 (field 1), height 1, width 1, then float_data (field 6, fixed32, not packed).
    expected = bytes([0x08, 3, 0x10, 1, 0x18, 1]) + b"".join(
        b"\x35" + struct.pack("<f", v) for v in (1.5, -2.0, 0.25))
    assert feature_datum(np.array([1.5, -2.0, 0.25]), legacy_shape((7, 3), "fc")) == expected
    assert legacy_shape((), "loss") == (1, 1, 1, 1)
    assert legacy_shape((2, 3, 4, 5), "c") == (2, 3, 4, 5)


@pytest.mark.parametrize("name, blobs", [
    ("caffenet_mini", ["conv5", "fc7", "prob"]),  # 4-D, 2-D (channels = dim, height = width = 1), softmax
    ("inception", ["inc/output", "pool/avg", "classifier"]),  # names with '/'
])
def test_lmdb_records_equal_caffes_blobs(golden, tmp_path, name, blobs):
    model = net_on_hdf5(golden, name, tmp_path)
    expected = golden_blobs(golden / "forward" / name)
    outs = [str(tmp_path / f"out{i}") for i in range(len(blobs))]
    rc, log = run_cli(["extract-features", str(golden / "forward" / name / "weights.caffemodel"), str(model),
                       ",".join(blobs), ",".join(outs), "2", "lmdb"])
    assert rc == 0, log[-2000:]
    assert "extract_features.cpp:181] Successfully extracted the features!" in log
    for blob, out in zip(blobs, outs):
        caffe = expected[blob]
        n = caffe.shape[0]
        records = read_lmdb(Path(out))
        assert [k for k, _ in records] == [f"{i:010d}".encode() for i in range(2 * n)]  # 2 mini-batches
        assert f"Extracted features of {2 * n} query images for feature blob {blob}" in log
        legacy = tuple(caffe.shape) + (1,) * (4 - caffe.ndim)
        for i, (_, datum) in enumerate(records):
            assert (datum.channels, datum.height, datum.width) == legacy[1:]
            assert [f.name for f, _ in datum.ListFields()] == ["channels", "height", "width", "float_data"]
            close(np.array(datum.float_data, np.float32), caffe[i % n].reshape(-1))


def test_npy_and_hdf5_outputs_equal_caffes_blobs(golden, tmp_path):
    model = net_on_hdf5(golden, "resnet_block", tmp_path, label=True)
    expected = golden_blobs(golden / "forward" / "resnet_block")
    weights = str(golden / "forward" / "resnet_block" / "weights.caffemodel")
    blob = [b for b in expected if b not in ("data",)][-1]
    rc, log = run_cli(["extract-features", weights, str(model), f"{blob},label,data",
                       f"{tmp_path}/f.npy,{tmp_path}/l.npy,{tmp_path}/d.npy", "3", "npy"])
    assert rc == 0, log[-2000:]
    feats = np.load(tmp_path / "f.npy")
    n = expected[blob].shape[0]
    assert feats.dtype == np.float32 and feats.shape == (3 * n, *expected[blob].shape[1:])
    for k in range(3):
        close(feats[k * n:(k + 1) * n], expected[blob])
    # Tops of the data layer itself (the input, the labels) come out as fed.
    np.testing.assert_array_equal(np.load(tmp_path / "l.npy"), np.tile(np.arange(n, dtype=np.float32) + 5, 3))
    np.testing.assert_array_equal(np.load(tmp_path / "d.npy")[:n], expected["data"])
    # HDF5: several blobs in one file, datasets named after them, readable by an HDF5Data layer.
    rc, log = run_cli(["extract-features", weights, str(model), f"{blob},label", f"{tmp_path}/x.h5,{tmp_path}/x.h5",
                       "1", "hdf5"])
    assert rc == 0, log[-2000:]
    with h5py.File(tmp_path / "x.h5") as f:
        assert sorted(f) == sorted([blob, "label"])
        close(f[blob][()], expected[blob])
        np.testing.assert_array_equal(f["label"][()], np.arange(n, dtype=np.float32) + 5)


def test_leveldb_output(golden, tmp_path):
    plyvel = pytest.importorskip("plyvel", reason=NO_PLYVEL)
    model = net_on_hdf5(golden, "caffenet_mini", tmp_path)
    expected = golden_blobs(golden / "forward" / "caffenet_mini")["fc7"]
    rc, log = run_cli(["extract-features", str(golden / "forward/caffenet_mini/weights.caffemodel"), str(model), "fc7",
                       str(tmp_path / "fc7_leveldb"), "1", "leveldb", "CPU"])
    assert rc == 0, log[-2000:]
    db = plyvel.DB(str(tmp_path / "fc7_leveldb"))
    records = [(k, caffe_pb2.Datum.FromString(v)) for k, v in db.iterator()]
    db.close()
    assert [k for k, _ in records] == [b"0000000000", b"0000000001"]
    for i, (_, datum) in enumerate(records):
        close(np.array(datum.float_data, np.float32), expected[i])


@pytest.mark.parametrize("args, message", [
    (["fc7,prob", "a", "1", "lmdb"], r"2 blob names \(fc7,prob\) but 1 output names"),
    (["fc9", "a", "1", "lmdb"], r"unknown feature blob name\(s\) fc9 in the network; its blobs are data, conv1"),
    (["fc7", "a", "0", "lmdb"], "NUM_MINI_BATCHES 0: must be at least 1"),
    (["fc7", "a", "x", "lmdb"], "NUM_MINI_BATCHES 'x'"),
    (["fc7", "a", "1", "csv"], "output format 'csv': use lmdb or leveldb"),
    (["fc7,prob", "a,a", "1", "npy"], "npy writes one file per blob"),
    (["fc7", "a", "1", "lmdb", "TPU"], "'TPU': expected CPU or GPU"),
])
def test_errors_are_one_line(golden, tmp_path, capsys, monkeypatch, args, message):
    model = net_on_hdf5(golden, "caffenet_mini", tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["extract-features", str(golden / "forward/caffenet_mini/weights.caffemodel"), str(model),
                 *args]) == 1
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if "error:" in x]
    assert line.startswith("caffecompat extract-features: error: ") and re.search(message, line), line
    assert "Traceback" not in err and not (tmp_path / "a").exists()


def test_existing_output_needs_overwrite(golden, tmp_path, capsys):
    model = net_on_hdf5(golden, "caffenet_mini", tmp_path)
    weights = str(golden / "forward/caffenet_mini/weights.caffemodel")
    (tmp_path / "f.npy").write_bytes(b"old")
    assert main(["extract-features", weights, str(model), "fc7", str(tmp_path / "f.npy"), "1", "npy"]) == 1
    assert "f.npy already exists; choose another name or pass -overwrite" in capsys.readouterr().err
    assert (tmp_path / "f.npy").read_bytes() == b"old"
    assert main(["extract-features", weights, str(model), "fc7", str(tmp_path / "f.npy"), "1", "npy",
                 "-overwrite"]) == 0
    assert np.load(tmp_path / "f.npy").shape == (2, golden_blobs(golden / "forward/caffenet_mini")["fc7"].shape[1])


def test_net_without_data_layers_is_warned_about(golden, tmp_path):
    net_dir = golden / "forward" / "caffenet_mini"
    rc, log = run_cli(["extract-features", str(net_dir / "weights.caffemodel"), str(net_dir / "net.prototxt"), "fc7",
                       str(tmp_path / "f.npy"), "1", "npy"])
    assert rc == 0
    assert "layer 'data' (Input) has no data source: its tops stay zero, as in Caffe" in log


# -- sharded under MPI ----------------------------------------------------------------------------

def _seven_items(golden: Path, tmp_path: Path) -> tuple[Path, str]:
    """resnet_block on an HDF5Data layer of 7 distinct items (labels 0..6), 2 per batch: each pass differs."""
    model = net_on_hdf5(golden, "resnet_block", tmp_path, label=True)
    x = read_binaryproto(golden / "forward" / "resnet_block" / "input.binaryproto")
    rng = np.random.default_rng(3)
    with h5py.File(tmp_path / "input.h5", "w") as f:
        f["data"] = rng.standard_normal((7, *x.shape[1:])).astype(np.float32)
        f["label"] = np.arange(7, dtype=np.float32)
    net = caffe_pb2.NetParameter()
    text_format.Parse(model.read_text(), net)
    next(lp for lp in net.layer if lp.type == "HDF5Data").hdf5_data_param.batch_size = 2
    model.write_text(text_format.MessageToString(net))
    blob = [b for b in golden_blobs(golden / "forward" / "resnet_block") if b != "data"][-1]
    return model, blob


@pytest.mark.parametrize("kind", ["lmdb", "hdf5"])
def test_two_ranks_write_the_one_process_outputs(golden, tmp_path, kind):
    from tests.mpi_run import run_one, run_ranks

    model, blob = _seven_items(golden, tmp_path)
    weights = str(golden / "forward" / "resnet_block" / "weights.caffemodel")

    def outs(tag: str) -> list[str]:
        return [str(tmp_path / f"{tag}_{b}") + (".h5" if kind == "hdf5" else "") for b in (blob, "label")]

    def args(tag: str) -> list[str]:  # 5 passes over 2 ranks: rank 0 runs 3, rank 1 runs 2
        return ["extract-features", weights, str(model), f"{blob},label", ",".join(outs(tag)), "5", kind,
                "-threads", "1"]

    one = run_one(args("one"))
    assert one.returncode == 0, one.stderr[-2000:]
    two = run_ranks(2, args("two"))
    assert two.returncode == 0, two.stderr[-2000:]
    three = run_one([*args("three"), "-processes", "3"])
    assert three.returncode == 0, three.stderr[-2000:]
    assert two.stderr.count("Successfully extracted the features!") == 1
    assert two.stderr.count("Extracting Features") == 1
    for a, b, c in zip(outs("one"), outs("two"), outs("three")):
        if kind == "lmdb":
            assert [(k, d.SerializeToString()) for k, d in read_lmdb(Path(b))] == \
                [(k, d.SerializeToString()) for k, d in read_lmdb(Path(a))]
            a, b, c = (str(Path(p) / "data.mdb") for p in (a, b, c))
        assert Path(b).read_bytes() == Path(a).read_bytes() == Path(c).read_bytes()
    # In input order: the labels of passes 0..4 over the 7 items, 2 at a time.
    if kind == "lmdb":
        labels = [d.float_data[0] for _, d in read_lmdb(Path(outs("two")[1]))]
    else:
        with h5py.File(outs("two")[1]) as f:
            labels = list(f["label"][()])
    assert labels == [i % 7 for i in range(10)]
    assert not [p.name for p in tmp_path.iterdir() if ".caffecompat-tmp-" in p.name]


def test_a_rank_that_fails_stops_the_job_and_leaves_nothing(golden, tmp_path):
    from tests.mpi_run import run_ranks

    model, blob = _seven_items(golden, tmp_path)
    (tmp_path / "taken.h5").write_bytes(b"keep me")
    done = run_ranks(2, ["extract-features", str(golden / "forward" / "resnet_block" / "weights.caffemodel"),
                         str(model), f"{blob},label", f"{tmp_path}/new.h5,{tmp_path}/taken.h5", "3", "hdf5"])
    assert done.returncode != 0
    (line,) = [x for x in done.stderr.splitlines() if "error:" in x]
    assert re.fullmatch(r"caffecompat extract-features: error: rank 0 of 2 \(pid \d+ on .*\): .*taken.h5 already "
                        r"exists; choose another name or pass -overwrite to replace it", line), line
    assert (tmp_path / "taken.h5").read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.h5", "input_list.txt", "net.prototxt", "taken.h5"]
