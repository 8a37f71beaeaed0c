"""JPEG 2000 (JP2 container and raw J2K codestream): header, decode and encode, with the container's metadata.

Pure stdlib + NumPy + Pillow + imagecodecs (no Ray, no torch), like :mod:`raycolor.core.images`, and nothing
happens at import time.

Why a module of its own: archives (the Library of Congress's newspaper programme, national libraries, IIIF
image servers) keep their masters in JPEG 2000, and neither Pillow nor imagecodecs alone reads and writes all
of what they hold. Pillow reads 16-bit RGB as 8-bit and cannot write it; imagecodecs cannot write tiles. So
decoding goes to imagecodecs, encoding to OpenJPEG itself, and the JP2 boxes (which carry an archive's colour,
resolution, XMP, EXIF and IPTC) are read and written here, by a linear walk, so a bad box costs a note, never
the pixels.

Choices (measured with ``bench/jp2_codecs.py``):

* **Decode**: ``imagecodecs.jpeg2k_decode`` on the codestream alone. It gives every precision at full depth
  (Pillow gives 16-bit RGB as 8-bit, and shifts 12-bit grey left by 4, so 4095 -> 65520, not 65535), takes
  ``numthreads``, and costs the same as Pillow on one thread. It is handed the codestream, not the JP2
  file, because OpenJPEG also parses the boxes after the codestream and fails the whole decode on a bad one;
  the boxes are ours to read (palette, channel definitions and colour space applied here).
* **Encode**: OpenJPEG's own encoder, called through ctypes on the libopenjp2 2.5 that Pillow's wheel bundles
  (no new dependency), fed one tile at a time: 1024² tiles, RPCL, PLT and TLM markers, the colour transform,
  at 8 and 16 bits, grey and RGB, with ``threads``; only one tile is ever in its int32 planes. Neither wrapper
  does all of that: Pillow cannot write 16-bit RGB, has no encoder threads or TLM, and (13.0) writes I;16 tiles
  right of the first column from the wrong offset, silently; imagecodecs writes one tile in LRCP order
  without PLT, and its lossy knob is a PSNR, not a rate. Where the library cannot be loaded (another Pillow
  build, another OpenJPEG version), :func:`encode` falls back to Pillow (16-bit grey in full-width strips,
  which it encodes right) and imagecodecs (16-bit RGB: one tile, LRCP, no PLT, the rate found by a search on a
  crop); :func:`encoder` says which runs.
* **Truncation**: OpenJPEG can return a partial image without an error (a lost tile-part comes back as
  zeros). Before decoding, the codestream's tile-parts are walked by their ``Psot`` lengths (a hop each,
  linear): a tile-part that runs past the data, a missing tile or tile-part, or a hop that lands off a marker
  is ``truncated``; only a missing final EOC after complete tile data is a note (and one is added: OpenJPEG
  refuses the codestream without it).

Memory (``bench/jp2_codecs.py``, 25 MP 16-bit RGB, peak above the inputs): decode about 19 bytes per pixel
(OpenJPEG's int32 planes, 12, plus the 6-byte result), so about 1.9 GB at 100 MP on top of the file; the
tile-by-tile lossless encode about 15 (the codestream, 4.5 at 36 bpp, and its copies), a ~1 bpp one under 2;
the imagecodecs fallback copies the whole image into int32 planes first (about 38 bytes per pixel lossless).
"""

from __future__ import annotations

import io
import math
import struct
import xml.parsers.expat
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cache
from typing import Literal

import numpy as np

from raycolor.core import metadata

JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
CODESTREAM_SIGNATURE = b"\xff\x4f\xff\x51"
SIGNATURES = (JP2_SIGNATURE, CODESTREAM_SIGNATURE)
SUFFIXES = (".jp2", ".j2k", ".j2c", ".jpf", ".jpx", ".jph")

# Byte caps per box: raycolor.core.metadata's, the one definition (what goes over is dropped with a note, so a
# hostile box costs no more than its cap)
MAX_ICC_BYTES = metadata.MAX_ICC_BYTES
MAX_XMP_BYTES = metadata.MAX_XMP_BYTES
MAX_EXIF_BYTES = metadata.MAX_EXIF_TOTAL
MAX_IPTC_BYTES = metadata.MAX_IPTC_BYTES
# Past this many notes, one more says how many were left out: a file of 10^6 tiny odd boxes stays one row.
MAX_NOTES = 32

XMP_UUID = bytes.fromhex("BE7ACFCB97A942E89C71999491E3AFAC")
EXIF_UUID = b"JpgTiffExif->JP2"
IPTC_UUID = bytes.fromhex("33C7A4D2B81D4723A0BAF1A3E097AD38")

TILE = 1024
THUMBNAIL_SIDE = 256

Jp2Reason = Literal["truncated", "too_large", "unsupported"]
_REASONS = ("truncated", "too_large", "unsupported")

_SRGB, _GREY, _SYCC = 16, 17, 18
_EXIF_PREFIX = b"Exif\x00\x00"
_TIFF_HEADERS = (b"II*\x00", b"MM\x00*")


class Jp2Error(ValueError):
    """A JPEG 2000 input that cannot be decoded; ``reason`` is one of ``truncated``, ``too_large``,
    ``unsupported`` (the same words as :class:`raycolor.core.images.DecodeError`, so a caller maps them 1:1)."""

    def __init__(self, reason: Jp2Reason, detail: str) -> None:
        if reason not in _REASONS:
            raise ValueError(f"unknown JPEG 2000 error reason {reason!r}")
        # args == (reason, detail) keeps the exception picklable (Ray ships them).
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


@dataclass(frozen=True)
class Jp2Header:
    """What the codestream's SIZ/COD markers say, read without decoding a pixel (for a pixel budget)."""

    width: int
    height: int
    components: int
    bits: int  # precision of the first component (SIZ); other components may differ (alpha)
    signed: bool
    is_jp2: bool  # a boxed JP2 file, not a raw codestream
    tiles: int
    tile_size: tuple[int, int]  # (width, height)
    levels: int  # wavelet decomposition levels (COD): the smallest level is size / 2**levels
    reversible: bool  # 5-3 (lossless-capable) rather than 9-7
    htj2k: bool  # Part 15 high-throughput block coder (CAP marker / Rsiz bit 14)
    subsampled: bool  # some component is subsampled (XRsiz/YRsiz > 1)


@dataclass(frozen=True)
class Jp2Image:
    """:func:`decode`'s result.

    ``pixels``: (H, W) grey or (H, W, 3) RGB; uint8 for sources of 8 bits or fewer, uint16 for wider ones,
    a precision other than 8/16 scaled by ``round(v * max_out / (2**bits - 1))`` (never clipped). Alpha, if
    the source has it, is already composited on white (as raycolor does for every input) and also given in
    ``alpha`` (same dtype and scale). ``colorspace`` is what the first ``colr`` box says: ``srgb``, ``grey``,
    ``sycc`` (already converted to RGB here), ``icc`` (``icc`` holds the profile, unchecked: the caller's
    LittleCMS path decides), or ``unknown`` (no colr box, a raw codestream, or an enumeration not handled,
    with a note). ``exif`` starts at the TIFF header. ``notes``: (group, text) for each thing dropped or odd.
    """

    pixels: np.ndarray
    bits: int
    header: Jp2Header
    colorspace: str = "unknown"
    icc: bytes | None = None
    dpi: tuple[float, float] | None = None
    xmp: bytes | None = None
    exif: bytes | None = None
    iptc: bytes | None = None
    alpha: np.ndarray | None = None
    notes: tuple[tuple[str, str], ...] = ()


# --------------------------------------------------------------------------- box and marker walks


class _Notes(list):
    def add(self, group: str, text: str) -> None:
        if len(self) < MAX_NOTES:
            self.append((group, text))
        elif len(self) == MAX_NOTES:
            self.append(("jp2", "more notes left out"))


@dataclass
class _Parsed:
    header: Jp2Header
    cs_start: int
    cs_end: int
    notes: _Notes
    colr: tuple[int, int | None, bytes | None] | None = None  # (method, enum, icc)
    palette: tuple[np.ndarray, tuple[int, ...], tuple[bool, ...]] | None = None  # (entries, bits, signed)
    cmap: list[tuple[int, int, int]] | None = None  # (component, mtyp, pcol) per channel
    cdef: list[tuple[int, int, int]] | None = None  # (channel, type, association)
    dpi: tuple[float, float] | None = None
    xmp: bytes | None = None
    exif: bytes | None = None
    iptc: bytes | None = None
    ihdr: tuple[int, int, int, int] | None = None  # (height, width, components, bpc byte)
    extra: dict = field(default_factory=dict)


def _boxes(data: bytes, start: int, end: int):
    """Yield (type, payload_start, payload_end, declared_end) for the boxes in data[start:end], walking by
    their lengths (linear, each one bounded by its parent). A box whose length runs past ``end`` is yielded
    with payload_end clipped and declared_end > end, so the caller decides; a malformed length stops the walk
    with a ``None`` type."""
    pos = start
    while pos < end:
        if end - pos < 8:
            yield None, pos, end, end
            return
        lbox, tbox = struct.unpack_from(">I4s", data, pos)
        head = 8
        if lbox == 1:
            if end - pos < 16:
                yield None, pos, end, end
                return
            (lbox,) = struct.unpack_from(">Q", data, pos + 8)
            head = 16
        elif lbox == 0:
            lbox = end - pos
        if lbox < head:
            yield None, pos, end, end
            return
        declared = pos + lbox
        yield tbox, pos + head, min(declared, end), declared
        if declared > end:
            return
        pos = declared


def _parse(data: bytes) -> _Parsed:
    notes = _Notes()
    if data.startswith(CODESTREAM_SIGNATURE):
        header, extra = _main_header(data, 0, len(data), is_jp2=False)
        return _Parsed(header, 0, len(data), notes, extra=extra)
    if not data.startswith(JP2_SIGNATURE):
        if JP2_SIGNATURE.startswith(bytes(data[:12])) or CODESTREAM_SIGNATURE.startswith(bytes(data[:4])):
            raise Jp2Error("truncated", f"only {len(data)} bytes")
        raise Jp2Error("unsupported", "not a JPEG 2000 file (no JP2 signature box or SOC/SIZ markers)")
    p = _Parsed(None, -1, -1, notes)  # type: ignore[arg-type]
    cs = None
    for tbox, a, b, declared in _boxes(data, 0, len(data)):
        if tbox is None:
            if cs is None:
                raise Jp2Error("truncated", f"malformed box at byte {a} before the codestream")
            notes.add("jp2", f"malformed box at byte {a}: boxes from there ignored")
            break
        if tbox == b"jp2c":
            if cs is None:
                cs = (a, b)  # a short jp2c box is found out by the tile-part walk
            continue
        if declared > len(data):
            if cs is None:
                raise Jp2Error("truncated", f"{tbox.decode('latin-1')!r} box runs past the end of the file")
            notes.add(_group(tbox, data, a, b), f"{_name(tbox, data, a, b)} box runs past the end of the file: dropped")
            break
        if tbox == b"jp2h":
            _read_jp2h(data, a, b, p)
        elif tbox == b"uuid":
            _read_uuid(data, a, b, p)
    if cs is None:
        raise Jp2Error("truncated", "no contiguous codestream (jp2c) box")
    p.cs_start, p.cs_end = cs
    if not data.startswith(CODESTREAM_SIGNATURE, p.cs_start):
        raise Jp2Error("truncated", "the jp2c box does not start with SOC/SIZ markers")
    p.header, p.extra = _main_header(data, p.cs_start, p.cs_end, is_jp2=True)
    if p.ihdr is not None:
        h, w, nc, _ = p.ihdr
        if (h, w) != (p.header.height, p.header.width) or nc != p.header.components:
            notes.add("jp2", f"ihdr says {w}x{h}x{nc}, the codestream {p.header.width}x{p.header.height}x"
                             f"{p.header.components}: the codestream's used")
    return p


def _group(tbox: bytes, data: bytes, a: int, b: int) -> str:
    if tbox == b"uuid" and b - a >= 16:
        return {XMP_UUID: "xmp", EXIF_UUID: "exif", IPTC_UUID: "iptc"}.get(bytes(data[a:a + 16]), "jp2")
    return "jp2"


def _name(tbox: bytes, data: bytes, a: int, b: int) -> str:
    group = _group(tbox, data, a, b)
    return f"{group.upper()} uuid" if group != "jp2" else repr(tbox.decode("latin-1"))


def _read_jp2h(data: bytes, start: int, end: int, p: _Parsed) -> None:
    for tbox, a, b, declared in _boxes(data, start, end):
        if tbox is None or declared > end:
            p.notes.add("jp2", "malformed box inside jp2h: the rest of jp2h ignored")
            return
        n = b - a
        if tbox == b"ihdr" and n >= 14 and p.ihdr is None:
            h, w, nc, bpc = struct.unpack_from(">IIHB", data, a)
            p.ihdr = (h, w, nc, bpc)
        elif tbox == b"colr" and n >= 3:
            if p.colr is not None:
                continue  # JP2 readers take the first colr box (JPX's precedence field is not read)
            meth = data[a]
            if meth == 1 and n >= 7:
                p.colr = (1, struct.unpack_from(">I", data, a + 3)[0], None)
            elif meth in (2, 3):
                if n - 3 > MAX_ICC_BYTES:
                    p.notes.add("icc", f"ICC profile of {n - 3} bytes over the {MAX_ICC_BYTES} byte cap: dropped")
                    p.colr = (meth, None, None)
                else:
                    p.colr = (meth, None, bytes(data[a + 3:b]))
            else:
                p.notes.add("icc", f"colr box method {meth} not read")
        elif tbox == b"pclr":
            _read_pclr(data, a, b, p)
        elif tbox == b"cmap":
            p.cmap = [struct.unpack_from(">HBB", data, a + 4 * i) for i in range(n // 4)]
        elif tbox == b"cdef" and n >= 2:
            (count,) = struct.unpack_from(">H", data, a)
            if 2 + 6 * count <= n:
                p.cdef = [struct.unpack_from(">HHH", data, a + 2 + 6 * i) for i in range(count)]
            else:
                p.notes.add("jp2", "cdef box shorter than its count: ignored")
        elif tbox == b"res ":
            _read_res(data, a, b, p)


def _read_pclr(data: bytes, a: int, b: int, p: _Parsed) -> None:
    if b - a < 3:
        raise Jp2Error("truncated", "pclr box too short")
    ne, npc = struct.unpack_from(">HB", data, a)
    depths = [data[a + 3 + i] for i in range(npc)] if a + 3 + npc <= b else None
    if not depths or ne == 0 or ne > 1024 or any((d & 0x7F) + 1 > 16 for d in depths):
        raise Jp2Error("unsupported", f"palette (pclr) of {ne} entries x {npc} columns")
    bits = tuple((d & 0x7F) + 1 for d in depths)
    widths = [(n + 7) // 8 for n in bits]
    need = ne * sum(widths)
    pos = a + 3 + npc
    if pos + need > b:
        raise Jp2Error("truncated", "pclr box shorter than its entries")
    entries = np.empty((ne, npc), np.int64)
    row = np.frombuffer(data, np.uint8, need, pos).reshape(ne, sum(widths)).astype(np.int64)
    col = 0
    for j, w in enumerate(widths):
        v = np.zeros(ne, np.int64)
        for k in range(w):
            v = (v << 8) | row[:, col + k]
        entries[:, j] = v
        col += w
    p.palette = (entries, bits, tuple(bool(d & 0x80) for d in depths))


def _read_res(data: bytes, start: int, end: int, p: _Parsed) -> None:
    found = {}
    for tbox, a, b, declared in _boxes(data, start, end):
        if tbox is None or declared > end:
            break
        if tbox in (b"resc", b"resd") and b - a >= 10:
            vn, vd, hn, hd, ve, he = struct.unpack_from(">HHHHbb", data, a)
            if vd and hd and vn and hn:
                found[tbox] = (hn / hd * 10.0**he * 0.0254, vn / vd * 10.0**ve * 0.0254)
            else:
                p.notes.add("dpi", f"{tbox.decode()} box with a zero term: ignored")
    # Capture resolution is the scan's; default display resolution is only a suggestion.
    dpi = found.get(b"resc") or found.get(b"resd")
    if dpi is not None:
        p.dpi = (round(dpi[0], 4), round(dpi[1], 4))


def _read_uuid(data: bytes, a: int, b: int, p: _Parsed) -> None:
    if b - a < 16:
        return
    uid = bytes(data[a:a + 16])
    a += 16
    n = b - a
    if uid == XMP_UUID:
        if p.xmp is not None:
            p.notes.add("xmp", "a second XMP uuid box: ignored")
        elif n > MAX_XMP_BYTES:
            p.notes.add("xmp", f"XMP of {n} bytes over the {MAX_XMP_BYTES} byte cap: dropped")
        else:
            packet = bytes(data[a:b]).rstrip(b"\x00")
            problem = _xml_problem(packet)
            if problem:
                p.notes.add("xmp", f"XMP uuid box is not well-formed XML ({problem}): dropped")
            else:
                p.xmp = packet
    elif uid == EXIF_UUID:
        if data.startswith(_EXIF_PREFIX, a):
            a += len(_EXIF_PREFIX)
            n -= len(_EXIF_PREFIX)
        if p.exif is not None:
            p.notes.add("exif", "a second EXIF uuid box: ignored")
        elif n > MAX_EXIF_BYTES:
            p.notes.add("exif", f"EXIF of {n} bytes over the {MAX_EXIF_BYTES} byte cap: dropped")
        elif bytes(data[a:a + 4]) not in _TIFF_HEADERS:
            p.notes.add("exif", "EXIF uuid box without a TIFF header: dropped")
        else:
            p.exif = bytes(data[a:b])
    elif uid == IPTC_UUID:
        if p.iptc is not None:
            p.notes.add("iptc", "a second IPTC uuid box: ignored")
        elif n > MAX_IPTC_BYTES:
            p.notes.add("iptc", f"IPTC of {n} bytes over the {MAX_IPTC_BYTES} byte cap: dropped")
        elif n == 0 or data[a] != 0x1C:
            p.notes.add("iptc", "IPTC uuid box does not start with an IIM dataset: dropped")
        else:
            p.iptc = bytes(data[a:b])


def _xml_problem(packet: bytes) -> str | None:
    """Well-formedness only, with expat and no tree (linear, no per-element allocation): the caller's XMP
    parser has its own caps; this only keeps a box of garbage from reaching it as if it were XMP."""
    parser = xml.parsers.expat.ParserCreate()
    try:
        parser.Parse(packet, True)
    except xml.parsers.expat.ExpatError as e:
        return str(e)
    return None


_SOC, _SIZ, _COD, _CAP, _SOT, _EOC = 0xFF4F, 0xFF51, 0xFF52, 0xFF50, 0xFF90, 0xFFD9


def _main_header(data: bytes, start: int, end: int, *, is_jp2: bool) -> tuple[Jp2Header, dict]:
    """SIZ and COD from the main header: marker segments hopped by their lengths up to the first SOT."""
    pos = start + 2
    siz = cod = None
    cap = False
    while True:
        if pos + 4 > end:
            raise Jp2Error("truncated", "codestream main header cut short")
        marker, length = struct.unpack_from(">HH", data, pos)
        if marker == _SOT:
            break
        if marker >> 8 != 0xFF or length < 2 or pos + 2 + length > end:
            raise Jp2Error("truncated", f"corrupt main header marker 0x{marker:04X} at byte {pos - start}")
        if marker == _SIZ:
            siz = (pos + 4, length - 2)
        elif marker == _COD and cod is None:
            cod = (pos + 4, length - 2)
        elif marker == _CAP:
            cap = True
        pos += 2 + length
    if siz is None or siz[1] < 36:
        raise Jp2Error("truncated", "codestream without a whole SIZ marker")
    a, n = siz
    rsiz, xsiz, ysiz, xo, yo, xt, yt, xto, yto, csiz = struct.unpack_from(">HIIIIIIIIH", data, a)
    if csiz == 0 or n < 36 + 3 * csiz or xt == 0 or yt == 0 or xsiz <= xo or ysiz <= yo:
        raise Jp2Error("truncated", "corrupt SIZ marker")
    comps = [struct.unpack_from(">BBB", data, a + 36 + 3 * i) for i in range(csiz)]
    tiles = math.ceil((xsiz - xto) / xt) * math.ceil((ysiz - yto) / yt)
    levels, reversible = 0, True
    if cod is not None and cod[1] >= 10:
        levels = data[cod[0] + 5]
        reversible = data[cod[0] + 9] == 1
    header = Jp2Header(
        width=xsiz - xo, height=ysiz - yo, components=csiz, bits=(comps[0][0] & 0x7F) + 1,
        signed=bool(comps[0][0] & 0x80), is_jp2=is_jp2, tiles=tiles, tile_size=(xt, yt), levels=levels,
        reversible=reversible, htj2k=cap or bool(rsiz & 0x4000),
        subsampled=any(c[1] != 1 or c[2] != 1 for c in comps),
    )
    return header, {"first_sot": pos, "component_bits": tuple((c[0] & 0x7F) + 1 for c in comps),
                    "component_signed": tuple(bool(c[0] & 0x80) for c in comps)}


def _walk_tile_parts(data: bytes, p: _Parsed) -> bool:
    """Hop the tile-parts by their Psot lengths: a codestream cut short (or corrupt) is found here, before
    OpenJPEG, which may decode the part it has and say nothing."""
    pos, end, tiles = p.extra["first_sot"], p.cs_end, p.header.tiles
    if tiles > 65535:
        raise Jp2Error("truncated", f"SIZ declares {tiles} tiles (the most a codestream can index is 65535)")
    parts = np.zeros(tiles, np.int32)
    expected = np.zeros(tiles, np.int32)
    while pos + 12 <= end:
        marker = struct.unpack_from(">H", data, pos)[0]
        if marker == _EOC:
            break
        if marker != _SOT:
            raise Jp2Error("truncated", f"corrupt codestream: no SOT marker at byte {pos - p.cs_start}")
        _, lsot, isot, psot, tpsot, tnsot = struct.unpack_from(">HHHIBB", data, pos)
        if lsot != 10 or isot >= tiles:
            raise Jp2Error("truncated", f"corrupt SOT marker at byte {pos - p.cs_start}")
        if psot == 0:  # the last tile-part, running to EOC: without one, nothing says it is whole
            if bytes(data[end - 2:end]) != b"\xff\xd9":
                raise Jp2Error("truncated", f"codestream cut short in tile {isot} (open-ended, no EOC)")
            psot = end - pos - 2
        if psot < 14 or pos + psot > end:
            raise Jp2Error("truncated", f"codestream cut short in tile {isot} "
                                        f"({pos + psot - end} bytes missing of its tile-part)")
        parts[isot] += 1
        if tnsot:
            expected[isot] = tnsot
        pos += psot
    missing = np.flatnonzero(parts == 0)
    if missing.size:
        raise Jp2Error("truncated", f"codestream cut short: {missing.size} of {tiles} tiles missing")
    short = np.flatnonzero((expected > 0) & (parts < expected))
    if short.size:
        raise Jp2Error("truncated", f"codestream cut short: tile {int(short[0])} lacks tile-parts")
    if not (pos + 2 <= end and struct.unpack_from(">H", data, pos)[0] == _EOC):
        p.notes.add("jp2", "codestream has no EOC marker after its last tile (all tile data present): one added")
        return False
    return True


# --------------------------------------------------------------------------- public API


def header(data: bytes) -> Jp2Header:
    """Size, components and precision from the boxes and the SIZ marker, without decoding a pixel."""
    return _parse(data if isinstance(data, (bytes, bytearray)) else bytes(data)).header


def decode(data: bytes, *, max_pixels: int | None, threads: int = 1) -> Jp2Image:
    """Pixels and container metadata of a JP2 file or J2K codestream (see :class:`Jp2Image`)."""
    import imagecodecs

    data = data if isinstance(data, (bytes, bytearray)) else bytes(data)
    p = _parse(data)
    h = p.header
    if max_pixels is not None and h.width * h.height > max_pixels:
        raise Jp2Error("too_large", f"{h.width}x{h.height} is over {max_pixels} pixels")
    if h.components > 4:
        raise Jp2Error("unsupported", f"{h.components} components")
    if h.subsampled:
        raise Jp2Error("unsupported", "subsampled components (XRsiz/YRsiz > 1)")
    if any(p.extra["component_signed"]):
        raise Jp2Error("unsupported", "signed samples")
    if max(p.extra["component_bits"]) > 16:
        raise Jp2Error("unsupported", f"{max(p.extra['component_bits'])}-bit samples")
    codestream = memoryview(data)[p.cs_start:p.cs_end]
    if not _walk_tile_parts(data, p):
        # OpenJPEG fails a codestream without EOC even when every tile is whole; the walk has just shown it is.
        codestream = bytes(codestream) + b"\xff\xd9"
    try:
        raw = imagecodecs.jpeg2k_decode(codestream, numthreads=max(1, threads))
    except imagecodecs.Jpeg2kError as e:
        raise Jp2Error("truncated", f"OpenJPEG: {e}") from None
    except MemoryError:
        raise Jp2Error("too_large", "out of memory decoding") from None
    chans = raw[..., None] if raw.ndim == 2 else raw
    bits = list(p.extra["component_bits"])
    if p.palette is not None:
        chans, bits = _apply_palette(chans, p)
    return _finish(chans, bits, p)


def _apply_palette(chans: np.ndarray, p: _Parsed) -> tuple[np.ndarray, list[int]]:
    entries, pbits, psigned = p.palette
    if any(psigned):
        raise Jp2Error("unsupported", "signed palette entries")
    cmap = p.cmap or [(0, 1, j) for j in range(entries.shape[1])]
    out_bits = []
    planes = []
    for cmp_, mtyp, pcol in cmap:
        if cmp_ >= chans.shape[2] or (mtyp == 1 and pcol >= entries.shape[1]):
            raise Jp2Error("truncated", "cmap box points at a component or column that does not exist")
        plane = chans[..., cmp_]
        if mtyp == 1:
            lut = entries[:, pcol].astype(np.uint16 if pbits[pcol] > 8 else np.uint8)
            planes.append(lut[np.minimum(plane, len(lut) - 1)])
            out_bits.append(pbits[pcol])
        else:
            planes.append(plane)
            out_bits.append(p.extra["component_bits"][cmp_])
    dtype = np.uint16 if max(out_bits) > 8 else np.uint8
    return np.stack([q.astype(dtype, copy=False) for q in planes], axis=-1), out_bits


def _finish(chans: np.ndarray, bits: list[int], p: _Parsed) -> Jp2Image:
    notes = p.notes
    n = chans.shape[2]
    colour, alpha_idx, premultiplied = _channels(n, p)
    colr = p.colr
    colorspace, icc = "unknown", None
    if colr is not None:
        meth, enum, icc = colr
        if meth in (2, 3):
            colorspace = "icc" if icc is not None else "unknown"
        elif enum == _SRGB:
            colorspace = "srgb"
        elif enum == _GREY:
            colorspace = "grey"
        elif enum == _SYCC:
            colorspace = "sycc"
        else:
            notes.add("icc", f"colr enumerated colour space {enum} not handled: pixels taken as sRGB")
    if len(colour) not in (1, 3):
        raise Jp2Error("unsupported", f"{len(colour)} colour channels (CMYK or multispectral)")
    cbits = {bits[i] for i in colour}
    if len(cbits) != 1:
        raise Jp2Error("unsupported", f"colour channels of different precisions {sorted(cbits)}")
    depth = cbits.pop()
    out_dtype = np.uint8 if depth <= 8 else np.uint16
    pix = np.empty(chans.shape[:2] + (len(colour),), out_dtype)
    for j, i in enumerate(colour):
        pix[..., j] = _scale(chans[..., i], bits[i], out_dtype)
    if colorspace == "sycc" and len(colour) == 3:
        _sycc_to_rgb(pix)
        notes.add("icc", "sYCC converted to sRGB")
    alpha = None
    if alpha_idx is not None:
        alpha = _scale(chans[..., alpha_idx], bits[alpha_idx], out_dtype)
        _composite_on_white(pix, alpha, premultiplied)
        notes.add("jp2", "alpha composited on white")
    pix = pix[..., 0] if pix.shape[2] == 1 else pix
    return Jp2Image(
        pixels=np.ascontiguousarray(pix), bits=depth, header=p.header, colorspace=colorspace, icc=icc,
        dpi=p.dpi, xmp=p.xmp, exif=p.exif, iptc=p.iptc, alpha=alpha, notes=tuple(notes),
    )


def _channels(n: int, p: _Parsed) -> tuple[list[int], int | None, bool]:
    if p.cdef:
        by_assoc = {}
        alpha, pre = None, False
        for chan, typ, assoc in p.cdef:
            if chan >= n:
                p.notes.add("jp2", "cdef names a channel that does not exist: ignored")
                break
            if typ == 0:
                by_assoc[assoc] = chan
            elif typ in (1, 2) and alpha is None:
                alpha, pre = chan, typ == 2
        else:
            colour = [by_assoc[k] for k in sorted(by_assoc) if k != 0 and k != 65535]
            if colour:
                return colour, alpha, pre
    if n in (2, 4):
        return list(range(n - 1)), n - 1, False
    return list(range(n)), None, False


def _scale(plane: np.ndarray, bits: int, out_dtype) -> np.ndarray:
    """round(v * max_out / (2**bits - 1)), by rows in uint32 so the temporary stays small."""
    top = 255 if out_dtype == np.uint8 else 65535
    if bits in (8, 16) and (top == (1 << bits) - 1):
        return plane.astype(out_dtype, copy=False)
    m = (1 << bits) - 1
    out = np.empty(plane.shape, out_dtype)
    step = max(1, (1 << 22) // max(1, plane.shape[1]))
    for r in range(0, plane.shape[0], step):
        v = np.minimum(plane[r:r + step].astype(np.uint32), m)
        out[r:r + step] = (v * top + m // 2) // m
    return out


def _sycc_to_rgb(pix: np.ndarray) -> None:
    """sYCC (IEC 61966-2-1 Amd. 1, full range, chroma offset by half the range) to sRGB, in place, by rows."""
    top = float(np.iinfo(pix.dtype).max)
    off = (top + 1) / 2
    step = max(1, (1 << 20) // max(1, pix.shape[1]))
    for r in range(0, pix.shape[0], step):
        blk = pix[r:r + step].astype(np.float32)
        y, cb, cr = blk[..., 0], blk[..., 1] - off, blk[..., 2] - off
        rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)
        pix[r:r + step] = np.clip(np.rint(rgb), 0, top)


def _composite_on_white(pix: np.ndarray, alpha: np.ndarray, premultiplied: bool) -> None:
    top = int(np.iinfo(pix.dtype).max)
    step = max(1, (1 << 20) // max(1, pix.shape[1]))
    for r in range(0, pix.shape[0], step):
        a = alpha[r:r + step, :, None].astype(np.uint64)
        v = pix[r:r + step].astype(np.uint64)
        if premultiplied:
            out = np.minimum(v + (top - a), top)
        else:
            out = (v * a + top * (top - a) + top // 2) // top
        pix[r:r + step] = out


# --------------------------------------------------------------------------- encoding


def levels_for(width: int, height: int) -> int:
    """Decomposition levels so that the smallest resolution's long side is at most THUMBNAIL_SIDE, and no
    more than a 1024² tile allows (a tile side must be at least 2**levels)."""
    side = max(width, height)
    levels = 0
    while (side + (1 << levels) - 1) >> levels > THUMBNAIL_SIDE and levels < 10:
        levels += 1
    return levels


def encode(
    pixels: np.ndarray,
    *,
    lossless: bool = True,
    rate: float | None = None,
    xmp: bytes | None = None,
    exif: bytes | None = None,
    iptc: bytes | None = None,
    dpi: tuple[float, float] | None = None,
    threads: int = 1,
) -> bytes:
    """A JP2 file: reversible 5-3 when ``lossless`` (the master form), else 9-7 at ``rate`` bits per pixel
    (all components together; an access copy). sRGB (or greyscale) ``colr``, ``res `` with ``resc`` from
    ``dpi``, and the XMP / EXIF (from its TIFF header) / IPTC uuid boxes when given."""
    pix = np.asarray(pixels)
    if pix.ndim == 3 and pix.shape[2] == 1:
        pix = pix[..., 0]
    if pix.ndim not in (2, 3) or (pix.ndim == 3 and pix.shape[2] != 3) or pix.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"want (H, W) or (H, W, 3) uint8/uint16 pixels, got {pix.shape} {pix.dtype}")
    if not lossless and (rate is None or not rate > 0):
        raise ValueError("lossy JPEG 2000 needs rate (bits per pixel) > 0")
    h, w = pix.shape[:2]
    if h == 0 or w == 0:
        raise ValueError("empty image")
    bits = 8 if pix.dtype == np.uint8 else 16
    comps = 1 if pix.ndim == 2 else 3
    levels = min(levels_for(w, h), _max_levels(w, h))
    ratio = None if lossless else bits * comps / float(rate)
    if _openjpeg() is not None:
        cs = _encode_openjpeg(pix, levels, lossless, ratio, threads)
    elif bits == 16 and comps == 3:
        cs = _encode_imagecodecs(pix, levels, lossless, ratio, threads)
    else:
        cs = _encode_pillow(pix, levels, lossless, ratio)
    return _wrap(cs, h, w, comps, bits, xmp=xmp, exif=exif, iptc=iptc, dpi=dpi)


def encoder() -> str:
    """Which codestream writer :func:`encode` uses here (for a report row)."""
    lib = _openjpeg()
    if lib is not None:
        return f"OpenJPEG {lib.opj_version().decode()} tile by tile (Pillow's libopenjp2)"
    return "Pillow (8-bit, 16-bit grey in strips) / imagecodecs (16-bit RGB, one tile)"


def _max_levels(w: int, h: int) -> int:
    # OpenJPEG wants each tile (or the image, if smaller) at least 2**levels on its short side... and stops
    # at 1 px; keep every level of the smallest full tile at least 1 px.
    side = min(min(w, TILE), min(h, TILE))
    return max(0, side.bit_length() - 1)


def _encode_pillow(pix: np.ndarray, levels: int, lossless: bool, ratio: float | None) -> bytes:
    from PIL import Image

    # Pillow 13 infers the mode (RGB, L, I;16) from the dtype and refuses a mode argument that restates it.
    im = Image.fromarray(np.ascontiguousarray(pix.astype("<u2", copy=False) if pix.dtype == np.uint16 else pix))
    if im.mode not in ("RGB", "L", "I;16"):
        raise ValueError(f"Pillow made a {im.mode} image of {pix.shape} {pix.dtype}")
    h, w = pix.shape[:2]
    buf = io.BytesIO()
    opts = dict(
        no_jp2=True, tile_size=(min(w, TILE), min(h, TILE)), progression="RPCL", num_resolutions=levels + 1,
        irreversible=not lossless, mct=1 if pix.ndim == 3 else 0, plt=True,
    )
    if ratio is not None:
        opts.update(quality_mode="rates", quality_layers=[ratio])
    if pix.dtype == np.uint16:
        # Pillow 13 packs an I;16 tile from byte x0 of each row, not 2*x0: every tile right of the first
        # column gets the wrong pixels, silently. Full-width strips (x0 always 0) are encoded right.
        opts["tile_size"] = (w, min(h, TILE))
    im.save(buf, "JPEG2000", **opts)
    return buf.getvalue()


def _encode_imagecodecs(pix, levels: int, lossless: bool, ratio: float | None, threads: int) -> bytes:
    import imagecodecs

    def enc(img, psnr: float) -> bytes:
        return bytes(imagecodecs.jpeg2k_encode(
            img, level=psnr, codecformat=imagecodecs.JPEG2K.CODEC.J2K,
            colorspace=imagecodecs.JPEG2K.CLRSPC.SRGB, resolutions=levels + 1, reversible=lossless, mct=True,
            numthreads=max(1, threads),
        ))

    if lossless:
        return enc(pix, 0)
    # imagecodecs' lossy knob is a target PSNR (dB), not a rate: find the PSNR that gives the rate on a centre
    # crop of at most 512² (a few small encodes), then encode the whole image once at it. The rate is hit
    # approximately (as well as the crop stands for the image).
    h, w = pix.shape[:2]
    side = TILE // 2
    crop = pix[max(0, (h - side) // 2):][:side, max(0, (w - side) // 2):][:, :side]
    crop = np.ascontiguousarray(crop)
    want = crop.shape[0] * crop.shape[1] * 48 / ratio / 8
    lo, hi = 30.0, 100.0
    for _ in range(6):
        mid = (lo + hi) / 2
        if len(enc(crop, mid)) > want:
            hi = mid
        else:
            lo = mid
    return enc(pix, lo)


# --- OpenJPEG's own encoder, through ctypes, on the libopenjp2 that Pillow's wheel bundles (no new dependency).
# Why: it is the one writer here with all of tiles, RPCL, PLT and TLM at 8 and 16 bits, takes threads, and is fed
# tile by tile (opj_write_tile), so only one tile is ever in OpenJPEG's int32 planes: Pillow and imagecodecs copy
# the whole image into them first. The structs are OpenJPEG 2.5's openjpeg.h; any other version, or no library,
# leaves encode() on Pillow/imagecodecs.

_MAXRLVLS, _PATH_LEN, _JPWL_SPECS = 33, 4096, 16


@cache
def _openjpeg():
    import ctypes as C
    import glob
    import os

    try:
        import PIL

        site = os.path.dirname(os.path.dirname(PIL.__file__))
        paths = sorted(glob.glob(os.path.join(site, "pillow.libs", "libopenjp2*.so*")))
        paths += sorted(glob.glob(os.path.join(os.path.dirname(PIL.__file__), ".dylibs", "libopenjp2*.dylib")))
        if not paths:
            return None
        lib = C.CDLL(paths[0])
        lib.opj_version.restype = C.c_char_p
        if not lib.opj_version().startswith(b"2.5.") or not hasattr(lib, "opj_encoder_set_extra_options"):
            return None
    except (OSError, AttributeError, ImportError):
        return None
    u32, i32, vp = C.c_uint32, C.c_int, C.c_void_p

    class Poc(C.Structure):
        _fields_ = [(n, u32) for n in "resno0 compno0 layno1 resno1 compno1 layno0 precno0 precno1".split()] + [
            ("prg1", i32), ("prg", i32), ("progorder", C.c_char * 5), ("tile", u32),
            ("tx0", C.c_int32), ("tx1", C.c_int32), ("ty0", C.c_int32), ("ty1", C.c_int32)] + [
            (n, u32) for n in ("layS resS compS prcS layE resE compE prcE txS txE tyS tyE dx dy "
                               "lay_t res_t comp_t prc_t tx0_t ty0_t").split()]

    class CParams(C.Structure):
        _fields_ = [
            ("tile_size_on", i32), ("cp_tx0", i32), ("cp_ty0", i32), ("cp_tdx", i32), ("cp_tdy", i32),
            ("cp_disto_alloc", i32), ("cp_fixed_alloc", i32), ("cp_fixed_quality", i32), ("cp_matrice", vp),
            ("cp_comment", C.c_char_p), ("csty", i32), ("prog_order", i32), ("POC", Poc * 32), ("numpocs", u32),
            ("tcp_numlayers", i32), ("tcp_rates", C.c_float * 100), ("tcp_distoratio", C.c_float * 100),
            ("numresolution", i32), ("cblockw_init", i32), ("cblockh_init", i32), ("mode", i32),
            ("irreversible", i32), ("roi_compno", i32), ("roi_shift", i32), ("res_spec", i32),
            ("prcw_init", i32 * _MAXRLVLS), ("prch_init", i32 * _MAXRLVLS), ("infile", C.c_char * _PATH_LEN),
            ("outfile", C.c_char * _PATH_LEN), ("index_on", i32), ("index", C.c_char * _PATH_LEN),
            ("image_offset_x0", i32), ("image_offset_y0", i32), ("subsampling_dx", i32), ("subsampling_dy", i32),
            ("decod_format", i32), ("cod_format", i32), ("jpwl_epc_on", i32), ("jpwl_hprot_MH", i32),
            ("jpwl_hprot_TPH_tileno", i32 * _JPWL_SPECS), ("jpwl_hprot_TPH", i32 * _JPWL_SPECS),
            ("jpwl_pprot_tileno", i32 * _JPWL_SPECS), ("jpwl_pprot_packno", i32 * _JPWL_SPECS),
            ("jpwl_pprot", i32 * _JPWL_SPECS), ("jpwl_sens_size", i32), ("jpwl_sens_addr", i32),
            ("jpwl_sens_range", i32), ("jpwl_sens_MH", i32), ("jpwl_sens_TPH_tileno", i32 * _JPWL_SPECS),
            ("jpwl_sens_TPH", i32 * _JPWL_SPECS), ("cp_cinema", i32), ("max_comp_size", i32), ("cp_rsiz", i32),
            ("tp_on", C.c_char), ("tp_flag", C.c_char), ("tcp_mct", C.c_char), ("jpip_on", i32), ("mct_data", vp),
            ("max_cs_size", i32), ("rsiz", C.c_uint16),
        ]

    class CmptParm(C.Structure):
        _fields_ = [(n, u32) for n in "dx dy w h x0 y0 prec bpp sgnd".split()]

    class ImageHead(C.Structure):  # the leading fields of opj_image_t
        _fields_ = [("x0", u32), ("y0", u32), ("x1", u32), ("y1", u32), ("numcomps", u32), ("color_space", i32)]

    lib.MSG = C.CFUNCTYPE(None, C.c_char_p, vp)
    lib.WRITE = C.CFUNCTYPE(C.c_size_t, vp, C.c_size_t, vp)
    lib.SKIP = C.CFUNCTYPE(C.c_int64, C.c_int64, vp)
    lib.SEEK = C.CFUNCTYPE(i32, C.c_int64, vp)
    lib.CParams, lib.CmptParm, lib.ImageHead = CParams, CmptParm, ImageHead
    sig = {
        "opj_set_default_encoder_parameters": (None, [C.POINTER(CParams)]),
        "opj_create_compress": (vp, [i32]),
        "opj_image_tile_create": (vp, [u32, C.POINTER(CmptParm), i32]),
        "opj_stream_create": (vp, [C.c_size_t, i32]),
        "opj_stream_set_write_function": (None, [vp, lib.WRITE]),
        "opj_stream_set_skip_function": (None, [vp, lib.SKIP]),
        "opj_stream_set_seek_function": (None, [vp, lib.SEEK]),
        "opj_set_error_handler": (i32, [vp, lib.MSG, vp]),
        "opj_setup_encoder": (i32, [vp, C.POINTER(CParams), vp]),
        "opj_encoder_set_extra_options": (i32, [vp, C.POINTER(C.c_char_p)]),
        "opj_codec_set_threads": (i32, [vp, i32]),
        "opj_start_compress": (i32, [vp, vp, vp]),
        "opj_write_tile": (i32, [vp, u32, vp, u32, vp]),
        "opj_end_compress": (i32, [vp, vp]),
        "opj_stream_destroy": (None, [vp]),
        "opj_destroy_codec": (None, [vp]),
        "opj_image_destroy": (None, [vp]),
    }
    for name, (res, args) in sig.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return lib


def _encode_openjpeg(pix: np.ndarray, levels: int, lossless: bool, ratio: float | None, threads: int) -> bytes:
    import ctypes as C

    lib = _openjpeg()
    h, w = pix.shape[:2]
    nc = 1 if pix.ndim == 2 else 3
    prec = 8 * pix.dtype.itemsize
    p = lib.CParams()
    lib.opj_set_default_encoder_parameters(C.byref(p))
    p.tile_size_on, p.cp_tdx, p.cp_tdy = 1, min(w, TILE), min(h, TILE)
    p.prog_order = 2  # RPCL
    p.numresolution = levels + 1
    p.tcp_numlayers, p.cp_disto_alloc = 1, 1
    p.tcp_rates[0] = 0.0 if lossless else float(ratio)  # 0: lossless; else a compression ratio
    p.irreversible = 0 if lossless else 1
    p.tcp_mct = 1 if nc == 3 else 0  # RCT (5-3) / ICT (9-7): far smaller RGB files
    comps = (lib.CmptParm * nc)(*[lib.CmptParm(1, 1, w, h, 0, 0, prec, prec, 0) for _ in range(nc)])
    image = codec = stream = None
    errors: list[str] = []
    out = io.BytesIO()

    def write(buf, n, _):
        out.write(C.string_at(buf, n))
        return n

    def skip(n, _):
        out.seek(n, 1)
        return n

    def seek(n, _):
        out.seek(n)
        return 1

    callbacks = (lib.MSG(lambda m, _: errors.append(m.decode("latin-1").strip())), lib.WRITE(write),
                 lib.SKIP(skip), lib.SEEK(seek))
    try:
        image = lib.opj_image_tile_create(nc, comps, 1 if nc == 3 else 2)  # sRGB / grey; no pixel buffers
        if not image:
            raise MemoryError("opj_image_tile_create failed")
        head = lib.ImageHead.from_address(image)
        head.x0, head.y0, head.x1, head.y1 = 0, 0, w, h
        codec = lib.opj_create_compress(0)  # a raw codestream: the boxes are ours
        lib.opj_set_error_handler(codec, callbacks[0], None)
        stream = lib.opj_stream_create(1 << 20, 0)
        lib.opj_stream_set_write_function(stream, callbacks[1])
        lib.opj_stream_set_skip_function(stream, callbacks[2])
        lib.opj_stream_set_seek_function(stream, callbacks[3])
        options = (C.c_char_p * 3)(b"PLT=YES", b"TLM=YES", None)
        ok = (lib.opj_setup_encoder(codec, C.byref(p), image) and lib.opj_encoder_set_extra_options(codec, options)
              and (threads <= 1 or lib.opj_codec_set_threads(codec, int(threads)))
              and lib.opj_start_compress(codec, image, stream))
        tile = 0
        for y0 in range(0, h, p.cp_tdy) if ok else ():
            for x0 in range(0, w, p.cp_tdx):
                block = pix[y0:y0 + p.cp_tdy, x0:x0 + p.cp_tdx]
                # opj_write_tile takes one tile, component planes one after another, native-endian samples
                planar = np.ascontiguousarray(np.moveaxis(block, -1, 0) if nc > 1 else block)
                if not lib.opj_write_tile(codec, tile, planar.ctypes.data, planar.nbytes, stream):
                    ok = False
                    break
                tile += 1
            if not ok:
                break
        if not (ok and lib.opj_end_compress(codec, stream)):
            raise RuntimeError(f"OpenJPEG could not encode: {'; '.join(errors[:3]) or 'no message'}")
    finally:
        if stream:
            lib.opj_stream_destroy(stream)
        if codec:
            lib.opj_destroy_codec(codec)
        if image:
            lib.opj_image_destroy(image)
    return out.getvalue()


def _box(tbox: bytes, *payload: bytes) -> bytes:
    n = 8 + sum(len(x) for x in payload)
    if n > 0xFFFFFFFF:
        return b"".join((struct.pack(">I4sQ", 1, tbox, n + 8), *payload))
    return b"".join((struct.pack(">I4s", n, tbox), *payload))


def _resc(dpi: tuple[float, float]) -> bytes:
    def term(v: float) -> tuple[int, int, int]:
        ppm = float(v) / 0.0254
        best = None
        for e in range(-4, 6):
            f = Fraction(ppm / 10.0**e).limit_denominator(65535)
            if 0 < f.numerator <= 65535:
                err = abs(f.numerator / f.denominator * 10.0**e - ppm)
                if best is None or err < best[0]:
                    best = (err, f.numerator, f.denominator, e)
        if best is None:
            raise ValueError(f"resolution {v} dpi cannot be written in a res box")
        return best[1], best[2], best[3]

    hn, hd, he = term(dpi[0])
    vn, vd, ve = term(dpi[1])
    return _box(b"resc", struct.pack(">HHHHbb", vn, vd, hn, hd, ve, he))


def _wrap(cs: bytes, h: int, w: int, comps: int, bits: int, *, xmp, exif, iptc, dpi) -> bytes:
    """The boxes around a codestream, in the order JP2 readers expect; jp2c last so that a server reading
    the head of the file finds the metadata first."""
    ihdr = _box(b"ihdr", struct.pack(">IIHBBBB", h, w, comps, bits - 1, 7, 0, 0))
    colr = _box(b"colr", struct.pack(">BBBI", 1, 0, 0, _SRGB if comps == 3 else _GREY))
    jp2h = [ihdr, colr]
    if dpi is not None:
        jp2h.append(_box(b"res ", _resc(dpi)))
    parts = [JP2_SIGNATURE, _box(b"ftyp", b"jp2 ", struct.pack(">I", 0), b"jp2 "), _box(b"jp2h", *jp2h)]
    meta = []
    if xmp is not None:
        meta.append(_box(b"uuid", XMP_UUID, xmp))
    if exif is not None:
        body = exif[len(_EXIF_PREFIX):] if exif.startswith(_EXIF_PREFIX) else exif
        meta.append(_box(b"uuid", EXIF_UUID, body))
    if iptc is not None:
        meta.append(_box(b"uuid", IPTC_UUID, iptc))
    # Pillow's JP2 reader (OpenJPEG fed through its own stream) fails on a file with more than about 1 MB of
    # boxes before the codestream ("broken data stream"): metadata that large goes after jp2c, where JP2 allows
    # uuid boxes too; the usual few kB stay in front, for a server reading the head of the file
    if sum(map(len, meta)) <= _META_FIRST_BYTES:
        return b"".join([*parts, *meta, _box(b"jp2c", cs)])
    return b"".join([*parts, _box(b"jp2c", cs), *meta])


_META_FIRST_BYTES = 512 << 10
