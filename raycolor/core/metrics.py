"""Image-quality metrics on uint8 RGB (H, W, 3) arrays: PSNR, SSIM, colourfulness."""

from __future__ import annotations

import math

import numpy as np

PSNR_CAP_DB = 100.0  # identical images (MSE 0, PSNR inf) count as this, so every mean stays finite


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB over all RGB values (peak 255), at most PSNR_CAP_DB."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return PSNR_CAP_DB if mse == 0 else min(PSNR_CAP_DB, 10 * math.log10(255.0**2 / mse))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004) over RGB channels: 11-tap Gaussian window (sigma 1.5), population
    covariance, data range 255, borders excluded -- scikit-image's implementation (separable filters, 0.26 s
    on 1024x640 where a 2-D float64 convolution took 9.2 s). NaN for images under 11 px a side (no window
    fits); evaluate's means skip it."""
    from skimage.metrics import structural_similarity

    if min(a.shape[:2]) < 11:
        return math.nan

    return float(
        structural_similarity(
            a, b, channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
        )
    )


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler & Suesstrunk (2003): sigma_rgyb + 0.3 * mu_rgyb; 0 for any grey image."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    rg = r - g
    yb = 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


METRICS = ("psnr", "ssim", "colourfulness", "colourfulness_original", "delta_cf")  # image_metrics' keys


def image_metrics(output: np.ndarray, original: np.ndarray) -> dict[str, float]:
    cf_out, cf_ref = colourfulness(output), colourfulness(original)
    return {
        "psnr": psnr(output, original),
        "ssim": ssim(output, original),
        "colourfulness": cf_out,
        "colourfulness_original": cf_ref,
        "delta_cf": cf_out - cf_ref,
    }
