"""caffecompat: Caffe's nets, solvers, weights and datasets, run on ONNX Runtime."""

__version__ = "0.1.0"
