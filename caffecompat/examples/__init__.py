"""Caffe workflows bundled with caffecompat, runnable after a plain `pip install caffecompat`.

    caffecompat example shapes DIR              # or: python -m caffecompat.examples.shapes DIR

Each example is a subpackage holding its model definitions (package data) and
its Python steps. The repository's examples/ folder holds the readable shell
versions (examples/shapes/run.sh), which use these same files.
"""
