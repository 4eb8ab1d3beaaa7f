"""LevelDB databases, Caffe's default Data layer backend, through the optional plyvel binding.

Databases are opened with the options of Caffe's db_leveldb.cpp (64 KiB
blocks, a 256 MiB write buffer, 100 open files, LevelDB's default Snappy
compression); records are read in key order (LevelDB's bytewise comparator,
as LMDB's). LevelDB lets one process at a time open a database: handles are
shared by path inside this process, so a TRAIN and a TEST Data layer can read
the same database, as they can an LMDB.

plyvel is an optional extra (`pip install 'caffecompat[leveldb]'`): PyPI has
prebuilt wheels for CPython 3.8 to 3.12 on Linux x86-64 only; elsewhere pip
builds it from source, which needs LevelDB's library and headers.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator
from types import ModuleType

from caffecompat import outfiles
from caffecompat.errors import CaffeCompatError

# db_leveldb.cpp's Open options.
_BLOCK_SIZE = 65536
_WRITE_BUFFER_SIZE = 268435456
_MAX_OPEN_FILES = 100

INSTALL_HINT = (
    "install it with `pip install 'caffecompat[leveldb]'` (prebuilt for CPython 3.8 to 3.12 on Linux x86-64; "
    "on other Pythons and systems pip builds plyvel from source, which needs LevelDB's library and headers "
    "first: `apt install libleveldb-dev` or `brew install leveldb`), or use LMDB databases (backend: LMDB, "
    "convert-lmdb -backend lmdb)"
)


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


def plyvel_module(where: str = "") -> ModuleType:
    """The plyvel module, or a CaffeCompatError saying how to install it."""
    try:
        import plyvel
    except ImportError:
        version = ".".join(map(str, sys.version_info[:2]))
        raise CaffeCompatError(
            f"{_prefix(where)}LevelDB databases need the plyvel package, which is not installed for this "
            f"Python ({version}): {INSTALL_HINT}"
        ) from None
    return plyvel


def available() -> bool:
    """Whether LevelDB databases can be read and written here (plyvel imports)."""
    try:
        plyvel_module()
    except CaffeCompatError:
        return False
    return True


def _explain(e: Exception, path: str) -> str:
    text = str(e)
    if "lock" in text.lower():
        return (f"{text} (LevelDB lets one process at a time open a database: is another program, a "
                "running caffe or caffecompat, using it?)")
    return text


def check_folder(path: str, where: str) -> None:
    """Fail clearly when `path` is missing, a file, or a folder that is not a LevelDB database."""
    prefix = _prefix(where)
    if not os.path.exists(path):
        raise CaffeCompatError(f"{prefix}no such LevelDB database: {path}")
    if not os.path.isdir(path):
        raise CaffeCompatError(f"{prefix}{path} is a file; a LevelDB database is a folder (holding CURRENT, "
                               "MANIFEST-* and .ldb files)")
    if not os.path.exists(os.path.join(path, "CURRENT")):
        if os.path.exists(os.path.join(path, "data.mdb")):
            raise CaffeCompatError(f"{prefix}{path} is an LMDB database, not a LevelDB one; set `backend: LMDB` "
                                   "in data_param (Caffe's Data layer reads LevelDB when backend is unset), or "
                                   "pass -backend lmdb")
        raise CaffeCompatError(f"{prefix}{path} is not a LevelDB database (no CURRENT file in it)")


# Handles by real path: [plyvel.DB, users].
_DBS: dict[str, list] = {}
_DBS_LOCK = threading.Lock()


class LevelDbReader:
    """A LevelDB database opened for reading: `count()`, `first()`, `records()`, `cycle()`, `close()`."""

    backend = "leveldb"

    def __init__(self, path: str, where: str) -> None:
        # The folder first: an LMDB read as a LevelDB (backend unset) is named as such, plyvel or not.
        check_folder(path, where)
        plyvel = plyvel_module(where)
        self.path, self.where = path, where
        self._key = os.path.realpath(path)
        with _DBS_LOCK:
            entry = _DBS.get(self._key)
            if entry is None:
                try:
                    db = plyvel.DB(path, create_if_missing=False, block_size=_BLOCK_SIZE,
                                   write_buffer_size=_WRITE_BUFFER_SIZE, max_open_files=_MAX_OPEN_FILES)
                except plyvel.Error as e:
                    raise CaffeCompatError(f"{_prefix(where)}cannot open LevelDB database {path}: "
                                           f"{_explain(e, path)}") from None
                entry = _DBS[self._key] = [db, 0]
            entry[1] += 1
            self.db = entry[0]
        self._plyvel = plyvel

    def _read_error(self, e: Exception) -> CaffeCompatError:
        return CaffeCompatError(f"{_prefix(self.where)}cannot read LevelDB database {self.path}: {e}")

    def count(self) -> int:
        """The number of records (LevelDB keeps no count: the keys are walked)."""
        try:
            with self.db.iterator(include_value=False) as it:
                return sum(1 for _ in it)
        except self._plyvel.Error as e:
            raise self._read_error(e) from None

    def first(self) -> tuple[bytes, bytes]:
        """The first record (key, value); an empty database raises a CaffeCompatError."""
        try:
            with self.db.iterator() as it:
                for record in it:
                    return record
        except self._plyvel.Error as e:
            raise self._read_error(e) from None
        raise CaffeCompatError(f"{_prefix(self.where)}LevelDB database {self.path} has no records")

    def records(self) -> Iterator[tuple[bytes, bytes]]:
        """Every record (key, value) in key order, once."""
        try:
            with self.db.iterator() as it:
                yield from it
        except self._plyvel.Error as e:
            raise self._read_error(e) from None

    def cycle(self, on_restart: Callable[[], None] | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Records in key order forever, seeking to the first at the end (DataLayer::Next)."""
        try:
            with self.db.iterator() as it:
                first = True
                while True:
                    any_record = False
                    for record in it:
                        any_record = True
                        yield record
                    if not any_record and first:
                        raise CaffeCompatError(f"{_prefix(self.where)}LevelDB database {self.path} has no records")
                    first = False
                    if on_restart is not None:
                        on_restart()
                    it.seek_to_start()
        except self._plyvel.Error as e:
            raise self._read_error(e) from None

    def close(self) -> None:
        """Release the handle; the last user closes the database."""
        with _DBS_LOCK:
            entry = _DBS.get(self._key)
            if entry is None or entry[0] is not self.db:
                return
            entry[1] -= 1
            if entry[1] == 0:
                del _DBS[self._key]
                self.db.close()


class LevelDbWriter:
    """A new LevelDB database written all-or-nothing: `put`, `commit` (a write batch), `finish` or `abort`.

    The database is built in a temporary folder beside the target and renamed
    to its name when complete, as the LMDB writer does.
    """

    def __init__(self, path: str, overwrite: bool = False) -> None:
        plyvel = plyvel_module(f"{path}")
        self.path = os.path.abspath(path)
        self.name = path
        if os.path.lexists(self.path) and not overwrite:
            raise CaffeCompatError(f"{path} already exists; choose another name or pass -overwrite to replace it")
        parent = os.path.dirname(self.path)
        if not os.path.isdir(parent):
            raise CaffeCompatError(f"{path}: the folder {parent} does not exist")
        self.tmp = os.path.abspath(outfiles.make_temp_dir(path, "database"))
        self._plyvel = plyvel
        try:
            # Caffe's NEW mode: create, and fail if a database is there already.
            self.db = plyvel.DB(self.tmp, create_if_missing=True, error_if_exists=True, block_size=_BLOCK_SIZE,
                                write_buffer_size=_WRITE_BUFFER_SIZE, max_open_files=_MAX_OPEN_FILES)
        except plyvel.Error as e:
            outfiles.discard(self.tmp)
            raise self._error(e) from None
        self._batch = self.db.write_batch()

    def _error(self, e: Exception) -> CaffeCompatError:
        parent = os.path.dirname(self.path)
        reason = outfiles.os_reason(e, parent) if isinstance(e, OSError) else f"LevelDB says {e}"
        kept = "the existing database is unchanged" if os.path.lexists(self.path) else "no database was written"
        return CaffeCompatError(f"{self.name}: cannot write the database: {reason}; {kept}")

    def put(self, key: bytes, value: bytes) -> None:
        """Add one record to the current write batch."""
        self._batch.put(key, value)

    def commit(self) -> None:
        """Write the batch (LevelDBTransaction::Commit) and start a new one."""
        try:
            self._batch.write()
        except self._plyvel.Error as e:
            raise self._error(e) from None
        self._batch = self.db.write_batch()

    def finish(self) -> None:
        """Commit what is left, close, and move the database to its name (replacing an old one)."""
        self.commit()
        self.db.close()
        try:
            outfiles.install_folder(self.tmp, self.path)
        except OSError as e:
            raise self._error(e) from None

    def abort(self) -> None:
        """Close and delete the temporary database."""
        try:
            if not self.db.closed:
                self.db.close()
        finally:
            outfiles.discard(self.tmp)
