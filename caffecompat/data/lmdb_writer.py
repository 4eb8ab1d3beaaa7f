"""Writing a new LMDB database all-or-nothing, in transactions as Caffe's tools commit them.

The records go to a temporary directory beside the target, renamed to the
target name only when everything was written: a failed or interrupted run
leaves no half-written database behind. The map grows by doubling when full,
as Caffe's db_lmdb.cpp does, so no size has to be guessed up front.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import lmdb

from caffecompat.errors import CaffeCompatError

_INITIAL_MAP_SIZE = 1 << 28


class LmdbWriter:
    """Put records, `commit()` every so often, then `finish()` (or `abort()` on failure)."""

    def __init__(self, path: str, overwrite: bool = False) -> None:
        self.path = os.path.abspath(path)
        if os.path.lexists(self.path) and not overwrite:
            raise CaffeCompatError(
                f"{path} already exists; choose another name or pass -overwrite to replace it"
            )
        parent = os.path.dirname(self.path)
        if not os.path.isdir(parent):
            raise CaffeCompatError(f"{path}: the folder {parent} does not exist")
        try:
            self.tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(self.path)}.partial-", dir=parent)
        except OSError as e:
            raise CaffeCompatError(f"{path}: cannot create a database in {parent}: {e.strerror}") from None
        self._map_size = _INITIAL_MAP_SIZE
        self.env = lmdb.open(self.tmp, map_size=self._map_size, subdir=True, readahead=False)
        self._pending: list[tuple[bytes, bytes]] = []

    def put(self, key: bytes, value: bytes) -> None:
        """Queue one record for the next commit."""
        self._pending.append((key, value))

    def commit(self) -> None:
        """Write the queued records in one transaction, doubling the map size while it is full."""
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    for key, value in self._pending:
                        txn.put(key, value)
                break
            except lmdb.MapFullError:
                # db_lmdb.cpp: on MDB_MAP_FULL, double the map size and redo the transaction.
                self._map_size *= 2
                self.env.set_mapsize(self._map_size)
        self._pending.clear()

    def finish(self) -> None:
        """Commit what is left, close, and move the database to its name (replacing an old one)."""
        if self._pending:
            self.commit()
        self.env.close()
        old = None
        if os.path.lexists(self.path):
            old = self.tmp + ".old"
            os.rename(self.path, old)
        os.rename(self.tmp, self.path)
        if old is not None:
            _remove(old)

    def abort(self) -> None:
        """Close and delete the temporary database."""
        try:
            self.env.close()
        finally:
            _remove(self.tmp)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)
