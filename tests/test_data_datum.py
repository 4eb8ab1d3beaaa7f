"""Datum codec: raw, float and encoded records, decoded as Caffe decodes them."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from caffecompat.data import datum as codec
from caffecompat.data.datum import ColorMode
from caffecompat.errors import CaffeCompatError
from caffecompat.proto import caffe_pb2


def bgr(h: int = 4, w: int = 5) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_raw_datum_is_chw_with_caffes_fields():
    img = bgr()
    d = codec.from_image(img, 7)
    assert (d.channels, d.height, d.width, d.label) == (3, 4, 5, 7)
    # CVMatToDatum sets encoded=false explicitly: the field is serialized.
    assert [f.name for f, _ in d.ListFields()] == ["channels", "height", "width", "data", "label", "encoded"]
    arr = codec.to_array(codec.parse(d.SerializeToString(), "r"), ColorMode.NATIVE, "r")
    np.testing.assert_array_equal(arr, img.transpose(2, 0, 1))
    assert arr.dtype == np.uint8


def test_gray_raw_datum_has_one_channel():
    img = bgr()[:, :, 0]
    d = codec.from_image(img, 0)
    assert d.channels == 1
    np.testing.assert_array_equal(codec.to_array(d, ColorMode.NATIVE, "r")[0], img)


def test_float_data_datum():
    d = caffe_pb2.Datum(channels=2, height=1, width=2, float_data=[0.5, -1, 2, 3.25])
    arr = codec.to_array(d, ColorMode.NATIVE, "r")
    assert arr.dtype == np.float32
    np.testing.assert_array_equal(arr, np.array([0.5, -1, 2, 3.25], np.float32).reshape(2, 1, 2))


def test_encoded_png_decodes_native_color_gray():
    img = bgr()
    ok, png = cv2.imencode(".png", img)
    d = codec.from_encoded(png.tobytes(), 3)
    assert [f.name for f, _ in d.ListFields()] == ["data", "label", "encoded"]
    np.testing.assert_array_equal(codec.to_array(d, ColorMode.NATIVE, "r"), img.transpose(2, 0, 1))
    np.testing.assert_array_equal(codec.to_array(d, ColorMode.COLOR, "r"), img.transpose(2, 0, 1))
    gray = codec.to_array(d, ColorMode.GRAY, "r")
    np.testing.assert_array_equal(gray[0], cv2.imdecode(png, cv2.IMREAD_GRAYSCALE))
    assert codec.shape_of(d, ColorMode.GRAY, "r") == (1, 4, 5)


def test_encoded_gray_png_native_has_one_channel_force_color_three():
    ok, png = cv2.imencode(".png", bgr()[:, :, 1])
    d = codec.from_encoded(png.tobytes(), 0)
    assert codec.to_array(d, ColorMode.NATIVE, "r").shape == (1, 4, 5)
    assert codec.to_array(d, ColorMode.COLOR, "r").shape == (3, 4, 5)


def test_corrupt_bytes_name_the_record():
    with pytest.raises(CaffeCompatError, match=r"^db record 'k': not a Caffe Datum record"):
        codec.parse(b"\xff\xff\xff\xff", "db record 'k'")
    # Bytes that parse as some other message but hold no image.
    with pytest.raises(CaffeCompatError, match="no channels and not encoded"):
        codec.parse(caffe_pb2.NetParameter(name="net").SerializeToString(), "r")


def test_size_mismatch_and_undecodable():
    d = caffe_pb2.Datum(channels=3, height=2, width=2, data=b"\0" * 11)
    with pytest.raises(CaffeCompatError, match="holds 11 bytes but channels x height x width = 3 x 2 x 2 = 12"):
        codec.to_array(d, ColorMode.NATIVE, "r")
    bad = codec.from_encoded(b"not an image", 0)
    with pytest.raises(CaffeCompatError, match="^r: could not decode the image"):
        codec.to_array(bad, ColorMode.NATIVE, "r")
