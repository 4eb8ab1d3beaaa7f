"""`caffecompat device_query`: what `caffe device_query` does (tools/caffe.cpp device_query(), Caffe::DeviceQuery).

    caffecompat device_query -gpu 0        (or -gpu 0,1 or -gpu all)

For each device it logs the properties Caffe logs, read from the NVIDIA driver
(libcuda, the CUDA driver API) so that no CUDA toolkit is needed, then says which
ONNX Runtime execution providers this installation has (caffecompat's addition).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import sys

from caffecompat import glog
from caffecompat.commands.common import flag
from caffecompat.errors import CaffeCompatError

# CUdevice_attribute values of the CUDA driver API (cuda.h; stable across CUDA versions).
_ATTR = {
    "max_threads_per_block": 1, "block_x": 2, "block_y": 3, "block_z": 4, "grid_x": 5, "grid_y": 6, "grid_z": 7,
    "shared_per_block": 8, "total_constant": 9, "warp_size": 10, "max_pitch": 11, "registers_per_block": 12,
    "clock_rate": 13, "texture_alignment": 14, "gpu_overlap": 15, "multiprocessors": 16, "exec_timeout": 17,
    "major": 75, "minor": 76,
}


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `device_query` subcommand."""
    p = sub.add_parser("device_query", help="show GPU diagnostic information (caffe device_query)",
                       description="Log the properties of the CUDA devices given by -gpu, as `caffe device_query` "
                                   "does, and the ONNX Runtime execution providers available.")
    flag(p, "gpu", default="", metavar="IDS", help="device ids separated by ',', or 'all'")
    p.set_defaults(func=run)


class Driver:
    """The CUDA driver API through ctypes: device count, name, memory and attributes."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        self._check(lib.cuInit(0), "cuInit")

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            text = ctypes.c_char_p()
            self.lib.cuGetErrorString(status, ctypes.byref(text))
            detail = text.value.decode("utf-8", "replace") if text.value else f"error {status}"
            raise CaffeCompatError(f"the NVIDIA driver failed in {what}: {detail}")

    def count(self) -> int:
        """Number of CUDA devices."""
        n = ctypes.c_int()
        self._check(self.lib.cuDeviceGetCount(ctypes.byref(n)), "cuDeviceGetCount")
        return n.value

    def _device(self, ordinal: int) -> ctypes.c_int:
        dev = ctypes.c_int()
        self._check(self.lib.cuDeviceGet(ctypes.byref(dev), ordinal), "cuDeviceGet")
        return dev

    def name(self, ordinal: int) -> str:
        """The device's name."""
        buf = ctypes.create_string_buffer(256)
        self._check(self.lib.cuDeviceGetName(buf, 256, self._device(ordinal)), "cuDeviceGetName")
        return buf.value.decode("utf-8", "replace")

    def total_memory(self, ordinal: int) -> int:
        """Global memory in bytes."""
        size = ctypes.c_size_t()
        self._check(self.lib.cuDeviceTotalMem_v2(ctypes.byref(size), self._device(ordinal)), "cuDeviceTotalMem")
        return size.value

    def attribute(self, ordinal: int, name: str) -> int | None:
        """One CUdevice_attribute, or None when the driver does not report it."""
        value = ctypes.c_int()
        status = self.lib.cuDeviceGetAttribute(ctypes.byref(value), _ATTR[name], self._device(ordinal))
        return value.value if status == 0 else None


def load_driver() -> Driver | None:
    """The CUDA driver, or None when this machine has none."""
    if sys.platform == "win32":
        names = ["nvcuda.dll"]
    else:
        names = ["libcuda.so.1", "libcuda.so", ctypes.util.find_library("cuda")]
    for name in names:
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        return Driver(lib)
    return None


def device_ids(value: str, driver: Driver) -> list[int]:
    """tools/caffe.cpp get_gpus: "" -> none, "all" -> every device, else the listed ids."""
    value = value.strip()
    if not value:
        return []
    if value == "all":
        return list(range(driver.count()))
    ids = []
    for part in value.split(","):
        try:
            ids.append(int(part))
        except ValueError:
            raise CaffeCompatError(f"-gpu {value}: expected device ids separated by ',' or 'all'") from None
    count = driver.count()
    for i in ids:
        if not 0 <= i < count:
            raise CaffeCompatError(f"-gpu {value}: no CUDA device {i}; this machine has {count} "
                                   f"(ids 0 to {count - 1})" if count else f"-gpu {value}: no CUDA device present")
    return ids


def query(driver: Driver, ordinal: int) -> None:
    """Caffe::DeviceQuery's lines for one device."""
    a = {name: driver.attribute(ordinal, name) for name in _ATTR}

    def show(v: int | None) -> str:
        return "unknown" if v is None else str(v)

    def yes_no(v: int | None) -> str:
        return "unknown" if v is None else ("Yes" if v else "No")

    lines = [
        (178, f"Device id:                     {ordinal}"),
        (179, f"Major revision number:         {show(a['major'])}"),
        (180, f"Minor revision number:         {show(a['minor'])}"),
        (181, f"Name:                          {driver.name(ordinal)}"),
        (182, f"Total global memory:           {driver.total_memory(ordinal)}"),
        (183, f"Total shared memory per block: {show(a['shared_per_block'])}"),
        (184, f"Total registers per block:     {show(a['registers_per_block'])}"),
        (185, f"Warp size:                     {show(a['warp_size'])}"),
        (186, f"Maximum memory pitch:          {show(a['max_pitch'])}"),
        (187, f"Maximum threads per block:     {show(a['max_threads_per_block'])}"),
        (188, f"Maximum dimension of block:    {show(a['block_x'])}, {show(a['block_y'])}, {show(a['block_z'])}"),
        (191, f"Maximum dimension of grid:     {show(a['grid_x'])}, {show(a['grid_y'])}, {show(a['grid_z'])}"),
        (194, f"Clock rate:                    {show(a['clock_rate'])}"),
        (195, f"Total constant memory:         {show(a['total_constant'])}"),
        (196, f"Texture alignment:             {show(a['texture_alignment'])}"),
        (197, f"Concurrent copy and execution: {yes_no(a['gpu_overlap'])}"),
        (199, f"Number of multiprocessors:     {show(a['multiprocessors'])}"),
        (200, f"Kernel execution timeout:      {yes_no(a['exec_timeout'])}"),
    ]
    for line, text in lines:
        glog.info(f"common.cpp:{line}", text)


def run(args: argparse.Namespace) -> int:
    """Query the devices, then report the execution providers."""
    import onnxruntime as ort

    glog.info("caffe.cpp:138", f"Querying GPUs {args.gpu}")
    if args.gpu.strip():
        driver = load_driver()
        if driver is None:
            raise CaffeCompatError(f"-gpu {args.gpu}: no NVIDIA driver found on this machine (libcuda); "
                                   "device_query needs one to show CUDA devices")
        for ordinal in device_ids(args.gpu, driver):
            query(driver, ordinal)
    providers = ort.get_available_providers()
    glog.info("device_query.py:1", f"ONNX Runtime {ort.__version__}, execution providers: {', '.join(providers)}")
    if "CUDAExecutionProvider" not in providers:
        glog.info("device_query.py:1", "No CUDA execution provider: -gpu needs the CUDA build of ONNX Runtime "
                                       "(pip uninstall -y onnxruntime && pip install 'onnxruntime-gpu[cuda,cudnn]')")
    return 0
