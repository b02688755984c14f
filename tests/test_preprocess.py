"""CLAHE, resizing and scaling to [-1, 1]."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly.preprocess import PreprocessConfig, preprocess, to_display


def low_contrast_image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (0.45 + 0.1 * rng.random((100, 80))).astype(np.float32)


def test_output_shape_range_and_values():
    out = preprocess(low_contrast_image(), PreprocessConfig(image_size=32))
    assert out.shape == (32, 32) and out.dtype == np.float32
    assert out.min() >= -1.0 and out.max() <= 1.0
    # without CLAHE the mapping is exact: [0, 1] -> [-1, 1], left-to-right order kept
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (48, 1))
    plain = preprocess(ramp, PreprocessConfig(image_size=32, clahe=False))
    assert plain[:, 0].max() < -0.9 and plain[:, -1].min() > 0.9
    assert (np.diff(plain, axis=1) > 0).all()  # strictly increasing along every row
    flat = preprocess(np.full((40, 40), 0.75, np.float32), PreprocessConfig(32, clahe=False))
    np.testing.assert_allclose(flat, 0.5, atol=1 / 127.5)


def test_clahe_on_raises_contrast_and_off_keeps_it():
    image = low_contrast_image()
    on = preprocess(image, PreprocessConfig(image_size=64, clahe=True))
    off = preprocess(image, PreprocessConfig(image_size=64, clahe=False))
    assert on.std() > 2 * off.std()
    np.testing.assert_allclose(off.mean(), image.mean() * 2 - 1, atol=0.02)


def test_clip_limit_changes_result():
    image = low_contrast_image()
    low = preprocess(image, PreprocessConfig(image_size=64, clahe_clip_limit=1.0))
    high = preprocess(image, PreprocessConfig(image_size=64, clahe_clip_limit=4.0))
    assert high.std() > low.std()


@pytest.mark.parametrize("mode", ["squash", "crop", "pad"])
def test_resize_modes(mode):
    """On a wide film whose left and right thirds are white: squash keeps both white
    bands, crop keeps only the grey middle, pad adds black bands above and below."""
    image = np.full((60, 180), 0.5, np.float32)
    image[:, :60] = image[:, 120:] = 1.0
    out = (preprocess(image, PreprocessConfig(image_size=30, resize=mode, clahe=False)) + 1) / 2
    assert out.shape == (30, 30)
    if mode == "squash":
        assert out[:, :8].min() > 0.95 and out[:, 22:].min() > 0.95
        assert abs(out[:, 13:17].mean() - 0.5) < 0.02
    elif mode == "crop":
        assert abs(out.mean() - 0.5) < 0.02
    else:
        assert out[:8].max() < 0.05 and out[22:].max() < 0.05
        assert out[12:18, :8].min() > 0.95 and abs(out[12:18, 13:17].mean() - 0.5) < 0.02


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="resize must be squash, crop or pad"):
        PreprocessConfig(resize="stretch")


def test_to_display_round_trip():
    values = np.array([-1.0, 0.0, 1.0], np.float32)
    assert to_display(values).tolist() == [0, 128, 255]
