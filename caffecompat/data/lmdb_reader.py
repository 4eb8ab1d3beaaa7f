"""Reading LMDB databases as Caffe's db_lmdb.cpp does: read-only, records in key order.

Databases are opened read-only without the lock file (lock=False), so a
database on a read-only disk or owned by another user reads fine, as Caffe's
MDB_NOLOCK fallback allows.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Callable, Iterator

import lmdb

from caffecompat.errors import CaffeCompatError

# py-lmdb allows one Environment per database per process, while Caffe lets a
# TRAIN and a TEST Data layer read the same database: environments are shared
# by path and closed when their last user releases them.
_ENVS: dict[str, list] = {}  # absolute path -> [environment, users]
_ENVS_LOCK = threading.Lock()


# LMDB's on-disk header (lmdb.h / mdb.c, 64-bit builds): two meta pages at the start of data.mdb.
# Each page starts with a 16-byte page header; the meta that follows holds the magic and version,
# the page size (in the free-page DB's md_pad), the last page used and the transaction id.
_MDB_MAGIC = 0xBEEFC0DE
_META = struct.Struct("<II8xQI44x48xQQ")  # magic, version, mapsize, psize, ..., last_pg, txnid
_META_OFFSET = 16


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


def _meta(raw: bytes) -> tuple[int, int, int] | None:
    """(page size, last page, txnid) of one meta page, or None if it is not one."""
    if len(raw) < _META_OFFSET + _META.size:
        return None
    fields = _META.unpack_from(raw, _META_OFFSET)
    if fields[0] != _MDB_MAGIC:
        return None
    return fields[3], fields[-2], fields[-1]


def check_data_file(path: str, where: str) -> None:
    """Fail clearly when data.mdb is not an LMDB file or is shorter than its own header says.

    Mapping a truncated data.mdb and reading past its end kills the process
    with SIGBUS; an interrupted copy of a database produces exactly that file.
    """
    prefix = _prefix(where)
    data = os.path.join(path, "data.mdb")
    try:
        size = os.path.getsize(data)
        with open(data, "rb") as f:
            first = f.read(4096)
            meta0 = _meta(first)
            meta1 = None
            if meta0 is not None:
                f.seek(meta0[0])
                meta1 = _meta(f.read(_META_OFFSET + _META.size))
    except OSError as e:
        raise CaffeCompatError(f"{prefix}cannot read LMDB database {path}: {e.strerror}") from None
    if meta0 is None:
        raise CaffeCompatError(f"{prefix}{path} is not an LMDB database: data.mdb does not start with "
                               "LMDB's header (is it another kind of file, or truncated to nothing?)")
    psize = meta0[0]
    if not 512 <= psize <= 1 << 16 or psize & (psize - 1):
        raise CaffeCompatError(f"{prefix}{path}: data.mdb has a corrupt header (page size {psize})")
    if meta1 is None:
        raise CaffeCompatError(f"{prefix}{path}: data.mdb is truncated: {size} bytes, shorter than LMDB's two "
                               f"header pages ({2 * psize} bytes); copy the database again")
    # The meta page with the larger transaction id describes the committed database.
    _, last_page, _ = max(meta0, meta1, key=lambda m: m[2])
    needed = (last_page + 1) * psize
    if size < needed:
        raise CaffeCompatError(f"{prefix}{path}: data.mdb is truncated: {size} bytes, but its header says the "
                               f"database fills {needed} bytes (was the copy interrupted?); copy the database "
                               "again or rebuild it with convert-lmdb")


def open_env(path: str, where: str) -> lmdb.Environment:
    """Open the LMDB directory `path` read-only; missing, non-LMDB or truncated databases raise a
    CaffeCompatError (prefixed by `where` when it is not empty).

    Release it with `close_env` when done.
    """
    prefix = _prefix(where)
    if not os.path.exists(path):
        raise CaffeCompatError(f"{prefix}no such LMDB database: {path}")
    if not os.path.isdir(path):
        raise CaffeCompatError(
            f"{prefix}{path} is a file; an LMDB database is a directory holding data.mdb"
        )
    if not os.path.exists(os.path.join(path, "data.mdb")):
        raise CaffeCompatError(f"{prefix}{path} is not an LMDB database (no data.mdb in it)")
    check_data_file(path, where)
    key = os.path.realpath(path)
    with _ENVS_LOCK:
        if key in _ENVS:
            _ENVS[key][1] += 1
            return _ENVS[key][0]
        try:
            env = lmdb.open(path, readonly=True, lock=False, readahead=False, subdir=True)
        except lmdb.Error as e:
            raise CaffeCompatError(f"{prefix}cannot open LMDB database {path}: {e}") from None
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
            raise CaffeCompatError(f"{_prefix(where)}LMDB database {path} has no records")
        return cursor.key(), cursor.value()


def records(env: lmdb.Environment, path: str, where: str) -> Iterator[tuple[bytes, bytes]]:
    """Every record (key, value) in key order, once."""
    try:
        with env.begin(buffers=False) as txn:
            yield from txn.cursor()
    except lmdb.Error as e:
        raise CaffeCompatError(f"{_prefix(where)}cannot read LMDB database {path}: {e}") from None


def cycle(env: lmdb.Environment, path: str, where: str,
          on_restart: Callable[[], None] | None = None) -> Iterator[tuple[bytes, bytes]]:
    """Records in key order forever: Caffe's DataLayer::Next seeks to the first at the end.

    `on_restart` is called each time the cursor wraps. Use from one thread only.
    """
    try:
        with env.begin(buffers=False) as txn:
            cursor = txn.cursor()
            if not cursor.first():
                raise CaffeCompatError(f"{_prefix(where)}LMDB database {path} has no records")
            while True:
                yield cursor.key(), cursor.value()
                if not cursor.next():
                    if on_restart is not None:
                        on_restart()
                    cursor.first()
    except lmdb.Error as e:
        raise CaffeCompatError(f"{_prefix(where)}cannot read LMDB database {path}: {e}") from None
