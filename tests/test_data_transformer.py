"""DataTransformer: crop, mirror, mean and scale against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from caffecompat.data.transformer import Transformer
from caffecompat.errors import CaffeCompatError
from caffecompat.formats.blob import write_binaryproto
from caffecompat.proto import caffe_pb2

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def make(phase: int = TEST, seed: int = 0, **fields) -> Transformer:
    return Transformer(caffe_pb2.TransformationParameter(**fields), phase, np.random.default_rng(seed), "t")


def image(c: int = 2, h: int = 5, w: int = 6) -> np.ndarray:
    return np.arange(c * h * w, dtype=np.uint8).reshape(c, h, w)


def run(t: Transformer, img: np.ndarray) -> np.ndarray:
    out = np.empty(t.check(img.shape), dtype=np.float32)
    t(img, out)
    return out


def test_no_params_is_a_float_copy():
    img = image()
    np.testing.assert_array_equal(run(make(), img), img.astype(np.float32))


def test_centre_crop_at_test_rounds_down():
    img = image(h=5, w=6)
    # (5 - 3) // 2 = 1, (6 - 3) // 2 = 1
    np.testing.assert_array_equal(run(make(crop_size=3), img), img[:, 1:4, 1:4])
    img = image(h=6, w=7)
    np.testing.assert_array_equal(run(make(crop_size=4), img), img[:, 1:5, 1:5])


def test_random_crop_at_train_stays_in_range_and_covers_offsets():
    img = image(c=1, h=5, w=6)
    t = make(TRAIN, seed=3, crop_size=3)
    seen = set()
    for _ in range(300):
        out = run(t, img)
        h_off, w_off = divmod(int(out[0, 0, 0]), 6)
        np.testing.assert_array_equal(out, img[:, h_off:h_off + 3, w_off:w_off + 3])
        seen.add((h_off, w_off))
    assert seen == {(h, w) for h in range(3) for w in range(4)}


def test_mirror_flips_columns_and_is_random_in_both_phases():
    img = image()
    for phase in (TRAIN, TEST):
        t = make(phase, seed=1, mirror=True)
        outs = [run(t, img) for _ in range(50)]
        flipped = [bool(np.array_equal(o, img[:, :, ::-1])) for o in outs]
        assert all(f or np.array_equal(o, img) for f, o in zip(flipped, outs))
        assert 5 < sum(flipped) < 45


def test_mirror_with_crop_flips_the_cropped_window():
    img = image(h=5, w=6)
    t = make(TEST, mirror=True, crop_size=3)
    outs = {run(t, img).tobytes() for _ in range(40)}
    assert outs == {img[:, 1:4, 1:4].astype(np.float32).tobytes(),
                    img[:, 1:4, 3:0:-1].astype(np.float32).tobytes()}


def test_same_seed_same_draws():
    img = image(h=9, w=9)
    t1, t2 = make(TRAIN, seed=7, crop_size=4, mirror=True), make(TRAIN, seed=7, crop_size=4, mirror=True)
    for _ in range(20):
        np.testing.assert_array_equal(run(t1, img), run(t2, img))


def test_mean_file_is_cropped_with_the_data_then_scaled(tmp_path):
    img = image(c=2, h=5, w=6)
    mean = np.random.default_rng(0).uniform(0, 50, size=(1, 2, 5, 6)).astype(np.float32)
    write_binaryproto(tmp_path / "mean.binaryproto", mean)
    t = make(TEST, crop_size=3, scale=0.5, mean_file=str(tmp_path / "mean.binaryproto"))
    expected = (img[:, 1:4, 1:4].astype(np.float32) - mean[0, :, 1:4, 1:4]) * np.float32(0.5)
    np.testing.assert_array_equal(run(t, img), expected)


def test_mean_file_with_mirror_subtracts_before_flipping(tmp_path):
    img = image(c=1, h=4, w=4)
    mean = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4) * 0.25
    write_binaryproto(tmp_path / "m.binaryproto", mean)
    t = make(TEST, seed=2, mirror=True, mean_file=str(tmp_path / "m.binaryproto"))
    straight = img.astype(np.float32) - mean[0]
    outs = {run(t, img).tobytes() for _ in range(30)}
    assert outs == {straight.tobytes(), straight[:, :, ::-1].copy().tobytes()}


def test_mean_value_per_channel_and_single():
    img = image(c=3, h=2, w=2)
    per = run(make(mean_value=[1, 2, 3], scale=2.0), img)
    np.testing.assert_array_equal(per, (img - np.array([1, 2, 3]).reshape(3, 1, 1)) * 2.0)
    one = run(make(mean_value=[10]), img)
    np.testing.assert_array_equal(one, img.astype(np.float32) - 10)


def test_float_input_is_used_as_is():
    img = np.linspace(-1, 1, 2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3)
    np.testing.assert_array_equal(run(make(scale=3.0), img), img * np.float32(3.0))


def test_config_errors(tmp_path):
    mean = tmp_path / "m.binaryproto"
    write_binaryproto(mean, np.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(CaffeCompatError, match="both mean_file and mean_value"):
        make(mean_file=str(mean), mean_value=[1])
    with pytest.raises(CaffeCompatError, match="force_color and force_gray"):
        make(force_color=True, force_gray=True)
    with pytest.raises(CaffeCompatError, match="crop_size 5 is larger than the 4 x 4"):
        make(crop_size=5).check((3, 4, 4))
    with pytest.raises(CaffeCompatError, match=r"mean file .* is 3 x 4 x 4 but the images are 3 x 5 x 5"):
        make(mean_file=str(mean)).check((3, 5, 5))
    with pytest.raises(CaffeCompatError, match="2 mean_value entries for 3-channel"):
        make(mean_value=[1, 2]).check((3, 4, 4))
    with pytest.raises(CaffeCompatError, match="no such binaryproto"):
        make(mean_file=str(tmp_path / "missing.binaryproto"))
