"""`caffecompat compute-mean`: Caffe's compute_image_mean.

    caffecompat compute-mean [FLAGS] DB_NAME [MEAN_FILE]
"""

from __future__ import annotations

import argparse

from caffecompat import outfiles
from caffecompat.data.db import backend_name
from caffecompat.data.image_mean import channel_means, compute_mean, write_mean
from caffecompat.glog import info


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the compute-mean subcommand."""
    p = subparsers.add_parser(
        "compute-mean",
        help="compute the mean image of an LMDB or LevelDB database (Caffe's compute_image_mean)",
        description=(
            "Compute the mean image of the images in an LMDB (or LevelDB) database and write it as a "
            "1 x C x H x W .binaryproto, usable as transform_param mean_file. Prints the per-channel "
            "mean values (for transform_param mean_value) as Caffe does."
        ),
    )
    p.add_argument("db", metavar="DB_NAME", help="the database (a directory)")
    p.add_argument("mean_file", metavar="MEAN_FILE", nargs="?",
                   help="where to write the mean .binaryproto (without it, only print the channel means)")
    p.add_argument("-backend", "--backend", dest="backend", default="lmdb",
                   help="the database backend: lmdb (default) or leveldb (needs the plyvel package: "
                        "pip install 'caffecompat[leveldb]')")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Compute, write and report the mean; exit status 0."""
    backend_name(args.backend, f"-backend {args.backend}")
    if args.mean_file:
        # Before the pass over the database, not after it.
        outfiles.check_writable(args.mean_file, "mean file")
    mean, count = compute_mean(args.db, args.backend)
    info("compute_image_mean.cpp:101", f"Processed {count} files.")
    if args.mean_file:
        info("compute_image_mean.cpp:108", f"Write to {args.mean_file}")
        write_mean(args.mean_file, mean)
    info("compute_image_mean.cpp:114", f"Number of channels: {mean.shape[1]}")
    for c, value in enumerate(channel_means(mean)):
        info("compute_image_mean.cpp:119", f"mean_value channel [{c}]: {value:.6g}")
    return 0
