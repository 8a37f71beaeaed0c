"""compose / the gamut fit, rewritten for speed, give the old implementation's output bit for bit.

The old code is kept below verbatim (from raycolor/core/color.py and colorize.py before the rewrite): it is the
reference, and bench/compose_cost.py times it against the new code. Bit-identity, not a tolerance, is the claim:
the new code runs the same IEEE operations on the same values, and the two layout-dependent ops (the matrix
product and `pow`) on tensors laid out as before. Every test here also runs under ATEN_CPU_CAPABILITY=default
and avx2 (make test-kernels), whose SIMD kernels round `pow` differently; the two sides must agree under each.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

from raycolor.core import color
from raycolor.core import colorize as cz

# ---- the reference: the implementation before the rewrite, verbatim (only names prefixed, imports adapted) ----

_WHITE = color._WHITE
_DELTA = color._DELTA


def _ref_xyz_to_rgb_matrix(like: torch.Tensor) -> torch.Tensor:
    return torch.linalg.inv(torch.tensor(color._RGB_TO_XYZ, dtype=torch.float64)).to(like.dtype).to(like.device)


def _ref_mix(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,...jhw->...ihw", m, x)


def _ref_linear_to_srgb(c: torch.Tensor) -> torch.Tensor:
    return torch.where(c <= 0.0031308, c * 12.92, 1.055 * c.clamp(min=0.0031308) ** (1 / 2.4) - 0.055)


def _ref_f_inv(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t > _DELTA, t**3, 3 * _DELTA**2 * (t - 4 / 29))


def ref_lab_to_rgb(lab: torch.Tensor, *, clamp: bool = True) -> torch.Tensor:
    L, a, b = lab.unbind(-3)
    fy = (L + 16) / 116
    f = torch.stack([fy + a / 500, fy, fy - b / 200], dim=-3)
    white = torch.tensor(_WHITE, dtype=lab.dtype, device=lab.device).view(3, 1, 1)
    rgb = _ref_linear_to_srgb(_ref_mix(_ref_xyz_to_rgb_matrix(lab), _ref_f_inv(f) * white))
    return rgb.clamp(0, 1) if clamp else rgb


def _ref_pixels(x: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
    moved = x.movedim(-3, -1)  # (..., H, W, C)
    return moved[bad.squeeze(-3)].T.reshape(1, x.shape[-3], -1, 1)


def _ref_scatter_pixels(x: torch.Tensor, bad: torch.Tensor, values: torch.Tensor) -> None:
    moved = x.movedim(-3, -1)
    moved[bad.squeeze(-3)] = values.T.to(x.dtype)


def _ref_gamut_fit(L: torch.Tensor, ab: torch.Tensor, steps: int):
    rgb = ref_lab_to_rgb(torch.cat([L, ab], dim=-3), clamp=False)
    eps = 1e-4
    bad = ((rgb < -eps) | (rgb > 1 + eps)).any(dim=-3, keepdim=True)  # (..., 1, H, W)
    if not bool(bad.any()):
        return rgb, None, None, None
    l_bad = L[bad].view(1, 1, -1, 1)
    ab_bad = _ref_pixels(ab, bad)
    lo = torch.zeros_like(l_bad)
    hi = torch.ones_like(l_bad)
    rgb_lo = ref_lab_to_rgb(torch.cat([l_bad, ab_bad * lo], dim=-3), clamp=False)  # grey: always in gamut
    for _ in range(steps):
        mid = (lo + hi) / 2
        rgb_mid = ref_lab_to_rgb(torch.cat([l_bad, ab_bad * mid], dim=-3), clamp=False)
        ok = ((rgb_mid >= -eps) & (rgb_mid <= 1 + eps)).all(dim=-3, keepdim=True)
        lo = torch.where(ok, mid, lo)
        hi = torch.where(ok, hi, mid)
        rgb_lo = torch.where(ok, rgb_mid, rgb_lo)
    return rgb, bad, ab_bad * lo, rgb_lo


def ref_fit_ab_to_gamut(L: torch.Tensor, ab: torch.Tensor, *, steps: int = 8) -> torch.Tensor:
    _, bad, ab_fit, _ = _ref_gamut_fit(L, ab, steps)
    if bad is None:
        return ab
    fitted = ab.clone()
    _ref_scatter_pixels(fitted, bad, ab_fit.reshape(2, -1))
    return fitted


def ref_lab_to_rgb_in_gamut(L: torch.Tensor, ab: torch.Tensor, *, steps: int = 8) -> torch.Tensor:
    rgb, bad, _, rgb_fit = _ref_gamut_fit(L, ab, steps)
    if bad is not None:
        _ref_scatter_pixels(rgb, bad, rgb_fit.reshape(3, -1))
    return rgb.clamp(0, 1)


def _ref_ab_strip(up: cz.UpsampledAB, y0: int, y1: int) -> torch.Tensor:
    i0, i1, w0, w1 = (t[y0:y1] for t in up.taps)
    return up.rows.index_select(2, i0) * w0[:, None] + up.rows.index_select(2, i1) * w1[:, None]


def ref_compose_batch(L: torch.Tensor | np.ndarray, ab_small: torch.Tensor, *, bits: int = 8) -> torch.Tensor:
    N, H, W = L.shape[0], *L.shape[-2:]
    device = L.device if isinstance(L, torch.Tensor) else torch.device("cpu")
    ab = cz.UpsampledAB(ab_small.to(device), H, W)
    scale, dtype = (65535, torch.uint16) if bits == 16 else (255, torch.uint8)
    out = torch.empty((N, H, W, 3), dtype=dtype, device=device)
    for y0, y1 in cz.strips(H, W):
        rgb = ref_lab_to_rgb_in_gamut(cz._l_strip(L, y0, y1), _ref_ab_strip(ab, y0, y1))
        out[:, y0:y1] = (rgb * scale).round_().to(dtype).permute(0, 2, 3, 1)
    return out


def ref_compose(L: torch.Tensor | np.ndarray, ab_small: torch.Tensor, *, bits: int = 8) -> torch.Tensor:
    return ref_compose_batch(L[None], ab_small.unsqueeze(0), bits=bits)[0]


# ---- the tests ----

SAMPLES = sorted((pathlib.Path(__file__).parents[1] / "raycolor" / "samples").glob("*.jpg"))


def _equal(new: torch.Tensor, old: torch.Tensor) -> None:
    assert new.dtype == old.dtype and new.shape == old.shape
    if not torch.equal(new, old):
        d = (new.to(torch.float64) - old.to(torch.float64)).abs()
        raise AssertionError(f"{int((d > 0).sum())} of {d.numel()} values differ, by up to {d.max().item()}")


@pytest.fixture(scope="module")
def model():
    from raycolor.core.model import build_colorizer

    torch.manual_seed(0)
    return build_colorizer(weights=None).eval()


@pytest.fixture
def threads(request):
    """compose runs on one thread in the pipeline's tasks; two threads split torch's loops into chunks, which
    moves pixels between `pow`'s SIMD and scalar paths: the new code must follow the old one there too. (Two
    threads only on tensors big enough for torch to split: on small strips they only wait on each other.)"""
    n = getattr(request, "param", 1)
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    yield n
    torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
def test_the_sample_photos_through_a_random_model(model, threads):
    """The bundled photos at full size, with a random-init model's ab, and that ab made 3x more saturated (most
    pixels then leave the gamut), 8 and 16 bits; L float32 and L still packed."""
    from PIL import Image

    assert len(SAMPLES) >= 10
    bad_fractions = []
    for path in SAMPLES if threads == 1 else SAMPLES[:4]:  # two threads on small images mostly wait on each other
        rgb = np.asarray(Image.open(path).convert("RGB"))
        L, small = cz.prepare(rgb, 64)
        with torch.no_grad():
            ab = model(small[None])[0]
        for gain in (1.0, 3.0 * 110 / max(ab.abs().max().item(), 1e-3)):
            a = ab * gain
            for bits in (8, 16):
                _equal(cz.compose(L, a, bits=bits), ref_compose(L, a, bits=bits))
        packed = cz.packed_l(cz.pack_l(L), *L.shape[-2:])
        _equal(cz.compose(packed, a), ref_compose(packed, a))
        up = cz.UpsampledAB(a[None], *L.shape[-2:]).strip(0, L.shape[-2])
        rgb_f = ref_lab_to_rgb(torch.cat([L[None], up], 1), clamp=False)
        bad_fractions.append(((rgb_f < -1e-4) | (rgb_f > 1 + 1e-4)).any(1).float().mean().item())
    assert max(bad_fractions) > 0.5  # the saturated ab really puts most pixels out of gamut


SHAPES = [(1031, 517), (700, 1), (3, 5), (129, 2047), (1, 1), (64, 4096), (65, 4097)]


@pytest.mark.parametrize("shape, strip_pixels, threads",
                         [(s, p, 1) for s in SHAPES for p in (1 << 12, 1 << 19)]
                         + [((1031, 517), 1 << 19, 2), ((65, 4097), 1 << 19, 2)], indirect=["threads"])
def test_random_l_and_extreme_chroma_odd_sizes_and_strips(monkeypatch, shape, strip_pixels, threads):
    """Random L (with whole rows at exactly 0 and 100) and ab up to +-300 (beyond any sRGB colour), on odd sizes
    and strips that cut the image in many places, 8 and 16 bits, as a batch of 3 and one at a time."""
    monkeypatch.setattr(cz, "STRIP_PIXELS", strip_pixels)
    g = torch.Generator().manual_seed(shape[0] * 7 + shape[1])
    L = torch.rand(3, 1, *shape, generator=g) * 100
    L[:, :, ::5] = 0.0
    L[:, :, 1::5] = 100.0
    ab = (torch.rand(3, 2, 24, 20, generator=g) - 0.5) * 600
    ab[1] *= 0.2  # an image mostly in gamut beside two mostly out of it
    for bits in (8, 16):
        _equal(cz.compose_batch(L, ab, bits=bits), ref_compose_batch(L, ab, bits=bits))
    _equal(cz.compose(L[2], ab[2]), ref_compose(L[2], ab[2]))


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
def test_the_gamut_fit_and_lab_to_rgb_directly(threads):
    """fit_ab_to_gamut (the training loop's) and lab_to_rgb_in_gamut on (N, C, H, W) and (C, H, W) tensors, with
    every step count, plus L exactly 0 and 100 with ab from 0 to huge; and the in-gamut shortcut (ab = 0)."""
    g = torch.Generator().manual_seed(5)
    L = torch.rand(2, 1, 37, 41, generator=g) * 100
    ab = (torch.rand(2, 2, 37, 41, generator=g) - 0.5) * 400
    L[0, 0, 0] = 0.0
    L[0, 0, 1] = 100.0
    ab[0, :, :2] = torch.linspace(-1000, 1000, 41)
    for steps in (0, 1, 8, 12):
        _equal(color.fit_ab_to_gamut(L, ab, steps=steps), ref_fit_ab_to_gamut(L, ab, steps=steps))
        _equal(color.lab_to_rgb_in_gamut(L, ab, steps=steps), ref_lab_to_rgb_in_gamut(L, ab, steps=steps))
    _equal(color.lab_to_rgb_in_gamut(L[1], ab[1]), ref_lab_to_rgb_in_gamut(L[1], ab[1]))
    zero = torch.zeros_like(ab)
    _equal(color.lab_to_rgb_in_gamut(L, zero), ref_lab_to_rgb_in_gamut(L, zero))
    _equal(color._lab_to_rgb_fast(L[:, 0], *ab.unbind(1)), ref_lab_to_rgb(torch.cat([L, ab], 1), clamp=False))


def test_the_thresholds_are_the_decisions_of_linear_to_srgb():
    """The bisection decides in linear RGB: c >= c0 and pow(c) <= p_max. On every float32 within 4096 ulps of
    each threshold (and of linear_to_srgb's knee) the decision equals the gamut test on linear_to_srgb's output."""
    c0, p_max = color._gamut_thresholds(torch.float32, torch.device("cpu"))
    eps = 1e-4
    for centre in (c0, p_max ** 2.4, color._SRGB_KNEE):
        bits = torch.tensor([centre], dtype=torch.float32).view(torch.int32)
        c = (bits + torch.arange(-4096, 4097, dtype=torch.int32)).view(torch.float32).view(1, 1, -1, 1)
        rgb = _ref_linear_to_srgb(c)
        want = (rgb >= -eps) & (rgb <= 1 + eps)
        p = c.clamp(min=0.0031308) ** (1 / 2.4)
        got = (c >= c0) & (p <= p_max)
        assert torch.equal(got, want)
        if centre != color._SRGB_KNEE:
            assert want.any() and not want.all()  # the window really straddles the edge
