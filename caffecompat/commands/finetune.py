"""`caffecompat finetune`: from a pretrained deploy net and its weights to a fine-tuned model, in one command.

    caffecompat finetune -model deploy.prototxt -weights w.caffemodel -train photos/train -val photos/val \
        -output out/ [-head fc8] [-freeze_below LAYER] [-solver_type Adam] [-lr_policy exp -gamma G] \
        [-iterations N] [-batch N] [-processes N] [-threads N] ...
    caffecompat finetune -model deploy.prototxt -noweights ...    (the same recipe from the fillers: a baseline)

It writes the files a Caffe user writes by hand for Caffe's fine-tuning recipe
(models/finetune_flickr_style), into the output folder, and trains with
`caffecompat train` (caffecompat.net.surgery does the prototxt surgery):

    train_lmdb/ val_lmdb/ labels.txt mean.binaryproto   the images (convert-lmdb, compute-mean)
    train_val.prototxt  solver.prototxt  deploy.prototxt
    snapshots/finetune_iter_N.caffemodel (+ .solverstate)

Resuming: `-output out/ -snapshot out/snapshots/finetune_iter_N.solverstate` trains on with the files there.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
from pathlib import Path

from google.protobuf import text_format

from caffecompat import glog, outfiles
from caffecompat.commands.common import add_gpu_flags, add_threads_flag, flag
from caffecompat.data import datum as datum_codec
from caffecompat.data import db as dbs
from caffecompat.data import image_folder, listfile
from caffecompat.data.convert_imageset import Options, convert_imageset
from caffecompat.data.image_mean import compute_mean, write_mean
from caffecompat.errors import CaffeCompatError
from caffecompat.formats.net import read_net_prototxt
from caffecompat.net import surgery
from caffecompat.proto import caffe_pb2

# Per solver type: the fields of a solver that fine-tunes well (measured on open_nsfw, see README.md).
SOLVER_DEFAULTS: dict[str, dict[str, float]] = {
    "SGD": {"base_lr": 0.001, "momentum": 0.9},
    "Nesterov": {"base_lr": 0.001, "momentum": 0.9},
    "AdaGrad": {"base_lr": 0.001},
    "RMSProp": {"base_lr": 0.0001, "rms_decay": 0.98},
    "AdaDelta": {"base_lr": 1.0, "momentum": 0.95, "delta": 1e-6},
    "Adam": {"base_lr": 0.0001, "momentum": 0.9, "momentum2": 0.999, "delta": 1e-8},
}
PREFIX = "finetune"
LR_POLICIES = ("step", "exp", "fixed")
FILES = ("train_val.prototxt", "solver.prototxt", "deploy.prototxt")
_ACCURACY = re.compile(r"Test net output #\d+: accuracy = (\S+)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `finetune` subcommand."""
    p = sub.add_parser(
        "finetune", help="fine-tune a pretrained deploy net on image folders: writes train_val, solver and "
                         "deploy prototxts, the LMDBs and the mean, then trains (Caffe's fine-tuning recipe)",
        description="Write what Caffe's fine-tuning recipe needs (LMDBs, mean, train_val.prototxt with a renamed, "
                    "resized head learning 10x faster, solver.prototxt, deploy.prototxt) into -output, and train "
                    "with caffecompat train -weights.")
    flag(p, "model", required=True, metavar="FILE", help="the pretrained net's deploy.prototxt (an Input layer)")
    flag(p, "weights", default="", metavar="FILE", help="its .caffemodel (copied by layer name, the head excepted)")
    flag(p, "noweights", action="store_true",
         help="train the same recipe from the fillers (no pretrained weights): the baseline fine-tuning must beat")
    flag(p, "train", default="", metavar="DATA",
         help="training images: an image folder (one subfolder per class), a list file ('path label' lines, "
              "paths under -root) or an LMDB of Datum records")
    flag(p, "val", default="", metavar="DATA", help="validation images, as -train (labelled in -train's class order)")
    flag(p, "root", default="", metavar="FOLDER", help="list files: the folder their paths are relative to "
                                                       "(default: the list file's folder)")
    flag(p, "output", required=True, metavar="FOLDER", help="where to write everything (created)")
    flag(p, "head", default="", metavar="LAYER",
         help="the classifier layer to replace (default: the last InnerProduct or 1x1 Convolution before the "
              "final Softmax); it is renamed LAYER_ft")
    flag(p, "freeze_below", default="", metavar="LAYER",
         help="freeze every layer up to and including LAYER (lr_mult 0 on all its blobs, BatchNorm's global "
              "statistics): no backward below it")
    flag(p, "solver_type", default="SGD", choices=sorted(SOLVER_DEFAULTS), help="the solver (default SGD)")
    flag(p, "base_lr", type=float, default=None, help="the base learning rate (default: per solver type, see "
                                                      "README.md: SGD 0.001, Adam 0.0001)")
    flag(p, "lr_policy", default="step", metavar="POLICY",
         help="the solver's lr_policy: step (default: x gamma after 3/4 of the run), exp (x gamma every "
              "iteration) or fixed")
    flag(p, "gamma", type=float, default=None,
         help="the lr_policy's gamma (default: step 0.1; exp 0.1^(1/iterations), a tenfold fall over the run)")
    flag(p, "iterations", type=int, default=None, metavar="N",
         help="training iterations (default 1000; resuming: the solver's max_iter)")
    flag(p, "batch", type=int, default=16, metavar="N", help="training batch size (default 16)")
    flag(p, "resize_height", type=int, default=0, metavar="H",
         help="image height in the LMDBs (default: the input's, x 8/7 when cropping: 256 for 224)")
    flag(p, "resize_width", type=int, default=0, metavar="W", help="image width in the LMDBs (as -resize_height)")
    flag(p, "crop_size", type=int, default=-1, metavar="N",
         help="transform_param crop_size (default: the input's size; 0: no crop, images resized to the input)")
    flag(p, "mirror", action="store_true", default=True, help="mirror TRAIN images at random (default; -nomirror)")
    flag(p, "mean_value", default="", metavar="B,G,R",
         help="per-channel means for transform_param mean_value (default: the training images' mean file)")
    flag(p, "scale", type=float, default=None, help="transform_param scale, applied after the mean")
    flag(p, "seed", type=int, default=1701, help="the solver's random_seed (default 1701)")
    flag(p, "snapshot", default="", metavar="FILE", help="resume from this .solverstate with -output's files")
    flag(p, "overwrite", action="store_true", help="replace a previous run in -output")
    flag(p, "processes", type=int, default=0, metavar="N", help="train data-parallel on N processes (train's "
                                                                "-processes; needs caffecompat[mpi])")
    add_threads_flag(p)
    add_gpu_flags(p, several=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Prepare the files (or find them, resuming), train, report the validation accuracy."""
    out = Path(args.output)
    if args.iterations is not None and args.iterations < 1:
        raise CaffeCompatError(f"-iterations {args.iterations}: must be at least 1")
    if args.batch < 1:
        raise CaffeCompatError(f"-batch {args.batch}: must be at least 1")
    if args.lr_policy not in LR_POLICIES:
        raise CaffeCompatError(f"-lr_policy {args.lr_policy}: not supported by finetune (it writes "
                               f"{', '.join(LR_POLICIES)}); edit lr_policy in -output's solver.prototxt and run "
                               "caffecompat train -solver on it")
    if args.gamma is not None and not (0 < args.gamma <= 1 or args.lr_policy == "fixed"):
        raise CaffeCompatError(f"-gamma {args.gamma}: the rate's factor must be in (0, 1] (e.g. 0.1 for step, "
                               "0.99 for exp)")
    if args.snapshot:
        missing = [f for f in FILES if not (out / f).is_file()]
        if missing:
            raise CaffeCompatError(f"-snapshot {args.snapshot}: {out} has no {', '.join(missing)} of a previous "
                                   "finetune run to resume; give the -output of that run")
        classes = _labels_count(out)
    else:
        args.iterations = args.iterations or 1000
        classes = _prepare(args, out)
    solver = str(out / "solver.prototxt")
    status, accuracy = _train(args, solver)
    if status:
        return status
    weights = _snapshot_name(solver, args.iterations)
    if accuracy is None:
        accuracy = _score(out, weights)
    chance = 1.0 / classes
    glog.info("finetune.py", f"Fine-tuned validation accuracy {accuracy:.4g} against chance {chance:.4g} "
                             f"({classes} classes): {'above' if accuracy > chance else 'NOT above'} chance. "
                             f"Predict with: caffecompat classify -model {out / 'deploy.prototxt'} -weights {weights} "
                             f"{_classify_flags(out)}")
    return 0


# ---- the files ------------------------------------------------------------------------------------------


def _header(args: argparse.Namespace, what: str) -> str:
    weights = f"-weights {args.weights}" if args.weights else "-noweights"
    return (f"# {what}, written by caffecompat finetune -model {args.model} {weights} "
            f"-train {args.train} -val {args.val}\n# Edit it freely: caffecompat train -solver solver.prototxt "
            "-weights ... reads it as it is.\n")


def _write_prototxt(path: Path, header: str, msg) -> None:
    outfiles.write_atomic(path, (header + text_format.MessageToString(msg)).encode("utf-8"), "prototxt")


def _check_output(out: Path, overwrite: bool) -> None:
    previous = [f for f in FILES + ("train_lmdb", "val_lmdb", "snapshots") if (out / f).exists()]
    if out.exists() and not out.is_dir():
        raise CaffeCompatError(f"-output {out}: is a file; give a folder")
    if previous and not overwrite:
        raise CaffeCompatError(f"-output {out}: holds a previous run ({', '.join(previous)}); pass -overwrite to "
                               "replace it, -snapshot FILE to resume it, or another -output")
    for f in previous:
        shutil.rmtree(out / f) if (out / f).is_dir() else (out / f).unlink()


def _prepare(args: argparse.Namespace, out: Path) -> int:
    if args.noweights and args.weights:
        raise CaffeCompatError(f"-noweights and -weights {args.weights}: give one (-noweights trains the recipe "
                               "from the fillers)")
    if not args.weights and not args.noweights:
        raise CaffeCompatError("-weights: give the pretrained .caffemodel to fine-tune from (or -noweights to "
                               "train the same recipe from the fillers)")
    if args.weights and not Path(args.weights).is_file():
        raise CaffeCompatError(f"-weights {args.weights}: no such caffemodel file")
    if not args.train or not args.val:
        raise CaffeCompatError("-train and -val: give the training and validation images (image folders, "
                               "list files or LMDBs)")
    deploy = read_net_prototxt(args.model)
    head = surgery.find_head(deploy, args.model, args.head)
    if args.weights:
        _check_weights(args.weights, deploy, args.model, head)
    freeze_upto = None
    if args.freeze_below:
        freeze_upto = surgery.layer_index(deploy, args.freeze_below, "-freeze_below", args.model)
        if freeze_upto >= head:
            raise CaffeCompatError(f"-freeze_below {args.freeze_below}: it is not below the head "
                                   f"{deploy.layer[head].name}; give a layer before it")
    channels, height, width = surgery.input_chw(deploy, args.model)
    crop = height if args.crop_size < 0 and height == width else max(0, args.crop_size)
    if args.crop_size < 0 and height != width:
        crop = 0  # Caffe's crop_size is square: a non-square input is resized to, not cropped
    if crop and crop != height or crop and crop != width:
        raise CaffeCompatError(f"-crop_size {crop}: the net's input is {height} x {width}; the crop must match it")
    # Caffe's recipes store images larger than the crop (256 for a 224 crop): random crops then vary.
    margin = round(crop * 8 / 7) if crop else 0
    rh = args.resize_height or margin or height
    rw = args.resize_width or margin or width
    if rh < height or rw < width:
        raise CaffeCompatError(f"-resize_height/-resize_width {rh} x {rw}: smaller than the net's input "
                               f"{height} x {width}")
    mean_values = _mean_values(args.mean_value, channels)
    _check_folders(args.train, args.val)
    _check_output(out, args.overwrite)
    out.mkdir(parents=True, exist_ok=True)

    opts = Options(gray=channels == 1, shuffle=True, resize_height=rh, resize_width=rw)
    train_db, classes_names, _ = _database(args.train, "-train", out / "train_lmdb", opts, None, out, args.root)
    val_opts = Options(gray=channels == 1, resize_height=rh, resize_width=rw)
    val_db, _, val_count = _database(args.val, "-val", out / "val_lmdb", val_opts, classes_names, out, args.root)
    classes = len(classes_names)

    transform = caffe_pb2.TransformationParameter()
    if args.scale is not None:
        transform.scale = args.scale
    if crop:
        transform.crop_size = crop
    if mean_values:
        transform.mean_value.extend(mean_values)
    else:
        mean, _ = compute_mean(train_db)
        write_mean(str(out / "mean.binaryproto"), mean)
        transform.mean_file = str((out / "mean.binaryproto").resolve())
    test_iter = math.ceil(val_count / args.batch)
    data = surgery.Data(train_source=str(Path(train_db).resolve()), val_source=str(Path(val_db).resolve()),
                        train_batch=args.batch, test_batch=math.ceil(val_count / test_iter), transform=transform,
                        mirror=args.mirror)
    # A BatchNorm from the fillers holds zero statistics (BatchNormLayer's mean, variance and factor 0): with
    # use_global_stats its output is x / sqrt(eps), and a deep net overflows. -noweights uses the batch's.
    train_val, new_deploy = surgery.finetune_nets(deploy, args.model, head, classes, data, freeze_upto,
                                                  global_stats=not args.noweights)
    if args.noweights:
        glog.info("finetune.py", "-noweights: every layer starts from its fillers; BatchNorm layers have no stored "
                                 "statistics and use the batch's (their moving averages in TEST)")
    _write_prototxt(out / "train_val.prototxt", _header(args, "The fine-tuning net"), train_val)
    _write_prototxt(out / "deploy.prototxt", _header(args, "The fine-tuned net for classify"), new_deploy)
    solver = _solver(args, out, test_iter)
    # Caffe's solver files name their net first (models/*/solver.prototxt), whatever its field number.
    net_line = f"net: {text_format.MessageToString(caffe_pb2.SolverParameter(net=solver.net)).split(': ', 1)[1]}"
    solver.ClearField("net")
    _write_prototxt(out / "solver.prototxt", _header(args, f"The {args.solver_type} solver") + net_line, solver)
    glog.info("finetune.py", f"Wrote {out / 'train_val.prototxt'} (head {deploy.layer[head].name} -> "
                             f"{new_deploy.layer[head].name}, {classes} classes"
                             + (f", frozen up to {args.freeze_below}" if freeze_upto is not None else "")
                             + f"), {out / 'solver.prototxt'} and {out / 'deploy.prototxt'}")
    return classes


def _check_weights(path: str, deploy: caffe_pb2.NetParameter, model: str, head: int) -> None:
    """Refuse a -weights file that is unreadable or shares no layer with the deploy, before anything is written."""
    from caffecompat.formats.caffemodel import read_weights
    from caffecompat.formats.hdf5_snapshot import is_hdf5

    if is_hdf5(path):
        return  # Net::ToHDF5 weights: train's CopyTrainedLayersFrom reads and checks them
    try:
        weights = read_weights(path)
    except CaffeCompatError as e:  # a text file, a .solverstate, a truncated download: the flag, then why
        raise CaffeCompatError(f"-weights {e}") from None
    names = {lp.name for i, lp in enumerate(deploy.layer) if i != head}
    copied = [name for name, blobs in weights.layers if blobs and name in names]
    if not copied:
        raise CaffeCompatError(f"-weights {path}: none of its layers is named as a layer of {model} (the head "
                               f"{deploy.layer[head].name} excepted), so nothing would be copied; give the "
                               "caffemodel trained with this deploy net (or -noweights to train from the fillers)")


def _mean_values(text: str, channels: int) -> list[float]:
    if not text:
        return []
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CaffeCompatError(f"-mean_value {text}: expected numbers such as 104,117,123") from None
    if len(values) not in (1, channels):
        raise CaffeCompatError(f"-mean_value {text}: give 1 or {channels} values (one per input channel)")
    return values


def _check_folders(train: str, val: str) -> None:
    """Refuse bad image folders before anything is written (so a fixed rerun needs no -overwrite)."""
    for flag_name, source in (("-train", train), ("-val", val)):
        if not os.path.exists(source):
            raise CaffeCompatError(f"{flag_name} {source}: no such image folder, list file or LMDB")
    if _is_lmdb(train) or not os.path.isdir(train):
        return
    found = image_folder.scan(train, None)
    counts = {label: 0 for label in range(len(found.classes))}
    for _, label in found.items:
        counts[label] += 1
    _check_classes("-train", train, found.classes, counts, training=True)
    if os.path.isdir(val) and not _is_lmdb(val):
        unknown = [c for c in image_folder.scan(val, None).classes if c not in found.classes]
        if unknown:
            raise CaffeCompatError(f"-val {val}: class folder(s) {', '.join(unknown)} are not classes of -train; "
                                   "remove them or add them to -train")


def _is_lmdb(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "data.mdb"))


def _database(source: str, flag_name: str, db: Path, opts: Options, classes: list[str] | None,
              out: Path, list_root: str) -> tuple[str, list[str], int]:
    """(the LMDB to read, the class names, the image count) for -train or -val."""
    if _is_lmdb(source):
        counts = _lmdb_labels(source)
        names = classes or _names_beside(source, counts)
        _check_classes(flag_name, source, names, counts, training=classes is None)
        if classes is None:
            image_folder.write_labels(str(out / "labels.txt"), names)
        return source, names, sum(counts.values())
    if os.path.isdir(source):
        found = image_folder.scan(source, None)
        if classes is not None:
            unknown = [c for c in found.classes if c not in classes]
            if unknown:
                raise CaffeCompatError(f"{flag_name} {source}: class folder(s) {', '.join(unknown)} are not "
                                       "classes of -train; remove them or add them to -train")
            found = image_folder.scan(source, str(out / "labels.txt"))
        names = found.classes
        counts = {label: 0 for label in range(len(names))}
        for _, label in found.items:
            counts[label] += 1
        if classes is None:
            _check_classes(flag_name, source, names, counts, training=True)
            image_folder.write_labels(str(out / "labels.txt"), names)
        root = source if source.endswith(("/", os.sep)) else source + "/"
        lines = found.list_lines()
        what = f"image folder {source}"
    elif os.path.isfile(source):
        lines = listfile.read_list(source, "image list")
        counts = {}
        for _, label, _ in lines:
            counts[label] = counts.get(label, 0) + 1
        names = classes or [str(k) for k in range(max(counts) + 1)]
        _check_classes(flag_name, source, names, counts, training=classes is None)
        if classes is None:
            image_folder.write_labels(str(out / "labels.txt"), names)
        root = (list_root or os.path.dirname(os.path.abspath(source))).rstrip("/" + os.sep) + "/"
        what = source
    else:
        raise CaffeCompatError(f"{flag_name} {source}: no such image folder, list file or LMDB")
    result = convert_imageset(root, what, str(db), opts, lines=lines)
    return str(db), names, result.count


def _lmdb_labels(path: str) -> dict[int, int]:
    reader = dbs.open_reader(path, "lmdb", "")
    counts: dict[int, int] = {}
    try:
        for key, value in reader.records():
            label = datum_codec.parse(value, f"{path} record '{key.decode('utf-8', 'replace')}'").label
            counts[label] = counts.get(label, 0) + 1
    finally:
        reader.close()
    return counts


def _names_beside(path: str, counts: dict[int, int]) -> list[str]:
    labels = os.path.join(os.path.dirname(os.path.abspath(path)), "labels.txt")
    if os.path.isfile(labels):
        return image_folder.read_classes(labels)
    return [str(k) for k in range(max(counts) + 1)] if counts else []


def _check_classes(flag_name: str, source: str, names: list[str], counts: dict[int, int], training: bool) -> None:
    bad = [k for k in counts if k < 0 or k >= len(names)]
    if bad:
        raise CaffeCompatError(f"{flag_name} {source}: label {bad[0]} is outside the {len(names)} classes "
                               f"(0 to {len(names) - 1})")
    if not training:
        return
    if len(names) < 2:
        raise CaffeCompatError(f"{flag_name} {source}: has only one class ({names[0] if names else 'none'}); "
                               "fine-tuning a classifier needs images of two classes or more")
    empty = [names[k] for k in range(len(names)) if not counts.get(k)]
    if empty:
        raise CaffeCompatError(f"{flag_name} {source}: class(es) {', '.join(empty)} have no images; add images "
                               "or remove the class")


def _test_interval(iterations: int) -> int:
    # A divisor of the run, so Solver::Solve's last test scores the final weights.
    for parts in (4, 5, 3, 2, 6, 8, 10):
        if iterations % parts == 0:
            return iterations // parts
    return iterations


def _solver(args: argparse.Namespace, out: Path, test_iter: int) -> caffe_pb2.SolverParameter:
    s = caffe_pb2.SolverParameter()
    s.net = str((out / "train_val.prototxt").resolve())
    s.test_iter.append(test_iter)
    s.test_interval = _test_interval(args.iterations)
    defaults = SOLVER_DEFAULTS[args.solver_type]
    s.base_lr = args.base_lr if args.base_lr is not None else defaults["base_lr"]
    s.display = max(1, min(20, args.iterations // 20))
    s.max_iter = args.iterations
    s.lr_policy = args.lr_policy
    if args.lr_policy == "step":
        # The Flickr Style recipe's schedule: the rate falls tenfold once, here after 3/4 of the run.
        s.gamma = args.gamma if args.gamma is not None else 0.1
        s.stepsize = max(1, (3 * args.iterations) // 4)
    elif args.lr_policy == "exp":
        # SGDSolver::GetLearningRate "exp": base_lr * gamma^iter; by default a tenfold fall over the run.
        s.gamma = args.gamma if args.gamma is not None else 0.1 ** (1.0 / args.iterations)
    for name in ("momentum", "momentum2", "delta", "rms_decay"):
        if name in defaults:
            setattr(s, name, defaults[name])
    s.weight_decay = 0.0005
    s.snapshot = args.iterations
    s.snapshot_prefix = str((out / "snapshots" / PREFIX).resolve())
    s.random_seed = args.seed
    s.type = args.solver_type
    (out / "snapshots").mkdir(exist_ok=True)
    return s


# ---- training --------------------------------------------------------------------------------------------


def _train(args: argparse.Namespace, solver: str) -> tuple[int, float | None]:
    """Run `caffecompat train` on the solver: its status and the last test accuracy it logged here (or None)."""
    from caffecompat.cli import parse_args

    argv = ["train", "-solver", solver]
    if args.snapshot:
        argv += ["-snapshot", args.snapshot]
        if args.iterations is not None:
            argv += ["-iterations", str(args.iterations)]
    elif args.weights:
        argv += ["-weights", args.weights]
    if args.processes:
        argv += ["-processes", str(args.processes)]
    if args.threads:
        argv += ["-threads", str(args.threads)]
    if args.gpu:
        argv += ["-gpu", args.gpu]
    if args.allow_cpu_fallback:
        argv += ["-allow_cpu_fallback"]
    seen: list[float] = []

    def listen(severity: str, line: str) -> None:
        m = _ACCURACY.search(line)
        if m:
            seen.append(float(m[1]))

    glog.info("finetune.py", "Training: caffecompat " + " ".join(argv))
    train_args = parse_args(argv)
    glog.add_listener(listen)
    try:
        status = int(train_args.func(train_args) or 0)
    finally:
        glog.remove_listener(listen)
    return status, (seen[-1] if seen else None)


def _snapshot_name(solver: str, iterations: int | None) -> str:
    """Solver::SnapshotFilename of the run's last iteration: <prefix>_iter_<N>.caffemodel."""
    from caffecompat.formats.solver import read_solver_prototxt

    s = read_solver_prototxt(solver)
    return f"{s.snapshot_prefix}_iter_{iterations or s.max_iter}.caffemodel"


def _score(out: Path, weights: str) -> float:
    """The accuracy of `weights` on the validation data (when training ran in other processes)."""
    from caffecompat.cli import parse_args
    from caffecompat.formats.solver import read_solver_prototxt

    s = read_solver_prototxt(str(out / "solver.prototxt"))
    seen: list[float] = []

    def listen(severity: str, line: str) -> None:
        m = re.search(r"\] accuracy = (\S+)", line)
        if m:
            seen.append(float(m[1]))

    test_args = parse_args(["test", "-model", s.net, "-weights", weights, "-iterations", str(s.test_iter[0])])
    glog.add_listener(listen)
    try:
        test_args.func(test_args)
    finally:
        glog.remove_listener(listen)
    if not seen:
        raise CaffeCompatError(f"{s.net}: scoring {weights} logged no accuracy")
    return seen[-1]


def _labels_count(out: Path) -> int:
    labels = out / "labels.txt"
    if not labels.is_file():
        raise CaffeCompatError(f"{out}: has no labels.txt of a previous finetune run; give its -output")
    return len(image_folder.read_classes(str(labels)))


def _classify_flags(out: Path) -> str:
    net = read_net_prototxt(str(out / "train_val.prototxt"))
    t = next(lp.transform_param for lp in net.layer if lp.type == "Data")
    flags = [f"-mean_file {t.mean_file}"] if t.mean_file else [
        "-mean_value " + ",".join(f"{v:g}" for v in t.mean_value)]
    if t.HasField("scale"):
        flags.append(f"-scale {t.scale:g}")
    if t.crop_size:
        # classify resizes to what the TEST Data layer reads before its centre crop: the stored images' size.
        test = next(lp for lp in net.layer
                    if lp.type == "Data" and lp.include and lp.include[0].phase == caffe_pb2.TEST)
        reader = dbs.open_reader(test.data_param.source, "lmdb", "")
        try:
            _, value = reader.first()
            _, h, w = datum_codec.shape_of(datum_codec.parse(value, test.data_param.source),
                                           datum_codec.ColorMode.NATIVE, test.data_param.source)
        finally:
            reader.close()
        flags.append(f"-images_dim {h},{w}")
    flags.append(f"-labels {out / 'labels.txt'}")
    return " ".join(flags)
