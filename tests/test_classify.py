"""`caffecompat classify` on the bundled example's net and images.

References: `caffecompat test`'s accuracy on the same images through the Data
layer (same pixels, same mean and scale), and OpenCV's own Caffe importer
(cv2.dnn.readNetFromCaffe) run on crops cut and normalized by hand.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from caffecompat.cli import main
from caffecompat.formats.blob import read_binaryproto
from tests.cli_run import run_cli

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "caffecompat" / "examples" / "shapes"
SCALE = 0.0078125  # caffecompat/examples/shapes/train_val.prototxt's transform_param scale


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """The shapes example's work folder, small: 200 training and 100 validation images, 50 iterations."""
    work = tmp_path_factory.mktemp("shapes")
    spec = importlib.util.spec_from_file_location("make_images", REPO / "examples/shapes/make_images.py")
    make_images = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_images)
    make_images.main([str(work / "images"), "--train", "200", "--val", "100", "--seed", "4"])
    for name in ("train_val.prototxt", "deploy.prototxt"):
        shutil.copy(MODELS / name, work / name)
    solver = (MODELS / "solver.prototxt").read_text()
    solver = re.sub(r"max_iter: \d+", "max_iter: 50", solver)
    solver = re.sub(r"test_iter: \d+", "test_iter: 2", solver)
    solver = re.sub(r"test_interval: \d+", "test_interval: 1000", solver)
    solver = re.sub(r'snapshot_prefix: ".*"', 'snapshot_prefix: "shapes"', solver)
    (work / "solver.prototxt").write_text(solver)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        for split in ("train", "val"):
            assert main(["convert-lmdb", "images/", f"images/{split}.txt", f"{split}_lmdb"]) == 0
        assert main(["compute-mean", "train_lmdb", "mean.binaryproto"]) == 0
        assert run_cli(["train", "-solver", "solver.prototxt"])[0] == 0
    assert (work / "shapes_iter_50.caffemodel").is_file()
    return work


def classify(work: Path, *args: str) -> tuple[list[dict], str]:
    out = work / "out.json"
    rc, log = run_cli(["classify", "-model", str(work / "deploy.prototxt"), "-weights",
                       str(work / "shapes_iter_50.caffemodel"), "-output", str(out), *args])
    assert rc == 0, log[-2000:]
    return json.loads(out.read_text()), log


def test_accuracy_agrees_with_caffecompat_test(work, monkeypatch):
    monkeypatch.chdir(work)
    rc, log = run_cli(["test", "-model", "train_val.prototxt", "-weights", "shapes_iter_50.caffemodel",
                       "-iterations", "2"])  # 2 batches of 50 = the 100 validation images
    assert rc == 0
    (expected,) = re.findall(r"caffe.cpp:\d+\] accuracy = (\S+)", log)
    rows, log = classify(work, "-mean_file", "mean.binaryproto", "-scale", str(SCALE), "-root", "images/",
                         "-labels", "images/labels.txt", "images/val.txt", "-batch_size", "7")
    assert len(rows) == 100 and all("label" in r for r in rows)
    accuracy = np.mean([r["top"][0]["class"] == r["label"] for r in rows])
    assert accuracy == pytest.approx(float(expected), abs=1e-9)
    assert f"accuracy = {float(expected):.6g} ({round(accuracy * 100)}/100 labelled images)" in log
    assert 0.25 < accuracy < 1  # a trained net: its predictions vary, so agreement means something
    names = (work / "images/labels.txt").read_text().split()
    assert all(t["name"] == names[t["class"]] for r in rows for t in r["top"])


def test_scores_equal_opencv_dnn_on_hand_normalized_images(work):
    paths = [str(p) for p in sorted((work / "images" / "val").iterdir())[:6]]
    rows, _ = classify(work, "-mean_file", str(work / "mean.binaryproto"), "-scale", str(SCALE), "-top_k", "4",
                       *paths)
    mean = read_binaryproto(work / "mean.binaryproto")
    net = cv2.dnn.readNetFromCaffe(str(work / "deploy.prototxt"), str(work / "shapes_iter_50.caffemodel"))
    for path, row in zip(paths, rows):
        x = (cv2.imread(path).transpose(2, 0, 1)[None].astype(np.float32) - mean) * np.float32(SCALE)
        net.setInput(x.astype(np.float32))
        prob = net.forward()[0]
        assert row["image"] == path
        assert [t["class"] for t in row["top"]] == list(np.argsort(-prob, kind="stable"))
        np.testing.assert_allclose([t["score"] for t in row["top"]], np.sort(prob)[::-1], atol=1e-5)


def test_oversampling_averages_pycaffes_ten_crops(work):
    # Images resized to 40 x 44 and cut into the net's 32 x 32: corners, centre, and their mirrors.
    path = str(sorted((work / "images" / "val").iterdir())[0])
    mean_values = [100.0, 110.0, 120.0]
    rows, log = classify(work, "-images_dim", "40,44", "-oversample", "-mean_value", "100,110,120", "-scale",
                         str(SCALE), "-raw_scale", "0.9", "-channel_swap", "2,1,0", "-top_k", "4", path)
    img = cv2.resize(cv2.imread(path), (44, 40)).astype(np.float32)[:, :, ::-1] * np.float32(0.9)  # BGR -> RGB
    crops = []
    for y, x in [(0, 0), (0, 12), (8, 0), (8, 12), (4, 6)]:  # pycaffe: corners, then centre
        crops.append((img[y:y + 32, x:x + 32] - np.float32(mean_values)) * np.float32(SCALE))
    crops += [c[:, ::-1] for c in crops]
    net = cv2.dnn.readNetFromCaffe(str(work / "deploy.prototxt"), str(work / "shapes_iter_50.caffemodel"))
    net.setInput(np.stack([c.transpose(2, 0, 1) for c in crops]).astype(np.float32))
    prob = net.forward().mean(axis=0)
    got = {t["class"]: t["score"] for t in rows[0]["top"]}
    np.testing.assert_allclose([got[i] for i in range(4)], prob, atol=1e-5)
    assert "images resized to 40 x 44, 10 crops" in log


def test_folders_csv_and_unreadable_images(work, tmp_path):
    folder = tmp_path / "imgs"
    for name in ("circle", "cross"):
        (folder / name).mkdir(parents=True)
    src = sorted((work / "images" / "val").glob("circle_*.png"))[:2] + sorted(
        (work / "images" / "val").glob("cross_*.png"))[:1]
    shutil.copy(src[0], folder / "circle" / "a.png")
    shutil.copy(src[1], folder / "circle" / "b.png")
    shutil.copy(src[2], folder / "cross" / "c.png")
    (folder / "cross" / "broken.png").write_bytes(b"not a png")
    (folder / "cross" / "notes.md").write_text("not an image")
    out = tmp_path / "out.csv"
    rc, log = run_cli(["classify", "-model", str(work / "deploy.prototxt"), "-weights",
                       str(work / "shapes_iter_50.caffemodel"), "-mean_file", str(work / "mean.binaryproto"),
                       "-scale", str(SCALE), "-labels", str(work / "images/labels.txt"), "-top_k", "2",
                       "-output", str(out), str(folder)])
    assert rc == 0
    rows = list(csv.reader(out.read_text().splitlines()))
    assert rows[0] == ["image", "label", "class_1", "name_1", "score_1", "class_2", "name_2", "score_2"]
    # Subfolders named after classes label their images (circle = 0, cross = 3); sorted order.
    assert [(Path(r[0]).name, r[1]) for r in rows[1:]] == [("a.png", "0"), ("b.png", "0"), ("c.png", "3")]
    assert re.search(r"Could not read .*broken.png.*; skipped", log)
    assert "1 image(s) could not be read" in log


def test_batch_size_does_not_change_scores(work):
    paths = [str(p) for p in sorted((work / "images" / "val").iterdir())[:7]]
    args = ["-mean_value", "128", "-top_k", "4", *paths]
    one, _ = classify(work, "-batch_size", "3", *args)
    all_, _ = classify(work, "-batch_size", "16", *args)
    for a, b in zip(one, all_):
        assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
        np.testing.assert_allclose([t["score"] for t in a["top"]], [t["score"] for t in b["top"]], atol=1e-6)


@pytest.mark.parametrize("extra, message", [
    (["-mean_file", "M", "-mean_value", "1"], "give -mean_file or -mean_value, not both"),
    (["-channel_swap", "0,1"], r"-channel_swap 0,1: give an order of the 3 channels"),
    (["-images_dim", "20,20"], "-images_dim 20,20 is smaller than the net's input 32 x 32"),
    (["-mean_value", "1,2"], "2 mean values for 3-channel images"),
    (["-output_blob", "nope"], "no blob 'nope'"),
])
def test_errors_are_one_line(work, capsys, extra, message):
    image = str(sorted((work / "images" / "val").iterdir())[0])
    args = ["classify", "-model", str(work / "deploy.prototxt"), "-weights", str(work / "shapes_iter_50.caffemodel"),
            *extra, image]
    assert main([a if a != "M" else str(work / "mean.binaryproto") for a in args]) == 1
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if "error:" in x]
    assert line.startswith("caffecompat classify: error: ") and re.search(message, line), line


def test_a_training_net_is_refused(work, capsys):
    assert main(["classify", "-model", str(work / "train_val.prototxt"), "-weights",
                 str(work / "shapes_iter_50.caffemodel"), "x.png"]) == 1
    assert "classify needs a deploy net whose one input is an Input layer" in capsys.readouterr().err
