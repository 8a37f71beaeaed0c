"""raycolor.core.metadata and images.decode: metadata carried from input to output, provenance, 16-bit, ICC.

Fast, no Ray. Outputs are read back with exiftool (an independent reader, not Pillow) and inputs are
written with Pillow plus exiftool (an independent writer); exiftool reads many files per call, so each
fixture makes one or two calls.
"""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms
from support import (
    EXIFTOOL,
    NO_EXIFTOOL,
    TAGS,
    bad_metadata_inputs,
    encoded,
    exiftool_read,
    exiftool_write,
    jpeg_with_segment,
    needs_exiftool,
    noise,
    png_with_xmp,
    xmp_packet,
)

from raycolor.core import images, metadata
from raycolor.core.images import decode, decode_rgb
from raycolor.core.formats import EncodeOptions, embed_jpeg, encode
from raycolor.core.metadata import (
    DIGITAL_SOURCE_TYPE,
    Metadata,
    Provenance,
)

try:
    import badimages
except ImportError:  # tests/ turned into a package
    from tests import badimages

PROV = Provenance(metadata.SOFTWARE, "ckpt-test-0123")
SUFFIX = {"jpeg": ".jpg", "png": ".png", "tiff": ".tif", "webp": ".webp"}
STORED_SIZE = (64, 48)  # (W, H) as stored; Orientation 6 makes it 48 wide, 64 high

# --------------------------------------------------------------------------- round trips


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory):
    """Inputs written by Pillow + exiftool (Orientation 6, 600 dpi, a thumbnail in the JPEG), decoded and
    encoded keep / strip; exiftool's reading of inputs and outputs."""
    if EXIFTOOL is None:
        pytest.skip(NO_EXIFTOOL)
    d = tmp_path_factory.mktemp("roundtrip")
    stored = noise(*STORED_SIZE)
    inputs = []
    for fmt, suffix in SUFFIX.items():
        p = d / f"in{suffix}"
        p.write_bytes(encoded(stored, fmt.upper()))
        inputs.append(p)
    exiftool_write(inputs, "-Orientation#=6", *(f"-{k}={v}" for k, v in TAGS.items()))
    thumb = d / "thumb.jpg"
    thumb.write_bytes(encoded(noise(8, 6, 1), "JPEG"))
    exiftool_write([d / "in.jpg"], f"-ThumbnailImage<={thumb}")
    results, outputs = {}, []
    for fmt, suffix in SUFFIX.items():
        dec = decode((d / f"in{suffix}").read_bytes())
        for keep in (True, False):
            data, report = encode(dec.rgb, fmt, dec.meta, PROV, keep=keep)
            p = d / f"out_{'keep' if keep else 'strip'}{suffix}"
            p.write_bytes(data)
            outputs.append(p)
            results[fmt, keep] = (dec, data, json.loads(report))
    return results, exiftool_read(inputs + outputs)


def _tool(round_trip, fmt: str, keep: bool) -> dict:
    return round_trip[1][f"out_{'keep' if keep else 'strip'}{SUFFIX[fmt]}"]


@needs_exiftool
def test_inputs_really_carry_the_groups(round_trip):
    """The writer did its job: otherwise the round-trip checks would prove nothing."""
    _, tool = round_trip
    for suffix in SUFFIX.values():
        t = tool[f"in{suffix}"]
        assert t["IFD0:Orientation"] == 6 and t["IFD0:Artist"] == TAGS["EXIF:Artist"]
        assert t["XMP-dc:Description"] == TAGS["XMP-dc:Description"]
        assert t["ExifIFD:ColorSpace"] != 1  # exiftool writes "uncalibrated": the output must fix it
        if suffix != ".webp":
            assert t["IPTC:Caption-Abstract"] == TAGS["IPTC:Caption-Abstract"]
    assert tool["in.jpg"]["IFD1:ThumbnailLength"] > 0


@needs_exiftool
@pytest.mark.parametrize("fmt", list(SUFFIX))
def test_keep_carries_every_group(round_trip, fmt):
    dec, data, report = round_trip[0][fmt, True]
    t = _tool(round_trip, fmt, True)
    assert dec.rgb.shape == (STORED_SIZE[0], STORED_SIZE[1], 3)  # upright: Orientation 6 applied
    assert t["IFD0:ImageDescription"] == TAGS["EXIF:ImageDescription"]
    assert t["IFD0:Artist"] == TAGS["EXIF:Artist"]
    assert t["IFD0:Copyright"] == TAGS["EXIF:Copyright"]
    assert t["ExifIFD:DateTimeOriginal"] == TAGS["EXIF:DateTimeOriginal"]
    assert t["GPS:GPSLatitude"] == pytest.approx(48.85) and t["GPS:GPSLongitude"] == pytest.approx(2.35)
    assert t["GPS:GPSLatitudeRef"] == "N"
    assert t["XMP-dc:Description"] == TAGS["XMP-dc:Description"]
    assert t["XMP-dc:Creator"] == TAGS["XMP-dc:Creator"]
    if fmt == "webp":
        assert not any(k.startswith("IPTC:") for k in t)  # exiftool cannot write IPTC-IIM to WebP either
        jpeg_in = round_trip[0]["jpeg", True][0]  # so take the JPEG's, which has some
        report = json.loads(encode(jpeg_in.rgb, "webp", jpeg_in.meta, PROV)[1])
        assert "no IPTC-IIM container" in report["dropped"]["iptc"] and "iptc" not in report["kept"]
    else:
        assert t["IPTC:Caption-Abstract"] == TAGS["IPTC:Caption-Abstract"]
        assert t["IPTC:By-line"] == TAGS["IPTC:By-line"]
        assert "iptc" in report["kept"]
    assert {"exif", "xmp", "dpi"} <= set(report["kept"])
    assert report["added"] == ["provenance", "icc:sRGB"]
    assert "Orientation=1" in report["changed"]["exif"]


@needs_exiftool
@pytest.mark.parametrize("fmt", list(SUFFIX))
def test_what_is_no_longer_true_is_fixed(round_trip, fmt):
    t = _tool(round_trip, fmt, True)
    assert t["IFD0:Orientation"] == 1
    assert t["ExifIFD:ColorSpace"] == 1
    assert (t["ExifIFD:ExifImageWidth"], t["ExifIFD:ExifImageHeight"]) == (STORED_SIZE[1], STORED_SIZE[0])
    assert not any(k.startswith("IFD1:") for k in t), "the thumbnail must not be carried"
    assert "sRGB" in t["ICC_Profile:ProfileDescription"] and t["ICC-header:ColorSpaceData"] == "RGB "
    assert t["IFD0:XResolution"] == 600 and t["IFD0:YResolution"] == 600 and t["IFD0:ResolutionUnit"] == 2
    if fmt == "jpeg":
        assert (t["JFIF:XResolution"], t["JFIF:ResolutionUnit"]) == (600, 1)
        assert "no thumbnail" in round_trip[0][fmt, True][2]["changed"]["exif"]
    if fmt == "png":  # pHYs in pixels per metre: 600 dpi = 23622 px/m
        assert (t["PNG-pHYs:PixelsPerUnitX"], t["PNG-pHYs:PixelUnits"]) == (23622, 1)


@needs_exiftool
@pytest.mark.parametrize("fmt", list(SUFFIX))
@pytest.mark.parametrize("keep", [True, False])
def test_provenance_on_every_output(round_trip, fmt, keep):
    t = _tool(round_trip, fmt, keep)
    assert t["XMP-iptcExt:DigitalSourceType"] == DIGITAL_SOURCE_TYPE
    assert t["XMP-xmp:CreatorTool"] == PROV.software
    assert t["XMP-iptcExt:AISystemUsed"] == PROV.software
    assert t["XMP-iptcExt:AISystemVersionUsed"] == PROV.model_id
    assert t["IFD0:Software"] == PROV.software
    assert "sRGB" in t["ICC_Profile:ProfileDescription"]


@needs_exiftool
@pytest.mark.parametrize("fmt", list(SUFFIX))
def test_strip_removes_the_content(round_trip, fmt):
    t = _tool(round_trip, fmt, False)
    assert not any(k.startswith(("GPS:", "IPTC:", "XMP-dc:", "ExifIFD:")) for k in t)
    assert "IFD0:Artist" not in t and "IFD0:XResolution" not in t
    report = round_trip[0][fmt, False][2]
    assert report["kept"] == [] and report["dropped"]["exif"] == "not kept (keep=False)"


def test_exif_text_bytes_are_copied_verbatim(round_trip):
    """Pillow's Exif writes non-ASCII as '?'; our directory codec copies the value bytes."""
    for fmt in SUFFIX:
        dec, data, _ = round_trip[0][fmt, True]
        assert TAGS["EXIF:Artist"].encode() + b"\0" in data


def test_embed_jpeg_writes_what_encode_writes(round_trip):
    """The GPU path (nvJPEG pixels + embed_jpeg) and the CPU path give the same file."""
    dec, data, report = round_trip[0]["jpeg", True]
    h, w = dec.rgb.shape[:2]
    # pixels from another encoder (nvJPEG on a GPU: here Pillow, with the registry's JPEG settings)
    foreign = encoded(dec.rgb, "JPEG", quality=EncodeOptions().jpeg_quality, subsampling="4:2:0", optimize=False)
    embedded, report2 = embed_jpeg(foreign, dec.meta, PROV, width=w, height=h)
    assert embedded == data and json.loads(report2) == report
    # no JFIF, an old EXIF and ICC in the way: JFIF added, the rest replaced, the pixels untouched
    other = encoded(dec.rgb, "JPEG", exif=b"Exif\0\0II*\0\x08\0\0\0\0\0\0\0\0\0", icc_profile=b"x" * 40)
    pos = 2
    if other[pos : pos + 2] == b"\xff\xe0":  # drop Pillow's APP0
        other = other[:2] + other[4 + struct.unpack(">H", other[4:6])[0] :]
    out, _ = embed_jpeg(other, dec.meta, PROV, width=w, height=h)
    assert out.count(b"Exif\0\0") == 1 and out.count(b"ICC_PROFILE\0") == 1 and out[6:11] == b"JFIF\0"
    assert np.array_equal(decode_rgb(out), decode_rgb(other))


def test_decode_reads_metadata_once_and_it_packs_small(round_trip):
    for fmt in SUFFIX:
        meta = round_trip[0][fmt, True][0].meta
        assert meta.dpi == pytest.approx((600, 600)) and meta.exif and meta.xmp
        assert Metadata.unpack(meta.pack()) == meta
        assert len(meta.pack()) < len(meta.exif) + len(meta.xmp) + len(meta.iptc or b"") + 200
    assert Metadata().pack() == b"" and Metadata.unpack(b"") == Metadata()
    odd = Metadata(bit_depth=16, pages=3, notes=(("icc", "converted from X to sRGB"),))
    assert Metadata.unpack(odd.pack()) == odd and len(odd.pack()) < 80


# --------------------------------------------------------------------------- decode: same pixels as decode_rgb


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("badimages")
    return d, badimages.make_corpus(d)


def test_decode_depth_8_matches_decode_rgb_on_the_corpus(corpus):
    d, expected = corpus
    for name, reason in expected.items():
        data = (d / name).read_bytes()
        if reason is not None:
            with pytest.raises(images.DecodeError) as e:
                decode(data, max_pixels=badimages.BOMB_LIMIT)
            assert e.value.reason == reason, name
            continue
        want = decode_rgb(data, max_pixels=badimages.BOMB_LIMIT)
        got = decode(data, max_pixels=badimages.BOMB_LIMIT, depth="8")
        assert got.rgb.dtype == np.uint8 and np.array_equal(got.rgb, want), name
        if not got.meta.bit_depth == 16:  # auto only differs for 16-bit sources
            assert np.array_equal(decode(data, max_pixels=badimages.BOMB_LIMIT).rgb, want), name


@pytest.mark.parametrize("orientation", range(1, 9))
def test_array_orientation_matches_pillow(orientation):
    a = noise(5, 3)
    method = images._ORIENTATION_TRANSPOSE.get(orientation)
    want = np.asarray(Image.fromarray(a).transpose(method)) if method is not None else a
    assert np.array_equal(images._orient_array(a, orientation), want)


def test_multi_page_tiff_first_page_and_count():
    pages = [Image.new("L", (8, 6), v) for v in (10, 20, 30)]
    dec = decode(encoded(pages[0], "TIFF", save_all=True, append_images=pages[1:]))
    assert dec.meta.pages == 3 and int(dec.rgb[0, 0, 0]) == 10
    _, report = encode(dec.rgb, "png", dec.meta, PROV)
    assert "2 more page(s)" in json.loads(report)["dropped"]["pages"]


# --------------------------------------------------------------------------- 16 bits


def _lightness(v: np.ndarray) -> np.ndarray:
    """raycolor.core.color's L* of a grey sRGB value in [0, 1], in float64 NumPy (R = G = B, so Y = linear)."""
    lin = np.where(v <= 0.04045, v / 12.92, ((np.maximum(v, 0.04045) + 0.055) / 1.055) ** 2.4)
    delta = 6 / 29
    f = np.where(lin > delta**3, np.cbrt(lin), lin / (3 * delta**2) + 4 / 29)
    return 116 * f - 16


def test_lightness_is_raycolor_colors_formula():
    """The NumPy L* above is raycolor.core.color's (torch) on grey input. Both run in float64, where pow and
    cbrt differ by a few ulp between kernels: L <= 100, so a few ulp are ~1e-13; 1e-9 bounds it."""
    torch = pytest.importorskip("torch")
    from raycolor.core.color import rgb_to_lab

    v = np.linspace(0, 1, 1001)
    rgb = torch.from_numpy(np.stack([v, v, v])[:, None, :])  # (3, 1, N) float64
    assert np.abs(rgb_to_lab(rgb)[0, 0].numpy() - _lightness(v)).max() <= 1e-9


def test_16bit_grey_tiff_keeps_16_bits_and_finer_lightness():
    ramp = np.linspace(0, 65535, 4096).round().astype(np.uint16).reshape(64, 64)
    data = encoded(Image.fromarray(ramp), "TIFF")
    dec = decode(data)
    assert dec.meta.bit_depth == 16 and dec.rgb.dtype == np.uint16
    assert np.array_equal(dec.rgb[:, :, 0], ramp) and np.array_equal(dec.rgb[:, :, 2], ramp)
    assert np.array_equal(decode(data, depth="8").rgb, decode_rgb(data))
    l16 = _lightness(dec.rgb[:, :, 0].astype(np.float64) / 65535)
    l8 = _lightness(decode_rgb(data)[:, :, 0].astype(np.float64) / 255)
    assert len(np.unique(l16)) == 4096 > 256 >= len(np.unique(l8))
    # |L16 - L8| is at most L's steepest slope (sampled on a grid 16x finer than 16 bits, float64, where
    # kernel-to-kernel variation is ~1e-13) times the 8-bit rounding error 0.5/255 of v, plus 1e-9.
    grid = np.linspace(0, 1, 16 * 65536)
    max_slope = float(np.max(np.diff(_lightness(grid)) / np.diff(grid)))
    assert float(np.abs(l16 - l8).max()) <= max_slope * 0.5 / 255 + 1e-9


def test_depth_16_widens_8bit_sources_exactly():
    data = encoded(noise(7, 5), "PNG")
    assert np.array_equal(decode(data, depth="16").rgb, decode_rgb(data).astype(np.uint16) * 257)
    with pytest.raises(ValueError):
        decode(data, depth="12")


def _ramp48(w: int = 40, h: int = 24) -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(0, 65536, (h, w, 3), dtype=np.uint16)


def test_48bit_rgb_tiff_decodes_at_16_bits_upright():
    tifffile = pytest.importorskip("tifffile")
    a = _ramp48()
    buf = io.BytesIO()
    tifffile.imwrite(buf, a, photometric="rgb", compression="zlib", extratags=[(274, "H", 1, 6, True)])
    dec = decode(buf.getvalue())
    assert dec.meta.bit_depth == 16 and dec.rgb.dtype == np.uint16
    assert np.array_equal(dec.rgb, np.rot90(a, -1))
    assert np.array_equal(decode(buf.getvalue(), depth="8").rgb, decode_rgb(buf.getvalue()))


def test_encode_16bit_tiff_and_png_read_back_16bit_identical(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    a = _ramp48()
    tif, _ = encode(a, "tiff", None, PROV)
    png, _ = encode(a, "png", None, PROV)
    assert np.array_equal(tifffile.imread(io.BytesIO(tif)), a)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), (a >> 8).astype(np.uint8))  # Pillow: high bytes
    assert np.array_equal(_png16_pixels(png), a)  # and every low byte, through this file's own reader
    # a big-endian EXIF makes a big-endian TIFF (the EXIF's bytes are copied in its byte order)
    exif = Image.Exif()
    exif[315] = "Jane Doe"
    tif_mm, _ = encode(a, "tiff", Metadata(exif=exif.tobytes()[6:]), PROV)
    assert tif_mm[:2] == b"MM" and np.array_equal(tifffile.imread(io.BytesIO(tif_mm)), a)
    assert np.array_equal(decode(tif_mm).rgb, a) and decode(tif_mm).meta.bit_depth == 16
    # a 48-bit PNG comes back through Pillow at 8 bits, and says so
    dec = decode(png)
    assert dec.rgb.dtype == np.uint8 and dec.meta.bit_depth == 16 and "depth" in dict(dec.meta.notes)
    jpg, report = encode(a, "jpeg", None, PROV)
    assert "16-bit samples written as 8-bit" in json.loads(report)["changed"]["depth"]
    if EXIFTOOL:
        (tmp_path / "a.tif").write_bytes(tif)
        (tmp_path / "a.png").write_bytes(png)
        tool = exiftool_read([tmp_path / "a.tif", tmp_path / "a.png"])
        assert tool["a.tif"]["IFD0:BitsPerSample"] == "16 16 16" and tool["a.tif"]["IFD0:Compression"] == 8
        assert tool["a.png"]["PNG:BitDepth"] == 16 and tool["a.png"]["PNG:ColorType"] == 2
        for t in tool.values():
            assert t["XMP-iptcExt:DigitalSourceType"] == DIGITAL_SOURCE_TYPE


def _png16_pixels(png: bytes) -> np.ndarray:
    """Decode a 48-bit PNG whose rows all use filter 0 or 2 (what encode writes): IHDR, IDATs, undo Up."""
    pos, idat, (w, h) = 8, b"", (0, 0)
    while pos < len(png):
        n, kind = struct.unpack(">I4s", png[pos : pos + 8])
        body = png[pos + 8 : pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, colour = struct.unpack(">IIBB", body[:10])
            assert (depth, colour) == (16, 2)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + w * 6)
    assert set(np.unique(rows[:, 0])) <= {0, 2}
    out = rows[:, 1:].copy()
    for y in range(1, h):
        if rows[y, 0] == 2:
            out[y] += out[y - 1]
    return out.view(">u2").reshape(h, w, 3).astype(np.uint16)


# --------------------------------------------------------------------------- colour management on input


def _s15(x: float) -> bytes:
    return struct.pack(">i", round(x * 65536))


def _icc(space: bytes, description: str, tags: list[tuple[bytes, bytes]]) -> bytes:
    """A minimal ICC v2 display profile (this test's own builder, not the library's)."""
    text = description.encode() + b"\0"
    tags = [(b"desc", b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + bytes(78))] + tags
    tags += [(b"wtpt", b"XYZ \0\0\0\0" + _s15(0.9642) + _s15(1.0) + _s15(0.8249)), (b"cprt", b"text\0\0\0\0PD\0")]
    offset, table, body = 132 + 12 * len(tags), b"", b""
    for sig, data in tags:
        body += bytes(-len(body) % 4)
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data
    header = struct.pack(">I4sI4s4s4s", offset + len(body), b"lcms", 0x02100000, b"mntr", space, b"XYZ ")
    header += bytes(12) + b"acsp" + bytes(28) + _s15(0.9642) + _s15(1.0) + _s15(0.8249) + bytes(48)
    return header + struct.pack(">I", len(tags)) + table + body


def _gamma(g: float) -> bytes:
    return b"curv\0\0\0\0" + struct.pack(">IH", 1, round(g * 256)) + b"\0\0"


def adobe_rgb_like() -> bytes:
    """Adobe RGB (1998) primaries adapted to D50 and its 563/256 gamma."""
    xyz = [(0.60974, 0.31111, 0.01947), (0.20528, 0.62567, 0.06087), (0.14919, 0.06322, 0.74457)]
    tags = [(sig, b"XYZ \0\0\0\0" + b"".join(_s15(v) for v in c)) for sig, c in zip((b"rXYZ", b"gXYZ", b"bXYZ"), xyz)]
    tags += [(sig, _gamma(563 / 256)) for sig in (b"rTRC", b"gTRC", b"bTRC")]
    return _icc(b"RGB ", "Adobe RGB-like", tags)


def gray_gamma_22() -> bytes:
    return _icc(b"GRAY", "Gray Gamma 2.2", [(b"kTRC", _gamma(2.2))])


def test_test_profiles_are_real_profiles():
    for icc in (adobe_rgb_like(), gray_gamma_22()):
        ImageCms.ImageCmsProfile(io.BytesIO(icc))


def test_adobe_rgb_is_converted_to_srgb():
    a = np.array([[[200, 100, 50], [30, 160, 90], [128, 128, 128], [250, 250, 250]]], np.uint8)
    data = encoded(a, "PNG", icc_profile=adobe_rgb_like())
    dec = decode(data)
    assert np.array_equal(decode_rgb(data), dec.rgb)  # the one decode policy: decode_rgb is colour-managed too
    assert not np.array_equal(dec.rgb, a)
    assert dec.meta.notes == (("icc", "converted from Adobe RGB-like to sRGB"),)
    # Adobe RGB's wider gamut: the same numbers mean a more saturated colour, so sRGB needs a wider spread
    assert int(dec.rgb[0, 0, 0]) - int(dec.rgb[0, 0, 2]) > 200 - 50
    _, report = encode(dec.rgb, "jpeg", dec.meta, PROV)
    assert json.loads(report)["changed"]["icc"].startswith("converted from Adobe RGB-like")


def test_grey_gamma_profile_is_converted_and_stays_neutral():
    ramp = np.arange(0, 256, 5, dtype=np.uint8).reshape(1, -1)
    data = encoded(Image.fromarray(ramp), "PNG", icc_profile=gray_gamma_22())
    dec = decode(data)
    assert dec.meta.notes == (("icc", "converted from Gray Gamma 2.2 to sRGB"),)
    assert np.array_equal(dec.rgb[..., 0], dec.rgb[..., 1]) and np.array_equal(dec.rgb[..., 0], dec.rgb[..., 2])
    assert not np.array_equal(dec.rgb[..., 0], ramp) and np.all(np.diff(dec.rgb[0, :, 0].astype(int)) >= 0)
    assert dec.rgb[0, 0, 0] == 0 and dec.rgb[0, -1, 0] == 255
    # 16-bit grey with the same profile: converted at 16 bits, through the same curve
    ramp16 = (ramp.astype(np.uint16) * 257)
    dec16 = decode(encoded(Image.fromarray(ramp16), "TIFF", tiffinfo={34675: gray_gamma_22()}))
    assert dec16.rgb.dtype == np.uint16 and dec16.meta.notes[-1][1].startswith("converted")
    assert np.abs(dec16.rgb[..., 0].astype(int) / 257 - dec.rgb[..., 0]).max() <= 1


def test_srgb_profile_passes_unchanged():
    a = noise(9, 4)
    for icc in (metadata.srgb_icc(), ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()):
        dec = decode(encoded(a, "PNG", icc_profile=icc))
        assert np.array_equal(dec.rgb, a) and dec.meta.notes == ()


# --------------------------------------------------------------------------- bad metadata never costs an image


@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory):
    """Six kinds of bad metadata, each decoded and encoded; exiftool's reading of every output."""
    if EXIFTOOL is None:
        pytest.skip(NO_EXIFTOOL)
    d = tmp_path_factory.mktemp("badmeta")
    rgb = noise(32, 24, 5)
    good = d / "good.jpg"
    good.write_bytes(encoded(rgb, "JPEG"))
    exiftool_write([good], *(f"-{k}={v}" for k, v in TAGS.items() if not k.startswith(("IPTC", "XMP"))))
    with Image.open(good) as im:
        exif = im.info["exif"]
    inputs, wrong_iim = bad_metadata_inputs(rgb, exif)
    results, paths = {}, []
    for name, (data, fmt) in inputs.items():
        dec = decode(data)
        assert np.array_equal(dec.rgb, decode_rgb(data)), name  # (big_xmp's XMP says Orientation 6: Pillow obeys)
        out, report = encode(dec.rgb, fmt, dec.meta, PROV)
        p = d / f"{name}{SUFFIX[fmt]}"
        p.write_bytes(out)
        paths.append(p)
        results[name] = (dec, out, json.loads(report))
    return results, exiftool_read(paths), wrong_iim


@needs_exiftool
@pytest.mark.parametrize(
    "name, group, reason",
    [
        ("corrupt_exif", "exif", "corrupt: not a TIFF header"),
        ("makernote", "exif.MakerNote", "dropped: "),
        ("big_xmp", "xmp", "exceeds a JPEG APP1 segment"),
        ("refused_icc", "icc", "LittleCMS refused the profile"),
        ("truncated_exif", "exif.", "truncated or corrupt"),
        ("unparseable_xmp", "xmp", "unparseable: "),
    ],
)
def test_bad_metadata_is_dropped_with_a_reason(bad_corpus, name, group, reason):
    results, tool, _ = bad_corpus
    _, _, report = results[name]
    dropped = report.get("dropped", {})
    hits = {g: r for g, r in dropped.items() if g == group or (group.endswith(".") and g.startswith(group))}
    assert hits and any(reason in r for r in hits.values()), report
    t = tool[f"{name}{SUFFIX['png' if name == 'unparseable_xmp' else 'jpeg']}"]
    assert t["XMP-iptcExt:DigitalSourceType"] == DIGITAL_SOURCE_TYPE and t["IFD0:Software"] == PROV.software
    assert "Warning" not in t and "Error" not in t, (t.get("Warning"), t.get("Error"))


@needs_exiftool
def test_what_survives_bad_metadata(bad_corpus):
    results, tool, wrong_iim = bad_corpus
    assert tool["makernote.jpg"]["ExifIFD:DateTimeOriginal"] == "1950:06:01 05:30:00"
    assert tool["makernote.jpg"]["IFD0:Make"] == "Acme" and "ExifIFD:MakerNoteUnknown" not in tool["makernote.jpg"]
    assert tool["truncated_exif.jpg"]["IFD0:Artist"] == TAGS["EXIF:Artist"]  # IFD0 is before the cut
    # IPTC in a wrong encoding: kept, its bytes verbatim (a decode/re-encode would have changed them)
    assert wrong_iim in results["wrong_iptc"][1] and "iptc" in results["wrong_iptc"][2]["kept"]
    # the 70 kB XMP fits PNG but not JPEG; the unparseable one is replaced by a fresh packet
    dec = results["big_xmp"][0]
    png, report = encode(dec.rgb, "png", dec.meta, PROV)
    assert "xmp" in json.loads(report)["kept"] and b"x" * 70_000 in png
    assert "XMP-dc:Description" not in tool["unparseable_xmp.png"]


@needs_exiftool
def test_xmp_merge_fixes_and_keeps_the_rest(tmp_path):
    rgb = noise(10, 8)
    dec = decode(png_with_xmp(rgb, xmp_packet("caption <with> markup")))
    out, report = encode(dec.rgb, "jpeg", dec.meta, PROV)
    (tmp_path / "m.jpg").write_bytes(out)
    t = exiftool_read([tmp_path / "m.jpg"])["m.jpg"]
    assert t["XMP-tiff:Orientation"] == 1 and t["XMP-xmp:CreatorTool"] == PROV.software
    assert t["XMP-dc:Description"] == "caption <with> markup" and t["XMP-my:Box"] == "B-17 & C"
    assert b'xmlns:my="http://example.org/my/1.0/"' in out  # the input's own prefix
    assert "tiff:Orientation=1" in json.loads(report)["changed"]["xmp"]


def _pillow_exif() -> bytes:
    exif = Image.Exif()
    exif.update({0x010E: "caption", 0x013B: "Jane Doe", 0x0112: 6, 0x011A: 600.0, 0x011B: 600.0, 0x0128: 2})
    exif[0x8769] = {0x9003: "1950:06:01 05:30:00", 0xA001: 65535, 0x9286: b"ASCII\0\0\0a comment"}
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 0.0), 3: "E", 4: (2.0, 21.0, 0.0)}
    return exif.tobytes()


@pytest.mark.filterwarnings("ignore:(Truncated File Read|Tag data larger|Possibly corrupt|Corrupt EXIF):UserWarning")
def test_fuzzed_exif_never_costs_the_image():  # (Pillow warns about the EXIF it reads for orientation: the point here)
    """Truncations, flipped bytes and scribbled offsets/counts: every image still decodes and encodes."""
    rng = np.random.default_rng(21)
    rgb = noise(12, 10, 2)
    exif = _pillow_exif()
    assert decode(encoded(rgb, "JPEG", exif=exif)).meta.notes == ()
    for _ in range(120):
        blob = bytearray(exif)
        kind = rng.integers(3)
        if kind == 0:
            blob = blob[: rng.integers(6, len(blob))]
        elif kind == 1:
            for i in rng.integers(6, len(blob), rng.integers(1, 9)):
                blob[i] ^= int(rng.integers(1, 256))
        else:
            i = int(rng.integers(6, len(blob) - 4))
            blob[i : i + 4] = rng.integers(0, 256, 4, dtype=np.uint8).tobytes()
        data = jpeg_with_segment(rgb, 0xE1, bytes(blob))
        dec = decode(data)
        assert np.array_equal(dec.rgb, decode_rgb(data))
        for fmt in ("jpeg", "tiff", "png"):
            out, report = encode(dec.rgb, fmt, dec.meta, PROV)
            assert decode(out).meta.exif is not None and json.loads(report)["added"] == ["provenance", "icc:sRGB"]
