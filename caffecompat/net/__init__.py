"""The net model: phase/stage/level filtering, Caffe's split insertion, value names, shapes, weights."""
