"""`caffecompat classify`: top-k classes of images with a deploy net (pycaffe's classify.py, Caffe's
cpp_classification), as CSV, JSON or HDF5.

    caffecompat classify -model deploy.prototxt -weights w.caffemodel [FLAGS] IMAGE|FOLDER|LIST.txt ...

Preprocessing is caffecompat.data.preprocess's. A list file holds `path` or
`path label` lines (paths prefixed by -root, as convert-lmdb's ROOTFOLDER/);
with labels, the top-1 and top-k accuracy are reported as Caffe's Accuracy
layer counts them. A folder gives the images below it, in sorted order; if
-labels is given and its subfolders are class names, their images are
labelled with them (an image folder, as convert-lmdb reads one).

HDF5 results (-format hdf5, or an -output ending in .h5 / .hdf5) hold, for
array readers, `scores` (N x C float32, the net's output per image, crops
averaged), `files` (the images' paths, in input order, UTF-8), `top_classes`
(N x K int32) and `top_scores` (N x K float32), `labels` (the -labels class
names, UTF-8) and `true_labels` (N int64, -1 where unknown) when given; and,
for per-sample readers, one dataset per image under the group `predictions`
(its row of `scores`, with attributes `file`, its path, `index`, its row, and
`label` when known). A per-image dataset is named by the image's path relative
to the folder it was found in (as written in a list file; as given for an image
file), each '/' a group level: `predictions/cat/001.jpg`. The names are made
safe by `hdf5_name`: '%' becomes %25, a '.' or '..' path part %2E / %2E%2E, an
empty part (a leading or doubled '/') is dropped, bytes that are not UTF-8 are
%XX (and '?' in the `file` attribute and `files`); a name already taken (an image given twice, or a name that is also
another's group) gets `#2`, `#3`, ... and, if a group is in the way, its '/'
written %2F. Read them with h5py's `visititems`, or `f["predictions"]` level by
level; see examples/classify/print_predictions.py.

Under `mpiexec -n N` (or with -processes N) the batches are shared round-robin
between the ranks; rank 0 gathers the scores and writes the one result, the
same bytes as one process writes with the same -threads (see
caffecompat.parallel.shard).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

from caffecompat import glog, outfiles
from caffecompat.commands.common import (
    add_gpu_flags,
    add_processes_flag,
    add_proto_flag,
    add_threads_flag,
    apply_threads,
    command_line,
    flag,
    gpu_id,
    log_threads,
    providers_and_device,
)
from caffecompat.data import image_folder, image_io
from caffecompat.data.preprocess import Preprocessor, default_images_dim, parse_ints, read_mean
from caffecompat.errors import CaffeCompatError
from caffecompat.formats.net import read_net_prototxt
from caffecompat.formats.protofile import read_bytes
from caffecompat.net import spec as netspec
from caffecompat.net.spec import NetSpec
from caffecompat.net.state import filter_layers
from caffecompat.net.weights import init_params, load_caffemodel
from caffecompat.parallel import shard
from caffecompat.progress import Progress
from caffecompat.proto import caffe_pb2
from caffecompat.runtime.forward import ForwardRunner


@dataclass
class Item:
    """One image to classify, with its true label when known."""

    path: str
    label: int | None = None
    name: str = ""  # the path relative to the folder it was found in (as listed; as given): its HDF5 name


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `classify` subcommand."""
    p = sub.add_parser(
        "classify", help="top-k classes of images with a deploy net and weights (pycaffe's classify.py)",
        description=(
            "Classify images with a deploy net (an Input layer) and its weights, and write each image's top-k "
            "classes and scores as CSV or JSON, or every score as HDF5. Images are read with OpenCV (BGR, 0-255, "
            "as Caffe's tools read them), resized to -images_dim, cropped to the net's input (centre, or "
            "-oversample's 10 crops), then (pixel - mean) * scale as Caffe's DataTransformer: use the "
            "transform_param of the net's TEST data layer (mean_file, mean_value, scale)."),
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE|FOLDER|LIST.txt",
                   help="image files, folders (the images below them) or list files of 'path [label]' lines")
    flag(p, "model", required=True, metavar="FILE", help="the deploy net prototxt")
    flag(p, "weights", required=True, metavar="FILE", help="the .caffemodel")
    flag(p, "labels", default="", metavar="FILE", help="class names, line i naming class i (e.g. labels.txt)")
    flag(p, "root", default="", metavar="PREFIX", help="prefix of the paths in list files (as convert-lmdb's)")
    flag(p, "mean_file", default="", metavar="FILE",
         help="mean image to subtract: .binaryproto (compute-mean's) or .npy (C x H x W, or C values)")
    flag(p, "mean_value", default="", metavar="V[,V...]", help="mean value per channel (or one for all)")
    flag(p, "scale", type=float, default=1.0, help="multiply by this after subtracting the mean (transform_param "
                                                   "scale; pycaffe's input_scale)")
    flag(p, "raw_scale", type=float, default=1.0,
         help="multiply the 0-255 pixels by this before subtracting the mean (pycaffe's raw_scale)")
    flag(p, "channel_swap", default="", metavar="ORDER",
         help="reorder the image's BGR channels, e.g. 2,1,0 for a net trained on RGB images")
    flag(p, "images_dim", default="", metavar="H,W",
         help="resize images to H x W before cropping (default: the mean image's size if it is larger than the "
              "net's input, else the net's input size)")
    flag(p, "oversample", action="store_true",
         help="average the scores of 10 crops (4 corners, centre and their mirrors) instead of the centre crop")
    flag(p, "top_k", type=int, default=5, metavar="K", help="classes to report per image (default 5)")
    flag(p, "batch_size", type=int, default=16, metavar="N", help="images per forward pass (default 16)")
    flag(p, "output_blob", default="", metavar="BLOB", help="the blob holding the scores (default: the net's "
                                                            "first output, e.g. prob)")
    flag(p, "output", default="", metavar="FILE", help="where to write the results (default: standard output)")
    flag(p, "format", default="", choices=["", "csv", "json", "hdf5"],
         help="csv, json or hdf5 (default: by -output's extension: .csv/.txt, .json, .h5/.hdf5; else csv)")
    add_gpu_flags(p)
    add_proto_flag(p)
    add_threads_flag(p)
    add_processes_flag(p, "the batches are shared between them")
    p.set_defaults(func=run)
    global _parser
    _parser = p


_parser: argparse.ArgumentParser | None = None
# -output's extensions and the format each names.
EXTENSIONS = {".csv": "csv", ".txt": "csv", ".json": "json", ".h5": "hdf5", ".hdf5": "hdf5"}


def output_format(fmt: str, output: str) -> str:
    """The results' format: -format, else -output's extension (csv without one); never a format under another
    format's name."""
    ext = os.path.splitext(output)[1].lower() if output else ""
    named = EXTENSIONS.get(ext)
    if ext and named is None and not fmt:
        raise CaffeCompatError(f"-output {output}: unknown output format '{ext}': use .csv, .txt, .json, .h5/.hdf5, "
                               "or -format csv|json|hdf5")
    if fmt and named and named != fmt:
        raise CaffeCompatError(f"-output {output} names a {named} file but -format is {fmt}: give the file a "
                               f"matching extension or drop -format")
    if fmt == "hdf5" and not output:
        raise CaffeCompatError("-format hdf5 needs -output FILE.h5 (HDF5 is not written to standard output)")
    return fmt or named or "csv"


def _list_items(path: str, root: str) -> list[Item]:
    text = read_bytes(path, "image list").decode("utf-8", "surrogateescape")
    items = []
    for line in text.splitlines():
        line = line.rstrip()
        if not line:
            continue
        name, sep, label = line.rpartition(" ")
        if sep and name.strip() and label.lstrip("+-").isdigit():
            items.append(Item(root + name, int(label), name))
        else:
            items.append(Item(root + line, None, line))
    if not items:
        raise CaffeCompatError(f"{path}: the image list is empty")
    return items


def _folder_items(folder: str, classes: list[str] | None) -> list[Item]:
    subfolders = sorted(e for e in os.listdir(folder) if not e.startswith(".")
                        and os.path.isdir(os.path.join(folder, e)))
    labelled = classes is not None and subfolders and all(s in classes for s in subfolders)
    items = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        label = None
        if labelled and dirpath != folder:
            label = classes.index(os.path.relpath(dirpath, folder).split(os.sep)[0])
        items += [Item(os.path.join(dirpath, f), label, os.path.relpath(os.path.join(dirpath, f), folder))
                  for f in sorted(filenames) if not f.startswith(".") and image_folder.is_image(f)]
    if not items:
        raise CaffeCompatError(f"{folder}: no image files in this folder")
    return items


def collect(inputs: list[str], root: str, classes: list[str] | None) -> list[Item]:
    """The images named by files, folders and list files, in the order given."""
    items: list[Item] = []
    for given in inputs:
        if os.path.isdir(given):
            items += _folder_items(given, classes)
        elif given.lower().endswith(".txt"):
            items += _list_items(given, root)
        elif os.path.exists(given) or image_folder.is_image(given):
            items.append(Item(given, None, given))
        else:
            raise CaffeCompatError(f"{given}: no such image, folder or list file")
    return items


def _input_layer(net: caffe_pb2.NetParameter, model: str) -> caffe_pb2.LayerParameter:
    state = caffe_pb2.NetState(phase=caffe_pb2.TEST)
    kept = filter_layers(net, state, model)
    # A Python layer is a data layer only when it has no bottoms (one in the middle of the net, e.g. a
    # proposal or normalization layer, runs as any other layer).
    sources = [lp for lp in kept if lp.type in ("Data", "ImageData", "HDF5Data", "DummyData", "WindowData",
                                                "MemoryData") or (lp.type == "Python" and not lp.bottom)]
    inputs = [lp for lp in kept if lp.type == "Input"]
    if sources or len(inputs) != 1 or len(inputs[0].top) != 1:
        raise CaffeCompatError(f"{model}: classify needs a deploy net whose one input is an Input layer with one "
                               "top (like deploy.prototxt); this net reads data layers or has several inputs")
    return inputs[0]


class Classifier:
    """A deploy net with its weights, run in batches of any size (one ONNX session per batch size)."""

    def __init__(self, model: str, weights: str, output_blob: str, providers: list) -> None:
        self.model = model
        self.net = read_net_prototxt(model)
        self.input_layer = _input_layer(self.net, model)
        shape = list(self.input_layer.input_param.shape[0].dim)
        if len(shape) != 4:
            raise CaffeCompatError(f"{model}: the input '{self.input_layer.top[0]}' has shape {shape}; classify "
                                   "needs N x C x H x W")
        self.input_shape = tuple(int(d) for d in shape)
        self.providers = providers
        first = self._spec(self.input_shape[0])
        self.output = output_blob or (first.outputs[0] if first.outputs else "")
        if self.output not in first.blob_values:
            raise CaffeCompatError(f"{model}: no blob '{self.output}'; its blobs are {', '.join(first.blob_values)}")
        self.params = init_params(first, np.random.default_rng(0))
        load_caffemodel(first, self.params, weights)
        self._runners: dict[int, tuple[NetSpec, ForwardRunner]] = {}

    def _spec(self, batch: int) -> NetSpec:
        net = caffe_pb2.NetParameter()
        net.CopyFrom(self.net)
        for lp in net.layer:
            if lp.type == "Input":
                lp.input_param.shape[0].dim[0] = batch
        return netspec.build(net, caffe_pb2.TEST, source=self.model)

    def scores(self, batch: np.ndarray) -> np.ndarray:
        """The output blob for `batch` (N x C x H x W), one row per item."""
        n = batch.shape[0]
        if n not in self._runners:
            spec = self._spec(n)
            self._runners[n] = (spec, ForwardRunner(spec, outputs=[spec.blob_values[self.output]],
                                                    providers=self.providers))
        spec, runner = self._runners[n]
        value = spec.blob_values[self.output]
        out = runner.run({spec.inputs[0]: batch}, self.params)[value]
        return np.asarray(out, np.float32).reshape(n, -1)


def top_k(scores: np.ndarray, k: int) -> list[int]:
    """Classes by decreasing score (ties: the lower index first)."""
    return [int(i) for i in np.argsort(-scores, kind="stable")[:k]]


def caffe_hit(scores: np.ndarray, label: int, k: int) -> bool:
    """AccuracyLayer's rule: fewer than k classes (the true one among them) score >= the true class."""
    return int(np.count_nonzero(scores >= scores[label])) - 1 < k


def run(args: argparse.Namespace) -> int:
    """Classify and write the results (on every rank of a multi-process run; rank 0 writes)."""
    if args.top_k < 1:
        raise CaffeCompatError(f"-top_k {args.top_k}: must be at least 1")
    if args.batch_size < 1:
        raise CaffeCompatError(f"-batch_size {args.batch_size}: must be at least 1")
    if args.mean_file and args.mean_value:
        raise CaffeCompatError("give -mean_file or -mean_value, not both (Caffe allows only one)")
    fmt = output_format(args.format, args.output)
    apply_threads(args)
    group = shard.start(args, lambda: command_line(_parser, args, "classify"))
    if isinstance(group, int):  # -processes N: this process started the ranks and watched them
        return group
    try:
        return _classify(args, fmt, group)
    except BaseException as e:
        shard.fail(group, e)
        raise


def _classify(args: argparse.Namespace, fmt: str, group) -> int:
    if args.output:
        outfiles.check_writable(args.output, "results file")
    names = image_folder.read_classes(args.labels) if args.labels else None
    items = collect(args.inputs, args.root, names)
    providers, _ = providers_and_device(gpu_id(args.gpu), args.allow_cpu_fallback)
    log_threads("classify.py")
    clf = Classifier(args.model, args.weights, args.output_blob, providers)
    _, c, h, w = clf.input_shape
    mean = read_mean(args.mean_file) if args.mean_file else None
    if args.mean_value:
        try:
            mean = np.array([float(v) for v in args.mean_value.split(",")], np.float32)
        except ValueError:
            raise CaffeCompatError(f"-mean_value {args.mean_value}: expected comma-separated numbers") from None
    dims = parse_ints(args.images_dim, "-images_dim", 2) if args.images_dim else default_images_dim((h, w), mean)
    prep = Preprocessor(c, (h, w), tuple(dims), mean, args.scale, args.raw_scale,
                        parse_ints(args.channel_swap, "-channel_swap") if args.channel_swap else None,
                        args.oversample)
    glog.info("classify.py", f"Classifying {len(items)} images with {args.model}: input {c} x {h} x {w}, images "
                             f"resized to {dims[0]} x {dims[1]}, {'10 crops' if args.oversample else 'centre crop'}")
    start = time.monotonic()
    per = prep.crops_per_image
    batches = range(0, len(items), args.batch_size)
    bar = Progress("classify", len(batches), unit="batches", where="classify.py") if group.root else None
    mine: list[tuple[int, np.ndarray]] = []  # (index of the item, its scores), this rank's batches
    for j, b in enumerate(batches):
        if not shard.takes(group, j):
            continue
        group.alive(j)
        images, kept = [], []
        for index in range(b, min(b + args.batch_size, len(items))):
            try:
                images.append(prep.read(items[index].path))
                kept.append(index)
            except image_io.ImageReadError as e:
                glog.error("classify.py", f"Could not read {e}; skipped")
        if kept:
            batch = np.empty((len(kept) * per, c, h, w), np.float32)
            for i, image in enumerate(images):
                prep.crops(image, batch[i * per:(i + 1) * per])
            scores = clf.scores(batch).reshape(len(kept), per, -1).mean(axis=1, dtype=np.float32)
            for index, s in zip(kept, scores):
                label = items[index].label
                if label is not None and not 0 <= label < s.shape[0]:
                    raise CaffeCompatError(f"{items[index].path}: label {label} is not a class of the net's "
                                           f"{s.shape[0]} outputs")
                mine.append((index, s))
        if bar is not None:
            bar.update(min(group.size, len(batches) - bar.count))
    if bar is not None:
        bar.close()
    rows = shard.in_order(shard.gather(group, mine, "the gathering of every rank's scores"))
    if not group.root:
        return 0
    seconds = time.monotonic() - start
    results = [(items[index], s) for index, s in rows]
    k = min(args.top_k, results[0][1].shape[0]) if results else args.top_k
    if fmt == "hdf5":
        outfiles.write_atomic(args.output, hdf5_bytes(results, names, k), "results file")
    else:
        # Scores as their shortest float32 text (0.1, not 0.10000000149011612).
        text = _format([(item, top, [float(str(s[i])) for i in top]) for item, s in results
                        for top in [top_k(s, k)]], names, fmt)
        if args.output:
            outfiles.write_atomic(args.output, text.encode("utf-8"), "results file")
        else:
            sys.stdout.write(text)
            sys.stdout.flush()
    glog.info("classify.py", f"Classified {len(results)} images in {seconds:.2f} s "
                             f"({len(results) / max(seconds, 1e-9):.1f} images/s)")
    labelled = [(item.label, s) for item, s in results if item.label is not None]
    if labelled:
        hits1 = sum(caffe_hit(s, label, 1) for label, s in labelled)
        hitsk = sum(caffe_hit(s, label, k) for label, s in labelled)
        glog.info("classify.py", f"accuracy = {hits1 / len(labelled):.6g} ({hits1}/{len(labelled)} labelled images)")
        if args.top_k > 1:
            glog.info("classify.py", f"top-{k} accuracy = {hitsk / len(labelled):.6g} ({hitsk}/{len(labelled)})")
    if len(results) < len(items):
        glog.error("classify.py", f"{len(items) - len(results)} image(s) could not be read (listed above)")
    return 0


def hdf5_name(relative: str) -> str:
    """The per-image dataset name of an image's relative path: '/' separates groups; '%', '.' and '..' parts and
    bytes that are not UTF-8 are %-escaped; empty parts are dropped."""
    raw = relative.replace(os.sep, "/").encode("utf-8", "surrogateescape")
    parts = []
    for part in raw.split(b"/"):
        if not part:
            continue
        if part in (b".", b".."):
            parts.append("%2E" * len(part))
            continue
        text = part.replace(b"%", b"%25")
        try:
            parts.append(text.decode("utf-8"))
        except UnicodeDecodeError:
            parts.append("".join(chr(c) if c < 0x80 else f"%{c:02X}" for c in text))
    return "/".join(parts) or "%2E"


def _unique_names(items: list[Item]) -> list[str]:
    """`hdf5_name` of every item, made unique: #2, #3, ... for a repeat; '/' as %2F when a group is in the way."""
    datasets: set[str] = set()
    groups: set[str] = set()
    out = []
    for item in items:
        base = hdf5_name(item.name or item.path)
        prefixes = ["/".join(base.split("/")[:i]) for i in range(1, base.count("/") + 1)]
        if any(p in datasets for p in prefixes):
            base, prefixes = base.replace("/", "%2F"), []
        name, n = base, 1
        while name in datasets or name in groups:
            n += 1
            name = f"{base}#{n}"
        datasets.add(name)
        groups.update(prefixes)
        out.append(name)
    return out


def hdf5_bytes(results: list[tuple[Item, np.ndarray]], names: list[str] | None, k: int) -> bytes:
    """The HDF5 results file (see the module's docstring) as bytes."""
    import h5py

    strings = h5py.string_dtype("utf-8")
    n = len(results)
    classes = results[0][1].shape[0] if results else 0
    scores = np.stack([s for _, s in results]).astype(np.float32) if results else np.zeros((0, 0), np.float32)
    tops = np.array([top_k(s, k) for _, s in results], np.int32).reshape(n, min(k, classes) if n else 0)
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.create_dataset("scores", data=scores)
        f.create_dataset("files", data=[_utf8(item.path) for item, _ in results], dtype=strings)
        f.create_dataset("top_classes", data=tops)
        f.create_dataset("top_scores", data=np.take_along_axis(scores, tops.astype(np.intp), axis=1)
                         if n else np.zeros((0, 0), np.float32))
        if names is not None:
            f.create_dataset("labels", data=[_utf8(x) for x in names], dtype=strings)
        if any(item.label is not None for item, _ in results):
            f.create_dataset("true_labels", data=np.array(
                [-1 if item.label is None else item.label for item, _ in results], np.int64))
        group = f.create_group("predictions")
        for index, ((item, s), name) in enumerate(zip(results, _unique_names([i for i, _ in results]))):
            d = group.create_dataset(name, data=np.asarray(s, np.float32))
            d.attrs["file"] = _utf8(item.path)
            d.attrs["index"] = index
            if item.label is not None:
                d.attrs["label"] = item.label
    return buf.getvalue()


def _utf8(text: str) -> str:
    # Paths that are not UTF-8 (read with surrogateescape) have '?' for those bytes in HDF5's UTF-8 strings.
    return text.encode("utf-8", "replace").decode("utf-8") if any("\udc80" <= ch <= "\udcff" for ch in text) \
        else text


def _format(results: list, names: list[str] | None, fmt: str) -> str:
    def name(i: int) -> str:
        return names[i] if names is not None and i < len(names) else ""

    any_label = any(item.label is not None for item, _, _ in results)
    if fmt == "json":
        rows = []
        for item, top, scores in results:
            row: dict = {"image": item.path}
            if item.label is not None:
                row["label"] = item.label
            row["top"] = [{"class": i, **({"name": name(i)} if names else {}), "score": s}
                          for i, s in zip(top, scores)]
            rows.append(row)
        return json.dumps(rows, indent=1) + "\n"
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    k = max((len(t) for _, t, _ in results), default=0)
    header = ["image"] + (["label"] if any_label else [])
    for r in range(1, k + 1):
        header += [f"class_{r}"] + ([f"name_{r}"] if names else []) + [f"score_{r}"]
    writer.writerow(header)
    for item, top, scores in results:
        row = [item.path] + ([item.label if item.label is not None else ""] if any_label else [])
        for i, s in zip(top, scores):
            row += [i] + ([name(i)] if names else []) + [f"{s:.6g}"]
        writer.writerow(row)
    return buf.getvalue()
