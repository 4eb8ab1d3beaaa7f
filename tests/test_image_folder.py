"""Image folders (one subfolder per class) for convert-lmdb and make-list."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import lmdb
import numpy as np
import pytest

from caffecompat.cli import main
from caffecompat.data import image_folder
from caffecompat.errors import CaffeCompatError
from caffecompat.proto import caffe_pb2
from tests.cli_run import run_cli


def png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((4, 5, 3), value, np.uint8))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    png(root / "zebra" / "z1.png", 1)
    png(root / "ant" / "b.png", 2)
    png(root / "ant" / "a.png", 3)
    png(root / "ant" / "more" / "c.png", 4)
    png(root / "Bee" / "x.jpg", 5)
    png(root / "ant" / ".hidden.png", 6)
    (root / ".git").mkdir()
    (root / "README.txt").write_text("top-level file")
    (root / "ant" / "notes.txt").write_text("not an image")
    return root


def test_scan_labels_sorted_class_folders(folder):
    found = image_folder.scan(str(folder))
    # Python's sorted order (code points: upper case first), as the labels file records it.
    assert found.classes == ["Bee", "ant", "zebra"]
    assert found.items == [("Bee/x.jpg", 0), ("ant/a.png", 1), ("ant/b.png", 1), ("ant/more/c.png", 1),
                           ("zebra/z1.png", 2)]
    assert found.skipped == ["README.txt", "ant/notes.txt"]


def test_make_list_writes_the_list_and_labels(folder, tmp_path, capsys):
    rc, log = run_cli(["make-list", str(folder), str(tmp_path / "train.txt")])
    assert rc == 0
    assert (tmp_path / "train.txt").read_text() == (
        "Bee/x.jpg 0\nant/a.png 1\nant/b.png 1\nant/more/c.png 1\nzebra/z1.png 2\n")
    assert (tmp_path / "labels.txt").read_text() == "Bee\nant\nzebra\n"
    assert "Skipped 2 file(s)" in log and "Wrote 5 images of 3 classes" in log
    # The same classes again: the labels file is kept; other classes: an error naming the fix.
    assert run_cli(["make-list", str(folder), str(tmp_path / "again.txt")])[0] == 0
    (folder / "cat").mkdir()
    png(folder / "cat" / "c.png", 9)
    rc = main(["make-list", str(folder), str(tmp_path / "third.txt")])
    assert rc == 1 and not (tmp_path / "third.txt").exists()
    assert "labels.txt: a labels file with other classes is already there; pass -classes" in capsys.readouterr().err


def test_classes_file_fixes_the_label_order(folder, tmp_path, capsys):
    (tmp_path / "order.txt").write_text("zebra\nant\nBee\nunused\n")
    assert main(["make-list", "-classes", str(tmp_path / "order.txt"), "-labels_file", str(tmp_path / "l.txt"),
                 str(folder), str(tmp_path / "val.txt")]) == 0
    assert (tmp_path / "val.txt").read_text().splitlines()[0] == "zebra/z1.png 0"
    assert (tmp_path / "l.txt").read_text() == "zebra\nant\nBee\nunused\n"
    (tmp_path / "short.txt").write_text("ant\n")
    assert main(["make-list", "-classes", str(tmp_path / "short.txt"), str(folder), str(tmp_path / "v2.txt")]) == 1
    err = capsys.readouterr().err
    assert re.search(r"class folder\(s\) Bee, zebra are not listed in .*short.txt", err)


def test_convert_lmdb_reads_an_image_folder_as_its_list(folder, tmp_path):
    rc, log = run_cli(["convert-lmdb", str(folder), str(tmp_path / "folder_db")])
    assert rc == 0, log
    assert "Image folder" in log and "3 classes, 5 images" in log
    assert (tmp_path / "labels.txt").read_text() == "Bee\nant\nzebra\n"
    assert main(["make-list", "-labels_file", str(tmp_path / "labels.txt"), str(folder),
                 str(tmp_path / "list.txt")]) == 0
    assert main(["convert-lmdb", f"{folder}/", str(tmp_path / "list.txt"), str(tmp_path / "list_db")]) == 0

    def records(path):
        env = lmdb.open(str(path), readonly=True, lock=False)
        with env.begin() as txn:
            out = list(txn.cursor())
        env.close()
        return out

    got = records(tmp_path / "folder_db")
    assert got == records(tmp_path / "list_db")
    assert [k for k, _ in got] == [b"00000000_Bee/x.jpg", b"00000001_ant/a.png", b"00000002_ant/b.png",
                                   b"00000003_ant/more/c.png", b"00000004_zebra/z1.png"]
    datums = [caffe_pb2.Datum.FromString(v) for _, v in got]
    assert [d.label for d in datums] == [0, 1, 1, 1, 2]
    assert [d.data[0] for d in datums[1:]] == [3, 2, 4, 1]  # each record holds its own image


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "no such folder"),
    (lambda p: (p / "flat").mkdir() or png(p / "flat" / "a.png", 1) or p / "flat", "has no class subfolders"),
    (lambda p: (p / "e" / "c").mkdir(parents=True) or p / "e", "no image files in its class folders"),
])
def test_bad_folders(tmp_path, make, message):
    with pytest.raises(CaffeCompatError, match=message):
        image_folder.scan(str(make(tmp_path)))


def test_convert_lmdb_argument_mistakes(folder, tmp_path, capsys):
    assert main(["convert-lmdb", f"{tmp_path}/", str(folder), str(tmp_path / "db")]) == 1
    assert "is a folder, not a list file; to convert an image folder give two arguments" in capsys.readouterr().err
    (tmp_path / "l.txt").write_text("ant/a.png 0\n")
    assert main(["convert-lmdb", "-classes", "x.txt", f"{folder}/", str(tmp_path / "l.txt"),
                 str(tmp_path / "db")]) == 1
    assert "-labels_file and -classes apply to image folders" in capsys.readouterr().err
    assert not (tmp_path / "db").exists()
