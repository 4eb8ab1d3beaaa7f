"""Writing a new LMDB database all-or-nothing, in transactions as Caffe's tools commit them.

The records go to a temporary directory beside the target, renamed to the
target name only when everything was written: a failed or interrupted run
leaves no half-written database behind (and the folder of a killed run is
removed by the next run writing beside it: caffecompat.outfiles). The map grows by doubling when full,
as Caffe's db_lmdb.cpp does, so no size has to be guessed up front.
"""

from __future__ import annotations

import errno
import os

import lmdb

from caffecompat import outfiles
from caffecompat.errors import CaffeCompatError

_INITIAL_MAP_SIZE = 1 << 28


class LmdbWriter:
    """Put records, `commit()` every so often, then `finish()` (or `abort()` on failure)."""

    def __init__(self, path: str, overwrite: bool = False) -> None:
        self.path = os.path.abspath(path)
        self.name = path
        if os.path.lexists(self.path) and not overwrite:
            raise CaffeCompatError(
                f"{path} already exists; choose another name or pass -overwrite to replace it"
            )
        parent = os.path.dirname(self.path)
        if not os.path.isdir(parent):
            raise CaffeCompatError(f"{path}: the folder {parent} does not exist")
        # A recognizable temporary folder (mode 0777 less the umask); those of killed runs are swept.
        self.tmp = os.path.abspath(outfiles.make_temp_dir(path, "database"))
        self._map_size = _INITIAL_MAP_SIZE
        try:
            # Files 0664 less the umask, as Caffe's db_lmdb.cpp opens them. No lock file: the folder is
            # ours alone until renamed, and LMDB maps its lock file, whose first write on a full disk
            # would be a SIGBUS rather than an error (readers create it when they need it).
            # py-lmdb encodes a str path as UTF-8: bytes keep a path with non-UTF-8 bytes as it is.
            self.env = lmdb.open(os.fsencode(self.tmp), map_size=self._map_size, subdir=True, readahead=False,
                                 mode=0o664, lock=False)
        except (lmdb.Error, ValueError) as e:
            outfiles.discard(self.tmp)
            raise self._error(e) from None
        self._pending: list[tuple[bytes, bytes]] = []

    def _error(self, e: Exception) -> CaffeCompatError:
        """A failed LMDB or file operation as one line: the database, the reason, what is left."""
        parent = os.path.dirname(self.path)
        if isinstance(e, OSError):
            reason = outfiles.os_reason(e, parent)
        else:
            reason = f"LMDB says {e}"
            free = outfiles.free_bytes(parent)
            # LMDB reports a full disk as an I/O error; say what it is.
            if free is not None and free < 1 << 20:
                reason = f"{outfiles.os_reason(OSError(errno.ENOSPC, 'full'), parent)} ({reason})"
        kept = "the existing database is unchanged" if os.path.lexists(self.path) else "no database was written"
        return CaffeCompatError(f"{self.name}: cannot write the database: {reason}; {kept}")

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
                try:
                    self.env.set_mapsize(self._map_size)
                except lmdb.Error as e:
                    raise self._error(e) from None
            except lmdb.Error as e:
                raise self._error(e) from None
        self._pending.clear()

    def finish(self) -> None:
        """Commit what is left, close, and move the database to its name (replacing an old one)."""
        if self._pending:
            self.commit()
        self.env.close()
        try:
            outfiles.install_folder(self.tmp, self.path)
        except OSError as e:
            raise self._error(e) from None

    def abort(self) -> None:
        """Close and delete the temporary database."""
        try:
            self.env.close()
        finally:
            outfiles.discard(self.tmp)
