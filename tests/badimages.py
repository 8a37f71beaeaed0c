"""Generator of a small corpus of awkward and broken image inputs.

``make_corpus(dirpath)`` writes the files and returns ``{filename: expected}``, where
``expected`` is the :class:`raycolor.core.images.DecodeError` reason that
``decode_rgb(data, max_pixels=BOMB_LIMIT)`` must raise, or ``None`` when the file must
decode. The whole corpus is well under 1 MB and takes a few tens of milliseconds.

``make_tar_with_bad_members(path)`` writes a tar with path-traversal, absolute-path and
symlink members next to one good JPEG.

The expected decoded content of the valid files is exposed as module constants
(``ORIENT_*``, ``CORNER_COLORS``, ``CMYK_*``, ...), so tests can check pixels too.
"""

from __future__ import annotations

import io
import struct
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

# Decode the corpus with max_pixels=BOMB_LIMIT: BOMB_NAME is over it, everything else under.
BOMB_LIMIT = 4_000_000
BOMB_SIZE = (2500, 2000)  # (W, H): 5 Mpx of solid grey, ~5 kB as PNG
BOMB_NAME = "bomb_2500x2000.png"

# EXIF orientation files: the upright picture is ORIENT_SIZE (W, H) with one solid colour
# per quadrant; files orient_N.jpg store it so that orientation N makes it upright again.
ORIENT_SIZE = (40, 24)
CORNER_COLORS = {
    "top_left": (255, 0, 0),
    "top_right": (0, 255, 0),
    "bottom_left": (0, 0, 255),
    "bottom_right": (255, 255, 0),
}
ORIENTATIONS = range(2, 9)

# Left half pure red, right half pure blue, written as CMYK.
CMYK_LEFT_RGB = (255, 0, 0)
CMYK_RIGHT_RGB = (0, 0, 255)

# 16-bit grey files hold this row; after decoding it must read GREY16_EXPECTED.
GREY16_VALUES = (0, 257, 32768, 65535)
GREY16_EXPECTED = (0, 1, 128, 255)

# Animated GIF frame colours; decode_rgb returns the first.
GIF_FRAMES = ((255, 0, 0), (0, 255, 0), (0, 0, 255))

STRIP_SIZE = (2, 10000)  # (W, H)

TAR_GOOD_MEMBERS = ("ok/good.jpg",)
TAR_BAD_MEMBERS = ("../evil.jpg", "/abs.jpg", "link.jpg")


def _png(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _jpeg(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def _noise(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def upright_orientation_image() -> np.ndarray:
    """The upright ORIENT_SIZE picture, (H, W, 3) uint8."""
    w, h = ORIENT_SIZE
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2] = CORNER_COLORS["top_left"]
    a[: h // 2, w // 2 :] = CORNER_COLORS["top_right"]
    a[h // 2 :, : w // 2] = CORNER_COLORS["bottom_left"]
    a[h // 2 :, w // 2 :] = CORNER_COLORS["bottom_right"]
    return a


def _stored_for_orientation(u: np.ndarray, orientation: int) -> np.ndarray:
    """The stored pixels whose EXIF orientation ``orientation`` displays as ``u``.

    Written from the EXIF definition of where row 0 / column 0 lie, independently of
    Pillow's transpose table.
    """
    stored = {
        2: lambda: u[:, ::-1],  # row 0 = top, col 0 = right
        3: lambda: u[::-1, ::-1],  # row 0 = bottom, col 0 = right
        4: lambda: u[::-1, :],  # row 0 = bottom, col 0 = left
        5: lambda: u.transpose(1, 0, 2),  # row 0 = left, col 0 = top
        6: lambda: np.rot90(u, 1),  # row 0 = right, col 0 = top
        7: lambda: np.rot90(u, 1)[:, ::-1],  # row 0 = right, col 0 = bottom
        8: lambda: np.rot90(u, -1),  # row 0 = left, col 0 = bottom
    }[orientation]()
    return np.ascontiguousarray(stored)


def _tiff_rgb48(values: np.ndarray) -> bytes:
    """A minimal uncompressed little-endian 48-bit RGB TIFF (Pillow cannot write one)."""
    h, w, _ = values.shape
    pixels = values.astype("<u2").tobytes()
    entries = [
        (256, 4, 1, w),  # ImageWidth
        (257, 4, 1, h),  # ImageLength
        (258, 3, 3, None),  # BitsPerSample -> offset of (16, 16, 16)
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 2),  # Photometric: RGB
        (273, 4, 1, None),  # StripOffsets
        (277, 3, 1, 3),  # SamplesPerPixel
        (278, 4, 1, h),  # RowsPerStrip
        (279, 4, 1, len(pixels)),  # StripByteCounts
        (284, 3, 1, 1),  # PlanarConfiguration: chunky
    ]
    ifd_offset = 8
    ifd_size = 2 + 12 * len(entries) + 4
    bps_offset = ifd_offset + ifd_size
    data_offset = bps_offset + 6
    out = bytearray(b"II*\x00" + struct.pack("<I", ifd_offset))
    out += struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        if tag == 258:
            value = bps_offset
        elif tag == 273:
            value = data_offset
        if typ == 3 and count == 1:
            out += struct.pack("<HHIHH", tag, typ, count, value, 0)
        else:
            out += struct.pack("<HHII", tag, typ, count, value)
    out += struct.pack("<I", 0)
    out += struct.pack("<HHH", 16, 16, 16)
    out += pixels
    return bytes(out)


def make_corpus(dirpath: Path) -> dict[str, str | None]:
    """Write the corpus into ``dirpath``; return ``{filename: expected reason or None}``."""
    dirpath = Path(dirpath)
    dirpath.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes] = {}
    expected: dict[str, str | None] = {}

    def add(name: str, data: bytes, reason: str | None) -> None:
        files[name] = data
        expected[name] = reason

    # --- broken inputs
    jpeg = _jpeg(_noise(64, 64, 1), quality=90)
    add("truncated.jpg", jpeg[: len(jpeg) // 2], "truncated")
    png = _png(_noise(64, 64, 2))
    add("truncated.png", png[: len(png) // 2], "truncated")
    add("truncated_header.png", png[:20], "truncated")
    add("empty.jpg", b"", "not_an_image")
    add(
        "not_really.jpg",
        b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>"
        b"<body><h1>Not Found</h1></body></html>\n",
        "not_an_image",
    )
    add(BOMB_NAME, _png(Image.new("L", BOMB_SIZE, 128), compress_level=9), "too_large")

    # --- awkward but valid inputs
    cmyk = Image.new("CMYK", (32, 16), (0, 255, 255, 0))  # red
    cmyk.paste((255, 255, 0, 0), (16, 0, 32, 16))  # blue
    add("cmyk.jpg", _jpeg(cmyk, quality=95), None)

    grey16 = np.array([GREY16_VALUES] * 2, dtype=np.uint16)
    add("grey16.png", _png(Image.fromarray(grey16)), None)
    buf = io.BytesIO()
    Image.fromarray(grey16).save(buf, format="TIFF")
    add("grey16.tif", buf.getvalue(), None)
    rgb48 = np.repeat(grey16[:, :, None], 3, axis=2)
    add("rgb48.tif", _tiff_rgb48(rgb48), None)

    # palette: index 0 transparent (its colour must not show), index 1 opaque dark red
    pal = Image.new("P", (4, 2), 0)
    pal.putpalette([10, 20, 30, 200, 0, 0] + [0, 0, 0] * 254)
    pal.paste(1, (2, 0, 4, 2))
    add("palette_transparent.png", _png(pal, transparency=0), None)

    la = np.zeros((1, 3, 2), np.uint8)
    la[0, :, 1] = (0, 255, 128)  # black at alpha 0 / 255 / 128
    add("la.png", _png(Image.fromarray(la)), None)
    rgba = np.array([[[255, 0, 0, 0], [0, 0, 255, 255], [0, 0, 0, 128]]], np.uint8)
    add("rgba.png", _png(Image.fromarray(rgba)), None)

    upright = upright_orientation_image()
    for o in ORIENTATIONS:
        exif = Image.Exif()
        exif[0x0112] = o
        stored = Image.fromarray(_stored_for_orientation(upright, o))
        add(f"orient_{o}.jpg", _jpeg(stored, quality=95, subsampling=0, exif=exif.tobytes()), None)

    frames = [Image.new("RGB", (8, 8), c) for c in GIF_FRAMES]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    add("animated.gif", buf.getvalue(), None)

    add("one_pixel.png", _png(Image.new("RGB", (1, 1), (12, 34, 56))), None)
    add("strip_2x10000.png", _png(Image.new("RGB", STRIP_SIZE, (90, 60, 30)), compress_level=9), None)
    add("photo with space.jpg", _jpeg(_noise(16, 8, 3)), None)
    add("fotografía_ü.png", _png(_noise(8, 16, 4)), None)
    buf = io.BytesIO()
    _noise(12, 10, 5).save(buf, format="WEBP", quality=80)
    add("photo.webp", buf.getvalue(), None)
    buf = io.BytesIO()
    _noise(12, 10, 6).save(buf, format="BMP")
    add("photo.bmp", buf.getvalue(), None)

    for name, data in files.items():
        (dirpath / name).write_bytes(data)
    return expected


def make_tar_with_bad_members(path: Path) -> list[str]:
    """Write a tar holding ``../evil.jpg``, ``/abs.jpg``, a symlink ``link.jpg`` (to
    ``/etc/passwd``) and one good ``ok/good.jpg``.

    Returns the members a safe reader is expected to yield: ``["ok/good.jpg"]``
    (``TAR_BAD_MEMBERS`` lists the ones it must skip).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    jpeg = _jpeg(_noise(16, 16, 7))

    def regular(tf: tarfile.TarFile, name: str) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(jpeg)
        info.mode = 0o644
        tf.addfile(info, io.BytesIO(jpeg))

    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        regular(tf, "../evil.jpg")
        regular(tf, "/abs.jpg")
        link = tarfile.TarInfo("link.jpg")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tf.addfile(link)
        regular(tf, "ok/good.jpg")
    return list(TAR_GOOD_MEMBERS)
