"""`caffecompat classify`: top-k classes of images with a deploy net (pycaffe's classify.py, Caffe's
cpp_classification), as CSV or JSON.

    caffecompat classify -model deploy.prototxt -weights w.caffemodel [FLAGS] IMAGE|FOLDER|LIST.txt ...

Preprocessing is caffecompat.data.preprocess's. A list file holds `path` or
`path label` lines (paths prefixed by -root, as convert-lmdb's ROOTFOLDER/);
with labels, the top-1 and top-k accuracy are reported as Caffe's Accuracy
layer counts them. A folder gives the images below it, in sorted order; if
-labels is given and its subfolders are class names, their images are
labelled with them (an image folder, as convert-lmdb reads one).
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
from caffecompat.commands.common import add_gpu_flags, add_proto_flag, flag, gpu_id, providers_and_device
from caffecompat.data import image_folder, image_io
from caffecompat.data.preprocess import Preprocessor, default_images_dim, parse_ints, read_mean
from caffecompat.errors import CaffeCompatError
from caffecompat.formats.net import read_net_prototxt
from caffecompat.formats.protofile import read_bytes
from caffecompat.net import spec as netspec
from caffecompat.net.spec import NetSpec
from caffecompat.net.state import filter_layers
from caffecompat.net.weights import init_params, load_caffemodel
from caffecompat.proto import caffe_pb2
from caffecompat.runtime.forward import ForwardRunner


@dataclass
class Item:
    """One image to classify, with its true label when known."""

    path: str
    label: int | None = None


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `classify` subcommand."""
    p = sub.add_parser(
        "classify", help="top-k classes of images with a deploy net and weights (pycaffe's classify.py)",
        description=(
            "Classify images with a deploy net (an Input layer) and its weights, and write each image's top-k "
            "classes and scores as CSV or JSON. Images are read with OpenCV (BGR, 0-255, as Caffe's tools read "
            "them), resized to -images_dim, cropped to the net's input (centre, or -oversample's 10 crops), then "
            "(pixel - mean) * scale as Caffe's DataTransformer: use the transform_param of the net's TEST data "
            "layer (mean_file, mean_value, scale)."),
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
    flag(p, "format", default="", choices=["", "csv", "json"],
         help="csv or json (default: by -output's extension, else csv)")
    add_gpu_flags(p)
    add_proto_flag(p)
    p.set_defaults(func=run)


def _list_items(path: str, root: str) -> list[Item]:
    text = read_bytes(path, "image list").decode("utf-8", "surrogateescape")
    items = []
    for line in text.splitlines():
        line = line.rstrip()
        if not line:
            continue
        name, sep, label = line.rpartition(" ")
        if sep and name.strip() and label.lstrip("+-").isdigit():
            items.append(Item(root + name, int(label)))
        else:
            items.append(Item(root + line))
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
        items += [Item(os.path.join(dirpath, f), label) for f in sorted(filenames)
                  if not f.startswith(".") and image_folder.is_image(f)]
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
            items.append(Item(given))
        else:
            raise CaffeCompatError(f"{given}: no such image, folder or list file")
    return items


def _input_layer(net: caffe_pb2.NetParameter, model: str) -> caffe_pb2.LayerParameter:
    state = caffe_pb2.NetState(phase=caffe_pb2.TEST)
    kept = filter_layers(net, state, model)
    sources = [lp for lp in kept if lp.type in ("Data", "ImageData", "HDF5Data", "DummyData", "WindowData",
                                                "MemoryData", "Python")]
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
    """Classify and write the results."""
    if args.top_k < 1:
        raise CaffeCompatError(f"-top_k {args.top_k}: must be at least 1")
    if args.batch_size < 1:
        raise CaffeCompatError(f"-batch_size {args.batch_size}: must be at least 1")
    if args.mean_file and args.mean_value:
        raise CaffeCompatError("give -mean_file or -mean_value, not both (Caffe allows only one)")
    fmt = args.format or ("json" if args.output.lower().endswith(".json") else "csv")
    if args.output:
        outfiles.check_writable(args.output, "results file")
    names = image_folder.read_classes(args.labels) if args.labels else None
    items = collect(args.inputs, args.root, names)
    providers, _ = providers_and_device(gpu_id(args.gpu), args.allow_cpu_fallback)
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
    results = []  # (item, top classes, their scores)
    hits1 = hitsk = labelled = 0
    start = time.monotonic()
    per = prep.crops_per_image
    for b in range(0, len(items), args.batch_size):
        chunk = items[b:b + args.batch_size]
        images, kept = [], []
        for item in chunk:
            try:
                images.append(prep.read(item.path))
                kept.append(item)
            except image_io.ImageReadError as e:
                glog.error("classify.py", f"Could not read {e}; skipped")
        if not kept:
            continue
        batch = np.empty((len(kept) * per, c, h, w), np.float32)
        for i, image in enumerate(images):
            prep.crops(image, batch[i * per:(i + 1) * per])
        scores = clf.scores(batch).reshape(len(kept), per, -1).mean(axis=1, dtype=np.float32)
        k = min(args.top_k, scores.shape[1])
        for item, s in zip(kept, scores):
            top = top_k(s, k)
            # Scores as their shortest float32 text (0.1, not 0.10000000149011612).
            results.append((item, top, [float(str(s[i])) for i in top]))
            if item.label is not None:
                if not 0 <= item.label < s.shape[0]:
                    raise CaffeCompatError(f"{item.path}: label {item.label} is not a class of the net's "
                                           f"{s.shape[0]} outputs")
                labelled += 1
                hits1 += caffe_hit(s, item.label, 1)
                hitsk += caffe_hit(s, item.label, k)
    seconds = time.monotonic() - start
    text = _format(results, names, fmt)
    if args.output:
        outfiles.write_atomic(args.output, text.encode("utf-8"), "results file")
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    glog.info("classify.py", f"Classified {len(results)} images in {seconds:.2f} s "
                             f"({len(results) / max(seconds, 1e-9):.1f} images/s)")
    if labelled:
        glog.info("classify.py", f"accuracy = {hits1 / labelled:.6g} ({hits1}/{labelled} labelled images)")
        if args.top_k > 1:
            glog.info("classify.py", f"top-{min(args.top_k, len(results[0][1]))} accuracy = "
                                     f"{hitsk / labelled:.6g} ({hitsk}/{labelled})")
    if len(results) < len(items):
        glog.error("classify.py", f"{len(items) - len(results)} image(s) could not be read (listed above)")
    return 0


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
