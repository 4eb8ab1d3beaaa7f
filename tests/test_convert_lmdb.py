"""convert-lmdb against Caffe's convert_imageset databases, and its behaviour on bad input."""

from __future__ import annotations

import os
import re
from pathlib import Path

import cv2
import lmdb
import numpy as np
import pytest

from caffecompat.cli import main
from caffecompat.data.convert_imageset import Options, convert_imageset
from caffecompat.proto import caffe_pb2

# lmdb/<name> in the golden folder: (list file, convert_imageset flags), per its README.
GOLDEN_DBS = {
    "train_32": ("images/train.txt", ["-resize_height", "32", "-resize_width", "32"]),
    "val_32": ("images/val.txt", ["-resize_height", "32", "-resize_width", "32"]),
    "val_gray_28": ("images/val.txt", ["-gray", "-resize_height", "28", "-resize_width", "28"]),
    "val_encoded_png": ("images/val.txt", ["-encoded", "-encode_type", "png"]),
    "val_encoded_jpg_36x30": ("images/val.txt",
                              ["-encoded", "-resize_height", "36", "-resize_width", "30", "-encode_type", "jpg"]),
}


def records(path: Path) -> list[tuple[bytes, bytes]]:
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        items = list(txn.cursor())
    env.close()
    return items


def pixels(d: caffe_pb2.Datum) -> np.ndarray:
    if d.encoded:
        return cv2.imdecode(np.frombuffer(d.data, np.uint8), cv2.IMREAD_UNCHANGED).astype(int)
    return np.frombuffer(d.data, np.uint8).astype(int)


@pytest.mark.parametrize("name", sorted(GOLDEN_DBS))
def test_same_database_as_caffe(golden, monkeypatch, tmp_path, capsys, name):
    monkeypatch.chdir(golden)
    list_file, flags = GOLDEN_DBS[name]
    assert main(["convert-lmdb", *flags, "images/", list_file, str(tmp_path / name)]) == 0
    ours, caffe = records(tmp_path / name), records(golden / "lmdb" / name)
    assert [k for k, _ in ours] == [k for k, _ in caffe]
    for (key, mine), (_, theirs) in zip(ours, caffe):
        a, b = caffe_pb2.Datum.FromString(mine), caffe_pb2.Datum.FromString(theirs)
        assert [f.name for f, _ in a.ListFields()] == [f.name for f, _ in b.ListFields()]
        assert (a.channels, a.height, a.width, a.label, a.encoded) == \
               (b.channels, b.height, b.width, b.label, b.encoded)
        if not a.encoded:
            assert mine == theirs  # raw records: the very same bytes
        png_source = key.endswith(b".png")
        diff = np.abs(pixels(a) - pixels(b)).max()
        assert diff == 0 if png_source else diff <= 1, key
    assert f"Processed {len(caffe)} files." in capsys.readouterr().err


def test_check_size_failure_leaves_no_database(golden, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(golden)
    # Caffe's lmdb/error_check_size.log: "Check failed: data.size() == data_size (1716 vs. 2736)".
    target = tmp_path / "val_noresize_checksize"
    assert main(["convert-lmdb", "-check_size", "images/", "images/val.txt", str(target)]) == 1
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if "error:" in x]
    assert line.startswith("caffecompat convert-lmdb: error: -check_size: images/val/")
    assert "(1716 bytes raw)" in line and "(2736 bytes raw)" in line and "Traceback" not in err
    assert os.listdir(tmp_path) == []


def make_images(root: Path, names: list[str], size=(5, 6)) -> None:
    for i, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        img = np.random.default_rng(i).integers(0, 256, size=(*size, 3), dtype=np.uint8)
        assert cv2.imwrite(str(root / name), img)


def write_list(path: Path, names: list[str]) -> Path:
    path.write_text("".join(f"{n} {i}\n" for i, n in enumerate(names)))
    return path


def test_unreadable_images_are_reported_and_skipped(tmp_path, capsys):
    make_images(tmp_path, ["a.png", "c.jpg"])
    (tmp_path / "b.png").write_bytes(b"garbage")
    lst = write_list(tmp_path / "list.txt", ["a.png", "b.png", "missing.png", "c.jpg"])
    assert main(["convert-lmdb", f"{tmp_path}/", str(lst), str(tmp_path / "db")]) == 0
    err = capsys.readouterr().err
    assert "Could not open or find file" in err and "missing.png: no such image file" in err
    assert "Processed 2 files." in err and "Skipped 2 image(s)" in err
    # Keys keep the list index, as Caffe's do.
    assert [k for k, _ in records(tmp_path / "db")] == [b"00000000_a.png", b"00000003_c.jpg"]


def test_existing_database_needs_overwrite(tmp_path, capsys):
    make_images(tmp_path, ["a.png"])
    lst = write_list(tmp_path / "list.txt", ["a.png"])
    db = tmp_path / "db"
    db.mkdir()
    assert main(["convert-lmdb", f"{tmp_path}/", str(lst), str(db)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err and "-overwrite" in err
    assert main(["convert-lmdb", "--overwrite", f"{tmp_path}/", str(lst), str(db)]) == 0
    assert len(records(db)) == 1
    assert sorted(os.listdir(tmp_path)) == ["a.png", "db", "list.txt"]


@pytest.mark.parametrize("text, message", [
    ("a.png 0\njust-a-path\n", r"list.txt:2: expected 'PATH LABEL'"),
    ("a.png 0\na.png 1.5\n", r"list.txt:2: label '1.5' is not an integer"),
    ("\n", r"list.txt: image list file is empty"),
])
def test_bad_list_files_fail_with_one_line(tmp_path, capsys, text, message):
    make_images(tmp_path, ["a.png"])
    (tmp_path / "list.txt").write_text(text)
    assert main(["convert-lmdb", f"{tmp_path}/", str(tmp_path / "list.txt"), str(tmp_path / "db")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("caffecompat convert-lmdb: error: ")
    assert re.search(message, err)
    assert not (tmp_path / "db").exists()


def test_other_errors(tmp_path, capsys):
    make_images(tmp_path, ["a.png"])
    lst = write_list(tmp_path / "list.txt", ["a.png"])
    assert main(["convert-lmdb", "-backend", "rocksdb", f"{tmp_path}/", str(lst), str(tmp_path / "db")]) == 1
    assert "-backend rocksdb: unknown database backend 'rocksdb'; use lmdb or leveldb" in capsys.readouterr().err
    assert main(["convert-lmdb", f"{tmp_path}/", str(tmp_path / "nope.txt"), str(tmp_path / "db")]) == 1
    assert "nope.txt: no such image list file" in capsys.readouterr().err
    assert main(["convert-lmdb", "-encode_type", "webpx", f"{tmp_path}/", str(lst), str(tmp_path / "db")]) == 1
    assert "cannot encode images as 'webpx'" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["a.png", "list.txt"]


def test_shuffle_is_seeded_and_threads_do_not_change_the_result(tmp_path):
    names = [f"d/i{i}.png" for i in range(20)]
    make_images(tmp_path, names)
    lst = write_list(tmp_path / "list.txt", names)
    root = f"{tmp_path}/"
    one = convert_imageset(root, str(lst), str(tmp_path / "one"), Options(shuffle=True, workers=1), False)
    many = convert_imageset(root, str(lst), str(tmp_path / "many"), Options(shuffle=True, workers=4), False)
    other = convert_imageset(root, str(lst), str(tmp_path / "other"), Options(shuffle=True, seed=9), False)
    assert one.count == many.count == other.count == 20
    a, b, c = records(tmp_path / "one"), records(tmp_path / "many"), records(tmp_path / "other")
    assert a == b and a != c
    assert [k[:9] for k, _ in a] == [f"{i:08d}_".encode() for i in range(20)]
    assert sorted(k[9:] for k, _ in a) == sorted(n.encode() for n in names)


def test_encoded_keeps_the_original_file_bytes(tmp_path):
    make_images(tmp_path, ["a.png", "b.jpg"])
    lst = write_list(tmp_path / "list.txt", ["a.png", "b.jpg"])
    assert main(["convert-lmdb", "-encoded", "-gray", f"{tmp_path}/", str(lst), str(tmp_path / "g")]) == 0
    assert main(["convert-lmdb", "-encoded", f"{tmp_path}/", str(lst), str(tmp_path / "c")]) == 0
    color = [caffe_pb2.Datum.FromString(v) for _, v in records(tmp_path / "c")]
    assert [d.data for d in color] == [(tmp_path / "a.png").read_bytes(), (tmp_path / "b.jpg").read_bytes()]
    # Caffe's test, (channels == 3) == is_color, also holds for a grey read: -gray keeps the file too.
    gray = [caffe_pb2.Datum.FromString(v) for _, v in records(tmp_path / "g")]
    assert [d.data for d in gray] == [d.data for d in color]
    # A resize, or another encoding, re-encodes the decoded image.
    assert main(["convert-lmdb", "-encode_type", "png", "-gray", "-resize_height", "4", "-resize_width", "4",
                 f"{tmp_path}/", str(lst), str(tmp_path / "r")]) == 0
    resized = [caffe_pb2.Datum.FromString(v) for _, v in records(tmp_path / "r")]
    assert all(d.encoded and pixels(d).shape == (4, 4) for d in resized)


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((6, 5, 3), 90, np.uint8))


def _no_database_and_one_line(capsys, db: Path) -> str:
    assert not db.exists() and not [p for p in db.parent.iterdir() if p.name.startswith(f".{db.name}")]
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "error:" in ln]
    assert len(lines) == 1, lines
    return lines[0]


def test_root_repeated_in_the_list_converts_nothing_and_says_why(tmp_path, monkeypatch, capsys):
    # ROOT/Train_Images/ + "Train_Images/a.jpg": Caffe writes an empty database and exits 0.
    for name in ("a.jpg", "b.jpg"):
        _image(tmp_path / "Train_Images" / name)
    (tmp_path / "train.txt").write_text("Train_Images/a.jpg 0\nTrain_Images/b.jpg 1\n")
    monkeypatch.chdir(tmp_path)
    assert main(["convert-lmdb", "Train_Images/", "train.txt", "db"]) == 1
    line = _no_database_and_one_line(capsys, tmp_path / "db")
    assert "every image was missing: Train_Images/Train_Images/a.jpg" in line
    assert "the list's paths already start with the root's last folder 'Train_Images/'" in line
    assert "give ROOTFOLDER ./" in line
    # With the root it names, the same list converts (two records).
    assert main(["convert-lmdb", "./", "train.txt", "db"]) == 0
    assert len(records(tmp_path / "db")) == 2


def test_root_without_slash_or_empty_list_converts_nothing(tmp_path, monkeypatch, capsys):
    _image(tmp_path / "imgs" / "a.png")
    (tmp_path / "list.txt").write_text("a.png 3\n")
    monkeypatch.chdir(tmp_path)
    assert main(["convert-lmdb", "imgs", "list.txt", "db"]) == 1
    line = _no_database_and_one_line(capsys, tmp_path / "db")
    assert "every image was missing: imgsa.png" in line and "does not end in '/'" in line
    (tmp_path / "empty.txt").write_text("")
    assert main(["convert-lmdb", "imgs/", "empty.txt", "db"]) == 1
    assert "empty.txt: image list file is empty" in _no_database_and_one_line(capsys, tmp_path / "db")
    # Every image there but none decodes: not "missing", and still no database.
    (tmp_path / "imgs" / "a.png").write_bytes(b"not a png")
    assert main(["convert-lmdb", "imgs/", "list.txt", "db"]) == 1
    assert "none of the 1 images of list.txt could be read" in _no_database_and_one_line(capsys, tmp_path / "db")
