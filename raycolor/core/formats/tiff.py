"""TIFF: deflate + the horizontal predictor, 8 or 16 bits, one writer for both depths (Pillow's libtiff writer
cannot write the Exif/GPS sub-IFDs and has no 48-bit RGB mode): the EXIF IFD0 tags in the image's IFD0, Exif/GPS
sub-IFDs, XMP (700), IPTC (33723), ICC (34675). The FADGI master form."""

from __future__ import annotations

import struct
import zlib

import numpy as np

from raycolor.core.formats.base import EncodeOptions, Format
from raycolor.core.metadata import Prepared, Report


def write(arr: np.ndarray, prepared: Prepared, report: Report, options: EncodeOptions) -> bytes:
    bo = prepared.byte_order
    h, w = arr.shape[:2]
    bits = 16 if arr.dtype == np.uint16 else 8
    row_bytes = w * 3 * bits // 8
    rows_per_strip = min(h, max(1, (256 << 10) // row_bytes))

    def strip(y: int) -> bytes:  # one TIFF strip at a time: no full-size copy beside the output
        diff = arr[y : y + rows_per_strip].copy()
        diff[:, 1:] -= arr[y : y + rows_per_strip, :-1]  # predictor 2, per sample, modulo 2**bits
        return zlib.compress((diff.astype(f"{bo}u2") if bits == 16 else diff).tobytes(), options.png_level)

    strips = [strip(y) for y in range(0, h, rows_per_strip)]
    offsets, pos = [], 8
    for s in strips:
        offsets.append(pos)
        pos += len(s)
    ifd_offset = pos + (pos & 1)
    structure = {
        256: ("long", (w,)),
        257: ("long", (h,)),
        258: ("short", (bits, bits, bits)),
        259: ("short", (8,)),  # Adobe deflate
        262: ("short", (2,)),  # RGB
        273: ("long", tuple(offsets)),
        277: ("short", (3,)),
        278: ("long", (rows_per_strip,)),
        279: ("long", tuple(len(s) for s in strips)),
        284: ("short", (1,)),
        317: ("short", (2,)),
    }
    return b"".join(
        [
            (b"II*\0" if bo == "<" else b"MM\0*") + struct.pack(bo + "I", ifd_offset),
            *strips,
            b"\0" * (ifd_offset - pos),
            prepared.tiff_ifd(ifd_offset, structure),
        ]
    )


FORMAT = Format(
    name="tiff", suffixes=(".tif", ".tiff"), magic=(b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"), pillow=("TIFF",),
    write=write, bits=(8, 16), carries=frozenset({"exif", "iptc", "xmp", "icc", "dpi"}), aliases=("tif",),
    max_side=2**32 - 1, summary="TIFF, deflate, 8 or 16 bits, every tag carried (the FADGI master form)",
)
