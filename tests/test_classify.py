"""`caffecompat classify` on the bundled example's net and images.

References: `caffecompat test`'s accuracy on the same images through the Data
layer (same pixels, same mean and scale), and OpenCV's own Caffe importer
(cv2.dnn.readNetFromCaffe) run on crops cut and normalized by hand.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from caffecompat.cli import main
from caffecompat.formats.blob import read_binaryproto
from tests.cli_run import run_cli
from tests.mpi_run import mpiexec_or_skip, run_one, run_ranks

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


# -- HDF5 results -------------------------------------------------------------------------------

def _classify_to(work: Path, out: Path, *args: str) -> str:
    rc, log = run_cli(["classify", "-model", str(work / "deploy.prototxt"), "-weights",
                       str(work / "shapes_iter_50.caffemodel"), "-output", str(out), *args])
    assert rc == 0, log[-2000:]
    return log


def _per_image(path: Path) -> dict[str, tuple[np.ndarray, dict]]:
    found = {}
    with h5py.File(path, "r") as f:
        f["predictions"].visititems(lambda name, obj: found.__setitem__(name, (obj[()], dict(obj.attrs)))
                                    if isinstance(obj, h5py.Dataset) else None)
    return found


VAL = ["-mean_file", "mean.binaryproto", "-scale", str(SCALE), "-root", "images/", "-labels", "images/labels.txt",
       "-top_k", "3", "images/val.txt", "-batch_size", "7"]


def test_hdf5_results_hold_the_csv_numbers_per_image_and_as_arrays(work, monkeypatch):
    monkeypatch.chdir(work)
    _classify_to(work, work / "val.csv", *VAL)
    _classify_to(work, work / "val.h5", *VAL)
    _classify_to(work, work / "val.out", "-format", "hdf5", *VAL)
    assert (work / "val.h5").read_bytes() == (work / "val.out").read_bytes()
    rows = list(csv.DictReader((work / "val.csv").read_text().splitlines()))
    names = (work / "images/labels.txt").read_text().split()
    listed = [line.split()[0] for line in (work / "images/val.txt").read_text().splitlines()]
    with h5py.File(work / "val.h5", "r") as f:
        scores = f["scores"][()]
        assert scores.dtype == np.float32 and scores.shape == (100, len(names))
        assert [x.decode() for x in f["files"][()]] == [r["image"] for r in rows]
        assert [x.decode() for x in f["labels"][()]] == names
        assert list(f["true_labels"][()]) == [int(r["label"]) for r in rows]
        top, top_scores = f["top_classes"][()], f["top_scores"][()]
    assert top.shape == (100, 3)
    for i, r in enumerate(rows):
        assert list(top[i]) == [int(r[f"class_{k}"]) for k in (1, 2, 3)]
        # The CSV's scores are float32 values to 6 significant digits.
        np.testing.assert_allclose(top_scores[i], [float(r[f"score_{k}"]) for k in (1, 2, 3)], rtol=1e-5, atol=1e-7)
        assert list(top_scores[i]) == list(scores[i][top[i]])
    per_image = _per_image(work / "val.h5")
    # One dataset per image, named by its path as listed in val.txt (val/circle_0001.png -> group val).
    assert sorted(per_image) == sorted(listed)
    for name, (values, attrs) in per_image.items():
        i = int(attrs["index"])
        assert attrs["file"] == rows[i]["image"] == "images/" + name
        assert int(attrs["label"]) == int(rows[i]["label"])
        assert np.array_equal(values, scores[i])


def test_print_predictions_agrees_with_classify_accuracy(work, monkeypatch):
    monkeypatch.chdir(work)
    log = _classify_to(work, work / "acc.h5", *VAL)
    (expected,) = re.findall(r"classify.py\] accuracy = (\S+ \(\d+/\d+ labelled images\))", log)
    done = subprocess.run([sys.executable, str(REPO / "examples/classify/print_predictions.py"), str(work / "acc.h5")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == f"accuracy = {expected}"
    assert len(lines) == 101 and lines[0].startswith("images/val/")


def test_hdf5_names_are_safe_and_unique(work, tmp_path, monkeypatch):
    src = sorted((work / "images" / "val").iterdir())
    odd = tmp_path / "in" / "50% off" / "weird name.png"
    odd.parent.mkdir(parents=True)
    shutil.copy(src[0], odd)
    (tmp_path / "list.txt").write_text(f"{src[1]}\n./{src[2].name}\n{src[1]}\n")
    shutil.copy(src[2], tmp_path / src[2].name)
    out = tmp_path / "r.hdf5"
    monkeypatch.chdir(tmp_path)
    _classify_to(work, out, "-mean_value", "128", str(tmp_path / "in"), "list.txt")
    found = _per_image(out)
    first = str(src[1]).lstrip("/")
    assert sorted(found) == sorted(["50%25 off/weird name.png", first, f"%2E/{src[2].name}", first + "#2"])
    assert found["50%25 off/weird name.png"][1]["file"] == str(odd)
    assert found[first + "#2"][1]["index"] == 3
    assert np.array_equal(found[first][0], found[first + "#2"][0])


def test_hdf5_name_mapping():
    from caffecompat.commands.classify import hdf5_name

    assert hdf5_name("cat/001.jpg") == "cat/001.jpg"
    assert hdf5_name("/abs//x.png") == "abs/x.png"
    assert hdf5_name("../a/./b%.png") == "%2E%2E/a/%2E/b%25.png"
    assert hdf5_name(b"caf\xe9.png".decode("utf-8", "surrogateescape")) == "caf%E9.png"
    assert hdf5_name("caf\u00e9 \u732b.png") == "caf\u00e9 \u732b.png"


@pytest.mark.parametrize("output, extra, message", [
    ("r.xyz", [], r"unknown output format '\.xyz': use \.csv, \.txt, \.json, \.h5/\.hdf5, or -format"),
    ("r.h5", ["-format", "csv"], r"names a hdf5 file but -format is csv"),
    ("", ["-format", "hdf5"], r"-format hdf5 needs -output FILE\.h5"),
])
def test_output_formats_are_never_written_under_another_name(work, tmp_path, capsys, output, extra, message):
    image = str(sorted((work / "images" / "val").iterdir())[0])
    args = ["classify", "-model", str(work / "deploy.prototxt"), "-weights", str(work / "shapes_iter_50.caffemodel"),
            *(["-output", str(tmp_path / output)] if output else []), *extra, image]
    assert main(args) == 1
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "error:" in x]
    assert re.search(message, line), line
    assert list(tmp_path.iterdir()) == []


def test_threads_flag_is_logged_and_reaches_onnx_runtime(work, monkeypatch):
    from caffecompat.runtime import providers

    monkeypatch.setattr(providers, "INTRA_OP_THREADS", 0)
    seen = []
    real = providers.inference_session

    def spy(model_bytes, providers_, options=None, **kw):
        session = real(model_bytes, providers_, options, **kw)
        seen.append(session.get_session_options().intra_op_num_threads)
        return session

    monkeypatch.setattr("caffecompat.runtime.forward.inference_session", spy)
    image = str(sorted((work / "images" / "val").iterdir())[0])
    log = _classify_to(work, work / "t.csv", "-mean_value", "128", "-threads", "1", image)
    assert "Using 1 thread per process (from -threads)" in log
    assert seen == [1]
    monkeypatch.setattr(providers, "INTRA_OP_THREADS", 0)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    log = _classify_to(work, work / "t.csv", "-mean_value", "128", image)
    assert "Using 3 threads per process (from OMP_NUM_THREADS)" in log
    assert seen == [1, 3]


# -- sharded under MPI ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["r.h5", "r.csv"])
def test_two_ranks_write_the_one_process_file(work, name):
    # The same per-process thread count as the one process: ONNX Runtime's sums depend on it in the last bit.
    args = ["classify", "-model", "deploy.prototxt", "-weights", "shapes_iter_50.caffemodel", "-threads", "1", *VAL]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        from caffecompat.runtime import providers

        mp.setattr(providers, "INTRA_OP_THREADS", 0)
        rc, log = run_cli([*args, "-output", f"one.{name}"])
    assert rc == 0, log[-2000:]
    done = run_ranks(2, [*args, "-output", f"two.{name}"], cwd=str(work))
    assert done.returncode == 0, done.stderr[-2000:]
    assert (work / f"two.{name}").read_bytes() == (work / f"one.{name}").read_bytes()
    assert "Data-parallel inference on 2 processes" in done.stderr
    # Rank 0 alone logs the progress and the results.
    pids = {line.split()[2] for line in done.stderr.splitlines() if "classify.py] classify [" in line
            or "classify.py] Classified" in line}
    assert len(pids) == 1
    assert re.search(r"accuracy = \S+ \(\d+/100 labelled images\)", done.stderr)
    assert not [p.name for p in work.iterdir() if ".caffecompat-tmp-" in p.name]


def test_processes_flag_starts_the_ranks_itself(work):
    args = ["classify", "-model", "deploy.prototxt", "-weights", "shapes_iter_50.caffemodel", "-threads", "1", *VAL]
    mpiexec_or_skip()
    assert run_one([*args, "-output", "p1.h5"], cwd=str(work)).returncode == 0
    done = run_one([*args, "-output", "p3.h5", "-processes", "3"], cwd=str(work))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Starting 3 processes" in done.stderr
    assert (work / "p3.h5").read_bytes() == (work / "p1.h5").read_bytes()


def test_a_failing_rank_stops_the_job_with_one_line(work, tmp_path):
    # A label past the net's 4 classes in the second batch: rank 1 reads it, the job stops, nothing is written.
    src = sorted((work / "images" / "val").iterdir())
    (tmp_path / "list.txt").write_text(f"{src[0]} 0\n{src[1]} 9\n")
    done = run_ranks(2, ["classify", "-model", str(work / "deploy.prototxt"), "-weights",
                         str(work / "shapes_iter_50.caffemodel"), "-mean_value", "128", "-batch_size", "1",
                         "-output", str(tmp_path / "r.h5"), str(tmp_path / "list.txt")])
    assert done.returncode != 0
    # Without -threads (nor OMP_NUM_THREADS), the 2 ranks share this machine's cores.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if "OMP_NUM_THREADS" not in os.environ:
        count = max(1, cores // 2)
        assert f"Using {count} thread{'s' if count > 1 else ''} per process (from the {cores} cores of this machine, " \
               "shared by 2 processes)" in done.stderr
        assert "Data-parallel inference on 2 processes (" in done.stderr and f"), {count} thread(s) each" in \
            done.stderr
    (line,) = [x for x in done.stderr.splitlines() if "error:" in x]
    assert re.fullmatch(r"caffecompat classify: error: rank 1 of 2 \(pid \d+ on .*\): .*label 9 is not a class of "
                        r"the net's 4 outputs", line), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["list.txt"]
