"""Caffe's database backends (util/db.cpp): LMDB and LevelDB behind one reader and one writer.

    reader = open_reader("train_lmdb", "lmdb", where)   # or "leveldb", or DataParameter.DB values
    key, value = reader.first(); reader.records(); reader.cycle(); reader.count(); reader.close()
    writer = open_writer("out_leveldb", "leveldb"); writer.put(k, v); writer.commit(); writer.finish()

LevelDB needs the optional plyvel package (caffecompat.data.leveldb_db).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Protocol

from caffecompat.data import leveldb_db, lmdb_reader
from caffecompat.errors import CaffeCompatError
from caffecompat.proto import caffe_pb2

BACKENDS = ("lmdb", "leveldb")


def backend_name(backend: int | str, where: str) -> str:
    """'lmdb' or 'leveldb' for a DataParameter.DB value or a -backend flag (any case)."""
    if backend == caffe_pb2.DataParameter.LMDB:
        return "lmdb"
    if backend == caffe_pb2.DataParameter.LEVELDB:
        return "leveldb"
    if isinstance(backend, str) and backend.lower() in BACKENDS:
        return backend.lower()
    raise CaffeCompatError(f"{where}: unknown database backend {backend!r}; use lmdb or leveldb")


class Reader(Protocol):
    """A database opened for reading, records in key order."""

    backend: str
    path: str

    def count(self) -> int: ...
    def first(self) -> tuple[bytes, bytes]: ...
    def records(self) -> Iterator[tuple[bytes, bytes]]: ...
    def cycle(self, on_restart: Callable[[], None] | None = None) -> Iterator[tuple[bytes, bytes]]: ...
    def close(self) -> None: ...


class Writer(Protocol):
    """A new database written all-or-nothing."""

    def put(self, key: bytes, value: bytes) -> None: ...
    def commit(self) -> None: ...
    def finish(self) -> None: ...
    def abort(self) -> None: ...


class LmdbReader:
    """lmdb_reader's functions as a Reader."""

    backend = "lmdb"

    def __init__(self, path: str, where: str) -> None:
        if os.path.isdir(path) and not os.path.exists(os.path.join(path, "data.mdb")) \
                and os.path.exists(os.path.join(path, "CURRENT")):
            prefix = f"{where}: " if where else ""
            raise CaffeCompatError(f"{prefix}{path} is a LevelDB database, not an LMDB one; set `backend: LEVELDB` "
                                   "in data_param (or remove the backend field: LevelDB is Caffe's default), "
                                   "or pass -backend leveldb")
        self.path, self.where = path, where
        self.env = lmdb_reader.open_env(path, where)
        try:
            self.pages = lmdb_reader.PageCheck(path, where)
        except BaseException:
            lmdb_reader.close_env(self.env)
            raise

    def count(self) -> int:
        return lmdb_reader.count(self.env)

    def first(self) -> tuple[bytes, bytes]:
        return lmdb_reader.first(self.env, self.path, self.where, self.pages)

    def records(self) -> Iterator[tuple[bytes, bytes]]:
        return lmdb_reader.records(self.env, self.path, self.where, self.pages)

    def cycle(self, on_restart: Callable[[], None] | None = None) -> Iterator[tuple[bytes, bytes]]:
        return lmdb_reader.cycle(self.env, self.path, self.where, self.pages, on_restart)

    def close(self) -> None:
        lmdb_reader.close_env(self.env)
        self.pages.close()


def open_reader(path: str, backend: int | str, where: str) -> Reader:
    """Open the database at `path` read-only; errors name `where` (a layer or a flag) and the file."""
    if backend_name(backend, where) == "leveldb":
        return leveldb_db.LevelDbReader(path, where)
    return LmdbReader(path, where)


def open_writer(path: str, backend: int | str, overwrite: bool = False) -> Writer:
    """A writer for a new database at `path` (an existing one is an error unless `overwrite`)."""
    if backend_name(backend, "-backend") == "leveldb":
        return leveldb_db.LevelDbWriter(path, overwrite)
    from caffecompat.data.lmdb_writer import LmdbWriter

    return LmdbWriter(path, overwrite)


def opened_line(backend: str, path: str) -> tuple[str, str]:
    """The (source location, message) of Caffe's `Opened lmdb X` / `Opened leveldb X` log line."""
    return ("db_leveldb.cpp:18", f"Opened leveldb {path}") if backend == "leveldb" \
        else ("db_lmdb.cpp:35", f"Opened lmdb {path}")
