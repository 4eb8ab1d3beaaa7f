"""Image files in and out through OpenCV, as Caffe's io.cpp reads and writes them.

Images are numpy arrays in OpenCV's layout: H x W x 3 in BGR order for colour,
H x W for grey, uint8. Decoding and resizing call the same OpenCV functions
Caffe calls, so PNG-sourced pixels come out byte-identical to Caffe's.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from caffecompat.errors import CaffeCompatError


class ImageReadError(CaffeCompatError):
    """An image file that is missing or that OpenCV cannot decode."""


def read_file(path: str) -> bytes:
    """The bytes of an image file; missing or unreadable files raise ImageReadError."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except (FileNotFoundError, ValueError):  # ValueError: a NUL character in the name
        raise ImageReadError(f"{path}: no such image file") from None
    except IsADirectoryError:
        raise ImageReadError(f"{path}: is a directory, expected an image file") from None
    except OSError as e:
        raise ImageReadError(f"{path}: cannot read image file: {e.strerror}") from None


def decode(data: bytes, flags: int, what: str) -> np.ndarray:
    """cv2.imdecode of encoded image bytes; undecodable bytes raise ImageReadError naming `what`."""
    buf = np.frombuffer(data, dtype=np.uint8)
    img = cv2.imdecode(buf, flags) if buf.size else None
    if img is None:
        raise ImageReadError(f"{what}: could not decode the image (not a JPEG/PNG/... file, or truncated)")
    return img


def color_flag(is_color: bool) -> int:
    """OpenCV's read flag for Caffe's is_color (CV_LOAD_IMAGE_COLOR / _GRAYSCALE)."""
    return cv2.IMREAD_COLOR if is_color else cv2.IMREAD_GRAYSCALE


def resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Caffe's ReadImageToCVMat resize: only when both sizes are > 0, cv::resize's default bilinear."""
    if height > 0 and width > 0:
        return cv2.resize(img, (width, height))
    return img


def read_image(path: str, height: int = 0, width: int = 0, is_color: bool = True) -> np.ndarray:
    """Caffe's ReadImageToCVMat: read `path` in colour (BGR) or grey, then resize if asked."""
    return resize(decode(read_file(path), color_flag(is_color), path), height, width)


def encode(img: np.ndarray, ext: str, what: str) -> bytes:
    """cv2.imencode with `ext` ("jpg", "png", ...) and OpenCV's default quality, as Caffe calls it."""
    try:
        ok, buf = cv2.imencode("." + ext, img)
    except cv2.error:
        ok, buf = False, None
    if not ok:
        raise CaffeCompatError(f"{what}: OpenCV cannot encode images as '{ext}'; use -encode_type jpg or png")
    return buf.tobytes()


def extension(path: str) -> str:
    """The lower-cased file extension without its dot ('' when there is none)."""
    return os.path.splitext(path)[1][1:].lower()


def to_chw(img: np.ndarray) -> np.ndarray:
    """An OpenCV image (H x W or H x W x C) as C x H x W, the layout of Datum.data and of blobs."""
    if img.ndim == 2:
        return img[np.newaxis]
    return img.transpose(2, 0, 1)
