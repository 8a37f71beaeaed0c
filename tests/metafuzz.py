"""A seeded fuzz target for metadata read -> write: real EXIF, XMP and IPTC blocks, mutated, in JPEG, PNG, TIFF
and WebP containers, through :func:`raycolor.core.images.decode` and :func:`raycolor.core.formats.encode` to
every format, and each output decoded again (raycolor and Pillow).

The rule checked: decoding raises nothing but a ``DecodeError``; encoding never raises; every output decodes
again; no case takes more than ``CASE_SECONDS``. Used by tests/test_fuzz_metadata.py (a few hundred cases, a
few seconds) and bench/fuzz_metadata.py (as many as asked). No Ray, nothing at import.
"""

from __future__ import annotations

import io
import struct
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from raycolor.core import formats, images, metadata
from raycolor.core.images import DecodeError
from raycolor.core.metadata import Metadata, Provenance

PROV = Provenance(metadata.SOFTWARE, "ckpt-fuzz")
CASE_SECONDS = 2.0  # a case is ~10 ms (decode, 4 encodes, 8 read-backs of a 16 x 12 image); seconds is a stall
SIZE = (16, 12)
MAX_PIXELS = 1 << 22  # a flipped header byte can claim a huge image: decoding it is not what is tested here
WEBP_MAX = 16383
_XMP_ID = b"http://ns.adobe.com/xap/1.0/\0"


def _pillow_exif() -> bytes:
    exif = Image.Exif()
    exif.update({0x010E: "caption é", 0x013B: "Jane Doe", 0x0112: 6, 0x011A: 600.0, 0x011B: 600.0, 0x0128: 2,
                 0x0213: 1, 0x0131: "scanner 1.0"})
    exif[0x8769] = {0x9003: "1950:06:01 05:30:00", 0xA001: 65535, 0x9286: b"ASCII\0\0\0a comment", 0xA002: 16,
                    0xA003: 12, 0xA20E: 4000.0, 0xA20F: 4000.0, 0xA210: 2, 0x927C: b"Nikon\0\x02\x10\0\0MM\0*"}
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 0.0), 3: "E", 4: (2.0, 21.0, 0.0)}
    raw = exif.tobytes()
    return raw[6:] if raw.startswith(b"Exif\0\0") else raw  # the block itself: each container adds its header


def _xmp() -> bytes:
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" '
        'xmlns:tiff="http://ns.adobe.com/tiff/1.0/" xmlns:my="http://example.org/my/1.0/" tiff:Orientation="6">'
        '<dc:description><rdf:Alt><rdf:li xml:lang="x-default">a caption &amp; more</rdf:li></rdf:Alt></dc:description>'
        "<my:Box>B-17</my:Box><dc:subject><rdf:Bag><rdf:li>one</rdf:li><rdf:li>two</rdf:li></rdf:Bag></dc:subject>"
        '</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    ).encode()


def _iptc() -> bytes:
    def ds(r: int, d: int, v: bytes) -> bytes:
        return bytes((0x1C, r, d)) + struct.pack(">H", len(v)) + v

    return ds(1, 90, b"\x1b%G") + ds(2, 5, b"title") + ds(2, 120, b"a caption") + ds(2, 25, b"kw1") + ds(2, 25, b"kw2")


@dataclass
class Blocks:
    exif: bytes
    xmp: bytes
    iptc: bytes


def seed_blocks() -> Blocks:
    return Blocks(_pillow_exif(), _xmp(), _iptc())


def _pixels(rng: np.random.Generator) -> np.ndarray:
    w, h = SIZE
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- containers


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def container(fmt: str, rgb: np.ndarray, b: Blocks) -> bytes:
    """The blocks, as they are, in a file of ``fmt``: each container's own way of holding them."""
    import zlib

    if fmt == "tiff":  # raycolor's own writer holds malformed EXIF as it is: its IFD0 is the block's
        try:
            exif = metadata._parse_tiff(metadata._FileView(b.exif), skip=frozenset())
        except Exception:
            exif = metadata._Exif("<", metadata._Dir({}, {}), False, [], {})
        iptc = b.iptc if b.iptc else None
        parts = metadata.Prepared(exif, b.xmp, iptc, None, PROV)
        return formats.REGISTRY["tiff"].write(rgb, parts, metadata.Report(Metadata(), True), formats.EncodeOptions())
    buf = io.BytesIO()
    im = Image.fromarray(rgb)
    if fmt == "jpeg":
        im.save(buf, "JPEG", quality=80)
        jpeg = buf.getvalue()
        segs = [(0xE1, b"Exif\0\0" + b.exif), (0xE1, _XMP_ID + b.xmp), (0xED, b"Photoshop 3.0\0" + metadata._irb(0x0404, b.iptc))]
        out = b"".join(bytes((0xFF, m)) + struct.pack(">H", len(p) + 2) + p for m, p in segs if len(p) < 65530)
        return jpeg[:2] + out + jpeg[2:]
    if fmt == "png":
        im.save(buf, "PNG", compress_level=1)
        png = buf.getvalue()
        text = metadata._raw_profile_text("IPTC profile", metadata._irb(0x0404, b.iptc)).encode("latin-1")
        chunks = [
            _png_chunk(b"eXIf", b.exif),
            _png_chunk(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + b.xmp),
            _png_chunk(b"zTXt", b"Raw profile type iptc\0\0" + zlib.compress(text)),
        ]
        return png[:33] + b"".join(chunks) + png[33:]
    im.save(buf, "WEBP", quality=80, exif=b.exif, xmp=b.xmp)
    return buf.getvalue()


# --------------------------------------------------------------------------- mutations


def _flip(rng, blob: bytes) -> bytes:
    if not blob:
        return blob
    out = bytearray(blob)
    for i in rng.integers(0, len(out), int(rng.integers(1, 9))):
        out[i] ^= int(rng.integers(1, 256))
    return bytes(out)


def _truncate(rng, blob: bytes) -> bytes:
    return blob[: int(rng.integers(0, len(blob)))] if blob else blob


def _ifd_entry(rng, exif: bytes) -> bytes:
    """Change one IFD0 (or a sub-IFD) entry's type, count or value/offset."""
    if len(exif) < 10 or exif[:4] not in (b"II*\0", b"MM\0*"):
        return _flip(rng, exif)
    bo = "<" if exif[:2] == b"II" else ">"
    offsets = [struct.unpack(bo + "I", exif[4:8])[0]]
    # sub-IFDs too: follow the pointers in IFD0 one level
    out = bytearray(exif)
    rows = []
    for off in offsets:
        if off + 2 > len(exif):
            continue
        (n,) = struct.unpack(bo + "H", exif[off : off + 2])
        for i in range(min(n, 512)):
            at = off + 2 + 12 * i
            if at + 12 > len(exif):
                break
            rows.append(at)
            tag, typ, count, value = struct.unpack(bo + "HHI4s", exif[at : at + 12])
            if tag in (0x8769, 0x8825) and len(offsets) < 4:
                offsets.append(struct.unpack(bo + "I", value)[0])
    if not rows:
        return _flip(rng, exif)
    at = rows[int(rng.integers(len(rows)))]
    what = int(rng.integers(4))
    if what == 0:  # type
        struct.pack_into(bo + "H", out, at + 2, int(rng.choice([0, 1, 2, 3, 4, 5, 7, 9, 10, 11, 12, 13, 14, 129, 0xFFFF])))
    elif what == 1:  # count
        count = int(rng.choice([0, 1, 2, 1000, 0xFFFF, 1 << 20, 1 << 24, 0xFFFFFFFF, int(rng.integers(0, 1 << 32))]))
        struct.pack_into(bo + "I", out, at + 4, count)
    elif what == 2:  # value or offset
        value = int(rng.choice([0, 1, 7, 8, len(exif) - 1, len(exif), 0xFFFFFFFF, int(rng.integers(0, max(1, len(exif))))]))
        struct.pack_into(bo + "I", out, at + 8, value)
    else:  # point it at another entry's value (an alias)
        other = rows[int(rng.integers(len(rows)))]
        out[at + 4 : at + 12] = exif[other + 4 : other + 12]
    return bytes(out)


def _resolution(rng, exif: bytes) -> bytes:
    """XResolution and YResolution (IFD0, RATIONALs out of line) set to random numerators and denominators,
    ResolutionUnit to inch, cm or something else: every dpi from nothing to billions, most with ugly fractions."""
    if len(exif) < 10 or exif[:4] not in (b"II*\0", b"MM\0*"):
        return _flip(rng, exif)
    bo = "<" if exif[:2] == b"II" else ">"
    out = bytearray(exif)
    off = struct.unpack(bo + "I", exif[4:8])[0]
    if off + 2 > len(exif):
        return _flip(rng, exif)
    (n,) = struct.unpack(bo + "H", exif[off : off + 2])
    for i in range(min(n, 512)):
        at = off + 2 + 12 * i
        if at + 12 > len(exif):
            break
        tag, typ, count, value = struct.unpack(bo + "HHI4s", exif[at : at + 12])
        if tag in (282, 283) and typ == 5 and count == 1:
            ptr = struct.unpack(bo + "I", value)[0]
            if ptr + 8 <= len(out):
                num = int(rng.integers(1, 1 << 32))
                den = int(rng.integers(1, 1 << 32)) if rng.integers(2) else int(rng.integers(1, 1 << 12))
                struct.pack_into(bo + "II", out, ptr, num, den)
        elif tag == 296 and typ == 3:
            struct.pack_into(bo + "H", out, at + 8, int(rng.choice([1, 2, 3, 3, 7])))
    return bytes(out)


_XMP_SNIPPETS = [
    b"<!DOCTYPE x [<!ENTITY a 'aaaaaaaaaa'>]>", b"&a;", b"<a>" * 300, b"</a>", b"\0", b"\xff\xfe",
    b'<v xmlns="http://e/1/">x</v>', b'xmlns:1bad="u"', b"<rdf:Description/>", b"]]>", b"<?xpacket end='w'?>",
]


def _xmp_mutation(rng, xmp: bytes) -> bytes:
    what = int(rng.integers(4))
    if what == 0:
        return _flip(rng, xmp)
    if what == 1:
        return _truncate(rng, xmp)
    at = int(rng.integers(0, len(xmp) + 1))
    snippet = _XMP_SNIPPETS[int(rng.integers(len(_XMP_SNIPPETS)))]
    if what == 2:
        return xmp[:at] + snippet + xmp[at:]
    return xmp.decode("utf-8", "replace").encode("utf-16-be" if rng.integers(2) else "utf-16")  # re-encoded


def _iptc_mutation(rng, iptc: bytes) -> bytes:
    what = int(rng.integers(3))
    if what == 0:
        return _flip(rng, iptc)
    if what == 1:
        return _truncate(rng, iptc)
    out = bytearray(iptc)  # a dataset's length field
    starts = [i for i in range(len(out) - 4) if out[i] == 0x1C]
    if starts:
        i = starts[int(rng.integers(len(starts)))]
        struct.pack_into(">H", out, i + 3, int(rng.choice([0, 1, 0x7FFF, 0x8002, 0x8004, 0x8005, 0xFFFF])))
    return bytes(out)


_EXIF_MUTATIONS: list[Callable] = [_flip, _truncate, _ifd_entry, _ifd_entry, _resolution]


def mutate(rng: np.random.Generator, b: Blocks) -> tuple[Blocks, str]:
    """One or two blocks mutated; returns them and a short description."""
    exif, xmp, iptc = b.exif, b.xmp, b.iptc
    said = []
    for _ in range(int(rng.integers(1, 3))):
        group = int(rng.integers(5))
        if group <= 2:  # EXIF is where most of the structure is
            m = _EXIF_MUTATIONS[int(rng.integers(len(_EXIF_MUTATIONS)))]
            exif = m(rng, exif)
            said.append(f"exif:{m.__name__}")
        elif group == 3:
            xmp = _xmp_mutation(rng, xmp)
            said.append("xmp")
        else:
            iptc = _iptc_mutation(rng, iptc)
            said.append("iptc")
    return Blocks(exif, xmp, iptc), ",".join(said)


# --------------------------------------------------------------------------- the check


def check(data: bytes) -> str | None:
    """None when ``data`` obeys the rule (module docstring), else what went wrong."""
    t0 = time.perf_counter()
    try:
        dec = images.decode(data, max_pixels=MAX_PIXELS)
    except DecodeError:
        return None
    except Exception as e:
        return f"decode raised {type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}"
    for fmt in formats.WRITABLE:
        if fmt == "webp" and max(dec.rgb.shape[:2]) > WEBP_MAX:  # a flipped header byte: WebP cannot hold the size
            continue
        try:
            out, _ = formats.encode(dec.rgb, fmt, dec.meta, PROV)
        except Exception as e:
            return f"encode {fmt} raised {type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}"
        try:
            images.decode(out)
            with Image.open(io.BytesIO(out)) as im:
                im.load()
        except Exception as e:
            return f"the {fmt} output does not decode again: {type(e).__name__}: {e}"
    seconds = time.perf_counter() - t0
    if seconds > CASE_SECONDS:
        return f"took {seconds:.2f} s"
    return None


@dataclass
class Failure:
    case: int
    fmt: str
    mutation: str
    problem: str
    data: bytes


def run(cases: int, *, seed: int = 0, seconds: float | None = None) -> tuple[int, list[Failure]]:
    """Run up to ``cases`` cases (or until ``seconds`` pass); returns (cases run, failures)."""
    rng = np.random.default_rng(seed)
    base = seed_blocks()
    fmts = ("jpeg", "png", "tiff", "webp")
    failures: list[Failure] = []
    t0 = time.perf_counter()
    n = 0
    with warnings.catch_warnings():
        # Pillow says what it thinks of the EXIF it reads for orientation: that is the point here
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"PIL\.")
        for n in range(1, cases + 1):
            blocks, said = mutate(rng, base)
            fmt = fmts[int(rng.integers(len(fmts)))]
            rgb = _pixels(rng)
            try:
                data = container(fmt, rgb, blocks)
            except Exception:  # a container that cannot hold the mutated block: not a case
                continue
            if rng.integers(8) == 0:  # now and then the container itself too
                data = _flip(rng, data)
            problem = check(data)
            if problem is not None:
                failures.append(Failure(n, fmt, said, problem, data))
            if seconds is not None and time.perf_counter() - t0 > seconds:
                break
    return n, failures
