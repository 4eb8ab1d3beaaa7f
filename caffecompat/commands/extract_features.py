"""`caffecompat extract-features`: what Caffe's tools/extract_features does, with its arguments.

    caffecompat extract-features WEIGHTS MODEL BLOB[,BLOB...] DB[,DB...] NUM_MINI_BATCHES lmdb|leveldb|npy|hdf5
                                 [CPU|GPU] [DEVICE_ID]

The net is built in the TEST phase with the weights copied by layer name, run
forward NUM_MINI_BATCHES times on its own data layers, and each named blob's
items go to its database (see caffecompat.data.feature_writer for the format).

Under `mpiexec -n N` (or with -processes N) the forward passes are shared:
pass j runs on rank j mod N (every rank reads every batch, so each sees its
batches as one process would), and rank 0 gathers each round of N passes and
writes them, in order: the outputs are those of one process.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from caffecompat import glog, outfiles, parallel
from caffecompat.commands.common import (
    add_processes_flag,
    add_proto_flag,
    add_threads_flag,
    apply_threads,
    command_line,
    flag,
    log_threads,
    providers_and_device,
)
from caffecompat.data import db as dbs
from caffecompat.data.feature_writer import FORMATS, ArrayFile, DatumSink, legacy_shape
from caffecompat.errors import CaffeCompatError
from caffecompat.formats.net import read_net_prototxt
from caffecompat.net.state import make_state
from caffecompat.net.weights import init_params, load_caffemodel
from caffecompat.parallel import shard
from caffecompat.progress import Progress
from caffecompat.proto import caffe_pb2
from caffecompat.runtime.feeder import build_with_data
from caffecompat.runtime.forward import ForwardRunner


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `extract-features` subcommand."""
    p = sub.add_parser(
        "extract-features",
        help="write blobs of a trained net, run on its data layers, to databases (Caffe's extract_features)",
        description=(
            "Run the TEST phase of MODEL with the WEIGHTS forward NUM_MINI_BATCHES times, reading its data "
            "layers, and write every item of each BLOB to the matching DB, as Caffe's extract_features does: "
            "lmdb and leveldb write one Datum per item (channels/height/width and float_data, key %010d). "
            "npy and hdf5 (caffecompat extensions) write the items stacked as one float32 array per blob: an "
            ".npy file per blob, or an HDF5 dataset named after the blob (blobs may share an HDF5 file)."
        ),
    )
    p.add_argument("weights", metavar="WEIGHTS", help="the .caffemodel (pretrained_net_param)")
    p.add_argument("model", metavar="MODEL", help="the net prototxt, with data layers (feature_extraction_proto_file)")
    p.add_argument("blobs", metavar="BLOB[,BLOB...]", help="names of the blobs to extract, comma-separated")
    p.add_argument("dbs", metavar="DB[,DB...]", help="one output per blob, comma-separated")
    p.add_argument("num_mini_batches", metavar="NUM_MINI_BATCHES", help="how many forward passes to run")
    p.add_argument("db_type", metavar="lmdb|leveldb|npy|hdf5", help="the output format")
    p.add_argument("device", metavar="CPU|GPU", nargs="?", default="CPU", help="where to run (default CPU)")
    p.add_argument("device_id", metavar="DEVICE_ID", nargs="?", default="0", help="the GPU's id (default 0)")
    flag(p, "overwrite", action="store_true", help="replace outputs that already exist")
    flag(p, "allow_cpu_fallback", action="store_true",
         help="with GPU, run on the CPU when CUDA is not available instead of stopping")
    add_proto_flag(p)
    add_threads_flag(p)
    add_processes_flag(p, "the forward passes are shared between them")
    p.set_defaults(func=run)
    global _parser
    _parser = p


_parser: argparse.ArgumentParser | None = None


def _count(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise CaffeCompatError(f"NUM_MINI_BATCHES {value!r}: expected a whole number of forward passes") from None
    if n < 1:
        raise CaffeCompatError(f"NUM_MINI_BATCHES {n}: must be at least 1")
    return n


def run(args: argparse.Namespace) -> int:
    """Extract; exit status 0."""
    blobs = args.blobs.split(",")
    outputs = args.dbs.split(",")
    if len(blobs) != len(outputs):
        raise CaffeCompatError(f"{len(blobs)} blob names ({args.blobs}) but {len(outputs)} output names "
                               f"({args.dbs}): the number of blob names and dataset names must be equal")
    if any(not b for b in blobs) or any(not o for o in outputs):
        raise CaffeCompatError("empty blob or output name in the comma-separated lists")
    batches = _count(args.num_mini_batches)
    kind = args.db_type.lower()
    if kind not in FORMATS:
        raise CaffeCompatError(f"output format {args.db_type!r}: use lmdb or leveldb (Caffe's Datum databases), "
                               "npy or hdf5")
    if kind == "npy" and len(set(outputs)) != len(outputs):
        raise CaffeCompatError("npy writes one file per blob: give each blob its own output name (or use hdf5, "
                               "where blobs may share a file)")
    if kind in ("lmdb", "leveldb") and len(set(outputs)) != len(outputs):
        raise CaffeCompatError(f"{kind}: give each blob its own database name")
    device = args.device.upper()
    apply_threads(args)
    group = shard.start(args, lambda: command_line(_parser, args, "extract-features"))
    if isinstance(group, int):  # -processes N: this process started the ranks and watched them
        return group
    try:
        _run(args, blobs, outputs, batches, kind, device)
    except BaseException as e:
        shard.fail(group, e)
        raise
    return 0


def _run(args: argparse.Namespace, blobs: list[str], outputs: list[str], batches: int, kind: str,
         device: str) -> None:
    if device not in ("CPU", "GPU"):
        raise CaffeCompatError(f"{args.device!r}: expected CPU or GPU (then optionally a DEVICE_ID)")
    if device == "GPU":
        try:
            gpu = int(args.device_id)
        except ValueError:
            raise CaffeCompatError(f"DEVICE_ID {args.device_id!r}: expected a device id such as 0") from None
        if gpu < 0:
            raise CaffeCompatError(f"DEVICE_ID {gpu}: device ids start at 0")
        if parallel.root_solver():  # the other ranks keep to warnings and real errors
            glog.error("extract_features.cpp:52", "Using GPU")
            glog.error("extract_features.cpp:58", f"Using Device_id={gpu}")
    else:
        gpu = None
        if parallel.root_solver():
            glog.error("extract_features.cpp:62", "Using CPU")
    providers, _ = providers_and_device(gpu, args.allow_cpu_fallback, f"GPU {gpu}" if gpu is not None else None)
    log_threads("extract_features.py")
    extract_features(args.weights, args.model, blobs, outputs, batches, kind, providers, args.overwrite)


def _check_space(spec, blobs: list[str], values: list[str], outputs: list[str], batches: int, kind: str) -> None:
    # npy and hdf5 outputs are sized up front: a size beyond the free space is refused before any file is made.
    need: dict[str, int] = {}
    for value, out in zip(values, outputs):
        shape = spec.shapes[value]
        folder = os.path.dirname(os.path.abspath(out))
        need[folder] = need.get(folder, 0) + batches * int(np.prod(shape, dtype=object) if shape else 1) * 4
    for folder, size in need.items():
        free = outfiles.free_bytes(folder)
        if free is not None and size > free:
            raise CaffeCompatError(f"{kind} output in {folder}: {batches} batches of {', '.join(blobs)} need "
                                   f"{outfiles.human_bytes(size)} but the disk has {outfiles.human_bytes(free)} "
                                   "free; extract fewer batches or write to a larger disk")


def extract_features(weights: str, model: str, blobs: list[str], outputs: list[str], batches: int, kind: str,
                     providers: list | None = None, overwrite: bool = False, progress: bool = True) -> list[int]:
    """Run `model` (TEST phase, `weights`) `batches` times and write each blob to its output; returns the
    number of items written per blob. In a multi-process run (caffecompat.parallel) the passes are shared
    between the ranks and rank 0 writes; the others return no counts."""
    group = parallel.current()
    net = read_net_prototxt(model)
    state = make_state(net, caffe_pb2.TEST)
    rng = np.random.default_rng(0)
    feeder = build_with_data(net, state, rng, model)
    sinks: list = []
    files: dict[str, ArrayFile] = {}
    try:
        spec = feeder.spec
        missing = [b for b in blobs if b not in spec.blob_values]
        if missing:
            raise CaffeCompatError(f"{model}: unknown feature blob name(s) {', '.join(missing)} in the network; "
                                   f"its blobs are {', '.join(spec.blob_values)}")
        for node in spec.source_layers():
            if feeder.source_of(node) is None:
                glog.warning("extract_features.py", f"{model}: layer '{node.name}' ({node.param.type}) has no "
                                                        "data source: its tops stay zero, as in Caffe; extract "
                                                        "from a net with Data, ImageData or HDF5Data layers")
        params = init_params(spec, rng)
        load_caffemodel(spec, params, weights)
        values = [spec.blob_values[b] for b in blobs]
        computed = [v for v in dict.fromkeys(values) if v not in spec.inputs]
        runner = ForwardRunner(spec, outputs=computed, providers=providers) if computed else None
        if kind in ("lmdb", "leveldb"):
            for blob, value in zip(blobs, values):
                legacy_shape(spec.shapes[value], blob)  # a Datum holds at most 4 axes: refuse before writing
        if kind not in ("lmdb", "leveldb"):
            _check_space(spec, blobs, values, outputs, batches, kind)
        for blob, value, out in zip(blobs, values, outputs):
            if not group.root:
                break  # rank 0 alone writes
            glog.info("extract_features.cpp:125", f"Opening dataset {out}")
            if kind in ("lmdb", "leveldb"):
                sinks.append(DatumSink(out, kind, blob, overwrite))
                glog.info(*dbs.opened_line(kind, out))
            else:
                if out not in files:
                    files[out] = ArrayFile(out, kind, overwrite)
                shape = spec.shapes[value]
                per_batch = shape[0] if shape else 1
                files[out].allocate(blob, batches * per_batch, tuple(shape[1:]))
                sinks.append(files[out])
        if group.root:
            glog.error("extract_features.cpp:133", "Extracting Features")
        bar = Progress("extract-features", batches, unit="batches") if progress and group.root else None
        for first in range(0, batches, group.size):
            # One round: a pass per rank (each reads every batch of the round, and runs its own).
            mine = None
            for j in range(first, min(first + group.size, batches)):
                feed = feeder.next_inputs()
                if shard.takes(group, j):
                    group.alive(j)
                    out_values = runner.run(feed, params) if runner is not None else {}
                    # Copies: the feeder may reuse its buffers for the round's next batches.
                    mine = [np.array(feed[value] if value in spec.inputs else out_values[value], np.float32)
                            for value in values]
            for arrays in shard.gather(group, mine, "the gathering of the extracted features"):
                if arrays is None:
                    continue
                for blob, batch, sink in zip(blobs, arrays, sinks):
                    if isinstance(sink, DatumSink):
                        if sink.add(batch) and (bar is None or not bar.tty):
                            glog.error("extract_features.cpp:165", f"Extracted features of {sink.count} query "
                                                                   f"images for feature blob {blob}")
                    else:
                        sink.add(blob, batch)
                if bar is not None:
                    bar.update()
        if bar is not None:
            bar.close()
        if not group.root:
            return []
        counts = []
        for blob, sink in zip(blobs, list(sinks)):
            if isinstance(sink, DatumSink):
                sink.finish()
                sinks.remove(sink)
                counts.append(sink.count)
            else:
                counts.append(sink.counts[blob])
            glog.error("extract_features.cpp:176", f"Extracted features of {counts[-1]} query images for feature "
                                                   f"blob {blob}")
        for out in list(files):
            files.pop(out).finish()
        glog.error("extract_features.cpp:181", "Successfully extracted the features!")
        return counts
    finally:
        for sink in sinks:
            if isinstance(sink, DatumSink):
                sink.abort()
        for f in files.values():
            f.abort()
        feeder.close()

