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
    return _xyz_to_rgb_for(like.dtype, like.device)


@cache
def _xyz_to_rgb_for(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # inverted in float64 so float32 callers get the most exact inverse; once per dtype and device (compose asked
    # for it a few times per strip: 0.7 ms a 1024x768 image). Read only; a plain tensor even when first asked for
    # under inference_mode, so autograd code may use it too
    with torch.inference_mode(False), torch.no_grad():
        return torch.linalg.inv(torch.tensor(_RGB_TO_XYZ, dtype=torch.float64)).to(dtype).to(device)


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


# Codes per rgb_uint8_to_l call when the grey table is built: a multiple of torch's widest SIMD block (2 x 16 floats)
# and under its parallel grain size (32,768 elements), so each call is one thread's loop of whole SIMD blocks
_GREY_TABLE_RUN = 8192


@cache
def _grey_l_table(levels: int) -> np.ndarray:
    """rgb_uint8_to_l of the grey pixel (i, i, i) for every code i, float32 (levels 256: uint8, 65536: uint16).

    Made by rgb_uint8_to_l itself, on runs of codes that its elementwise loops take whole in SIMD blocks, so each
    entry is the float those loops give that pixel. The per-pixel path gives the same float except where torch
    runs a loop's scalar tail (the last numel % 32 elements of a loop, or of one thread's share of it): there
    `pow` (the cube root) may round the other way by an ulp (tests/test_colorize.py bounds it). 16 bits: 256 KiB,
    a few milliseconds once per process."""
    dtype = torch.uint8 if levels == 256 else torch.uint16
    codes = torch.arange(levels, dtype=torch.int32).to(dtype)
    table = np.empty(levels, dtype=np.float32)
    for a in range(0, levels, _GREY_TABLE_RUN):
        run = codes[a:a + _GREY_TABLE_RUN].view(1, 1, -1).expand(3, 1, -1)  # (3, 1, n): R = G = B
        table[a:a + _GREY_TABLE_RUN] = rgb_uint8_to_l(run).reshape(-1).numpy()
    return table


def grey_to_l(grey: np.ndarray, out: np.ndarray) -> np.ndarray:
    """A uint8 or uint16 grey plane (..., H, W), the R = G = B of a grey image -> its float32 L, written into
    `out` (same shape): one table lookup a pixel instead of the colour path's three channel lookups, matrix row,
    cube root and affine map (20 ms -> 0.6 ms for a 1024x768 photo on one core)."""
    table = _grey_l_table(256 if grey.dtype == np.uint8 else 65536)
    # mode "clip": every code is in range, and "raise" would buffer `out`
    return np.take(table, grey, out=out, mode="clip")


def normalize_ab(ab: torch.Tensor) -> torch.Tensor:
    return ab / AB_NORM


def denormalize_ab(ab: torch.Tensor) -> torch.Tensor:
    return ab * AB_NORM


_GAMUT_EPS = 1e-4  # how far outside [0, 1] an sRGB value may be and still count as in gamut
_SRGB_KNEE = 0.0031308  # linear_to_srgb's switch from the linear segment to the power curve
_SRGB_EXP = 1 / 2.4


def _f_inv_(t: torch.Tensor) -> torch.Tensor:
    """_f_inv in place: the same IEEE operations on the same values, so the same floats (torch's kernels compute
    t**3 as t * t * t, on every CPU kernel and device)."""
    cube = t * t
    cube.mul_(t)
    above = t > _DELTA
    t.sub_(4 / 29).mul_(3 * _DELTA**2)
    return torch.where(above, cube, t, out=t)


def _lab_to_xyz(L: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L, a, b (..., H, W) -> _f_inv(f) * white (..., 3, H, W): what lab_to_rgb hands the matrix, the same floats,
    in a fresh contiguous tensor as there, so the matrix product (MKL's, layout-dependent) sees the same layout.
    Written in place: no torch.cat / torch.stack copies, no temporaries beyond one cube and one mask."""
    xyz = torch.empty((*a.shape[:-2], 3, *a.shape[-2:]), dtype=a.dtype, device=a.device)
    fx, fy, fz = xyz.unbind(-3)
    torch.add(L, 16, out=fy).div_(116)  # (L + 16) / 116
    torch.div(a, 500, out=fx).add_(fy)  # fy + a / 500
    torch.sub(fy, torch.div(b, 200, out=fz), out=fz)  # fy - b / 200
    _f_inv_(xyz)
    fx.mul_(_WHITE[0])  # white's Y is 1.0: multiplying by it changes no float
    fz.mul_(_WHITE[2])
    return xyz


def _linear_to_srgb_(c: torch.Tensor) -> torch.Tensor:
    """linear_to_srgb in place. `pow` is the one op here whose result depends on the layout (torch's SIMD and
    scalar paths differ by an ulp): in place, it runs over the same memory order, numel and lanes as the
    out-of-place clamp's output it ran on before."""
    linear = c <= _SRGB_KNEE
    low = c * 12.92
    c.clamp_(min=_SRGB_KNEE).pow_(_SRGB_EXP).mul_(1.055).sub_(0.055)
    return torch.where(linear, low, c, out=c)


def _lab_to_rgb_fast(L: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """lab_to_rgb(stack([L, a, b]), clamp=False), bit for bit, without the copies (L, a, b: (..., H, W))."""
    return _linear_to_srgb_(_mix(_xyz_to_rgb_matrix(a), _lab_to_xyz(L, a, b)))


@cache
def _gamut_thresholds(dtype: torch.dtype, device: torch.device) -> tuple[float, float]:
    """(c0, p_max): with c linear RGB and p = c.clamp(min=knee) ** (1 / 2.4) as linear_to_srgb computes it,
    linear_to_srgb(c) >= -eps  <=>  c >= c0,   and   linear_to_srgb(c) <= 1 + eps  <=>  p <= p_max.
    Both sides are single IEEE roundings of monotone maps (c * 12.92 below the knee, 1.055 * p - 0.055 above it,
    which is >= 0.04 > -eps), so each condition is a threshold; found here exactly, by stepping through the
    floats near it with the very torch ops linear_to_srgb and the gamut test use."""
    eps = _GAMUT_EPS

    def edge(x: float, ok, up: bool) -> float:
        # the last float (walking up if `up`, else down) where ok() holds, starting near x
        t = torch.tensor([x], dtype=dtype, device=device)
        toward = torch.tensor([float("inf") if up else float("-inf")], dtype=dtype, device=device)
        back = -toward
        while not bool(ok(t)):
            t = torch.nextafter(t, back)
        while True:
            n = torch.nextafter(t, toward)
            if not bool(ok(n)):
                return t.item()
            t = n

    c0 = edge(-eps / 12.92, lambda c: (c * 12.92 >= -eps).all(), up=False)
    p_max = edge(((1 + eps) + 0.055) / 1.055, lambda p: (1.055 * p - 0.055 <= 1 + eps).all(), up=True)
    return c0, p_max


def _decide_exact(c: torch.Tensor, c0: float, p_max: float) -> torch.Tensor:
    """The gamut decision (1, 1, P, 1) of each pixel of linear RGB c (1, 3, P, 1), by pow on all of c, in place."""
    ok = c.amin(dim=1, keepdim=True) >= c0
    ok &= c.clamp_(min=_SRGB_KNEE).pow_(_SRGB_EXP).amax(dim=1, keepdim=True) <= p_max
    return ok


@torch.no_grad()  # a bisection has no useful gradient; and its in-place and out= ops take no autograd inputs
def _gamut_fit(L: torch.Tensor, ab: torch.Tensor, steps: int):
    """(rgb unclamped, out-of-gamut mask or None, fitted ab of those pixels, their rgb), see fit_ab_to_gamut.

    Bisection on the chroma scale s of the out-of-gamut pixels, gathered as a (1, C, P, 1) "image". Each step
    needs only its in/out decision, taken in linear RGB against exact thresholds (_gamut_thresholds): the
    sRGB curve's affine part and its where/stack copies are skipped, and fy, f_inv(fy) are made once. The
    linear RGB and the `pow` still run on (1, 3, P, 1) tensors laid out as before, so the decisions are those
    the full conversion would give; the accepted rgb is converted once at the end, on that same layout, which
    gives the floats the step that accepted it gave (tests/test_compose_exact.py keeps the old code and
    checks bit-identity)."""
    rgb = _lab_to_rgb_fast(L.squeeze(-3), *ab.unbind(-3))
    eps = _GAMUT_EPS
    lo_hi = rgb.aminmax()  # one pass; the mask below only where some pixel is out
    if not bool((lo_hi.min < -eps) | (lo_hi.max > 1 + eps)):
        return rgb, None, None, None
    bad = ((rgb < -eps) | (rgb > 1 + eps)).any(dim=-3, keepdim=True)  # (..., 1, H, W)
    bad = _Bad(bad)
    l_bad = bad.gather(L)  # (1, 1, P, 1)
    ab_bad = bad.gather(ab)  # (1, 2, P, 1)
    c0, p_max = _gamut_thresholds(L.dtype, L.device)
    m = _xyz_to_rgb_matrix(L)
    xyz = torch.empty((1, 3, l_bad.shape[2], 1), dtype=L.dtype, device=L.device)  # the matrix's input, reused
    fx, fy, fz = xyz.unbind(1)
    torch.add(l_bad[:, 0], 16, out=fy).div_(116)
    fy_plain = fy.clone()  # fy itself, before f_inv
    _f_inv_(fy)  # white's Y is 1.0
    lo = torch.zeros_like(l_bad)
    hi = torch.ones_like(l_bad)
    for _ in range(steps):
        mid = (lo + hi) / 2
        torch.mul(ab_bad[:, 0], mid[:, 0], out=fx).div_(500).add_(fy_plain)
        torch.sub(fy_plain, torch.mul(ab_bad[:, 1], mid[:, 0], out=fz).div_(200), out=fz)
        _f_inv_(fx).mul_(_WHITE[0])
        _f_inv_(fz).mul_(_WHITE[2])
        ok = _decide_exact(_mix(m, xyz), c0, p_max)  # the matrix's (1, 3, P, 1) linear RGB, decided in place
        torch.where(ok, hi, mid, out=hi)
        torch.where(ok, mid, lo, out=lo)
    ab_fit = ab_bad * lo
    return rgb, bad, ab_fit, _lab_to_rgb_fast(l_bad[:, 0], *ab_fit.unbind(1))


def fit_ab_to_gamut(L: torch.Tensor, ab: torch.Tensor, *, steps: int = 8) -> torch.Tensor:
    """Shrink each pixel's chroma until Lab -> sRGB needs no clipping, so L is kept exactly.

    Clipping RGB instead would change lightness exactly where the model is most confident.
    L: (..., 1, H, W), ab: (..., 2, H, W). Bisection on the scale s in [0, 1], only on pixels out of gamut.
    """
    _, bad, ab_fit, _ = _gamut_fit(L, ab, steps)
    if bad is None:
        return ab
    fitted = ab.clone()
    bad.scatter(fitted, ab_fit.reshape(2, -1))
    return fitted


def lab_to_rgb_in_gamut(L: torch.Tensor, ab: torch.Tensor, *, steps: int = 8) -> torch.Tensor:
    """sRGB in [0, 1] of (L, fit_ab_to_gamut(L, ab)), converting each in-gamut pixel only once."""
    rgb, bad, _, rgb_fit = _gamut_fit(L, ab, steps)
    if bad is not None:
        bad.scatter(rgb, rgb_fit.reshape(3, -1))
    return rgb.clamp_(0, 1)


class _Bad:
    """The out-of-gamut pixels of (..., C, H, W) tensors, from their mask (..., 1, H, W): gathered into (1, C, P, 1)
    in the mask's row-major order (that of L[mask]) and scattered back. One image (the CPU's compose): by the mask's
    positions, found once and used as plain indices on (C, H*W) views (one nonzero pass instead of one per gather
    and scatter, no strided channel-last views). A batch: by the mask itself. Copies only: the same floats."""

    def __init__(self, mask: torch.Tensor):
        self.mask = mask
        one_image = mask.numel() == mask.shape[-2] * mask.shape[-1]
        self.pos = mask.reshape(-1).nonzero().squeeze(1) if one_image else None  # (P,) indices into H*W

    def _flat(self, x: torch.Tensor) -> torch.Tensor | None:
        # x (1.., C, H, W) as a (C, H*W) view, or None where that would be a copy (a batch, a non-contiguous x)
        if self.pos is None or not x.is_contiguous():
            return None
        return x.view(x.shape[-3], -1)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        flat = self._flat(x)
        if flat is None:
            moved = x.movedim(-3, -1)  # (..., H, W, C)
            return moved[self.mask.squeeze(-3)].T.reshape(1, x.shape[-3], -1, 1)
        return flat.index_select(1, self.pos).view(1, x.shape[-3], -1, 1)

    def scatter(self, x: torch.Tensor, values: torch.Tensor) -> None:
        """values (C, P) back into x (..., C, H, W) at the mask's pixels."""
        flat = self._flat(x)
        if flat is None:
            moved = x.movedim(-3, -1)  # a view: writing into it writes into x
            moved[self.mask.squeeze(-3)] = values.T.to(x.dtype)
        else:
            flat.index_copy_(1, self.pos, values.to(x.dtype))
