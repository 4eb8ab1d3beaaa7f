"""`caffecompat make-list`: the Caffe list file (and labels file) of an image folder with one subfolder per class.

    caffecompat make-list [FLAGS] IMAGEFOLDER LISTFILE
"""

from __future__ import annotations

import argparse

from caffecompat import outfiles
from caffecompat.commands.convert_lmdb import add_folder_flags, scan_folder
from caffecompat.data import image_folder
from caffecompat.glog import info


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the make-list subcommand."""
    p = subparsers.add_parser(
        "make-list",
        help="write the 'path label' list of an image folder with one subfolder per class",
        description=(
            "Write LISTFILE, the Caffe list of the images of IMAGEFOLDER ('class/file label' lines, paths "
            "relative to IMAGEFOLDER, for convert-lmdb IMAGEFOLDER/ LISTFILE DB_NAME and ImageData layers), and a "
            "labels file naming the classes. Classes are the subfolders, labelled 0, 1, ... in sorted name order "
            "(or in -classes order); images are the image files below each, in sorted path order."
        ),
    )
    p.add_argument("folder", metavar="IMAGEFOLDER", help="a folder with one subfolder of images per class")
    p.add_argument("list_file", metavar="LISTFILE", help="the list file to write")
    add_folder_flags(p, "LISTFILE")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Scan and write; exit status 0."""
    outfiles.check_writable(args.list_file, "list file")
    found = scan_folder(args.folder, args.labels_file, args.classes, args.list_file)
    text = image_folder.list_text(found.items)
    outfiles.write_atomic(args.list_file, text.encode("utf-8", "surrogateescape"), "list file")
    info("image_folder.py", f"Wrote {len(found.items)} images of {len(found.classes)} classes to {args.list_file}")
    return 0
