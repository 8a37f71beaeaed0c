"""A corpus of hostile image files, by class: each is small, and each once crashed, stalled or amplified raycolor.

Pure functions returning bytes (no Ray, no files, nothing at import): :func:`corpus` maps a file name (its
suffix says the format) to ``(bytes, class)``, and :data:`EXPECTED` says what each must give when colorized:
``"ok"`` (the image decodes and is written; the metadata in question is dropped or fixed, with a reason in the
output's report, the group named by :data:`NOTES`) or a :class:`raycolor.core.images.DecodeError` reason.

Classes: ``crash`` (an exception escaped encoding), ``quadratic`` (work worse than linear in a small input),
``amplification`` (a small input, a large output or a large peak), ``bomb`` (a compressed stream that inflates
past what it holds), ``malformed_tag`` (a typed EXIF tag of the wrong type, copied through), ``xmp`` (a DTD
or entity expansion in an XMP packet).
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

SIZE = (48, 32)  # (W, H) of every picture here: the point is the metadata, not the pixels
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RAW_PROFILE_SPACES = 1_000_000  # the acceptance's "1 MB of spaces"
XMP_NAMESPACES = 12_000  # ~0.9 MB inflated: under the 1 MiB text cap, so the packet is parsed and written

# file name -> what colorizing it must give ("ok", or a DecodeError reason)
EXPECTED: dict[str, str] = {}
# file name -> the report group (or its prefix, ending in ".") that must say what was dropped or changed
NOTES: dict[str, str] = {}


def _pixels(seed: int = 0) -> np.ndarray:
    w, h = SIZE
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png(**kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_pixels()).save(buf, format="PNG", **kw)
    return buf.getvalue()


def _jpeg(**kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_pixels()).save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with(*chunks: bytes, png: bytes | None = None) -> bytes:
    """A PNG with ``chunks`` right after IHDR (8 + 25 bytes)."""
    png = png if png is not None else _png()
    return png[:33] + b"".join(chunks) + png[33:]


def jpeg_with(marker: int, payload: bytes, jpeg: bytes | None = None) -> bytes:
    """A JPEG with one more segment right after SOI."""
    jpeg = jpeg if jpeg is not None else _jpeg()
    return jpeg[:2] + bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def exif_block(entries: list[tuple[int, int, int, bytes]], *, bo: str = "<", blob: bytes = b"",
               sub: dict[int, list[tuple[int, int, int, bytes]]] | None = None) -> bytes:
    """A TIFF-header EXIF block: IFD0 with ``entries`` (tag, type, count, 4 value/offset bytes), then ``blob``
    (what offsets may point at: it starts at ``exif_blob_offset(len(entries))``), then sub-IFDs (tag -> entries,
    their pointers added to IFD0)."""
    sub = sub or {}
    n0 = len(entries) + len(sub)
    pos = 8 + 2 + 12 * n0 + 4 + len(blob)
    tails, pointers = [], []
    for tag, rows in sub.items():
        pointers.append((tag, 4, 1, struct.pack(bo + "I", pos)))
        t = struct.pack(bo + "H", len(rows)) + b"".join(struct.pack(bo + "HHI", *r[:3]) + r[3] for r in rows)
        t += struct.pack(bo + "I", 0)
        tails.append(t)
        pos += len(t)
    rows0 = sorted(entries + pointers)
    head = (b"II*\0" if bo == "<" else b"MM\0*") + struct.pack(bo + "I", 8)
    table = struct.pack(bo + "H", n0) + b"".join(struct.pack(bo + "HHI", *r[:3]) + r[3] for r in rows0)
    return head + table + struct.pack(bo + "I", 0) + blob + b"".join(tails)


def exif_blob_offset(n_entries: int) -> int:
    return 8 + 2 + 12 * n_entries + 4


def _u32(v: int, bo: str = "<") -> bytes:
    return struct.pack(bo + "I", v)


def tiff_rgb48_deflate(stream: bytes, w: int, h: int, *, predictor: int = 1) -> bytes:
    """A one-strip 48-bit RGB TIFF whose strip is ``stream`` (deflate), whatever that inflates to."""
    bo = "<"
    entries = [
        (256, 4, 1, _u32(w)), (257, 4, 1, _u32(h)), (258, 3, 3, None), (259, 3, 1, struct.pack("<HH", 8, 0)),
        (262, 3, 1, struct.pack("<HH", 2, 0)), (273, 4, 1, None), (277, 3, 1, struct.pack("<HH", 3, 0)),
        (278, 4, 1, _u32(h)), (279, 4, 1, _u32(len(stream))), (284, 3, 1, struct.pack("<HH", 1, 0)),
        (317, 3, 1, struct.pack("<HH", predictor, 0)),
    ]
    ifd = 8
    bits_at = ifd + 2 + 12 * len(entries) + 4
    strip_at = bits_at + 6 + 2
    rows = []
    for tag, typ, count, value in entries:
        if tag == 258:
            value = _u32(bits_at)
        elif tag == 273:
            value = _u32(strip_at)
        rows.append(struct.pack(bo + "HHI", tag, typ, count) + value)
    return (b"II*\0" + _u32(ifd) + struct.pack("<H", len(entries)) + b"".join(rows) + _u32(0)
            + struct.pack("<3H", 16, 16, 16) + b"\0\0" + stream)


def tiff_rgb48(w: int = SIZE[0], h: int = SIZE[1]) -> bytes:
    """A genuine 48-bit RGB deflate TIFF (no predictor)."""
    a = (_pixels(3).astype(np.uint16) * 257)[:h, :w]
    return tiff_rgb48_deflate(zlib.compress(a.astype("<u2").tobytes()), w, h)


def _xmp(body: str, *, head: str = "") -> str:
    return (head + '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            + body + "</rdf:RDF></x:xmpmeta>")


def _itxt_xmp(packet: bytes, *, compressed: bool = False) -> bytes:
    text = zlib.compress(packet) if compressed else packet
    return png_chunk(b"iTXt", b"XML:com.adobe.xmp\0" + bytes((int(compressed), 0)) + b"\0\0" + text)


def _big_icc(extra: int) -> bytes:
    """A genuine ICC profile (sRGB's) grown by a private tag of ``extra`` bytes: large real profiles exist."""
    from raycolor.core.metadata import srgb_icc

    icc = srgb_icc()
    (n,) = struct.unpack(">I", icc[128:132])
    table_end = 132 + 12 * n
    shift = 12  # one more tag entry: every offset moves by it
    rows = []
    for i in range(n):
        sig, off, size = struct.unpack(">4sII", icc[132 + 12 * i : 144 + 12 * i])
        rows.append(struct.pack(">4sII", sig, off + shift, size))
    body = icc[table_end:]
    body += b"\0" * (-len(body) % 4)
    priv_at = table_end + shift + len(body)
    rows.append(struct.pack(">4sII", b"rcPV", priv_at, extra))
    out = icc[:128] + struct.pack(">I", n + 1) + b"".join(rows) + body + b"\0" * extra
    return struct.pack(">I", len(out)) + out[4:]


# --------------------------------------------------------------------------- the classes


def crash() -> dict[str, bytes]:
    # the reproduction: pHYs in pixels per metre, 35,000,001 is ~889k dpi; its RATIONAL (a fraction with
    # a denominator up to 65536) overflowed 32 bits
    phys = struct.pack(">IIB", 35_000_001, 35_000_001, 1)
    # the same by way of EXIF, in a JPEG without JFIF density: 4294967291/65539 pixels per cm is ~166k dpi
    res = exif_block([(282, 5, 1, _u32(exif_blob_offset(3))), (283, 5, 1, _u32(exif_blob_offset(3) + 8)),
                      (296, 3, 1, struct.pack("<HH", 3, 0))], blob=struct.pack("<4I", 4294967291, 65539, 4294967291, 65539))
    return {
        "crash_phys_889k_dpi.png": png_with(png_chunk(b"pHYs", phys)),
        "crash_exif_166k_dpi.jpg": jpeg_with(0xE1, b"Exif\0\0" + res),
        "crash_exif_166k_dpi.webp": _webp_with_exif(res),
    }


def quadratic() -> dict[str, bytes]:
    spaces = png_chunk(b"tEXt", b"Raw profile type iptc\0" + b" " * RAW_PROFILE_SPACES)
    many_ns = "".join(f'<rdf:Description><v xmlns="http://example.org/{i}/">x</v></rdf:Description>'
                      for i in range(XMP_NAMESPACES))
    # 2.1 MB of "Exif\0\0" headers before the block: one slice per header was quadratic (2 s at 1 MB)
    headers = b"Exif\0\0" * 350_000 + exif_block([(0x010E, 2, 4, b"abc\0")])
    return {
        "quadratic_raw_profile_spaces.png": png_with(spaces),
        "quadratic_xmp_namespaces.png": png_with(_itxt_xmp(_xmp(many_ns).encode(), compressed=True)),
        "quadratic_exif_headers.png": png_with(png_chunk(b"eXIf", headers)),
    }


def aliased_exif(n: int, value: int, *, bo: str = "<") -> bytes:
    """An EXIF block whose ``n`` IFD0 entries (UNDEFINED, distinct private tags) all point at one ``value``-byte
    blob: ~``value`` bytes that parse as ``n * value``."""
    at = exif_blob_offset(n)
    entries = [(0xC000 + i, 7, value, _u32(at, bo)) for i in range(n)]
    return exif_block(entries, bo=bo, blob=bytes(range(256)) * (value // 256) + b"\0" * (value % 256))


def amplification() -> dict[str, bytes]:
    # within one JPEG APP1 segment (64 kB): 1000 entries of a 50 kB value, 50 MB as parsed
    jpeg_block = aliased_exif(1000, 50_000)
    assert len(jpeg_block) < 65_000
    return {
        "amplification_exif_64k.jpg": jpeg_with(0xE1, b"Exif\0\0" + jpeg_block),
        "amplification_exif_aliases.png": png_with(png_chunk(b"eXIf", aliased_exif(4096, 65_000))),
        "amplification_exif_aliases.webp": _webp_with_exif(aliased_exif(2000, 60_000)),
        "amplification_tiff_aliases.tif": tiff_with_aliases(2000, 60_000),
    }


def _webp_with_exif(exif: bytes) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_pixels()).save(buf, format="WEBP", quality=80, exif=exif)
    return buf.getvalue()


def bomb() -> dict[str, bytes]:
    w, h = 128, 128
    per = w * h * 6  # the one strip's pixels
    # a deflate stream that inflates 1000x past its strip: 98 MB of zeros for a 98 kB strip, ~95 kB compressed
    stream = zlib.compress(bytes(per * 1000), 9)
    text = zlib.compress(b"a" * (2 << 20), 9)
    return {
        "bomb_tiff48_deflate.tif": tiff_rgb48_deflate(stream, w, h),
        "bomb_png_iccp_2mb.png": png_with(png_chunk(b"iCCP", b"big\0\0" + zlib.compress(_big_icc(2 << 20), 9))),
        "bomb_png_iccp_over_cap.png": png_with(png_chunk(b"iCCP", b"huge\0\0" + zlib.compress(bytes(17 << 20), 9))),
        "bomb_png_ztxt.png": png_with(png_chunk(b"zTXt", b"Comment\0\0" + text)),
        "bomb_png_itxt_xmp.png": png_with(_itxt_xmp(_xmp("<!--" + "x" * (2 << 20) + "-->").encode(), compressed=True)),
    }


def _resolution_entries(typ: int, count: int, value: bytes) -> list[tuple[int, int, int, bytes]]:
    return [(282, typ, count, value), (283, typ, count, value), (296, 3, 1, struct.pack("<HH", 2, 0))]


def malformed_tag() -> dict[str, bytes]:
    # Pillow's JPEG reader takes dpi from EXIF when JFIF has none, as x[0] / x[1]: a one-character string or an
    # empty tuple raises IndexError there, which it does not catch, so the whole file fails to open
    ascii_res = exif_block(_resolution_entries(2, 2, b"3\0\0\0"))
    empty_res = exif_block(_resolution_entries(5, 0, bytes(4)))
    long_res = exif_block(_resolution_entries(4, 1000, _u32(exif_blob_offset(3))), blob=bytes(4000))
    short_res = exif_block(_resolution_entries(3, 1, struct.pack("<HH", 300, 0)))  # lossless: 300/1
    bad_pointer = exif_block([(0x010E, 2, 4, b"abc\0"), (0x8769, 2, 4, b"\x08\0\0\0")])
    return {
        "malformed_xres_ascii.jpg": jpeg_with(0xE1, b"Exif\0\0" + ascii_res),
        "malformed_xres_long1000.jpg": jpeg_with(0xE1, b"Exif\0\0" + long_res),
        "malformed_xres_short.jpg": jpeg_with(0xE1, b"Exif\0\0" + short_res),
        "malformed_xres_count0.jpg": jpeg_with(0xE1, b"Exif\0\0" + empty_res),
        "malformed_xres_ascii.png": png_with(png_chunk(b"eXIf", ascii_res)),
        "malformed_xres_long1000.webp": _webp_with_exif(long_res),
        "malformed_exif_pointer.jpg": jpeg_with(0xE1, b"Exif\0\0" + bad_pointer),
        "malformed_xres_ascii.tif": _tiff_with_tags(ascii_res),
    }


def _tiff_with_tags(exif: bytes) -> bytes:
    """An 8-bit RGB TIFF (Pillow's) whose IFD0 also holds the IFD0 tags of ``exif`` (as raycolor reads them).

    Written by raycolor's own TIFF writer from a parsed block, so the malformed types reach the file as they are.
    """
    from raycolor.core import metadata as m

    raw = {}  # the entries as written, not as raycolor's parser would normalise them
    n = struct.unpack("<H", exif[8:10])[0]
    for i in range(n):
        tag, typ, count, value = struct.unpack("<HHI4s", exif[10 + 12 * i : 22 + 12 * i])
        size = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 7: 1}[typ] * count
        data = value[:size] if size <= 4 else exif[struct.unpack("<I", value)[0] :][:size]
        raw[tag] = m._Entry(typ, count, data)
    prov = m.Provenance("hostile", "-")
    from raycolor.core import formats

    parts = m.Prepared(m._Exif("<", m._Dir(raw, {}), False, [], {}), m._fresh_xmp(prov), None, None, prov)
    return formats.REGISTRY["tiff"].write(_pixels(), parts, m.Report(m.Metadata(), True), formats.EncodeOptions(png_level=6))


def xmp() -> dict[str, bytes]:
    # internal entities: 100 characters, 100 of them, 400 of those: ~4 M characters from a ~7 kB packet
    dtd = ('<?xml version="1.0"?><!DOCTYPE x:xmpmeta [<!ENTITY a "' + "a" * 100 + '">'
           '<!ENTITY b "' + "&a;" * 100 + '">]>')
    body = ('<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:description>'
            + "&b;" * 400 + "</dc:description></rdf:Description>")
    packet = _xmp(body, head=dtd)
    utf16 = b"\xfe\xff" + packet.replace('<?xml version="1.0"?>', '<?xml version="1.0" encoding="UTF-16"?>').encode("utf-16-be")
    xmp_id = b"http://ns.adobe.com/xap/1.0/\0"
    return {
        "xmp_utf16be_entities.png": png_with(_itxt_xmp(utf16)),
        "xmp_utf16be_entities.jpg": jpeg_with(0xE1, xmp_id + utf16),
        "xmp_utf8_entities.jpg": jpeg_with(0xE1, xmp_id + packet.encode()),
    }


def jpeg2000() -> dict[str, bytes]:
    """JPEG 2000 masters gone wrong: a broken XMP uuid box, a colr ICC profile LittleCMS refuses, a truncated
    codestream. The first two keep their pixels (the metadata is dropped with a note); the third is truncated."""
    import struct as st

    from raycolor.core import jp2

    good = jp2.encode(_pixels(9), xmp=b"<x:xmpmeta xmlns:x='adobe:ns:meta/'/>")
    at = good.index(jp2.XMP_UUID)  # the XMP box: its payload made into something that is not XML
    n = st.unpack(">I", good[at - 8 : at - 4])[0]
    broken_xmp = good[: at + 16] + b"<x:xmpmeta><unclosed" + b" " * (n - 8 - 16 - 20) + good[at - 8 + n :]
    colr = good.index(b"colr")  # enumerated sRGB -> method 2, a restricted ICC profile of garbage
    n = st.unpack(">I", good[colr - 4 : colr])[0]
    icc = b"\0\0\0\x80garbage-not-an-icc-profile" + bytes(100)
    box = st.pack(">I", 8 + 3 + len(icc)) + b"colr" + bytes((2, 0, 0)) + icc
    jp2h = good.index(b"jp2h")
    hn = st.unpack(">I", good[jp2h - 4 : jp2h])[0]
    inner = good[jp2h + 4 : colr - 4] + box + good[colr - 4 + n : jp2h - 4 + hn]
    bad_icc = good[: jp2h - 4] + st.pack(">I", 8 + len(inner)) + b"jp2h" + inner + good[jp2h - 4 + hn :]
    return {
        "jp2_broken_xmp_box.jp2": broken_xmp,
        "jp2_garbage_icc.jp2": bad_icc,
        "jp2_truncated.jp2": good[: len(good) * 2 // 3],
    }


_CLASSES = {
    "jpeg2000": jpeg2000,
    "crash": crash,
    "quadratic": quadratic,
    "amplification": amplification,
    "bomb": bomb,
    "malformed_tag": malformed_tag,
    "xmp": xmp,
}

EXPECTED.update(
    {
        "crash_phys_889k_dpi.png": "ok",
        "crash_exif_166k_dpi.jpg": "ok",
        "crash_exif_166k_dpi.webp": "ok",
        "quadratic_raw_profile_spaces.png": "ok",
        "quadratic_xmp_namespaces.png": "ok",
        "quadratic_exif_headers.png": "ok",
        "amplification_exif_64k.jpg": "ok",
        "amplification_exif_aliases.png": "ok",
        "amplification_exif_aliases.webp": "ok",
        "amplification_tiff_aliases.tif": "ok",
        "bomb_tiff48_deflate.tif": "ok",
        "bomb_png_iccp_2mb.png": "ok",
        "bomb_png_iccp_over_cap.png": "ok",
        "bomb_png_ztxt.png": "ok",
        "bomb_png_itxt_xmp.png": "ok",
        "malformed_xres_ascii.jpg": "ok",  # Pillow cannot open it (IndexError in its dpi code): decoded without EXIF
        "malformed_xres_long1000.jpg": "ok",
        "malformed_xres_short.jpg": "ok",
        "malformed_xres_count0.jpg": "ok",
        "malformed_xres_ascii.png": "ok",
        "malformed_xres_long1000.webp": "ok",
        "malformed_exif_pointer.jpg": "ok",
        "malformed_xres_ascii.tif": "ok",
        "xmp_utf16be_entities.png": "ok",
        "xmp_utf16be_entities.jpg": "ok",
        "xmp_utf8_entities.jpg": "ok",
        "jp2_broken_xmp_box.jp2": "ok",
        "jp2_garbage_icc.jp2": "ok",
        "jp2_truncated.jp2": "truncated",
    }
)
NOTES.update(
    {
        "crash_phys_889k_dpi.png": "dpi",
        "crash_exif_166k_dpi.jpg": "dpi",
        "crash_exif_166k_dpi.webp": "dpi",
        "quadratic_raw_profile_spaces.png": "iptc",
        "amplification_exif_64k.jpg": "exif.",
        "amplification_exif_aliases.png": "exif.",
        "amplification_exif_aliases.webp": "exif.",
        "amplification_tiff_aliases.tif": "exif.",
        "bomb_tiff48_deflate.tif": "depth",
        "bomb_png_iccp_over_cap.png": "icc",
        "bomb_png_ztxt.png": "png.",
        "bomb_png_itxt_xmp.png": "xmp",
        "malformed_xres_ascii.jpg": "exif",  # the whole block: Pillow could not open the file with it
        "malformed_xres_long1000.jpg": "exif.",
        "malformed_xres_short.jpg": "exif.",
        "malformed_xres_count0.jpg": "exif.",
        "malformed_xres_ascii.png": "exif.",
        "malformed_xres_long1000.webp": "exif.",
        "malformed_exif_pointer.jpg": "exif.",
        "malformed_xres_ascii.tif": "exif.",
        "xmp_utf16be_entities.png": "xmp",
        "xmp_utf16be_entities.jpg": "xmp",
        "xmp_utf8_entities.jpg": "xmp",
        "jp2_broken_xmp_box.jp2": "xmp",
        "jp2_garbage_icc.jp2": "icc",
    }
)


def corpus() -> dict[str, tuple[bytes, str]]:
    """Every hostile file: name (its suffix is its format) -> (bytes, class). A few MB in all, well under a second."""
    out: dict[str, tuple[bytes, str]] = {}
    for cls, make in _CLASSES.items():
        for name, data in make().items():
            out[name] = (data, cls)
    assert set(out) == set(EXPECTED), set(out) ^ set(EXPECTED)
    return out


def tiff_with_aliases(n: int, value: int) -> bytes:
    """An 8-bit RGB TIFF (uncompressed) whose IFD0 also holds ``n`` private UNDEFINED tags all pointing at one
    ``value``-byte blob: what Pillow's own TIFF reader and raycolor's parser do with a TIFF's aliases."""
    w, h = SIZE
    pixels = _pixels(5).tobytes()
    blob_at = 8
    pix_at = blob_at + value
    ifd_at = pix_at + len(pixels)
    ifd_at += ifd_at & 1
    base = [
        (256, 4, 1, _u32(w)), (257, 4, 1, _u32(h)), (258, 3, 3, None), (259, 3, 1, struct.pack("<HH", 1, 0)),
        (262, 3, 1, struct.pack("<HH", 2, 0)), (273, 4, 1, _u32(pix_at)), (277, 3, 1, struct.pack("<HH", 3, 0)),
        (278, 4, 1, _u32(h)), (279, 4, 1, _u32(len(pixels))),
    ]
    rows = base + [(0xC000 + i, 7, value, _u32(blob_at)) for i in range(n)]
    bits_at = ifd_at + 2 + 12 * len(rows) + 4
    table = b"".join(struct.pack("<HHI", t, ty, c) + (v if v is not None else _u32(bits_at)) for t, ty, c, v in rows)
    out = b"II*\0" + _u32(ifd_at) + bytes(range(256)) * (value // 256) + bytes(value % 256) + pixels
    out += b"\0" * (ifd_at - len(out))
    return out + struct.pack("<H", len(rows)) + table + _u32(0) + struct.pack("<3H", 8, 8, 8)
