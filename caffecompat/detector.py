"""pycaffe's Detector: a deploy Net that classifies windows (crops) of images, as R-CNN's feature extraction.

    det = caffe.Detector("deploy.prototxt", "weights.caffemodel", mean=mean, raw_scale=255,
                         channel_swap=(2, 1, 0), context_pad=16)
    dets = det.detect_windows([("photo.jpg", np.array([[0, 0, 100, 120], [10, 20, 60, 90]]))])

Each window is (ymin, xmin, ymax, xmax) in pixels. It is cut out of the image
(with `context_pad`, a box grown so that a border of that many input pixels
around the window is context, padded with the mean where it leaves the
image), warped to the net's input size and preprocessed by a
caffecompat.io.Transformer. Selective Search proposals are not supported:
they need a MATLAB package.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from caffecompat import io
from caffecompat.classifier import input_transformer
from caffecompat.errors import CaffeCompatError, NotSupportedError
from caffecompat.pycaffe import TEST, Net


class Detector(Net):
    """Net(model_file, pretrained_file, TEST) with the preprocessing of its (single) input and window crops."""

    def __init__(self, model_file: str, pretrained_file: str, mean: np.ndarray | None = None,
                 input_scale: float | None = None, raw_scale: float | None = None,
                 channel_swap: Sequence[int] | None = None, context_pad: int | None = None) -> None:
        super().__init__(model_file, TEST, weights=pretrained_file)
        self.transformer = input_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.configure_crop(context_pad)

    def detect_windows(self, images_windows: Iterable[tuple[Any, Sequence[Sequence[int]]]]) -> list[dict]:
        """Classify every window of every image: [{'window', 'prediction', 'filename'}], in the input's order.

        `images_windows`: (image file, windows) pairs; an image is anything caffe.io.load_image reads."""
        images_windows = list(images_windows)
        crops = []
        for image_file, windows in images_windows:
            image = io.load_image(image_file).astype(np.float32)
            crops.extend(self.crop(image, window) for window in windows)
        if not crops:
            return []
        in_ = self.inputs[0]
        batch = np.zeros((len(crops), crops[0].shape[2], *self.blobs[in_].data.shape[2:]), np.float32)
        for i, window_crop in enumerate(crops):
            batch[i] = self.transformer.preprocess(in_, window_crop)
        predictions = self.forward_all(**{in_: batch})[self.outputs[0]]
        detections = []
        for image_file, windows in images_windows:
            for window in windows:
                detections.append({"window": window, "prediction": predictions[len(detections)],
                                   "filename": image_file})
        return detections

    def detect_selective_search(self, image_fnames: Sequence[str]) -> list[dict]:
        """Not supported: Selective Search proposals come from a MATLAB package."""
        raise NotSupportedError("selective search (needs the selective_search_ijcv_with_python MATLAB package); "
                                "use detect_windows with your own windows")

    def crop(self, im: np.ndarray, window: Sequence[int]) -> np.ndarray:
        """The window (ymin, xmin, ymax, xmax) of H x W x K image `im`; with context_pad, grown and mean-padded
        to the net's input size (crop_dims)."""
        window = np.asarray(window)
        y0, x0, y1, x1 = (int(v) for v in window[:4])
        if not self.context_pad:
            return im[y0:y1, x0:x1]
        # Caffe's Detector.crop: grow the box so that context_pad input pixels around it are context.
        crop_size = self.blobs[self.inputs[0]].width  # assumes a square input, as Caffe does
        scale = crop_size / (1.0 * crop_size - self.context_pad * 2)
        half_h = (window[2] - window[0] + 1) / 2.0
        half_w = (window[3] - window[1] + 1) / 2.0
        center = (window[0] + half_h, window[1] + half_w)
        box = np.round(np.tile(center, 2) + scale * np.array((-half_h, -half_w, half_h, half_w)))
        scale_h = crop_size / (box[2] - box[0] + 1)
        scale_w = crop_size / (box[3] - box[1] + 1)
        pad_y = int(round(max(0, -box[0]) * scale_h))  # how far the box leaves the image, in input pixels
        pad_x = int(round(max(0, -box[1]) * scale_w))
        im_h, im_w = im.shape[:2]
        box = np.clip(box, 0.0, [im_h, im_w, im_h, im_w])
        clip_h = box[2] - box[0] + 1
        clip_w = box[3] - box[1] + 1
        assert clip_h > 0 and clip_w > 0
        crop_h = min(int(round(clip_h * scale_h)), crop_size - pad_y)
        crop_w = min(int(round(clip_w * scale_w)), crop_size - pad_x)
        # BVLC's code indexes with the float box (old numpy truncated it): the same, as ints.
        b0, b1, b2, b3 = (int(v) for v in box)
        context = io.resize_image(im[b0:b2, b1:b3], (crop_h, crop_w))
        out = np.ones(self.crop_dims, dtype=np.float32) * self.crop_mean
        out[pad_y:pad_y + crop_h, pad_x:pad_x + crop_w] = context
        return out

    def configure_crop(self, context_pad: int | None) -> None:
        """Set crop_dims (the input's H x W x K) and context_pad; with context, the mean to pad with (crop_mean),
        taken back to the image's space (untransposed, unswapped, divided by raw_scale)."""
        in_ = self.inputs[0]
        untranspose = np.argsort(self.transformer.transpose[in_])
        self.crop_dims = np.array(self.blobs[in_].data.shape[1:])[untranspose]
        self.context_pad = context_pad
        if not context_pad:
            return
        if 2 * context_pad >= self.blobs[in_].width:
            raise CaffeCompatError(f"Detector: context_pad {context_pad} leaves no room for the window in the "
                                   f"{self.blobs[in_].width}-pixel wide input {in_!r}: use a context_pad under "
                                   f"{(self.blobs[in_].width + 1) // 2}")
        mean = self.transformer.mean.get(in_)
        if mean is None:
            self.crop_mean = np.zeros(self.crop_dims, dtype=np.float32)
            return
        crop_mean = np.array(mean, dtype=np.float32).transpose(untranspose)
        channel_swap = self.transformer.channel_swap.get(in_)
        if channel_swap is not None:
            crop_mean = crop_mean[:, :, list(np.argsort(channel_swap))]
        raw_scale = self.transformer.raw_scale.get(in_)
        if raw_scale is not None:
            crop_mean = crop_mean / raw_scale
        self.crop_mean = crop_mean
