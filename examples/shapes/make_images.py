#!/usr/bin/env python3
"""The shapes data set generator, for scripts that run it from here: caffecompat.examples.shapes.make_images.

The generator lives in the package (caffecompat/examples/shapes/make_images.py), so
that `caffecompat example shapes DIR` works after a plain `pip install`; this file
keeps `python examples/shapes/make_images.py OUT_DIR [--train N] [--val N] [--seed S]`
and `from make_images import CLASSES, draw_shape` working in a clone.
"""

import sys

from caffecompat.examples.shapes.make_images import CLASSES, draw_shape, main, make_split

__all__ = ["CLASSES", "draw_shape", "main", "make_split"]

if __name__ == "__main__":
    sys.exit(main())
