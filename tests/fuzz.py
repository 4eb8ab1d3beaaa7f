"""Fuzzing caffecompat's commands with damaged inputs: no traceback, no signal death, no hang, bounded memory.

Small valid assets (an LMDB, its mean, a train/test net, a deploy net, a
caffemodel, a solver and a solverstate) are made in a folder; each case damages
one of them (truncation, byte flips, a mutated field, a line dropped or
repeated) and runs the commands that read it. LMDB damage is a truncated,
emptied or missing data.mdb, damaged records, flipped bits inside the
stored values, or random bytes over the page headers and node arrays of its
B-tree (which liblmdb trusts; caffecompat checks them first). Other cases put
a device (/dev/zero), a FIFO or a folder where a file is expected, or images
whose headers claim 30000 x 30000 pixels (in a list, a folder and an LMDB
record). Each case runs in a child forked
from one process that has imported everything once, with a memory rlimit;
the case fails when the child

- prints a Python traceback or exits with a status other than 0 or 1,
- dies from a signal (SIGBUS, SIGSEGV, SIGABRT, ...),
- runs longer than the time limit (a hang), or
- peaks above the memory bound.

tests/test_fuzz.py runs a bounded, seeded number of cases in CI. A developer
runs the long version from the repository root, e.g.

    python -m tests.fuzz --cases 2000 --seed 7
    python -m tests.fuzz --minutes 30 --seed 1 --keep /tmp/fuzz-failures

which prints each failing case (its seed, command and what went wrong) and
exits 1 when there was one.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import re
import resource
import select
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Memory a case may use: the rlimit set in the child, and the peak RSS above which a case fails.
DATA_LIMIT = 3 << 30
RSS_BOUND = DATA_LIMIT + (512 << 20)
CASE_SECONDS = 60.0

NET = """name: "FuzzNet"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { scale: 0.00390625 mean_file: "mean.binaryproto" mirror: true crop_size: 6 }
  data_param { source: "db" batch_size: 4 backend: LMDB } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { scale: 0.00390625 mean_file: "mean.binaryproto" crop_size: 6 }
  data_param { source: "db" batch_size: 3 backend: LMDB } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  param { lr_mult: 1 } param { lr_mult: 2 }
  inner_product_param { num_output: 8 weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy" include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""

DEPLOY = """name: "FuzzNet"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 6 dim: 6 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  inner_product_param { num_output: 8 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" inner_product_param { num_output: 4 } }
layer { name: "prob" type: "Softmax" bottom: "ip2" top: "prob" }
"""

SOLVER = """net: "net.prototxt"
test_iter: 1
test_interval: 2
base_lr: 0.01
momentum: 0.9
weight_decay: 0.0005
lr_policy: "step"
gamma: 0.5
stepsize: 2
display: 1
max_iter: 2
snapshot: 2
snapshot_prefix: "snap/s"
random_seed: 1
"""

RECORDS = 12


def make_assets(folder: Path) -> None:
    """Write the valid assets into `folder` (commands run with it as the working directory)."""
    from caffecompat.cli import main
    from caffecompat.data import datum
    from caffecompat.data.lmdb_writer import LmdbWriter

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    writer = LmdbWriter(str(folder / "db"))
    for i in range(RECORDS):
        img = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        writer.put(f"{i:08d}".encode(), datum.from_image(img, i % 4).SerializeToString())
    writer.finish()
    (folder / "net.prototxt").write_text(NET)
    (folder / "deploy.prototxt").write_text(DEPLOY)
    (folder / "solver.prototxt").write_text(SOLVER)
    (folder / "snap").mkdir(exist_ok=True)
    with _cwd(folder), _quiet():
        assert main(["compute-mean", "db", "mean.binaryproto"]) == 0
        assert main(["train", "-solver", "solver.prototxt"]) == 0
    shutil.copy(folder / "snap" / "s_iter_2.caffemodel", folder / "weights.caffemodel")
    shutil.copy(folder / "snap" / "s_iter_2.solverstate", folder / "state.solverstate")
    # The solverstate names its caffemodel by path: keep that one where it says.
    for p in (folder / "snap").iterdir():
        if p.name != "s_iter_2.caffemodel":
            p.unlink()


@contextlib.contextmanager
def _cwd(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


@contextlib.contextmanager
def _quiet():
    from caffecompat import glog

    sink = io.StringIO()
    glog.set_stream(sink)
    try:
        with contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink):
            yield
    finally:
        glog.set_stream(None)


# --- mutations ----------------------------------------------------------------

_NUMBERS = ["0", "-1", "1", "2", "3", "7", "-7", "100000", "2147483647", "-2147483648", "4294967296",
            "1e30", "-1e30", "nan", "inf", "-inf", "0.5", "1e-45", "99999999999999999999"]


def mutate_text(text: str, r: random.Random) -> str:
    """A damaged prototxt: a number or string replaced, a line dropped or repeated, a cut, a flipped byte."""
    kind = r.choice(["number", "number", "number", "string", "drop", "repeat", "truncate", "flip", "field"])
    lines = text.splitlines(keepends=True)
    if kind == "number":
        spots = [m for m in re.finditer(r"(?<=: )-?[0-9.]+(e-?[0-9]+)?", text)]
        if spots:
            m = r.choice(spots)
            return text[:m.start()] + r.choice(_NUMBERS) + text[m.end():]
    if kind == "string":
        spots = [m for m in re.finditer(r'"[^"]*"', text)]
        if spots:
            m = r.choice(spots)
            value = r.choice(['""', '"x"', '"../../etc/passwd"', '"/dev/zero"', '"db"', '"net.prototxt"',
                              '"weights.caffemodel"', '"mean.binaryproto"', '"Convolution"', '"Data"',
                              '"Python"', '"snap"', '"."', '"\\x00"', '"' + "a" * 300 + '"'])
            return text[:m.start()] + value + text[m.end():]
    if kind == "drop" and lines:
        del lines[r.randrange(len(lines))]
        return "".join(lines)
    if kind == "repeat" and lines:
        i = r.randrange(len(lines))
        lines.insert(i, lines[i])
        return "".join(lines)
    if kind == "field" and lines:
        extra = r.choice(["force_backward: true", "layer { }", 'layer { name: "x" type: "Split" }',
                          "state { phase: TEST }", 'input: "data"', "input_dim: 1",
                          'layer { name: "s" type: "Silence" bottom: "label" }', "debug_info: true",
                          'layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1" }',
                          "iter_size: 3", "clip_gradients: 1", "average_loss: 3", 'type: "Adam"',
                          'lr_policy: "poly"', "power: 2", "snapshot_diff: true", "test_initialization: false",
                          'test_state { stage: "x" }', 'weights: "weights.caffemodel"'])
        lines.insert(r.randrange(len(lines) + 1), extra + "\n")
        return "".join(lines)
    data = bytearray(text.encode())
    if kind == "truncate" or not data:
        return data[: r.randrange(len(data) + 1)].decode("utf-8", "replace")
    for _ in range(r.randint(1, 4)):
        data[r.randrange(len(data))] = r.randrange(256)
    return data.decode("latin-1")


def mutate_binary(data: bytes, r: random.Random) -> bytes:
    """A damaged binary file: cut short, flipped bytes, or a run of bytes zeroed or set to 0xff."""
    buf = bytearray(data)
    kind = r.choice(["truncate", "flip", "flip", "run", "head"])
    if kind == "truncate":
        return bytes(buf[: r.randrange(len(buf) + 1)])
    if kind == "head":
        # Damage near the start, where lengths and tags live.
        for _ in range(r.randint(1, 3)):
            buf[r.randrange(min(64, len(buf)))] = r.randrange(256)
        return bytes(buf)
    if kind == "run":
        start = r.randrange(len(buf))
        end = min(len(buf), start + r.randint(1, 64))
        buf[start:end] = bytes([r.choice([0, 255])]) * (end - start)
        return bytes(buf)
    for _ in range(r.randint(1, 8)):
        buf[r.randrange(len(buf))] ^= 1 << r.randrange(8)
    return bytes(buf)


def mutate_blob_fields(data: bytes, r: random.Random, cls_name: str) -> bytes:
    """A well-formed message with a blob's shape or data changed (a field-level mutation)."""
    from caffecompat.proto import caffe_pb2

    msg = getattr(caffe_pb2, cls_name)()
    msg.ParseFromString(data)
    blobs = []
    if cls_name == "NetParameter":
        blobs = [b for lp in msg.layer for b in lp.blobs]
    elif cls_name == "SolverState":
        blobs = list(msg.history)
    else:
        blobs = [msg]
    if not blobs:
        return data
    blob = r.choice(blobs)
    kind = r.choice(["dims", "dims", "data", "legacy", "iter"])
    if kind == "dims" and blob.HasField("shape") and len(blob.shape.dim):
        i = r.randrange(len(blob.shape.dim))
        blob.shape.dim[i] = r.choice([0, -1, 1, 3, 1 << 31, 1 << 40, -(1 << 62)])
    elif kind == "dims":
        blob.num = r.choice([0, -1, 2, 1 << 30])
    elif kind == "data":
        del blob.data[r.randrange(len(blob.data) + 1):]
        if r.random() < 0.5:
            blob.data.extend([float("nan"), 1e38])
    elif kind == "legacy":
        blob.ClearField("shape")
        blob.num, blob.channels, blob.height, blob.width = (r.choice([0, 1, 2, 3, 8, -1]) for _ in range(4))
    elif cls_name == "SolverState":
        msg.iter = r.choice([-1, 0, 2, 1 << 30])
        msg.current_step = r.choice([-1, 0, 1 << 30])
        if r.random() < 0.3:
            msg.learned_net = r.choice(["", "nope.caffemodel", "db", "snap"])
    return msg.SerializeToString()


def damage_lmdb(folder: Path, r: random.Random) -> str:
    """Damage db/ in place; returns what was done."""
    from caffecompat.data import datum
    from caffecompat.data.lmdb_writer import LmdbWriter

    data = folder / "db" / "data.mdb"
    kind = r.choice(["truncate", "truncate", "records", "records", "missing", "empty", "flip_values", "pages",
                     "pages", "pages"])
    if kind == "pages":
        return _damage_pages(folder, r)
    raw = data.read_bytes()
    if kind == "truncate":
        data.write_bytes(raw[: r.randrange(len(raw))])
    elif kind == "missing":
        data.unlink()
    elif kind == "empty":
        data.write_bytes(b"")
    elif kind == "flip_values":
        # Flipped bits inside the stored records. LMDB trusts its own page structures: a flipped node
        # offset sends liblmdb reading outside its map (SIGBUS or SIGSEGV, in Caffe too), so those
        # bytes are left alone; a truncated file is what the header check catches.
        import lmdb

        env = lmdb.open(str(folder / "db"), readonly=True, lock=False)
        with env.begin() as txn:
            values = [bytes(v) for _, v in txn.cursor()]
        env.close()
        spans = [(i, i + len(v)) for v in values if (i := raw.find(v)) >= 0]
        buf = bytearray(raw)
        for _ in range(r.randint(1, 8)):
            start, end = r.choice(spans)
            buf[r.randrange(start, end)] ^= 1 << r.randrange(8)
        data.write_bytes(bytes(buf))
    else:
        # Records with damaged Datum fields, in a database LMDB itself finds sound.
        shutil.rmtree(folder / "db")
        writer = LmdbWriter(str(folder / "db"))
        rng = np.random.default_rng(r.randrange(1 << 30))
        for i in range(RECORDS):
            d = datum.from_image(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8), i % 4)
            value = d.SerializeToString()
            if r.random() < 0.3:
                which = r.choice(["channels", "height", "width", "data", "bytes", "label", "encoded"])
                if which == "channels":
                    d.channels = r.choice([0, 1, 4, -1, 1 << 30])
                elif which == "height":
                    d.height = r.choice([0, 7, 9, -1, 1 << 30])
                elif which == "width":
                    d.width = r.choice([0, 1, 1 << 20])
                elif which == "data":
                    d.data = d.data[: r.randrange(len(d.data))]
                elif which == "label":
                    d.label = r.choice([-1, 4, 1 << 30])
                elif which == "encoded":
                    d.encoded = True
                value = d.SerializeToString()
                if which == "bytes":
                    value = mutate_binary(value, r)
            writer.put(f"{i:08d}".encode(), value)
        writer.finish()
    return f"lmdb {kind}"


def _damage_pages(folder: Path, r: random.Random) -> str:
    """Rebuild db/ with enough records for branch and leaf pages, then write random bytes over the
    header and node offsets of some of its tree pages."""
    import struct

    from caffecompat.data import datum
    from caffecompat.data.lmdb_writer import LmdbWriter

    shutil.rmtree(folder / "db")
    writer = LmdbWriter(str(folder / "db"))
    rng = np.random.default_rng(r.randrange(1 << 30))
    for i in range(r.choice([RECORDS, 150, 400])):
        d = datum.from_image(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8), i % 4)
        writer.put(f"{i:08d}".encode(), d.SerializeToString())
    writer.finish()
    data = folder / "db" / "data.mdb"
    buf = bytearray(data.read_bytes())
    tree = [p for p in range(2, len(buf) // 4096) if struct.unpack_from("<H", buf, p * 4096 + 10)[0] in (1, 2)]
    for _ in range(r.randint(1, 3)):
        page = r.choice(tree) * 4096
        for _ in range(r.randint(1, 6)):
            buf[page + r.randrange(r.choice([16, 64, 4096]))] = r.randrange(256)
    data.write_bytes(bytes(buf))
    return "lmdb pages"


def _png_claiming(width: int, height: int) -> bytes:
    import struct

    import cv2

    data = bytearray(cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes())
    struct.pack_into(">II", data, 16, width, height)
    return bytes(data)


def _jpeg_claiming(width: int, height: int) -> bytes:
    import struct

    import cv2

    data = bytearray(cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes())
    at = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, at + 5, height, width)
    return bytes(data)


def _not_a_file(path: Path, r: random.Random) -> str:
    """Replace `path` by a device, a FIFO or a folder; returns which."""
    kind = r.choice(["device", "fifo", "folder"])
    if path.exists() or path.is_symlink():
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    if kind == "device":
        path.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    return kind


def damage_images(folder: Path, r: random.Random) -> str:
    """An image folder and list with one hostile entry: a device, a FIFO, a folder or a bomb's header."""
    import cv2

    img = folder / "img"
    img.mkdir()
    for i in range(3):
        cv2.imwrite(str(img / f"{i}.png"), np.full((8, 8, 3), 60 * i, np.uint8))
    (folder / "list.txt").write_text("".join(f"{i}.png {i}\n" for i in range(4)))
    kind = r.choice(["bomb_png", "bomb_jpg", "special", "special_list"])
    if kind == "bomb_png":
        (img / "3.png").write_bytes(_png_claiming(30000, 30000))
    elif kind == "bomb_jpg":
        (img / "3.png").write_bytes(_jpeg_claiming(60000, 60000))
    elif kind == "special":
        kind = _not_a_file(img / "3.png", r)
    else:
        kind = "list " + _not_a_file(folder / "list.txt", r)
    return f"images {kind}"


def damage_datum_image(folder: Path, r: random.Random) -> str:
    """db/ with an encoded record whose header claims a huge image."""
    from caffecompat.data import datum
    from caffecompat.data.lmdb_writer import LmdbWriter

    shutil.rmtree(folder / "db")
    writer = LmdbWriter(str(folder / "db"))
    huge = r.randrange(RECORDS)
    for i in range(RECORDS):
        d = datum.from_image(np.zeros((8, 8, 3), np.uint8), i % 4)
        if i == huge:
            d.encoded = True
            d.data = _png_claiming(30000, 30000) if r.random() < 0.5 else _jpeg_claiming(50000, 50000)
        writer.put(f"{i:08d}".encode(), d.SerializeToString())
    writer.finish()
    return "lmdb huge encoded record"


# --- cases --------------------------------------------------------------------

TEST_CMD = ["test", "-model", "net.prototxt", "-weights", "weights.caffemodel", "-iterations", "2"]
TRAIN_CMD = ["train", "-solver", "solver.prototxt", "-iterations", "2"]
RESUME_CMD = ["train", "-solver", "solver.prototxt", "-snapshot", "state.solverstate", "-iterations", "3"]
TIME_CMD = ["time", "-model", "net.prototxt", "-iterations", "1"]
CONVERT_CMD = ["convert", "deploy.prototxt", "weights.caffemodel", "out/model.onnx"]
MEAN_CMD = ["compute-mean", "db", "out/mean.binaryproto"]


@dataclass
class Case:
    """One fuzz case: what was damaged, and the commands run on it."""

    seed: int
    target: str
    how: str = ""
    commands: list[list[str]] = field(default_factory=list)


def _clamp_solver(text: str) -> str:
    # A damaged solver may legitimately ask for hours of work (test_iter: 2147483647); keep the counts small.
    def clamp(m: re.Match) -> str:
        try:
            value = float(m.group(2))
        except ValueError:
            return m.group(0)
        return f"{m.group(1)}{int(min(value, 3))}" if value > 3 else m.group(0)

    return re.sub(r"^(\s*(?:test_iter|iter_size|max_iter):\s*)(\S+)", clamp, text, flags=re.M)


H5NET = """name: "H5Net"
layer { name: "d" type: "HDF5Data" top: "data" top: "label" hdf5_data_param { source: "h5list.txt" batch_size: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 2 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""
H5_DAMAGE = ["external link", "soft link", "dangling external link", "soft link loop", "external link loop",
             "external storage", "virtual", "bytes"]


def make_hdf5(folder: Path, r: random.Random) -> str:
    """An HDF5Data net whose listed .h5 points outside itself (links, external storage) or is damaged."""
    import h5py

    how = r.choice(H5_DAMAGE)
    (folder / "h5net.prototxt").write_text(H5NET)
    (folder / "h5list.txt").write_text("in.h5\n")
    data = np.arange(24, dtype=np.float32).reshape(4, 6)
    label = np.array([0, 1, 0, 1], np.float32)
    (folder / "raw.bin").write_bytes(data.tobytes())
    with h5py.File(folder / "other.h5", "w") as f:
        f["data"], f["label"] = data, label
    with h5py.File(folder / "in.h5", "w") as f:
        f["label"] = label
        if how == "external link":
            f["data"] = h5py.ExternalLink("other.h5", "/data")
        elif how == "soft link":
            f["real"] = data
            f["data"] = h5py.SoftLink("/real")
        elif how == "dangling external link":
            f["data"] = h5py.ExternalLink("missing.h5", "/data")
        elif how == "soft link loop":
            f["data"], f["loop"] = h5py.SoftLink("/loop"), h5py.SoftLink("/data")
        elif how == "external link loop":
            f["data"] = h5py.ExternalLink("in.h5", "/data")
        elif how == "external storage":
            f.create_dataset("data", shape=data.shape, dtype=np.float32, external=[("raw.bin", 0, data.nbytes)])
        elif how == "virtual":
            layout = h5py.VirtualLayout(shape=data.shape, dtype=np.float32)
            layout[:] = h5py.VirtualSource("other.h5", "data", shape=data.shape)
            f.create_virtual_dataset("data", layout)
        else:
            f["data"] = data
    if how == "bytes":
        (folder / "in.h5").write_bytes(mutate_binary((folder / "in.h5").read_bytes(), r))
    return how


def prepare(folder: Path, seed: int) -> Case:
    """Damage one asset of the valid copy in `folder` and say which commands to run."""
    r = random.Random(seed)
    target = r.choice(["net", "net", "solver", "solver", "deploy", "caffemodel", "caffemodel", "solverstate",
                       "binaryproto", "lmdb", "lmdb", "images", "not_a_file", "datum_image"])
    # One case in ten is an HDF5 file pointing outside itself (drawn apart, so other seeds keep their cases).
    if random.Random(f"hdf5-{seed}").random() < 0.1:
        target = "hdf5"
    case = Case(seed, target)
    (folder / "out").mkdir(exist_ok=True)
    if target == "hdf5":
        case.how = make_hdf5(folder, r)
        case.commands = [["time", "-model", "h5net.prototxt", "-iterations", "1"]]
    elif target == "net":
        text = mutate_text(NET, r)
        for _ in range(r.randint(0, 2)):
            text = mutate_text(text, r)
        (folder / "net.prototxt").write_text(text, errors="surrogateescape")
        case.commands = [TEST_CMD, r.choice([TIME_CMD, TRAIN_CMD])]
    elif target == "solver":
        text = mutate_text(SOLVER, r)
        for _ in range(r.randint(0, 2)):
            text = mutate_text(text, r)
        (folder / "solver.prototxt").write_text(_clamp_solver(text), errors="surrogateescape")
        case.commands = [r.choice([TRAIN_CMD, RESUME_CMD]), ["upgrade", "-solver", "solver.prototxt", "out/s.txt"]]
    elif target == "deploy":
        text = mutate_text(DEPLOY, r)
        (folder / "deploy.prototxt").write_text(text, errors="surrogateescape")
        case.commands = [CONVERT_CMD, ["upgrade", "deploy.prototxt", "out/d.prototxt"]]
    elif target == "caffemodel":
        data = (folder / "weights.caffemodel").read_bytes()
        data = mutate_blob_fields(data, r, "NetParameter") if r.random() < 0.4 else mutate_binary(data, r)
        (folder / "weights.caffemodel").write_bytes(data)
        case.commands = [TEST_CMD, CONVERT_CMD, ["upgrade", "-binary", "weights.caffemodel", "out/w.caffemodel"],
                         ["train", "-solver", "solver.prototxt", "-weights", "weights.caffemodel", "-iterations", "1"]]
    elif target == "solverstate":
        data = (folder / "state.solverstate").read_bytes()
        data = mutate_blob_fields(data, r, "SolverState") if r.random() < 0.5 else mutate_binary(data, r)
        (folder / "state.solverstate").write_bytes(data)
        case.commands = [RESUME_CMD]
    elif target == "binaryproto":
        data = (folder / "mean.binaryproto").read_bytes()
        data = mutate_blob_fields(data, r, "BlobProto") if r.random() < 0.5 else mutate_binary(data, r)
        (folder / "mean.binaryproto").write_bytes(data)
        case.commands = [TEST_CMD, TRAIN_CMD]
    elif target == "images":
        case.how = damage_images(folder, r)
        case.commands = [["convert-lmdb", "-resize_height", "8", "-resize_width", "8", "img/", "list.txt", "out/db"],
                         ["convert-lmdb", "img/", "out/db2"],
                         ["classify", "-model", "deploy.prototxt", "-weights", "weights.caffemodel", "img/3.png"]]
    elif target == "not_a_file":
        name = r.choice(["net.prototxt", "weights.caffemodel", "mean.binaryproto", "solver.prototxt",
                         "state.solverstate", "deploy.prototxt"])
        case.how = f"{name} {_not_a_file(folder / name, r)}"
        case.commands = [TEST_CMD, TRAIN_CMD, RESUME_CMD, CONVERT_CMD]
    elif target == "datum_image":
        case.how = damage_datum_image(folder, r)
        case.commands = [MEAN_CMD, TEST_CMD, TRAIN_CMD]
    else:
        case.how = damage_lmdb(folder, r)
        case.commands = [MEAN_CMD, TEST_CMD, TRAIN_CMD]
    return case


# --- running ------------------------------------------------------------------


@dataclass
class Outcome:
    """What one command did."""

    argv: list[str]
    status: int | None  # exit status, None when killed by a signal
    signal: int | None
    seconds: float
    peak_rss: int  # bytes
    stderr: str

    def problem(self) -> str | None:
        """Why this outcome is a failure, or None."""
        if self.signal is not None:
            if self.signal == signal.SIGKILL and self.seconds >= CASE_SECONDS:
                return f"hang: still running after {CASE_SECONDS:.0f} s"
            return f"killed by signal {signal.Signals(self.signal).name}"
        if "Traceback" in self.stderr:
            return "traceback"
        if self.status not in (0, 1):
            return f"exit status {self.status}"
        if self.status == 1 and not re.search(r"^caffecompat [\w-]+: error: .+$|^E\d{4} ", self.stderr, re.M):
            return "exit status 1 without an error line"
        if self.peak_rss > RSS_BOUND:
            return f"peak memory {self.peak_rss >> 20} MiB over the bound of {RSS_BOUND >> 20} MiB"
        return None


def _child(argv: list[str], folder: Path, err_fd: int) -> None:
    """In the forked child: run one command with stderr to `err_fd`, then exit."""
    os.chdir(folder)
    os.dup2(err_fd, 2)
    os.dup2(err_fd, 1)
    sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", buffering=0), write_through=True, errors="replace")
    sys.stdout = sys.stderr
    resource.setrlimit(resource.RLIMIT_DATA, (DATA_LIMIT, DATA_LIMIT))
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    status = 99
    try:
        from caffecompat.cli import main

        status = main(argv)
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
        status = 98
    sys.stderr.flush()
    os._exit(status)


def run_command(argv: list[str], folder: Path) -> Outcome:
    """Fork a child running `caffecompat ARGV` in `folder`; wait for it with a time limit."""
    read_fd, write_fd = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _child(argv, folder, write_fd)
    os.close(write_fd)
    chunks: list[bytes] = []
    killed = False
    while True:
        left = CASE_SECONDS - (time.monotonic() - start)
        if left <= 0 and not killed:
            os.kill(pid, signal.SIGKILL)
            killed = True
        ready, _, _ = select.select([read_fd], [], [], max(0.05, min(left, 1.0)) if not killed else 1.0)
        if ready:
            chunk = os.read(read_fd, 1 << 16)
            if not chunk:
                break
            if sum(map(len, chunks)) < 1 << 20:
                chunks.append(chunk)
    os.close(read_fd)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.monotonic() - start
    sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    return Outcome(argv, code, sig, seconds, usage.ru_maxrss * 1024, b"".join(chunks).decode("utf-8", "replace"))


def _prepare_process() -> None:
    """Import what the cases share once, before forking them, but nothing that starts a thread.

    Forking a process with threads may deadlock the child: numpy's BLAS starts
    none when told to use one thread (effective when numpy is not imported yet,
    as when this runs as a script), and ONNX Runtime, which starts one on
    import, is left for each child to import.
    """
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    import cv2  # noqa: F401
    import lmdb  # noqa: F401
    import onnx  # noqa: F401

    import caffecompat.formats.caffemodel  # noqa: F401
    import caffecompat.formats.upgrade  # noqa: F401
    import caffecompat.layers.families  # noqa: F401
    import caffecompat.net.export  # noqa: F401
    import caffecompat.net.spec  # noqa: F401


def fuzz(seeds: list[int], work: Path, report: Callable[[Case, Outcome, str], None] | None = None,
         deadline: float | None = None, keep: Path | None = None) -> list[tuple[Case, Outcome, str]]:
    """Run the cases of `seeds` in `work` (a scratch folder); returns the failures."""
    _prepare_process()
    pristine = work / "pristine"
    if not pristine.exists():
        # In a child, so that this process starts no runtime threads before it forks the cases.
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                make_assets(pristine)
                status = 0
            finally:
                os._exit(status)
        _, status = os.waitpid(pid, 0)
        if status != 0:
            raise RuntimeError(f"could not make the fuzz assets in {pristine}")
    failures = []
    for seed in seeds:
        if deadline is not None and time.monotonic() > deadline:
            break
        folder = work / "case"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(pristine, folder)
        case = prepare(folder, seed)
        for argv in case.commands:
            outcome = run_command(argv, folder)
            problem = outcome.problem()
            if report is not None:
                report(case, outcome, problem or "")
            if problem:
                failures.append((case, outcome, problem))
                if keep is not None:
                    # Links stay links and FIFOs are left out: copying /dev/zero or a FIFO would never end.
                    shutil.copytree(folder, keep / f"seed-{seed}", dirs_exist_ok=True, symlinks=True,
                                    ignore=lambda d, names: [n for n in names if _special(Path(d) / n)])
    return failures


def _special(path: Path) -> bool:
    import stat

    mode = path.lstat().st_mode
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode))


def describe(case: Case, outcome: Outcome, problem: str) -> str:
    """A failure as a few lines: seed, input damaged, command, problem, the end of its stderr."""
    tail = "\n".join(outcome.stderr.strip().splitlines()[-12:])
    return (f"seed {case.seed}: {case.target} {case.how}: caffecompat {' '.join(outcome.argv)}: {problem}\n"
            f"{tail}")


def main(argv: list[str] | None = None) -> int:
    """The long fuzz run for developers (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="first case seed (default 0)")
    parser.add_argument("--cases", type=int, default=500, help="number of cases (default 500)")
    parser.add_argument("--minutes", type=float, default=None, help="stop after this long")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--keep", type=Path, default=None, help="copy the inputs of failing cases here")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every command's outcome")
    args = parser.parse_args(argv)
    import tempfile

    work = args.work or Path(tempfile.mkdtemp(prefix="caffecompat-fuzz-"))
    deadline = time.monotonic() + args.minutes * 60 if args.minutes else None
    counts = {"runs": 0}

    def report(case: Case, outcome: Outcome, problem: str) -> None:
        counts["runs"] += 1
        if args.verbose or problem:
            line = problem or f"ok ({outcome.status})"
            print(f"seed {case.seed} {case.target} {case.how} {' '.join(outcome.argv[:1])}: {line} "
                  f"[{outcome.seconds:.1f} s, {outcome.peak_rss >> 20} MiB]", flush=True)

    started = time.monotonic()
    failures = fuzz(list(range(args.seed, args.seed + args.cases)), work, report, deadline, args.keep)
    for case, outcome, problem in failures:
        print(describe(case, outcome, problem), file=sys.stderr)
    print(f"{counts['runs']} commands in {time.monotonic() - started:.0f} s, {len(failures)} failures "
          f"(scratch folder {work})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
