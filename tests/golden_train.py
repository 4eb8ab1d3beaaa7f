"""Run one of ../shared/caffe-golden/train's recipes with `caffecompat train` and parse our log."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format

from caffecompat.proto import caffe_pb2
from tests.cli_run import run_cli

# The flags each golden run was made with (see the golden README).
RUNS = {
    "sgd_step": ["-weights", "train/init.caffemodel"],
    "nesterov_multistep": ["-weights", "train/init.caffemodel"],
    "adam_fixed": ["-weights", "train/init.caffemodel"],
    "adagrad_inv": ["-weights", "train/init.caffemodel"],
    "rmsprop_poly": ["-weights", "train/init.caffemodel"],
    "adadelta_exp": ["-weights", "train/init.caffemodel"],
    "sgd_itersize_clip_l1_sigmoid": ["-weights", "train/init.caffemodel"],
    "bn_sgd_fixed": ["-weights", "train/init_bn.caffemodel"],
    "finetune_step": ["-weights", "train/out/sgd_step_iter_24.caffemodel"],
    "sgd_step_resume": ["-snapshot", "train/out/sgd_step_iter_12.solverstate"],
    "deconv_sgd": ["-weights", "train/init_deconv.caffemodel"],
}

_TRAIN = re.compile(r"\] Iteration (\d+) \(.*\), loss = (\S+)$")
_FINAL = re.compile(r"\] Iteration (\d+), loss = (\S+)$")
_LR = re.compile(r"\] Iteration (\d+), lr = (\S+)$")
_TESTING = re.compile(r"\] Iteration (\d+), Testing net")
_OUTPUT = re.compile(r"\]     (Train|Test) net output #\d+: (\S+) = (\S+)")


@dataclass
class ParsedLog:
    """What a Caffe-style log says, per iteration (the same layout as the golden JSON)."""

    train: dict[int, dict] = field(default_factory=dict)
    test: dict[int, dict[str, float]] = field(default_factory=dict)
    lr_text: dict[int, str] = field(default_factory=dict)
    text: str = ""


def parse_log(text: str) -> ParsedLog:
    """Parse glog lines into per-iteration losses, lrs and outputs."""
    log = ParsedLog(text=text)
    current: dict | None = None
    testing: int | None = None
    for line in text.splitlines():
        if m := _TRAIN.search(line):
            current = log.train.setdefault(int(m[1]), {"outputs": {}})
            current["loss"] = float(m[2])
            testing = None
        elif m := _LR.search(line):
            log.lr_text[int(m[1])] = m[2]
        elif m := _FINAL.search(line):
            log.train.setdefault(int(m[1]), {"outputs": {}})["loss"] = float(m[2])
        elif m := _TESTING.search(line):
            testing = int(m[1])
            log.test[testing] = {}
        elif m := _OUTPUT.search(line):
            if m[1] == "Test" and testing is not None:
                log.test[testing][m[2]] = float(m[3])
            elif m[1] == "Train" and current is not None:
                current["outputs"][m[2]] = float(m[3])
    return log


def run_golden_recipe(golden: Path, name: str, out_dir: Path, monkeypatch) -> tuple[int, ParsedLog]:
    """Train recipe `name` from the golden folder, snapshots into out_dir. Returns (exit status, log)."""
    solver = caffe_pb2.SolverParameter()
    text_format.Parse((golden / "train" / f"solver_{name}.prototxt").read_text(), solver)
    solver.snapshot_prefix = str(out_dir / name)
    solver_file = out_dir / f"solver_{name}.prototxt"
    solver_file.write_text(text_format.MessageToString(solver))
    monkeypatch.chdir(golden)
    status, log = run_cli(["train", "-solver", str(solver_file), *RUNS[name]])
    return status, parse_log(log)
