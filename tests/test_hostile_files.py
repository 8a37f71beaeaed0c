"""Hostile files (tests/hostile.py) through decode and encode to every format, Ray-free: never an exception but
a DecodeError, never a stall, never an amplification, and every output decodes again, with Pillow and raycolor.

Time bounds: each step gets seconds where it now takes milliseconds (the slowest, a 0.9 MB XMP packet with 12,000
namespaces written four times, ~0.15 s a format on an idle core), so a shared 2-core machine under load does
not fail them; the old code took 20 s on the 1 MB raw profile, ~9 s on the namespaces, and raised or
amplified on the rest, so each bound still tells the fixed from the broken.

Memory bounds (``tracemalloc``: what Python and NumPy allocate, the bytes objects and arrays that an amplification
makes; libtiff's or LittleCMS's own buffers are not seen): a peak within a constant for the caps (the ICC cap's
bounded inflate is 16 MiB, and zlib grows its buffer to twice that; EXIF's total cap is 2 MiB, copied a few times
while encoding) plus a multiple of what the file brings (its bytes and its pixels). The old code went to 50 MB on
a 64 kB JPEG, 266 MB on a 120 kB PNG and inflated a 100 MB strip for a 100 kB TIFF.
"""

from __future__ import annotations

import io
import json
import struct
import time
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image

from raycolor.core import images, metadata
from raycolor.core.images import DecodeError, decode
from raycolor.core.formats import WRITABLE as FORMATS
from raycolor.core.formats import encode
from raycolor.core.metadata import DIGITAL_SOURCE_TYPE, Metadata, Provenance

try:
    import hostile
except ImportError:  # tests/ turned into a package
    from tests import hostile

PROV = Provenance(metadata.SOFTWARE, "ckpt-hostile")
STEP_SECONDS = 5.0
CAPS_BYTES = 40 << 20  # see the module docstring
PER_BYTE = 8
# an output's size: its pixels, what the input brought (twice: a PNG's XMP can be copied once and grow a little
# when re-serialised), and the caps' worth of new bytes (EXIF's 2 MiB total, written once, with tables) with room
OUT_BYTES = 8 << 20

# Pillow reads the EXIF again (orientation) and says, rightly, what it thinks of these blocks
pytestmark = pytest.mark.filterwarnings(
    "ignore:(Truncated File Read|Tag data larger|Possibly corrupt|Corrupt EXIF|Image appears to be a malformed"
    "|Metadata Warning):UserWarning"
)


@pytest.fixture(scope="module")
def corpus():
    return hostile.corpus()


def _timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t


def _decodes_again(out: bytes, what: str) -> None:
    with Image.open(io.BytesIO(out)) as im:
        im.load()
    decode(out)  # raises a DecodeError (a failure here) if raycolor cannot read what it wrote
    assert what


@pytest.mark.parametrize("name", sorted(hostile.EXPECTED))
def test_hostile_file_decodes_encodes_and_decodes_again(corpus, name):
    data, cls = corpus[name]
    expected = hostile.EXPECTED[name]
    tracemalloc.start()
    try:
        try:
            dec, seconds = _timed(decode, data)
        except DecodeError as e:
            assert expected == e.reason, (name, e)
            return
        assert expected == "ok", (name, "decoded, but expected", expected)
        assert seconds < STEP_SECONDS, (name, "decode", seconds)
        outs = {}
        for fmt in FORMATS:
            (out, report), seconds = _timed(encode, dec.rgb, fmt, dec.meta, PROV)
            assert seconds < STEP_SECONDS, (name, fmt, seconds)
            outs[fmt] = (out, json.loads(report))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    bound = CAPS_BYTES + PER_BYTE * (len(data) + dec.rgb.nbytes)
    assert peak < bound, (name, cls, f"peak {peak} bytes over {bound}")
    for fmt, (out, report) in outs.items():
        assert len(out) < OUT_BYTES + 2 * len(data) + dec.rgb.nbytes, (name, fmt, len(out))
        _decodes_again(out, f"{name} -> {fmt}")
        assert DIGITAL_SOURCE_TYPE.encode() in out or fmt == "webp" and b"XMP " in out, (name, fmt)
        group = hostile.NOTES.get(name)
        if group is not None:
            said = {**report.get("dropped", {}), **report.get("changed", {})}
            assert any(g == group or (group.endswith(".") and g.startswith(group)) for g in said), (name, fmt, report)


def test_corpus_is_small_and_quick():
    corpus, seconds = _timed(hostile.corpus)
    assert sum(len(d) for d, _ in corpus.values()) < 8 << 20 and seconds < 10
    assert {c for _, c in corpus.values()} == {"crash", "quadratic", "amplification", "bomb", "malformed_tag", "xmp",
                                               "jpeg2000"}
    assert all(name.rsplit(".", 1)[1] in ("png", "jpg", "tif", "webp", "jp2") for name in corpus)


# --------------------------------------------------------------------------- the acceptance, one by one


def test_reproduction_1_phys_889k_dpi_is_dropped_with_its_reason(corpus):
    dec = decode(corpus["crash_phys_889k_dpi.png"][0])
    assert dec.meta.dpi is None and ("dpi", "dropped: 889000 dpi is outside 1..100000") in dec.meta.notes
    for fmt in FORMATS:
        out, report = encode(dec.rgb, fmt, dec.meta, PROV)
        assert json.loads(report)["dropped"]["dpi"] == "dropped: 889000 dpi is outside 1..100000"
        _decodes_again(out, fmt)


def test_dpi_out_of_range_is_dropped_on_writing_too():
    rgb = np.zeros((4, 4, 3), np.uint8)
    for dpi in ((889_000.0, 889_000.0), (0.5, 300.0), (float("nan"), 72.0), (float("inf"), 72.0)):
        out, report = encode(rgb, "tiff", Metadata(dpi=dpi), PROV)
        assert "outside 1..100000" in json.loads(report)["dropped"]["dpi"], dpi
        _decodes_again(out, str(dpi))
    out, report = encode(rgb, "tiff", Metadata(dpi=(99_999.37, 1.0)), PROV)  # in range: kept, as a RATIONAL
    assert "dpi" in json.loads(report)["kept"]
    with Image.open(io.BytesIO(out)) as im:
        assert abs(float(im.tag_v2[282]) - 99_999.37) < 0.01 and float(im.tag_v2[283]) == 1.0


def test_rationals_never_overflow():
    values = [0, 1e-30, 1 / 3, 1, 72, 299.9999, 65_535.5, 88_900.0254, 166_453.82, 889_000.0254, 4294967295.0,
              4294967296.0, 1e300, float("inf"), float("nan"), -5.0]
    for v in values:
        e = metadata._rationals("<", v)
        num, den = struct.unpack("<II", e.data)  # the packing itself was where it raised
        assert den >= 1
        if 1 <= v < 1e9:
            assert abs(num / den - v) <= max(1e-6 * v, 1e-4), (v, num, den)


def test_raw_profile_of_a_megabyte_of_spaces_decodes_in_milliseconds(corpus):
    """The acceptance: under 50 ms at 1 MB of spaces (measured ~1-2 ms; the old regex took 20 s, 3.5 s at 80 kB).
    The bound is 1 s: 20x the target, for a loaded machine, and still 20x under what the old code took."""
    data = corpus["quadratic_raw_profile_spaces.png"][0]
    decode(data)
    best = min(_timed(decode, data)[1] for _ in range(3))
    assert best < 1.0, best


def test_raw_profile_parses_what_exiftool_and_imagemagick_write():
    blob = bytes(range(256)) * 3
    text = metadata._raw_profile_text("IPTC profile", blob)
    assert metadata._raw_profile(text) == blob
    assert metadata._raw_profile("\n\nexif\n   10\n" + blob[:10].hex() + "\n") == blob[:10]
    assert metadata._raw_profile("iptc\n4\n0a0b\n0c0d0e") == bytes.fromhex("0a0b0c0d")
    for bad in ("", " " * 1000, "name only", "name\nnot a number\nff", "name\n12345678901234\nff", "n\n2 ff"):
        with pytest.raises(ValueError):
            metadata._raw_profile(bad)


def test_xmp_with_many_namespaces_is_written_in_linear_time():
    """Each new "ns" prefix restarted its search at ns1: 12,000 namespaces took ~9 s, now ~0.15 s a format."""
    body = "".join(f'<rdf:Description><v xmlns="http://example.org/{i}/">x</v></rdf:Description>' for i in range(12_000))
    packet = hostile._xmp(body).encode()
    (out, report), seconds = _timed(encode, np.zeros((4, 4, 3), np.uint8), "png", Metadata(xmp=packet), PROV)
    assert seconds < STEP_SECONDS and "xmp" in json.loads(report)["kept"]
    assert b'xmlns:ns11999="http://example.org/11999/"' in out or b"ns12000=" in out


@pytest.mark.parametrize("name", ["xmp_utf16be_entities.png", "xmp_utf16be_entities.jpg", "xmp_utf8_entities.jpg"])
def test_xmp_dtd_is_refused_whatever_the_encoding(corpus, name):
    dec = decode(corpus[name][0])
    (out, report), seconds = _timed(encode, dec.rgb, "png", dec.meta, PROV)
    report = json.loads(report)
    assert seconds < 1.0 and "xmp" not in report["kept"]
    assert "a DTD in an XMP packet" in report["dropped"]["xmp"] and "fresh packet" in report["dropped"]["xmp"]
    assert DIGITAL_SOURCE_TYPE.encode() in out and b"a" * 1000 not in out  # provenance; nothing expanded


def test_exif_aliases_are_capped_by_their_bytes_as_parsed(corpus):
    """1000 entries sharing one 50 kB value, in a 64 kB JPEG APP1: 50 MB as parsed, written as at most the cap."""
    dec = decode(corpus["amplification_exif_64k.jpg"][0])
    out, report = encode(dec.rgb, "png", dec.meta, PROV)
    assert len(out) < metadata.MAX_EXIF_TOTAL + (256 << 10)
    assert "past the total of" in json.loads(report)["dropped"]["exif.IFD0"]
    with Image.open(io.BytesIO(out)) as im:
        assert im.getexif()[0xC000][:4] == bytes(range(4))  # what fits the cap is kept


def test_one_value_over_the_per_value_cap_is_dropped():
    n = metadata.MAX_EXIF_VALUE + 1
    block = hostile.exif_block([(0x010E, 2, 4, b"abc\0"), (0xC000, 7, n, struct.pack("<I", 38))], blob=bytes(n))
    dec = decode(hostile.png_with(hostile.png_chunk(b"eXIf", block)))
    assert any(g == "exif.IFD0" and "over the per-value cap" in r for g, r in dec.meta.notes), dec.meta.notes
    assert len(dec.meta.exif) < 4096  # the block travels as what the caps kept, not 1 MB
    out, _ = encode(dec.rgb, "tiff", dec.meta, PROV)
    with Image.open(io.BytesIO(out)) as im:
        assert im.tag_v2[0x010E] == "abc" and 0xC000 not in im.tag_v2


def test_an_xmp_packet_of_tiny_elements_is_capped_by_its_tags():
    """2 MB of <a/> parsed to 150 MB in 4 s; now it is dropped after one scan (the tag cap)."""
    packet = hostile._xmp("<rdf:Description>" + "<a/>" * 400_000 + "</rdf:Description>").encode()
    tracemalloc.start()
    try:
        (out, report), seconds = _timed(encode, np.zeros((4, 4, 3), np.uint8), "png", Metadata(xmp=packet), PROV)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "tags exceed the XMP cap" in json.loads(report)["dropped"]["xmp"] and DIGITAL_SOURCE_TYPE.encode() in out
    assert seconds < 1.0 and peak < 8 * len(packet), (seconds, peak)


def test_group_caps_on_xmp_and_iptc():
    rgb = np.zeros((4, 4, 3), np.uint8)
    big_xmp = hostile._xmp("<!--" + "x" * metadata.MAX_XMP_BYTES + "-->").encode()
    _, report = encode(rgb, "tiff", Metadata(xmp=big_xmp, iptc=b"\x1c\x02\x05\x00\x01a" * 50_000), PROV)
    report = json.loads(report)
    assert "exceeds the XMP cap" in report["dropped"]["xmp"] and "exceed the IPTC cap" in report["dropped"]["iptc"]


def test_typed_tags_are_normalised_and_every_output_reads_back(corpus):
    dec = decode(corpus["malformed_xres_short.jpg"][0])
    assert dec.meta.dpi == (300.0, 300.0)  # SHORT 300 -> RATIONAL 300/1: lossless, kept, and noted as a change
    # (the JPEG with an ASCII "3" is unreadable to Pillow itself: an error row; from a PNG, the old code copied
    # it into a JPEG output that neither Pillow nor raycolor could then open)
    for name in ("malformed_xres_ascii.png", "malformed_xres_long1000.jpg", "malformed_xres_ascii.tif",
                 "malformed_xres_count0.jpg", "malformed_xres_long1000.webp"):
        dec = decode(corpus[name][0])
        out, report = encode(dec.rgb, "jpeg", dec.meta, PROV)
        with Image.open(io.BytesIO(out)) as im:
            im.load()
            ifd0 = im.getexif()
            assert 282 not in ifd0 or isinstance(float(ifd0[282]), float)
        assert "exif.XResolution" in json.loads(report)["dropped"], name


def test_a_text_chunk_over_pillows_limit_costs_the_chunk_not_the_image(corpus):
    for name, group in (("bomb_png_ztxt.png", "png.zTXt"), ("bomb_png_itxt_xmp.png", "xmp")):
        dec = decode(corpus[name][0])
        assert any(g == group and "inflates past" in r for g, r in dec.meta.notes), (name, dec.meta.notes)


def test_a_large_genuine_icc_profile_is_kept(corpus):
    data = corpus["bomb_png_iccp_2mb.png"][0]
    _, icc, notes = images._png_within_caps(data)
    assert icc is not None and len(icc) > 2 << 20 and notes == ()
    dec = decode(data)
    assert not [n for n in dec.meta.notes if n[0] == "icc"]
    with pytest.raises(ValueError):  # what Pillow alone does with it (its limit is left as it is)
        with Image.open(io.BytesIO(data)) as im:
            im.load()


@pytest.mark.parametrize("bounded", [False, True])
def test_tiff48_deflate_bomb_is_refused_before_tifffile_inflates_it(corpus, monkeypatch, bounded):
    """Without imagecodecs tifffile inflates a strip with zlib.decompress, unbounded: the strips are checked first
    (bounded=False, forced here whatever is installed). With it, libdeflate refuses the bomb itself."""
    if bounded and not images._tifffile_inflates_bounded():
        pytest.skip("tifffile's deflate decoder here is its unbounded zlib fallback (no imagecodecs)")
    monkeypatch.setattr(images, "_tifffile_inflates_bounded", lambda: bounded)
    data = corpus["bomb_tiff48_deflate.tif"][0]
    tracemalloc.start()
    try:
        dec = decode(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert dec.rgb.dtype == np.uint8 and peak < CAPS_BYTES, peak  # the stream inflates to 98 MB
    assert any(g == "depth" and "8 bits" in r for g, r in dec.meta.notes), dec.meta.notes
    if not bounded:
        assert any("deflate bomb" in r for _, r in dec.meta.notes), dec.meta.notes


def test_genuine_48bit_deflate_tiff_still_decodes_at_16_bits():
    data = hostile.tiff_rgb48()
    dec = decode(data)
    w, h = hostile.SIZE
    assert dec.rgb.dtype == np.uint16 and dec.rgb.shape == (h, w, 3) and dec.meta.notes == ()
    assert np.array_equal(dec.rgb, hostile._pixels(3).astype(np.uint16) * 257)


def test_rewritten_exif_always_parses_again(corpus):
    """The guard in encode: what is written is read back with raycolor's own parser, without a problem."""
    for name, (data, _) in corpus.items():
        if hostile.EXPECTED[name] != "ok":
            continue
        dec = decode(data)
        parts, _ = metadata.prepare(dec.meta, PROV, True, (8, 8))
        again = metadata._parse_exif(parts.exif_bytes())
        assert again.problems == [], (name, again.problems)


def test_a_png_chunk_walk_leaves_an_ordinary_png_alone():
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, "PNG", pnginfo=_text("Comment", "hello"))
    png = buf.getvalue()
    assert images._png_within_caps(png) == (png, None, ())
    stream = zlib.compress(b"x" * 10)
    zt = hostile.png_with(hostile.png_chunk(b"zTXt", b"k\0\0" + stream), png=png)
    assert images._png_within_caps(zt)[0] is zt


def _text(key: str, value: str):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text(key, value)
    return info
