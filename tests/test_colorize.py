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
