"""Reading LMDB databases as Caffe's db_lmdb.cpp does: read-only, records in key order.

Databases are opened read-only without the lock file (lock=False), so a
database on a read-only disk or owned by another user reads fine, as Caffe's
MDB_NOLOCK fallback allows.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator

import lmdb

from caffecompat.errors import CaffeCompatError, NotSupportedError
from caffecompat.proto import caffe_pb2


def check_backend(backend: int | str, where: str) -> None:
    """Only LMDB is supported; LevelDB (Caffe's DataParameter default) is refused clearly."""
    if backend in (caffe_pb2.DataParameter.LMDB, "lmdb"):
        return
    if backend in (caffe_pb2.DataParameter.LEVELDB, "leveldb"):
        raise NotSupportedError(
            f"LevelDB databases ({where}); convert the images to LMDB with convert-lmdb, and set "
            "`backend: LMDB` (Caffe's Data layer defaults to LEVELDB when backend is unset)"
        )
    raise CaffeCompatError(f"{where}: unknown database backend {backend!r}; use lmdb")


# py-lmdb allows one Environment per database per process, while Caffe lets a
# TRAIN and a TEST Data layer read the same database: environments are shared
# by path and closed when their last user releases them.
_ENVS: dict[str, list] = {}  # absolute path -> [environment, users]
_ENVS_LOCK = threading.Lock()


def open_env(path: str, where: str) -> lmdb.Environment:
    """Open the LMDB directory `path` read-only; missing or non-LMDB paths raise a CaffeCompatError.

    Release it with `close_env` when done.
    """
    if not os.path.exists(path):
        raise CaffeCompatError(f"{where}: no such LMDB database: {path}")
    if not os.path.isdir(path):
        raise CaffeCompatError(
            f"{where}: {path} is a file; an LMDB database is a directory holding data.mdb"
        )
    if not os.path.exists(os.path.join(path, "data.mdb")):
        raise CaffeCompatError(f"{where}: {path} is not an LMDB database (no data.mdb in it)")
    key = os.path.realpath(path)
    with _ENVS_LOCK:
        if key in _ENVS:
            _ENVS[key][1] += 1
            return _ENVS[key][0]
        try:
            env = lmdb.open(path, readonly=True, lock=False, readahead=False, subdir=True)
        except lmdb.Error as e:
            raise CaffeCompatError(f"{where}: cannot open LMDB database {path}: {e}") from None
        _ENVS[key] = [env, 1]
        return env


def close_env(env: lmdb.Environment) -> None:
    """Release an environment from `open_env`; the last release closes it."""
    with _ENVS_LOCK:
        for key, entry in list(_ENVS.items()):
            if entry[0] is env:
                entry[1] -= 1
                if entry[1] == 0:
                    del _ENVS[key]
                    env.close()
                return
    env.close()


def count(env: lmdb.Environment) -> int:
    """The number of records."""
    return int(env.stat()["entries"])


def first(env: lmdb.Environment, path: str, where: str) -> tuple[bytes, bytes]:
    """The first record (key, value); an empty database raises a CaffeCompatError."""
    with env.begin(buffers=False) as txn:
        cursor = txn.cursor()
        if not cursor.first():
            raise CaffeCompatError(f"{where}: LMDB database {path} has no records")
        return cursor.key(), cursor.value()


def records(env: lmdb.Environment, path: str, where: str) -> Iterator[tuple[bytes, bytes]]:
    """Every record (key, value) in key order, once."""
    try:
        with env.begin(buffers=False) as txn:
            yield from txn.cursor()
    except lmdb.Error as e:
        raise CaffeCompatError(f"{where}: cannot read LMDB database {path}: {e}") from None


def cycle(env: lmdb.Environment, path: str, where: str,
          on_restart: Callable[[], None] | None = None) -> Iterator[tuple[bytes, bytes]]:
    """Records in key order forever: Caffe's DataLayer::Next seeks to the first at the end.

    `on_restart` is called each time the cursor wraps. Use from one thread only.
    """
    try:
        with env.begin(buffers=False) as txn:
            cursor = txn.cursor()
            if not cursor.first():
                raise CaffeCompatError(f"{where}: LMDB database {path} has no records")
            while True:
                yield cursor.key(), cursor.value()
                if not cursor.next():
                    if on_restart is not None:
                        on_restart()
                    cursor.first()
    except lmdb.Error as e:
        raise CaffeCompatError(f"{where}: cannot read LMDB database {path}: {e}") from None
