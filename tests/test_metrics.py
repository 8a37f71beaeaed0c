import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raycolor.core.metrics import colourfulness, image_metrics, psnr, ssim


def test_psnr_of_known_arrays():
    a = np.zeros((4, 4, 3), np.uint8)
    b = np.full((4, 4, 3), 10, np.uint8)  # MSE = 100
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100))
    assert psnr(a, a) == 100.0  # capped, in training and in evaluate alike


def test_ssim_of_an_image_with_itself_is_one_and_drops_with_noise():
    rng = np.random.default_rng(0)
    ramp = np.linspace(40, 200, 40)
    img = np.stack([np.tile(ramp, (32, 1))] * 3, axis=2).astype(np.uint8)
    assert ssim(img, img) == pytest.approx(1.0)
    noisy = np.clip(img.astype(int) + rng.integers(-60, 60, img.shape), 0, 255).astype(np.uint8)
    assert ssim(img, noisy) < 0.9


def _ssim_definition(a: np.ndarray, b: np.ndarray, window: int = 11, sigma: float = 1.5) -> float:
    """Wang et al. (2004) written out: a 2-D Gaussian window, population statistics, valid positions only."""
    x = torch.from_numpy(a.astype(np.float64)).permute(2, 0, 1).unsqueeze(1)
    y = torch.from_numpy(b.astype(np.float64)).permute(2, 0, 1).unsqueeze(1)
    g = torch.exp(-((torch.arange(window, dtype=torch.float64) - (window - 1) / 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    k = (g[:, None] * g[None, :]).view(1, 1, window, window)
    mx, my = F.conv2d(x, k), F.conv2d(y, k)
    sxx, syy, sxy = F.conv2d(x * x, k) - mx**2, F.conv2d(y * y, k) - my**2, F.conv2d(x * y, k) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    return float((((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))).mean())


@pytest.mark.parametrize("shape", [(48, 40, 3), (11, 64, 3), (97, 13, 3)])
def test_ssim_matches_the_definition(shape):
    rng = np.random.default_rng(sum(shape))
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 40, shape), 0, 255).astype(np.uint8)
    assert ssim(a, b) == pytest.approx(_ssim_definition(a, b), abs=1e-12)


def test_ssim_of_a_tiny_image_is_nan():
    assert math.isnan(ssim(np.zeros((8, 30, 3), np.uint8), np.zeros((8, 30, 3), np.uint8)))


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
