"""pycaffe's caffe.io: images in and out of a net's input layout, and blobs/datums to and from numpy.

`Transformer` turns an H x W x K float image into a net input as pycaffe's
does, in pycaffe's order: resize to the input's size, transpose, channel
swap, raw scale, mean subtraction, input scale (`deprocess` undoes it).
`load_image` gives what pycaffe's gave: RGB, float32 in [0, 1], H x W x 3 (or
x 1 with color=False), from a path, a path-like or a binary file object.
Images are decoded with OpenCV, where pycaffe used scikit-image: grey
conversion uses scikit-image's weights. `resize_image` is pycaffe's: 1- and
3-channel images are stretched to [0, 1], resized as scikit-image's
resize(order, mode='constant', cval=0) (pixel centres map to pixel centres,
and samples beyond the edge blend toward 0, i.e. toward the image's minimum
once stretched back), other channel counts as scipy's ndimage.zoom (corners
map to corners). Bilinear (order 1) follows those rules exactly, and so does
nearest (order 0) for 1 and 3 channels; bicubic uses OpenCV's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import IO

import numpy as np

from caffecompat.errors import CaffeCompatError
from caffecompat.formats.blob import blob_shape
from caffecompat.proto import caffe_pb2

# scikit-image's rgb2gray weights (ITU-R BT.709 luma), which pycaffe's load_image(color=False) used.
_GREY = np.array([0.2125, 0.7154, 0.0721], np.float32)


# -- blobs and datums ------------------------------------------------------------------------


def blobproto_to_array(blob: caffe_pb2.BlobProto, return_diff: bool = False) -> np.ndarray:
    """The BlobProto's data (or diff) as an array of its shape: legacy num/channels/height/width when set."""
    values = np.array(blob.diff if return_diff else blob.data, dtype=np.float64)
    if not values.size:
        values = np.array(blob.double_diff if return_diff else blob.double_data, dtype=np.float64)
    return values.reshape(blob_shape(blob, "BlobProto"))


def array_to_blobproto(arr: np.ndarray, diff: np.ndarray | None = None) -> caffe_pb2.BlobProto:
    """A BlobProto with `arr`'s shape and values (and `diff`)."""
    arr = np.asarray(arr)
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(int(d) for d in arr.shape)
    blob.data.extend(arr.astype(float).flat)
    if diff is not None:
        blob.diff.extend(np.asarray(diff).astype(float).flat)
    return blob


def arraylist_to_blobprotovector_str(arraylist: Sequence[np.ndarray]) -> bytes:
    """A serialized BlobProtoVector of the arrays."""
    vec = caffe_pb2.BlobProtoVector()
    vec.blobs.extend(array_to_blobproto(a) for a in arraylist)
    return vec.SerializeToString()


def blobprotovector_str_to_arraylist(text: bytes) -> list[np.ndarray]:
    """The arrays of a serialized BlobProtoVector."""
    vec = caffe_pb2.BlobProtoVector()
    vec.ParseFromString(text)
    return [blobproto_to_array(b) for b in vec.blobs]


def array_to_datum(arr: np.ndarray, label: int | None = None) -> caffe_pb2.Datum:
    """A Datum of a C x H x W array: bytes for uint8, float_data otherwise."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ValueError("Incorrect array shape.")
    datum = caffe_pb2.Datum(channels=arr.shape[0], height=arr.shape[1], width=arr.shape[2])
    if arr.dtype == np.uint8:
        datum.data = arr.tobytes()
    else:
        datum.float_data.extend(arr.astype(float).flat)
    if label is not None:
        datum.label = label
    return datum


def datum_to_array(datum: caffe_pb2.Datum) -> np.ndarray:
    """A Datum's values as C x H x W: uint8 from `data`, float from `float_data` (not encoded datums)."""
    shape = (datum.channels, datum.height, datum.width)
    if len(datum.data):
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape)
    return np.array(datum.float_data).astype(float).reshape(shape)


# -- images ----------------------------------------------------------------------------------


def _image_bytes(source: str | os.PathLike | IO[bytes]) -> tuple[bytes, str]:
    """The encoded bytes of an image given as a path, a path-like or a binary file object, and its name."""
    from caffecompat.data.image_io import read_file

    if hasattr(source, "read"):
        name = str(getattr(source, "name", "<file object>"))
        # PIL's Image.open (under pycaffe's skimage.io.imread) reads a seekable file from its start, so a
        # BytesIO just written to (its position at the end) reads whole.
        if getattr(source, "seekable", lambda: False)():
            source.seek(0)
        data = source.read()
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise CaffeCompatError(f"load_image({name}): the file object gives text; open the image in binary "
                                   "mode (open(path, 'rb')) or pass io.BytesIO(data)")
        return bytes(data), name
    if not isinstance(source, (str, os.PathLike)):
        raise CaffeCompatError(f"load_image: expected an image path or a binary file object, got "
                               f"{type(source).__name__}")
    name = os.fspath(source)
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    if name.startswith(("http://", "https://", "ftp://")):
        raise CaffeCompatError(f"not supported: load_image({name}) from a URL; download it and pass the file "
                               "(or io.BytesIO(the downloaded bytes))")
    return read_file(name), name


def load_image(filename: str | os.PathLike | IO[bytes], color: bool = True) -> np.ndarray:
    """An image (path, path-like or binary file object) as float32 H x W x 3 RGB in [0, 1] (H x W x 1 grey
    with color=False)."""
    import cv2

    from caffecompat.data.image_io import check_pixels

    data, name = _image_bytes(filename)
    check_pixels(data, name)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if img is None:
        raise CaffeCompatError(f"{name}: not an image OpenCV can decode")
    scale = 1.0 / (65535.0 if img.dtype == np.uint16 else 255.0 if img.dtype == np.uint8 else 1.0)
    img = img.astype(np.float32) * np.float32(scale)
    if img.ndim == 3:
        img = img[:, :, 2::-1] if img.shape[2] >= 3 else img[:, :, :1]  # BGR(A) -> RGB; alpha dropped
        if not color:
            img = (img @ _GREY)[:, :, np.newaxis] if img.shape[2] == 3 else img
    else:
        img = img[:, :, np.newaxis]
    if color and img.shape[2] == 1:
        img = np.tile(img, (1, 1, 3))
    return np.ascontiguousarray(img, dtype=np.float32)


_INTERPOLATION = {0: "INTER_NEAREST", 1: "INTER_LINEAR", 2: "INTER_CUBIC", 3: "INTER_CUBIC"}


def zoom_weights(size: int, new_size: int) -> np.ndarray:
    """The new_size x size matrix of scipy.ndimage.zoom's 1-D linear interpolation (order 1): output i samples
    input i * (size - 1) / (new_size - 1), corners to corners, never beyond the edge."""
    pos = np.arange(new_size) * ((size - 1) / (new_size - 1)) if new_size > 1 else np.zeros(1)
    low = np.minimum(np.floor(pos).astype(np.int64), size - 1)
    frac = pos - low
    weights = np.zeros((new_size, size + 1), np.float64)
    rows = np.arange(new_size)
    np.add.at(weights, (rows, low), 1.0 - frac)
    np.add.at(weights, (rows, low + 1), frac)
    return weights[:, :size]


def _zoom_linear(im: np.ndarray, h: int, w: int) -> np.ndarray:
    rows, cols = zoom_weights(im.shape[0], h), zoom_weights(im.shape[1], w)
    # out[i, j, k] = sum over a, b of rows[i, a] * im[a, b, k] * cols[j, b]
    return np.tensordot(np.tensordot(rows, im, axes=(1, 0)), cols, axes=(1, 1)).transpose(0, 2, 1)


def _opencv_resize(im: np.ndarray, h: int, w: int, interp_order: int) -> np.ndarray:
    import cv2

    flag = getattr(cv2, _INTERPOLATION.get(interp_order, "INTER_CUBIC"))
    # OpenCV resizes at most 512 channels at once.
    parts = [cv2.resize(im[:, :, c:c + 512], (w, h), interpolation=flag) for c in range(0, im.shape[-1], 512)]
    return np.concatenate([p[:, :, np.newaxis] if p.ndim == 2 else p for p in parts], axis=2)


def _inside_weight(size: int, new_size: int) -> np.ndarray:
    """Per output line of scikit-image's bilinear resize, how much of its weight falls inside the image."""
    pos = (np.arange(new_size) + 0.5) * (size / new_size) - 0.5  # pixel centre to pixel centre
    # A sample before the first pixel (pos in (-0.5, 0)) weighs pixel 0 by 1 + pos, one after the last by
    # size - pos; the rest of its weight falls on the zeros outside (mode='constant', cval=0).
    return np.clip(np.minimum(1.0 + pos, size - pos), 0.0, 1.0)


def _skimage_bilinear(im: np.ndarray, h: int, w: int) -> np.ndarray:
    """scikit-image's resize(order=1, mode='constant', cval=0) of a float image."""
    # OpenCV's bilinear samples the same points with the same weights, except that a sample beyond the edge
    # puts all its weight on the edge pixel; scikit-image gives the edge pixel only its inside weight, so
    # each output line beyond the edge is OpenCV's scaled by that weight (the interpolation is separable).
    out = _opencv_resize(im, h, w, 1)
    rows, cols = _inside_weight(im.shape[0], h), _inside_weight(im.shape[1], w)
    beyond_rows, beyond_cols = np.flatnonzero(rows < 1), np.flatnonzero(cols < 1)
    out[beyond_rows] *= rows[beyond_rows, None, None].astype(out.dtype)
    out[:, beyond_cols] *= cols[None, beyond_cols, None].astype(out.dtype)
    return out


def _nearest(size: int, new_size: int) -> np.ndarray:
    # scikit-image's resize(order=0): output i takes the input pixel nearest (i + 0.5) * size / new_size - 0.5,
    # halves rounded up (never beyond the edge, so mode='constant' adds nothing).
    pos = (np.arange(new_size) + 0.5) * (size / new_size) - 0.5
    return np.clip(np.floor(pos + 0.5).astype(np.int64), 0, size - 1)


def resize_image(im: np.ndarray, new_dims: Sequence[int], interp_order: int = 1) -> np.ndarray:
    """pycaffe's resize_image: `im` (H x W x K) resized to new_dims (height, width); order 0 nearest, 1 bilinear,
    2-3 bicubic."""
    im = np.asarray(im, dtype=np.float32)
    if im.ndim != 3 or 0 in im.shape:
        raise CaffeCompatError(f"resize_image: expected an H x W x K image, got shape {im.shape} (add a channel "
                               "axis to a grey image: im[:, :, np.newaxis])")
    if len(new_dims) != 2 or min(int(d) for d in new_dims) < 1:
        raise CaffeCompatError(f"resize_image: new_dims {tuple(new_dims)} must be (height, width), both at least 1")
    h, w = int(new_dims[0]), int(new_dims[1])
    if im.shape[:2] == (h, w):
        return im.copy()
    if im.shape[-1] not in (1, 3):
        # pycaffe's resize_image: other channel counts go through scipy.ndimage.zoom (corners to corners).
        if interp_order == 1:
            return _zoom_linear(im.astype(np.float64), h, w).astype(np.float32)
        return _opencv_resize(im, h, w, interp_order).astype(np.float32)
    low, high = float(im.min()), float(im.max())
    if high == low:
        # A constant image stays constant (pycaffe fills the result with the value).
        return np.full((h, w, im.shape[-1]), low, np.float32)
    # pycaffe's resize_image: stretch to [0, 1] for scikit-image, resize, stretch back.
    std = im - np.float32(low)
    std *= np.float32(1.0 / (high - low))
    if interp_order == 1:
        out = _skimage_bilinear(std, h, w)
    elif interp_order == 0:
        out = std[_nearest(im.shape[0], h)][:, _nearest(im.shape[1], w)]
    else:
        out = np.clip(_opencv_resize(std, h, w, interp_order), 0.0, 1.0)  # scikit-image clips to the range
    out = out.astype(np.float32, copy=False)
    out *= np.float32(high - low)
    out += np.float32(low)
    return out


def oversample(images: Sequence[np.ndarray], crop_dims: Sequence[int]) -> np.ndarray:
    """Ten crops of each H x W x K image: the four corners and the center, then the same five mirrored."""
    im_shape = np.array(images[0].shape)
    ch, cw = int(crop_dims[0]), int(crop_dims[1])
    corners = [(y, x) for y in (0, im_shape[0] - ch) for x in (0, im_shape[1] - cw)]
    center = np.array(im_shape[:2]) / 2.0
    cy, cx = (center - np.array([ch, cw]) / 2.0).astype(int)
    boxes = [*corners, (cy, cx)]
    crops = np.empty((10 * len(images), ch, cw, im_shape[-1]), np.float32)
    i = 0
    for im in images:
        for y, x in boxes:
            crops[i] = im[y:y + ch, x:x + cw, :]
            i += 1
        crops[i:i + 5] = crops[i - 5:i, :, ::-1, :]  # mirrored left to right
        i += 5
    return crops


class Transformer:
    """pycaffe's Transformer: per-input preprocessing between an H x W x K image and a net input.

    `inputs` maps each input blob name to its shape (N, C, H, W)."""

    def __init__(self, inputs: Mapping[str, Sequence[int]]) -> None:
        self.inputs = {k: tuple(v) for k, v in inputs.items()}
        self.transpose: dict[str, tuple[int, ...]] = {}
        self.channel_swap: dict[str, tuple[int, ...]] = {}
        self.raw_scale: dict[str, float] = {}
        self.mean: dict[str, np.ndarray] = {}
        self.input_scale: dict[str, float] = {}

    def __check_input(self, in_: str) -> None:
        if in_ not in self.inputs:
            raise CaffeCompatError(f"Transformer: {in_!r} is not one of the net inputs: {list(self.inputs)}")

    def preprocess(self, in_: str, data: np.ndarray) -> np.ndarray:
        """H x W x K image -> the net's C x H x W input: resize, transpose, channel swap, raw scale, mean,
        input scale."""
        self.__check_input(in_)
        x = np.asarray(data).astype(np.float32, copy=False)
        in_dims = self.inputs[in_][2:]
        if x.shape[:2] != tuple(in_dims):
            x = resize_image(x, in_dims)
        if in_ in self.transpose:
            x = x.transpose(self.transpose[in_])
        if in_ in self.channel_swap:
            x = x[list(self.channel_swap[in_]), :, :]
        if self.raw_scale.get(in_) is not None:
            x = x * np.float32(self.raw_scale[in_])
        if self.mean.get(in_) is not None:
            x = x - self.mean[in_]
        if self.input_scale.get(in_) is not None:
            x = x * np.float32(self.input_scale[in_])
        return np.asarray(x, dtype=np.float32)

    def deprocess(self, in_: str, data: np.ndarray) -> np.ndarray:
        """preprocess undone (all but the resize): a net input back to an H x W x K image."""
        self.__check_input(in_)
        x = np.array(data, copy=True).squeeze()
        if self.input_scale.get(in_) is not None:
            x = x / self.input_scale[in_]
        if self.mean.get(in_) is not None:
            x = x + self.mean[in_]
        if self.raw_scale.get(in_) is not None:
            x = x / self.raw_scale[in_]
        if in_ in self.channel_swap:
            x = x[np.argsort(self.channel_swap[in_]), :, :]
        if in_ in self.transpose:
            x = x.transpose(np.argsort(self.transpose[in_]))
        return x

    def set_transpose(self, in_: str, order: Sequence[int]) -> None:
        """The order of the image's axes in the input, e.g. (2, 0, 1) for H x W x K -> K x H x W."""
        self.__check_input(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise CaffeCompatError("Transpose order needs to have the same number of dimensions as the input.")
        self.transpose[in_] = tuple(order)

    def set_channel_swap(self, in_: str, order: Sequence[int]) -> None:
        """The order of the channels after transposing, e.g. (2, 1, 0) for RGB -> BGR."""
        self.__check_input(in_)
        if len(order) != self.inputs[in_][1]:
            raise CaffeCompatError("Channel swap needs to have the same number of dimensions as the input channels.")
        self.channel_swap[in_] = tuple(order)

    def set_raw_scale(self, in_: str, scale: float) -> None:
        """Multiply the image by `scale` (255 for images from load_image, whose values are in [0, 1])."""
        self.__check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_: str, mean: np.ndarray) -> None:
        """Subtract `mean`: one value per channel (C,) or a whole C x H x W (or H x W) image."""
        self.__check_input(in_)
        mean = np.asarray(mean)
        shape = mean.shape
        if mean.ndim == 1:
            if shape[0] != self.inputs[in_][1]:
                raise ValueError("Mean channels incompatible with input.")
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            if len(shape) == 2:
                shape = (1, *shape)
            if len(shape) != 3:
                raise ValueError("Mean shape invalid")
            in_shape = tuple(self.inputs[in_][1:])
            if tuple(shape) != in_shape:
                # pycaffe's Transformer.set_mean: a mean image of another size is resized to the input's
                # (stretched to [0, 1], resize_image, stretched back); a constant one stays that constant.
                image = mean.reshape(shape).astype(np.float64)
                low, high = float(image.min()), float(image.max())
                if high == low:
                    mean = np.full((shape[0], *in_shape[1:]), low)
                else:
                    resized = resize_image(((image - low) / (high - low)).transpose(1, 2, 0), in_shape[1:])
                    mean = resized.transpose(2, 0, 1) * (high - low) + low
        self.mean[in_] = mean

    def set_input_scale(self, in_: str, scale: float) -> None:
        """Multiply the input by `scale` after the mean is subtracted."""
        self.__check_input(in_)
        self.input_scale[in_] = scale
