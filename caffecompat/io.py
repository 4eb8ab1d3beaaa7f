"""pycaffe's caffe.io: images in and out of a net's input layout, and blobs/datums to and from numpy.

`Transformer` turns an H x W x K float image into a net input as pycaffe's
does, in pycaffe's order: resize to the input's size, transpose, channel
swap, raw scale, mean subtraction, input scale (`deprocess` undoes it).
`load_image` gives what pycaffe's gave: RGB, float32 in [0, 1], H x W x 3 (or
x 1 with color=False). Images are read and resized with OpenCV, where pycaffe
used scikit-image: grey conversion uses scikit-image's weights; bilinear
resizing interpolates as scikit-image's order=1 inside the image, but edge
pixels repeat the border rather than fading to the image's minimum.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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


def load_image(filename: str, color: bool = True) -> np.ndarray:
    """An image file as float32 H x W x 3 RGB in [0, 1] (H x W x 1 grey with color=False)."""
    import cv2

    from caffecompat.data.image_io import check_pixels, read_file

    data = read_file(str(filename))
    check_pixels(data, str(filename))
    raw = np.frombuffer(data, np.uint8)
    img = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise CaffeCompatError(f"{filename}: not an image OpenCV can decode")
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


def resize_image(im: np.ndarray, new_dims: Sequence[int], interp_order: int = 1) -> np.ndarray:
    """`im` (H x W x K) resized to new_dims (height, width): order 0 nearest, 1 bilinear, 2-3 bicubic."""
    import cv2

    im = np.asarray(im, dtype=np.float32)
    h, w = int(new_dims[0]), int(new_dims[1])
    if im.shape[:2] == (h, w):
        return im.copy()
    low, high = float(im.min()), float(im.max())
    if high == low:
        # A constant image stays constant (pycaffe fills the result with the value).
        return np.full((h, w, im.shape[-1]), low, np.float32)
    flag = getattr(cv2, _INTERPOLATION.get(interp_order, "INTER_CUBIC"))
    channels = im.shape[-1]
    # OpenCV resizes at most 512 channels at once.
    parts = [cv2.resize(im[:, :, c:c + 512], (w, h), interpolation=flag) for c in range(0, channels, 512)]
    parts = [p[:, :, np.newaxis] if p.ndim == 2 else p for p in parts]
    out = np.concatenate(parts, axis=2)
    if interp_order > 1:
        out = np.clip(out, low, high)  # pycaffe's resize clips to the input's range
    return out.astype(np.float32)


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
            if tuple(shape) != tuple(self.inputs[in_][1:]):
                raise ValueError("Mean shape incompatible with input shape.")
        self.mean[in_] = mean

    def set_input_scale(self, in_: str, scale: float) -> None:
        """Multiply the input by `scale` after the mean is subtracted."""
        self.__check_input(in_)
        self.input_scale[in_] = scale
