"""JPEG: APP0 JFIF density, APP1 Exif, APP1 XMP, APP2 ICC, APP13 Photoshop 8BIM 0x0404 IPTC; 8 bits.

The pixels are encoded here, the one JPEG encoder (4:2:0, no Huffman optimisation); the
metadata goes in as :func:`embed` inserts it into a JPEG encoded elsewhere (nvJPEG on a GPU), so both paths
write the same file."""

from __future__ import annotations

import io
import struct

from raycolor.core.formats.base import EncodeOptions, Format
from raycolor.core.metadata import Prepared, Report, srgb_icc

# a segment holds at most 65533 bytes after its length field
_JPEG_MAX = 65533
_XMP_ID = b"http://ns.adobe.com/xap/1.0/\0"


def write(arr, prepared: Prepared, report: Report, options: EncodeOptions) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=options.jpeg_quality, subsampling="4:2:0", optimize=False)
    return embed(buf.getvalue(), prepared, report)


def embed(jpeg: bytes, prepared: Prepared, report: Report) -> bytes:
    """The prepared metadata in a JPEG: segments right after SOI; an existing JFIF APP0 gets the density, existing
    APP1 Exif/XMP, APP2 ICC and APP13 Photoshop segments are replaced, everything else is copied unchanged."""
    if jpeg[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG (no SOI marker)")
    jfif, others, pos = None, [], 2
    while pos + 4 <= len(jpeg) and jpeg[pos] == 0xFF and (0xE0 <= jpeg[pos + 1] <= 0xEF or jpeg[pos + 1] == 0xFE):
        marker, (n,) = jpeg[pos + 1], struct.unpack(">H", jpeg[pos + 2 : pos + 4])
        seg, body = jpeg[pos : pos + 2 + n], jpeg[pos + 4 : pos + 2 + n]
        pos += 2 + n
        if marker == 0xE0 and body.startswith(b"JFIF\0") and jfif is None:
            jfif = seg
        elif not _replaced_segment(marker, body):
            others.append(seg)
    return b"".join([b"\xff\xd8", _jfif(jfif, prepared.dpi), *_segments(prepared, report), *others, jpeg[pos:]])


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


def _replaced_segment(marker: int, body: bytes) -> bool:
    return (
        (marker == 0xE1 and (body.startswith(b"Exif\0") or body.startswith(_XMP_ID)))
        or (marker == 0xE2 and body.startswith(b"ICC_PROFILE\0"))
        or (marker == 0xED and body.startswith(b"Photoshop 3.0\0"))
    )


def _jfif(seg: bytes | None, dpi) -> bytes:
    units, x, y = (1, *(min(65535, max(1, round(v))) for v in dpi)) if dpi else (0, 1, 1)
    if seg is None or len(seg) < 18:
        return _segment(0xE0, b"JFIF\0\x01\x01" + struct.pack(">BHH", units, x, y) + b"\0\0")
    return seg[:11] + struct.pack(">BHH", units, x, y) + seg[16:]


def _segments(prepared: Prepared, report: Report) -> list[bytes]:
    segs = []
    exif = b"Exif\0\0" + prepared.exif_bytes()
    if len(exif) > _JPEG_MAX:
        report.drop("exif", f"{len(exif)} bytes exceed a JPEG APP1 segment ({_JPEG_MAX}); only Software written")
        exif = b"Exif\0\0" + prepared.software_exif_bytes()
    segs.append(_segment(0xE1, exif))
    xmp = prepared.xmp
    if len(_XMP_ID) + len(xmp) > _JPEG_MAX:  # extended XMP would be possible; a drop is honest and simple
        report.drop("xmp", f"packet of {len(xmp)} bytes exceeds a JPEG APP1 segment ({_JPEG_MAX - len(_XMP_ID)}); "
                    "a fresh packet carries the provenance")
        xmp = prepared.fresh_xmp()
    segs.append(_segment(0xE1, _XMP_ID + xmp))
    segs.append(_segment(0xE2, b"ICC_PROFILE\0\x01\x01" + srgb_icc()))  # 588 bytes: one APP2 chunk
    if prepared.iptc is not None:
        payload = b"Photoshop 3.0\0" + prepared.iptc_irb()
        if len(payload) > _JPEG_MAX:
            report.drop("iptc", f"{len(prepared.iptc)} bytes exceed a JPEG APP13 segment ({_JPEG_MAX})")
        else:
            segs.append(_segment(0xED, payload))
    return segs


FORMAT = Format(
    name="jpeg", suffixes=(".jpg", ".jpeg"), magic=(b"\xff\xd8\xff",), pillow=("JPEG",), write=write, bits=(8,),
    carries=frozenset({"exif", "iptc", "xmp", "icc", "dpi"}), aliases=("jpg",), max_side=65535, mime="image/jpeg",
    summary="JPEG, 8 bits, 4:2:0 (access copies)",
)
