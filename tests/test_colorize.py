import math

import numpy as np
import pytest
import torch

from raycolor.core import color
from raycolor.core.colorize import colorize_rgb, compose, grey_baseline, prepare
from raycolor.core.model import build_colorizer


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
    from raycolor.core.colorize import L_SCALE, pack_l, unpack_l

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
    """compose_batch as one whole-image pass (as it was before strips): the reference strips must equal."""
    from raycolor.core.colorize import UpsampledAB

    ab = UpsampledAB(ab_small, *L.shape[-2:]).strip(0, L.shape[-2])
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
    from raycolor.core import colorize as cz

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
        # L still packed (the finish stage's form) is unpacked by strips, exactly as unpack_l does it whole
        raw = cz.pack_l(L)
        assert torch.equal(cz.compose(cz.packed_l(raw, *shape), ab[0]), cz.compose(cz.unpack_l(raw, *shape), ab[0]))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("small, big", [((32, 32), (1031, 517)), ((224, 224), (5400, 7200)), ((32, 32), (700, 1)),
                                        ((32, 32), (129, 2047)), ((32, 32), (3, 5)), ((7, 5), (7, 5))])
def test_upsampled_ab_is_bilinear_and_the_same_by_strips(small, big):
    """Full-resolution ab (8 B/pixel) is made a strip at a time. Every strip equals the same rows of the whole,
    bit for bit, on any kernel (separate IEEE multiplies and adds, taps computed once in numpy). It is
    F.interpolate's bilinear resize (align_corners=False): bit-identical to its default CPU kernel when
    upsampling, and within the bound its SIMD kernels stray by elsewhere. Those contract the source index
    scale * (i + 0.5) - 0.5 into one FMA, so a tap weight moves by up to an ulp of the index (< n_in), which moves
    an output by that times the step between neighbours (at most 2 * max|ab|), plus a few ulps of max|ab| from
    the products and sums."""
    import torch.nn.functional as F

    from raycolor.core.colorize import UpsampledAB

    g = torch.Generator().manual_seed(big[0])
    ab = (torch.rand(1, 2, *small, generator=g) - 0.5) * 260
    whole = UpsampledAB(ab, *big).strip(0, big[0])
    cut = UpsampledAB(ab, *big)
    assert torch.equal(torch.cat([cut.strip(y0, min(big[0], y0 + 37)) for y0 in range(0, big[0], 37)], 2), whole)
    ref = F.interpolate(ab, size=big, mode="bilinear", align_corners=False)
    top = ab.abs().max().item()
    bound = 2 * top * 2.0 ** (math.frexp(max(small))[1] - 24) + 4 * top * 2.0 ** -24
    assert (whole - ref).abs().max().item() <= bound
    upsampling = big[0] >= small[0] and big[1] >= small[1]
    if upsampling and torch.backends.cpu.get_cpu_capability() == "DEFAULT":
        assert torch.equal(whole, ref)


@pytest.mark.parametrize("bits", [8, 16])
def test_a_grey_master_is_decoded_as_one_plane_and_gives_the_same_l(bits):
    """A grey scan decodes to one plane seen as three channels (images._grey_to_rgb: 1 or 2 B/pixel instead of
    3 or 6 for a master). L made from that view is bit-identical to L from a plain RGB copy, on every kernel:
    the channel lookups are exact, and everything after them runs on L's own contiguous tensors."""
    import io

    from PIL import Image

    from raycolor.core import images
    from raycolor.core.colorize import full_l

    g = np.random.default_rng(bits)
    grey = g.integers(0, 256 if bits == 8 else 65536, (197, 263)).astype(np.uint8 if bits == 8 else np.uint16)
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, format="PNG")
    rgb = images.decode(buf.getvalue(), depth="auto").rgb
    assert rgb.strides[-1] == 0 and rgb.dtype == grey.dtype  # the view, not three copies
    plain = np.ascontiguousarray(rgb)
    assert (plain == grey[:, :, None]).all()
    assert torch.equal(full_l(rgb), full_l(plain))


# The grey table's L against the per-pixel path (color.rgb_uint8_to_l). Both take the same table lookup, matrix row
# and affine maps, exact IEEE operations that give one float whatever the loop; only the cube root `pow` differs,
# between torch's SIMD loop (the table's entries, color._grey_l_table) and its scalar tail. Each is within 1 ulp of
# the true cube root (Sleef's u10 functions; the C library's powf), so the two f differ by <= 2 ulp(f), and f <= 1
# (+ a rounding: Y of white is 1.0 within an ulp), so ulp(f) <= 2^-23: |df| <= 2^-22. 116 f: 116 |df|, plus one
# rounding of its own on each side that need not agree (116 f < 128: ulp 2^-17). Subtracting 16 is exact (both
# operands and the result on 2^-17's grid, the result below 128).
GREY_L_ATOL = 116 * 2.0**-22 + 2.0**-17  # 3.5e-5 L units


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(64, 96), (197, 263), (3, 5), (1, 300), (257, 1031)])
def test_grey_l_from_the_table_is_the_per_pixel_path(bits, threads, shape):
    """A grey image's L comes from a table of the per-pixel path's own floats (color.grey_to_l), with no copy of
    the decoded pixels. It equals the per-pixel path exactly where torch's loops run whole SIMD blocks (one
    thread, the pixel count a multiple of 32: every 1024-px-wide photo), and within GREY_L_ATOL (an ulp or two
    of L) at the scalar tail of a loop or of a thread's share, whatever the size and thread count."""
    from raycolor.core.colorize import full_l

    g = np.random.default_rng(shape[0] * shape[1] + bits)
    grey = g.integers(0, 1 << bits, shape).astype(np.uint8 if bits == 8 else np.uint16)
    grey[0, :2] = (0, (1 << bits) - 1)  # black and white are in it
    view = np.lib.stride_tricks.as_strided(grey[:, :, None], shape=(*shape, 3), strides=(*grey.strides, 0))
    view.flags.writeable = False  # as decoded arrays come from Arrow: read only
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = full_l(view)
        want = color.rgb_uint8_to_l(torch.from_numpy(np.ascontiguousarray(view)).permute(2, 0, 1))
    finally:
        torch.set_num_threads(saved)
    assert got.shape == (1, *shape) and got.dtype == torch.float32
    if threads == 1 and grey.size % 32 == 0:
        assert torch.equal(got, want)
    assert (got - want).abs().max().item() <= GREY_L_ATOL


@pytest.mark.parametrize("levels", [256, 65536])
def test_the_grey_table_bound_catches_a_wrong_table(levels):
    """GREY_L_ATOL is far below the step between neighbouring codes' L (>= 1e-3 even for 16 bits: near black
    L = 903.3 Y with Y = code / 65535 / 12.92), so a table one code off, or built from the wrong channel weights,
    fails the test above."""
    table = color._grey_l_table(levels)
    assert table[0] == 0.0 and abs(table[-1] - 100.0) <= GREY_L_ATOL
    assert np.diff(table).min() > 20 * GREY_L_ATOL


def test_only_an_exactly_grey_plain_image_takes_the_grey_table():
    """A plain (H, W, 3) copy of a grey image takes the table too (the same L as its stride-0 view); one pixel of
    colour in its last row sends the whole image down the per-pixel path, bit for bit."""
    from raycolor.core.colorize import _grey_plane, full_l

    g = np.random.default_rng(7)
    grey = g.integers(0, 256, (131, 77), dtype=np.uint8)
    view = np.lib.stride_tricks.as_strided(grey[:, :, None], shape=(*grey.shape, 3), strides=(*grey.strides, 0))
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    assert rgb.strides[2] != 0 and torch.equal(full_l(rgb), full_l(view))
    assert _grey_plane(rgb) is not None  # the plain copy itself took the table (equal L alone could be chance)
    rgb[-1, -1, 1] ^= 1
    assert _grey_plane(rgb) is None
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert torch.equal(full_l(rgb), lightness(rgb))
    finally:
        torch.set_num_threads(saved)
