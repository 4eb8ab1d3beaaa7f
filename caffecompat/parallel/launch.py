"""Starting a multi-process run for the user, and which GPU each process takes.

`caffecompat train -processes N ...` and `caffecompat train -gpu 0,1,...`
(outside mpiexec) start N copies of the same command through the MPI
launcher installed with `caffecompat[mpi]` (mpiexec, one machine), with one
process per listed GPU, and watch them: when one fails or is killed, the
launcher stops the others and this process prints one line naming the rank
and the cause, with exit status 1. Under `mpiexec -n N caffecompat train
-gpu 0,1,...` each process takes the list's entry at its rank on its machine
(its local rank), as Caffe gives solver i the i-th listed device; several
machines each run one process per listed device.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from caffecompat import glog
from caffecompat.errors import CaffeCompatError
from caffecompat.parallel.group import MPI_EXTRA, STATUS_DIR, Group


def gpu_list(value: str) -> list[int]:
    """The devices of a -gpu flag: '' none, '0', '0,1,2,3', or 'all' (every CUDA device, Caffe's get_gpus)."""
    value = value.strip()
    if not value:
        return []
    if value == "all":
        count = cuda_device_count()
        if not count:
            raise CaffeCompatError("-gpu all: no CUDA device found (no driver, or CUDA_VISIBLE_DEVICES hides them all)")
        return list(range(count))
    ids = []
    for part in value.split(","):
        part = part.strip()
        if not part.isdigit():
            raise CaffeCompatError(f"-gpu {value}: expected device ids such as 0 or 0,1,2,3, or all")
        ids.append(int(part))
    if len(set(ids)) != len(ids):
        raise CaffeCompatError(f"-gpu {value}: a device is listed twice; list each once")
    return ids


def cuda_device_count() -> int:
    """How many CUDA devices this process sees (cudaGetDeviceCount), 0 without a driver."""
    names = ["libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0",
             ctypes.util.find_library("cudart")]
    try:  # the CUDA runtime pip installs with onnxruntime-gpu[cuda]
        import nvidia.cuda_runtime as runtime  # type: ignore[import-not-found]

        names = [str(p) for p in Path(list(runtime.__path__)[0], "lib").glob("libcudart.so*")] + names
    except ImportError:
        pass
    for name in names:
        if not name:
            continue
        try:
            cudart = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        return count.value if cudart.cudaGetDeviceCount(ctypes.byref(count)) == 0 else 0
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return 0
    count = sum(1 for line in listed.stdout.splitlines() if line.startswith("GPU "))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        count = min(count, len([v for v in visible.split(",") if v.strip() and v.strip() != "-1"]))
    return count


def processes_wanted(processes: int, gpu_flag: str) -> int:
    """How many ranks -processes and -gpu ask for (1 when neither asks for several)."""
    if processes < 0:
        raise CaffeCompatError(f"-processes {processes}: must be at least 1")
    value = gpu_flag.strip()
    devices = len(gpu_list(value)) if value == "all" or "," in value else 1
    if processes and devices > 1 and processes != devices:
        raise CaffeCompatError(f"-processes {processes} and -gpu {gpu_flag} ({devices} devices) disagree: one "
                               "process trains on each listed device; drop -processes")
    return processes or devices


def check_devices(gpus: list[int], flag: str, allow_cpu_fallback: bool = False) -> None:
    """Before any rank starts: CUDA is there for -gpu's devices, and each listed device exists.

    Without it every rank would start, build its nets and only then find no CUDA."""
    if not gpus:
        return
    import onnxruntime as ort

    from caffecompat.runtime import providers

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        # The ranks' own check (providers.resolve), once, here: one line and exit 1, or the fallback warning.
        providers.resolve(gpus[0], allow_cpu_fallback, f"-gpu {flag}")
        return
    count = cuda_device_count()
    missing = [g for g in gpus if g >= count]
    if missing:
        seen = f"{count} CUDA device(s) (0-{count - 1})" if count else "no CUDA device (no driver, or " \
            "CUDA_VISIBLE_DEVICES hides them all)"
        raise CaffeCompatError(f"-gpu {flag}: device {missing[0]} does not exist: this machine has {seen}; "
                               "list devices that exist (caffecompat device_query shows them)")


def device_for(gpus: list[int], group: Group, flag: str) -> int | None:
    """The GPU this process trains on: -gpu's entry at its local rank (None for the CPU)."""
    if not gpus:
        return None
    if group.size == 1:
        return gpus[0]
    if len(gpus) != group.local_size:
        raise CaffeCompatError(
            f"-gpu {flag} lists {len(gpus)} device(s) but {group.local_size} processes of this job run on this "
            f"machine: start one process per listed device (mpiexec -n {len(gpus)} on one machine, or "
            f"{len(gpus)} per machine)")
    return gpus[group.local_rank]


def find_mpiexec() -> str:
    """The mpiexec installed beside this Python (the mpich wheel puts it there), else the one on PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("mpiexec")
    if found:
        return found
    raise CaffeCompatError(f"several processes need MPI's launcher, and no mpiexec was found: {MPI_EXTRA}")


def supervise(argv: list[str], processes: int) -> int:
    """Run `caffecompat <argv>` (argv[0] the command) as `processes` MPI ranks on this machine; 0, or 1 with one
    line on failure."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        raise CaffeCompatError(f"{processes} processes need mpi4py, which is not installed: {MPI_EXTRA}") from None
    mpiexec = find_mpiexec()
    status = Path(tempfile.mkdtemp(prefix="caffecompat-ranks-"))
    command = [mpiexec, "-n", str(processes), sys.executable, "-m", "caffecompat.cli", *argv]
    glog.info("launch.py:1", f"Starting {processes} processes: {' '.join(command)}")
    # The launcher gets a session of its own: the terminal's Ctrl-C and hang-up reach this process, which
    # hands them to the ranks (each acts on it as -sigint_effect / -sighup_effect say).
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, env={**os.environ, STATUS_DIR: str(status)},
                            start_new_session=True)
    previous = {}

    def forward(signum: int, frame: object) -> None:
        pids = _rank_pids(status)
        if signum == signal.SIGINT and len(pids) < processes:
            proc.send_signal(signum)  # the launcher hands Ctrl-C to every rank, started or not
            return
        for pid, _ in pids.values():
            try:
                os.kill(pid, signum)
            except OSError:
                pass

    for signum in (signal.SIGINT, getattr(signal, "SIGHUP", None), signal.SIGTERM):
        if signum is not None:
            previous[signum] = signal.signal(signum, forward)
    try:
        launcher = _relay(proc)
        code = proc.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    try:
        if code == 0:
            return 0
        print(f"caffecompat {argv[0]}: error: {_diagnose(status, launcher, code, processes, argv[0])}",
              file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(status, ignore_errors=True)


def _relay(proc: subprocess.Popen) -> list[str]:
    """Copy the launcher's stdout to ours, keeping back its own failure banner (returned for _diagnose)."""
    banner = []
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.decode("utf-8", errors="replace")
        text = line.strip()
        if not text or text.startswith("=") or text.startswith(("YOUR APPLICATION TERMINATED", "This typically",
                                                                 "Please see the FAQ")):
            banner.append(text)
            continue
        sys.stdout.write(line)
        sys.stdout.flush()
    return banner


def _rank_pids(status: Path) -> dict[int, tuple[int, str]]:
    pids = {}
    for path in status.glob("rank-*.pid"):
        try:
            pid, host = path.read_text().split()
            pids[int(path.name.split("-")[1].split(".")[0])] = (int(pid), host)
        except (OSError, ValueError):
            continue
    return pids


def _diagnose(status: Path, banner: list[str], code: int, processes: int, command: str = "train") -> str:
    """What went wrong: the first rank's own last words, else which process the launcher saw die and how."""
    errors = sorted(status.glob("rank-*.error"), key=lambda p: p.stat().st_mtime)
    if errors:
        return errors[0].read_text().strip()
    text = "\n".join(banner)
    pid_match = re.search(r"PID (\d+)", text)
    how = re.search(r"EXIT STRING: (.*)", text)
    signum = None
    if how and (m := re.search(r"signal (\d+)", how[1])):
        signum = int(m[1])
    elif code > 128:
        signum = code - 128
    cause = f"exited with status {code}"
    if signum is not None:
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        cause = f"was killed by signal {signum} ({name}"
        cause += ": by hand, or by the kernel's out-of-memory killer, see dmesg)" if signum == 9 else ")"
    who = "a process"
    if pid_match:
        pid = int(pid_match[1])
        ranks = {p: (rank, host) for rank, (p, host) in _rank_pids(status).items()}
        if pid in ranks:
            rank, host = ranks[pid]
            who = f"rank {rank} of {processes} (pid {pid} on {host})"
        else:
            who = f"process {pid}"
    if command != "train":  # inference writes its outputs at the end, through temporary files: nothing is left
        return f"{who} {cause}; the launcher stopped the other ranks (no output was written)"
    # Snapshots are written both-or-neither, so the last complete one is still there to resume from.
    return f"{who} {cause}; the launcher stopped the other ranks (resume from the last snapshot with -snapshot)"

