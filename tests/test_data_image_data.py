"""The ImageData layer: list files, root_folder, resize, colour, shuffle, errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from caffecompat.data import make_source
from caffecompat.errors import CaffeCompatError
from caffecompat.proto import caffe_pb2

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def make_images(root: Path, n: int, size=(6, 8)) -> list[np.ndarray]:
    """n PNGs under root/imgs/, image i with label i; one of them has a space in its name."""
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    imgs, lines = [], []
    for i in range(n):
        img = np.random.default_rng(i).integers(0, 256, size=(*size, 3), dtype=np.uint8)
        name = f"imgs/img {i}.png" if i == 1 else f"imgs/img{i}.png"
        cv2.imwrite(str(root / name), img)
        imgs.append(img)
        lines.append(f"{name} {i}")
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    return imgs


def layer(source: str, batch: int = 2, root_folder: str = "", **params) -> caffe_pb2.LayerParameter:
    lp = caffe_pb2.LayerParameter(name="images", type="ImageData", top=["data", "label"])
    lp.image_data_param.source = source
    lp.image_data_param.batch_size = batch
    lp.image_data_param.root_folder = root_folder
    for k, v in params.items():
        setattr(lp.image_data_param, k, v)
    return lp


def labels_of(src, n: int) -> list[list[int]]:
    return [src.next_batch()[1].astype(int).tolist() for _ in range(n)]


def test_reads_the_list_in_order_with_root_folder(tmp_path):
    imgs = make_images(tmp_path, 3)
    src = make_source(layer(str(tmp_path / "list.txt"), root_folder=f"{tmp_path}/"), TEST,
                      np.random.default_rng(0))
    assert src.top_shapes() == [(2, 3, 6, 8), (2,)]
    data, label = src.next_batch()
    np.testing.assert_array_equal(data[1], imgs[1].transpose(2, 0, 1))  # 'img 1.png': space in the path
    assert labels_of(src, 2) == [[2, 0], [1, 2]]
    src.close()


def test_relative_paths_resize_and_gray(tmp_path, monkeypatch):
    imgs = make_images(tmp_path, 2)
    monkeypatch.chdir(tmp_path)
    src = make_source(layer("list.txt", new_height=4, new_width=5, is_color=False), TEST,
                      np.random.default_rng(0))
    assert src.top_shapes()[0] == (2, 1, 4, 5)
    data, _ = src.next_batch()
    gray = cv2.imdecode(np.fromfile(tmp_path / "imgs/img0.png", np.uint8), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(data[0, 0], cv2.resize(gray, (5, 4)))
    src.close()
    assert imgs


def test_shuffle_is_seeded_and_reshuffles_each_epoch(tmp_path):
    make_images(tmp_path, 6)
    lp = layer(str(tmp_path / "list.txt"), batch=6, root_folder=f"{tmp_path}/", shuffle=True)
    a = make_source(lp, TRAIN, np.random.default_rng(3))
    b = make_source(lp, TRAIN, np.random.default_rng(3))
    epochs_a, epochs_b = labels_of(a, 4), labels_of(b, 4)
    a.close()
    b.close()
    assert epochs_a == epochs_b
    assert all(sorted(e) == list(range(6)) for e in epochs_a)
    assert len({tuple(e) for e in epochs_a}) > 1


def test_rand_skip_starts_inside_the_list(tmp_path):
    make_images(tmp_path, 4)
    lp = layer(str(tmp_path / "list.txt"), batch=4, root_folder=f"{tmp_path}/", rand_skip=3)
    starts = set()
    for seed in range(12):
        src = make_source(lp, TRAIN, np.random.default_rng(seed))
        starts.add(src.next_batch()[1][0])
        src.close()
    assert starts <= {0, 1, 2} and len(starts) > 1


def test_bad_inputs(tmp_path):
    make_images(tmp_path, 2)
    rng = np.random.default_rng(0)
    root = f"{tmp_path}/"
    (tmp_path / "missing.txt").write_text("imgs/img0.png 0\nimgs/nope.png 1\n")
    with pytest.raises(CaffeCompatError, match=r"layer 'images' \(ImageData\): .*missing.txt:1: .*img0.png"):
        make_source(layer(str(tmp_path / "missing.txt"), root_folder="/nowhere/"), TEST, rng)
    src = make_source(layer(str(tmp_path / "missing.txt"), root_folder=root), TEST, rng)
    with pytest.raises(CaffeCompatError, match=r"missing.txt:2: .*nope.png: no such image file"):
        src.next_batch()
    src.close()
    (tmp_path / "label.txt").write_text("imgs/img0.png zero\n")
    with pytest.raises(CaffeCompatError, match=r"label.txt:1: label 'zero' is not an integer"):
        make_source(layer(str(tmp_path / "label.txt"), root_folder=root), TEST, rng)
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(CaffeCompatError, match=r"empty.txt: image list file is empty"):
        make_source(layer(str(tmp_path / "empty.txt"), root_folder=root), TEST, rng)
    with pytest.raises(CaffeCompatError, match=r"no such image list file"):
        make_source(layer(str(tmp_path / "absent.txt")), TEST, rng)
    with pytest.raises(CaffeCompatError, match="new_height and new_width together"):
        make_source(layer(str(tmp_path / "list.txt"), new_height=3), TEST, rng)
    (tmp_path / "junk.png").write_bytes(b"not a png")
    (tmp_path / "junk.txt").write_text("junk.png 0\n")
    with pytest.raises(CaffeCompatError, match=r"junk.txt:1: .*junk.png: could not decode the image"):
        make_source(layer(str(tmp_path / "junk.txt"), root_folder=root), TEST, rng)
