"""Caffe's protobuf messages (generated from proto/caffe.proto)."""

from caffecompat.proto import caffe_pb2

__all__ = ["caffe_pb2"]
