"""Image metadata carried from an input to its colorized output, and the provenance every output gets.

Pure stdlib + NumPy + Pillow (no Ray, no torch), like :mod:`raycolor.core.images`, so it runs anywhere cheaply.

Why: an archive's value is in its captions, credits, dates and places as much as in its pixels, and a
colorized copy must say a model made its colour. So the decoder reads the input's metadata once
(:func:`read`, into a :class:`Metadata` that :meth:`Metadata.pack` makes small enough to travel next to
the pixels through Ray's object store), and :func:`prepare` makes what an output carries of it, with what is
no longer true fixed, plus provenance (a :class:`Prepared`), and a :class:`Report` of what was kept, added,
changed and dropped (the manifest's ``metadata`` column). Each format's writer in :mod:`raycolor.core.formats`
puts the prepared metadata where its container says.

What is carried (``keep=True``):

* **EXIF**: every tag of IFD0, the Exif IFD, GPS and Interop, with its original type and bytes (a
  minimal TIFF directory codec here, not Pillow's ``Exif``, which re-types tags and writes non-ASCII
  text as ``?``). Fixed: Orientation -> 1 (pixels are upright), ImageWidth/ImageLength removed (the
  container says the size), PixelX/YDimension -> the output's size, ColorSpace -> 1 (sRGB), Gamma
  and CompressedBitsPerPixel removed, Interop index -> R98, resolution -> ``dpi``, Software ->
  provenance, the thumbnail (IFD1) dropped. A MakerNote is kept only in the vendor formats whose
  offsets are relative to the MakerNote itself; any other MakerNote points into the original EXIF
  block, so moving it would corrupt it, and it is dropped with a note.
* **IPTC-IIM**: the raw datasets, copied verbatim (no decoding, so an odd charset survives).
* **XMP**: the packet, parsed with ElementTree and re-serialised with its own prefixes;
  tiff:Orientation -> 1, dimensions updated where present.
* **Resolution** (``dpi``).

Provenance, always (also with ``keep=False``, which otherwise writes none of the above): XMP
``Iptc4xmpExt:DigitalSourceType`` = :data:`DIGITAL_SOURCE_TYPE`, ``xmp:CreatorTool`` = the software,
the IPTC 2025.1 AI properties ``Iptc4xmpExt:AISystemUsed`` (the software) and
``Iptc4xmpExt:AISystemVersionUsed`` (the model id), EXIF Software; and an sRGB ICC profile.

Where each group goes in each format: :mod:`raycolor.core.formats` (one module per format).

Bad metadata never costs an image: a group that cannot be read or written is dropped and the report
names it and says why.

Hostile metadata costs no more than its size: every step here is linear in its input, and each group has a
byte cap (the constants below, defined once here and quoted in docs/colorizing.md). What goes over is
dropped with a note, which the output's report carries; the image is still decoded and written.

* :data:`MAX_EXIF_VALUE` (1 MiB): one EXIF value. The largest real ones (MakerNotes, PrintIM) are tens of kB.
* :data:`MAX_EXIF_TOTAL` (2 MiB): all EXIF values together, counted as parsed: entries that overlap or
  point at one shared value count once each, so a 64 kB block of aliases cannot become 64 MB in an output
  (without it, 4 directories x 4096 entries x a 16 MiB value was possible).
* :data:`MAX_IRB_BYTES` (16 MiB): a TIFF's Photoshop image-resource block, read only for its IPTC.
* :data:`MAX_IPTC_BYTES` (256 kB): the IPTC-IIM datasets (a JPEG's APP13 holds 64 kB).
* :data:`MAX_XMP_BYTES` (2 MiB) and :data:`MAX_XMP_TAGS` (100,000 ``<``): the XMP packet, and its markup. A
  parsed element costs some 300 bytes, so 2 MB of ``<a/>`` was 150 MB and 4 s; a real packet's elements are
  tens of bytes each, so the tag cap bites only on such a packet (or a Photoshop history of that length).
* :data:`MAX_TEXT_CHUNK` (1 MiB, Pillow's own per-chunk limit) and :data:`MAX_TEXT_TOTAL` (8 MiB, under
  Pillow's 64 MiB): a PNG text chunk, inflated, and all of them. Pillow refuses a whole PNG past its
  limits, so :func:`raycolor.core.images.decode` drops such chunks before Pillow sees them.
* :data:`MAX_ICC_BYTES` (16 MiB): an ICC profile (large genuine printer and scanner profiles are a few MB).
* :data:`DPI_RANGE` (1 to 100,000 dpi): a resolution outside it is dropped (why: next to it).

Typed tags raycolor reads or rewrites itself (Orientation, resolutions and their units, ColorSpace, the
pixel dimensions, YCbCrPositioning, the sub-IFD pointers) are normalised to their spec types on reading:
converted where that loses nothing (a SHORT written as a LONG, an integer resolution), otherwise dropped
with a note, so a malformed value is never copied into an output that readers then refuse.
"""

from __future__ import annotations

import io
import json
import re
import struct
import math
import xml.etree.ElementTree as ET
import zlib
from xml.parsers import expat
from dataclasses import dataclass
from fractions import Fraction
from functools import cache
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from raycolor import __version__

__all__ = [
    "DIGITAL_SOURCE_TYPE",
    "DPI_RANGE",
    "MAX_EXIF_TOTAL",
    "MAX_EXIF_VALUE",
    "MAX_ICC_BYTES",
    "MAX_IPTC_BYTES",
    "MAX_IRB_BYTES",
    "MAX_TEXT_CHUNK",
    "MAX_TEXT_TOTAL",
    "MAX_XMP_BYTES",
    "MAX_XMP_TAGS",
    "SOFTWARE",
    "Metadata",
    "Prepared",
    "Provenance",
    "Report",
    "from_groups",
    "orientation",
    "prepare",
    "read",
    "source_bit_depth",
    "srgb_icc",
]

DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"
SOFTWARE = f"raycolor {__version__}"

# The caps of the module docstring.
MAX_EXIF_VALUE = 1 << 20
MAX_EXIF_TOTAL = 2 << 20
MAX_IRB_BYTES = 16 << 20
MAX_IPTC_BYTES = 256 << 10
MAX_XMP_BYTES = 2 << 20
MAX_XMP_TAGS = 100_000
MAX_TEXT_CHUNK = 1 << 20
MAX_TEXT_TOTAL = 8 << 20
MAX_ICC_BYTES = 16 << 20
# Why 1..100,000 dpi: the finest optical scans in an archive (drum and film scanners, microfilm) are near
# 10,000 dpi, an order of magnitude inside; values past it come from a unit mix-up (pixels per metre written
# as per inch) or from garbage, and under 1 dpi from a unit error too. Every container holds the range: JFIF
# (clamped to its 65,535), pHYs (pixels per metre, 32 bits) and an EXIF RATIONAL.
DPI_RANGE = (1.0, 100_000.0)


# --------------------------------------------------------------------------- the carried record


@dataclass(frozen=True)
class Metadata:
    """What an input carries, read once at decode and carried to the encoder.

    ``notes`` are ``(group, reason)`` for each group (or part of one, e.g. ``"exif.GPS"``) dropped or
    changed on reading. A reason starting with ``"converted"`` is a change (the pixels were converted,
    e.g. from Adobe RGB to sRGB); every other note is a drop.
    """

    exif: bytes | None = None  # raw EXIF: TIFF header onwards (no b"Exif\0\0")
    xmp: bytes | None = None  # the XMP packet
    iptc: bytes | None = None  # raw IPTC-IIM datasets (bytes starting 0x1C ...), copied verbatim
    dpi: tuple[float, float] | None = None
    bit_depth: int = 8  # of the source's samples: 8, or 16 for anything wider
    pages: int = 1  # frames/pages in the file (only the first is colorized)
    notes: tuple[tuple[str, str], ...] = ()

    def pack(self) -> bytes:
        """Compact bytes (tag, length, value per field that is set); an empty Metadata packs to ``b""``."""
        fields: list[tuple[bytes, bytes]] = []
        for tag, value in ((b"E", self.exif), (b"X", self.xmp), (b"I", self.iptc)):
            if value is not None:
                fields.append((tag, bytes(value)))
        if self.dpi is not None:
            fields.append((b"D", struct.pack(">dd", *self.dpi)))
        if self.bit_depth != 8:
            fields.append((b"B", struct.pack(">H", self.bit_depth)))
        if self.pages != 1:
            fields.append((b"P", struct.pack(">I", self.pages)))
        if self.notes:
            fields.append((b"N", json.dumps([list(n) for n in self.notes]).encode()))
        if not fields:
            return b""
        return _PACK_MAGIC + b"".join(t + struct.pack(">I", len(v)) + v for t, v in fields)

    @staticmethod
    def unpack(raw: bytes) -> Metadata:
        """Inverse of :meth:`pack`; ``b""`` -> ``Metadata()``."""
        raw = bytes(raw)
        if not raw:
            return Metadata()
        if not raw.startswith(_PACK_MAGIC):
            raise ValueError("not packed raycolor metadata")
        kw: dict[str, Any] = {}
        pos = len(_PACK_MAGIC)
        while pos < len(raw):
            tag, (n,) = raw[pos : pos + 1], struct.unpack(">I", raw[pos + 1 : pos + 5])
            value = raw[pos + 5 : pos + 5 + n]
            if len(value) != n:
                raise ValueError("packed metadata is truncated")
            pos += 5 + n
            if tag == b"E":
                kw["exif"] = value
            elif tag == b"X":
                kw["xmp"] = value
            elif tag == b"I":
                kw["iptc"] = value
            elif tag == b"D":
                kw["dpi"] = struct.unpack(">dd", value)
            elif tag == b"B":
                kw["bit_depth"] = struct.unpack(">H", value)[0]
            elif tag == b"P":
                kw["pages"] = struct.unpack(">I", value)[0]
            elif tag == b"N":
                kw["notes"] = tuple((str(g), str(r)) for g, r in json.loads(value))
        return Metadata(**kw)


_PACK_MAGIC = b"RCM1"


@dataclass(frozen=True)
class Provenance:
    """Who made the colour: written into every output."""

    software: str  # e.g. SOFTWARE, "raycolor 0.1.0"
    model_id: str  # the checkpoint's identity


# --------------------------------------------------------------------------- reading


def read(im: Image.Image) -> Metadata:
    """The metadata of an opened Pillow image (before ``exif_transpose``). Never raises.

    A group that cannot be read is left None with a note. Timing matters for two formats, and
    :func:`raycolor.core.images.decode` gets it right: a TIFF's tags are read from its file, which Pillow
    closes once a TIFF is loaded, so call this before ``load()``; a PNG's chunks after IDAT are only
    read by ``load()``, so call it after (and take :func:`source_bit_depth` before).
    """
    notes: list[tuple[str, str]] = []
    tiff = None
    if im.format == "TIFF":
        tiff = _guard(notes, "exif", lambda: _read_tiff_tags(im))
    exif = _guard(notes, "exif", lambda: _read_exif(im, tiff, notes))
    iptc = _guard(notes, "iptc", lambda: _read_iptc(im, tiff, notes))
    xmp = _guard(notes, "xmp", lambda: _read_xmp(im, notes))
    dpi = _guard(notes, "dpi", lambda: _read_dpi(im, exif, notes))
    return Metadata(
        exif=exif,
        xmp=xmp,
        iptc=iptc,
        dpi=dpi,
        bit_depth=_guard(notes, "bit_depth", lambda: source_bit_depth(im)) or 8,
        pages=_guard(notes, "pages", lambda: max(1, int(getattr(im, "n_frames", 1) or 1))) or 1,
        notes=tuple(notes),
    )


def from_groups(*, exif: bytes | None = None, iptc: bytes | None = None, xmp: bytes | None = None,
                dpi: tuple[float, float] | None = None, bit_depth: int = 8, notes=()) -> Metadata:
    """The metadata of a container raycolor reads itself (JPEG 2000's boxes), from its raw groups: the same caps,
    checks and notes as :func:`read` gives a Pillow image's. Never raises."""
    out: list[tuple[str, str]] = list(notes)
    exif = _guard(out, "exif", lambda: _exif_from_raw(exif, out))
    iptc = _guard(out, "iptc", lambda: _iptc_from_raw(iptc, out))
    xmp = _guard(out, "xmp", lambda: _xmp_from_raw(xmp, out))
    found = _guard(out, "dpi", lambda: dpi or (_exif_dpi(_parse_exif(exif)) if exif else None))
    dpi = _sane_dpi(found, out.append) if found else None
    return Metadata(exif=exif, xmp=xmp, iptc=iptc, dpi=dpi, bit_depth=bit_depth, notes=tuple(out))


def orientation(exif: bytes | None) -> int:
    """The EXIF Orientation (1..8) of an EXIF block (TIFF header onwards); 1 when absent or unreadable."""
    if not exif:
        return 1
    try:
        parsed = _parse_exif(_strip_exif_header(bytes(exif)))
        e = parsed.ifd0.entries.get(274)
        value = _first_int(e.typ, e.data, parsed.bo) if e is not None else 1
    except (ValueError, struct.error):
        return 1
    return value if value in range(1, 9) else 1


def _guard(notes: list[tuple[str, str]], group: str, fn):
    try:
        return fn()
    except MemoryError:
        raise
    except Exception as e:  # one group's trouble must not cost the others (or the image)
        notes.append((group, f"unreadable: {type(e).__name__}: {e}"))
        return None


def _read_exif(im: Image.Image, tiff: _Exif | None, notes: list[tuple[str, str]]) -> bytes | None:
    if tiff is not None:  # a TIFF's own IFD0 is its EXIF: re-packed without the image-structure tags
        notes.extend(tiff.problems)
        if not tiff.ifd0.entries and not tiff.ifd0.children:
            return None
        return _pack_tiff_header(tiff.bo) + _pack_dir(tiff.ifd0, tiff.bo, 8)
    raw = im.info.get("exif")
    if raw is None and isinstance(im.info.get("Raw profile type exif"), str):  # ImageMagick's PNG text form
        raw = _raw_profile(im.info["Raw profile type exif"])
    return _exif_from_raw(raw, notes)


def _exif_from_raw(raw: bytes | None, notes: list[tuple[str, str]]) -> bytes | None:
    if not raw:
        return None
    raw = _strip_exif_header(bytes(raw))
    try:
        parsed = _parse_exif(raw)
    except ValueError as e:
        notes.append(("exif", f"corrupt: {e}"))
        return None
    notes.extend(parsed.problems)
    if parsed.capped or len(raw) > MAX_EXIF_TOTAL:  # what travels with the pixels is what the caps kept
        if not parsed.ifd0.entries and not parsed.ifd0.children:
            return None
        return _exif_bytes(parsed)
    return raw


def _read_tiff_tags(im: Image.Image) -> _Exif | None:
    fp = getattr(im, "fp", None)
    if fp is None:
        raise ValueError("the TIFF's file is closed (read before load())")
    pos = fp.tell()
    try:
        fp.seek(0)
        head = fp.read(4)
        if head not in (b"II*\0", b"MM\0*"):  # BigTIFF: not parsed here
            return None
        return _parse_tiff(_FileView(fp), skip=_NOT_CARRIED_IFD0 - _IPTC_TAGS)
    finally:
        fp.seek(pos)


def _read_iptc(im: Image.Image, tiff: _Exif | None, notes: list[tuple[str, str]]) -> bytes | None:
    raw: bytes | None = None
    if tiff is not None:
        for tag in (0x83BB, 0x8649):  # IPTC-NAA, then Photoshop's image resources
            entry = tiff.iptc.get(tag)
            if entry is not None:
                raw = entry.data if tag == 0x83BB else _irb_resource(entry.data, 0x0404)
                if raw:
                    break
    elif isinstance(im.info.get("photoshop"), dict):  # JPEG APP13, already split by Pillow
        raw = im.info["photoshop"].get(0x0404)
    else:
        for key in ("Raw profile type iptc", "Raw profile type 8bim"):
            if isinstance(im.info.get(key), str):
                raw = _raw_profile(im.info[key])
                if raw.startswith(b"8BIM"):
                    raw = _irb_resource(raw, 0x0404)
                break
    return _iptc_from_raw(raw, notes)


def _iptc_from_raw(raw: bytes | None, notes: list[tuple[str, str]]) -> bytes | None:
    if not raw:
        return None
    if len(raw) > MAX_IPTC_BYTES:
        notes.append(("iptc", f"dropped: {len(raw)} bytes exceed the IPTC cap of {MAX_IPTC_BYTES}"))
        return None
    end, problem = _iim_extent(bytes(raw))
    if end == 0:
        notes.append(("iptc", f"corrupt: {problem or 'no datasets'}"))
        return None
    if problem:
        notes.append(("iptc.tail", f"{len(raw) - end} bytes after the last whole dataset dropped: {problem}"))
    return bytes(raw[:end])


def _read_xmp(im: Image.Image, notes: list[tuple[str, str]]) -> bytes | None:
    xmp = im.info.get("xmp")
    if xmp is None and im.format == "PNG":
        xmp = im.info.get("XML:com.adobe.xmp")
    return _xmp_from_raw(xmp, notes)


def _xmp_from_raw(xmp: bytes | str | None, notes: list[tuple[str, str]]) -> bytes | None:
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8")
    if xmp and len(xmp) > MAX_XMP_BYTES:
        notes.append(("xmp", f"dropped: a packet of {len(xmp)} bytes exceeds the XMP cap of {MAX_XMP_BYTES}"))
        return None
    return bytes(xmp) if xmp else None


def _read_dpi(im: Image.Image, exif: bytes | None, notes: list[tuple[str, str]]) -> tuple[float, float] | None:
    dpi = im.info.get("dpi")
    if im.format in ("JPEG", "MPO") and im.info.get("jfif_unit") not in (1, 2):
        dpi = None  # not JFIF's: Pillow's guess from EXIF, 72 dpi when EXIF has none; EXIF is read below
    dpi = dpi or (_exif_dpi(_parse_exif(exif)) if exif else None)
    if not dpi:
        return None
    return _sane_dpi(dpi, notes.append)


def _sane_dpi(dpi, note) -> tuple[float, float] | None:
    """``dpi`` as two floats inside DPI_RANGE, or None after ``note(("dpi", reason))``."""
    x, y = (float(v) for v in dpi)
    lo, hi = DPI_RANGE
    for v in (x, y):
        if not (math.isfinite(v) and lo <= v <= hi):
            note(("dpi", f"dropped: {v:g} dpi is outside {lo:g}..{hi:g}"))
            return None
    return (x, y)


def _exif_dpi(parsed: _Exif) -> tuple[float, float] | None:
    """EXIF resolution, for containers without a density field of their own (PNG without pHYs, WebP)."""
    e, bo = parsed.ifd0.entries, parsed.bo
    unit = e.get(296)
    per_inch = {2: 1.0, 3: 2.54}.get(_first_int(unit.typ, unit.data, bo) if unit else 2)
    if per_inch is None or 282 not in e or 283 not in e or e[282].typ != 5 or e[283].typ != 5:
        return None
    x, y = (struct.unpack(bo + "II", e[t].data[:8]) for t in (282, 283))
    if not (x[1] and y[1]):
        return None
    return (x[0] / x[1] * per_inch, y[0] / y[1] * per_inch)


def source_bit_depth(im: Image.Image) -> int:
    """8, or 16 when the source's samples are wider than 8 bits. Call it before ``load()`` for a PNG:
    Pillow forgets a 48-bit PNG's raw mode (and its file) once the pixels are loaded."""
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        return 16
    if im.format == "TIFF":
        bits = im.tag_v2.get(258)
        bits = bits if isinstance(bits, tuple) else (bits or 8,)
        return 16 if max(int(b) for b in bits) > 8 else 8
    tile = getattr(im, "tile", None)
    if tile:  # before load the raw mode says, e.g. "RGB;16B" for a 48-bit PNG
        args = tile[0].args
        rawmode = args if isinstance(args, str) else (args[0] if args else "")
        return 16 if ";16" in str(rawmode) else 8
    return 8


# --------------------------------------------------------------------------- TIFF directories (EXIF is one)


class _Entry(NamedTuple):
    typ: int
    count: int
    data: bytes  # the value's bytes in the block's byte order, copied verbatim


@dataclass
class _Dir:
    entries: dict[int, _Entry]
    children: dict[int, _Dir]  # sub-IFD pointer tag -> directory


@dataclass
class _Exif:
    bo: str  # "<" or ">"
    ifd0: _Dir
    has_ifd1: bool  # a thumbnail directory follows IFD0
    problems: list[tuple[str, str]]
    iptc: dict[int, _Entry]  # IPTC-NAA / Photoshop tags found in a TIFF's IFD0
    capped: bool = False  # a value was dropped over a byte cap


_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 129: 1}
_EXIF_IFD, _GPS_IFD, _INTEROP_IFD = 0x8769, 0x8825, 0xA005
_DIR_NAMES = {_EXIF_IFD: "ExifIFD", _GPS_IFD: "GPS", _INTEROP_IFD: "InteropIFD"}
_CHILD_TAGS = {"IFD0": (_EXIF_IFD, _GPS_IFD), "ExifIFD": (_INTEROP_IFD,)}
_IPTC_TAGS = frozenset({0x83BB, 0x8649})
# IFD0 tags never carried: a file's storage layout, colour descriptions the sRGB output contradicts,
# and the blobs carried as their own groups (XMP, IPTC, ICC) or not at all (Photoshop layers).
_NOT_CARRIED_IFD0 = frozenset(
    {254, 255, 256, 257, 258, 259, 262, 263, 264, 265, 266, 273, 277, 278, 279, 280, 281, 284, 290, 291}
    | {292, 293, 301, 317, 318, 319, 320, 321, 322, 323, 324, 325, 330, 332, 338, 339, 340, 341, 347}
    | set(range(512, 522))
    | {700, 0x83BB, 0x8649, 0x8773, 37724, 32995, 32996, 32997, 32998}
)
_MAX_ENTRIES = 4096
_TYPE_NAMES = {1: "BYTE", 2: "ASCII", 3: "SHORT", 4: "LONG", 5: "RATIONAL", 6: "SBYTE", 7: "UNDEFINED", 8: "SSHORT",
               9: "SLONG", 10: "SRATIONAL", 11: "FLOAT", 12: "DOUBLE", 13: "IFD", 129: "UTF-8"}
_INT_TYPES = {1: "B", 3: "H", 4: "I", 13: "I", 6: "b", 8: "h", 9: "i"}
_POINTER_TAGS = frozenset({_EXIF_IFD, _GPS_IFD, _INTEROP_IFD})
# The typed tags raycolor reads or rewrites itself, per directory: tag -> (name, the spec's types, count). Every
# one is a single value; a value of another type is converted when nothing is lost, else dropped (_normalise).
_TYPED_TAGS: dict[str, dict[int, tuple[str, tuple[int, ...], int]]] = {
    "IFD0": {
        274: ("Orientation", (3,), 1),
        282: ("XResolution", (5,), 1),
        283: ("YResolution", (5,), 1),
        296: ("ResolutionUnit", (3,), 1),
        531: ("YCbCrPositioning", (3,), 1),
    },
    "ExifIFD": {
        0xA001: ("ColorSpace", (3,), 1),
        0xA002: ("PixelXDimension", (3, 4), 1),
        0xA003: ("PixelYDimension", (3, 4), 1),
        0xA20E: ("FocalPlaneXResolution", (5,), 1),
        0xA20F: ("FocalPlaneYResolution", (5,), 1),
        0xA210: ("FocalPlaneResolutionUnit", (3,), 1),
    },
}
_U32 = (1 << 32) - 1


class _FileView:
    """Random access over a file object (a TIFF's file) or bytes (an EXIF block)."""

    def __init__(self, src) -> None:
        self._fp = io.BytesIO(src) if isinstance(src, (bytes, bytearray, memoryview)) else src

    def at(self, offset: int, n: int) -> bytes:
        self._fp.seek(offset)
        return self._fp.read(n)


def _strip_exif_header(raw: bytes) -> bytes:
    n = 0
    while raw.startswith(b"Exif\0\0", n):  # one slice at the end: a slice per header is quadratic in a run of them
        n += 6
    return raw[n:] if n else raw


def _parse_exif(raw: bytes) -> _Exif:
    return _parse_tiff(_FileView(raw), skip=_NOT_CARRIED_IFD0)


class _Walk:
    """One parse's state: directories seen (loops), the bytes read so far (the total cap), what was noted."""

    def __init__(self, skip: frozenset[int]) -> None:
        self.skip = skip
        self.seen: set[int] = set()
        self.total = 0
        self.capped = False
        self.problems: list[tuple[str, str]] = []


def _parse_tiff(view: _FileView, *, skip: frozenset[int]) -> _Exif:
    """Parse IFD0 and its Exif/GPS/Interop sub-IFDs; raises ValueError when IFD0 itself is unreadable."""
    head = view.at(0, 8)
    bo = {b"II*\0": "<", b"MM\0*": ">"}.get(head[:4])
    if bo is None or len(head) < 8:
        raise ValueError(f"not a TIFF header ({head[:8]!r})")
    walk = _Walk(skip)
    (offset,) = struct.unpack(bo + "I", head[4:])
    ifd0, nxt = _parse_dir(view, bo, offset, "IFD0", walk)
    iptc = {t: ifd0.entries.pop(t) for t in _IPTC_TAGS if t in ifd0.entries}
    _drop_bad_makernote(ifd0, walk.problems)
    return _Exif(bo, ifd0, nxt != 0, walk.problems, iptc, walk.capped)


def _few(items: list[str], n: int = 4) -> str:
    """A list for a note, bounded: a hostile directory has thousands of entries."""
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def _parse_dir(view, bo, offset, name, walk: _Walk) -> tuple[_Dir, int]:
    if offset < 8 or offset in walk.seen:
        raise ValueError(f"{name} offset {offset} is invalid or loops")
    walk.seen.add(offset)
    head = view.at(offset, 2)
    if len(head) < 2:
        raise ValueError(f"{name} at offset {offset} is past the end")
    (n,) = struct.unpack(bo + "H", head)
    if n > _MAX_ENTRIES:
        raise ValueError(f"{name} claims {n} entries")
    table = view.at(offset + 2, 12 * n + 4)
    entries: dict[int, _Entry] = {}
    children: dict[int, _Dir] = {}
    lost: list[str] = []
    capped: dict[str, list[str]] = {"value": [], "total": []}
    for i in range(n):
        row = table[12 * i : 12 * i + 12]
        if len(row) < 12:
            lost.append(f"{n - i} entries")
            break
        tag, typ, count, value = struct.unpack(bo + "HHI4s", row)
        if tag in walk.skip and name == "IFD0":
            continue
        k = len(capped["value"]) + len(capped["total"])
        data = _entry_data(view, bo, name, tag, typ, count, value, walk, capped)
        if data is None:
            if len(capped["value"]) + len(capped["total"]) == k:
                lost.append(f"0x{tag:04X}")
        elif tag in _CHILD_TAGS.get(name, ()):
            child = _DIR_NAMES[tag]
            ptr = _first_int(typ, data, bo) if count == 1 and typ in (3, 4, 13) else None
            if ptr is None:
                what = f"{_TYPE_NAMES.get(typ, typ)} x {count}"
                walk.problems.append((f"exif.{child}", f"dropped: its pointer is {what}"))
                continue
            try:
                children[tag], _ = _parse_dir(view, bo, ptr, child, walk)
            except (ValueError, struct.error) as e:
                walk.problems.append((f"exif.{child}", f"unreadable: {e}"))
        elif tag in _POINTER_TAGS:  # a sub-IFD pointer out of place: its offset means nothing once moved
            walk.problems.append((f"exif.{name}", f"dropped: a stray {_DIR_NAMES[tag]} pointer"))
        else:
            entry = _normalise(name, tag, _Entry(typ, count, data), bo, walk.problems)
            if entry is not None:
                entries[tag] = entry
    if lost:
        walk.problems.append((f"exif.{name}", f"truncated or corrupt: {_few(lost)} unreadable, the rest kept"))
    if capped["value"] or capped["total"]:
        walk.capped = True
        over = [f"{len(capped['value'])} over the per-value cap ({_few(capped['value'])})"] if capped["value"] else []
        if capped["total"]:
            over.append(f"{len(capped['total'])} past the total of {MAX_EXIF_TOTAL} bytes ({_few(capped['total'])})")
        walk.problems.append((f"exif.{name}", f"values dropped over the byte caps: {'; '.join(over)}"))
    nxt = struct.unpack(bo + "I", table[12 * n : 12 * n + 4])[0] if len(table) >= 12 * n + 4 else 0
    return _Dir(entries, children), nxt


def _entry_data(view, bo, name, tag, typ, count, value, walk: _Walk, capped: dict[str, list[str]]) -> bytes | None:
    """The value's bytes; None when unreadable, or over a cap (then also listed in ``capped``).

    The caps are checked before anything is read, so a value that claims gigabytes costs nothing. Every value
    counts towards the total, however many entries share its bytes.
    """
    size = _SIZES.get(typ)
    if size is None:
        return None
    n = count * size
    iptc = name == "IFD0" and tag in _IPTC_TAGS  # a TIFF's own IPTC / Photoshop block (EXIF's are skipped)
    if n > (MAX_IRB_BYTES if iptc else MAX_EXIF_VALUE):
        capped["value"].append(f"0x{tag:04X}: {n} bytes")
        return None
    if not iptc:
        if walk.total + n > MAX_EXIF_TOTAL:
            capped["total"].append(f"0x{tag:04X}")
            return None
        walk.total += n
    if n <= 4:
        return value[:n]
    (ptr,) = struct.unpack(bo + "I", value)
    data = view.at(ptr, n)
    return data if len(data) == n else None


def _normalise(dirname: str, tag: int, e: _Entry, bo: str, problems: list[tuple[str, str]]) -> _Entry | None:
    """A typed tag in its spec type (see _TYPED_TAGS): as it is, converted losslessly, or None with a note."""
    spec = _TYPED_TAGS.get(dirname, {}).get(tag)
    if spec is None:
        return e
    name, types, count = spec
    if e.typ in types and e.count == count:
        if e.typ != 5 or _positive_rational(e.data, bo):
            return e
        problems.append((f"exif.{name}", "dropped: not a positive number"))
        return None
    have = f"{_TYPE_NAMES.get(e.typ, f'type {e.typ}')} x {e.count}"
    want = f"{' or '.join(_TYPE_NAMES[t] for t in types)} x {count}"
    value = None
    if e.count == 1 and e.typ in _INT_TYPES:
        value = _first_int(e.typ, e.data, bo)
    elif e.count == 1 and e.typ == 10 and len(e.data) == 8:  # a positive SRATIONAL is the same RATIONAL
        num, den = struct.unpack(bo + "ii", e.data)
        if num > 0 and den > 0:
            problems.append((f"exif.{name}", f"converted from {have} to {want}"))
            return _Entry(5, 1, struct.pack(bo + "II", num, den))
    elif e.count == 1 and e.typ in (11, 12) and len(e.data) == _SIZES[e.typ]:  # a float, when exactly a ratio
        (v,) = struct.unpack(bo + ("f" if e.typ == 11 else "d"), e.data)
        exact = Fraction(v) if math.isfinite(v) and v > 0 else None
        if exact is not None and exact.numerator <= _U32 and exact.denominator <= _U32:
            if 5 in types:
                problems.append((f"exif.{name}", f"converted from {have} to {want}"))
                return _Entry(5, 1, struct.pack(bo + "II", exact.numerator, exact.denominator))
            if exact.denominator == 1:
                value = exact.numerator
    if value is not None:
        if 5 in types and 0 < value <= _U32:
            problems.append((f"exif.{name}", f"converted from {have} to {want}"))
            return _Entry(5, 1, struct.pack(bo + "II", value, 1))
        if 3 in types and 0 <= value <= 0xFFFF:
            problems.append((f"exif.{name}", f"converted from {have} to {want}"))
            return _shorts(bo, value)
        if 4 in types and 0 <= value <= _U32:
            problems.append((f"exif.{name}", f"converted from {have} to {want}"))
            return _longs(bo, value)
    problems.append((f"exif.{name}", f"dropped: {have}, not the spec's {want}, and no lossless conversion"))
    return None


def _positive_rational(data: bytes, bo: str) -> bool:
    num, den = struct.unpack(bo + "II", data[:8]) if len(data) >= 8 else (0, 0)
    return num > 0 and den > 0


def _first_int(typ: int, data: bytes, bo: str) -> int | None:
    fmt = _INT_TYPES.get(typ)
    if fmt is None or len(data) < struct.calcsize(fmt):
        return None
    return struct.unpack_from(bo + fmt, data)[0]


def _pack_tiff_header(bo: str) -> bytes:
    return (b"II*\0" if bo == "<" else b"MM\0*") + struct.pack(bo + "I", 8)


def _pack_dir(d: _Dir, bo: str, offset: int) -> bytes:
    """One directory at ``offset`` (from the TIFF header), its out-of-line values and sub-IFDs after it."""
    tags = sorted(set(d.entries) | set(d.children))
    pos = offset + 2 + 12 * len(tags) + 4
    rows, blobs = [struct.pack(bo + "H", len(tags))], []
    where: dict[int, int] = {}
    for tag in tags:  # values first, then sub-directories, each word-aligned
        e = d.entries.get(tag)
        if e is not None and len(e.data) > 4:
            where[tag] = pos
            blobs.append(e.data + b"\0" * (len(e.data) & 1))
            pos += len(blobs[-1])
    for tag in tags:
        if tag in d.children:
            where[tag] = pos
            sub = _pack_dir(d.children[tag], bo, pos)
            blobs.append(sub + b"\0" * (len(sub) & 1))
            pos += len(blobs[-1])
    for tag in tags:
        if tag in d.children:
            rows.append(struct.pack(bo + "HHII", tag, 4, 1, where[tag]))
            continue
        e = d.entries[tag]
        value = struct.pack(bo + "I", where[tag]) if tag in where else e.data.ljust(4, b"\0")
        rows.append(struct.pack(bo + "HHI", tag, e.typ, e.count) + value)
    rows.append(struct.pack(bo + "I", 0))  # no next IFD: the thumbnail (IFD1) is never carried
    return b"".join(rows + blobs)


def _ascii(text: str) -> _Entry:
    data = text.encode("utf-8", "replace") + b"\0"
    return _Entry(2, len(data), data)


def _shorts(bo: str, *values: int) -> _Entry:
    return _Entry(3, len(values), struct.pack(f"{bo}{len(values)}H", *values))


def _longs(bo: str, *values: int) -> _Entry:
    return _Entry(4, len(values), struct.pack(f"{bo}{len(values)}I", *values))


def _rationals(bo: str, *values: float) -> _Entry:
    return _Entry(5, len(values), b"".join(struct.pack(bo + "II", *_rational(v)) for v in values))


def _rational(v: float) -> tuple[int, int]:
    """The nearest RATIONAL, both terms in 32 bits: values past what one holds are clamped (0 .. 2**32 - 1),
    and the denominator is bounded so the numerator cannot overflow (it did for ~889k dpi)."""
    v = float(v)
    if not math.isfinite(v) or v <= 0:
        return (0, 1)
    if v >= _U32:
        return (_U32, 1)
    f = Fraction(v).limit_denominator(max(1, min(1 << 16, int(_U32 // max(v, 1.0)))))
    if f.numerator > _U32 or f.denominator > _U32:  # cannot happen after the bound above; never write one
        return (min(_U32, round(v)), 1)
    return (f.numerator, f.denominator)


# MakerNotes whose offsets are relative to the MakerNote itself survive being moved; others do not.
_SELF_CONTAINED_MAKERNOTES = (b"Nikon\0\x02", b"FUJIFILM", b"OLYMPUS\0", b"OM SYSTEM\0", b"Apple iOS\0")


def _drop_bad_makernote(ifd0: _Dir, problems: list[tuple[str, str]]) -> None:
    exif = ifd0.children.get(_EXIF_IFD)
    note = exif.entries.get(0x927C) if exif is not None else None
    if note is None or note.data.startswith(_SELF_CONTAINED_MAKERNOTES):
        return
    del exif.entries[0x927C]
    data = note.data
    n = struct.unpack(">H", data[:2])[0] if len(data) >= 2 else 0
    n_le = struct.unpack("<H", data[:2])[0] if len(data) >= 2 else 0
    if 0 < min(n, n_le) and 2 + 12 * min(n, n_le) <= len(data):
        why = "a vendor directory whose offsets point into the original EXIF block, which a rewrite moves"
    else:
        why = "not a recognisable vendor structure"
    problems.append(("exif.MakerNote", f"dropped: {why} ({len(data)} bytes)"))


# --------------------------------------------------------------------------- IPTC


def _iim_extent(raw: bytes) -> tuple[int, str | None]:
    """Length of the leading run of whole IIM datasets, and what stopped the walk (None: clean end)."""
    pos = 0
    while pos < len(raw) and raw[pos] == 0x1C:
        if pos + 5 > len(raw):
            return pos, f"dataset header at byte {pos} is cut short"
        (n,) = struct.unpack(">H", raw[pos + 3 : pos + 5])
        start = pos + 5
        if n & 0x8000:  # extended dataset: the next (n & 0x7FFF) bytes hold the length
            k = n & 0x7FFF
            if k > 4 or start + k > len(raw):
                return pos, f"bad extended length at byte {pos}"
            n, start = int.from_bytes(raw[start : start + k], "big"), start + k
        if start + n > len(raw):
            return pos, f"dataset {raw[pos + 1]}:{raw[pos + 2]} at byte {pos} runs past the end"
        pos = start + n
    rest = raw[pos:]
    if rest.strip(b"\0"):  # zero padding (TIFF LONG, Photoshop) is not a problem
        return pos, f"byte {pos} is 0x{rest[0]:02X}, not a dataset marker"
    return pos, None


def _irb_resource(irb: bytes, rid: int) -> bytes | None:
    """One resource of a Photoshop image-resource block (a sequence of 8BIM records)."""
    pos = 0
    while pos + 12 <= len(irb) and irb[pos : pos + 4] == b"8BIM":
        (r,) = struct.unpack(">H", irb[pos + 4 : pos + 6])
        name_len = irb[pos + 6]
        pos += 6 + ((1 + name_len + 1) & ~1)  # Pascal name, padded to even length
        (size,) = struct.unpack(">I", irb[pos : pos + 4])
        pos += 4
        if r == rid:
            return irb[pos : pos + size]
        pos += size + (size & 1)
    return None


def _irb(rid: int, data: bytes) -> bytes:
    return b"8BIM" + struct.pack(">H", rid) + b"\0\0" + struct.pack(">I", len(data)) + data + b"\0" * (len(data) & 1)


def _raw_profile(text: str) -> bytes:
    """ImageMagick's / exiftool's PNG text form: "\\n<name>\\n<length>\\n<hex lines>".

    Parsed line by line, each step one scan: a regex with two adjacent whitespace-eating groups backtracked
    quadratically on a chunk of spaces (80k spaces took 3 s).
    """
    body = text.lstrip()
    eol = body.find("\n")  # the name line
    rest = body[eol + 1 :].lstrip() if eol >= 0 else ""
    digits = len(rest) - len(rest.lstrip("0123456789"))
    after = rest[digits:]
    gap = len(after) - len(after.lstrip())
    if not 0 < digits <= 10 or "\n" not in after[:gap]:
        raise ValueError("not a raw profile")
    return bytes.fromhex("".join(after[gap:].split()))[: int(rest[:digits])]


def _raw_profile_text(name: str, data: bytes) -> str:
    hexed = data.hex()
    lines = "\n".join(hexed[i : i + 72] for i in range(0, len(hexed), 72))
    return f"\n{name}\n{len(data):8d}\n{lines}\n"


# --------------------------------------------------------------------------- XMP

_RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
_XML_NS = "http://www.w3.org/XML/1998/namespace"
_NS = {
    "x": "adobe:ns:meta/",
    "rdf": _RDF,
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "Iptc4xmpExt": "http://iptc.org/std/Iptc4xmpExt/2008-02-29/",
    "tiff": "http://ns.adobe.com/tiff/1.0/",
    "exif": "http://ns.adobe.com/exif/1.0/",
    "photoshop": "http://ns.adobe.com/photoshop/1.0/",
    "xmpNote": "http://ns.adobe.com/xmp/note/",
    "dc": "http://purl.org/dc/elements/1.1/",
}
_PREFIX_OF = {uri: p for p, uri in _NS.items()}
_XPACKET_BEGIN = "<?xpacket begin=\"\ufeff\" id=\"W5M0MpCehiHzreSzNTczkc9d\"?>"
_XPACKET_END = '<?xpacket end="w"?>'


def _q(prefix: str, name: str) -> str:
    return f"{{{_NS[prefix]}}}{name}"


def _xmp_for_output(meta: Metadata, prov: Provenance, keep: bool, size: tuple[int, int], rep: Report) -> bytes:
    fresh = "a fresh packet carries the provenance"
    if keep and meta.xmp and len(meta.xmp) > MAX_XMP_BYTES:
        rep.dropped["xmp"] = f"a packet of {len(meta.xmp)} bytes exceeds the XMP cap of {MAX_XMP_BYTES}; {fresh}"
    elif keep and meta.xmp and meta.xmp.count(b"<") > MAX_XMP_TAGS:  # one scan, before a tree is built
        rep.dropped["xmp"] = f"{meta.xmp.count(b'<')} tags exceed the XMP cap of {MAX_XMP_TAGS}; {fresh}"
    elif keep and meta.xmp:
        try:
            rdf, prefixes = _parse_xmp(meta.xmp)
            changes = _fix_xmp(rdf, size)
            _add_provenance(rdf, prov)
            packet = _serialize_xmp(rdf, prefixes)
        except MemoryError:
            raise
        except Exception as e:
            rep.dropped["xmp"] = f"unparseable: {type(e).__name__}: {e}; a fresh packet carries the provenance"
        else:
            rep.kept.append("xmp")
            if changes:
                rep.changed["xmp"] = ", ".join(changes)
            return packet
    return _fresh_xmp(prov)


def _fresh_xmp(prov: Provenance) -> bytes:
    rdf = ET.Element(_q("rdf", "RDF"))
    _add_provenance(rdf, prov)
    return _serialize_xmp(rdf, {})


def _parse_xmp(packet: bytes) -> tuple[ET.Element, dict[str, str]]:
    text = bytes(packet).strip(b"\0 \t\r\n")
    _refuse_dtd(text)
    prefixes: dict[str, str] = {}
    root = None
    for event, obj in ET.iterparse(io.BytesIO(text), events=("start-ns", "start")):
        if event == "start-ns":
            prefix, uri = obj
            if prefix:
                prefixes.setdefault(uri, prefix)
        elif root is None:
            root = obj
    if root is None:
        raise ValueError("empty packet")
    rdf = root if root.tag == _q("rdf", "RDF") else root.find(f".//{_q('rdf', 'RDF')}")
    if rdf is None:
        raise ValueError("no rdf:RDF element")
    return rdf, prefixes


def _refuse_dtd(text: bytes) -> None:
    """Raise ValueError at a DTD or an entity declaration, in whatever encoding the packet is.

    XMP never has a DTD; refusing one refuses entity expansion (a 500x bomb). A byte test for b"<!DOCTYPE" let
    a UTF-16 packet through, so expat itself is asked, before anything is expanded: one pass in C, linear.
    (ElementTree's C parser does not expose its expat handlers, hence this pass of its own.)
    """

    def refuse(*_):
        raise ValueError("a DTD in an XMP packet (XMP has none; refused, with any entities it declares)")

    p = expat.ParserCreate()
    p.StartDoctypeDeclHandler = refuse
    p.EntityDeclHandler = refuse
    try:
        p.Parse(text, True)
    except expat.ExpatError as e:
        raise ValueError(f"not well-formed XML: {e}") from None


def _descriptions(rdf: ET.Element) -> list[ET.Element]:
    return rdf.findall(_q("rdf", "Description"))


def _set_simple(rdf: ET.Element, key: str, value: str | None) -> bool:
    """Rewrite (or remove, value None) a simple property wherever it is, as attribute or element."""
    changed = False
    for desc in _descriptions(rdf):
        if key in desc.attrib:
            changed |= desc.attrib[key] != value
            if value is None:
                del desc.attrib[key]
            else:
                desc.attrib[key] = value
        if value is None:
            kept = [child for child in desc if child.tag != key]
            if len(kept) != len(desc):  # one rebuild: Element.remove per child is quadratic in a run of them
                desc[:] = kept
                changed = True
            continue
        for child in desc.findall(key):
            if len(child) == 0:
                changed |= (child.text or "") != value
                child.text = value
    return changed


def _fix_xmp(rdf: ET.Element, size: tuple[int, int]) -> list[str]:
    w, h = size
    fixes = [
        ("tiff:Orientation=1", _q("tiff", "Orientation"), "1"),
        ("size", _q("tiff", "ImageWidth"), str(w)),
        ("size", _q("tiff", "ImageLength"), str(h)),
        ("size", _q("exif", "PixelXDimension"), str(w)),
        ("size", _q("exif", "PixelYDimension"), str(h)),
        ("exif:ColorSpace=1", _q("exif", "ColorSpace"), "1"),
        ("photoshop:ICCProfile=sRGB", _q("photoshop", "ICCProfile"), "sRGB built-in"),  # our profile's name
        ("no extended XMP", _q("xmpNote", "HasExtendedXMP"), None),  # extended packets are not carried
    ]
    changes: list[str] = []
    for label, key, value in fixes:
        if _set_simple(rdf, key, value) and label not in changes:
            changes.append(label)
    return changes


def _add_provenance(rdf: ET.Element, prov: Provenance) -> None:
    props = [
        (_q("Iptc4xmpExt", "DigitalSourceType"), DIGITAL_SOURCE_TYPE),
        (_q("Iptc4xmpExt", "AISystemUsed"), prov.software),
        (_q("Iptc4xmpExt", "AISystemVersionUsed"), prov.model_id),
        (_q("xmp", "CreatorTool"), prov.software),
    ]
    for key, _ in props:
        _set_simple(rdf, key, None)
    existing = _descriptions(rdf)
    about = existing[0].get(_q("rdf", "about"), "") if existing else ""
    desc = ET.SubElement(rdf, _q("rdf", "Description"), {_q("rdf", "about"): about})
    for key, value in props:
        ET.SubElement(desc, key).text = value


_PREFIX_RE = re.compile(r"[A-Za-z_][\w.-]*")


def _serialize_xmp(rdf: ET.Element, prefixes: dict[str, str]) -> bytes:
    names: dict[str, str] = {}
    used = {"x", "xml"}
    next_k: dict[str, int] = {}  # per base, the suffix to try next: restarting at 1 was quadratic in "ns" URIs

    def prefix(uri: str) -> str:
        if uri not in names:
            p = prefixes.get(uri) or _PREFIX_OF.get(uri) or "ns"
            p = p if _PREFIX_RE.fullmatch(p) else "ns"
            base, k = p, next_k.get(p, 1)
            while p in used:
                p, k = f"{base}{k}", k + 1
            next_k[base] = k
            names[uri], _ = p, used.add(p)
        return names[uri]

    def qname(tag: str) -> str:
        if not tag.startswith("{"):
            return tag
        uri, local = tag[1:].split("}", 1)
        return f"xml:{local}" if uri == _XML_NS else f"{prefix(uri)}:{local}"

    def write(el: ET.Element, out: list[str]) -> None:
        attrs = "".join(f' {qname(k)}="{_esc(v, True)}"' for k, v in el.attrib.items())
        out.append(f"<{qname(el.tag)}{attrs}")
        if len(el) == 0 and not el.text:
            out.append("/>")
        else:
            out.append(">" + _esc(el.text or ""))
            for child in el:
                write(child, out)
                out.append(_esc(child.tail or ""))
            out.append(f"</{qname(el.tag)}>")

    body: list[str] = []
    write(rdf, body)  # names every namespace in use as a side effect
    decls = "".join(f' xmlns:{p}="{_esc(uri, True)}"' for uri, p in names.items())
    first = body[0]
    body[0] = first[: len(qname(rdf.tag)) + 1] + decls + first[len(qname(rdf.tag)) + 1 :]
    return (
        _XPACKET_BEGIN
        + f'<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="{_esc(SOFTWARE, True)}">'
        + "".join(body)
        + "</x:xmpmeta>"
        + _XPACKET_END
    ).encode("utf-8")


def _esc(text: str, attr: bool = False) -> str:
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if attr:
        text = text.replace('"', "&quot;").replace("\n", "&#10;").replace("\r", "&#13;").replace("\t", "&#9;")
    return text


# --------------------------------------------------------------------------- the output's metadata


class Report:
    """What happened to each group, as the short JSON of the manifest's ``metadata`` column."""

    def __init__(self, meta: Metadata, keep: bool) -> None:
        self.kept: list[str] = []
        self.added = ["provenance", "icc:sRGB"]
        self.dropped: dict[str, str] = {}
        self.changed: dict[str, str] = {}
        stripped = ("exif", "iptc", "xmp", "dpi")
        for group, reason in meta.notes:
            if not keep and group.split(".")[0] in stripped:
                continue
            (self.changed if reason.startswith("converted") else self.dropped)[group] = reason
        if not keep:
            for group in stripped:
                if getattr(meta, group) is not None:
                    self.dropped[group] = "not kept (keep=False)"
        if meta.pages > 1:
            self.dropped["pages"] = f"{meta.pages - 1} more page(s) not carried: only the first is colorized"

    def change(self, group: str, what: str) -> None:
        self.changed[group] = f"{self.changed[group]}; {what}" if group in self.changed else what

    def drop(self, group: str, why: str) -> None:
        """A group the output's container could not take after all: no longer kept or changed, dropped for ``why``."""
        self.dropped[group] = why
        self.kept = [g for g in self.kept if g != group]
        self.changed.pop(group, None)

    def json(self) -> str:
        order = {"exif": 0, "iptc": 1, "xmp": 2, "dpi": 3}
        out = {"kept": sorted(set(self.kept), key=order.get), "added": self.added}
        if self.dropped:
            out["dropped"] = self.dropped
        if self.changed:
            out["changed"] = self.changed
        return json.dumps(out, separators=(",", ":"))


@dataclass
class Prepared:
    """The output's metadata, sanitised and fixed for the output's pixels, ready for any container: what a format's
    writer (:mod:`raycolor.core.formats`) puts where its container says. The EXIF is kept as parsed entries, so a
    writer never re-parses bytes: it asks for the block (:meth:`exif_bytes`) or, for TIFF, the whole first
    directory (:meth:`tiff_ifd`)."""

    exif: _Exif
    xmp: bytes
    iptc: bytes | None
    dpi: tuple[float, float] | None
    prov: Provenance

    def exif_bytes(self) -> bytes:
        """The EXIF block, TIFF header onwards (no ``Exif\\0\\0``)."""
        return _exif_bytes(self.exif)

    def software_exif_bytes(self) -> bytes:
        """An EXIF block holding only Software (the provenance), for a container too small for the whole block."""
        return _exif_bytes(_Exif("<", _Dir({305: _ascii(self.prov.software)}, {}), False, [], {}))

    def fresh_xmp(self) -> bytes:
        """A packet holding only the provenance, for a container too small for the carried one."""
        return _fresh_xmp(self.prov)

    def iptc_irb(self) -> bytes:
        """The IPTC-IIM as a Photoshop image-resource block (8BIM 0x0404), the form JPEG APP13 and PNG text hold."""
        return _irb(0x0404, self.iptc or b"")

    def iptc_raw_profile(self) -> bytes:
        """The IPTC as exiftool's PNG text form ("Raw profile type iptc": hex of :meth:`iptc_irb`)."""
        return _raw_profile_text("IPTC profile", self.iptc_irb()).encode("latin-1")

    @property
    def byte_order(self) -> str:
        """"<" or ">": the EXIF's own, which a TIFF output keeps."""
        return self.exif.bo

    def tiff_ifd(self, offset: int, structure: dict[int, tuple[str, tuple[int, ...]]]) -> bytes:
        """A TIFF's first directory at ``offset``: the carried EXIF IFD0 (with its Exif/GPS sub-IFDs), the
        container's ``structure`` tags ({tag: ("short" | "long", values)}: size, strips, compression, ...), XMP (700),
        the sRGB ICC profile (34675) and IPTC (33723). Values and sub-directories follow it."""
        bo = self.exif.bo
        ifd0 = _Dir(dict(self.exif.ifd0.entries), dict(self.exif.ifd0.children))
        for tag, (kind, values) in structure.items():
            ifd0.entries[tag] = (_shorts if kind == "short" else _longs)(bo, *values)
        ifd0.entries[700] = _Entry(1, len(self.xmp), self.xmp)
        ifd0.entries[0x8773] = _Entry(7, len(srgb_icc()), srgb_icc())
        if self.iptc is not None:  # LONG, zero-padded, as Photoshop and exiftool write IPTC-NAA
            iim = self.iptc + b"\0" * (-len(self.iptc) % 4)
            ifd0.entries[0x83BB] = _Entry(4, len(iim) // 4, iim)
        return _pack_dir(ifd0, bo, offset)


def prepare(meta: Metadata | None, prov: Provenance, keep: bool, size: tuple[int, int]) -> tuple[Prepared, Report]:
    """The output's metadata for an image of ``size`` (W, H), and the report of what was kept, changed, dropped."""
    meta = meta if meta is not None else Metadata()
    rep = Report(meta, keep)
    dpi = meta.dpi if keep else None
    if dpi is not None:  # (read() keeps it in range; a Metadata made elsewhere may not)
        dpi = _sane_dpi(dpi, lambda n: rep.dropped.setdefault(*n))
    if dpi is not None:
        rep.kept.append("dpi")
    iptc = meta.iptc if keep else None
    if iptc is not None and len(iptc) > MAX_IPTC_BYTES:
        rep.dropped["iptc"] = f"dropped: {len(iptc)} bytes exceed the IPTC cap of {MAX_IPTC_BYTES}"
        iptc = None
    if iptc is not None:
        rep.kept.append("iptc")
    exif = _exif_for_output(meta, prov, keep, size, dpi, rep)
    xmp = _xmp_for_output(meta, prov, keep, size, rep)
    return Prepared(exif, xmp, iptc, dpi, prov), rep


def _exif_for_output(
    meta: Metadata, prov: Provenance, keep: bool, size: tuple[int, int], dpi, rep: Report
) -> _Exif:
    exif, changes = _Exif("<", _Dir({}, {}), False, [], {}), []
    if keep and meta.exif:
        try:
            exif = _parse_exif(meta.exif)
            changes = _fix_exif(exif, size)
            # a value that cannot be written must fail here, not in the container; and what we write must read
            # again with our own parser, without a problem (a cheap guard for every output's EXIF)
            again = _parse_exif(_exif_bytes(exif))
            if again.problems:
                raise ValueError(f"the rewritten EXIF does not read back cleanly: {again.problems[0]}")
            rep.kept.append("exif")
        except MemoryError:
            raise
        except Exception as e:  # corrupt ones were noted on reading; this is for what slipped through
            rep.dropped.setdefault("exif", f"cannot be rewritten: {type(e).__name__}: {e}")
            exif, changes = _Exif("<", _Dir({}, {}), False, [], {}), []
    bo, ifd0 = exif.bo, exif.ifd0
    if dpi is None and _exif_dpi(exif) is not None and _sane_dpi(_exif_dpi(exif), lambda n: None) is None:
        for tag in (282, 283, 296):  # a resolution read as insane (and noted as a dpi drop) is not written either
            ifd0.entries.pop(tag, None)
        changes.append("resolution removed (out of range)")
    if dpi is not None:
        ifd0.entries[282], ifd0.entries[283] = _rationals(bo, dpi[0]), _rationals(bo, dpi[1])
        ifd0.entries[296] = _shorts(bo, 2)
    ifd0.entries[305] = _ascii(prov.software)
    if changes:
        rep.change("exif", ", ".join(changes))
    return exif


def _fix_exif(exif: _Exif, size: tuple[int, int]) -> list[str]:
    bo, ifd0 = exif.bo, exif.ifd0
    changes = []
    old = ifd0.entries.get(274)
    if old is not None and (old.typ not in (3, 4) or _first_int(old.typ, old.data, bo) != 1):
        changes.append("Orientation=1")
    ifd0.entries[274] = _shorts(bo, 1)
    if exif.has_ifd1:
        changes.append("no thumbnail")
    sub = ifd0.children.get(_EXIF_IFD)
    if sub is not None:
        e = sub.entries
        if 0xA002 in e or 0xA003 in e:
            changes.append("size")
        e[0xA002], e[0xA003] = _longs(bo, size[0]), _longs(bo, size[1])  # Exif wants them whenever the IFD exists
        cs = e.get(0xA001)
        if cs is not None and (cs.typ not in (3, 4) or _first_int(cs.typ, cs.data, bo) != 1):
            changes.append("ColorSpace=sRGB")
        e[0xA001] = _shorts(bo, 1)
        for tag, label in ((0xA500, "Gamma removed"), (0x9102, "CompressedBitsPerPixel removed")):
            if e.pop(tag, None) is not None:  # no longer true of the re-encoded sRGB pixels
                changes.append(label)
        interop = sub.children.get(_INTEROP_IFD)
        if interop is not None and interop.entries.get(1, _ascii("R98")).data[:3] != b"R98":
            interop.entries[1] = _ascii("R98")  # "R03" would say Adobe RGB
            changes.append("InteropIndex=R98")
    return changes


def _exif_bytes(exif: _Exif) -> bytes:
    return _pack_tiff_header(exif.bo) + _pack_dir(exif.ifd0, exif.bo, 8)


@cache
def srgb_icc() -> bytes:
    """The sRGB ICC profile every output carries (LittleCMS's built-in, via Pillow; made once)."""
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return icc[:24] + bytes(12) + icc[36:]  # LittleCMS stamps today's date: zero it, so outputs are reproducible
