"""Reading LMDB databases as Caffe's db_lmdb.cpp does: read-only, records in key order.

Databases are opened read-only without the lock file (lock=False), so a
database on a read-only disk or owned by another user reads fine, as Caffe's
MDB_NOLOCK fallback allows.

liblmdb trusts its page structures: a damaged page header or node offset makes
it read outside its map (SIGBUS, SIGSEGV) or fail an assertion (SIGABRT), which
no Python code can catch. `PageCheck` reads the B-tree's page headers itself
(mdb.c's layout, 64-bit builds) before liblmdb touches them: every branch page
when the database is opened, each leaf page just before the cursor enters it
(one struct unpack per record, once per run), so a damaged page is a
`DamagedDataError` naming the database instead of a signal death. The bytes of
the stored values are not checked: LMDB keeps no checksums.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
from collections.abc import Callable, Iterator

import lmdb

from caffecompat.errors import CaffeCompatError, DamagedDataError, NotSupportedError, printable

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


# mdb.c's page header: mp_pgno (8 bytes), mp_pad, mp_flags, mp_lower, mp_upper (2 bytes each);
# a node: mn_lo, mn_hi, mn_flags, mn_ksize (2 bytes each), then the key and the data.
_PAGE_HEADER = struct.Struct("<QHHHH")
_NODE = struct.Struct("<HHHH")
_PAGEHDRSZ = 16
_NODESIZE = 8
_P_BRANCH, _P_LEAF, _P_DIRTY = 0x01, 0x02, 0x10
_F_BIGDATA = 0x01
_MDB_DUPSORT = 0x04
_P_INVALID = (1 << 64) - 1
_MAX_DEPTH = 32  # mdb.c's CURSOR_STACK: deeper trees cannot be read


def _main_db(raw: bytes) -> tuple[int, int, int, int]:
    """(flags, depth, entries, root) of the main database in a meta page (mm_dbs[MAIN_DBI])."""
    _, flags, depth, _, _, _, entries, root = struct.unpack_from("<IHHQQQQQ", raw, _META_OFFSET + 72)
    return flags, depth, entries, root


class PageCheck:
    """The B-tree of one LMDB data.mdb, checked as liblmdb will walk it (see the module docstring).

    `leaves` are the leaf pages in key order; `leaf_keys(i)` checks leaf i (once)
    and returns how many records it holds.
    """

    def __init__(self, path: str, where: str) -> None:
        self.path, self.prefix = path, _prefix(where)
        data = os.path.join(path, "data.mdb")
        try:
            with open(data, "rb") as f:
                self.map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as e:
            raise CaffeCompatError(f"{self.prefix}cannot read LMDB database {printable(path)}: {e}") from None
        psize = _meta(self.map[:4096])[0]  # type: ignore[index]  # check_data_file ran first
        metas = [self.map[i * psize:i * psize + _META_OFFSET + _META.size + 8] for i in (0, 1)]
        # mdb_env_pick_meta: the meta page with the larger transaction id is the committed one.
        chosen = max(metas, key=lambda m: _meta(m)[2])  # type: ignore[index]
        self.psize, self.last_page = psize, _meta(chosen)[1]  # type: ignore[index]
        flags, self.depth, self.entries, root = _main_db(chosen)
        self.root = root
        if flags & _MDB_DUPSORT:
            raise NotSupportedError(f"LMDB database {printable(path)} with duplicate keys (MDB_DUPSORT); "
                                    "write it with one value per key (convert-lmdb does)")
        self.leaves: list[int] = []
        self._keys: dict[int, int] = {}
        if root == _P_INVALID or self.entries == 0:
            return
        if not 1 <= self.depth <= _MAX_DEPTH:
            self._damaged(root, f"has a tree depth of {self.depth} in its header")
        self._walk(root, 1, set())

    def _damaged(self, page: int, what: str) -> None:
        raise DamagedDataError(f"{self.prefix}LMDB database {printable(self.path)} is damaged: page {page} {what}; "
                               "restore it from a copy or rebuild it with convert-lmdb")

    def _page(self, page: int, want: int) -> tuple[int, list[int]]:
        """Check page `page`'s header (its flags must be `want`) and return (its offset, its node offsets)."""
        if not 2 <= page <= self.last_page:
            self._damaged(page, f"is referenced but lies outside the database's {self.last_page + 1} pages")
        base = page * self.psize
        pgno, _, flags, lower, upper = _PAGE_HEADER.unpack_from(self.map, base)
        kind = "branch" if want == _P_BRANCH else "leaf"
        if flags & ~_P_DIRTY != want or pgno != page:
            self._damaged(page, f"should be a {kind} page but its header says otherwise "
                                f"(flags {flags:#x}, page number {pgno})")
        if not _PAGEHDRSZ + 2 <= lower <= upper <= self.psize or (lower - _PAGEHDRSZ) % 2:
            self._damaged(page, f"has corrupt bounds in its header (lower {lower}, upper {upper})")
        nodes = struct.unpack_from(f"<{(lower - _PAGEHDRSZ) // 2}H", self.map, base + _PAGEHDRSZ)
        for offset in nodes:
            if not upper <= offset <= self.psize - _NODESIZE:
                self._damaged(page, f"has a node offset {offset} outside its node area ({upper}..{self.psize})")
        return base, list(nodes)

    def _walk(self, page: int, depth: int, seen: set[int]) -> None:
        if not 2 <= page <= self.last_page:
            self._damaged(page, f"is referenced but lies outside the database's {self.last_page + 1} pages")
        if page in seen:
            self._damaged(page, "is referenced twice in the tree")
        seen.add(page)
        if depth == self.depth:
            self.leaves.append(page)
            return
        base, nodes = self._page(page, _P_BRANCH)
        for offset in nodes:
            lo, hi, flags, ksize = _NODE.unpack_from(self.map, base + offset)
            if offset + _NODESIZE + ksize > self.psize:
                self._damaged(page, f"has a key of {ksize} bytes running past the page's end")
            self._walk(lo | hi << 16 | flags << 32, depth + 1, seen)

    def leaf_keys(self, index: int) -> int:
        """Check the index-th leaf page before the cursor enters it; the number of records on it."""
        page = self.leaves[index]
        known = self._keys.get(page)
        if known is not None:
            return known
        base, nodes = self._page(page, _P_LEAF)
        for offset in nodes:
            lo, hi, flags, ksize = _NODE.unpack_from(self.map, base + offset)
            size = lo | hi << 16
            end = offset + _NODESIZE + ksize
            if flags & ~_F_BIGDATA:
                self._damaged(page, f"has a record with unknown flags {flags:#x}")
            if flags & _F_BIGDATA:
                if end + 8 > self.psize:
                    self._damaged(page, "has a record running past the page's end")
                (first,) = struct.unpack_from("<Q", self.map, base + end)
                # mdb.c's OVPAGES: the overflow pages a value of `size` bytes fills.
                pages = (_PAGEHDRSZ - 1 + size) // self.psize + 1
                if not 2 <= first or first + pages - 1 > self.last_page:
                    self._damaged(page, f"has a record of {size} bytes on pages {first}..{first + pages - 1}, "
                                        f"outside the database's {self.last_page + 1} pages")
            elif end + size > self.psize:
                self._damaged(page, f"has a record of {size} bytes running past the page's end")
        self._keys[page] = len(nodes)
        return len(nodes)

    def mismatch(self) -> None:
        """liblmdb's cursor ended before the pages this check walked did."""
        raise DamagedDataError(f"{self.prefix}LMDB database {printable(self.path)} is damaged: its tree holds "
                               "fewer records than its pages do; restore it from a copy or rebuild it with "
                               "convert-lmdb")

    def close(self) -> None:
        """Unmap data.mdb."""
        self.map.close()


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
            # Bytes: py-lmdb would encode a str path as UTF-8, failing on a folder with other bytes.
            env = lmdb.open(os.fsencode(path), readonly=True, lock=False, readahead=False, subdir=True)
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


def first(env: lmdb.Environment, path: str, where: str, pages: PageCheck) -> tuple[bytes, bytes]:
    """The first record (key, value); an empty database raises a CaffeCompatError."""
    if pages.leaves:
        pages.leaf_keys(0)
    with env.begin(buffers=False) as txn:
        cursor = txn.cursor()
        if not cursor.first():
            raise CaffeCompatError(f"{_prefix(where)}LMDB database {printable(path)} has no records")
        return cursor.key(), cursor.value()


def _walk(env: lmdb.Environment, path: str, where: str, pages: PageCheck, forever: bool,
          on_restart: Callable[[], None] | None) -> Iterator[tuple[bytes, bytes]]:
    # The cursor moves onto leaf page i only after pages.leaf_keys(i) checked it.
    try:
        with env.begin(buffers=False) as txn:
            cursor = txn.cursor()
            if not pages.leaves:
                if forever:
                    raise CaffeCompatError(f"{_prefix(where)}LMDB database {printable(path)} has no records")
                return
            leaf, left = 0, pages.leaf_keys(0)
            if not cursor.first():
                raise CaffeCompatError(f"{_prefix(where)}LMDB database {printable(path)} has no records")
            while True:
                yield cursor.key(), cursor.value()
                left -= 1
                if left == 0:
                    leaf += 1
                    if leaf == len(pages.leaves):
                        if not forever:
                            return
                        leaf = 0
                        if on_restart is not None:
                            on_restart()
                        left = pages.leaf_keys(0)
                        if not cursor.first():
                            raise CaffeCompatError(f"{_prefix(where)}LMDB database {printable(path)} has no records")
                        continue
                    left = pages.leaf_keys(leaf)
                if not cursor.next():
                    pages.mismatch()
    except lmdb.Error as e:
        raise CaffeCompatError(f"{_prefix(where)}cannot read LMDB database {printable(path)}: {e}") from None


def records(env: lmdb.Environment, path: str, where: str, pages: PageCheck) -> Iterator[tuple[bytes, bytes]]:
    """Every record (key, value) in key order, once."""
    return _walk(env, path, where, pages, False, None)


def cycle(env: lmdb.Environment, path: str, where: str, pages: PageCheck,
          on_restart: Callable[[], None] | None = None) -> Iterator[tuple[bytes, bytes]]:
    """Records in key order forever: Caffe's DataLayer::Next seeks to the first at the end.

    `on_restart` is called each time the cursor wraps. Use from one thread only.
    """
    return _walk(env, path, where, pages, True, on_restart)
