"""raycolor.core.images: decode policy, typed errors, encoders. Fast, no Ray."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from raycolor.config import DEFAULT_MAX_PIXELS
from raycolor.core import formats, metadata
from raycolor.core.images import (
    DecodeError,
    decode_rgb,
    encode_png,
    extension,
)
from raycolor.core.suffixes import IMAGE_SUFFIXES

try:
    import badimages
except ImportError:  # tests/ turned into a package
    from tests import badimages

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str | None]]:
    d = tmp_path_factory.mktemp("badimages")
    return d, badimages.make_corpus(d)


def _decode_file(corpus, name: str, **kw) -> np.ndarray:
    d, _ = corpus
    kw.setdefault("max_pixels", badimages.BOMB_LIMIT)
    return decode_rgb((d / name).read_bytes(), **kw)


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _tiff(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="TIFF")
    return buf.getvalue()


def _close(actual, expected, tol: int) -> bool:
    return bool(np.all(np.abs(np.asarray(actual, int) - np.asarray(expected, int)) <= tol))


# ------------------------------------------------------------------- corpus, errors


def test_corpus_is_small_and_varied(corpus):
    d, expected = corpus
    total = sum((d / name).stat().st_size for name in expected)
    assert total < 1_000_000
    reasons = set(expected.values())
    assert {"truncated", "not_an_image", "too_large", None} <= reasons
    assert "photo with space.jpg" in expected and "fotografía_ü.png" in expected


def test_corpus_expectations(corpus):
    d, expected = corpus
    for name, reason in expected.items():
        if reason is None:
            rgb = _decode_file(corpus, name)
            assert rgb.dtype == np.uint8, name
            assert rgb.ndim == 3 and rgb.shape[2] == 3, name
            assert rgb.flags.c_contiguous and rgb.flags.writeable, name
        else:
            with pytest.raises(DecodeError) as info:
                _decode_file(corpus, name)
            assert info.value.reason == reason, (name, str(info.value))
            assert str(info.value).startswith(f"{reason}: ")


def test_empty_and_text_are_not_images():
    for data in (b"", bytearray(), b"hello world", b"<html></html>" * 10):
        with pytest.raises(DecodeError) as info:
            decode_rgb(data)
        assert info.value.reason == "not_an_image"


def test_other_pillow_formats_are_unsupported():
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(buf, format="ICO")
    with pytest.raises(DecodeError) as info:
        decode_rgb(buf.getvalue())
    assert info.value.reason == "unsupported"


def test_decode_error_shape():
    e = DecodeError("truncated", "cut at byte 10")
    assert isinstance(e, ValueError)
    assert e.reason == "truncated" and e.detail == "cut at byte 10"
    assert str(e) == "truncated: cut at byte 10"
    back = pickle.loads(pickle.dumps(e))  # Ray ships exceptions between processes
    assert isinstance(back, DecodeError) and back.reason == "truncated" and str(back) == str(e)
    with pytest.raises(ValueError):
        DecodeError("weird", "x")  # type: ignore[arg-type]


# --------------------------------------------------------------------- orientation


@pytest.mark.parametrize("orientation", list(badimages.ORIENTATIONS))
def test_exif_orientation_gives_upright_image(corpus, orientation):
    rgb = _decode_file(corpus, f"orient_{orientation}.jpg")
    w, h = badimages.ORIENT_SIZE
    assert rgb.shape == (h, w, 3)
    corners = {
        "top_left": rgb[1, 1],
        "top_right": rgb[1, w - 2],
        "bottom_left": rgb[h - 2, 1],
        "bottom_right": rgb[h - 2, w - 2],
    }
    for where, colour in badimages.CORNER_COLORS.items():
        assert _close(corners[where], colour, 40), (orientation, where, corners[where])


def test_stored_orientation_files_are_really_rotated(corpus):
    d, _ = corpus
    w, h = badimages.ORIENT_SIZE
    for o in badimages.ORIENTATIONS:
        with Image.open(d / f"orient_{o}.jpg") as im:
            assert im.size == ((w, h) if o <= 4 else (h, w))


# ------------------------------------------------------------------------- modes


def test_cmyk_converts_to_roughly_right_colours(corpus):
    rgb = _decode_file(corpus, "cmyk.jpg")
    assert rgb.shape == (16, 32, 3)
    assert _close(rgb[8, 4], badimages.CMYK_LEFT_RGB, 40)
    assert _close(rgb[8, 28], badimages.CMYK_RIGHT_RGB, 40)


def test_cmyk_with_unusable_icc_profile_falls_back():
    buf = io.BytesIO()
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(
        buf, format="JPEG", quality=95, icc_profile=b"definitely not an ICC profile"
    )
    rgb = decode_rgb(buf.getvalue())
    assert _close(rgb[4, 4], (255, 0, 0), 40)


@pytest.mark.parametrize("name", ["grey16.png", "grey16.tif", "rgb48.tif"])
def test_16bit_is_scaled_not_clipped(corpus, name):
    rgb = _decode_file(corpus, name)
    assert rgb.shape == (2, len(badimages.GREY16_VALUES), 3)
    assert rgb[0, :, 0].tolist() == list(badimages.GREY16_EXPECTED)
    assert (rgb == rgb[:, :, :1]).all()  # grey stays grey


def test_16bit_big_endian_and_32bit_int():
    big = Image.new("I;16B", (3, 1))
    big.putdata([0, 32768, 65535])
    assert decode_rgb(_tiff(big))[0, :, 0].tolist() == [0, 128, 255]
    as_int = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.int32))
    assert as_int.mode == "I"
    assert decode_rgb(_tiff(as_int))[0, :, 1].tolist() == [0, 128, 255]
    wide = Image.fromarray(np.array([[-1000, 0, 1000]], dtype=np.int32))
    assert decode_rgb(_tiff(wide))[0, :, 2].tolist() == [0, 128, 255]  # stretched


def test_float_images_are_scaled():
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert unit.mode == "F"
    assert decode_rgb(_tiff(unit))[0, :, 0].tolist() == [0, 128, 255]
    bytes_range = Image.fromarray(np.array([[0.0, 100.0, 255.0]], dtype=np.float32))
    assert decode_rgb(_tiff(bytes_range))[0, :, 0].tolist() == [0, 100, 255]


def test_palette_with_transparency_composites_on_white(corpus):
    rgb = _decode_file(corpus, "palette_transparent.png")
    assert rgb[:, :2].reshape(-1, 3).tolist() == [[255, 255, 255]] * 4
    assert rgb[:, 2:].reshape(-1, 3).tolist() == [[200, 0, 0]] * 4


@pytest.mark.parametrize("name", ["la.png", "rgba.png"])
def test_alpha_composites_on_white(corpus, name):
    rgb = _decode_file(corpus, name)
    assert rgb[0, 0].tolist() == [255, 255, 255]  # fully transparent
    assert _close(rgb[0, 2], (127, 127, 127), 1)  # black at half alpha over white
    opaque = [0, 0, 0] if name == "la.png" else [0, 0, 255]
    assert rgb[0, 1].tolist() == opaque


def test_grey_and_bilevel_become_rgb():
    grey = Image.new("L", (3, 2), 77)
    assert decode_rgb(_png(grey)).tolist() == [[[77] * 3] * 3] * 2
    bilevel = Image.new("1", (4, 4), 1)
    assert (decode_rgb(_png(bilevel)) == 255).all()


def test_animated_gif_gives_first_frame(corpus):
    rgb = _decode_file(corpus, "animated.gif")
    assert rgb.shape == (8, 8, 3)
    assert (rgb.reshape(-1, 3) == badimages.GIF_FRAMES[0]).all()


def test_tiny_and_extreme_aspect(corpus):
    assert _decode_file(corpus, "one_pixel.png").tolist() == [[[12, 34, 56]]]
    w, h = badimages.STRIP_SIZE
    strip = _decode_file(corpus, "strip_2x10000.png")
    assert strip.shape == (h, w, 3) and (strip == (90, 60, 30)).all()


# ---------------------------------------------------------------------- max_pixels


def test_max_pixels(corpus):
    w, h = badimages.BOMB_SIZE
    with pytest.raises(DecodeError) as info:
        _decode_file(corpus, badimages.BOMB_NAME)
    assert info.value.reason == "too_large"
    assert _decode_file(corpus, badimages.BOMB_NAME, max_pixels=None).shape == (h, w, 3)
    assert _decode_file(corpus, badimages.BOMB_NAME, max_pixels=w * h).shape == (h, w, 3)
    with pytest.raises(DecodeError, match="too_large"):
        _decode_file(corpus, badimages.BOMB_NAME, max_pixels=w * h - 1)


def test_max_pixels_must_be_positive():
    with pytest.raises(ValueError):
        decode_rgb(_png(Image.new("RGB", (1, 1))), max_pixels=0)


def test_pillow_bomb_limit_neither_leaks_nor_overrides_ours(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow: warn > 1000, error > 2000
    medium = _png(Image.new("RGB", (40, 40), (1, 2, 3)))  # 1600 px: Pillow would warn
    big = _png(Image.new("RGB", (100, 100), (4, 5, 6)))  # 10000 px: Pillow would refuse
    big_tiff = _tiff(Image.new("RGB", (100, 100), (4, 5, 6)))  # TIFF re-checks in load()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert decode_rgb(medium).shape == (40, 40, 3)
        assert decode_rgb(big).shape == (100, 100, 3)  # default limit is far above Pillow's
        assert decode_rgb(big_tiff, max_pixels=None).shape == (100, 100, 3)
        assert decode_rgb(big_tiff, max_pixels=20_000)[0, 0].tolist() == [4, 5, 6]
        medium_tiff = _tiff(Image.new("RGB", (40, 40), (7, 8, 9)))
        assert decode_rgb(medium_tiff, max_pixels=2000)[0, 0].tolist() == [7, 8, 9]
    assert Image.MAX_IMAGE_PIXELS == 1000  # restored
    for limit in (1500, 5000):  # Pillow's error first, or ours: both are too_large
        with pytest.raises(DecodeError) as info:
            decode_rgb(big, max_pixels=limit)
        assert info.value.reason == "too_large"
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(big))  # Pillow's own guard still works for everyone else


def test_global_pillow_state_untouched(corpus):
    before = Image.MAX_IMAGE_PIXELS
    d, expected = corpus
    for name in expected:
        try:
            _decode_file(corpus, name)
        except DecodeError:
            pass
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert Image.MAX_IMAGE_PIXELS == before
    assert DEFAULT_MAX_PIXELS >= before


# ------------------------------------------------------------------------ encoding


def test_encode_png_round_trips_exactly():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    for level in (0, 1, 9):
        data = encode_png(rgb, level=level)
        assert data.startswith(b"\x89PNG")
        assert np.array_equal(decode_rgb(data), rgb)
    view = rgb[:, ::2]  # non-contiguous input
    assert np.array_equal(decode_rgb(encode_png(view)), view)


def test_the_registry_jpeg_is_close():
    """JPEG has one encoder, the format registry's (formats.encode): 4:2:0, close to its input."""
    y, x = np.mgrid[0:48, 0:64]
    rgb = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)
    prov = metadata.Provenance(software=metadata.SOFTWARE, model_id="m")
    data = formats.encode(rgb, "jpeg", None, prov, keep=False, jpeg_quality=92)[0]
    assert data.startswith(b"\xff\xd8\xff")
    back = decode_rgb(data)
    assert back.shape == rgb.shape
    assert np.abs(back.astype(int) - rgb.astype(int)).mean() < 3
    with Image.open(io.BytesIO(data)) as im:
        assert im.layer[0][1:3] == (2, 2)  # luma sampled 2x2: 4:2:0
    assert len(formats.encode(rgb, "jpeg", None, prov, keep=False, jpeg_quality=50)[0]) < len(data)


def test_extension():
    assert [extension(f) for f in ("png", "jpeg", "tiff", "webp")] == [".png", ".jpg", ".tif", ".webp"]
    with pytest.raises(ValueError):
        extension("bmp")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 3), np.float32)],
)
def test_encode_rejects_non_rgb_uint8(bad):
    with pytest.raises(ValueError):
        encode_png(bad)
    with pytest.raises(ValueError):
        formats.encode(bad, "jpeg", None, metadata.Provenance(software=metadata.SOFTWARE, model_id="m"), keep=False)


def test_image_extensions():
    assert IMAGE_SUFFIXES == frozenset({".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif",
                                        ".jp2", ".j2k", ".j2c", ".jpf", ".jpx", ".jph"})
    assert all(e == e.lower() for e in IMAGE_SUFFIXES)


# ---------------------------------------------------------------------- tar corpus


def test_tar_with_bad_members(tmp_path):
    import tarfile

    path = tmp_path / "bad.tar"
    assert badimages.make_tar_with_bad_members(path) == ["ok/good.jpg"]
    with tarfile.open(path) as tf:
        members = {m.name: m for m in tf.getmembers()}
        assert set(members) == set(badimages.TAR_GOOD_MEMBERS) | set(badimages.TAR_BAD_MEMBERS)
        assert members["link.jpg"].issym()
        good = tf.extractfile("ok/good.jpg").read()
    assert decode_rgb(good).shape == (16, 16, 3)


# ------------------------------------------------------------------------- imports


def test_importing_images_does_not_import_ray_or_torch():
    code = (
        "import raycolor.core.images, sys; "
        "assert 'ray' not in sys.modules, 'ray'; assert 'torch' not in sys.modules, 'torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)
