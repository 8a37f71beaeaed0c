"""raycolor.core.jp2: JPEG 2000 in and out, checked against independent readers (jpylyzer, exiftool, Pillow).

Ray-free and quick: small images, one 2100x1500 for tiles and levels. jpylyzer and exiftool run once each
on all the files a test writes.
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raycolor.core import jp2

XMP = (
    b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>'
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    b'<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/"'
    b' xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" xmp:CreatorTool="raycolor test"'
    b' Iptc4xmpExt:DigitalSourceType="http://cv.iptc.org/newscodes/digitalsourcetype/'
    b'compositeWithTrainedAlgorithmicMedia"/></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
)


def _photo(h: int, w: int, *, rgb: bool, bits: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([x / w * 0.7 + 0.1, y / h * 0.6 + 0.2, (x + y) / (w + h) * 0.8 + 0.1], axis=-1)
    top = (1 << bits) - 1
    img = np.clip(base * top + rng.normal(0, top * 0.02, base.shape), 0, top)
    img = img.astype(np.uint8 if bits == 8 else np.uint16)
    return img if rgb else np.ascontiguousarray(img[..., 1])


def _exif() -> bytes:
    """A little-endian TIFF header and IFD0 holding Artist = "Jane Doe"."""
    artist = b"Jane Doe\x00"
    ifd = struct.pack("<H", 1) + struct.pack("<HHII", 0x013B, 2, len(artist), 26) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + artist


def _iptc() -> bytes:
    caption = b"A caption"
    return b"\x1c\x01\x5a\x00\x03\x1b\x25\x47" + b"\x1c\x02\x78" + struct.pack(">H", len(caption)) + caption


def _jpylyzer_valid(paths: list[Path]) -> dict[str, bool]:
    jpylyzer = shutil.which("jpylyzer", path=str(Path(sys.executable).parent)) or shutil.which("jpylyzer")
    if jpylyzer is None:
        pytest.skip("jpylyzer not installed")
    out = subprocess.run([jpylyzer, *map(str, paths)], capture_output=True, text=True, check=True).stdout
    import xml.etree.ElementTree as ET

    root = ET.fromstring(out)
    valid = {}
    for f in root.iter():
        if f.tag.endswith("}file") or f.tag == "file":
            name = next(e.text for e in f.iter() if e.tag.endswith("fileName"))
            ok = next(e.text for e in f.iter() if e.tag.endswith("isValid"))
            valid[name] = ok == "True"
    return valid


def _exiftool(path: Path) -> dict:
    if shutil.which("exiftool") is None:
        pytest.skip("exiftool not installed")
    out = subprocess.run(["exiftool", "-j", "-n", "-G1", "-a", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)[0]


def _fallback_encoders():
    """encode() as it runs where Pillow's libopenjp2 cannot be loaded: Pillow / imagecodecs."""
    mp = pytest.MonkeyPatch()
    mp.setattr(jp2, "_openjpeg", lambda: None)
    return mp


@pytest.fixture(scope="module", params=["openjpeg", "fallback"])
def written(request, tmp_path_factory):
    """Every kind the encoder writes: 8/16 bit x grey/RGB x lossless/lossy, 300x200, all with XMP and dpi; by
    the tile-by-tile OpenJPEG writer, and by the Pillow/imagecodecs fallback."""
    if request.param == "openjpeg" and jp2._openjpeg() is None:
        pytest.skip("Pillow's libopenjp2 2.5 not loadable here")
    mp = _fallback_encoders() if request.param == "fallback" else None
    d = tmp_path_factory.mktemp(f"jp2-{request.param}")
    out = {}
    try:
        _write_all(d, out)
    finally:
        if mp is not None:
            mp.undo()
    return out


def _write_all(d: Path, out: dict) -> None:
    for bits in (8, 16):
        for rgb in (False, True):
            src = _photo(200, 300, rgb=rgb, bits=bits)
            for lossless in (True, False):
                data = jp2.encode(src, lossless=lossless, rate=None if lossless else 1.0, xmp=XMP,
                                  exif=_exif(), iptc=_iptc(), dpi=(300.0, 300.0))
                path = d / f"{bits}-{'rgb' if rgb else 'grey'}-{'lossless' if lossless else 'lossy'}.jp2"
                path.write_bytes(data)
                out[path] = (src, data, lossless)


def test_jpylyzer_says_every_written_jp2_is_valid(written):
    """jpylyzer, the validator archives use, on all 8 kinds. Fails if a box is out of order or malformed (it
    flagged a wrong ihdr BPC or a missing colr when tried), or a codestream breaks the JP2 profile."""
    valid = _jpylyzer_valid(list(written))
    assert len(valid) == len(written)
    assert all(valid.values()), valid


def test_lossless_round_trip_is_exact_and_lossy_is_near(written):
    """Lossless is bit-exact at 8 and 16 bits, grey and RGB (fails with a 9-7 transform, a dropped colour
    transform inverse, or the Pillow I;16 tile bug this module works around); lossy is close, at about the
    rate asked for."""
    for path, (src, data, lossless) in written.items():
        img = jp2.decode(data, max_pixels=None)
        assert img.pixels.dtype == src.dtype and img.pixels.shape == src.shape, path.name
        assert img.colorspace == ("srgb" if src.ndim == 3 else "grey")
        if lossless:
            assert np.array_equal(img.pixels, src), path.name
            assert img.header.reversible
        else:
            top = np.iinfo(src.dtype).max
            err = np.abs(img.pixels.astype(np.float64) - src).mean() / top
            assert err < 0.03, (path.name, err)
            bpp = len(data) * 8 / (src.shape[0] * src.shape[1])
            assert bpp < 1.6, (path.name, bpp)
        assert img.dpi == pytest.approx((300.0, 300.0), rel=1e-4)
        assert img.xmp == XMP and img.exif == _exif() and img.iptc == _iptc()
        assert img.notes == ()


def test_exiftool_reads_the_provenance_dpi_exif_and_iptc(written):
    """An independent reader finds what the boxes hold: fails if a uuid is wrong (exiftool would show an
    unknown UUID box) or the res box's num/den/exponent encode another resolution."""
    for path in [p for p in written if "8-rgb-lossless" in p.name or "16-grey-lossy" in p.name]:
        tags = _exiftool(path)
        assert tags["XMP-xmp:CreatorTool"] == "raycolor test"
        assert tags["XMP-iptcExt:DigitalSourceType"].endswith("compositeWithTrainedAlgorithmicMedia")
        per_unit = {"m": 0.0254, "cm": 2.54, "mm": 25.4, "um": 25400.0}
        unit = tags["Jpeg2000:CaptureXResolutionUnit"]
        # with -n the unit is n for 10**-n metres (2: cm); without, its name
        factor = per_unit.get(unit) if isinstance(unit, str) else 0.0254 * 10.0 ** int(unit)
        assert tags["Jpeg2000:CaptureXResolution"] * factor == pytest.approx(300.0, rel=1e-3)
        assert tags["IFD0:Artist"] == "Jane Doe"
        assert tags["IPTC:Caption-Abstract"] == "A caption"


def test_newspaper_profile_from_another_encoder_decodes_to_pillows_pixels():
    """The Library of Congress newspaper profile (8-bit grey, 1024² tiles, RLCP, 9-7, ~1 bpp) written by Pillow
    directly: our pixels equal Pillow's own decode exactly. Fails if the wrong codestream range is handed to
    OpenJPEG, a tile is dropped, or scaling touches 8-bit data."""
    src = _photo(1500, 2100, rgb=False, bits=8)
    buf = io.BytesIO()
    Image.fromarray(src).save(buf, "JPEG2000", tile_size=(1024, 1024), progression="RLCP", irreversible=True,
                              quality_mode="rates", quality_layers=[8], num_resolutions=6)
    data = buf.getvalue()
    head = jp2.header(data)
    assert (head.width, head.height, head.components, head.bits, head.tiles) == (2100, 1500, 1, 8, 6)
    assert head.is_jp2 and not head.reversible
    ref = Image.open(io.BytesIO(data))
    ref.load()
    img = jp2.decode(data, max_pixels=None, threads=2)
    assert img.pixels.dtype == np.uint8 and np.array_equal(img.pixels, np.asarray(ref))


def _marker_segments(data: bytes) -> dict[int, bytes]:
    """The main header's marker segments, walked by length (a byte search could hit entropy-coded data)."""
    pos = data.index(b"\xff\x4f\xff\x51") + 2
    segs: dict[int, bytes] = {}
    while True:
        marker, length = struct.unpack_from(">HH", data, pos)
        if marker == 0xFF90:
            return segs
        segs.setdefault(marker, data[pos + 4:pos + 2 + length])
        pos += 2 + length


@pytest.mark.parametrize("rgb,bits,h,w,tiles,levels", [(False, 8, 1500, 2100, 6, 4), (True, 16, 1030, 1100, 4, 3)])
def test_encoder_tiles_levels_progression_plt_tlm(rgb, bits, h, w, tiles, levels):
    """1024² tiles, RPCL, levels to <= 256 px (2100/16 = 132; 3 levels would leave 263), the colour
    transform for RGB, PLT and TLM markers, at 8-bit grey and 16-bit RGB (the case Pillow cannot write). Fails if
    any of these options stops reaching OpenJPEG (or the ctypes struct layout drifts: a field lands elsewhere)."""
    if jp2._openjpeg() is None:
        pytest.skip("Pillow's libopenjp2 2.5 not loadable here")
    src = _photo(h, w, rgb=rgb, bits=bits)
    data = jp2.encode(src, lossless=False, rate=1.0, threads=2)
    head = jp2.header(data)
    assert (head.tiles, head.tile_size, head.levels, head.bits) == (tiles, (1024, 1024), levels, bits)
    segs = _marker_segments(data)
    cod = segs[0xFF52]
    assert cod[1] == 2  # progression order: 2 = RPCL
    assert cod[4] == (1 if rgb else 0)  # multiple component transform
    assert 0xFF55 in segs  # TLM
    assert b"\xff\x58" in data  # PLT (in the tile-part headers)
    assert len(data) * 8 / (h * w) == pytest.approx(1.0, rel=0.05)


def test_fallback_encoder_tiles_and_levels():
    """Without the OpenJPEG writer: Pillow's 1024² tiles, RPCL and PLT for 8-bit; 16-bit grey in full-width
    strips (Pillow 13 writes I;16 tiles right of the first column from the wrong offset: with 1024² tiles the
    lossless round trip below fails, 1030x76 pixels wrong)."""
    mp = _fallback_encoders()
    try:
        grey8 = jp2.encode(_photo(1030, 1100, rgb=False, bits=8), lossless=False, rate=1.0)
        src16 = _photo(1030, 1100, rgb=False, bits=16)
        grey16 = jp2.encode(src16)
    finally:
        mp.undo()
    head = jp2.header(grey8)
    assert (head.tiles, head.tile_size, head.levels) == (4, (1024, 1024), 3)
    assert _marker_segments(grey8)[0xFF52][1] == 2 and b"\xff\x58" in grey8
    assert jp2.header(grey16).tile_size == (1100, 1024)
    assert np.array_equal(jp2.decode(grey16, max_pixels=None).pixels, src16)
    assert jp2.levels_for(300, 200) == 1 and jp2.levels_for(256, 256) == 0 and jp2.levels_for(40000, 100) == 8


def test_twelve_bit_grey_is_scaled_to_sixteen_without_clipping():
    """12-bit samples -> round(v * 65535 / 4095): 4095 -> 65535, 0 -> 0, every value in between by the same
    rule. Fails with a plain shift (4095 -> 65520, what Pillow gives) or with 8-bit output."""
    import imagecodecs

    v = (np.arange(200 * 300) % 4096).astype(np.uint16).reshape(200, 300)
    data = imagecodecs.jpeg2k_encode(v, level=0, bitspersample=12, codecformat=imagecodecs.JPEG2K.CODEC.J2K)
    assert jp2.header(data).bits == 12 and not jp2.header(data).is_jp2
    img = jp2.decode(data, max_pixels=None)
    assert img.pixels.dtype == np.uint16 and img.bits == 12
    want = np.rint(v.astype(np.float64) * 65535 / 4095).astype(np.uint16)
    assert np.array_equal(img.pixels, want)
    assert img.pixels.max() == 65535


def test_truncated_codestream_is_truncated():
    """Cut anywhere in the tile data or header: Jp2Error("truncated"), never a partial image. Fails if the
    tile-part walk is removed and OpenJPEG's own tolerance decides (it returns a lost tile as zeros), or if a
    cut in the main header escapes as struct.error."""
    src = _photo(1500, 2100, rgb=False, bits=8)
    data = jp2.encode(src, lossless=False, rate=0.5)
    jp2c = data.index(b"jp2c") + 4
    for cut in (len(data) - 3, len(data) - 5000, (jp2c + len(data)) // 2, jp2c + 60, jp2c + 2, 40):
        with pytest.raises(jp2.Jp2Error) as e:
            jp2.decode(data[:cut], max_pixels=None)
        assert e.value.reason == "truncated", (cut, e.value)
    # a whole tile-part gone (a lost byte range): OpenJPEG alone returns the image with that tile all zeros and
    # no error (seen with the walk disabled), so only the tile-part walk finds it
    cs = data[jp2c:]
    pos, parts = cs.index(b"\xff\x90"), []
    while cs.startswith(b"\xff\x90", pos):
        psot = struct.unpack_from(">I", cs, pos + 6)[0]
        parts.append((pos, psot))
        pos += psot
    assert len(parts) == 6 and cs[pos:] == b"\xff\xd9"
    gap = cs[:parts[3][0]] + cs[parts[3][0] + parts[3][1]:]
    with pytest.raises(jp2.Jp2Error) as e:
        jp2.decode(gap, max_pixels=None)
    assert e.value.reason == "truncated" and "tiles missing" in e.value.detail
    # only the final EOC missing, every tile whole: the pixels, with a note
    img = jp2.decode(data[:-2], max_pixels=None)
    assert img.pixels.shape == (1500, 2100) and any("EOC" in t for _, t in img.notes)


def _uuid_box(uid: bytes, payload: bytes, *, length: int | None = None) -> bytes:
    return struct.pack(">I4s", length or 8 + 16 + len(payload), b"uuid") + uid + payload


def test_broken_xmp_box_costs_a_note_not_the_pixels():
    """Two broken XMP uuid boxes: not XML, and one whose length runs past the end of the file (after jp2c, as
    many writers place XMP). Fails if either raises or the garbage is handed on as XMP."""
    src = _photo(200, 300, rgb=True, bits=8)
    data = jp2.encode(src)
    garbage = data + _uuid_box(jp2.XMP_UUID, b"<x:xmpmeta><unclosed")
    img = jp2.decode(garbage, max_pixels=None)
    assert np.array_equal(img.pixels, src) and img.xmp is None
    assert [g for g, _ in img.notes] == ["xmp"]
    overrun = data + _uuid_box(jp2.XMP_UUID, XMP, length=1 << 20)
    img = jp2.decode(overrun, max_pixels=None)
    assert np.array_equal(img.pixels, src) and img.xmp is None
    assert any(g == "xmp" and "past the end" in t for g, t in img.notes)


def test_colr_icc_garbage_is_handed_back_with_the_pixels():
    """A colr box of method 2 (restricted ICC) holding bytes no CMM would take: the pixels and the bytes come
    back, colorspace "icc"; LittleCMS is the caller's to try. Fails if the box is validated here or dropped."""
    src = _photo(200, 300, rgb=True, bits=8)
    data = jp2.encode(src)
    junk = b"not an ICC profile" * 3
    old = struct.pack(">I4sBBBI", 15, b"colr", 1, 0, 0, 16)
    new = struct.pack(">I4sBBB", 11 + len(junk), b"colr", 2, 0, 0) + junk
    i = data.index(old)
    patched = bytearray(data[:i] + new + data[i + len(old):])
    jp2h = patched.index(b"jp2h") - 4
    struct.pack_into(">I", patched, jp2h, struct.unpack_from(">I", patched, jp2h)[0] + len(new) - len(old))
    img = jp2.decode(bytes(patched), max_pixels=None)
    assert np.array_equal(img.pixels, src)
    assert img.colorspace == "icc" and img.icc == junk


def test_header_reads_size_without_decoding_and_too_large_comes_first():
    """A codestream whose SIZ claims 100000x100000 and that holds nothing else: header() answers, and
    decode(max_pixels=...) says too_large. Were pixels decoded (or tile-parts walked) first, this would be
    "truncated" (no tile data) or a 40 GB allocation."""
    siz = struct.pack(">HIIIIIIIIH", 0, 100000, 100000, 0, 0, 1024, 1024, 0, 0, 1) + b"\x07\x01\x01"
    data = b"\xff\x4f\xff\x51" + struct.pack(">H", 2 + len(siz)) + siz + b"\xff\x90" + b"\x00" * 12
    head = jp2.header(data)
    assert (head.width, head.height, head.components, head.bits, head.tiles) == (100000, 100000, 1, 8, 98 * 98)
    with pytest.raises(jp2.Jp2Error) as e:
        jp2.decode(data, max_pixels=50_000_000)
    assert e.value.reason == "too_large"
    with pytest.raises(jp2.Jp2Error) as e:
        jp2.decode(data, max_pixels=None)
    assert e.value.reason == "truncated"


def test_error_is_picklable_and_typed():
    e = jp2.Jp2Error("truncated", "cut")
    back = pickle.loads(pickle.dumps(e))
    assert back.args == ("truncated", "cut") and back.reason == "truncated" and isinstance(back, ValueError)
    with pytest.raises(ValueError):
        jp2.Jp2Error("nonsense", "x")
    with pytest.raises(jp2.Jp2Error) as err:
        jp2.decode(b"GIF89a" + b"\x00" * 40, max_pixels=None)
    assert err.value.reason == "unsupported"


def test_htj2k_codestream_decodes():
    """An HTJ2K (Part 15) codestream written by OpenJPH (in imagecodecs), decoded by OpenJPEG 2.5: exact."""
    import imagecodecs

    src = _photo(200, 300, rgb=True, bits=8)
    data = imagecodecs.htj2k_encode(src, reversible=True, resolutions=3)
    head = jp2.header(data)
    assert head.htj2k and not head.is_jp2
    assert np.array_equal(jp2.decode(data, max_pixels=None).pixels, src)


def test_sycc_is_converted_and_alpha_composited_on_white():
    """sYCC (colr enum 18) comes back as RGB; RGBA comes back composited on white, alpha beside it. Fails if
    either is passed through raw."""
    rgb = _photo(200, 300, rgb=True, bits=8).astype(np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    ycc = np.stack([0.299 * r + 0.587 * g + 0.114 * b, -0.168736 * r - 0.331264 * g + 0.5 * b + 128,
                    0.5 * r - 0.418688 * g - 0.081312 * b + 128], axis=-1)
    ycc = np.clip(np.rint(ycc), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(ycc).save(buf, "JPEG2000", no_jp2=True)  # mct=0: the components are stored as given
    data = bytearray(jp2._wrap(buf.getvalue(), 200, 300, 3, 8, xmp=None, exif=None, iptc=None, dpi=None))
    i = data.index(b"colr") + 7
    data[i:i + 4] = struct.pack(">I", 18)
    img = jp2.decode(bytes(data), max_pixels=None)
    assert img.colorspace == "sycc" and np.abs(img.pixels.astype(np.float64) - rgb).max() <= 2.5

    rgba = np.dstack([_photo(200, 300, rgb=True, bits=8), np.tile(np.linspace(0, 255, 300), (200, 1))])
    rgba = rgba.astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "JPEG2000")
    img = jp2.decode(buf.getvalue(), max_pixels=None)
    assert img.pixels.shape == (200, 300, 3) and np.array_equal(img.alpha, rgba[..., 3])
    assert (img.pixels[:, 0] == 255).all()  # alpha 0: white
    assert np.array_equal(img.pixels[:, -1], rgba[:, -1, :3])  # alpha 255: the colour


def test_exif_prefix_is_stripped():
    """An EXIF uuid payload that starts with "Exif\\0\\0" comes back from its TIFF header (the byte caps are
    raycolor.core.metadata's own names, not copies)."""
    src = _photo(20, 30, rgb=False, bits=8)
    data = jp2.encode(src) + _uuid_box(jp2.EXIF_UUID, b"Exif\x00\x00" + _exif())
    assert jp2.decode(data, max_pixels=None).exif == _exif()
    assert set(jp2.SUFFIXES) == {".jp2", ".j2k", ".j2c", ".jpf", ".jpx", ".jph"}
    assert all(s in (jp2.JP2_SIGNATURE, jp2.CODESTREAM_SIGNATURE) for s in jp2.SIGNATURES)


def test_palette_is_applied():
    """A 1-component index image with pclr + cmap boxes (as some scanners write bitonal or colour-mapped
    pages): the colours come back, RGB. Fails if the palette is ignored (the indices would come back grey)."""
    index = (np.arange(200 * 300) % 4).astype(np.uint8).reshape(200, 300)
    buf = io.BytesIO()
    Image.fromarray(index).save(buf, "JPEG2000", no_jp2=True)
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 128, 255], [250, 240, 230]], np.uint8)
    pclr = struct.pack(">I4sHB", 8 + 3 + 3 + colours.size, b"pclr", 4, 3) + b"\x07\x07\x07" + colours.tobytes()
    cmap = struct.pack(">I4s", 8 + 12, b"cmap") + b"".join(struct.pack(">HBB", 0, 1, j) for j in range(3))
    data = bytearray(jp2._wrap(buf.getvalue(), 200, 300, 1, 8, xmp=None, exif=None, iptc=None, dpi=None))
    i = data.index(b"colr") + 7
    data[i:i + 4] = struct.pack(">I", 16)
    end = data.index(b"jp2c") - 4
    data[end:end] = pclr + cmap
    jp2h = data.index(b"jp2h") - 4
    struct.pack_into(">I", data, jp2h, struct.unpack_from(">I", data, jp2h)[0] + len(pclr) + len(cmap))
    img = jp2.decode(bytes(data), max_pixels=None)
    assert img.pixels.shape == (200, 300, 3) and img.colorspace == "srgb"
    assert np.array_equal(img.pixels, colours[index])
