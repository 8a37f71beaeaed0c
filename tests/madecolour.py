"""Made images for the has-colour rule (raycolor.core.chroma): toned prints, a hand-tinted print, grey with
JPEG or scanner noise. tests/test_chroma.py, tests/test_stages.py and tests/test_colorize_ray.py use them."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from raycolor.core import color

H, W = 384, 512


def jpeg(rgb: np.ndarray, quality: int = 75) -> np.ndarray:
    """Through JPEG 4:2:0 at `quality` and back, as an RGB array."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality, subsampling=2)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _from_lab(L: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(np.stack([L, a, b]).astype(np.float32))
    return color.lab_to_rgb_uint8(t).permute(1, 2, 0).numpy()


def _ramp_l() -> np.ndarray:
    return np.broadcast_to(np.linspace(5, 95, W), (H, W))


def toned(hue: float, peak: float) -> np.ndarray:
    """A lightness ramp toned at `hue` degrees, chroma `peak` in the midtones, falling to 0 at black and white
    (as a toning bath colours the silver by its density)."""
    L = _ramp_l()
    c = peak * np.sin(np.pi * L / 100)
    return _from_lab(L, c * np.cos(np.radians(hue)), c * np.sin(np.radians(hue)))


def cyanotype() -> np.ndarray:
    """Prussian blue mixed with white paper along a ramp."""
    t = np.linspace(0, 1, W)[None, :, None]
    blue, paper = np.array([18, 46, 110.0]), np.array([235, 240, 245.0])
    return np.broadcast_to(blue * (1 - t) + paper * t, (H, W, 3)).astype(np.uint8).copy()


def grey_ramp() -> np.ndarray:
    return np.repeat(np.broadcast_to(np.linspace(0, 255, W), (H, W))[..., None], 3, 2).astype(np.uint8)


def hand_tinted() -> np.ndarray:
    """A grey ramp with a red region and a green region laid on it (80 % tint)."""
    rgb = grey_ramp()
    for (y, x), tint in (((40, 40), (200, 60, 50)), ((220, 300), (60, 160, 60))):
        block = rgb[y:y + 120, x:x + 120].astype(np.float64)
        rgb[y:y + 120, x:x + 120] = (0.8 * np.array(tint) + 0.2 * block).astype(np.uint8)
    return rgb


def grey_noise(seed: int = 0) -> np.ndarray:
    g = np.random.default_rng(seed).integers(0, 256, (H, W), dtype=np.uint8)
    return np.repeat(g[..., None], 3, 2)


def scanned_grey(sigma: float, seed: int = 0) -> np.ndarray:
    """A grey print scanned in colour: the grey ramp with independent noise of `sigma` (of 255) per channel."""
    noise = np.random.default_rng(seed).normal(0, sigma, (H, W, 3))
    return np.clip(grey_ramp() + noise, 0, 255).astype(np.uint8)
