"""sRGB (D65) <-> CIE Lab in torch, batched, on any device, and the network's L/ab normalisation.

Layout: channels at dim -3, i.e. (..., 3, H, W). RGB floats are in [0, 1]; L in [0, 100]; a, b roughly
in [-110, 110]. The normalisation constants follow richzhang/colorization (l_cent=50, l_norm=100, ab_norm=110).
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch

L_CENT = 50.0
L_NORM = 100.0
AB_NORM = 110.0

# D65 reference white and the sRGB primaries (IEC 61966-2-1), the same numbers scikit-image uses.
_WHITE = (0.95047, 1.0, 1.08883)
_RGB_TO_XYZ = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_DELTA = 6.0 / 29.0


def _matrix(rows, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(rows, dtype=like.dtype, device=like.device)


def _xyz_to_rgb_matrix(like: torch.Tensor) -> torch.Tensor:
    # inverted in float64 so float32 callers get the most exact inverse
    return torch.linalg.inv(torch.tensor(_RGB_TO_XYZ, dtype=torch.float64)).to(like.dtype).to(like.device)


def _mix(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # (3,3) x (..., 3, H, W) -> (..., 3, H, W)
    return torch.einsum("ij,...jhw->...ihw", m, x)


def srgb_to_linear(c: torch.Tensor) -> torch.Tensor:
    return torch.where(c <= 0.04045, c / 12.92, ((c.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: torch.Tensor) -> torch.Tensor:
    return torch.where(c <= 0.0031308, c * 12.92, 1.055 * c.clamp(min=0.0031308) ** (1 / 2.4) - 0.055)


def _f(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t > _DELTA**3, t.clamp(min=_DELTA**3) ** (1 / 3), t / (3 * _DELTA**2) + 4 / 29)


def _f_inv(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t > _DELTA, t**3, 3 * _DELTA**2 * (t - 4 / 29))


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) sRGB in [0, 1] -> (..., 3, H, W) Lab."""
    return _linear_to_lab(srgb_to_linear(rgb))


def _linear_to_lab(lin: torch.Tensor) -> torch.Tensor:
    xyz = _mix(_matrix(_RGB_TO_XYZ, lin), lin)
    white = torch.tensor(_WHITE, dtype=lin.dtype, device=lin.device).view(3, 1, 1)
    fx, fy, fz = _f(xyz / white).unbind(-3)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=-3)


def lab_to_rgb(lab: torch.Tensor, *, clamp: bool = True) -> torch.Tensor:
    """(..., 3, H, W) Lab -> (..., 3, H, W) sRGB; clamped to [0, 1] unless clamp=False."""
    L, a, b = lab.unbind(-3)
    fy = (L + 16) / 116
    f = torch.stack([fy + a / 500, fy, fy - b / 200], dim=-3)
    white = torch.tensor(_WHITE, dtype=lab.dtype, device=lab.device).view(3, 1, 1)
    rgb = linear_to_srgb(_mix(_xyz_to_rgb_matrix(lab), _f_inv(f) * white))
    return rgb.clamp(0, 1) if clamp else rgb


def l_to_grey(L: torch.Tensor) -> torch.Tensor:
    """L (any shape) -> the sRGB grey value in [0, 1] with that lightness (a = b = 0).

    With a = b = 0 the D65 white point maps to linear RGB (1, 1, 1), so grey is just gamma(Y).
    """
    return linear_to_srgb(_f_inv((L + 16) / 116)).clamp(0, 1)


@cache
def _srgb_table(levels: int) -> np.ndarray:
    """srgb_to_linear(i / (levels - 1)) for every integer code i, evaluated in float64 and rounded once to float32.

    In float64 the table is the correctly rounded value on every CPU (for 8 bits each entry lies at least
    2.5e-10, relative, from a float32 rounding boundary, a million times any float64 pow's error, so no SIMD
    kernel can round it the other way; tests/test_color.py checks). The float32 formula is itself up to ~18 ulp
    off. 16 bits: 65,536 entries, 256 KiB, built in about a millisecond.
    """
    c = np.arange(levels, dtype=np.float64) / (levels - 1)
    lin = np.where(c <= 0.04045, c / 12.92, ((np.maximum(c, 0.04045) + 0.055) / 1.055) ** 2.4)
    return lin.astype(np.float32)


def _srgb_u8_table() -> np.ndarray:
    return _srgb_table(256)


def _u8_to_linear(rgb: torch.Tensor) -> torch.Tensor:
    """uint8 sRGB -> float32 linear: srgb_to_linear(rgb / 255). On the CPU by a 256-entry table (correctly
    rounded, the same on every CPU): the formula's per-pixel `pow` was 13.5 of the 18 ms that full-res L of a
    640x480 photo took on one core (bench/outside_actor.py). Elsewhere by the float32 formula, which a test
    bounds against the table."""
    if rgb.device.type == "cpu":
        return torch.from_numpy(_srgb_u8_table()[rgb.numpy()])
    return srgb_to_linear(rgb.to(torch.float32) / 255)


def _u16_to_linear(rgb: torch.Tensor) -> torch.Tensor:
    """uint16 sRGB (a 16-bit master) -> float32 linear, by the 65,536-entry table on the CPU."""
    if rgb.device.type == "cpu":
        return torch.from_numpy(_srgb_table(65536)[rgb.numpy()])
    return srgb_to_linear(rgb.to(torch.float32) / 65535)


def _to_linear(rgb: torch.Tensor) -> torch.Tensor:
    return _u16_to_linear(rgb) if rgb.dtype == torch.uint16 else _u8_to_linear(rgb)


def rgb_uint8_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float32 Lab."""
    return _linear_to_lab(_u8_to_linear(rgb))


def lab_to_rgb_uint8(lab: torch.Tensor) -> torch.Tensor:
    """Lab -> uint8 (..., 3, H, W), rounded."""
    return (lab_to_rgb(lab) * 255).round_().to(torch.uint8)


def rgb_uint8_to_l(rgb: torch.Tensor) -> torch.Tensor:
    """uint8 or uint16 (..., 3, H, W) -> float32 L (..., 1, H, W); only the Y row of the matrix is needed."""
    lin = _to_linear(rgb)
    y = _mix(_matrix(_RGB_TO_XYZ[1:2], lin), lin)
    return 116 * _f(y) - 16


def normalize_ab(ab: torch.Tensor) -> torch.Tensor:
    return ab / AB_NORM


def denormalize_ab(ab: torch.Tensor) -> torch.Tensor:
    return ab * AB_NORM


def _gamut_fit(L: torch.Tensor, ab: torch.Tensor, steps: int):
    """(rgb unclamped, out-of-gamut mask or None, fitted ab of those pixels, their rgb), see fit_ab_to_gamut."""
    rgb = lab_to_rgb(torch.cat([L, ab], dim=-3), clamp=False)
    eps = 1e-4
    bad = ((rgb < -eps) | (rgb > 1 + eps)).any(dim=-3, keepdim=True)  # (..., 1, H, W)
    if not bool(bad.any()):
        return rgb, None, None, None
    # gather the out-of-gamut pixels as a (1, C, P, 1) "image" so lab_to_rgb applies unchanged
    l_bad = L[bad].view(1, 1, -1, 1)
    ab_bad = _pixels(ab, bad)
    lo = torch.zeros_like(l_bad)
    hi = torch.ones_like(l_bad)
    rgb_lo = lab_to_rgb(torch.cat([l_bad, ab_bad * lo], dim=-3), clamp=False)  # grey: always in gamut
    for _ in range(steps):
        mid = (lo + hi) / 2
        rgb_mid = lab_to_rgb(torch.cat([l_bad, ab_bad * mid], dim=-3), clamp=False)
        ok = ((rgb_mid >= -eps) & (rgb_mid <= 1 + eps)).all(dim=-3, keepdim=True)
        lo = torch.where(ok, mid, lo)
        hi = torch.where(ok, hi, mid)
        rgb_lo = torch.where(ok, rgb_mid, rgb_lo)
    return rgb, bad, ab_bad * lo, rgb_lo


def fit_ab_to_gamut(L: torch.Tensor, ab: torch.Tensor, *, steps: int = 8) -> torch.Tensor:
    """Shrink each pixel's chroma until Lab -> sRGB needs no clipping, so L is kept exactly.

    Clipping RGB instead would change lightness exactly where the model is most confident.
    L: (..., 1, H, W), ab: (..., 2, H, W). Bisection on the scale s in [0, 1], only on pixels out of gamut.
    """
    _, bad, ab_fit, _ = _gamut_fit(L, ab, steps)
    if bad is None:
        return ab
    fitted = ab.clone()
    _scatter_pixels(fitted, bad, ab_fit.reshape(2, -1))
    return fitted


def lab_to_rgb_in_gamut(L: torch.Tensor, ab: torch.Tensor, *, steps: int = 8) -> torch.Tensor:
    """sRGB in [0, 1] of (L, fit_ab_to_gamut(L, ab)), converting each in-gamut pixel only once."""
    rgb, bad, _, rgb_fit = _gamut_fit(L, ab, steps)
    if bad is not None:
        _scatter_pixels(rgb, bad, rgb_fit.reshape(3, -1))
    return rgb.clamp(0, 1)


def _pixels(x: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
    # (..., C, H, W) with mask (..., 1, H, W) -> (1, C, P, 1), pixel order matching L[bad]
    moved = x.movedim(-3, -1)  # (..., H, W, C)
    return moved[bad.squeeze(-3)].T.reshape(1, x.shape[-3], -1, 1)


def _scatter_pixels(x: torch.Tensor, bad: torch.Tensor, values: torch.Tensor) -> None:
    # values (C, P) back into x (..., C, H, W) at the mask's pixels
    moved = x.movedim(-3, -1)  # a view: writing into it writes into x
    moved[bad.squeeze(-3)] = values.T.to(x.dtype)
