"""Caffe's convert_imageset: a list of images into an LMDB or LevelDB database of Datum records.

Each list line `path label` becomes one record under the key
`%08d_<path>` (its index in the list, after any shuffle), holding either the
raw pixels (C x H x W, BGR) or, with encoding, the image file's bytes: the
original file when it needs no change (same extension, no resize, colour as
asked), else the decoded image re-encoded by OpenCV. Images are decoded,
resized and encoded on a pool of threads (OpenCV releases the GIL) and
written in list order, committing every 1000 records. An image that cannot be
read is reported and skipped, as Caffe does; anything else that fails leaves
no database behind.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from caffecompat.data import datum as datum_codec
from caffecompat.data import db as dbs
from caffecompat.data import image_io, listfile
from caffecompat.errors import CaffeCompatError
from caffecompat.glog import error, info
from caffecompat.progress import Progress

# convert_imageset commits a transaction every 1000 records.
COMMIT_EVERY = 1000
# Images handed to a worker thread at a time.
_CHUNK = 8


@dataclass
class Options:
    """convert_imageset's flags."""

    gray: bool = False
    shuffle: bool = False
    seed: int = 0
    backend: str = "lmdb"
    resize_height: int = 0
    resize_width: int = 0
    check_size: bool = False
    encoded: bool = False
    encode_type: str = ""
    overwrite: bool = False
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)


@dataclass
class Result:
    """What a conversion did: records written, and the images skipped with the reason."""

    count: int
    skipped: list[str]


@dataclass
class _Item:
    key: bytes
    value: bytes | None
    shape: tuple[int, ...] = ()
    path: str = ""
    lineno: int = 0
    problem: str = ""


def _matches_extension(path: str, encoding: str) -> bool:
    # Caffe's matchExt: the file extension equals the encoding, case-insensitively; jpeg counts as jpg.
    ext = image_io.extension(path)
    enc = encoding.lower()
    return ext == enc or (enc == "jpg" and ext == "jpeg")


def _convert_one(root: str, line_id: int, line: tuple[str, int, int], opts: Options) -> _Item:
    path, label, lineno = line
    key = f"{line_id:08d}_{path}".encode("utf-8", errors="surrogateescape")
    full = root + path
    is_color = not opts.gray
    try:
        raw = image_io.read_file(full)
        img = image_io.decode(raw, image_io.color_flag(is_color), full)
    except image_io.ImageReadError as e:
        return _Item(key, None, path=full, lineno=lineno, problem=str(e).removeprefix(f"{full}: "))
    rh, rw = max(0, opts.resize_height), max(0, opts.resize_width)
    img = image_io.resize(img, rh, rw)
    shape = tuple(int(d) for d in image_io.to_chw(img).shape)
    enc = opts.encode_type
    if opts.encoded and not enc:
        # Without -encode_type, the encoding is guessed from the file's extension.
        enc = image_io.extension(path)
        if not enc:
            raise CaffeCompatError(f"{full}: cannot guess the encoding of a file without an extension; "
                                   "pass -encode_type jpg or png")
    if enc:
        # The file's own bytes are stored when it needs no change; otherwise it is re-encoded.
        if (img.ndim == 3 and img.shape[2] == 3) == is_color and not rh and not rw \
                and _matches_extension(path, enc):
            record = datum_codec.from_encoded(raw, label)
        else:
            record = datum_codec.from_encoded(image_io.encode(img, enc, full), label)
    else:
        record = datum_codec.from_image(img, label)
    return _Item(key, record.SerializeToString(), shape, full, lineno)


def _convert_chunk(root: str, chunk: list[tuple[int, tuple[str, int, int]]], opts: Options) -> list[_Item]:
    return [_convert_one(root, line_id, line, opts) for line_id, line in chunk]


def convert_imageset(root: str, list_file: str, db_path: str, opts: Options | None = None,
                     progress: bool = True, lines: list[tuple[str, int, int]] | None = None) -> Result:
    """Write the images of `list_file` (paths relative to `root`, a text prefix) to database `db_path`.

    `lines`, when given, are the list's (path, label, line number) entries (an image folder's scan) and
    `list_file` only names them in messages.
    """
    opts = opts or Options()
    backend = dbs.backend_name(opts.backend, f"-backend {opts.backend}")
    if lines is None:
        lines = listfile.read_list(list_file, "image list")
    writer = dbs.open_writer(db_path, backend, overwrite=opts.overwrite)
    if opts.shuffle:
        info("convert_imageset.cpp:86", "Shuffling data")
        order = np.random.default_rng(opts.seed).permutation(len(lines))
        lines = [lines[i] for i in order]
    info("convert_imageset.cpp:89", f"A total of {len(lines)} images.")
    if opts.encode_type and not opts.encoded:
        info("convert_imageset.cpp:92", "encode_type specified, assuming encoded=true.")
    bar = Progress("convert-lmdb", len(lines), unit="images") if progress else None
    count, skipped = 0, []
    missing = 0
    first: _Item | None = None
    pool = ThreadPoolExecutor(max(1, opts.workers), thread_name_prefix="convert-lmdb")
    pending: deque[Future] = deque()
    try:
        info(*dbs.opened_line(backend, db_path))
        numbered = list(enumerate(lines))
        chunks = [numbered[k:k + _CHUNK] for k in range(0, len(numbered), _CHUNK)]
        window = 4 * max(1, opts.workers)
        next_chunk = 0
        while pending or next_chunk < len(chunks):
            # Keep a bounded window of chunks in flight; results are consumed in list order.
            while next_chunk < len(chunks) and len(pending) < window:
                pending.append(pool.submit(_convert_chunk, root, chunks[next_chunk], opts))
                next_chunk += 1
            for item in pending.popleft().result():
                if bar is not None:
                    bar.update()
                if item.value is None:
                    # Caffe logs an unreadable image and goes on without it.
                    error("io.cpp:80", f"Could not open or find file {item.path}: {item.problem}")
                    skipped.append(item.path)
                    missing += not os.path.lexists(item.path)
                    continue
                if opts.check_size:
                    if first is None:
                        first = item
                    elif item.shape != first.shape:
                        raise CaffeCompatError(
                            f"-check_size: {item.path} (line {item.lineno} of {list_file}) is "
                            f"{_size(item.shape)} but the first image {first.path} is {_size(first.shape)}; "
                            f"no database was written (resize with -resize_height/-resize_width)"
                        )
                writer.put(item.key, item.value)
                count += 1
                if count % COMMIT_EVERY == 0:
                    writer.commit()
                    if bar is None or not bar.tty:
                        info("convert_imageset.cpp:147", f"Processed {count} files.")
        if bar is not None:
            bar.close()
        if count == 0:
            raise CaffeCompatError(_nothing_converted(root, list_file, len(lines), skipped, missing))
        writer.finish()
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        writer.abort()
        if bar is not None and bar.tty:
            sys.stderr.write("\n")
        raise
    pool.shutdown(wait=True)
    if count % COMMIT_EVERY != 0 or count == 0:
        info("convert_imageset.cpp:153", f"Processed {count} files.")
    return Result(count, skipped)


def _nothing_converted(root: str, list_file: str, total: int, skipped: list[str], missing: int) -> str:
    """Why a conversion wrote no record (Caffe writes an empty database and exits 0; we write none)."""
    if not total:
        return f"{list_file}: lists no images; no database was written"
    if missing < len(skipped):
        return (f"none of the {total} images of {list_file} could be read (e.g. {skipped[0]}, see above); "
                "no database was written")
    why = f"every image was missing: {skipped[0]}"
    # The list's path repeating the root's last folder: ROOT/Train_Images/ + Train_Images/a.jpg.
    last = os.path.basename(root.rstrip("/" + os.sep))
    first_path = skipped[0][len(root):] if skipped[0].startswith(root) else ""
    if last and first_path.split("/", 1)[0] == last:
        parent = os.path.dirname(root.rstrip("/" + os.sep))
        why += (f"; the list's paths already start with the root's last folder '{last}/': give ROOTFOLDER "
                f"{parent + '/' if parent else './'} (or list the paths without '{last}/')")
    elif root and not root.endswith(("/", os.sep)) and first_path \
            and os.path.lexists(os.path.join(root, first_path)):
        why += (f"; ROOTFOLDER '{root}' does not end in '/' and is joined to each path as text: "
                f"give '{root}/'")
    return f"{why} ({list_file}: {total} images, none found); no database was written"


def _size(shape: tuple[int, ...]) -> str:
    c, h, w = shape
    return f"{c} x {h} x {w} ({c * h * w} bytes raw)"
