"""`caffecompat convert-lmdb`: Caffe's convert_imageset, with its single-dash flags.

    caffecompat convert-lmdb [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME
"""

from __future__ import annotations

import argparse
import os

from caffecompat.data.convert_imageset import Options, convert_imageset
from caffecompat.glog import warning


def _flag(parser: argparse.ArgumentParser, name: str, **kw: object) -> None:
    # Caffe's gflags spelling (-gray) and the GNU one (--gray) both work.
    parser.add_argument(f"-{name}", f"--{name}", dest=name, **kw)  # type: ignore[arg-type]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the convert-lmdb subcommand."""
    p = subparsers.add_parser(
        "convert-lmdb",
        help="convert a list of images to an LMDB database (Caffe's convert_imageset)",
        description=(
            "Convert a set of images to the LMDB format used as input for Caffe, as Caffe's "
            "convert_imageset does. LISTFILE holds 'path label' lines; each path is appended to "
            "ROOTFOLDER as text (end it with '/'). Records are keyed '%08d_<path>' in list order. "
            "Images that cannot be read are reported and skipped."
        ),
    )
    p.add_argument("root", metavar="ROOTFOLDER/", help="prefix of every path in LISTFILE")
    p.add_argument("list_file", metavar="LISTFILE", help="text file of 'relative/path label' lines")
    p.add_argument("db", metavar="DB_NAME", help="the LMDB database (a directory) to create")
    _flag(p, "gray", action="store_true", help="treat images as grayscale ones")
    _flag(p, "shuffle", action="store_true",
          help="randomly shuffle the order of images and their labels; seeded by -seed, so the order "
               "repeats, but it is not the order Caffe's own random generator would give")
    _flag(p, "seed", type=int, default=0, help="seed of the -shuffle order (default 0)")
    _flag(p, "backend", default="lmdb", help="the database backend: lmdb (leveldb is not supported)")
    _flag(p, "resize_width", type=int, default=0, help="width images are resized to")
    _flag(p, "resize_height", type=int, default=0, help="height images are resized to")
    _flag(p, "check_size", action="store_true",
          help="check that all images have the same size; fail (writing nothing) when not")
    _flag(p, "encoded", action="store_true", help="store the encoded image in the Datum")
    _flag(p, "encode_type", default="",
          help="what type to encode images as ('png', 'jpg', ...); implies -encoded")
    _flag(p, "overwrite", action="store_true", help="replace DB_NAME if it already exists")
    _flag(p, "workers", type=int, default=os.cpu_count() or 1,
          help="threads decoding, resizing and encoding images (default: all cores)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Convert; exit status 0 (skipped unreadable images are reported, as Caffe does)."""
    opts = Options(
        gray=args.gray, shuffle=args.shuffle, seed=args.seed, backend=args.backend,
        resize_height=args.resize_height, resize_width=args.resize_width, check_size=args.check_size,
        encoded=args.encoded, encode_type=args.encode_type, overwrite=args.overwrite,
        workers=max(1, args.workers),
    )
    result = convert_imageset(args.root, args.list_file, args.db, opts)
    if result.skipped:
        warning("convert_imageset.cpp:153",
                f"Skipped {len(result.skipped)} image(s) that could not be read (listed above).")
    return 0
