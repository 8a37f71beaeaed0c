import numpy as np
import pytest
import torch

from raycolor import color


def all_uint8_colors(step: int = 1) -> torch.Tensor:
    v = torch.arange(0, 256, step, dtype=torch.uint8)
    r, g, b = torch.meshgrid(v, v, v, indexing="ij")
    return torch.stack([r, g, b]).reshape(3, 1, -1)  # (3, 1, N)


def test_uint8_round_trip_is_exact_for_almost_all_colors():
    rgb = all_uint8_colors(step=3)  # 86^3 = 636k colours
    back = color.lab_to_rgb_uint8(color.rgb_uint8_to_lab(rgb))
    diff = (back.int() - rgb.int()).abs()
    assert diff.max() <= 1
    assert (diff.amax(dim=0) == 0).float().mean() >= 0.999


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
    np.testing.assert_allclose(got, ref, atol=2e-3)


def test_batched_and_l_only_agree():
    rgb = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8)
    lab = color.rgb_uint8_to_lab(rgb)
    assert lab.shape == (2, 3, 5, 7)
    torch.testing.assert_close(color.rgb_uint8_to_l(rgb), lab[:, :1], atol=1e-4, rtol=0)


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
    torch.testing.assert_close(color.lab_to_rgb_in_gamut(L, ab), direct, atol=1e-6, rtol=0)


def test_uint8_paths_match_the_float_formula():
    """The CPU table for uint8 sRGB -> linear holds the formula's value for each of the 256 inputs; on an
    odd-sized image holding every value, and on a non-contiguous view, L and Lab match the formula to 1e-4
    (the formula itself differs by 1 ulp between its SIMD lanes and tails; the table does not)."""
    assert torch.equal(torch.from_numpy(color._srgb_u8_table()), color.srgb_to_linear(torch.arange(256) / 255))
    g = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 256, (3, 517, 613), dtype=torch.uint8, generator=g)
    rgb[:, 0, :256] = torch.arange(256, dtype=torch.uint8)
    for x in (rgb, rgb.permute(1, 2, 0).contiguous().permute(2, 0, 1)):
        lin = color.srgb_to_linear(x.to(torch.float32) / 255)
        torch.testing.assert_close(color._u8_to_linear(x), lin, rtol=2.4e-7, atol=0)  # 2 ulp
        y = color._mix(color._matrix(color._RGB_TO_XYZ[1:2], lin), lin)
        torch.testing.assert_close(color.rgb_uint8_to_l(x), 116 * color._f(y) - 16, rtol=0, atol=1e-5)
        torch.testing.assert_close(color.rgb_uint8_to_lab(x), color.rgb_to_lab(x.to(torch.float32) / 255), rtol=0, atol=1e-4)
