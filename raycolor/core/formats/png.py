"""PNG: pHYs, iCCP, eXIf, iTXt XMP, zTXt "Raw profile type iptc" as exiftool writes it; 8 and 16 bits (48-bit
RGB by a minimal writer here: Pillow has no 16-bit RGB mode, and imageio/scikit-image write PNG through it)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np

from raycolor.core.formats.base import EncodeOptions, Format
from raycolor.core.metadata import Prepared, Report, srgb_icc

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write(arr: np.ndarray, prepared: Prepared, report: Report, options: EncodeOptions) -> bytes:
    if arr.dtype == np.uint8:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG", compress_level=options.png_level)
        png = buf.getbuffer()  # no copy: the file is copied once, below
        pieces = [png[:33], png[33:]]
    else:
        pieces = _png16(arr, options.png_level)
    # every metadata chunk may precede IDAT, so they all go right after IHDR (8 + 25 bytes); one join: a 100 MP
    # master's file is copied once, not once per step
    return b"".join([pieces[0], *_meta_chunks(prepared), *pieces[1:]])


def _png16(arr: np.ndarray, level: int) -> list[bytes]:
    """A 48-bit RGB PNG, as pieces to join (signature + IHDR first): IHDR, IDAT with the Up filter, IEND."""
    h, w = arr.shape[:2]
    # in row strips (a 100 MP master would need ~24 B/pixel of copies at once); zlib's stream does not depend
    # on how its input is cut, so the file is the same byte for byte
    z = zlib.compressobj(level)
    idat = []
    above = np.zeros((1, w * 6), np.uint8)  # the row before the first: Up filters row 0 against zeros
    step = max(1, (1 << 22) // max(1, w * 6))
    for y0 in range(0, h, step):
        rows = arr[y0 : y0 + step].astype(">u2").reshape(-1, w * 6 // 2).view(np.uint8)
        raw = np.empty((rows.shape[0], w * 6 + 1), np.uint8)
        raw[:, 0] = 2  # filter type 2 (Up); uint8 arithmetic wraps modulo 256 as PNG wants
        np.subtract(rows, np.concatenate([above, rows[:-1]]), out=raw[:, 1:])
        above = rows[-1:]
        idat.append(z.compress(raw.tobytes()))
    idat.append(z.flush())
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    crc = zlib.crc32(b"IDAT")
    for piece in idat:
        crc = zlib.crc32(piece, crc)
    return [SIGNATURE + chunk(b"IHDR", ihdr), struct.pack(">I", sum(map(len, idat))) + b"IDAT", *idat,
            struct.pack(">I", crc), chunk(b"IEND", b"")]


def _meta_chunks(prepared: Prepared) -> list[bytes]:
    chunks = [chunk(b"iCCP", b"sRGB\0\0" + zlib.compress(srgb_icc()))]
    if prepared.dpi is not None:
        ppm = [max(1, round(v / 0.0254)) for v in prepared.dpi]
        chunks.append(chunk(b"pHYs", struct.pack(">IIB", ppm[0], ppm[1], 1)))
    chunks.append(chunk(b"eXIf", prepared.exif_bytes()))
    chunks.append(chunk(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + prepared.xmp))
    if prepared.iptc is not None:  # exiftool's form: hex of a Photoshop 8BIM block holding the IIM
        chunks.append(chunk(b"zTXt", b"Raw profile type iptc\0\0" + zlib.compress(prepared.iptc_raw_profile())))
    return chunks


FORMAT = Format(
    name="png", suffixes=(".png",), magic=(SIGNATURE,), pillow=("PNG",), write=write, bits=(8, 16),
    carries=frozenset({"exif", "iptc", "xmp", "icc", "dpi"}), max_side=2**31 - 1, mime="image/png",
    summary="PNG, lossless, 8 or 16 bits",
)
