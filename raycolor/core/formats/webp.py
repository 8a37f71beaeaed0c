"""WebP: EXIF, ICC and XMP chunks; no IPTC-IIM container (its XMP keeps the IPTC Core fields it has); 8 bits."""

from __future__ import annotations

import io

from raycolor.core.formats.base import EncodeOptions, Format
from raycolor.core.metadata import Prepared, Report, srgb_icc

MAX_SIDE = 16383  # WebP's own limit


def write(arr, prepared: Prepared, report: Report, options: EncodeOptions) -> bytes:
    from PIL import Image

    if prepared.iptc is not None:
        report.drop("iptc", "WebP has no IPTC-IIM container (its XMP keeps the IPTC Core fields it has)")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="WEBP", quality=options.jpeg_quality, exif=prepared.exif_bytes(),
                              icc_profile=srgb_icc(), xmp=prepared.xmp)
    return buf.getvalue()


FORMAT = Format(
    name="webp", suffixes=(".webp",), magic=(b"RIFF",), pillow=("WEBP",), write=write, bits=(8,),
    carries=frozenset({"exif", "xmp", "icc"}), max_side=MAX_SIDE, mime="image/webp",
    sniff=lambda head: head[:4] == b"RIFF" and head[8:12] == b"WEBP",
    summary="WebP, lossy at --jpeg-quality, 8 bits",
)
