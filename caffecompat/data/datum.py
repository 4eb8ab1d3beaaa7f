"""Caffe's Datum records: raw pixels or encoded image bytes, with a label.

A raw Datum holds channels x height x width pixels in C x H x W order, as
uint8 bytes in `data` or as floats in `float_data`. An encoded Datum
(`encoded: true`) holds the bytes of an image file (JPEG, PNG...) in `data`,
decoded with OpenCV into BGR order when read.
"""

from __future__ import annotations

from enum import Enum

import cv2
import numpy as np
from google.protobuf import message as pb_message

from caffecompat.data import image_io
from caffecompat.errors import CaffeCompatError
from caffecompat.proto import caffe_pb2


class ColorMode(Enum):
    """How an encoded Datum is decoded (TransformationParameter force_color / force_gray)."""

    NATIVE = "native"  # the file's own channels (imdecode flag -1, IMREAD_UNCHANGED)
    COLOR = "color"
    GRAY = "gray"


def parse(value: bytes, what: str) -> caffe_pb2.Datum:
    """Parse a serialized Datum; bytes that are not one raise a CaffeCompatError naming `what`."""
    datum = caffe_pb2.Datum()
    try:
        datum.ParseFromString(value)
    except pb_message.DecodeError as e:
        raise CaffeCompatError(
            f"{what}: not a Caffe Datum record ({e}); is this an image database written by "
            "convert_imageset / convert-lmdb?"
        ) from None
    if not datum.encoded and datum.channels <= 0:
        raise CaffeCompatError(
            f"{what}: not a Caffe Datum record (no channels and not encoded); is this an image "
            "database written by convert_imageset / convert-lmdb?"
        )
    return datum


def from_image(img: np.ndarray, label: int) -> caffe_pb2.Datum:
    """Caffe's CVMatToDatum: a raw uint8 Datum from an OpenCV image, C x H x W."""
    chw = image_io.to_chw(img)
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = (int(d) for d in chw.shape)
    datum.data = np.ascontiguousarray(chw).tobytes()
    datum.label = label
    # CVMatToDatum sets encoded = false explicitly, so the field is present in Caffe's bytes.
    datum.encoded = False
    return datum


def from_encoded(data: bytes, label: int) -> caffe_pb2.Datum:
    """An encoded Datum: image file bytes, label and encoded = true (Caffe's field set)."""
    datum = caffe_pb2.Datum()
    datum.data = data
    datum.label = label
    datum.encoded = True
    return datum


def decode_encoded(datum: caffe_pb2.Datum, mode: ColorMode, what: str) -> np.ndarray:
    """The OpenCV image of an encoded Datum (DecodeDatumToCVMat / DecodeDatumToCVMatNative)."""
    flags = {
        ColorMode.NATIVE: cv2.IMREAD_UNCHANGED,
        ColorMode.COLOR: cv2.IMREAD_COLOR,
        ColorMode.GRAY: cv2.IMREAD_GRAYSCALE,
    }[mode]
    img = image_io.decode(datum.data, flags, what)
    # Caffe's transformer requires 8-bit pixels (CV_8U); a 16-bit PNG decoded natively is not.
    if img.dtype != np.uint8:
        raise CaffeCompatError(f"{what}: encoded image has {img.dtype} pixels; Caffe needs 8-bit images")
    return img


def to_array(datum: caffe_pb2.Datum, mode: ColorMode, what: str) -> np.ndarray:
    """The Datum's pixels as C x H x W: uint8 for `data` and encoded images, float32 for float_data."""
    if datum.encoded:
        return image_io.to_chw(decode_encoded(datum, mode, what))
    shape = (datum.channels, datum.height, datum.width)
    count = shape[0] * shape[1] * shape[2]
    if datum.data:
        if len(datum.data) != count:
            raise CaffeCompatError(
                f"{what}: Datum holds {len(datum.data)} bytes but channels x height x width = "
                f"{' x '.join(map(str, shape))} = {count}"
            )
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape)
    if len(datum.float_data) != count:
        raise CaffeCompatError(
            f"{what}: Datum holds {len(datum.float_data)} float_data values but channels x height x "
            f"width = {' x '.join(map(str, shape))} = {count}"
        )
    return np.asarray(datum.float_data, dtype=np.float32).reshape(shape)


def shape_of(datum: caffe_pb2.Datum, mode: ColorMode, what: str) -> tuple[int, int, int]:
    """C x H x W of the Datum's image (decoding it when encoded, as Caffe's InferBlobShape does)."""
    if datum.encoded:
        return tuple(int(d) for d in to_array(datum, mode, what).shape)  # type: ignore[return-value]
    return (datum.channels, datum.height, datum.width)
