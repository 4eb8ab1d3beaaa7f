"""The process group of a data-parallel run: Caffe's multi-GPU rules over MPI (mpi4py).

Caffe's rules (parallel.cpp, solver.cpp, data_layer.cpp), each stated once where it is applied:

- every rank starts from rank 0's weights (`Group.startup`: NCCL::Broadcast);
- gradients are summed over the ranks and scaled by 1/solver_count before the
  update, so every rank applies the same update and the weights stay identical
  (`Group.reduce_gradients`: NCCL::on_gradients_ready); the update then
  divides by iter_size as usual, so N ranks of batch B with iter_size K train as
  one process with iter_size N*K on the same records;
- each rank seeds its random numbers with random_seed + rank, reads its own
  share of the TRAIN records (caffecompat.data), and only rank 0 tests,
  displays and snapshots (caffecompat.solver.loop); every rank restores a
  resumed .solverstate itself.

Beyond Caffe (whose worker threads share one process): a signal to any rank
acts on all of them after the current iteration (`Group.agree`), and a rank
that fails stops the whole job with one line naming the rank and the cause
(`Group.fail`) instead of leaving the others waiting in a collective. Waits
that can be long (for rank 0 while it tests or snapshots) sleep instead of
spinning, and every wait gives up after `timeout` seconds without a sign of
life from a rank (ranks send each other a heartbeat while they wait or test).
Launchers (mpiexec, srun --kill-on-bad-exit) end the job as soon as a
process is killed; the timeouts are for those that do not.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import NoReturn

import numpy as np

from caffecompat import glog
from caffecompat import parallel as state
from caffecompat.errors import CaffeCompatError

F32 = np.float32
# How long a rank waits for a silent peer before it stops the job (seconds); `caffecompat train -mpi_timeout`.
DEFAULT_TIMEOUT = 300.0
# Where `caffecompat train -processes N` (launch.py) asks each rank to leave its pid and its last words.
STATUS_DIR = "CAFFECOMPAT_STATUS_DIR"
ACTIONS = (None, "snapshot", "stop")  # agreed by MAX over the ranks: a stop outranks a snapshot
_BEAT = 7  # message tag of heartbeats
MPI_EXTRA = "pip install 'caffecompat[mpi]' (mpi4py and the MPICH library, with its mpiexec)"


class Group:
    """One process (Caffe's solver_count 1): every collective is the identity."""

    rank = 0
    size = 1
    local_rank = 0
    local_size = 1
    timeout = DEFAULT_TIMEOUT
    program = "caffecompat train"  # who speaks in the one line of a failure
    reduce_seconds = 0.0  # wall time spent in gradient Allreduces so far
    wait_seconds = 0.0  # and waiting for the other ranks to arrive there
    reductions = 0

    @property
    def root(self) -> bool:
        """Caffe::root_solver()."""
        return self.rank == 0

    def adopt(self, signals) -> None:
        """Take charge of the run's signal effects (see caffecompat.solver.signals)."""

    def startup(self, net, signals) -> None:
        """After the nets are built: agree on a start-up stop, then start every rank from rank 0's weights."""

    def any(self, flag: bool, what: str, iteration: int) -> bool:
        """True on every rank when `flag` is true on any."""
        return flag

    def agree(self, action: str | None, iteration: int) -> str | None:
        """The action every rank takes after this iteration: the strongest any rank was asked for."""
        return action

    def reduce_gradients(self, net, iteration: int) -> None:
        """Sum the ranks' parameter diffs, scaled by 1/solver_count, in place."""

    def alive(self, iteration: int) -> None:
        """Tell the other ranks this one is working (while rank 0 tests, the others wait for it)."""

    def finish(self) -> None:
        """Wait for every rank to be done (rank 0's final snapshot and test) before leaving."""

    def arrive(self, what: str) -> None:
        """Wait for every rank to reach this point (`what` names it), giving up on a silent one."""


def join(timeout: float = DEFAULT_TIMEOUT, work: str = "training") -> Group:
    """The group of this process: MPI's world when a launcher started several processes, else a group of one.

    `work` names what the ranks do together in the set-up log ("training", "inference")."""
    size = state.launched_size()
    if size is None or size == 1:
        return Group()
    try:
        import mpi4py

        if "mpi4py.MPI" not in sys.modules:
            mpi4py.rc.thread_level = "funneled"  # only the main thread calls MPI (data threads never do)
        from mpi4py import MPI
    except ImportError:
        count = f"{size} processes" if size else "several processes"
        raise CaffeCompatError(f"this process was started by an MPI launcher as one of {count}, but mpi4py is "
                               f"not installed: {MPI_EXTRA}") from None
    world = MPI.COMM_WORLD
    if world.Get_size() == 1:
        if size == 0:
            return Group()
        raise CaffeCompatError(
            f"the MPI launcher started {size} processes, but the MPI library mpi4py uses "
            f"({_library(MPI)}) sees only this one: mpiexec and the library must be the same MPI; run the "
            f"mpiexec installed with it ({Path(sys.executable).parent / 'mpiexec'})")
    return MpiGroup(MPI, world, timeout, work)


def _library(mpi) -> str:
    return " ".join(mpi.Get_library_version().split()[:3])


class MpiGroup(Group):
    """Several processes over MPI: Caffe's multi-GPU solver semantics."""

    def __init__(self, mpi, world, timeout: float, work: str = "training") -> None:
        self.MPI = mpi
        self.work = work
        self.timeout = float(timeout)
        self.comm = world.Dup()
        self.beats = world.Dup()
        for comm in (self.comm, self.beats):
            comm.Set_errhandler(mpi.ERRORS_RETURN)  # failures raise here and stop the job through fail()
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        local = world.Split_type(mpi.COMM_TYPE_SHARED)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()
        self.host = socket.gethostname()
        state._set(self.rank, self.size, self.local_rank)
        self.others = [r for r in range(self.size) if r != self.rank]
        now = time.monotonic()
        self._heard = dict.fromkeys(self.others, now)  # when each rank was last heard from
        self._heard_at = dict.fromkeys(self.others, -1)  # at which iteration
        self._beat_every = max(0.2, min(2.0, self.timeout / 10))
        self._sent = 0.0
        self._sends: list = []
        self._beat_in = np.zeros(1, np.int64)
        self.status_dir = os.environ.get(STATUS_DIR) or None
        if self.status_dir:
            _write(Path(self.status_dir) / f"rank-{self.rank}.pid", f"{os.getpid()} {self.host}\n")
        self._abort_on_uncaught()
        # Caffe's workers log through LOG_IF(INFO, root_solver()): the other ranks keep to warnings and errors.
        if not self.root:
            glog.raise_minloglevel(1)
        self._share_cores()
        self._introduce(mpi)

    def _abort_on_uncaught(self) -> None:
        # A script's uncaught exception would leave this rank in MPI_Finalize and the others waiting for it
        # (`caffecompat train` catches its own): after the traceback, stop every rank.
        previous = sys.excepthook

        def hook(kind, error, tb) -> None:
            previous(kind, error, tb)
            self.stop_job(f"uncaught {kind.__name__}: {error}", program=Path(sys.argv[0]).name or "python")

        sys.excepthook = hook

    def _share_cores(self) -> None:
        """Split this machine's cores between its ranks (ONNX Runtime's default takes them all per process)."""
        from caffecompat.runtime import providers

        if not providers.INTRA_OP_THREADS:  # -threads decides when given
            providers.set_threads(*providers.default_threads(self.local_size))

    def _introduce(self, mpi) -> None:
        from caffecompat.runtime import providers

        rows = self.comm.gather((self.rank, os.getpid(), self.host, self.local_rank), root=0)
        if self.root:
            glog.info("group.py:1", f"Data-parallel {self.work} on {self.size} processes ({_library(mpi)}), "
                                        f"{providers.INTRA_OP_THREADS} thread(s) each")
            for rank, pid, host, local in rows:
                glog.info("group.py:1", f"rank {rank}: pid {pid} on {host} (local rank {local})")

    # -- signals and start-up ---------------------------------------------------------
    def adopt(self, signals) -> None:
        # One rank alone must never stop at start-up: the others would wait for it in the broadcast.
        signals.together = True

    def startup(self, net, signals) -> None:
        from caffecompat.solver.signals import StartupStopped

        if self.any(signals.pending == "stop", "start-up", 0):
            signals.pending = None
            raise StartupStopped("Stop requested during start-up: every rank stops before the first iteration "
                                 "(no snapshot: nothing was learned yet).")
        # NCCL::Broadcast: every rank starts from rank 0's weights (its fillers' draws or the -weights it read).
        names = list(net.params)
        sizes = [int(np.prod(net.spec.params[n].shape)) for n in names]
        flat = np.empty(sum(sizes), F32)
        offsets = np.cumsum([0, *sizes])
        if self.root:
            for name, a, b in zip(names, offsets[:-1], offsets[1:]):
                flat[a:b] = net.data(name).reshape(-1)
        self._wait(self.comm.Ibcast(flat, root=0), "the broadcast of rank 0's weights", 0)
        if not self.root:
            for name, a, b in zip(names, offsets[:-1], offsets[1:]):
                net.set_data(name, flat[a:b].reshape(net.spec.params[name].shape))

    # -- collectives ------------------------------------------------------------------
    def any(self, flag: bool, what: str, iteration: int) -> bool:
        value = np.array([1 if flag else 0], np.int64)
        self._wait(self.comm.Iallreduce(self.MPI.IN_PLACE, value, op=self.MPI.MAX), what, iteration)
        return bool(value[0])

    def agree(self, action: str | None, iteration: int) -> str | None:
        value = np.array([ACTIONS.index(action)], np.int64)
        self._wait(self.comm.Iallreduce(self.MPI.IN_PLACE, value, op=self.MPI.MAX), "the signal agreement",
                   iteration)
        return ACTIONS[int(value[0])]

    def reduce_gradients(self, net, iteration: int) -> None:
        # The arrival waits asleep (a rank may still be testing or snapshotting); the sum itself then runs
        # at full speed as one in-place Allreduce of the flat diff buffer, waited for by polling.
        arrived = time.perf_counter()
        self._wait(self.comm.Ibarrier(), "the gradient reduction", iteration)
        start = time.perf_counter()
        self.wait_seconds += start - arrived
        flat = net.flat_diff
        on_host = net.device == "cpu"
        if not on_host:
            # A GPU's diffs go through host memory: device -> flat buffer, Allreduce, flat buffer -> device.
            views = _views(net, flat)
            for name, view in views.items():
                view[...] = net.grad(name)
        self._wait(self.comm.Iallreduce(self.MPI.IN_PLACE, flat, op=self.MPI.SUM), "the gradient reduction",
                   iteration, spin=True)
        # NCCL::on_gradients_ready: the sum scaled by 1/solver_count (layer_wise_reduce only changes when the
        # reduction runs, overlapping Backward; the step graph's backward is one run, so both reduce here).
        np.multiply(flat, F32(1.0 / self.size), out=flat)
        if not on_host:
            for name, view in views.items():
                net.set_grad(name, view)
        self.reduce_seconds += time.perf_counter() - start
        self.reductions += 1

    def finish(self) -> None:
        self._wait(self.comm.Ibarrier(), "the end of training (rank 0's last snapshot and test)", -1)

    def arrive(self, what: str) -> None:
        self._wait(self.comm.Ibarrier(), what, -1)

    # -- liveness ---------------------------------------------------------------------
    def alive(self, iteration: int) -> None:
        self._drain()
        self._beat(iteration)

    def _beat(self, iteration: int) -> None:
        now = time.monotonic()
        if now - self._sent < self._beat_every:
            return
        self._sent = now
        self._sends = [(req, buf) for req, buf in self._sends if not req.Test()]
        payload = np.array([iteration], np.int64)
        for r in self.others:
            self._sends.append((self.beats.Isend(payload, dest=r, tag=_BEAT), payload))

    def _drain(self) -> None:
        status = self.MPI.Status()
        while self.beats.Iprobe(source=self.MPI.ANY_SOURCE, tag=_BEAT, status=status):
            source = status.Get_source()
            self.beats.Recv(self._beat_in, source=source, tag=_BEAT)
            self._heard[source] = time.monotonic()
            self._heard_at[source] = int(self._beat_in[0])

    def _wait(self, request, what: str, iteration: int, spin: bool = False) -> None:
        """Wait for a non-blocking collective, beating, and giving up on a rank silent for `timeout`.

        Short waits `spin` (MPI progresses only inside Test); others sleep between tests."""
        try:
            start = checked = time.monotonic()
            pause = 2e-5
            while not request.Test():
                if spin and time.monotonic() - checked < 1e-3:
                    continue
                checked = time.monotonic()
                self._drain()
                self._beat(iteration)
                now = time.monotonic()
                silent = [r for r in self.others if now - max(start, self._heard[r]) > self.timeout]
                if silent:
                    self.stop_job(self._silence(silent, what, iteration, now))
                if not spin:
                    time.sleep(pause)
                    pause = min(pause * 2, 0.005)
            # A collective that completed is word from every rank: each reached `iteration`, even when its
            # rate-limited heartbeats last said an earlier one.
            now = time.monotonic()
            for r in self.others:
                self._heard[r] = max(self._heard[r], now)
                self._heard_at[r] = max(self._heard_at[r], iteration)
        except self.MPI.Exception as e:
            raise CaffeCompatError(f"MPI failed during {what} at iteration {iteration}: "
                                   f"{' '.join(e.Get_error_string().split())}") from None

    def _silence(self, silent: list[int], what: str, iteration: int, now: float) -> str:
        step = "iteration" if self.work == "training" else "batch"  # what alive() counts
        last = "; ".join(
            f"rank {r} last seen {now - self._heard[r]:.0f} s ago"
            + (f" at {step} {self._heard_at[r]}" if self._heard_at[r] >= 0 else " (not since start-up)")
            for r in silent)
        at = f" at {step} {iteration}" if iteration >= 0 else ""
        return (f"waited {self.timeout:g} s during {what}{at} for {last}: it died or hangs (killed, out of "
                f"memory, or stuck reading data); stopping the job (-mpi_timeout sets the wait)")

    # -- failure ----------------------------------------------------------------------
    def fail(self, error: BaseException) -> NoReturn:
        """Stop every rank because this one failed: one line naming the rank and the cause, exit status 1."""
        self.stop_job(describe_error(error))

    def stop_job(self, message: str, program: str | None = None) -> NoReturn:
        """Print `message` for this rank (or hand it to the -processes launcher), then end every rank, status 1."""
        where = f"rank {self.rank} of {self.size} (pid {os.getpid()} on {self.host})"
        if self.rank:
            # When every rank fails alike (a bad solver file), rank 0 speaks: its abort ends the others first.
            time.sleep(1.0)
        if self.status_dir:
            _write(Path(self.status_dir) / f"rank-{self.rank}.error", f"{where}: {message}\n")
        else:
            sys.stderr.write(f"{program or self.program}: error: {where}: {message}\n")
        sys.stderr.flush()
        sys.stdout.flush()
        # The launcher relays our output asynchronously: let it pass the line on before the abort tears down.
        time.sleep(0.5)
        try:
            # MPI_Abort's own notice would be a second message: it goes to /dev/null.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            self.MPI.COMM_WORLD.Abort(1)
        finally:
            os._exit(1)


def describe_error(error: BaseException) -> str:
    """One line for an error that ends a rank (the CLI's wording for its own errors)."""
    if isinstance(error, CaffeCompatError):
        return str(error)
    if isinstance(error, MemoryError):
        return ("out of memory: the net, its batches or a file being read need more memory than this process may "
                "use; reduce the batch size or the number of processes per machine")
    if isinstance(error, OSError):
        return f"{str(error.filename) + ': ' if error.filename else ''}{error.strerror or error}"
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    # Anything else is a bug in caffecompat: its traceback goes first, for the report.
    traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
    return f"internal error: {type(error).__name__}: {error}"


def _views(net, flat: np.ndarray) -> dict[str, np.ndarray]:
    # TrainingNet's layout of flat_diff: every parameter of spec.params in order.
    views = {}
    offset = 0
    for name, info in net.spec.params.items():
        n = int(np.prod(info.shape))
        views[name] = flat[offset:offset + n].reshape(info.shape)
        offset += n
    return views


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError:
        pass  # the launcher's status folder is a courtesy; the run does not depend on it
