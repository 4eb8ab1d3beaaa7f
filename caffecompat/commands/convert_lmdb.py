"""`caffecompat convert-lmdb`: Caffe's convert_imageset, with its single-dash flags.

    caffecompat convert-lmdb [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME
    caffecompat convert-lmdb [FLAGS] IMAGEFOLDER DB_NAME     (one subfolder per class)
"""

from __future__ import annotations

import argparse
import os

from caffecompat.data import image_folder
from caffecompat.data.convert_imageset import Options, convert_imageset
from caffecompat.errors import CaffeCompatError
from caffecompat.glog import info, warning


def _flag(parser: argparse.ArgumentParser, name: str, **kw: object) -> None:
    # Caffe's gflags spelling (-gray) and the GNU one (--gray) both work.
    parser.add_argument(f"-{name}", f"--{name}", dest=name, **kw)  # type: ignore[arg-type]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the convert-lmdb subcommand."""
    p = subparsers.add_parser(
        "convert-lmdb",
        help="convert a list of images, or a folder of class folders, to an LMDB or LevelDB database "
             "(Caffe's convert_imageset)",
        description=(
            "Convert a set of images to the LMDB (or LevelDB) format used as input for Caffe, as Caffe's "
            "convert_imageset does. LISTFILE holds 'path label' lines; each path is appended to "
            "ROOTFOLDER as text (end it with '/'). Records are keyed '%08d_<path>' in list order. "
            "Images that cannot be read are reported and skipped. With two arguments, IMAGEFOLDER DB_NAME, "
            "the images are those of an image folder: one subfolder per class, labelled 0, 1, ... in sorted "
            "name order (or in -classes order), and the class names are written to a labels file."
        ),
    )
    p.add_argument("root", metavar="ROOTFOLDER/", help="prefix of every path in LISTFILE (or the image folder)")
    p.add_argument("list_file", metavar="LISTFILE", help="text file of 'relative/path label' lines")
    p.add_argument("db", metavar="DB_NAME", nargs="?", help="the database (a directory) to create")
    _flag(p, "gray", action="store_true", help="treat images as grayscale ones")
    _flag(p, "shuffle", action="store_true",
          help="randomly shuffle the order of images and their labels; seeded by -seed, so the order "
               "repeats, but it is not the order Caffe's own random generator would give")
    _flag(p, "seed", type=int, default=0, help="seed of the -shuffle order (default 0)")
    _flag(p, "backend", default="lmdb",
          help="the database backend: lmdb (default) or leveldb (needs the plyvel package: "
               "pip install 'caffecompat[leveldb]')")
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
    add_folder_flags(p, "DB_NAME")
    p.set_defaults(func=run)


def add_folder_flags(p: argparse.ArgumentParser, output: str) -> None:
    """-labels_file and -classes, for image folders (convert-lmdb IMAGEFOLDER DB_NAME, make-list)."""
    _flag(p, "labels_file", default="", metavar="FILE",
          help=f"image folders: where to write the class names, line i naming label i (default: labels.txt "
               f"beside {output}, unless -classes names them; an identical file there is kept, one with other "
               "classes is an error)")
    _flag(p, "classes", default="", metavar="FILE",
          help="image folders: label the class folders in the order of this labels file (e.g. the training "
               "folder's, to label a validation folder the same way) instead of sorted name order")


def default_labels_file(output: str) -> str:
    """labels.txt in the folder of `output`."""
    return os.path.join(os.path.dirname(os.path.abspath(output)), "labels.txt")


def scan_folder(folder: str, labels_file: str, classes: str, output: str) -> image_folder.ImageFolder:
    """Scan an image folder, log what it found and write its labels file."""
    found = image_folder.scan(folder, classes or None)
    info("image_folder.py", f"Image folder {folder}: {len(found.classes)} classes, "
                                    f"{len(found.items)} images")
    if found.skipped:
        shown = ", ".join(found.skipped[:5]) + (" ..." if len(found.skipped) > 5 else "")
        warning("image_folder.py", f"Skipped {len(found.skipped)} file(s) of {folder} that are not images "
                                           f"in a class folder: {shown}")
    # With -classes, that file already names the labels: no copy unless -labels_file asks for one.
    labels = labels_file or ("" if classes else default_labels_file(output))
    if labels and image_folder.write_labels(labels, found.classes):
        info("image_folder.py", f"Wrote the class names to {labels}")
    return found


def run(args: argparse.Namespace) -> int:
    """Convert; exit status 0 (skipped unreadable images are reported, as Caffe does), 1 when none converts."""
    opts = Options(
        gray=args.gray, shuffle=args.shuffle, seed=args.seed, backend=args.backend,
        resize_height=args.resize_height, resize_width=args.resize_width, check_size=args.check_size,
        encoded=args.encoded, encode_type=args.encode_type, overwrite=args.overwrite,
        workers=max(1, args.workers),
    )
    if args.db is None:
        # Two arguments: IMAGEFOLDER DB_NAME.
        folder, db = args.root, args.list_file
        if not os.path.isdir(folder):
            raise CaffeCompatError(f"{folder}: no such image folder (with two arguments, convert-lmdb reads "
                                   "IMAGEFOLDER DB_NAME; for a list file give ROOTFOLDER/ LISTFILE DB_NAME)")
        found = scan_folder(folder, args.labels_file, args.classes, db)
        root = folder if folder.endswith(("/", os.sep)) else folder + "/"
        result = convert_imageset(root, f"image folder {folder}", db, opts, lines=found.list_lines())
    else:
        if os.path.isdir(args.list_file):
            raise CaffeCompatError(f"{args.list_file}: is a folder, not a list file; to convert an image folder "
                                   "give two arguments: IMAGEFOLDER DB_NAME")
        if args.labels_file or args.classes:
            raise CaffeCompatError("-labels_file and -classes apply to image folders (IMAGEFOLDER DB_NAME); a "
                                   "list file already holds its labels")
        result = convert_imageset(args.root, args.list_file, args.db, opts)
    if result.skipped:
        warning("convert_imageset.cpp:153",
                f"Skipped {len(result.skipped)} image(s) that could not be read (listed above).")
    return 0
