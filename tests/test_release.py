"""The release: `python -m build` gives an sdist and a wheel that a user can install and trust.

Built once per run (sdist, then the wheel from the sdist, as `python -m build`
does), then checked as a user and a packager meet them:
- the wheel, installed into a fresh environment outside the repository, runs the
  packaged shapes example (`caffecompat example shapes DIR`: images, LMDB, mean,
  train, test, fine-tune, ONNX, classify) and prints the same accuracies as the
  clone's examples/shapes/run.sh on the same small size;
- the sdist installs, and its tests collect with no error;
- both archives carry LICENSE and BVLC Caffe's license for its schema, the
  metadata names the license, and the version is pyproject.toml's.

The fresh environments are `venv --without-pip` with a .pth pointing at this
environment's site-packages for the dependencies (no download, about a second);
pip installs into them with --python, --no-deps and --ignore-installed. A .pth line adds a folder to
sys.path without running the .pth files inside it, so this environment's own
(editable) caffecompat is not seen there; the tests check where it imports from.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# A small run of the example: a few seconds of training, still every step.
SMALL = {"train": "400", "val": "100", "iterations": "60"}
BVLC_COPYRIGHT = "Copyright (c) 2014-2017 The Regents of the University of California (Regents)"


def _version() -> str:
    """pyproject.toml's version (read as text: Python 3.10 has no tomllib)."""
    return re.search(r'^version = "([^"]+)"$', (REPO / "pyproject.toml").read_text(), re.M).group(1)


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, args))} failed ({done.returncode}):\n{done.stdout[-3000:]}" \
                                 f"\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, Path]:
    """The sdist and the wheel `python -m build` makes of the repository (no isolation: no download)."""
    pytest.importorskip("build", reason="the release test needs the `build` package (the dev extra)")
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(REPO)], cwd=out)
    version = _version()
    archives = {"sdist": out / f"caffecompat-{version}.tar.gz",
                "wheel": out / f"caffecompat-{version}-py3-none-any.whl"}
    for path in archives.values():
        assert path.is_file(), sorted(p.name for p in out.iterdir())
    return archives


def _fresh_venv(where: Path) -> Path:
    """A new environment with no pip and no caffecompat, seeing this one's packages; its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True, timeout=120)
    python = where / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=where).strip()
    # This environment's package folders, those its own .pth files added included (never the repository root,
    # whose caffecompat folder would hide the installed one).
    ours = dict.fromkeys(p for p in (*(sysconfig.get_paths()[key] for key in ("purelib", "platlib")), *sys.path)
                         if Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir())
    (Path(site) / "caffecompat-test-deps.pth").write_text("".join(f"{p}\n" for p in ours))
    return python


def _pip_install(python: Path, target: Path, *flags: str) -> None:
    # --ignore-installed: a caffecompat this environment has is seen there too, and must be neither taken as
    # already installed nor uninstalled.
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
          "--ignore-installed", "--quiet", *flags, str(target)], cwd=python.parent)


def _env_without_repo() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


def _accuracies(output: str) -> list[str]:
    """What a run prints about accuracy: each test during training, caffecompat test's, classify.py's, the summary."""
    return [line.split("] ", 1)[-1].strip() for line in output.splitlines()
            if "accuracy = " in line or "shapes.onnx accuracy on" in line or "validation accuracy" in line]


def _losses(output: str) -> list[tuple[str, str]]:
    """(iteration, loss) of every display line of both trainings (their timings left out)."""
    return re.findall(r"\] Iteration (\d+) \(.*\), loss = (\S+)$", output, re.M)


def test_both_archives_carry_the_licenses(dist):
    ours = (REPO / "LICENSE").read_text()
    bvlc = (REPO / "caffecompat" / "proto" / "LICENSE-BVLC").read_text()
    assert "Copyright (c) 2026, the caffecompat developers" in ours and "Redistribution and use" in ours
    assert BVLC_COPYRIGHT in bvlc and "Redistributions of source code must retain" in bvlc
    for notice in (REPO / "proto" / "caffe.proto", REPO / "caffecompat" / "proto" / "caffe_pb2.py"):
        head = notice.read_text()[:1500]
        assert BVLC_COPYRIGHT in head and "LICENSE-BVLC" in head, notice

    version = _version()
    with zipfile.ZipFile(dist["wheel"]) as wheel:
        names = set(wheel.namelist())
        info = f"caffecompat-{version}.dist-info"
        assert wheel.read(f"{info}/licenses/LICENSE").decode() == ours
        assert wheel.read(f"{info}/licenses/caffecompat/proto/LICENSE-BVLC").decode() == bvlc
        assert wheel.read("caffecompat/proto/LICENSE-BVLC").decode() == bvlc  # beside the bindings
        assert BVLC_COPYRIGHT in wheel.read("caffecompat/proto/caffe_pb2.py").decode()[:1500]
        metadata = wheel.read(f"{info}/METADATA").decode()
        assert "License-Expression: BSD-2-Clause" in metadata
        assert {"License-File: LICENSE", "License-File: caffecompat/proto/LICENSE-BVLC"} <= set(metadata.splitlines())
        assert not any(name.startswith(("tests/", "examples/", "proto/")) for name in names)
        for prototxt in ("train_val", "deploy", "solver", "finetune_train_val", "finetune_solver"):
            assert f"caffecompat/examples/shapes/{prototxt}.prototxt" in names

    with tarfile.open(dist["sdist"]) as sdist:
        root = f"caffecompat-{version}/"
        names = set(sdist.getnames())

        def text(name: str) -> str:
            return sdist.extractfile(root + name).read().decode()

        assert text("LICENSE") == ours
        assert text("caffecompat/proto/LICENSE-BVLC") == bvlc
        assert BVLC_COPYRIGHT in text("proto/caffe.proto")[:1500]
        for needed in ("CHANGELOG.md", "README.md", "MANIFEST.in", "proto/generate.py", "proto/forks.proto",
                       "tests/conftest.py", "tests/gradients.py", "tests/layer_nets.py", "tests/cli_run.py",
                       "examples/shapes/run.sh", "benchmarks/bench_train.py"):
            assert root + needed in names, needed
        assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".mdb", ".caffemodel"))]
        # Every file git tracks under the folders the sdist takes is in it (checked in a clone, not in an sdist).
        listed = subprocess.run(["git", "ls-files", "tests", "proto", "examples", "benchmarks"], cwd=REPO,
                                capture_output=True, text=True)
        if listed.returncode == 0:
            assert not [t for t in listed.stdout.split() if root + t not in names]


def test_the_installed_wheel_runs_the_example_as_the_clone_does(dist, tmp_path):
    python = _fresh_venv(tmp_path / "venv")
    _pip_install(python, dist["wheel"])
    bin_dir = python.parent
    env = _env_without_repo()
    where = _run([str(python), "-c", "import caffecompat; print(caffecompat.__file__, caffecompat.__version__)"],
                 cwd=tmp_path, env=env).split()
    assert Path(where[0]).is_relative_to(tmp_path / "venv") and where[1] == _version()
    assert _run([str(bin_dir / "caffecompat"), "--version"], cwd=tmp_path, env=env).strip() == \
        f"caffecompat {_version()}"
    shown = _run([sys.executable, "-m", "pip", "--python", str(python), "show", "caffecompat"], cwd=tmp_path)
    if "License-Expression:" in shown:
        assert re.search(r"^License-Expression: BSD-2-Clause$", shown, re.M), shown
    else:  # a pip older than 25.1 shows only the License field, which PEP 639 metadata leaves out
        expression = _run([str(python), "-c", "import importlib.metadata as m; "
                           "print(m.metadata('caffecompat')['License-Expression'])"], cwd=tmp_path, env=env)
        assert expression.strip() == "BSD-2-Clause"

    # The user's command, from a folder of their own, on the packaged files only.
    sizes = [arg for key, value in SMALL.items() for arg in (f"-{key}", value)]
    (tmp_path / "logs").mkdir()
    packaged = _run([str(bin_dir / "caffecompat"), "example", "-log_dir", "logs", "shapes", "work", *sizes],
                    cwd=tmp_path, env=env)
    work = tmp_path / "work"
    # glog's flags given to `example` hold for its steps: each Caffe tool's log files, named as Caffe names them.
    assert {"caffe.INFO", "convert_imageset.INFO", "compute_image_mean.INFO"} <= {
        p.name for p in (tmp_path / "logs").iterdir()}
    for made in ("shapes.onnx", f"snapshots/shapes_iter_{SMALL['iterations']}.caffemodel",
                 "finetune_snapshots/shapes_ft_iter_10.caffemodel", "train.log", "test.log", "finetune.log"):
        assert (work / made).is_file(), made

    # The clone's shell version, with this environment's caffecompat (the source tree).
    ours = Path(sysconfig.get_paths()["scripts"])
    clone_env = {**env, "PATH": f"{ours}{os.pathsep}{env.get('PATH', '')}", "PYTHON": sys.executable,
                 "CAFFECOMPAT": str(ours / "caffecompat"),
                 **{f"SHAPES_{key.upper()}": value for key, value in SMALL.items()}}
    cloned = _run(["bash", str(REPO / "examples" / "shapes" / "run.sh"), str(tmp_path / "clone")], cwd=tmp_path,
                  env=clone_env)

    packaged_accuracies = _accuracies(packaged)
    # Tests at iterations 0, 20, 40, 60; caffecompat test's 2 batches and total; fine-tuning's tests at 0, 5, 10;
    # classify's count; the 3 summary lines.
    assert len(packaged_accuracies) == 4 + 3 + 3 + 1 + 3, packaged_accuracies
    assert packaged_accuracies == _accuracies(cloned)
    # 30 + 5 display lines (display: 2), with the same losses.
    assert len(_losses(packaged)) == 35 and _losses(packaged) == _losses(cloned)
    # classify.py's plain-onnxruntime count agrees with caffecompat test on the same 100 images.
    test_accuracy = float(re.search(r"caffecompat test: ([0-9.]+)", packaged).group(1))
    right = int(re.search(r"shapes.onnx accuracy on images/val.txt: (\d+)/100", packaged).group(1))
    assert right == round(test_accuracy * 100)
    # The two runs made the same ONNX model.
    assert (work / "shapes.onnx").read_bytes() == (tmp_path / "clone" / "shapes.onnx").read_bytes()


def test_the_sdist_installs_and_its_tests_collect(dist, tmp_path):
    python = _fresh_venv(tmp_path / "venv")
    _pip_install(python, dist["sdist"], "--no-build-isolation")
    with tarfile.open(dist["sdist"]) as sdist:
        sdist.extractall(tmp_path / "src", filter="data") if sys.version_info >= (3, 12) else \
            sdist.extractall(tmp_path / "src")
    root = tmp_path / "src" / f"caffecompat-{_version()}"
    collected = _run([str(python), "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"], cwd=root,
                     env=_env_without_repo())
    assert re.search(r"^\d+ tests collected", collected, re.M), collected[-2000:]
    assert "error" not in collected.splitlines()[-1].lower(), collected[-2000:]
    # The same test files as the clone's.
    assert sorted(p.name for p in (root / "tests").glob("test_*.py")) == \
        sorted(p.name for p in (REPO / "tests").glob("test_*.py"))


def test_ci_runs_the_readme_s_commands_as_written():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    install, test = [line for line in block.splitlines() if line and not line.startswith("#")]
    # The first command installs the package alone: no extra, so no dev tools.
    assert ".venv/bin/pip install -e . &&" in install and "[" not in install
    assert "examples/shapes/run.sh" in install
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert test in ci, test
    assert ".venv/bin/pip install --quiet -e ." in ci
    assert ci.index(".venv/bin/pip install --quiet -e .") < ci.index(test)
