"""How much colour an input already carries, and whether it is one tone or several: numpy only (no torch).

The decode stage runs :func:`measure` on every decoded input (raycolor/pipelines/stages.py) and the manifest
records what it says (``input_chroma``, ``tone_hue``, ``has_colour``; docs/colorizing.md, "Inputs that already
carry colour"). The rule, on CIE Lab (sRGB, D65: the same matrix, white and transfer curve as
raycolor.core.color; tests/test_chroma.py checks the two agree):

1. A grey source decoded as a stride-0 RGB view (raycolor.core.images._grey_to_rgb: the channel stride is 0,
   so R = G = B exactly) is grey at no cost: (0.0, None, False).
2. Otherwise the image is sampled on a grid of at most SAMPLE_SIDE (256) points on its long side, each sample
   the mean of a BOX x BOX (4 x 4) block, which divides a scanner's per-channel noise by 4; each sample's
   chroma C* = hypot(a*, b*) and hue h = atan2(b*, a*) are computed.
3. ``input_chroma`` is the CHROMA_PERCENTILE (99th) percentile of C* over the samples: the 99th, not the 95th,
   so that a print tinted on a few percent of its area (lips, a flag) still shows.
4. ``input_chroma`` < GREY_CHROMA (6.0): grey, (chroma, None, False).
5. Else the samples with C* above NOISE_FLOOR (4.0) vote on the hue, each weighted by its C*: the mean
   resultant length R = |sum C* e^{ih}| / sum C* and the circular standard deviation sqrt(-2 ln R). The
   chroma is ONE tone (sepia, selenium, gold, cyanotype) when that spread is at most TONE_SPREAD (25 degrees)
   AND the colour is a function of lightness: the 99th percentile of |ab - the mean ab of the samples in the
   same 2-unit L bin| (:func:`residual`) is at most TONE_RESIDUAL (6.0). A toning bath colours silver by its
   density, so two points of one lightness share one colour; a tint laid on one region, or a photograph's
   sky and grass, does not. One tone: (chroma, weighted circular mean hue in [0, 360), False). Otherwise
   SEVERAL hues (hand-tinted, or a colour photograph): (chroma, None, True).

Why these numbers (measured on made images; tests/test_chroma.py holds each verdict, with bounds on its figures):

- Grey. JPEG 4:2:0 at quality 75 of a grey noise image saved as RGB gives C* 0.004 (JPEG stores grey with
  flat chroma planes: only rounding is left). A colour scan of a grey print with per-channel noise sigma 2,
  3 and 5 (of 255) gives 1.2, 1.8 and 3.1 after the 4 x 4 means (one sample per pixel of a 256 px crop: 5.4,
  8.1 and 13.3, and a hue spread of 158 degrees: "several hues" of noise), and 1.2 at
  sigma 5 once JPEG-compressed. GREY_CHROMA 6 is twice the worst of these; NOISE_FLOOR 4 keeps that noise out
  of the hue vote. The faintest tone made (selenium, C* 8 in the midtones) is above it; a fainter tone is
  called grey, which only loses its tone_hue: it is colorized either way.
- One tone. Made sepia (h 70, C* up to 25), selenium (h 30, C* 8) and cyanotype (h 270, C* 35; and a mix of
  Prussian blue and paper, h 280), plain, JPEG-compressed or with noise: spread at most 6.3 degrees,
  residual at most 2.5.
- Several hues. Grey with a red and a green region: spread 58 degrees, residual 36. The 16 bundled colour
  photos: residual 7.8 (a blue sky with a small kite, spread 8 degrees) to 69; 9 of them have a spread under
  25 degrees (a green meadow: 2.4), which is why the hue spread alone cannot tell a photograph of one
  dominant colour from a toned print, and the residual is the test that does. A colour photograph whose
  colour does follow its lightness (a sky gradient and nothing else) still counts as toned: it is colorized
  as today, with its hue recorded; and a toned print with stains of another colour counts as having colour.

Cost: 8 ms per image (10 for 16 bits) whatever its size: 39 MP or 0.1 MP alike, the samples only; a 39 MP
JPEG takes about 260 ms to decode on the same core. A stride-0 grey: 0.01 ms.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

SAMPLE_SIDE = 256  # samples on the long side, at most
CHROMA_PERCENTILE = 99.0
GREY_CHROMA = 6.0  # input_chroma below this: grey
NOISE_FLOOR = 4.0  # C* of a sample that votes on the hue
TONE_SPREAD = 25.0  # degrees: circular std of the hue at most this -> one tone ...
TONE_RESIDUAL = 6.0  # ... and the colour a function of lightness: residual C* (99th percentile) at most this
BOX = 4  # each sample is the mean of BOX x BOX pixels (scanner noise / 4)
L_BIN = 2.0  # lightness bins of the residual

# sRGB (D65) -> XYZ and the reference white: raycolor.core.color's numbers (tests/test_chroma.py checks)
_RGB_TO_XYZ = np.array(
    [(0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169), (0.019334, 0.119193, 0.950227)], dtype=np.float64
)
_WHITE = np.array((0.95047, 1.0, 1.08883), dtype=np.float64)
_DELTA = 6.0 / 29.0


class Chroma(NamedTuple):
    input_chroma: float  # the CHROMA_PERCENTILE of C* over the samples
    tone_hue: float | None  # degrees in [0, 360) when the chroma is one tone, else None
    has_colour: bool  # several hues: hand-tinted, or a colour photograph


GREY = Chroma(0.0, None, False)


def is_exact_grey(rgb: np.ndarray) -> bool:
    """R = G = B by construction: a grey source decoded as a stride-0 view of one plane (images._grey_to_rgb)."""
    return rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.strides[2] == 0


def sample(rgb: np.ndarray, side: int = SAMPLE_SIDE, box: int = BOX) -> np.ndarray:
    """(H, W, 3) -> the means of `box` x `box` pixel blocks on a grid of at most `side` points on the long side
    (blocks overlap when the grid is finer than the box), as (N, 3) float64 in [0, 1]. Reads box**2 strided views
    of the grid's size: the cost is that of the samples, not of the image."""
    h, w = rgb.shape[:2]
    step = max(1, -(-max(h, w) // side))
    k = max(1, min(box, h, w))
    gh, gw = (h - k) // step + 1, (w - k) // step + 1
    acc = np.zeros((gh, gw, 3), dtype=np.float64 if rgb.dtype.kind == "f" else np.uint32)  # 16 x 65535 fits
    for dy in range(k):
        for dx in range(k):
            acc += rgb[dy:dy + (gh - 1) * step + 1:step, dx:dx + (gw - 1) * step + 1:step]
    scale = 65535.0 if rgb.dtype == np.uint16 else 255.0 if rgb.dtype == np.uint8 else 1.0
    return acc.reshape(-1, 3) / (k * k * scale)


def grid(h: int, w: int, side: int = SAMPLE_SIDE, box: int = BOX) -> tuple[np.ndarray, np.ndarray, int]:
    """The rows and columns :func:`sample` reads, for an image held elsewhere (a decoded JPEG on the model's
    device): (rows, cols, k) with ``image[rows][:, cols]`` reshaped (len(rows) // k, k, len(cols) // k, k, 3)
    and averaged over axes 1 and 3 giving sample()'s grid."""
    step = max(1, -(-max(h, w) // side))
    k = max(1, min(box, h, w))
    rows = (np.arange((h - k) // step + 1)[:, None] * step + np.arange(k)).ravel()
    cols = (np.arange((w - k) // step + 1)[:, None] * step + np.arange(k)).ravel()
    return rows, cols, k


def from_grid(block: np.ndarray, k: int) -> np.ndarray:
    """``image[rows][:, cols]`` of :func:`grid` -> sample()'s (N, 3) float64 in [0, 1]."""
    gh, gw = block.shape[0] // k, block.shape[1] // k
    scale = 65535.0 if block.dtype == np.uint16 else 255.0 if block.dtype == np.uint8 else 1.0
    return block.reshape(gh, k, gw, k, 3).astype(np.float64).mean(axis=(1, 3)).reshape(-1, 3) / scale


def lab(rgb01: np.ndarray) -> np.ndarray:
    """(N, 3) sRGB in [0, 1] -> (N, 3) Lab (D65), float64."""
    lin = np.where(rgb01 <= 0.04045, rgb01 / 12.92, ((np.maximum(rgb01, 0.04045) + 0.055) / 1.055) ** 2.4)
    t = (lin @ _RGB_TO_XYZ.T) / _WHITE
    f = np.where(t > _DELTA**3, np.cbrt(np.maximum(t, _DELTA**3)), t / (3 * _DELTA**2) + 4 / 29)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], axis=1)


def hue_spread(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(circular mean hue in [0, 360), circular std in degrees) of the samples (a, b), each weighted by its C*."""
    # sum of C* e^{ih} is just sum of (a + ib): the weights come for free
    z = complex(a.sum(), b.sum())
    total = float(np.hypot(a, b).sum())
    r = abs(z) / total if total > 0 else 0.0
    std = float(np.degrees(np.sqrt(-2 * np.log(r)))) if r > 0 else float("inf")
    return float(np.degrees(np.arctan2(z.imag, z.real)) % 360.0), std


def residual(lab_: np.ndarray) -> float:
    """The 99th percentile of |ab - mean ab of the samples of the same lightness (L_BIN wide)|: 0 when the colour
    is a function of L (a toned print: the tone follows the silver's density), large when two samples of one
    lightness differ in colour (a tint laid on one region, a colour photograph)."""
    bins = np.clip((lab_[:, 0] / L_BIN).astype(np.int64), 0, int(100 / L_BIN))
    n = np.maximum(np.bincount(bins), 1)
    ma = np.bincount(bins, lab_[:, 1]) / n
    mb = np.bincount(bins, lab_[:, 2]) / n
    return float(np.percentile(np.hypot(lab_[:, 1] - ma[bins], lab_[:, 2] - mb[bins]), CHROMA_PERCENTILE))


def measure(rgb: np.ndarray) -> Chroma:
    """(H, W, 3) uint8 / uint16 / float in [0, 1] sRGB -> Chroma (the rule: this module's docstring)."""
    if is_exact_grey(rgb) or rgb.size == 0:
        return GREY
    return judge(sample(rgb))


def judge(samples: np.ndarray) -> Chroma:
    """(N, 3) sRGB samples in [0, 1] (:func:`sample`, :func:`from_grid`) -> Chroma."""
    if samples.size == 0:
        return GREY
    lab_ = lab(samples)
    ab = lab_[:, 1:]
    c = np.hypot(ab[:, 0], ab[:, 1])
    chroma = float(np.percentile(c, CHROMA_PERCENTILE))
    if chroma < GREY_CHROMA:
        return Chroma(chroma, None, False)
    voting = ab[c > NOISE_FLOOR]
    hue, spread = hue_spread(voting[:, 0], voting[:, 1])
    if spread <= TONE_SPREAD and residual(lab_) <= TONE_RESIDUAL:
        return Chroma(chroma, hue, False)
    return Chroma(chroma, None, True)
