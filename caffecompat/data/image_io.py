"""Image files in and out through OpenCV, as Caffe's io.cpp reads and writes them.

Images are numpy arrays in OpenCV's layout: H x W x 3 in BGR order for colour,
H x W for grey, uint8. Decoding and resizing call the same OpenCV functions
Caffe calls, so PNG-sourced pixels come out byte-identical to Caffe's.
"""

from __future__ import annotations

import os
import struct

import cv2
import numpy as np

from caffecompat.errors import CaffeCompatError, printable
from caffecompat.formats.protofile import check_regular


class ImageReadError(CaffeCompatError):
    """An image file that is missing or that OpenCV cannot decode."""


# PIL's decompression-bomb limit (Image.MAX_IMAGE_PIXELS): a bigger image is refused before decoding.
DEFAULT_MAX_PIXELS = 89478485
MAX_PIXELS_ENV = "CAFFECOMPAT_MAX_IMAGE_PIXELS"
_max_pixels: int | None = None  # -max_image_pixels, when given


def set_max_pixels(n: int | None) -> None:
    """-max_image_pixels N: the largest image (width x height) decoded; None: the environment's or the default."""
    if n is not None and n <= 0:
        raise CaffeCompatError(f"-max_image_pixels {n}: must be positive")
    global _max_pixels
    _max_pixels = n


def max_pixels() -> int:
    """The pixel budget: -max_image_pixels, else $CAFFECOMPAT_MAX_IMAGE_PIXELS, else PIL's 89478485."""
    if _max_pixels is not None:
        return _max_pixels
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n <= 0:
        raise CaffeCompatError(f"{MAX_PIXELS_ENV}={text!r}: must be a positive number of pixels")
    return n


def read_file(path: str) -> bytes:
    """The bytes of an image file; missing, unreadable or non-regular files raise ImageReadError."""
    try:
        check_regular(path, "image")
    except CaffeCompatError as e:
        raise ImageReadError(str(e)) from None
    try:
        with open(path, "rb") as f:
            return f.read()
    except (FileNotFoundError, ValueError):  # ValueError: a NUL character in the name
        raise ImageReadError(f"{printable(path)}: no such image file") from None
    except IsADirectoryError:
        raise ImageReadError(f"{printable(path)}: is a directory, expected an image file") from None
    except OSError as e:
        raise ImageReadError(f"{printable(path)}: cannot read image file: {e.strerror}") from None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    # Walk the JPEG markers to the first start-of-frame (SOF0..SOF15 but DHT C4, JPG C8, DAC CC).
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD9)):  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack_from(">H", data, i + 2)
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > len(data):
                return None
            h, w = struct.unpack_from(">HH", data, i + 5)
            return w, h
        i += 2 + length
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    # The first IFD's ImageWidth (256) and ImageLength (257) entries.
    order = "<" if data[:2] == b"II" else ">"
    if len(data) < 8:
        return None
    (ifd,) = struct.unpack_from(order + "I", data, 4)
    if ifd + 2 > len(data):
        return None
    (n,) = struct.unpack_from(order + "H", data, ifd)
    size: dict[int, int] = {}
    for k in range(n):
        at = ifd + 2 + 12 * k
        if at + 12 > len(data):
            break
        tag, kind = struct.unpack_from(order + "HH", data, at)
        if tag in (256, 257):
            size[tag] = struct.unpack_from(order + ("H" if kind == 3 else "I"), data, at + 8)[0]
    return (size[256], size[257]) if len(size) == 2 else None


def _pnm_size(data: bytes) -> tuple[int, int] | None:
    fields: list[int] = []
    for line in data[2:256].split(b"\n"):
        for word in line.split(b"#", 1)[0].split():
            if not word.isdigit():
                return None
            fields.append(int(word))
            if len(fields) == 2:
                return fields[0], fields[1]
    return None


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from an encoded image's header (PNG, JPEG, BMP, GIF, WebP, TIFF, PNM), without
    decoding it; None for a format this does not know or a header too damaged to say."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            return struct.unpack_from(">II", data, 16)  # IHDR
        if data[:2] == b"\xff\xd8":
            return _jpeg_size(data)
        if data[:2] == b"BM":
            w, h = struct.unpack_from("<ii", data, 18)
            return abs(w), abs(h)
        if data[:6] in (b"GIF87a", b"GIF89a"):
            return struct.unpack_from("<HH", data, 6)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            chunk = data[12:16]
            if chunk == b"VP8X":
                w = int.from_bytes(data[24:27], "little") + 1
                return w, int.from_bytes(data[27:30], "little") + 1
            if chunk == b"VP8L":
                bits = int.from_bytes(data[21:25], "little")
                return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
            if chunk == b"VP8 ":
                w, h = struct.unpack_from("<HH", data, 26)
                return w & 0x3FFF, h & 0x3FFF
            return None
        if data[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff_size(data)
        if data[:1] == b"P" and data[1:2] in b"123456":
            return _pnm_size(data)
    except struct.error:
        return None
    return None


def check_pixels(data: bytes, what: str) -> None:
    """Refuse an encoded image larger than the pixel budget before OpenCV allocates it."""
    size = image_size(data)
    if size is None:
        return
    budget = max_pixels()
    if size[0] * size[1] > budget:
        raise ImageReadError(f"{what}: image of {size[0]} x {size[1]} = {size[0] * size[1]} pixels is larger than "
                             f"the limit of {budget} (a decompression bomb?); if it is meant, raise the limit with "
                             f"-max_image_pixels N or {MAX_PIXELS_ENV}=N")


def decode(data: bytes, flags: int, what: str) -> np.ndarray:
    """cv2.imdecode of encoded image bytes; undecodable bytes or an image beyond the pixel budget raise
    ImageReadError naming `what`."""
    check_pixels(data, what)
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
