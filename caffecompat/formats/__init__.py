"""Bytes <-> messages for every Caffe file kind: prototxt, caffemodel, binaryproto, solverstate."""
