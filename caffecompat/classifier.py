"""pycaffe's Classifier: a deploy Net that takes H x W x K images and returns class probabilities.

Images are resized to `image_dims`, cropped to the net's input size (the
center, or ten crops averaged with `oversample`), preprocessed by a
caffecompat.io.Transformer (transpose to C x H x W, then the optional
channel_swap, raw_scale, mean and input_scale) and run in batches.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from caffecompat import io
from caffecompat.pycaffe import TEST, Net


def input_transformer(net: Net, mean: np.ndarray | None = None, input_scale: float | None = None,
                      raw_scale: float | None = None, channel_swap: Sequence[int] | None = None) -> io.Transformer:
    """The Transformer of a deploy net's (single) input, as pycaffe's Classifier and Detector configure it:
    transpose to C x H x W, then each preprocessing step that was given."""
    in_ = net.inputs[0]
    transformer = io.Transformer({in_: net.blobs[in_].data.shape})
    transformer.set_transpose(in_, (2, 0, 1))
    if mean is not None:
        transformer.set_mean(in_, mean)
    if input_scale is not None:
        transformer.set_input_scale(in_, input_scale)
    if raw_scale is not None:
        transformer.set_raw_scale(in_, raw_scale)
    if channel_swap is not None:
        transformer.set_channel_swap(in_, channel_swap)
    return transformer


class Classifier(Net):
    """Net(model_file, pretrained_file, TEST) with the preprocessing of its (single) input."""

    def __init__(self, model_file: str, pretrained_file: str, image_dims: Sequence[int] | None = None,
                 mean: np.ndarray | None = None, input_scale: float | None = None, raw_scale: float | None = None,
                 channel_swap: Sequence[int] | None = None) -> None:
        super().__init__(model_file, TEST, weights=pretrained_file)
        in_ = self.inputs[0]
        self.transformer = input_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.crop_dims = np.array(self.blobs[in_].data.shape[2:])
        self.image_dims = np.array(image_dims if image_dims is not None else self.crop_dims)

    def predict(self, inputs: Sequence[np.ndarray], oversample: bool = True) -> np.ndarray:
        """Class probabilities (N x classes) of H x W x K images; with oversample, the mean over ten crops."""
        images = np.zeros((len(inputs), int(self.image_dims[0]), int(self.image_dims[1]), inputs[0].shape[2]),
                          np.float32)
        for i, image in enumerate(inputs):
            images[i] = io.resize_image(image, self.image_dims)
        if oversample:
            images = io.oversample(images, self.crop_dims)
        else:
            top, left = ((self.image_dims - self.crop_dims) / 2.0).astype(int)
            images = images[:, top:top + self.crop_dims[0], left:left + self.crop_dims[1], :]
        in_ = self.inputs[0]
        batch = np.array([self.transformer.preprocess(in_, image) for image in images], dtype=np.float32)
        predictions = self.forward_all(**{in_: batch})[self.outputs[0]]
        if oversample:
            predictions = predictions.reshape((len(predictions) // 10, 10, -1)).mean(1)
        return predictions
