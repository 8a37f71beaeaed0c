"""TIFF: deflate + the horizontal predictor, 8 or 16 bits, one writer for both depths (Pillow's libtiff writer
cannot write the Exif/GPS sub-IFDs and has no 48-bit RGB mode): the EXIF IFD0 tags in the image's IFD0, Exif/GPS
sub-IFDs, XMP (700), IPTC (33723), ICC (34675). The FADGI master form.

With ``EncodeOptions.tiff_pyramid`` the same TIFF is tiled (512 px tiles) and holds its reduced-resolution levels
as SubIFDs of IFD0 (tag 330, each level NewSubfileType 1), each half the one before (2x2 area average, rounded),
down to one whose long side is at most 256 px: the pyramidal form libvips (``tiffsave --tile --pyramid --subifd``)
writes and IIIF image servers (Cantaloupe, IIPImage) serve tile by tile. IFD0 carries the metadata; a level only
its structure and resolution. tifffile's writer makes such files too, but "ExifIFD and GPSIFD tags are not
supported" (its docs), so the carried EXIF would be lost: the file is written here, IFD0 by
:meth:`Prepared.tiff_ifd` as for strips. Memory: tiles are compressed one at a time into one growing buffer whose
bytes are returned without a copy; a level is built in bands from the one before (a quarter of its pixels), so
beside the input a pyramid holds its output and about a third of the input's size."""

from __future__ import annotations

import io
import struct
import zlib
from fractions import Fraction

import numpy as np

from raycolor.core.formats.base import CannotHold, EncodeOptions, Format
from raycolor.core.metadata import Prepared, Report


def write(arr: np.ndarray, prepared: Prepared, report: Report, options: EncodeOptions) -> bytes:
    if options.tiff_pyramid:
        return pyramid(arr, prepared, options)
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


TILE = 512  # px a side: one tile answers a 512 px IIIF tile request (Cantaloupe's smallest tile size by default)
TOP = 256  # the smallest level's long side is at most this
_BAND_BYTES = 8 << 20  # working memory of one band while halving a level


def pyramid(arr: np.ndarray, prepared: Prepared, options: EncodeOptions) -> bytes:
    """The tiled TIFF with SubIFD levels (see the module's docstring). Layout: header, level 0's tiles, each
    level's tiles then its directory, IFD0 last (its values and Exif/GPS sub-IFDs after it)."""
    bo = prepared.byte_order
    bits = 16 if arr.dtype == np.uint16 else 8
    out = io.BytesIO()
    out.write(b"\0" * 8)  # the header, written last
    tiles = _tiles(out, arr, bo, bits, options.png_level)
    subifds, level, scale = [], arr, 1
    while max(level.shape[:2]) > TOP:
        level, scale = halve(level), scale * 2
        h, w = level.shape[:2]
        level_tiles = _tiles(out, level, bo, bits, options.png_level)
        subifds.append(_align(out))
        res = {} if prepared.dpi is None else {282: (5, _rational(prepared.dpi[0] / scale)),
                                               283: (5, _rational(prepared.dpi[1] / scale)), 296: (3, (2,))}
        out.write(_plain_ifd(bo, subifds[-1], {254: (4, (1,)), **_structure(w, h, bits, level_tiles), **res}))
    del level
    ifd0 = _align(out)
    structure = {254: ("long", (0,))}
    structure.update((tag, ("short" if typ == 3 else "long", v)) for tag, (typ, v) in _structure(
        arr.shape[1], arr.shape[0], bits, tiles).items())
    if subifds:
        structure[330] = ("long", tuple(subifds))
    out.write(prepared.tiff_ifd(ifd0, structure))
    if out.tell() > 0xFFFFFFFF:
        raise CannotHold(f"a {arr.shape[1]}x{arr.shape[0]} pyramid needs more than the 4 GiB a classic TIFF holds")
    out.seek(0)
    out.write((b"II*\0" if bo == "<" else b"MM\0*") + struct.pack(bo + "I", ifd0))
    return out.getvalue()  # the buffer itself, not a copy (no other reference to it)


def halve(a: np.ndarray) -> np.ndarray:
    """The next level: each pixel the rounded mean of a 2x2 block ((a + b + c + d + 2) // 4); an odd last row or
    column is averaged with itself. Computed in bands: no full-size widened copy."""
    h, w = a.shape[:2]
    out = np.empty(((h + 1) // 2, (w + 1) // 2, a.shape[2]), a.dtype)
    acc = np.uint32 if a.dtype == np.uint16 else np.uint16  # 4 * 65535 + 2 fits
    band = max(1, _BAND_BYTES // (w * a.shape[2] * np.dtype(acc).itemsize * 2))
    for y in range(0, out.shape[0], band):
        top, bottom = a[2 * y : 2 * (y + band) : 2], a[2 * y + 1 : 2 * (y + band) : 2]
        s = top.astype(acc)
        s[: len(bottom)] += bottom
        s[len(bottom) :] += top[len(bottom) :]  # odd last row: itself twice
        s = s[:, 0::2] + np.concatenate([s[:, 1::2], s[:, -1:]], axis=1)[:, : out.shape[1]]
        s += 2
        s //= 4
        out[y : y + len(s)] = s
    return out


def _tiles(out: io.BytesIO, arr: np.ndarray, bo: str, bits: int, level: int) -> tuple[list[int], list[int]]:
    """Append ``arr``'s tiles (row by row, each padded to TILE x TILE with zeros), deflate + predictor 2 each:
    their offsets and byte counts."""
    h, w = arr.shape[:2]
    offsets, counts = [], []
    tile = np.zeros((TILE, TILE, arr.shape[2]), arr.dtype)
    for y in range(0, h, TILE):
        for x in range(0, w, TILE):
            part = arr[y : y + TILE, x : x + TILE]
            if part.shape[:2] != tile.shape[:2]:
                tile[:] = 0
            tile[: part.shape[0], : part.shape[1]] = part
            tile[:, 1:] -= tile[:, :-1].copy()  # predictor 2 per sample, modulo 2**bits
            data = zlib.compress((tile.astype(f"{bo}u2") if bits == 16 else tile).tobytes(), level)
            offsets.append(out.tell())
            counts.append(len(data))
            out.write(data)
    return offsets, counts


def _structure(w: int, h: int, bits: int, tiles: tuple[list[int], list[int]]) -> dict[int, tuple[int, tuple]]:
    """A tiled level's structural tags: {tag: (TIFF type, values)}."""
    return {
        256: (4, (w,)),
        257: (4, (h,)),
        258: (3, (bits, bits, bits)),
        259: (3, (8,)),  # Adobe deflate
        262: (3, (2,)),  # RGB
        277: (3, (3,)),
        284: (3, (1,)),
        317: (3, (2,)),  # horizontal predictor
        322: (4, (TILE,)),
        323: (4, (TILE,)),
        324: (4, tuple(tiles[0])),
        325: (4, tuple(tiles[1])),
    }


def _plain_ifd(bo: str, offset: int, entries: dict[int, tuple[int, tuple]]) -> bytes:
    """A directory at ``offset`` of SHORT (3), LONG (4) and RATIONAL (5, (num, den)) values, those longer than
    4 bytes after it; no next directory."""
    fmt = {3: "H", 4: "I", 5: "II"}
    rows, blobs = [struct.pack(bo + "H", len(entries))], []
    pos = offset + 2 + 12 * len(entries) + 4
    for tag in sorted(entries):
        typ, values = entries[tag]
        count = len(values) // 2 if typ == 5 else len(values)
        data = struct.pack(f"{bo}{count}{fmt[typ]}", *values)
        if len(data) > 4:
            rows.append(struct.pack(bo + "HHII", tag, typ, count, pos))
            blobs.append(data)
            pos += len(data)
        else:
            rows.append(struct.pack(bo + "HHI", tag, typ, count) + data.ljust(4, b"\0"))
    rows.append(struct.pack(bo + "I", 0))
    return b"".join(rows + blobs)


def _rational(x: float) -> tuple[int, int]:
    f = Fraction(x).limit_denominator(100_000)
    return f.numerator, f.denominator


def _align(out: io.BytesIO) -> int:
    """Pad ``out`` to a word boundary (directories start on one): its position."""
    if out.tell() & 1:
        out.write(b"\0")
    return out.tell()


FORMAT = Format(
    name="tiff", suffixes=(".tif", ".tiff"), magic=(b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"), pillow=("TIFF",),
    write=write, bits=(8, 16), carries=frozenset({"exif", "iptc", "xmp", "icc", "dpi"}), aliases=("tif",),
    max_side=2**32 - 1, mime="image/tiff",
    summary="TIFF, deflate, 8 or 16 bits, every tag carried (the FADGI master form)",
)
