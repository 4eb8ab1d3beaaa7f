"""HDF5Data and DummyData sources."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from caffecompat.data import make_source
from caffecompat.errors import CaffeCompatError
from caffecompat.proto import caffe_pb2

TRAIN = caffe_pb2.TRAIN


def h5_layer(source: str, batch: int, shuffle: bool = False) -> caffe_pb2.LayerParameter:
    lp = caffe_pb2.LayerParameter(name="h5", type="HDF5Data", top=["data", "label"])
    lp.hdf5_data_param.source = source
    lp.hdf5_data_param.batch_size = batch
    lp.hdf5_data_param.shuffle = shuffle
    return lp


def write_h5(path, start: int, n: int) -> None:
    with h5py.File(path, "w") as f:
        f["data"] = np.arange(start, start + n, dtype=np.float64)[:, None, None].repeat(2, 1).repeat(3, 2)
        f["label"] = np.arange(start, start + n, dtype=np.int32)


def test_rows_across_files_in_order_and_wrapping(tmp_path, monkeypatch):
    write_h5(tmp_path / "a.h5", 0, 3)
    write_h5(tmp_path / "b.h5", 100, 2)
    (tmp_path / "list.txt").write_text("a.h5\nb.h5\n")
    monkeypatch.chdir(tmp_path)
    src = make_source(h5_layer("list.txt", 4), TRAIN, np.random.default_rng(0))
    assert src.top_shapes() == [(4, 2, 3), (4,)]
    got = [src.next_batch() for _ in range(2)]
    assert [b[1].tolist() for b in got] == [[0, 1, 2, 100], [101, 0, 1, 2]]
    assert got[0][0].dtype == np.float32 and (got[0][0][3] == 100).all()
    src.close()


def test_shuffle_is_a_seeded_permutation(tmp_path):
    write_h5(tmp_path / "a.h5", 0, 8)
    (tmp_path / "list.txt").write_text(f"{tmp_path}/a.h5")
    lp = h5_layer(str(tmp_path / "list.txt"), 8, shuffle=True)
    a = [make_source(lp, TRAIN, np.random.default_rng(1)).next_batch()[1].tolist() for _ in range(2)]
    assert a[0] == a[1] and sorted(a[0]) == list(range(8)) and a[0] != list(range(8))


def test_hdf5_errors(tmp_path):
    rng = np.random.default_rng(0)
    write_h5(tmp_path / "a.h5", 0, 3)
    (tmp_path / "list.txt").write_text(f"{tmp_path}/a.h5")
    lp = h5_layer(str(tmp_path / "list.txt"), 2)
    lp.top.append("weights")
    with pytest.raises(CaffeCompatError, match=r"layer 'h5' \(HDF5Data\): .*a.h5 has no dataset 'weights'"):
        make_source(lp, TRAIN, rng)
    lp = h5_layer(str(tmp_path / "list.txt"), 2)
    lp.transform_param.scale = 2
    with pytest.raises(CaffeCompatError, match="does not transform data"):
        make_source(lp, TRAIN, rng)
    (tmp_path / "bad.txt").write_text(f"{tmp_path}/nope.h5")
    with pytest.raises(CaffeCompatError, match="no such HDF5 file: .*nope.h5"):
        make_source(h5_layer(str(tmp_path / "bad.txt"), 2), TRAIN, rng)
    (tmp_path / "noth5.h5").write_text("text")
    (tmp_path / "bad2.txt").write_text(f"{tmp_path}/noth5.h5")
    with pytest.raises(CaffeCompatError, match="cannot open HDF5 file"):
        make_source(h5_layer(str(tmp_path / "bad2.txt"), 2), TRAIN, rng)


def test_dummy_data_constant_once_random_each_batch():
    lp = caffe_pb2.LayerParameter(name="dummy", type="DummyData", top=["data", "label"])
    p = lp.dummy_data_param
    p.shape.add().dim.extend([2, 3])
    p.shape.add().dim.extend([2])
    p.data_filler.add(type="gaussian", std=1.0)
    p.data_filler.add(type="constant", value=4)
    src = make_source(lp, TRAIN, np.random.default_rng(0))
    assert src.top_shapes() == [(2, 3), (2,)]
    (d1, l1), (d2, l2) = src.next_batch(), src.next_batch()
    assert d1.shape == (2, 3) and not np.array_equal(d1, d2)
    assert (l1 == 4).all() and (l2 == 4).all()
    again = make_source(lp, TRAIN, np.random.default_rng(0)).next_batch()
    np.testing.assert_array_equal(again[0], d1)


def test_dummy_data_legacy_dims_default_zero_and_errors():
    lp = caffe_pb2.LayerParameter(name="dummy", type="DummyData", top=["a", "b"])
    p = lp.dummy_data_param
    p.num.append(2)
    p.channels.extend([1, 3])
    p.height.append(4)
    p.width.append(5)
    src = make_source(lp, TRAIN, np.random.default_rng(0))
    assert src.top_shapes() == [(2, 1, 4, 5), (2, 3, 4, 5)]
    assert all((b == 0).all() for b in src.next_batch())
    p.shape.add().dim.append(3)
    with pytest.raises(CaffeCompatError, match="both shape and the legacy"):
        make_source(lp, TRAIN, np.random.default_rng(0))
    lp = caffe_pb2.LayerParameter(name="dummy", type="DummyData", top=["a", "b", "c"])
    lp.dummy_data_param.shape.add().dim.append(3)
    lp.dummy_data_param.data_filler.add(type="constant")
    lp.dummy_data_param.data_filler.add(type="constant")
    with pytest.raises(CaffeCompatError, match="2 data_filler entries for 3 tops"):
        make_source(lp, TRAIN, np.random.default_rng(0))
