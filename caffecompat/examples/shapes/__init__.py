"""The shapes example: Caffe's whole workflow on a 4-class image set it draws itself.

This folder is the one source of the example: its five model definitions
(*.prototxt, written for it), `make_images` (the data set), `classify`
(shapes.onnx in plain onnxruntime), `models` (the definitions copied into a work
folder, on a shorter schedule if asked) and `run` (every step in order:
images -> LMDB -> mean -> train -> test -> fine-tune -> ONNX -> classify), which
`caffecompat example shapes DIR` and `python -m caffecompat.examples.shapes DIR`
start. examples/shapes/run.sh in a clone runs the same steps as shell commands.
"""
