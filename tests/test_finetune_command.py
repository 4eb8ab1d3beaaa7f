"""`caffecompat finetune`: from a pretrained deploy net to a fine-tuned one, as Caffe's fine-tuning recipe.

A small BatchNorm net is pretrained here with `caffecompat train` on the shapes
example's four classes; finetune then adapts it to three of them stored as an
image folder. The files it writes must parse (ours and OpenCV's cv2.dnn), the
fine-tuned net must beat chance (1/3) by a clear margin, the frozen blobs must
come out bit-identical to the pretrained ones, and the errors for hostile
inputs must be one line each. The last test does the same on the real
open_nsfw ResNet (../shared/zoo).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from caffecompat.errors import CaffeCompatError
from caffecompat.formats.caffemodel import read_weights
from caffecompat.formats.net import read_net_prototxt
from caffecompat.formats.solver import read_solver_prototxt
from tests.cli_run import run_cli
from tests.conftest import REPO

SOURCE_CLASSES = ("circle", "square", "triangle", "cross")
TARGET = {"circle": 0, "triangle": 2, "cross": 3}  # target class name -> shape label of the drawing

_spec = importlib.util.spec_from_file_location("shapes_make_images", REPO / "examples/shapes/make_images.py")
shapes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(shapes)

BODY = """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 8 pad: 2 kernel_size: 5
    weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2" param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 16 pad: 2 kernel_size: 5
    weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1" param { lr_mult: 1 } param { lr_mult: 2 }
  inner_product_param { num_output: 32
    weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "relu3" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" param { lr_mult: 1 } param { lr_mult: 2 }
  inner_product_param { num_output: 4
    weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
"""
DEPLOY = ('name: "Small"\nlayer { name: "data" type: "Input" top: "data" '
          'input_param { shape { dim: 1 dim: 3 dim: 32 dim: 32 } } }' + BODY
          + 'layer { name: "prob" type: "Softmax" bottom: "ip2" top: "prob" }\n')


def _draw_folder(root: Path, per_class: int, rng: np.random.Generator, classes: dict[str, int]) -> Path:
    for name, label in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            cv2.imwrite(str(root / name / f"{i:03d}.png"), shapes.draw_shape(label, 32, rng))
    return root


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> dict[str, Path]:
    """A deploy net and the weights `caffecompat train` gave it on the 4 source classes, and the target folders."""
    tmp = tmp_path_factory.mktemp("pretrained")
    rng = np.random.default_rng(5)
    source = _draw_folder(tmp / "source", 300, rng, {n: i for i, n in enumerate(SOURCE_CLASSES)})
    assert run_cli(["convert-lmdb", "-shuffle", str(source), str(tmp / "source_lmdb")])[0] == 0
    data = (f'layer {{ name: "data" type: "Data" top: "data" top: "label" transform_param {{ scale: 0.0078125 '
            f'mean_value: 128 }} data_param {{ source: "{tmp / "source_lmdb"}" batch_size: 32 backend: LMDB }} }}')
    (tmp / "train.prototxt").write_text('name: "Small"\n' + data + BODY
                                        + 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" '
                                          'bottom: "label" top: "loss" }\n')
    (tmp / "solver.prototxt").write_text(
        f'net: "{tmp / "train.prototxt"}"\nbase_lr: 0.02\nmomentum: 0.9\nweight_decay: 0.0005\n'
        'lr_policy: "step"\ngamma: 0.1\nstepsize: 400\nmax_iter: 500\n'
        f'display: 0\nsnapshot_prefix: "{tmp / "pre"}"\nrandom_seed: 3\n')
    status, log = run_cli(["train", "-solver", str(tmp / "solver.prototxt")])
    assert status == 0, log
    (tmp / "deploy.prototxt").write_text(DEPLOY)
    train = _draw_folder(tmp / "target" / "train", 12, rng, TARGET)
    val = _draw_folder(tmp / "target" / "val", 20, rng, TARGET)
    return {"deploy": tmp / "deploy.prototxt", "weights": tmp / "pre_iter_500.caffemodel", "train": train,
            "val": val, "tmp": tmp}


def _args(p: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["finetune", "-model", str(p["deploy"]), "-weights", str(p["weights"]), "-train", str(p["train"]),
            "-val", str(p["val"]), "-output", str(out), "-mean_value", "128", "-scale", "0.0078125", *extra]


def _final_line(log: str) -> tuple[float, float]:
    m = re.search(r"Fine-tuned validation accuracy (\S+) against chance (\S+)", log)
    assert m, log[-2000:]
    return float(m[1]), float(m[2])


@pytest.fixture(scope="module")
def frozen_run(pretrained, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("ft") / "out"
    status, log = run_cli(_args(pretrained, out, "-freeze_below", "pool1", "-iterations", "60", "-batch", "12"))
    assert status == 0, log[-3000:]
    return out, log


def test_files_parse_and_say_what_the_recipe_says(pretrained, frozen_run):
    out, _ = frozen_run
    train_val = read_net_prototxt(out / "train_val.prototxt")
    layers = {lp.name: lp for lp in train_val.layer}
    assert "ip2" not in layers and layers["ip2_ft"].inner_product_param.num_output == 3
    head = layers["ip2_ft"]
    assert [(p.lr_mult, p.decay_mult) for p in head.param] == [(10, 1), (20, 0)]
    assert head.inner_product_param.weight_filler.type == "gaussian"
    assert head.inner_product_param.weight_filler.std == pytest.approx(0.01)
    data = [lp for lp in train_val.layer if lp.type == "Data"]
    assert [lp.include[0].phase for lp in data] == [0, 1]  # TRAIN, TEST
    assert data[0].transform_param.mirror and not data[1].transform_param.mirror
    assert data[0].transform_param.crop_size == 32  # a 32 x 32 input, images stored at 37 x 37
    assert [lp.type for lp in train_val.layer[-2:]] == ["Accuracy", "SoftmaxWithLoss"]
    # Frozen: every blob of conv1, bn1, scale1 (which had no param specs) at lr_mult 0. The BatchNorm keeps
    # explicit specs: Net::Init reads a missing one as lr_mult 1, and the layer would then run backward
    # (test_frozen_run_beats_chance_and_keeps_frozen_blobs checks it does not).
    assert [p.lr_mult for p in layers["conv1"].param] == [0, 0]
    assert [p.lr_mult for p in layers["bn1"].param] == [0, 0, 0]
    assert layers["bn1"].batch_norm_param.use_global_stats
    assert [p.lr_mult for p in layers["scale1"].param] == [0, 0]
    assert [p.lr_mult for p in layers["conv2"].param] == [1, 2]
    solver = read_solver_prototxt(str(out / "solver.prototxt"))
    assert solver.max_iter == 60 and solver.test_iter[0] * data[1].data_param.batch_size >= 60
    assert (out / "train_val.prototxt").read_text().startswith("# ")
    assert (out / "labels.txt").read_text().split() == sorted(TARGET)
    # The deploy: OpenCV's importer reads it and the fine-tuned weights, and gives 3 probabilities.
    weights = out / "snapshots" / "finetune_iter_60.caffemodel"
    dnn = cv2.dnn.readNetFromCaffe(str(out / "deploy.prototxt"), str(weights))
    img = cv2.imread(str(next((pretrained["val"] / "cross").iterdir())))
    dnn.setInput(cv2.dnn.blobFromImage(img, 0.0078125, (32, 32), (128, 128, 128), swapRB=False))
    probs = dnn.forward().ravel()
    assert probs.shape == (3,) and probs.sum() == pytest.approx(1, abs=1e-4)


def test_frozen_run_beats_chance_and_keeps_frozen_blobs(pretrained, frozen_run):
    out, log = frozen_run
    accuracy, chance = _final_line(log)
    assert chance == pytest.approx(1 / 3, abs=1e-3)
    assert accuracy > chance + 0.35, log  # measured: 0.883[-3000:]
    assert "Ignoring source layer ip2" in log
    before = read_weights(pretrained["weights"]).blobs
    after = read_weights(out / "snapshots" / "finetune_iter_60.caffemodel").blobs
    for name in ("conv1", "bn1", "scale1"):
        for a, b in zip(before[name], after[name], strict=True):
            assert np.array_equal(a, b), name
    assert not np.array_equal(before["conv2"][0], after["conv2"][0])  # above the cut it learns
    # Net::Init: nothing below the cut runs backward.
    for name in ("conv1", "bn1", "scale1"):
        assert f"{name} does not need backward computation." in log
    assert "conv2 needs backward computation." in log


def test_classify_reads_the_outputs(pretrained, frozen_run):
    out, log = frozen_run
    command = re.search(r"Predict with: caffecompat (classify .*)", log)[1].split()
    status, clog = run_cli(command + ["-output", str(out / "pred.csv"), str(pretrained["val"])])
    assert status == 0, clog[-2000:]
    assert len((out / "pred.csv").read_text().splitlines()) == 1 + 60
    # The Data layer's TEST transformation and classify's preprocessing agree: the same accuracy on the 60 images.
    assert "-images_dim 37,37" in " ".join(command)
    assert float(re.search(r"\] accuracy = (\S+)", clog)[1]) == pytest.approx(_final_line(log)[0], abs=1e-3)


def test_time_shows_no_backward_below_the_cut(frozen_run):
    out, _ = frozen_run
    status, log = run_cli(["time", "-model", str(out / "train_val.prototxt"), "-iterations", "1"])
    assert status == 0, log[-2000:]
    backward = dict(re.findall(r"^\S+ \S+ +\d+ \S+\] +(\S+)\tbackward: (\S+) ms\.", log, re.M))
    assert all(float(backward[n]) == 0 for n in ("conv1", "bn1", "scale1", "relu1", "pool1")), backward
    assert float(backward["conv2"]) > 0, backward  # the first layer above the cut runs its backward


def test_resume_trains_on(pretrained, frozen_run):
    out, _ = frozen_run
    status, log = run_cli(["finetune", "-model", str(pretrained["deploy"]), "-output", str(out), "-snapshot",
                           str(out / "snapshots" / "finetune_iter_60.solverstate"), "-iterations", "64"])
    assert status == 0, log[-2000:]
    assert "Resuming from" in log and "Ignoring source layer" not in log
    assert (out / "snapshots" / "finetune_iter_64.caffemodel").is_file()
    assert f"-weights {out / 'snapshots' / 'finetune_iter_64.caffemodel'}" in log


def test_lmdb_and_list_file_inputs(pretrained, frozen_run, tmp_path):
    """-train an existing LMDB (its labels.txt beside it names the classes), -val a list file; -nomirror."""
    first, _ = frozen_run
    lines = [f"{c}/{f.name} {label}\n" for label, c in enumerate(sorted(TARGET))
             for f in sorted((pretrained["val"] / c).iterdir())]
    (tmp_path / "val.txt").write_text("".join(lines))
    out = tmp_path / "out"
    args = _args(pretrained, out, "-iterations", "4", "-batch", "6", "-nomirror", "-root", str(pretrained["val"]))
    args[args.index("-train") + 1] = str(first / "train_lmdb")
    args[args.index("-val") + 1] = str(tmp_path / "val.txt")
    status, log = run_cli(args)
    assert status == 0, log[-2000:]
    net = read_net_prototxt(out / "train_val.prototxt")
    data = [lp for lp in net.layer if lp.type == "Data"]
    assert data[0].data_param.source == str((first / "train_lmdb").resolve())
    assert not data[0].transform_param.mirror
    assert (out / "labels.txt").read_text() == (first / "labels.txt").read_text()
    assert "Processed 60 files." in log  # the list's 60 validation images


def test_two_processes(pretrained, tmp_path):
    """-processes 2 trains through train's -processes; the accuracy is then scored on the final weights."""
    try:
        import mpi4py  # noqa: F401

        from caffecompat.parallel import launch

        launch.find_mpiexec()
    except (ImportError, CaffeCompatError):
        pytest.skip("needs the MPI extra: pip install 'caffecompat[mpi]' (mpi4py and mpich, with mpiexec)")
    out = tmp_path / "out"
    status, log = run_cli(_args(pretrained, out, "-freeze_below", "pool1", "-iterations", "20", "-batch", "6",
                                "-processes", "2"))
    assert status == 0, log[-2000:]
    accuracy, chance = _final_line(log)
    assert "caffe.cpp:321] accuracy = " in log  # scored by `test` here: the ranks logged elsewhere
    assert accuracy > chance
    assert (out / "snapshots" / "finetune_iter_20.caffemodel").is_file()


def _blobs_equal(a: Path, b: Path) -> None:
    first, second = read_weights(a).blobs, read_weights(b).blobs
    assert sorted(first) == sorted(second)
    for name in first:
        for x, y in zip(first[name], second[name], strict=True):
            assert np.array_equal(x, y), name


def test_adam_exp_resume_through_finetune_equals_straight_run(pretrained, tmp_path):
    """Adam with the exp policy: 4 iterations, finetune -snapshot to 8, bit-identical to 8 straight.

    The 36 training images make one batch (convert-lmdb's shuffle is seeded: the same order in both runs),
    with no mirror nor random crop, so what a solverstate does not hold (the data cursor, which Caffe restarts
    on resume; the transformer's random state) cannot differ.
    """
    def args(out: Path, iterations: int) -> list[str]:
        return _args(pretrained, out, "-solver_type", "Adam", "-base_lr", "0.001", "-lr_policy", "exp", "-gamma",
                     "0.9", "-iterations", str(iterations), "-batch", "36", "-nomirror", "-crop_size", "0",
                     "-threads", "1")

    status, log = run_cli(args(tmp_path / "straight", 8))
    assert status == 0, log[-2000:]
    assert "-threads 1" in log and "Iteration 7, lr = 0.000478297" in log  # 0.001 * 0.9^7
    status, log = run_cli(args(tmp_path / "resumed", 4))
    assert status == 0, log[-2000:]
    solver = read_solver_prototxt(str(tmp_path / "resumed" / "solver.prototxt"))
    assert solver.type == "Adam" and solver.lr_policy == "exp" and solver.gamma == pytest.approx(0.9)
    state = tmp_path / "resumed" / "snapshots" / "finetune_iter_4.solverstate"
    status, log = run_cli(["finetune", "-model", str(pretrained["deploy"]), "-output", str(tmp_path / "resumed"),
                           "-snapshot", str(state), "-iterations", "8", "-threads", "1"])
    assert status == 0, log[-2000:]
    assert f"Restoring previous solver status from {state}" in log
    assert "Iteration 4, lr = 0.0006561" in log and "Iteration 3, lr" not in log  # it went on from 4
    _blobs_equal(tmp_path / "straight" / "snapshots" / "finetune_iter_8.caffemodel",
                 tmp_path / "resumed" / "snapshots" / "finetune_iter_8.caffemodel")


def test_exp_policy_defaults_to_a_tenfold_fall_and_noweights_starts_from_fillers(pretrained, tmp_path):
    out = tmp_path / "out"
    a = _args(pretrained, out, "-solver_type", "Adam", "-lr_policy", "exp", "-iterations", "4", "-batch", "6",
              "-noweights")
    del a[a.index("-weights"):a.index("-weights") + 2]
    status, log = run_cli(a)
    assert status == 0, log[-2000:]
    solver = read_solver_prototxt(str(out / "solver.prototxt"))
    # SGDSolver's exp rate base_lr * gamma^iter reaches base_lr / 10 at the last iteration.
    assert solver.lr_policy == "exp" and solver.base_lr * solver.gamma ** 4 == pytest.approx(solver.base_lr / 10)
    assert "-weights" not in re.search(r"Training: caffecompat (.*)", log)[1]
    assert "Finetuning from" not in log and "Ignoring source layer" not in log
    assert "-noweights" in (out / "train_val.prototxt").read_text().splitlines()[0]


@pytest.mark.parametrize("case", ["one_class", "empty_class", "no_head", "bad_freeze", "existing", "bad_head",
                                  "freeze_above_head", "unknown_val_class", "weights_not_caffemodel",
                                  "weights_of_another_net", "weights_and_noweights", "bad_lr_policy"])
def test_hostile_inputs_give_one_line(pretrained, frozen_run, tmp_path, capsys, case):
    out = tmp_path / "out"
    args = _args(pretrained, out)
    if case == "one_class":
        one = _draw_folder(tmp_path / "one", 3, np.random.default_rng(1), {"circle": 0})
        args[args.index("-train") + 1] = str(one)
        expected = "only one class"
    elif case == "empty_class":
        _draw_folder(tmp_path / "two", 3, np.random.default_rng(1), {"circle": 0})
        (tmp_path / "two" / "square").mkdir()
        args[args.index("-train") + 1] = str(tmp_path / "two")
        expected = "square have no images"
    elif case == "no_head":
        (tmp_path / "d.prototxt").write_text(DEPLOY.replace('type: "Softmax"', 'type: "Sigmoid"'))
        args[args.index("-model") + 1] = str(tmp_path / "d.prototxt")
        expected = "no identifiable head"
    elif case == "bad_freeze":
        args += ["-freeze_below", "conv9"]
        expected = "-freeze_below conv9"
    elif case == "bad_head":
        args += ["-head", "relu1"]
        expected = "the head must be"
    elif case == "freeze_above_head":
        args += ["-freeze_below", "prob"]
        expected = "not below the head ip2"
    elif case == "unknown_val_class":
        _draw_folder(tmp_path / "val", 2, np.random.default_rng(1), {"circle": 0, "square": 1})
        args[args.index("-val") + 1] = str(tmp_path / "val")
        expected = "square are not classes of -train"
    elif case == "weights_not_caffemodel":
        (tmp_path / "w.caffemodel").write_bytes(b"not a caffemodel at all\n")
        args[args.index("-weights") + 1] = str(tmp_path / "w.caffemodel")
        expected = "not a valid caffemodel"
    elif case == "weights_of_another_net":
        # A readable caffemodel (the fine-tuned one) whose only layers are renamed: nothing would be copied.
        renamed = DEPLOY
        for name in ("conv1", "bn1", "scale1", "conv2", "ip1", "ip2"):
            renamed = renamed.replace(f'"{name}"', f'"other_{name}"')
        (tmp_path / "d.prototxt").write_text(renamed)
        args[args.index("-model") + 1] = str(tmp_path / "d.prototxt")
        expected = "none of its layers is named as a layer"
    elif case == "weights_and_noweights":
        args += ["-noweights"]
        expected = "give one"
    elif case == "bad_lr_policy":
        args += ["-lr_policy", "poly"]
        expected = "-lr_policy poly: not supported by finetune"
    else:
        args[args.index("-output") + 1] = str(frozen_run[0])
        expected = "previous run"
    capsys.readouterr()
    status, log = run_cli(args)
    err = capsys.readouterr().err
    assert status == 1, log[-1500:]
    assert len(err.splitlines()) == 1 and expected in err and "Traceback" not in err + log, err
    if case != "existing":
        assert not out.exists()  # refused before writing anything: a fixed rerun needs no -overwrite


def test_open_nsfw_head_only_beats_chance(zoo, tmp_path):
    """The real ResNet-50-1by2 (trained weights), everything below its head frozen, batch 4: beats chance."""
    model = zoo / "open_nsfw"
    rng = np.random.default_rng(7)
    classes = {"circle": 0, "square": 1, "triangle": 2}
    for split in ("train", "val"):
        for name, label in classes.items():
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(8):
                cv2.imwrite(str(tmp_path / split / name / f"{i}.png"), shapes.draw_shape(label, 64, rng))
    out = tmp_path / "out"
    status, log = run_cli(["finetune", "-model", str(model / "deploy.prototxt"), "-weights",
                           str(model / "resnet_50_1by2_nsfw.caffemodel"), "-train", str(tmp_path / "train"),
                           "-val", str(tmp_path / "val"), "-output", str(out), "-freeze_below", "pool",
                           "-iterations", "20", "-batch", "4", "-mean_value", "104,117,123"])
    assert status == 0, log[-3000:]
    accuracy, chance = _final_line(log)
    assert accuracy > chance + 0.2, log[-3000:]  # measured: 0.708 against 0.333
    net = read_net_prototxt(out / "train_val.prototxt")
    scales = [lp for lp in net.layer if lp.type == "Scale"]
    assert len(scales) == 53 and all([p.lr_mult for p in lp.param] == [0, 0] for lp in scales)
    assert "conv_1 does not need backward computation." in log
    assert "fc_nsfw_ft needs backward computation." in log
    dnn = cv2.dnn.readNetFromCaffe(str(out / "deploy.prototxt"), str(out / "snapshots" / "finetune_iter_20.caffemodel"))
    dnn.setInput(np.zeros((1, 3, 224, 224), np.float32))
    assert dnn.forward().ravel().shape == (3,)
    before = read_weights(model / "resnet_50_1by2_nsfw.caffemodel").blobs
    after = read_weights(out / "snapshots" / "finetune_iter_20.caffemodel").blobs
    for name in ("conv_1", "bn_1", "scale_1", "conv_stage3_block2_branch2c", "scale_stage3_block2_branch2c"):
        for a, b in zip(before[name], after[name], strict=True):
            assert np.array_equal(a, b), name
