import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raycolor.core import metrics
from raycolor.core.metrics import (
    METRICS,
    auc,
    auc_lab,
    auc_rebalanced,
    ciede2000,
    ciede2000_lab,
    colourfulness,
    colourfulness_ratio,
    image_metrics,
    psnr,
    ssim,
)


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


# --- the metrics that see colour ----------------------------------------------------------------------


def _rgb_of_lab(lab: np.ndarray) -> np.ndarray:
    """float Lab (H, W, 3) -> uint8 RGB through raycolor's own Lab."""
    from raycolor.core import color

    t = torch.from_numpy(np.ascontiguousarray(lab, dtype=np.float64)).permute(2, 0, 1)
    return color.lab_to_rgb_uint8(t).permute(1, 2, 0).numpy()


def _colourful(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """Four saturated quadrants (red, green, blue, yellow) under grey noise: a photo's worth of chroma."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.float64)
    img[: h // 2, : w // 2] = (200, 40, 40)
    img[: h // 2, w // 2 :] = (40, 170, 60)
    img[h // 2 :, : w // 2] = (40, 60, 200)
    img[h // 2 :, w // 2 :] = (220, 200, 40)
    img += rng.uniform(-20, 20, (h, w, 1))
    return img.clip(0, 255).astype(np.uint8)


def test_lab_is_raycolors_lab_and_scikit_images():
    from skimage.color import rgb2lab

    from raycolor.core import color

    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    rgb[0, :4] = [(0, 0, 0), (255, 255, 255), (255, 0, 0), (1, 2, 3)]  # black, white, a primary, the linear segment
    ours = metrics.lab(rgb)
    theirs = color.rgb_to_lab(torch.from_numpy(rgb).permute(2, 0, 1).double() / 255).permute(1, 2, 0).numpy()
    assert np.abs(ours - theirs).max() < 1e-9  # raycolor's Lab, exactly
    # scikit-image rounds the curve's constants (0.008856, 7.787): it differs only near black, by ~2e-4
    assert np.abs(ours - rgb2lab(rgb)).max() < 1e-3
    assert tuple(metrics._WHITE) == color._WHITE and tuple(map(tuple, metrics._RGB_TO_XYZ)) == color._RGB_TO_XYZ
    # D65 white is a = b = 0, to the matrix's 6 digits (its rows sum to 0.950456, the white point is 0.95047)
    assert ours[0, 1] == pytest.approx((100, 0, 0), abs=0.01)


def test_identical_images_score_perfectly():
    img = _colourful()
    m = image_metrics(img, img)
    assert m["auc"] == 1.0 and m["auc_rebalanced"] == 1.0
    assert m["ciede2000"] == 0.0
    assert m["colourfulness_ratio"] == 1.0
    assert list(m) == list(METRICS)


def test_auc_of_a_constant_ab_shift_follows_the_formula():
    rng = np.random.default_rng(1)
    ref = np.stack([rng.uniform(20, 80, (30, 40)), rng.uniform(-40, 40, (30, 40)), rng.uniform(-40, 40, (30, 40))], -1)
    for d in (0.0, 15.0, 30.0, 75.0, 149.0):
        out = ref.copy()
        out[..., 1] += d * 0.6  # a shift of length d: (0.6 d, 0.8 d)
        out[..., 2] += d * 0.8
        assert auc_lab(out, ref) == pytest.approx(1 - d / 150, abs=1e-12)
    out = ref.copy()
    out[..., 2] += 200  # beyond the last threshold: no pixel ever counts
    assert auc_lab(out, ref) == 0.0
    out[:15, :, 2] = ref[:15, :, 2]  # half the pixels exact, half off the scale
    assert auc_lab(out, ref) == pytest.approx(0.5)


def test_auc_of_rgb_images_with_a_known_cast():
    """Through uint8 RGB: a constant cast of ab (+12, +16), length 20, on a mid-grey-lightness colourful image."""
    ref_lab = np.zeros((24, 32, 3))
    ref_lab[..., 0] = 60
    ref_lab[:, :16, 1:] = (-20, 10)
    ref_lab[:, 16:, 1:] = (25, -15)
    out_lab = ref_lab + (0, 12, 16)
    ref, out = _rgb_of_lab(ref_lab), _rgb_of_lab(out_lab)
    assert auc(out, ref) == pytest.approx(1 - 20 / 150, abs=0.005)  # uint8 rounding moves ab by < 0.7
    assert auc(ref, ref) == 1.0


def test_rebalanced_auc_weighs_every_true_colour_alike():
    """90 % of the pixels are neutral and predicted exactly; 10 % are a saturated red predicted neutral, 150 off:
    the raw AuC is 0.9, the rebalanced one the mean of the two colours' AuCs, (1 + 0) / 2."""
    ref_lab = np.zeros((10, 10, 3))
    ref_lab[..., 0] = 50
    ref_lab[0, :, 1:] = (90, 120)  # chroma 150
    out_lab = ref_lab.copy()
    out_lab[..., 1:] = 0
    assert auc_lab(out_lab, ref_lab) == pytest.approx(0.9)
    sums = metrics.auc_bin_sums(out_lab, ref_lab)
    assert metrics.auc_rebalanced_from_sums(sums) == pytest.approx(0.5)
    # two images' sums add: the rebalanced AuC of the set, not the mean of the images'
    assert metrics.auc_rebalanced_from_sums(sums + metrics.auc_bin_sums(ref_lab, ref_lab)) == pytest.approx(
        (20 / 20 + 10 / 20) / 2
    )
    # explicit per-bin weights: uniform ones give back the raw AuC
    assert metrics.auc_rebalanced_from_sums(sums, np.ones(metrics.AB_BINS)) == pytest.approx(0.9)
    # and through uint8 RGB: one row of a saturated red (chroma c) on grey, predicted grey with the same L
    ref = np.full((10, 10, 3), 118, np.uint8)
    ref[0] = (220, 30, 40)
    out = ref.copy()
    out[0] = _rgb_of_lab(metrics.lab(ref[:1, :1]) * (1, 0, 0))[0, 0]  # the red's L, a = b = 0
    c = float(np.hypot(*metrics.lab(ref)[0, 0, 1:]))
    assert c > 60
    assert auc(out, ref) == pytest.approx(0.9 + 0.1 * (1 - c / 150), abs=0.005)
    assert auc_rebalanced(out, ref) == pytest.approx((1 + (1 - c / 150)) / 2, abs=0.005)


def test_ab_bins_are_a_grid_of_ten_centred_on_multiples_of_ten():
    ab = np.array([[0, 0], [4.9, -4.9], [5.1, 0], [-110, 110], [-200, 200]], float)
    b = metrics.ab_bin(ab)
    assert b[0] == b[1] == 11 * 23 + 11 and b[2] == 12 * 23 + 11
    assert b[3] == b[4] == 0 * 23 + 22  # clipped to the last bin


def test_colourfulness_ratio_of_grey_and_of_a_grey_original():
    img = _colourful()
    from raycolor.core.colorize import grey_baseline

    assert colourfulness_ratio(grey_baseline(img), img) < 0.01  # uint8 rounding leaves a trace of chroma at most
    assert colourfulness_ratio(np.full_like(img, 128), img) == 0.0
    grey = np.full_like(img, 90)
    assert math.isnan(colourfulness_ratio(img, grey))  # no colour to be a fraction of
    assert math.isnan(image_metrics(img, grey)["colourfulness_ratio"])
    half = ((img.astype(np.float64) - 128) * 0.5 + 128).round().astype(np.uint8)  # rg and yb halve
    assert colourfulness_ratio(half, img) == pytest.approx(0.5, abs=0.01)


def test_ratio_of_means_skips_nan_and_grey_sets():
    assert metrics.ratio_of_means([10.0, 30.0, math.nan], [20.0, 40.0, 5.0]) == pytest.approx(40 / 60)
    assert math.isnan(metrics.ratio_of_means([1.0], [0.0]))


# Sharma, Wu & Dalal (2005), the CIEDE2000 test data scikit-image's own tests check against
SHARMA = [
    ((50.0, 2.6772, -79.7751), (50.0, 0.0, -82.7485), 2.0425),
    ((50.0, 3.1571, -77.2803), (50.0, 0.0, -82.7485), 2.8615),
    ((50.0, 0.0, 0.0), (50.0, -1.0, 2.0), 2.3669),
    ((50.0, 2.5, 0.0), (73.0, 25.0, -18.0), 27.1492),
    ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
]


@pytest.mark.parametrize(("lab1", "lab2", "expected"), SHARMA)
def test_ciede2000_reference_pairs(lab1, lab2, expected):
    a, b = np.array([[lab1]]), np.array([[lab2]])
    assert ciede2000_lab(b, a) == pytest.approx(expected, abs=1e-4)
    assert ciede2000_lab(a, b) == pytest.approx(expected, abs=1e-4)


def test_ciede2000_of_rgb_images_matches_scikit_image():
    from skimage.color import deltaE_ciede2000, rgb2lab

    img = _colourful()
    assert ciede2000(img, img) == 0.0
    rng = np.random.default_rng(5)
    for other in (np.full_like(img, 128), rng.integers(0, 256, img.shape, dtype=np.uint8)):
        expected = float(deltaE_ciede2000(rgb2lab(img), rgb2lab(other)).mean())
        assert ciede2000(other, img) == pytest.approx(expected, rel=1e-4)


def test_image_metrics_of_a_sepia_output():
    """L kept, ab replaced by one brownish cast: every colour metric must say so."""
    ref = _colourful(seed=2)
    lab = metrics.lab(ref)
    lab[..., 1:] = (5, 20)
    out = _rgb_of_lab(lab)
    m = image_metrics(out, ref)
    assert m["colourfulness_ratio"] < 0.5
    assert m["auc_rebalanced"] <= m["auc"] < 0.9
    assert m["ciede2000"] > 10
    assert image_metrics(out, ref, original_lab=metrics.lab(ref)) == m
