import numpy as np
import pytest
import torch

from raycolor import color
from raycolor.colorize import colorize_rgb, compose, grey_baseline, prepare
from raycolor.model import build_colorizer


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_colorizer(weights=None).eval()
    with torch.no_grad():  # a strong bias makes the output saturated, so gamut fitting is exercised
        m.head.bias.fill_(3.0)
    return m


def lightness(rgb: np.ndarray) -> torch.Tensor:
    return color.rgb_uint8_to_l(torch.from_numpy(rgb).permute(2, 0, 1))


@pytest.mark.parametrize("shape", [(333, 517), (64, 48), (17, 300), (1, 1)])
def test_full_res_output_keeps_size_and_lightness(model, shape):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    [out] = colorize_rgb(model, [img], render_size=32)
    assert out.shape == img.shape and out.dtype == np.uint8
    dl = (lightness(out) - lightness(img)).abs()
    assert dl.max() < 1.0  # uint8 quantisation of the output: well under one L unit
    assert dl.mean() < 0.3


def test_grey_in_same_luminance_out_and_batches_of_mixed_sizes(model):
    grey = np.repeat(np.linspace(0, 255, 40 * 30, dtype=np.uint8).reshape(30, 40, 1), 3, axis=2)
    other = np.full((50, 20, 3), 200, dtype=np.uint8)
    out = colorize_rgb(model, [grey, other], render_size=32)
    assert [o.shape for o in out] == [grey.shape, other.shape]
    assert (lightness(out[0]) - lightness(grey)).abs().max() < 1.0
    assert np.abs(out[0].astype(int) - grey).max() > 0  # it did add colour


def test_prepare_and_compose_are_the_pieces_of_colorize(model):
    img = np.random.default_rng(1).integers(0, 256, (40, 24, 3), dtype=np.uint8)
    L, small = prepare(img, 32)
    assert L.shape == (1, 40, 24) and small.shape == (1, 32, 32)
    with torch.no_grad():
        ab = model(small[None])[0]
    np.testing.assert_array_equal(compose(L, ab).numpy(), colorize_rgb(model, [img], render_size=32)[0])


def test_grey_baseline_is_grey_with_same_lightness():
    img = np.random.default_rng(2).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    g = grey_baseline(img)
    assert (np.abs(g[..., 0].astype(int) - g[..., 2]) <= 1).all()
    assert (lightness(g) - lightness(img)).abs().max() < 1.0


def test_l_packs_into_uint16_and_back_within_its_precision():
    from raycolor.colorize import L_SCALE, pack_l, unpack_l

    L = torch.rand(1, 5, 7, dtype=torch.float32) * 100
    raw = pack_l(L)
    assert len(raw) == 2 * 5 * 7
    assert torch.allclose(unpack_l(raw, 5, 7), L, atol=0.5 / L_SCALE + 1e-6)
    # in strips (bounded memory) and exactly the one-pass formula, on a size that several strips cut
    big = torch.rand(1, 1031, 1031, dtype=torch.float32) * 100
    whole = (big[0].numpy() * L_SCALE).round().astype(np.uint16)
    assert pack_l(big) == whole.tobytes()
    assert torch.equal(unpack_l(whole.tobytes(), 1031, 1031), torch.from_numpy(whole.astype(np.float32) / L_SCALE)[None])


def _l_f64(v: np.ndarray, levels: int) -> np.ndarray:
    """CIE L of grey sRGB codes v, in float64 (the reference)."""
    c = v.astype(np.float64) / (levels - 1)
    y = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    f = np.where(y > (6 / 29) ** 3, np.cbrt(y), y / (3 * (6 / 29) ** 2) + 4 / 29)
    return 116 * f - 16


def test_a_16_bit_master_keeps_16_bit_lightness():
    """A 16-bit grey ramp: L full-res keeps its precision, and composing back to 16 bits loses less than the
    8-bit output's quantisation. Bounds: L's table is correctly rounded (<= u relative in Y), the cube root and
    the Y sum add a few u, times 116: < 1e-4. Back to 16 bits: half a code step times dL/dc, which is largest
    near black (L = 903.3 Y = 69.9 c): 0.5 * 69.9 / 65535 = 5.3e-4, plus the 1e-4 above. 8 bits there: 0.137."""
    v = np.linspace(0, 65535, 8 * 1031).round().astype(np.uint16).reshape(8, 1031)
    rgb = np.repeat(v[:, :, None], 3, axis=2)
    L, small = prepare(rgb, 32)
    assert L.dtype == torch.float32 and small.shape == (1, 32, 32)
    np.testing.assert_allclose(L[0].numpy(), _l_f64(v, 65536), rtol=0, atol=1e-4)
    grey_ab = torch.zeros(2, 32, 32)
    out16 = compose(L, grey_ab, bits=16).numpy()
    assert out16.dtype == np.uint16 and out16.shape == rgb.shape
    assert np.abs(_l_f64(out16[..., 1], 65536) - _l_f64(v, 65536)).max() < 5.3e-4 + 1e-4
    out8 = compose(L, grey_ab).numpy()
    assert np.abs(_l_f64(out8[..., 1], 256) - _l_f64(v, 65536)).max() > 0.1  # what 8 bits cannot keep


def _whole_image_compose(L: torch.Tensor, ab_small: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """compose_batch as it was before strips (one whole-image pass): the reference strips must equal."""
    import torch.nn.functional as F

    ab = F.interpolate(ab_small.to(L), size=L.shape[-2:], mode="bilinear", align_corners=False)
    rgb = color.lab_to_rgb_in_gamut(L, ab)
    dtype, scale = (torch.uint16, 65535) if bits == 16 else (torch.uint8, 255)
    return (rgb * scale).round_().to(dtype).permute(0, 2, 3, 1).contiguous()


@pytest.mark.parametrize("shape", [(1031, 517), (700, 1), (3, 5), (129, 2047)])
@pytest.mark.parametrize("strip_pixels", [1 << 12, 1 << 19])
def test_strips_give_the_whole_image_results(monkeypatch, shape, strip_pixels):
    """Full-res L and compose run in row strips (bounded memory for big masters); every result is bit-identical
    to one whole-image pass: L exactly, and the composed RGB (so the gamut fit too), on odd sizes and on strips
    that split the image in many places. One thread, as the pipeline's stages run: torch's SIMD loops then see
    each pixel in the same lane either way (colorize.strips)."""
    from raycolor import colorize as cz

    monkeypatch.setattr(cz, "STRIP_PIXELS", strip_pixels)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(shape[0])
        rgb = torch.randint(0, 256, (*shape, 3), dtype=torch.uint8, generator=g).numpy()
        whole_l = color.rgb_uint8_to_l(torch.from_numpy(rgb).permute(2, 0, 1))
        if strip_pixels == 1 << 12 and shape[0] > 64 and shape[1] > 64:
            assert len(cz.strips(*shape)) > 1  # the image really is cut, in several places
        L = cz.full_l(rgb)
        assert torch.equal(L, whole_l)
        ab = (torch.rand(1, 2, 32, 32, generator=g) - 0.5) * 260  # much of it out of gamut
        for bits in (8, 16):
            assert torch.equal(cz.compose_batch(L[None], ab, bits=bits), _whole_image_compose(L[None], ab, bits))
    finally:
        torch.set_num_threads(threads)
