import numpy as np
import pytest
import torch

from raycolor.core import color


def all_uint8_colors(step: int = 1) -> torch.Tensor:
    v = torch.arange(0, 256, step, dtype=torch.uint8)
    r, g, b = torch.meshgrid(v, v, v, indexing="ij")
    return torch.stack([r, g, b]).reshape(3, 1, -1)  # (3, 1, N)


# Float bounds in this file come from the maths, never from one machine's run: every test here also runs under
# ATEN_CPU_CAPABILITY=default/avx2/avx512 (make test-kernels), whose SIMD kernels round differently.
# u = 2**-24 is float32's unit roundoff (half an ulp, relative).
U = 2.0**-24


def test_uint8_round_trip_is_exact():
    """RGB -> Lab -> RGB in float32 gives back every uint8 colour. Bound: the XYZ -> RGB matrix (row sums of
    |m| <= 5.3) turns XYZ's relative error (<= ~40u, see the bounds below) into <= 5.3 * 40u ~ 1.3e-5 absolute
    in linear RGB, and linear -> sRGB is steepest (slope 12.92) near black: <= 1.6e-4 of full scale, 0.042 of
    an 8-bit step. So the unrounded result is within 0.05 steps and rounding returns the input exactly."""
    rgb = all_uint8_colors(step=3)  # 86^3 = 636k colours
    lab = color.rgb_uint8_to_lab(rgb)
    unrounded = color.lab_to_rgb(lab) * 255
    assert (unrounded - rgb.float()).abs().max() < 0.05
    assert torch.equal(color.lab_to_rgb_uint8(lab), rgb)


@pytest.mark.parametrize(
    "rgb, lab",
    [
        # published sRGB (D65) -> CIELab values
        ((255, 255, 255), (100.0, 0.0, 0.0)),
        ((0, 0, 0), (0.0, 0.0, 0.0)),
        ((255, 0, 0), (53.24, 80.09, 67.20)),
        ((0, 255, 0), (87.73, -86.18, 83.18)),
        ((0, 0, 255), (32.30, 79.19, -107.86)),
        ((128, 128, 128), (53.59, 0.0, 0.0)),
    ],
)
def test_reference_values(rgb, lab):
    t = torch.tensor(rgb, dtype=torch.uint8).view(3, 1, 1)
    got = color.rgb_uint8_to_lab(t).flatten().tolist()
    assert got == pytest.approx(lab, abs=0.05)


def test_matches_scikit_image():
    skimage = pytest.importorskip("skimage.color")
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    ref = skimage.rgb2lab(img)  # (H, W, 3)
    got = color.rgb_uint8_to_lab(torch.from_numpy(img).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    # scikit-image works in float64 with the same constants: ours is within LAB_ATOL (a: <= 9.2e-4) of that
    np.testing.assert_allclose(got, ref, atol=2e-3)


def test_batched_and_l_only_agree():
    rgb = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8)
    lab = color.rgb_uint8_to_lab(rgb)
    assert lab.shape == (2, 3, 5, 7)
    # Y from one matrix row or from three: same products, summed in any order (<= 2 ulp of Y <= 1, 2.4e-7),
    # then the cube root (/3, plus <= 1 ulp of f a side) times 116: <= 116 * (0.8e-7 + 2.4e-7) = 3.7e-5
    torch.testing.assert_close(color.rgb_uint8_to_l(rgb), lab[:, :1], atol=4e-5, rtol=0)


def test_grey_has_the_given_lightness():
    L = torch.linspace(0, 100, 101).view(1, 1, 101)
    g = color.l_to_grey(L)
    back = color.rgb_to_lab(g.expand(3, 1, 101))
    torch.testing.assert_close(back[0], L[0], atol=1e-3, rtol=0)
    assert back[1:].abs().max() < 1e-2


def test_normalisation_constants():
    assert color.normalize_ab(torch.tensor(110.0)) == 1
    assert color.denormalize_ab(color.normalize_ab(torch.tensor(-37.0))) == pytest.approx(-37.0)


def test_fit_to_gamut_keeps_l_and_removes_clipping():
    L = torch.tensor([[[5.0, 50.0, 95.0, 60.0]]])  # (1, 1, 4)
    ab = torch.tensor([[[100.0, -100.0, 100.0, 5.0]], [[100.0, 100.0, -100.0, 5.0]]])  # (2, 1, 4)
    fitted = color.fit_ab_to_gamut(L, ab)
    rgb = color.lab_to_rgb(torch.cat([L, fitted]), clamp=False)
    assert rgb.min() > -1e-3 and rgb.max() < 1 + 1e-3
    torch.testing.assert_close(color.rgb_to_lab(rgb.clamp(0, 1))[0], L[0], atol=0.05, rtol=0)
    # an in-gamut pixel is left alone, chroma is only ever shrunk
    assert fitted[:, 0, 3].tolist() == [5.0, 5.0]
    assert (fitted.abs() <= ab.abs()).all()


def test_in_gamut_rgb_equals_converting_the_fitted_ab():
    torch.manual_seed(0)
    L = torch.rand(2, 1, 16, 16) * 100
    ab = (torch.rand(2, 2, 16, 16) - 0.5) * 220  # many out of gamut
    direct = color.lab_to_rgb(torch.cat([L, color.fit_ab_to_gamut(L, ab)], dim=1))
    # The same Lab values converted in tensors of other shapes (the out-of-gamut pixels are gathered): the
    # XYZ -> RGB sum may be accumulated in another order, <= 2 ulp of its largest term (|3.24 * 1.09| < 4:
    # 4.8e-7), which the sRGB curve (slope <= 12.92) makes 6.2e-6; pow's kernel adds <= 1 ulp (1.2e-7) a side.
    torch.testing.assert_close(color.lab_to_rgb_in_gamut(L, ab), direct, atol=6.5e-6, rtol=0)


def _srgb_linear_f64(i: int) -> float:
    c = i / 255  # Python floats: libm's float64 pow, independent of torch's and NumPy's kernels
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


def test_uint8_table_is_the_correctly_rounded_formula():
    """The CPU table is sRGB -> linear of i/255 correctly rounded to float32, on any CPU: each float64 value is
    at least 1e-10 (relative) from a float32 rounding boundary, where a float64 pow errs by ~1e-16, so every
    correct float64 evaluation rounds to the same float32."""
    exact = np.array([_srgb_linear_f64(i) for i in range(256)])
    table = color._srgb_u8_table()
    assert table.dtype == np.float32
    np.testing.assert_array_equal(table, exact.astype(np.float32))
    f32 = exact.astype(np.float32)
    up = np.nextafter(f32, np.float32(2)).astype(np.float64)
    down = np.nextafter(f32, np.float32(-1)).astype(np.float64)
    midpoints = np.stack([(f32 + up) / 2, (f32 + down) / 2])
    margin = (np.abs(exact - midpoints).min(axis=0) / np.maximum(exact, 1e-300))[1:]
    assert margin.min() > 1e-10


# The float32 formula srgb_to_linear(x / 255) against the correctly rounded table, relative:
#   x / 255 (u), + 0.055f (constant u, sum u), / 1.055f (constant u, quotient u): the base is off by <= 4u,
#   which the exponent 2.4 amplifies to 9.6u; 2.4f's own rounding moves base**2.4 by 2.4 u |ln base| <= 5.8u
#   (base >= 0.0905); pow's kernel (Sleef u10 or libm) <= 1 ulp = 2u; the table's rounding u. Sum 18.4u.
#   (The linear branch c / 12.92 is <= 3u.) Measured: 6.3u on AVX-512, AVX2 and the default kernels.
LINEAR_RTOL = 18.4 * U
# L = 116 f(Y) - 16: Y's relative error is LINEAR_RTOL + 3u (three positive products summed); the cube root
#   divides it by 3 and its kernel adds <= 2 ulp (4u) on each side of the comparison; f <= 1, times 116, plus
#   L's own rounding (ulp(100) = 7.6e-6). a = 500 (fx - fy), b = 200 (fy - fz): each f carries the error above.
_F_ERR = (LINEAR_RTOL + 3 * U) / 3 + 2 * 4 * U  # absolute, since f <= 1.09
LAB_ATOL = torch.tensor([116 * _F_ERR + 7.6e-6, 500 * 2 * _F_ERR, 200 * 2 * _F_ERR]).view(3, 1, 1)


def _linear_close(got: torch.Tensor, want: torch.Tensor) -> bool:
    return bool(((got - want).abs() <= LINEAR_RTOL * want.abs()).all())


def test_uint8_paths_match_the_float_formula():
    """On an odd-sized image holding every value, and on a non-contiguous view, the table's linear values, L and
    Lab match the float32 formula within the bounds derived above."""
    g = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 256, (3, 517, 613), dtype=torch.uint8, generator=g)
    rgb[:, 0, :256] = torch.arange(256, dtype=torch.uint8)
    for x in (rgb, rgb.permute(1, 2, 0).contiguous().permute(2, 0, 1)):
        lin = color.srgb_to_linear(x.to(torch.float32) / 255)
        assert _linear_close(color._u8_to_linear(x), lin)
        y = color._mix(color._matrix(color._RGB_TO_XYZ[1:2], lin), lin)
        torch.testing.assert_close(color.rgb_uint8_to_l(x), 116 * color._f(y) - 16, rtol=0, atol=LAB_ATOL[0].item())
        diff = (color.rgb_uint8_to_lab(x) - color.rgb_to_lab(x.to(torch.float32) / 255)).abs()
        assert (diff <= LAB_ATOL).all(), diff.amax(dim=(-2, -1))


def test_the_bounds_catch_real_regressions():
    """The bounds are tight enough to fail what would be real bugs in the table: x / 256 instead of x / 255
    (~0.4 %), or the formula's float32 values taken one index off."""
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 256)
    lin = color.srgb_to_linear(x.to(torch.float32) / 255)
    assert _linear_close(color._u8_to_linear(x), lin)
    by_256 = color.srgb_to_linear(x.to(torch.float32) / 256)
    assert not _linear_close(by_256, lin)
    shifted = torch.cat([lin[..., 1:], lin[..., -1:]], dim=-1)
    assert not _linear_close(shifted, lin)


def test_runs_on_the_cpu_kernel_asked_for():
    """make test-kernels sets ATEN_CPU_CAPABILITY per run: each run must really use that kernel, or the
    kernel runs would check nothing."""
    import os

    asked = os.environ.get("ATEN_CPU_CAPABILITY")
    if not asked:
        pytest.skip("no ATEN_CPU_CAPABILITY set: torch uses the best kernel this CPU has")
    assert torch.backends.cpu.get_cpu_capability().lower() == asked.lower()
