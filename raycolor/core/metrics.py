"""Image-quality metrics on uint8 RGB (H, W, 3) arrays: PSNR, SSIM, colourfulness, and the metrics that see
colour -- AuC of the ab-error CDF (raw and class-rebalanced), colourfulness ratio, CIEDE2000.

Pure NumPy/scikit-image. Lab here is raycolor's Lab (raycolor.core.color: sRGB, D65 white 0.95047/1/1.08883,
the IEC 61966-2-1 matrix), computed in float64 by `lab` below -- the same numbers scikit-image's rgb2lab
uses (a test pins both), at a tenth of rgb2lab's cost (a 256-entry table for the sRGB curve).
docs/quality.md says what each metric tells about a sepia cast.
"""

from __future__ import annotations

import math

import numpy as np

PSNR_CAP_DB = 100.0  # identical images (MSE 0, PSNR inf) count as this, so every mean stays finite

AUC_MAX_ERR = 150.0  # Zhang, Isola & Efros (2016): the ab-error CDF's area over thresholds 0..150
AB_BIN = 10.0  # ab grid of the class-rebalanced AuC: bins of 10, centred on multiples of 10 (as the paper's)
_AB_BINS_PER_AXIS = 23  # centres -110..110: every sRGB colour's a in [-87, 99], b in [-108, 95]
AB_BINS = _AB_BINS_PER_AXIS**2  # 529; only ~313 of them are in the sRGB gamut, the rest stay empty

# raycolor.core.color's constants (a test checks they are equal), kept here so metrics need no torch
_WHITE = np.array((0.95047, 1.0, 1.08883))
_RGB_TO_XYZ = np.array(
    ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169), (0.019334, 0.119193, 0.950227))
)
_DELTA = 6.0 / 29.0


def _srgb_u8_linear() -> np.ndarray:
    c = np.arange(256, dtype=np.float64) / 255
    return np.where(c <= 0.04045, c / 12.92, ((np.maximum(c, 0.04045) + 0.055) / 1.055) ** 2.4)


_LINEAR = _srgb_u8_linear()
_XYZ_OVER_WHITE = (_RGB_TO_XYZ / _WHITE[:, None]).T  # linear RGB row vectors @ this -> XYZ / white


def lab(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> float64 Lab (H, W, 3), D65 (raycolor's and scikit-image's Lab to ~2e-4)."""
    t = _LINEAR[rgb] @ _XYZ_OVER_WHITE
    f = np.where(t > _DELTA**3, np.cbrt(t), t / (3 * _DELTA**2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


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


def colourfulness_ratio(output: np.ndarray, original: np.ndarray) -> float:
    """colourfulness(output) / colourfulness(original): 1 = as colourful as the truth, a sepia cast well under
    1, a grey output 0. NaN when the original is grey (colourfulness 0: there is no colour to be a fraction
    of); evaluate's means skip NaN, and its set-level figure is the ratio of the means (see ratio_of_means)."""
    ref = colourfulness(original)
    return colourfulness(output) / ref if ref > 0 else math.nan


def ratio_of_means(outputs: list[float], originals: list[float]) -> float:
    """A set's colourfulness ratio: sum of the outputs' colourfulness over the originals' (NaN pairs skipped).
    Used instead of the mean of per-image ratios, which a near-grey original (ratio -> inf) would dominate."""
    pairs = [(o, r) for o, r in zip(outputs, originals) if math.isfinite(o) and math.isfinite(r)]
    ref = sum(r for _, r in pairs)
    return sum(o for o, _ in pairs) / ref if ref > 0 else math.nan


# --- AuC of the per-pixel ab-error CDF ----------------------------------------------------------------


def auc_scores(output_lab: np.ndarray, original_lab: np.ndarray, max_err: float = AUC_MAX_ERR) -> np.ndarray:
    """Each pixel's share of the AuC: the fraction of thresholds t in [0, max_err] with err <= t, i.e.
    clip(1 - err / max_err, 0, 1), err the Euclidean ab distance. The mean of these is the AuC (the continuous
    integral of the CDF over 0..max_err, normalised; the paper samples t in steps of 1, which differs from
    this by under 1/max_err)."""
    err = np.hypot(output_lab[..., 1] - original_lab[..., 1], output_lab[..., 2] - original_lab[..., 2])
    return np.clip(1.0 - err / max_err, 0.0, 1.0)


def auc_lab(output_lab: np.ndarray, original_lab: np.ndarray, max_err: float = AUC_MAX_ERR) -> float:
    return float(auc_scores(output_lab, original_lab, max_err).mean())


def auc(output: np.ndarray, original: np.ndarray, max_err: float = AUC_MAX_ERR) -> float:
    """Zhang et al. (2016)'s AuC: the area under the CDF of per-pixel ab error (Euclidean, in Lab) over
    thresholds 0..max_err, normalised to [0, 1]. 1 = every pixel's ab exact; a constant ab error d scores
    1 - d / max_err; the grey baseline scores 1 - mean(chroma) / max_err (for chroma under max_err)."""
    return auc_lab(lab(output), lab(original), max_err)


def ab_bin(ab: np.ndarray) -> np.ndarray:
    """(..., 2) ab -> the bin index (...) on the grid of AB_BIN (centres at multiples of 10, 0..AB_BINS-1)."""
    half = _AB_BINS_PER_AXIS // 2
    q = np.clip(np.rint(ab / AB_BIN).astype(np.int64) + half, 0, _AB_BINS_PER_AXIS - 1)
    return q[..., 0] * _AB_BINS_PER_AXIS + q[..., 1]


def auc_bin_sums(output_lab: np.ndarray, original_lab: np.ndarray, max_err: float = AUC_MAX_ERR) -> np.ndarray:
    """(2, AB_BINS) float64: per bin of the TRUE ab, the pixel count and the sum of the pixels' AuC scores.
    Sums from several images add up; auc_rebalanced_from_sums turns them into the rebalanced AuC."""
    bins = ab_bin(original_lab[..., 1:]).ravel()
    scores = auc_scores(output_lab, original_lab, max_err).ravel()
    return np.stack([np.bincount(bins, minlength=AB_BINS), np.bincount(bins, weights=scores, minlength=AB_BINS)])


def auc_rebalanced_from_sums(sums: np.ndarray, weights: np.ndarray | None = None) -> float:
    """The class-rebalanced AuC from auc_bin_sums (one image's, or a set's added up).

    Each pixel weighs weights[its true bin]; weights=None means 1 / (the bin's pixel count in `sums`), the
    inverse of the true colour's frequency in the evaluated pixels. Weights are normalised so that they
    average 1 over the pixels, which leaves the weighted mean unchanged: with inverse frequencies the
    rebalanced AuC is simply the mean, over the occupied bins, of each bin's own AuC -- every true colour
    counts the same however few pixels have it. NaN when there are no pixels."""
    count, score = sums
    occupied = count > 0
    if not occupied.any():
        return math.nan
    if weights is None:
        return float(np.mean(score[occupied] / count[occupied]))
    w = np.asarray(weights, dtype=np.float64)
    total = float(np.sum(w * count))
    return float(np.sum(w * score) / total) if total > 0 else math.nan


def auc_rebalanced(
    output: np.ndarray, original: np.ndarray, weights: np.ndarray | None = None, max_err: float = AUC_MAX_ERR
) -> float:
    """The class-rebalanced AuC of one image (Zhang et al. 2016): as `auc`, with each pixel weighted by the
    inverse frequency of its true colour's ab bin (the grid of AB_BIN), so that rare saturated colours count
    as much as the common near-neutral ones a sepia cast gets right.

    `weights` (AB_BINS,) per bin, e.g. 1 / a training set's prior; None weights by 1 / frequency within THIS
    image. `raycolor evaluate` reports a set-level figure instead: frequencies over all the evaluated pixels
    (auc_bin_sums added over images), the nearest self-contained analogue of the paper's dataset prior --
    within one image a handful of pixels of a rare colour would weigh as much as its whole sky."""
    return auc_rebalanced_from_sums(auc_bin_sums(lab(output), lab(original), max_err), weights)


# --- CIEDE2000 ------------------------------------------------------------------------------------------


def ciede2000_lab(output_lab: np.ndarray, original_lab: np.ndarray) -> float:
    """Mean CIEDE2000 of two Lab arrays, computed in float32 (half float64's 80 ms on 640x480; the mean agrees
    with float64's to ~1e-6 relative)."""
    from skimage.color import deltaE_ciede2000

    de = deltaE_ciede2000(original_lab.astype(np.float32), output_lab.astype(np.float32), channel_axis=-1)
    return float(np.mean(de, dtype=np.float64))


def ciede2000(output: np.ndarray, original: np.ndarray) -> float:
    """Mean CIEDE2000 (scikit-image's deltaE_ciede2000, kL = kC = kH = 1) between the images' Lab (`lab`, D65):
    0 for identical images; about 1 is a just-noticeable difference, a sepia cast on a colourful photo
    tens. Unlike the ab AuC it also counts lightness, weighted the way the eye sees it."""
    return ciede2000_lab(lab(output), lab(original))


METRICS = (  # image_metrics' keys, in order
    "psnr",
    "ssim",
    "colourfulness",
    "colourfulness_original",
    "delta_cf",
    "colourfulness_ratio",
    "auc",
    "auc_rebalanced",
    "ciede2000",
)


def image_metrics(
    output: np.ndarray, original: np.ndarray, *, original_lab: np.ndarray | None = None
) -> dict[str, float]:
    """Every metric in METRICS for one image (auc_rebalanced weighted within the image). `original_lab`
    (= lab(original)) saves recomputing it when one original is compared with several outputs."""
    cf_out, cf_ref = colourfulness(output), colourfulness(original)
    out_lab = lab(output)
    ref_lab = lab(original) if original_lab is None else original_lab
    return {
        "psnr": psnr(output, original),
        "ssim": ssim(output, original),
        "colourfulness": cf_out,
        "colourfulness_original": cf_ref,
        "delta_cf": cf_out - cf_ref,
        "colourfulness_ratio": cf_out / cf_ref if cf_ref > 0 else math.nan,
        "auc": auc_lab(out_lab, ref_lab),
        "auc_rebalanced": auc_rebalanced_from_sums(auc_bin_sums(out_lab, ref_lab)),
        "ciede2000": ciede2000_lab(out_lab, ref_lab),
    }
