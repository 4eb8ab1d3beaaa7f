"""Training runs for tests/test_parallel_mpi.py, through the Python API, on one process or under mpiexec.

    mpiexec -n 2 python -m tests.mpi_driver RUNS.json OUT_DIR

RUNS.json lists runs ({"name", "solver", "weights", "snapshot", "host_staged"}); each is
trained in turn with caffecompat.solver.loop.Solver, and each rank writes
OUT_DIR/<name>.rank<r>.npz (the loss of every forward/backward pass with its
iteration, the final weights and solver history, what the rank snapshotted
and whether it had test nets) and OUT_DIR/<name>.rank<r>.log (its glog lines).
With "host_staged" the CPU net is shown to the reduction as a GPU's (HostStaged).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


class HostStaged:
    """A CPU TrainingNet as the reduction sees a GPU's: diffs only through grad()/set_grad(), and a flat_diff
    of its own (NaN until the reduction stages the diffs into it), as a GPU net's host buffer is stale."""

    device = "cuda"

    def __init__(self, net) -> None:
        self._net = net
        self.flat_diff = np.full_like(net.flat_diff, np.nan)
        self.staged = 0

    def __getattr__(self, name: str):
        return getattr(self._net, name)

    def grad(self, name: str) -> np.ndarray:
        return np.array(self._net.grad(name))

    def set_grad(self, name: str, array: np.ndarray) -> None:
        np.copyto(self._net.grad(name), array)
        self.staged += 1


def train(run: dict, out_dir: Path) -> None:
    """Train one run and save what this rank saw."""
    from caffecompat import glog, parallel
    from caffecompat.formats.solver import read_solver_prototxt
    from caffecompat.net.export import LOSS_OUTPUT
    from caffecompat.solver.loop import Solver

    group = parallel.activate()
    stem = out_dir / f"{run['name']}.rank{group.rank}"
    with open(f"{stem}.log", "w") as log:
        glog.set_stream(log)
        try:
            solver = Solver(read_solver_prototxt(run["solver"]), run["solver"],
                            weights=[run["weights"]] if run.get("weights") else [])
            if run.get("host_staged"):
                solver.net = HostStaged(solver.net)
            passes: list[tuple[int, float]] = []
            step = solver.net.forward_backward

            def recorded(inputs):
                outputs = step(inputs)
                passes.append((solver.iter, float(outputs[LOSS_OUTPUT])))
                return outputs

            solver.net.forward_backward = recorded
            try:
                solver.solve(run.get("snapshot") or None)
                arrays = {f"w:{n}": np.array(v) for n, v in solver.live_values().items()}
                for name, hist in zip(solver.param_names, solver.history):
                    arrays.update({f"h{k}:{name}": np.array(h) for k, h in enumerate(hist)})
                np.savez(f"{stem}.npz", passes=np.array(passes, np.float64), iteration=solver.iter,
                         snapshotted=solver.last_snapshot or "", test_nets=len(solver.tests),
                         staged=getattr(solver.net, "staged", 0), **arrays)
            finally:
                solver.close()
        finally:
            glog.set_stream(None)


def main(argv: list[str]) -> int:
    runs = json.loads(Path(argv[0]).read_text())
    for run in runs:
        train(run, Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
