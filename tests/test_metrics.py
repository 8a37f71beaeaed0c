import math

import numpy as np
import pytest

from raycolor.metrics import colourfulness, image_metrics, psnr, ssim


def test_psnr_of_known_arrays():
    a = np.zeros((4, 4, 3), np.uint8)
    b = np.full((4, 4, 3), 10, np.uint8)  # MSE = 100
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100))
    assert psnr(a, a) == math.inf


def test_ssim_of_an_image_with_itself_is_one_and_drops_with_noise():
    rng = np.random.default_rng(0)
    ramp = np.linspace(40, 200, 40)
    img = np.stack([np.tile(ramp, (32, 1))] * 3, axis=2).astype(np.uint8)
    assert ssim(img, img) == pytest.approx(1.0)
    noisy = np.clip(img.astype(int) + rng.integers(-60, 60, img.shape), 0, 255).astype(np.uint8)
    assert ssim(img, noisy) < 0.9


def test_colourfulness_hand_values():
    assert colourfulness(np.full((5, 5, 3), 77, np.uint8)) == 0.0
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 100  # rg = 100, yb = 50 everywhere: no spread, mean term only
    assert colourfulness(red) == pytest.approx(0.3 * math.hypot(100, 50))


def test_image_metrics_delta():
    grey = np.full((8, 8, 3), 128, np.uint8)
    red = grey.copy()
    red[..., 0] = 200
    m = image_metrics(grey, red)
    assert m["colourfulness"] == 0 and m["delta_cf"] == pytest.approx(-m["colourfulness_original"])
