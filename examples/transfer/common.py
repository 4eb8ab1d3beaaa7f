"""What the three transfer-learning examples share: the two data sets, the nets, and running caffecompat.

The pretrained model plays the part of a Model Zoo net: a net trained on a
large *source* task, the four classes of the shapes example (circle, square,
triangle, cross: examples/shapes/make_images.py). The *target* task is new: five
other shapes (star, ring, chevron, half disc, arrow) drawn the same way, with
only a few labelled training images per class, stored as an image folder (one
subfolder per class), as data sets are shipped today. Everything is generated
from seeds: no download.

Each example runs caffecompat's commands in this process and writes each
command's log to its work folder; the commands are printed as a user would
type them. The pretrained weights are cached in the work folder (keyed by the
settings that made them), so the examples can share one pretraining run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TARGET_CLASSES = ("star", "ring", "chevron", "half_disc", "arrow")


@dataclass(frozen=True)
class Setting:
    """The sizes of one run: `small` for CI (tens of seconds), `full` for the numbers in the README."""

    name: str
    size: int  # image side, pixels
    source_train: int  # source-task training images (4 classes)
    source_val: int
    pretrain_iters: int
    target_train_per_class: int  # the few labelled target images per class
    target_val_per_class: int
    finetune_iters: int
    seed: int = 1


SMALL = Setting("small", size=24, source_train=1200, source_val=200, pretrain_iters=300, target_train_per_class=8,
                target_val_per_class=40, finetune_iters=60)
FULL = Setting("full", size=32, source_train=6000, source_val=1000, pretrain_iters=1500, target_train_per_class=10,
               target_val_per_class=200, finetune_iters=300)


# ---- data --------------------------------------------------------------------------------------------


def _shapes_module():
    spec = importlib.util.spec_from_file_location("shapes_make_images", REPO / "examples/shapes/make_images.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def draw_target(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One size x size BGR image of target class `label`, in the shapes example's style (random colours,
    position, size and rotation on a noisy gradient)."""
    while True:
        bg, fg = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        if np.abs(bg - fg).sum() >= 180:
            break
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.zeros((size, size, 3)) + bg
    img += (rng.uniform(-30, 30) * xx + rng.uniform(-30, 30) * yy)[..., None]
    img += rng.normal(0, 12, img.shape)
    canvas = np.clip(img, 0, 255).astype(np.uint8)
    r = rng.uniform(0.25, 0.38) * size
    cx, cy = rng.uniform(r + 1, size - r - 1, 2)
    angle = rng.uniform(0, 2 * np.pi)
    colour = tuple(int(v) for v in fg)
    shift = 4

    def poly(points: np.ndarray) -> None:
        c, s = np.cos(angle), np.sin(angle)
        pts = points @ np.array([[c, s], [-s, c]]) + (cx, cy)
        cv2.fillPoly(canvas, [np.round(pts * (1 << shift)).astype(np.int32)], colour, cv2.LINE_AA, shift)

    name = TARGET_CLASSES[label]
    if name == "star":
        a = np.arange(10) * np.pi / 5
        radius = np.where(np.arange(10) % 2 == 0, r, r * 0.42)
        poly(np.stack([radius * np.cos(a), radius * np.sin(a)], axis=1))
    elif name == "ring":
        thickness = max(2, int(round(r * rng.uniform(0.25, 0.4))))
        cv2.circle(canvas, (int(round(cx)), int(round(cy))), int(round(r - thickness / 2)), colour, thickness,
                   cv2.LINE_AA)
    elif name == "chevron":
        w = r * 0.35
        poly(np.array([[-r, -r], [0, r - 2 * w], [r, -r], [r, -r + 2 * w], [0, r], [-r, -r + 2 * w]]) * 0.9)
    elif name == "half_disc":
        a = np.linspace(0, np.pi, 24)
        poly(np.stack([r * np.cos(a), r * np.sin(a) - r / 2], axis=1))
    else:  # arrow: a bar and a head
        w = r * 0.2
        poly(np.array([[-r, -w], [0.1 * r, -w], [0.1 * r, -2.5 * w], [r, 0], [0.1 * r, 2.5 * w], [0.1 * r, w],
                       [-r, w]]))
    noisy = canvas.astype(np.int16) + rng.normal(0, 6, canvas.shape).astype(np.int16)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def make_target_folder(out: Path, per_class: int, size: int, rng: np.random.Generator) -> None:
    """An image folder: out/<class>/<index>.png, `per_class` images of each target class."""
    for label, name in enumerate(TARGET_CLASSES):
        (out / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            cv2.imwrite(str(out / name / f"{i:04d}.png"), draw_target(label, size, rng))


@dataclass
class Data:
    """Paths of the prepared data, relative to the work folder (where the commands run)."""

    source_train: str = "source_train_lmdb"
    source_val: str = "source_val_lmdb"
    mean: str = "source_mean.binaryproto"
    target_train: str = "target_train_lmdb"
    target_val: str = "target_val_lmdb"
    target_val_folder: str = "data/target/val"
    labels: str = "target_labels.txt"


def prepare_data(ex: Example) -> Data:
    """Generate both data sets and convert them (convert-lmdb, compute-mean), unless already done."""
    work, setting, note = ex.work, ex.setting, ex.note
    data = Data()
    stamp = work / "data" / "settings.json"
    wanted = json.dumps(asdict(setting), sort_keys=True)
    if stamp.is_file() and stamp.read_text() == wanted:
        note("data: reusing the images and databases made earlier with these settings")
        return data
    for name in ("source_train_lmdb", "source_val_lmdb", "target_train_lmdb", "target_val_lmdb"):
        _remove(work / name)
    _remove(work / "data")
    note(f"data: {setting.source_train} source images (4 classes) and {setting.target_train_per_class} "
             f"training + {setting.target_val_per_class} validation images per target class "
             f"({len(TARGET_CLASSES)} classes), {setting.size} x {setting.size}")
    _shapes_module().main([str(work / "data" / "source"), "--train", str(setting.source_train), "--val",
                           str(setting.source_val), "--seed", str(setting.seed), "--size", str(setting.size)])
    rng = np.random.default_rng(setting.seed + 1000)
    make_target_folder(work / "data" / "target" / "train", setting.target_train_per_class, setting.size, rng)
    make_target_folder(work / "data" / "target" / "val", setting.target_val_per_class, setting.size, rng)
    run = ex.run
    run("convert-lmdb", "-shuffle", "data/source/", "data/source/train.txt", data.source_train,
        log="data/source_train.log", shared=True)
    run("convert-lmdb", "data/source/", "data/source/val.txt", data.source_val, log="data/source_val.log", shared=True)
    run("compute-mean", data.source_train, data.mean, log="data/mean.log", shared=True)
    # The target set is an image folder: labels by sorted class name, written to a labels file.
    run("convert-lmdb", "-shuffle", "-labels_file", data.labels, "data/target/train", data.target_train,
        log="data/target_train.log", shared=True)
    run("convert-lmdb", "-classes", data.labels, "data/target/val", data.target_val, log="data/target_val.log",
        shared=True)
    stamp.write_text(wanted)
    return data


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


# ---- the shapes net -------------------------------------------------------------------------------------


def _data_layers(train: str, val: str, mean: str, train_batch: int, test_batch: int) -> str:
    def one(phase: str, source: str, batch: int, mirror: bool) -> str:
        return (f'layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: {phase} }}\n'
                f'  transform_param {{ mirror: {str(mirror).lower()} mean_file: "{mean}" scale: 0.0078125 }}\n'
                f'  data_param {{ source: "{source}" batch_size: {batch} backend: LMDB }} }}\n')
    return one("TRAIN", train, train_batch, True) + one("TEST", val, test_batch, False)


def _param(mult: float) -> str:
    return f"param {{ lr_mult: {mult:g} }} param {{ lr_mult: {2 * mult:g} }}"


def shapes_body() -> str:
    """The shapes example's net (caffecompat/examples/shapes) up to ip1, its 64 features: conv-pool-conv-pool-ip."""
    conv = ('layer {{ name: "{n}" type: "Convolution" bottom: "{b}" top: "{n}" {p}\n'
            '  convolution_param {{ num_output: {k} pad: 2 kernel_size: 5 weight_filler {{ type: "xavier" }} '
            'bias_filler {{ type: "constant" }} }} }}\n'
            'layer {{ name: "relu_{n}" type: "ReLU" bottom: "{n}" top: "{n}" }}\n'
            'layer {{ name: "pool_{n}" type: "Pooling" bottom: "{n}" top: "pool_{n}" '
            'pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}\n')
    return (conv.format(n="conv1", b="data", k=16, p=_param(1))
            + conv.format(n="conv2", b="pool_conv1", k=32, p=_param(1))
            + f'layer {{ name: "ip1" type: "InnerProduct" bottom: "pool_conv2" top: "ip1" {_param(1)}\n'
              '  inner_product_param { num_output: 64 weight_filler { type: "xavier" } '
              'bias_filler { type: "constant" } } }\n'
              'layer { name: "relu_ip1" type: "ReLU" bottom: "ip1" top: "ip1" }\n')


def head(bottom: str, name: str, classes: int, mult: float, deploy: bool = False) -> str:
    """The classifier layer `name` (lr_mult `mult`/2x`mult`) and the loss and accuracy (or, deploy, prob)."""
    text = (f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{name}" {_param(mult)}\n'
            f'  inner_product_param {{ num_output: {classes} weight_filler {{ type: "xavier" }} '
            'bias_filler { type: "constant" } } }\n')
    if deploy:
        return text + f'layer {{ name: "prob" type: "Softmax" bottom: "{name}" top: "prob" }}\n'
    return text + (f'layer {{ name: "accuracy" type: "Accuracy" bottom: "{name}" bottom: "label" top: "accuracy" '
                   'include { phase: TEST } }\n'
                   f'layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "{name}" bottom: "label" top: "loss" }}\n')


def shapes_net(train: str, val: str, classes: int, head_name: str, head_mult: float = 1, mean: str = "",
               train_batch: int = 50, test_batch: int = 50) -> str:
    """The shapes net reading `train` / `val` LMDBs, with a `classes`-way head called `head_name`."""
    return (f'name: "ShapesNet"\n{_data_layers(train, val, mean or Data.mean, train_batch, test_batch)}'
            + shapes_body() + head("ip1", head_name, classes, head_mult))


# ---- running caffecompat -------------------------------------------------------------------------------


class Example:
    """One example's run: the shared work folder (data, pretrained nets), its own subfolder, the setting.

    Commands run in this process from the work folder, as Caffe resolves the
    paths inside prototxts against the working directory; each one's log goes
    to a file in the example's subfolder, and the command is printed.
    """

    def __init__(self, name: str, description: str, argv: list[str] | None) -> None:
        import argparse

        parser = argparse.ArgumentParser(description=description)
        parser.add_argument("--work", type=Path, default=HERE / "work",
                            help="work folder, shared by the three examples (default examples/transfer/work): data "
                                 "and pretrained weights made there are reused when the settings match")
        parser.add_argument("--full", action="store_true",
                            help="the full setting (more data and iterations: minutes) instead of the small one")
        args = parser.parse_args(argv)
        self.setting = FULL if args.full else SMALL
        self.name = name
        self.work = args.work.resolve()
        (self.work / name).mkdir(parents=True, exist_ok=True)
        self.start = time.monotonic()

    def note(self, text: str) -> None:
        """A progress line, with the seconds since the start."""
        print(f"[{time.monotonic() - self.start:6.1f} s] {text}", flush=True)

    def path(self, name: str) -> str:
        """`name` inside this example's subfolder, relative to the work folder."""
        return f"{self.name}/{name}"

    def write(self, name: str, text: str) -> str:
        """Write a prototxt (or any text) into the example's subfolder; returns its path from the work folder."""
        (self.work / self.name / name).write_text(text)
        return self.path(name)

    def run(self, *args: str, log: str | None = None, shared: bool = False) -> str:
        """`caffecompat ARGS`; returns its log. A failing command stops the example, showing its last log lines."""
        from caffecompat.cli import main

        name = (log or f"{args[0]}.log") if shared else self.path(log or f"{args[0]}.log")
        self.note(f"$ caffecompat {shlex.join(args)}" + (f"   (log: {name})" if log else ""))
        path = self.work / name
        old = os.getcwd()
        os.chdir(self.work)
        try:
            with open(path, "w") as f, contextlib.redirect_stderr(f):
                rc = main(list(args))
        finally:
            os.chdir(old)
        text = path.read_text()
        if rc != 0:
            tail = "\n".join(text.splitlines()[-15:])
            raise SystemExit(f"caffecompat {args[0]} failed (exit status {rc}); the end of {path}:\n{tail}")
        return text

    def report(self, title: str, rows: list[tuple[str, float]], extra: dict | None = None) -> dict:
        """Print the measured accuracies and write them to <example>/results.json."""
        print(f"\n{title}")
        width = max(len(name) for name, _ in rows)
        for name, value in rows:
            print(f"  {name:<{width}}  {value:.3f}")
        results = {name: value for name, value in rows} | (extra or {}) | {"setting": self.setting.name}
        (self.work / self.name / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        print(f"(done in {time.monotonic() - self.start:.0f} s; outputs in {self.work / self.name})")
        return results


def test_accuracies(log: str) -> list[float]:
    """The accuracy of every test pass in a training log (`Test net output #i: accuracy = X`)."""
    return [float(v) for v in re.findall(r"Test net output #\d+: accuracy = (\S+)", log)]


def solver(net: str, prefix: str, *, base_lr: float, iters: int, test_iter: int, test_interval: int,
           stepsize: int = 0, solver_type: str = "SGD", lr_policy: str = "step", gamma: float = 0.1,
           snapshot: int = 0, display: int = 10, weight_decay: float = 0.0005) -> str:
    """A solver prototxt."""
    momentum = "momentum: 0.9\n" + ("momentum2: 0.999\n" if solver_type == "Adam" else "")
    step = f"stepsize: {stepsize}\n" if lr_policy == "step" else ""
    return (f'net: "{net}"\ntest_iter: {test_iter}\ntest_interval: {test_interval}\ntest_initialization: false\n'
            f'base_lr: {base_lr}\n{momentum}weight_decay: {weight_decay}\nlr_policy: "{lr_policy}"\n'
            f"gamma: {gamma}\n{step}display: {display}\nmax_iter: {iters}\nsnapshot: {snapshot}\n"
            f'snapshot_after_train: true\nsnapshot_prefix: "{prefix}"\nsolver_mode: CPU\nrandom_seed: 1701\n'
            f'type: "{solver_type}"\n')


def pretrained(ex: Example, data: Data, kind: str, make_net, base_lr: float, solver_type: str = "SGD") -> str:
    """The weights of net `kind` trained on the source task; cached in the work folder, shared by the examples."""
    setting = ex.setting
    folder = ex.work / f"pretrained_{kind}"
    stamp = folder / "settings.json"
    iters = setting.pretrain_iters
    net = make_net(data.source_train, data.source_val, 4, "fc_source", head_mult=1, train_batch=32)
    solver_text = solver(f"pretrained_{kind}/net.prototxt", f"pretrained_{kind}/{kind}", base_lr=base_lr,
                         iters=iters, stepsize=iters * 2 // 3, test_iter=max(1, setting.source_val // 50),
                         test_interval=iters, solver_type=solver_type, display=max(10, iters // 10))
    source_fields = ("size", "source_train", "source_val", "seed")
    wanted = json.dumps({"net": net, "solver": solver_text, **{f: getattr(setting, f) for f in source_fields}},
                        sort_keys=True)
    weights = f"pretrained_{kind}/{kind}_iter_{iters}.caffemodel"
    if stamp.is_file() and stamp.read_text() == wanted and (ex.work / weights).is_file():
        ex.note(f"pretrained {kind} net: reusing {weights}")
        return weights
    _remove(folder)
    folder.mkdir()
    (folder / "net.prototxt").write_text(net)
    (folder / "solver.prototxt").write_text(solver_text)
    log = ex.run("train", "-solver", f"pretrained_{kind}/solver.prototxt", log=f"pretrained_{kind}/train.log",
                 shared=True)
    ex.note(f"pretrained {kind} net: source-task validation accuracy {test_accuracies(log)[-1]:.3f}")
    stamp.write_text(wanted)
    return weights


def finetune_and_scratch(ex: Example, data: Data, weights: str, make_net, *, base_lr: float, solver_type: str = "SGD",
                         lr_policy: str = "step", gamma: float = 0.1, snapshots: int = 0) -> dict[str, list[float]]:
    """Fine-tune `weights` on the target task with a renamed head (lr_mult 10/20), and train the same net with
    the same solver from scratch, for the same iterations; the test accuracies of each run."""
    setting = ex.setting
    classes = len(TARGET_CLASSES)
    train_batch = min(20, classes * setting.target_train_per_class)
    # The head is renamed fc_source -> fc_target: -weights copies every layer but that one.
    net = ex.write("train_val.prototxt", make_net(data.target_train, data.target_val, classes, "fc_target",
                                                  head_mult=10, train_batch=train_batch, test_batch=50))
    iters = setting.finetune_iters
    curves = {}
    for name, extra in (("finetuned", ["-weights", weights]), ("scratch", [])):
        (ex.work / ex.name / name).mkdir(exist_ok=True)
        ex.write(f"{name}_solver.prototxt",
                 solver(net, ex.path(f"{name}/target"), base_lr=base_lr, iters=iters, stepsize=iters // 2,
                        test_iter=classes * setting.target_val_per_class // 50,
                        test_interval=snapshots or iters // 3, solver_type=solver_type, lr_policy=lr_policy,
                        gamma=gamma, snapshot=snapshots))
        log = ex.run("train", "-solver", ex.path(f"{name}_solver.prototxt"), *extra, log=f"{name}.log")
        curves[name] = test_accuracies(log)
    return curves
