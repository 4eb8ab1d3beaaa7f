"""compute-mean against Caffe's compute_image_mean."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import lmdb
import numpy as np
import pytest

from caffecompat.cli import main
from caffecompat.data import datum as codec
from caffecompat.formats.blob import read_binaryproto
from caffecompat.proto import caffe_pb2


@pytest.mark.parametrize("name", ["train_32", "val_gray_28"])
def test_mean_and_log_match_caffe(golden, tmp_path, capsys, name):
    out = tmp_path / "mean.binaryproto"
    assert main(["compute-mean", str(golden / "lmdb" / name), str(out)]) == 0
    caffe_file = golden / "mean" / f"{name}_mean.binaryproto"
    ours, caffe = read_binaryproto(out), read_binaryproto(caffe_file)
    assert ours.shape == caffe.shape
    np.testing.assert_allclose(ours, caffe, atol=1e-4, rtol=0)
    # Caffe writes legacy num/channels/height/width dims; so do we.
    blob = caffe_pb2.BlobProto.FromString(out.read_bytes())
    assert not blob.HasField("shape") and (blob.num, blob.channels) == (1, caffe.shape[1])
    pattern = re.compile(r"\] ((?:mean_value channel|Number of channels|Processed).*)$")
    ours_log = [m.group(1) for line in capsys.readouterr().err.splitlines() if (m := pattern.search(line))]
    caffe_log = [m.group(1) for line in (golden / "mean" / f"{name}_mean.log").read_text().splitlines()
                 if (m := pattern.search(line))]
    assert ours_log == caffe_log


def write_db(path: Path, values: list[bytes]) -> Path:
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i, v in enumerate(values):
            txn.put(f"{i:08d}".encode(), v)
    env.close()
    return path


def test_encoded_records_are_decoded_and_float_division(tmp_path, capsys):
    imgs = [np.random.default_rng(i).integers(0, 256, size=(3, 4, 3), dtype=np.uint8) for i in range(3)]
    raw = write_db(tmp_path / "raw", [codec.from_image(im, 0).SerializeToString() for im in imgs])
    enc = write_db(tmp_path / "enc", [codec.from_encoded(cv2.imencode(".png", im)[1].tobytes(), 0)
                                      .SerializeToString() for im in imgs])
    assert main(["compute-mean", str(raw), str(tmp_path / "raw.binaryproto")]) == 0
    assert main(["compute-mean", "-backend", "lmdb", str(enc), str(tmp_path / "enc.binaryproto")]) == 0
    expected = (np.stack(imgs).sum(0).astype(np.float32) / np.float32(3)).transpose(2, 0, 1)[None]
    np.testing.assert_array_equal(read_binaryproto(tmp_path / "raw.binaryproto"), expected)
    np.testing.assert_array_equal(read_binaryproto(tmp_path / "enc.binaryproto"), expected)
    assert main(["compute-mean", str(raw)]) == 0  # no output file: only the log
    assert "mean_value channel [2]" in capsys.readouterr().err


@pytest.mark.parametrize("setup, message", [
    (lambda p: p / "missing", "no such LMDB database"),
    (lambda p: write_db(p / "junk", [b"\xff\xff\xff"]), r"junk record '00000000': not a Caffe Datum"),
    (lambda p: write_db(p / "mixed", [codec.from_image(np.zeros((2, 2, 3), np.uint8), 0).SerializeToString(),
                                      codec.from_image(np.zeros((3, 2, 3), np.uint8), 0).SerializeToString()]),
     r"mixed record '00000001' is 3 x 3 x 2 but the first record '00000000' is 3 x 2 x 2"),
    (lambda p: write_db(p / "empty", []), "has no records"),
])
def test_bad_databases(tmp_path, capsys, setup, message):
    db = setup(tmp_path)
    assert main(["compute-mean", str(db), str(tmp_path / "m.binaryproto")]) == 1
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if "error:" in x]
    assert line.startswith("caffecompat compute-mean: error: ") and re.search(message, line)
    assert "Traceback" not in err and not (tmp_path / "m.binaryproto").exists()


def test_unknown_backend(tmp_path, capsys):
    assert main(["compute-mean", "-backend", "rocksdb", str(tmp_path)]) == 1
    assert "unknown database backend 'rocksdb'; use lmdb or leveldb" in capsys.readouterr().err
