"""Hostile data: damaged LMDB pages, labels outside the classes, impossible blob shapes, unbounded reads.

Each case ends as one clean line (exit status 1) naming the file, or as the
right behaviour; never a traceback, a signal death, a hang or a silent wrong number.
Cases that could kill the interpreter (liblmdb's SIGBUS/SIGABRT without the
page check) run in a child process.
"""

from __future__ import annotations

import math
import os
import random
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from caffecompat.cli import main
from caffecompat.data import db as dbs
from caffecompat.errors import CaffeCompatError, DamagedDataError, printable
from tests import fuzz


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ": error: " in ln]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def _cli(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "caffecompat.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _lmdb(path: Path, records: int, labels: list[float] | None = None) -> None:
    """An LMDB of `records` 3 x 8 x 8 Datums (about 16 to a leaf page), labels i % 4 unless given."""
    from caffecompat.data import datum
    from caffecompat.data.lmdb_writer import LmdbWriter

    shutil.rmtree(path, ignore_errors=True)
    writer = LmdbWriter(str(path))
    rng = np.random.default_rng(1)
    for i in range(records):
        img = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        d = datum.from_image(img, i % 4)
        if labels is not None:
            d.label = int(labels[i % len(labels)])
        writer.put(f"{i:08d}".encode(), d.SerializeToString())
    writer.finish()


def _poke(path: Path, offset: int, data: bytes) -> None:
    with open(path / "data.mdb", "r+b") as f:
        f.seek(offset)
        f.write(data)


# --- LMDB page structures -------------------------------------------------------------


def _reads_all(path: Path) -> list[tuple[bytes, bytes]]:
    reader = dbs.open_reader(str(path), "lmdb", "layer")
    try:
        return list(reader.records())
    finally:
        reader.close()


def test_page_check_reads_what_liblmdb_reads(work):
    # The checked walk yields py-lmdb's own cursor order, on one-leaf, multi-leaf and overflow databases.
    import lmdb

    for n in (1, 200):
        _lmdb(work / f"db{n}", n)
        env = lmdb.open(str(work / f"db{n}"), readonly=True, lock=False)
        with env.begin() as txn:
            expected = [(bytes(k), bytes(v)) for k, v in txn.cursor()]
        env.close()
        assert _reads_all(work / f"db{n}") == expected
    reader = dbs.open_reader(str(work / "db200"), "lmdb", "layer")
    assert len(reader.pages.leaves) > 5  # several leaves: the lazy per-leaf check is exercised
    it = reader.cycle()
    assert [next(it)[0] for _ in range(450)] == [f"{i % 200:08d}".encode() for i in range(450)]
    reader.close()
    for golden in ("train_32", "val_encoded_png"):  # databases written by the original Caffe
        path = Path(__file__).parent.parent.parent / "shared" / "caffe-golden" / "lmdb" / golden
        if path.exists():
            assert len(_reads_all(path)) in (40, 160)


@pytest.mark.parametrize("what, poke, message", [
    ("leaf flags say branch", lambda leaf: (leaf + 10, struct.pack("<H", 1)), "should be a leaf page"),
    ("leaf page number", lambda leaf: (leaf, struct.pack("<Q", 77)), "should be a leaf page"),
    ("leaf lower bound", lambda leaf: (leaf + 12, struct.pack("<H", 9000)), "corrupt bounds"),
    ("leaf node offset", lambda leaf: (leaf + 16, struct.pack("<H", 4095)), "node offset 4095"),
])
def test_damaged_leaf_page_is_one_line_in_a_child(work, what, poke, message):
    # Without the check liblmdb dies here (IS_LEAF assertion: SIGABRT; wild offsets: SIGSEGV/SIGBUS).
    _lmdb(work / "db", 200)
    reader = dbs.open_reader(str(work / "db"), "lmdb", "layer")
    leaf = reader.pages.leaves[3] * reader.pages.psize
    reader.close()
    _poke(work / "db", *poke(leaf))
    done = _cli("compute-mean", "db", "m.binaryproto", cwd=work)
    assert done.returncode == 1, (what, done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr
    (line,) = [x for x in done.stderr.splitlines() if ": error: " in x]
    assert "LMDB database db is damaged: page" in line and message in line, line
    assert not (work / "m.binaryproto").exists()


def test_damaged_branch_page_is_refused_at_open(work):
    _lmdb(work / "db", 200)
    reader = dbs.open_reader(str(work / "db"), "lmdb", "layer")
    pages = reader.pages
    assert pages.depth == 2
    # The root is the branch page: point its first child outside the file.
    root = pages.root
    reader.close()
    base = root * 4096
    raw = (work / "db" / "data.mdb").read_bytes()
    (first,) = struct.unpack_from("<H", raw, base + 16)
    _poke(work / "db", base + first, struct.pack("<HH", 0xFFFF, 0x7FFF))
    with pytest.raises(DamagedDataError, match="lies outside the database"):
        dbs.open_reader(str(work / "db"), "lmdb", "layer")


# Reads each database given in its own fork of one single-threaded process; prints exit-N or signal-N.
_READ_EACH_IN_A_FORK = """
import os, sys
from caffecompat.data import db
from caffecompat.errors import CaffeCompatError
for path in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        os.close(2)
        try:
            reader = db.open_reader(path, "lmdb", "layer")
            list(reader.records())
            os._exit(0)
        except CaffeCompatError:
            os._exit(1)
        except BaseException:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    print(f"signal-{os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit-{os.WEXITSTATUS(status)}")
"""


def test_random_page_header_damage_never_kills(work):
    # Random bytes written over the headers and node arrays of the tree's pages: each read is a record
    # list or one DamagedDataError, in a child so that a miss would show as a signal, not kill pytest.
    _lmdb(work / "src", 300)
    raw = (work / "src" / "data.mdb").read_bytes()
    tree = [p for p in range(2, len(raw) // 4096) if struct.unpack_from("<H", raw, p * 4096 + 10)[0] in (1, 2)]
    r = random.Random(5)
    cases = []
    for case in range(40):
        dst = work / f"c{case}"
        shutil.copytree(work / "src", dst)
        page = r.choice(tree) * 4096
        buf = bytearray(raw[page:page + 64])
        for _ in range(r.randint(1, 6)):
            buf[r.randrange(64)] = r.randrange(256)
        _poke(dst, page, bytes(buf))
        cases.append(str(dst))
    done = subprocess.run([sys.executable, "-c", _READ_EACH_IN_A_FORK, *cases], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    outcomes: dict[str, int] = {}
    for key in done.stdout.split():
        outcomes[key] = outcomes.get(key, 0) + 1
    assert set(outcomes) <= {"exit-0", "exit-1"}, outcomes
    assert outcomes.get("exit-1", 0) > 10, outcomes


def test_train_with_a_damaged_page_snapshots_and_stops(work):
    _lmdb(work / "db", 200)
    reader = dbs.open_reader(str(work / "db"), "lmdb", "layer")
    leaf = reader.pages.leaves[6] * reader.pages.psize
    reader.close()
    _poke(work / "db", leaf + 10, struct.pack("<H", 1))  # a leaf whose header says branch
    solver = (work / "solver.prototxt").read_text().replace("max_iter: 2", "max_iter: 200") \
        .replace("snapshot: 2", "snapshot: 1000").replace("test_interval: 2", "test_interval: 1000")
    (work / "solver.prototxt").write_text(solver)
    done = _cli("train", "-solver", "solver.prototxt", cwd=work)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    (line,) = [x for x in done.stderr.splitlines() if ": error: " in x]
    assert "LMDB database" in line and "db is damaged" in line
    snaps = sorted(p.name for p in (work / "snap").iterdir() if p.suffix == ".solverstate")
    assert len(snaps) == 1 and snaps[0] != "s_iter_0.solverstate", snaps
    iteration = int(snaps[0].split("_iter_")[1].split(".")[0])
    assert 10 <= iteration < 40  # leaf 6 holds records ~96..112; 4 records an iteration
    assert f"Snapshotting to binary proto file snap/s_iter_{iteration}.caffemodel" in done.stderr


# --- escaping ---------------------------------------------------------------------------


def test_printable_escapes_terminal_controls():
    assert printable("conv1/3x3") == "conv1/3x3"
    assert printable("a\x1b]0;owned\x07b") == "a\\x1b]0;owned\\x07b"
    assert printable(b"key\r\x1b[2J") == "key\\r\\x1b[2J"
    assert printable(b"caf\xe9") == "caf\\xe9"
    assert printable("x\ny", keep_newlines=True) == "x\ny"
    assert printable(Path("d\x1b")) == "d\\x1b"


# --- labels outside the classes ----------------------------------------------------------


@pytest.mark.parametrize("label", [4, -1, 1 << 30])
def test_train_and_test_refuse_labels_outside_the_classes(work, capsys, label):
    # The fuzz net classifies into 4 classes (ip2 num_output: 4); labels 0..3 are valid.
    _lmdb(work / "db", 24, labels=[0, 1, 2, 3, 1, label])
    assert main(["train", "-solver", "solver.prototxt"]) == 1
    line = _error_line(capsys)
    assert f"layer 'loss' (SoftmaxWithLoss): label {label:g} at item 1 of bottom 'label' " \
           "(db record '00000005') is outside [0, 4)" in line, line
    assert main(["test", "-model", "net.prototxt", "-weights", "weights.caffemodel", "-iterations", "2"]) == 1
    line = _error_line(capsys)
    # TEST batches are 3: record 5 is item 2 of the second; Accuracy comes first in the net.
    assert "layer 'accuracy' (Accuracy): label" in line and "item 2" in line and "record '00000005'" in line


def test_valid_labels_and_ignore_label_pass(work, capsys):
    _lmdb(work / "db", 24, labels=[0, 1, 2, 3])
    assert main(["train", "-solver", "solver.prototxt"]) == 0
    net = (work / "net.prototxt").read_text().replace(
        'bottom: "label" top: "loss" }', 'bottom: "label" top: "loss" loss_param { ignore_label: 7 } }').replace(
        'top: "accuracy" include', 'top: "accuracy" accuracy_param { ignore_label: 7 } include')
    (work / "net.prototxt").write_text(net)
    _lmdb(work / "db", 24, labels=[0, 1, 7, 3])
    assert main(["train", "-solver", "solver.prototxt"]) == 0
    assert main(["test", "-model", "net.prototxt", "-weights", "weights.caffemodel", "-iterations", "2"]) == 0
    capsys.readouterr()


DEPLOY_WITH_LOSS = """name: "L"
layer { name: "x" type: "Input" top: "x" top: "y" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "y" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "x" bottom: "y" top: "acc" }
"""


@pytest.mark.parametrize("labels, message", [
    ([0, 2.5], "label 2.5 at item 1 of bottom 'y' is not an integer"),
    ([3, 0], "label 3 at item 0 of bottom 'y' is outside [0, 3)"),
    ([1e9, 0], "label 1e+09 at item 0 of bottom 'y' is outside [0, 3)"),
    ([float("nan"), 0], "label nan at item 0"),
])
def test_pycaffe_forward_refuses_bad_labels(tmp_path, labels, message):
    import caffecompat as caffe

    (tmp_path / "n.prototxt").write_text(DEPLOY_WITH_LOSS)
    net = caffe.Net(str(tmp_path / "n.prototxt"), caffe.TEST)
    net.blobs["x"].data[...] = [[1, 2, 3], [3, 2, 1]]
    net.blobs["y"].data[...] = [2, 0]
    out = net.forward()
    # A hand-computed case: -log softmax at the labels, averaged; both items scored right.
    logp = np.log(np.exp([3, 3]) / np.exp([1, 2, 3]).sum())
    assert np.isclose(out["loss"], -logp.mean(), rtol=1e-5) and out["acc"] == 1
    net.blobs["y"].data[...] = labels
    with pytest.raises(CaffeCompatError, match=re.escape("layer 'loss' (SoftmaxWithLoss): " + message)):
        net.forward()


def test_sigmoid_cross_entropy_targets_are_not_labels(tmp_path):
    import caffecompat as caffe

    (tmp_path / "n.prototxt").write_text("""name: "S"
layer { name: "x" type: "Input" top: "x" top: "t" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 3 } } }
layer { name: "loss" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t" top: "loss" }
""")
    net = caffe.Net(str(tmp_path / "n.prototxt"), caffe.TEST)
    net.blobs["t"].data[...] = 0.25  # targets in [0, 1], not class indices
    net.forward()


# --- blob shapes ---------------------------------------------------------------------------


@pytest.mark.parametrize("dims, values, message", [
    ([-1, -8192], 8192, "has a negative dimension"),
    ([1] * 65, 1, "has 65 axes; Caffe's blobs have at most 32"),
    ([1] * 33, 1, "has 33 axes"),
    ([1 << 32, 1 << 32], 0, "beyond Caffe's limit of 2147483647"),
    ([1 << 31, 1 << 31, 1 << 2], 0, "beyond Caffe's limit"),
])
def test_impossible_blob_shapes_are_one_line(work, capsys, dims, values, message):
    from caffecompat.proto import caffe_pb2

    net = caffe_pb2.NetParameter.FromString((work / "weights.caffemodel").read_bytes())
    blob = net.layer[[lp.name for lp in net.layer].index("ip1")].blobs[0]
    blob.shape.dim[:] = dims
    del blob.data[:]
    blob.data.extend([0.5] * values)
    (work / "bad.caffemodel").write_bytes(net.SerializeToString())
    assert main(["test", "-model", "net.prototxt", "-weights", "bad.caffemodel", "-iterations", "1"]) == 1
    line = _error_line(capsys)
    assert "bad.caffemodel" in line and message in line, line
    assert main(["convert", "deploy.prototxt", "bad.caffemodel", "out.onnx"]) == 1
    assert message in _error_line(capsys)
    import caffecompat as caffe

    with pytest.raises(CaffeCompatError, match=re.escape(message)):
        caffe.Net("deploy.prototxt", caffe.TEST, weights="bad.caffemodel")
    # A mean file with the same shape.
    mean = caffe_pb2.BlobProto()
    mean.shape.dim[:] = dims
    mean.data.extend([0.5] * values)
    (work / "mean.binaryproto").write_bytes(mean.SerializeToString())
    assert main(["test", "-model", "net.prototxt", "-weights", "weights.caffemodel", "-iterations", "1"]) == 1
    line = _error_line(capsys)
    assert "mean.binaryproto" in line and message in line, line
    with pytest.raises(CaffeCompatError, match=re.escape(message)):
        caffe.io.blobproto_to_array(mean)


# --- other tracebacks ------------------------------------------------------------------------


def test_group_zero_is_refused(tmp_path, capsys):
    (tmp_path / "g.prototxt").write_text("""name: "g"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 4 dim: 5 dim: 5 } } }
layer { name: "c" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: 4 kernel_size: 3 group: 0 } }
""")
    assert main(["time", "-model", str(tmp_path / "g.prototxt"), "-iterations", "1"]) == 1
    assert "layer 'c' (Convolution): convolution_param.group is 0; it must be at least 1" in _error_line(capsys)


def test_lmdb_paths_with_non_utf8_bytes(work, capsys):
    # convert-lmdb writes it, compute-mean and train read it; names are printed escaped.
    import cv2

    if sys.platform == "darwin":
        pytest.skip("macOS file systems refuse names that are not UTF-8")
    (work / "img").mkdir()
    for i in range(4):
        cv2.imwrite(str(work / "img" / f"{i}.png"), np.full((8, 8, 3), 40 * i, np.uint8))
    (work / "list.txt").write_text("".join(f"{i}.png {i}\n" for i in range(4)))
    name = os.fsdecode(b"db\xff")
    assert main(["convert-lmdb", "img/", "list.txt", name]) == 0
    err = capsys.readouterr().err
    assert "Opened lmdb db\\xff" in err and "\udcff" not in err
    assert sorted(os.listdir(b".")).count(b"db\xff") == 1
    assert not [n for n in os.listdir(b".") if b"caffecompat-tmp" in n]
    assert main(["compute-mean", name, "m.binaryproto"]) == 0
    from caffecompat.formats.blob import read_binaryproto

    # Hand-computed: the four images are 0, 40, 80 and 120 everywhere.
    assert np.allclose(read_binaryproto("m.binaryproto"), 60)
    capsys.readouterr()


@pytest.mark.parametrize("shape, message", [
    ("1,3,18446744073709551617,6", "beyond Caffe's limit of 2147483647"),
    (",".join(["1"] * 40), "has 40 axes"),
])
def test_oversized_input_shape_is_one_line(work, capsys, shape, message):
    assert main(["convert", "-input_shape", shape, "deploy.prototxt", "weights.caffemodel", "o.onnx"]) == 1
    line = _error_line(capsys)
    assert f"-input_shape {shape}" in line and message in line


# --- unbounded reads ---------------------------------------------------------------------------


def _png_claiming(width: int, height: int) -> bytes:
    """A small real PNG whose IHDR is rewritten to claim width x height (a decompression bomb's header)."""
    import cv2

    data = bytearray(cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes())
    struct.pack_into(">II", data, 16, width, height)
    return bytes(data)


@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_only_regular_files_are_read(work, capsys, kind):
    target = {"device": Path("/dev/zero"), "fifo": work / "pipe", "directory": work / "snap"}[kind]
    if kind == "fifo":
        os.mkfifo(target)
    expect = {"fifo": "is a FIFO (named pipe)", "device": "is a device", "directory": "is a directory"}[kind]
    # A net, weights, a mean, an image list and an image: each refused in one line, none read or waited on.
    assert main(["test", "-model", str(target), "-weights", "weights.caffemodel"]) == 1
    assert expect in _error_line(capsys)
    assert main(["test", "-model", "net.prototxt", "-weights", str(target)]) == 1
    assert expect in _error_line(capsys)
    (work / "list.txt").write_text("a.png 0\n")
    (work / "img").mkdir()
    os.symlink(target, work / "img" / "a.png")
    assert main(["convert-lmdb", "img/", "list.txt", "out_db"]) in (0, 1)
    err = capsys.readouterr().err
    assert "Traceback" not in err and expect in err, err[-2000:]
    assert main(["convert-lmdb", "img/", str(target), "out_db2"]) == 1
    assert (expect if kind != "directory" else "is a folder, not a list file") in _error_line(capsys)
    if kind == "directory":
        return  # classify reads a folder as a folder of images
    # classify skips an unreadable image with an error line, as it does for any other.
    main(["classify", "-model", "deploy.prototxt", "-weights", "weights.caffemodel", str(work / "img" / "a.png")])
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"a.png: {expect}, expected an image file" in err


def test_images_beyond_the_pixel_budget_are_refused_before_decoding(work, capsys, monkeypatch):
    import tracemalloc

    from caffecompat.data import image_io

    (work / "img").mkdir()
    (work / "img" / "bomb.png").write_bytes(_png_claiming(30000, 30000))
    (work / "list.txt").write_text("bomb.png 0\n")
    tracemalloc.start()
    main(["classify", "-model", "deploy.prototxt", "-weights", "weights.caffemodel", str(work / "img" / "bomb.png")])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    line = capsys.readouterr().err  # classify skips the image with an error line
    assert "Traceback" not in line
    assert "bomb.png: image of 30000 x 30000 = 900000000 pixels is larger than the limit of 89478485" in line
    assert peak < 100 << 20  # refused from its header: nothing near 2.7 GB was allocated
    # The budget is a flag and an environment variable: a 20 x 20 image passes 400 and fails 399.
    import cv2

    cv2.imwrite(str(work / "img" / "small.png"), np.full((20, 20, 3), 7, np.uint8))
    (work / "list.txt").write_text("small.png 0\n")
    # convert-lmdb skips an image it cannot read, as Caffe's convert_imageset does, saying why.
    main(["convert-lmdb", "-max_image_pixels", "399", "img/", "list.txt", "db399"])
    assert "20 x 20 = 400 pixels is larger than the limit of 399" in capsys.readouterr().err
    monkeypatch.setenv(image_io.MAX_PIXELS_ENV, "399")
    main(["convert-lmdb", "img/", "list.txt", "db399b"])
    assert "limit of 399" in capsys.readouterr().err
    assert main(["convert-lmdb", "-max_image_pixels", "400", "img/", "list.txt", "db400"]) == 0
    assert "larger than the limit" not in capsys.readouterr().err
    assert len(_reads_all(work / "db400")) == 1
    # An encoded Datum record claiming 30000 x 30000, read by a Data layer in train.
    from caffecompat.data import datum
    from caffecompat.data.lmdb_writer import LmdbWriter

    monkeypatch.delenv(image_io.MAX_PIXELS_ENV)
    shutil.rmtree(work / "db")
    writer = LmdbWriter(str(work / "db"))
    d = datum.from_image(np.zeros((8, 8, 3), np.uint8), 0)
    d.encoded, d.data = True, _png_claiming(30000, 30000)
    writer.put(b"00000000", d.SerializeToString())
    writer.finish()
    assert main(["train", "-solver", "solver.prototxt"]) == 1
    line = _error_line(capsys)
    assert "record '00000000'" in line and "30000 x 30000" in line, line


def test_image_header_sizes_match_opencv():
    # An independent reference: OpenCV's decoded shape for each format the header reader knows.
    import cv2

    from caffecompat.data.image_io import image_size

    img = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for ext, params in [(".png", []), (".jpg", []), (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]), (".bmp", []),
                        (".tiff", []), (".webp", []), (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]), (".ppm", []),
                        (".pgm", [])]:
        buf = cv2.imencode(ext, img[..., 0] if ext == ".pgm" else img, params)[1].tobytes()
        h, w = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_UNCHANGED).shape[:2]
        assert image_size(buf) == (w, h), ext
    assert image_size(b"not an image") is None
    assert image_size(b"\x89PNG\r\n\x1a\n") is None  # too short to say


# --- messages ------------------------------------------------------------------------------


def test_extract_features_npy_beyond_free_space_is_refused(work, capsys):
    # 2e9 batches of ip2 (3 x 4 floats): 96 GB, above a small disk's free space; refused before any file.
    import shutil as sh

    free = sh.disk_usage(work).free
    batches = free // (3 * 4 * 4) + 10
    assert main(["extract-features", "weights.caffemodel", "net.prototxt", "ip2", "feat", str(batches), "npy"]) == 1
    line = _error_line(capsys)
    assert f"npy output in {work}: {batches} batches of ip2 need" in line and "free" in line, line
    assert not [p for p in os.listdir(work) if p.startswith("feat") or "caffecompat-tmp" in p]
    # A size that fits is written.
    assert main(["extract-features", "weights.caffemodel", "net.prototxt", "ip2", "feat", "2", "npy"]) == 0
    assert np.load("feat").shape == (6, 4) if os.path.exists("feat") else np.load("feat.npy").shape == (6, 4)
    capsys.readouterr()


def test_in_place_message_names_the_top_index(tmp_path, capsys):
    (tmp_path / "n.prototxt").write_text("""name: "n"
layer { name: "x" type: "Input" top: "x" top: "y" input_param { shape { dim: 1 dim: 2 } shape { dim: 1 dim: 2 } } }
layer { name: "r" type: "ReLU" bottom: "y" top: "x" }
""")
    assert main(["time", "-model", str(tmp_path / "n.prototxt"), "-iterations", "1"]) == 1
    assert "not in place (top #0 must equal bottom #0)" in _error_line(capsys)


def test_solver_naming_a_non_utf8_path_is_not_called_binary(tmp_path, capsys):
    (tmp_path / "s.prototxt").write_bytes(b'base_lr: 0.1\nnet: "/data/caf\xe9/net.prototxt"\n')
    assert main(["train", "-solver", str(tmp_path / "s.prototxt")]) == 1
    line = _error_line(capsys)
    assert "not supported: bytes that are not UTF-8 in a solver prototxt" in line and "s.prototxt:2" in line
    assert "caf\\xe9" in line and "binary" not in line
    (tmp_path / "b.prototxt").write_bytes(b"\x08\x00\xff\xfe")
    assert main(["train", "-solver", str(tmp_path / "b.prototxt")]) == 1
    assert "is not text (is it a binary file?)" in _error_line(capsys)


def test_terminal_escapes_in_record_keys_are_printed_escaped(work, capsys):
    from caffecompat.data import datum
    from caffecompat.data.lmdb_writer import LmdbWriter

    shutil.rmtree(work / "db")
    writer = LmdbWriter(str(work / "db"))
    d = datum.from_image(np.zeros((8, 8, 3), np.uint8), 9)  # label 9 of 4 classes: the error names the key
    writer.put(b"\x1b]0;owned\x07\x1b[2J", d.SerializeToString())
    writer.finish()
    assert main(["train", "-solver", "solver.prototxt"]) == 1
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err
    assert "record '\\x1b]0;owned\\x07\\x1b[2J'" in err


# --- big prototxts -------------------------------------------------------------------------


def _prototxts() -> list[Path]:
    repo = Path(__file__).resolve().parent.parent
    found = sorted(repo.glob("caffecompat/examples/**/*.prototxt")) + sorted(repo.glob("examples/**/*.prototxt"))
    shared = repo.parent / "shared"
    if shared.exists():
        found += sorted(shared.glob("**/*.prototxt"))
    return found


def test_fast_text_reader_equals_text_format():
    # The reference is protobuf's own text_format: whatever the fast reader accepts it reads identically,
    # on every prototxt at hand and on damaged variants of them; the rest falls back to text_format.
    from google.protobuf import text_format

    from caffecompat.formats import textproto
    from caffecompat.proto import caffe_pb2

    texts = [p.read_text(errors="replace") for p in _prototxts()] + [fuzz.NET, fuzz.SOLVER, fuzz.DEPLOY]
    real = len(texts)
    hostile = ['name: "a" "b"', "dim: 1e3", "dim: 010", "dim: -1", "dim: 0x10", "lr_mult: inf", "lr_mult: -inf",
               "lr_mult: 1.5f", "phase: 1", "phase: 7", "bias_term: True", 'name: "\\x41\\303\\251"', "name: 'q'",
               "dim: 99999999999", "num_output: 10bias_term: true", 'name: "a";', "dim: [1, 2]", "layer: { }",
               "layer { top: 'x' } layer { }", "force_backward: t", "debug_info: 2", "name: 'x' # c\n"]
    r = random.Random(3)
    for _ in range(300):
        t = fuzz.mutate_text(r.choice(texts[-3:]), r)
        lines = t.splitlines()
        lines.insert(r.randrange(len(lines) + 1), r.choice(hostile))
        texts.append("\n".join(lines))
    texts += hostile
    fell_back = []
    for k, text in enumerate(texts):
        for cls in (caffe_pb2.NetParameter, caffe_pb2.SolverParameter):
            msg = cls()
            if not textproto.parse_fast(text, msg):
                if k < real:
                    try:
                        text_format.Parse(text, cls())
                        fell_back.append(k)
                    except text_format.ParseError:
                        pass
                continue
            ref = cls()
            text_format.Parse(text, ref)  # raises if the fast reader accepted what protobuf refuses
            assert msg == ref, text[:500]
    assert not fell_back, [texts[k][:200] for k in fell_back]  # every real prototxt takes the fast path


def _chain(n: int) -> str:
    return 'name: "chain"\nlayer { name: "data" type: "Input" top: "r" input_param { shape { dim: 1 dim: 4 } } }\n' \
        + "".join(f'layer {{ name: "relu{i}" type: "ReLU" bottom: "r" top: "r" }}\n' for i in range(1, n + 1))


def test_reading_and_building_a_net_grows_linearly(tmp_path):
    import time

    from caffecompat.formats.net import read_net_prototxt
    from caffecompat.net import spec as netspec
    from caffecompat.proto import caffe_pb2

    def cost(n: int) -> float:
        (tmp_path / f"c{n}.prototxt").write_text(_chain(n))
        best = math.inf
        for _ in range(2):
            t0 = time.perf_counter()
            spec = netspec.build(read_net_prototxt(str(tmp_path / f"c{n}.prototxt")), caffe_pb2.TEST)
            best = min(best, time.perf_counter() - t0)
        assert len(spec.layers) == n + 1
        return best

    small, big = cost(2500), cost(20000)
    assert big / small < 8 * 2.5, (small, big)  # 8x the layers: linear is 8x; quadratic would be 64x
    assert big < 20, big  # about 1.5 s on a quiet core
