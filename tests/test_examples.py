"""The bundled shapes example (caffecompat/examples/shapes, examples/shapes): fast checks, no training.

The full example (`caffecompat example shapes DIR`, examples/shapes/run.sh)
trains for about a minute; these tests check its pieces: the image generator,
every packaged prototxt parses and resolves, the shortened schedules, and the
one-line errors of bad sizes. tests/test_release.py runs it end to end from a
built wheel and from the clone.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from caffecompat.errors import CaffeCompatError
from caffecompat.examples.shapes import models
from caffecompat.formats.net import read_net_prototxt
from caffecompat.formats.solver import read_solver_prototxt
from caffecompat.net import spec
from caffecompat.proto import caffe_pb2

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "caffecompat" / "examples"
SHAPES_MODELS = MODELS / "shapes"
EXAMPLE = REPO / "examples" / "shapes"


def _load_make_images():
    spec_ = importlib.util.spec_from_file_location("shapes_make_images", EXAMPLE / "make_images.py")
    module = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(module)
    return module


def _read_list(path: Path) -> list[tuple[str, int]]:
    return [(p, int(label)) for p, label in (line.split() for line in path.read_text().splitlines())]


def _all_prototxts() -> list[Path]:
    return sorted(MODELS.rglob("*.prototxt"))


def _is_solver(path: Path) -> bool:
    return "solver" in path.name


# The top shapes of the Data layers as the example's LMDBs give them (batch 50, 3 x 32 x 32).
def _data_shapes(layer: caffe_pb2.LayerParameter) -> list[tuple[int, ...]]:
    n = layer.data_param.batch_size
    return [(n, 3, 32, 32), (n,)][: len(layer.top)]


def _param_layers(net_spec: spec.NetSpec) -> dict[str, list[tuple[int, ...]]]:
    """Layer name -> shapes of its parameter blobs, for layers with parameters."""
    return {node.name: node.param_shapes for node in net_spec.layers if node.param_shapes}


# ---- make_images.py -------------------------------------------------------------------


def test_make_images_writes_listed_decodable_images(tmp_path):
    make_images = _load_make_images()
    out = tmp_path / "shapes"
    assert make_images.main([str(out), "--train", "12", "--val", "5", "--seed", "3"]) == 0

    assert (out / "labels.txt").read_text().split() == list(make_images.CLASSES)
    for split, count in (("train", 12), ("val", 5)):
        items = _read_list(out / f"{split}.txt")
        assert len(items) == count
        assert len({p for p, _ in items}) == count
        for rel, label in items:
            assert 0 <= label <= 3
            assert rel.startswith(f"{split}/") and make_images.CLASSES[label] in rel
            img = cv2.imread(str(out / rel), cv2.IMREAD_UNCHANGED)
            assert img is not None, rel
            assert img.shape == (32, 32, 3) and img.dtype == np.uint8, rel
        # Balanced classes: counts differ by at most one.
        per_class = np.bincount([label for _, label in items], minlength=4)
        assert per_class.max() - per_class.min() <= 1
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(
        Path(p).name for p, _ in _read_list(out / "train.txt"))


def test_make_images_is_deterministic_and_seeded(tmp_path):
    make_images = _load_make_images()
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        make_images.main([str(tmp_path / name), "--train", "4", "--val", "2", "--seed", str(seed), "--size", "40"])

    def files(name):
        return {p.relative_to(tmp_path / name): p.read_bytes() for p in (tmp_path / name).rglob("*") if p.is_file()}

    assert files("a") == files("b")
    assert files("a") != files("c")
    img = cv2.imread(str(tmp_path / "a" / _read_list(tmp_path / "a" / "val.txt")[0][0]))
    assert img.shape == (40, 40, 3)


# ---- the packaged prototxts ---------------------------------------------------------------------------


def test_models_folder_has_the_shapes_definitions():
    names = {p.name for p in SHAPES_MODELS.glob("*.prototxt")}
    assert {"train_val.prototxt", "deploy.prototxt", "solver.prototxt",
            "finetune_train_val.prototxt", "finetune_solver.prototxt"} <= names


@pytest.mark.parametrize("path", _all_prototxts(), ids=lambda p: str(p.relative_to(MODELS)))
def test_every_model_prototxt_parses(path):
    if _is_solver(path):
        solver = read_solver_prototxt(path, resolve_snapshot_prefix=False)
        assert solver.net, path
        # The solver's net is a path relative to the work folder, where run.sh copies it beside the solver.
        assert (path.parent / solver.net).is_file(), solver.net
        assert solver.solver_mode == caffe_pb2.SolverParameter.CPU
        assert solver.HasField("random_seed")
    else:
        net = read_net_prototxt(path)
        assert len(net.layer) > 0 and len(net.layers) == 0, path


@pytest.mark.parametrize("path", [p for p in _all_prototxts() if not _is_solver(p)],
                         ids=lambda p: str(p.relative_to(MODELS)))
def test_every_model_net_resolves(path):
    net = read_net_prototxt(path)
    phases = [caffe_pb2.TEST] if any(layer.type == "Input" for layer in net.layer) else [caffe_pb2.TRAIN,
                                                                                         caffe_pb2.TEST]
    for phase in phases:
        spec.build(net, phase, source_shapes=_data_shapes, source=str(path))


def test_shapes_deploy_builds_and_outputs_prob():
    deploy = spec.build(read_net_prototxt(SHAPES_MODELS / "deploy.prototxt"), caffe_pb2.TEST)
    assert deploy.outputs == ["prob"]
    assert deploy.shapes["prob"] == (1, 4)
    assert deploy.shapes[deploy.inputs[0]] == (1, 3, 32, 32)


def test_shapes_train_val_and_deploy_have_the_same_parameter_layers():
    train_val = read_net_prototxt(SHAPES_MODELS / "train_val.prototxt")
    deploy = _param_layers(spec.build(read_net_prototxt(SHAPES_MODELS / "deploy.prototxt"), caffe_pb2.TEST))
    assert list(deploy) == ["conv1", "conv2", "ip1", "ip2"]
    for phase in (caffe_pb2.TRAIN, caffe_pb2.TEST):
        built = spec.build(train_val, phase, source_shapes=_data_shapes)
        assert _param_layers(built) == deploy
    test_net = spec.build(train_val, caffe_pb2.TEST, source_shapes=_data_shapes)
    assert set(test_net.outputs) == {"accuracy", "loss"}
    assert test_net.shapes["ip2"] == (50, 4)


def test_shapes_finetune_net_renames_only_the_last_layer():
    base = _param_layers(spec.build(read_net_prototxt(SHAPES_MODELS / "train_val.prototxt"), caffe_pb2.TRAIN,
                                    source_shapes=_data_shapes))
    ft_spec = spec.build(read_net_prototxt(SHAPES_MODELS / "finetune_train_val.prototxt"), caffe_pb2.TRAIN,
                         source_shapes=_data_shapes)
    ft = _param_layers(ft_spec)
    assert ft.pop("ip2_ft") == base.pop("ip2")
    assert ft == base
    # The new layer learns faster than the copied ones.
    new = [p for p in ft_spec.params.values() if p.layer == "ip2_ft"]
    old = [p for p in ft_spec.params.values() if p.layer != "ip2_ft"]
    assert min(p.lr_mult for p in new) > max(p.lr_mult for p in old)


def test_shapes_solvers_cover_the_validation_set_and_snapshot_at_the_end():
    run_sh = (EXAMPLE / "run.sh").read_text()
    # run.sh's default sizes are the ones the files are written for.
    assert f"SHAPES_VAL:-{models.VALIDATION_IMAGES}}}" in run_sh
    assert f"SHAPES_ITERATIONS:-{models.ITERATIONS}}}" in run_sh
    assert 'WEIGHTS="snapshots/shapes_iter_$ITERATIONS.caffemodel"' in run_sh
    for name in ("solver.prototxt", "finetune_solver.prototxt"):
        solver = read_solver_prototxt(SHAPES_MODELS / name, resolve_snapshot_prefix=False)
        net = read_net_prototxt(SHAPES_MODELS / solver.net)
        test_batch = next(layer.data_param.batch_size for layer in net.layer
                          if layer.type == "Data" and any(r.phase == caffe_pb2.TEST for r in layer.include))
        assert test_batch == models.TEST_BATCH
        assert list(solver.test_iter) == [models.VALIDATION_IMAGES // test_batch]
        assert solver.snapshot_after_train
    assert read_solver_prototxt(SHAPES_MODELS / "solver.prototxt", resolve_snapshot_prefix=False).max_iter == \
        models.ITERATIONS


# ---- the definitions copied into a work folder (caffecompat.examples.shapes.models) -------


_SCHEDULE_FIELDS = ("max_iter", "test_interval", "stepsize", "display")


def test_write_models_at_the_default_size_copies_the_files_byte_for_byte(tmp_path):
    written = models.write_models(tmp_path)
    assert sorted(p.name for p in written) == sorted(models.MODEL_FILES)
    for path in written:
        assert path.read_bytes() == (SHAPES_MODELS / path.name).read_bytes()


def test_the_schedule_rule_at_600_gives_the_files_own_values():
    # The rule that shortens a run, applied to the files' own size, must give back what the files say.
    for name, fields in models.schedule(models.ITERATIONS, models.VALIDATION_IMAGES).items():
        solver = read_solver_prototxt(SHAPES_MODELS / name, resolve_snapshot_prefix=False)
        assert {f: getattr(solver, f) for f in _SCHEDULE_FIELDS} == {f: fields[f] for f in _SCHEDULE_FIELDS}, name
        assert list(solver.test_iter) == [fields["test_iter"]]


def test_write_models_shortened_keeps_everything_but_the_schedule(tmp_path):
    models.write_models(tmp_path, iterations=60, val=100)
    for name in models.MODEL_FILES:
        if name not in models.SOLVERS:
            assert (tmp_path / name).read_bytes() == (SHAPES_MODELS / name).read_bytes()
            continue
        short = read_solver_prototxt(tmp_path / name, resolve_snapshot_prefix=False)
        full = read_solver_prototxt(SHAPES_MODELS / name, resolve_snapshot_prefix=False)
        assert list(short.test_iter) == [2]  # 100 images / batch 50
        expected = {"solver.prototxt": (60, 20, 40, 2), "finetune_solver.prototxt": (10, 5, 10, 2)}[name]
        assert tuple(getattr(short, f) for f in _SCHEDULE_FIELDS) == expected
        for f in (*_SCHEDULE_FIELDS, "test_iter"):
            full.ClearField(f)
            short.ClearField(f)
        assert short == full, name
        # Still a solver the training command reads, with its net beside it.
        assert (tmp_path / short.net).is_file()


@pytest.mark.parametrize("iterations, val, words", [
    (0, 400, "--iterations 0"), (50, 400, "multiple of 12"), (-12, 400, "positive"),
    (600, 30, "--val 30"), (600, 0, "multiple of 50")])
def test_bad_sizes_are_one_line_errors(iterations, val, words):
    with pytest.raises(CaffeCompatError, match=words):
        models.schedule(iterations, val)


def _run_module(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_example_command_refuses_bad_sizes_and_a_file_as_folder(tmp_path):
    (tmp_path / "afile").write_text("x")
    for args, words in ((["w", "-val", "120"], "--val 120"), (["w", "-iterations", "7"], "--iterations 7"),
                        (["afile"], "not a folder"), (["w", "-train", "0"], "--train 0")):
        done = _run_module("-m", "caffecompat.cli", "example", "shapes", *args, cwd=tmp_path)
        assert done.returncode == 1, done.stderr
        assert done.stderr.count("\n") == 1 and words in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert not (tmp_path / "w").exists()  # nothing made before the sizes are checked
    done = _run_module("-m", "caffecompat.examples.shapes", "w", "--val", "10", cwd=tmp_path)
    assert done.returncode == 1 and "--val 10" in done.stderr and done.stderr.count("\n") == 1, done.stderr


def test_the_clone_s_make_images_is_the_package_s(tmp_path):
    clone = _load_make_images()
    from caffecompat.examples.shapes import make_images
    assert clone.main is make_images.main and clone.CLASSES == make_images.CLASSES
    done = _run_module(str(EXAMPLE / "make_images.py"), "out", "--train", "4", "--val", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert len((tmp_path / "out" / "train.txt").read_text().splitlines()) == 4
