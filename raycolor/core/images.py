"""Image decoding and encoding: the one decode policy used everywhere.

Pure Pillow + NumPy (no Ray, no torch, no storage), so it can be imported anywhere cheaply; the one reading
loop that reads items and decodes them here is :func:`raycolor.inputs.read_decoded`.

Decode policy of :func:`decode_rgb` (bytes in, ``uint8`` ``(H, W, 3)`` C-contiguous,
writeable array out, or a :class:`DecodeError` with a typed ``reason``):

* **Formats**: JPEG (incl. MPO), PNG (incl. APNG), WebP, TIFF, BMP, GIF. Other formats
  Pillow knows (PSD, EPS, JPEG 2000, ICO, ...) are refused as ``"unsupported"``; EPS
  in particular is never handed to Ghostscript.
* **Multi-frame** files (animated GIF / WebP / APNG, multi-page TIFF, MPO): the first
  frame only.
* **EXIF orientation** is applied (``PIL.ImageOps.exif_transpose``; orientations 2..8),
  so the array is upright. Malformed EXIF is ignored (decoded as orientation 1), it
  does not fail the image.
* **Modes** -> RGB:

  - ``RGB``: as is. ``1``, ``L``, ``RGBX``, ``YCbCr``, ``LAB``, ``HSV``: ``Image.convert``.
  - Alpha (``LA``, ``La``, ``RGBA``, ``RGBa``, ``PA``, ``P`` with ``transparency`` or an
    RGBA palette, ``1``/``L``/``RGB`` with a ``transparency`` colour key): composited
    on **white** (a fully transparent pixel becomes ``(255, 255, 255)``).
  - ``CMYK``: through the embedded ICC profile to sRGB when there is one and LittleCMS
    can use it, otherwise Pillow's naive ``convert("RGB")``; never an error.
  - 16-bit grey (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``): ``round(v / 257)``, so
    65535 -> 255 and 32768 -> 128 (scaled, never clipped).
  - ``I`` (32-bit int): if every value is in ``[0, 65535]`` it is treated as 16-bit
    (``/ 257``); otherwise it is stretched linearly from its min..max to 0..255.
  - ``F`` (float): NaN/inf -> 0; values in ``[0, 1]`` are scaled by 255, values in
    ``[0, 255]`` are kept, values in ``[0, 65535]`` are divided by 257, anything else
    is stretched from min..max to 0..255.
  - 48-bit RGB PNG / TIFF: Pillow itself exposes these as 8-bit ``RGB`` (high byte).
  - Anything else: ``DecodeError("unsupported")``.

* **Metadata that Pillow would refuse the whole file for** (a PNG text or ICC chunk that inflates past
  ``PngImagePlugin.MAX_TEXT_CHUNK``, or text past ``MAX_TEXT_MEMORY``) is dropped before Pillow sees it, with
  a note, within :mod:`raycolor.core.metadata`'s byte caps; an ICC profile over Pillow's limit but within
  ``metadata.MAX_ICC_BYTES`` is kept (large genuine ones exist). Pillow's limits are never changed.
* **max_pixels**: ``width * height`` from the header is checked before any pixel data is
  decoded; over the limit -> ``"too_large"``. ``None`` disables the check, including
  Pillow's own decompression-bomb limit. Pillow's ``DecompressionBombError`` /
  ``DecompressionBombWarning`` are mapped to ``"too_large"`` if they ever escape.
  Pillow's global ``Image.MAX_IMAGE_PIXELS`` is never changed permanently: Pillow's
  warning is silenced for images this module has decided to accept, and only when
  ``max_pixels`` exceeds Pillow's hard limit (``2 * MAX_IMAGE_PIXELS``, or ``None``) is
  the global lifted, under a module lock, for the duration of that one open/load and
  then restored.
* **Errors** (``DecodeError.reason``):

  - ``"not_an_image"``: empty input, or bytes no image plugin recognises (HTML, text).
  - ``"truncated"``: it starts like a supported image (signature / header parses) but
    the data is cut short or corrupt: Pillow's "image file is truncated", "broken data
    stream", ``SyntaxError``, ``EOFError``, ... ``ImageFile.LOAD_TRUNCATED_IMAGES`` is
    never set, so partially decoded images are never returned. (A file whose pixel
    data is complete but whose trailer is missing, e.g. a PNG without IEND, decodes.)
  - ``"too_large"``: over ``max_pixels`` (or Pillow's bomb limit).
  - ``"unsupported"``: a real image in a format / pixel mode / codec this policy does not
    decode.

:func:`decode` is the same policy plus what an archive needs kept: it also returns the input's
:class:`raycolor.core.metadata.Metadata` (EXIF, IPTC, XMP, resolution, bit depth, page count), keeps
16-bit sources at 16 bits (``depth``), and colour-manages: an embedded ICC profile (an RGB one such as
Adobe RGB, or a grey one such as Gray Gamma 2.2 or Dot Gain 20% on grey pixels) is converted to sRGB
with LittleCMS (``PIL.ImageCms``, relative colorimetric with black-point compensation) before the
array is returned; sRGB profiles pass unchanged; a profile LittleCMS refuses leaves the pixels as they
are, with a note. :func:`decode_rgb` is ``decode(depth="8").rgb``: the same colour-managed
pixels, so training, colorizing and evaluating all take L from sRGB.

Encoding: PNG is lossless (``compress_level=level``, default 1: ~3x faster than
Pillow's 6); JPEG uses ``quality``, 4:2:0 chroma subsampling, ``optimize=False``.
"""

from __future__ import annotations

import io
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, get_args

import numpy as np
from PIL import (
    BmpImagePlugin,  # noqa: F401  (importing registers the plugin with Image.OPEN)
    GifImagePlugin,  # noqa: F401
    Image,
    ImageOps,
    JpegImagePlugin,  # noqa: F401
    PngImagePlugin,  # noqa: F401
    TiffImagePlugin,  # noqa: F401
    UnidentifiedImageError,
)

from raycolor.config import DEFAULT_MAX_PIXELS
from raycolor.core import formats, metadata
from raycolor.core.metadata import Metadata

if TYPE_CHECKING:
    pass

try:  # WebP support is optional in Pillow builds
    from PIL import WebPImagePlugin  # noqa: F401
except ImportError:  # pragma: no cover
    pass

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DecodeError",
    "DecodeReason",
    "DecodedImage",
    "Depth",
    "decode",
    "decode_rgb",
    "encode_png",
    "extension",
]

DecodeReason = Literal["truncated", "not_an_image", "too_large", "unsupported"]
_REASONS: frozenset[str] = frozenset(get_args(DecodeReason))

# Pillow format ids Image.open may use (the registry's; MPO comes back through the JPEG factory)
_FORMATS: tuple[str, ...] = tuple(f for f in formats.PILLOW_IDS if f in Image.OPEN)

_GREY16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"LA", "La", "RGBA", "RGBa", "PA"})
_CONVERT_MODES = frozenset({"1", "L", "RGBX", "YCbCr", "LAB", "HSV"})
_COLOR_KEY_MODES = frozenset({"1", "L", "RGB", "P"})

# Same mapping as PIL.ImageOps.exif_transpose (used if that fails on odd metadata).
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION = 0x0112

# Serialises our own changes to process-global state (warning filters, Pillow's
# MAX_IMAGE_PIXELS). Only header parsing, or the load of an image above Pillow's own
# warning limit, runs under it; ordinary decodes proceed in parallel.
_PIL_GLOBALS_LOCK = threading.Lock()

_TRUNCATION_ERRORS = (OSError, SyntaxError, EOFError, ValueError, IndexError, struct.error, zlib.error, SystemError)
_UNSUPPORTED_HINTS = ("not supported", "unsupported", "not available", "unknown pixel mode", "unknown raw mode")


class DecodeError(ValueError):
    """An input that cannot be decoded into an RGB array; ``reason`` says why."""

    reason: DecodeReason
    detail: str

    def __init__(self, reason: DecodeReason, detail: str) -> None:
        if reason not in _REASONS:
            raise ValueError(f"unknown decode error reason {reason!r}")
        # args == (reason, detail) keeps the exception picklable (Ray ships them).
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


# --------------------------------------------------------------------------- decoding


Depth = Literal["auto", "8", "16"]


class DecodedImage(NamedTuple):
    """:func:`decode`'s result: upright sRGB pixels and the input's metadata."""

    # rgb: (H, W, 3) uint8, or uint16 (see decode's ``depth``); a grey source's is one plane seen three times
    # (channel stride 0: read it, never write into it; decode_rgb gives a plain copy)
    rgb: np.ndarray
    meta: Metadata


def decode_rgb(data: bytes, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes to an upright ``uint8`` RGB array ``(H, W, 3)``.

    See the module docstring for the policy. Raises :class:`DecodeError`.
    """
    return np.ascontiguousarray(decode(data, max_pixels=max_pixels, depth="8").rgb)


def decode(
    data: bytes, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, depth: Depth = "auto", limit: str = "the limit"
) -> DecodedImage:
    """Decode to upright sRGB pixels plus the input's :class:`~raycolor.core.metadata.Metadata`.

    The policy and errors of :func:`decode_rgb`, plus colour management (module docstring). ``depth``:
    ``"8"`` always gives uint8 (:func:`decode_rgb`'s pixels, converted to sRGB where a profile says
    so); ``"auto"`` gives uint16 when the source has 16-bit samples that can be kept (16-bit grey
    TIFF/PNG, 48-bit RGB TIFF through tifffile), uint8 otherwise; ``"16"`` always gives uint16 (8-bit
    sources scaled by 257, the exact inverse of ``round(v / 257)``). ``meta.bit_depth`` is the
    source's, whatever ``depth`` returns. A multi-page file decodes its first page;
    ``meta.pages`` says how many there are.
    """
    if depth not in ("auto", "8", "16"):
        raise ValueError(f"depth must be 'auto', '8' or '16', got {depth!r}")
    return _decode(data, max_pixels, depth, limit)


def _decode(data: bytes, max_pixels: int | None, depth: Depth, limit: str) -> DecodedImage:
    if data is None or len(data) == 0:
        raise DecodeError("not_an_image", "empty input")
    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f"max_pixels must be positive or None, got {max_pixels}")

    own = formats.sniff(data)
    if own is not None and own.read is not None:  # a format Pillow does not decode for us (JPEG 2000)
        return _decode_own(own, data, max_pixels, depth, limit)
    lift = _needs_lift(max_pixels)
    big_icc, pre_notes = None, ()
    if bytes(data[:8]) == _PNG_SIGNATURE:
        data, big_icc, pre_notes = _png_within_caps(data)
    try:
        im = _open(data, max_pixels, lift)
    except DecodeError as e:
        # a JPEG whose EXIF Pillow's own reader trips on (a resolution of the wrong type): the pixels are whole,
        # so they are decoded without that EXIF, and the report says it was dropped
        bare = _jpeg_without_exif(data) if e.reason == "truncated" else None
        if bare is None:
            raise
        im = _open(bare, max_pixels, lift)
        data, pre_notes = bare, (*pre_notes, ("exif", f"dropped: Pillow cannot read it ({e.detail})"))
    try:
        width, height = im.size
        if width < 1 or height < 1:
            raise DecodeError("not_an_image", f"image has no pixels ({width}x{height})")
        pixels = width * height
        if max_pixels is not None and pixels > max_pixels:
            raise DecodeError(
                "too_large", f"{width}x{height} = {pixels} pixels exceeds {limit} of {max_pixels}"
            )
        meta = _read_meta(im, pixels, lift)
        if pre_notes:
            meta = replace(meta, notes=(*pre_notes, *meta.notes))
        mode, icc = im.mode, big_icc or im.info.get("icc_profile")
        if icc and len(icc) > metadata.MAX_ICC_BYTES:
            note = ("icc", f"dropped: a profile of {len(icc)} bytes exceeds the ICC cap of {metadata.MAX_ICC_BYTES}; "
                    "assumed sRGB")
            icc, meta = None, replace(meta, notes=(*meta.notes, note))
        rgb48 = None
        if depth != "8" and meta.bit_depth == 16 and im.format == "TIFF" and mode == "RGB":
            rgb48, meta = _tiff_rgb48(data, im, meta)
        try:
            im = _apply_orientation(im)
            rgb = rgb48 if rgb48 is not None else _managed_pixels(im, meta, depth)
        except SystemError as e:  # Pillow's C layer on a loaded image whose tiles contradict its size (fuzzed TIFF)
            raise DecodeError("truncated", f"{im.format} pixel data is corrupt: {type(e).__name__}: {e}") from None
        if depth != "8" and meta.bit_depth == 16 and rgb.dtype == np.uint8 and "depth" not in dict(meta.notes):
            note = ("depth", f"samples wider than 8 bits read at 8 bits (no 16-bit path for {im.format} {mode})")
            meta = replace(meta, notes=(*meta.notes, note))
        rgb, note = _to_srgb(rgb, mode, icc)
        if note is not None:
            meta = replace(meta, notes=(*meta.notes, ("icc", note)))
        if depth == "16" and rgb.dtype == np.uint8:
            rgb = rgb.astype(np.uint16) * np.uint16(257)
        return DecodedImage(rgb, meta)
    finally:
        im.close()


def _decode_own(fmt: formats.Format, data: bytes, max_pixels: int | None, depth: Depth, limit: str) -> DecodedImage:
    """A format with its own decoder (formats.Format.read): the same policy as Pillow's formats (pixel limit from
    the header before any pixel, EXIF orientation, ICC through LittleCMS, 8/16 bits, the metadata's caps)."""
    try:
        got = fmt.read(data, max_pixels=max_pixels)
    except ValueError as e:  # the decoder's own error, with a reason of ours (jp2.Jp2Error)
        reason = getattr(e, "reason", "truncated")
        detail = getattr(e, "detail", str(e))
        if reason == "too_large":
            detail = f"{detail} ({limit})"
        raise DecodeError(reason if reason in _REASONS else "truncated", f"{fmt.name.upper()}: {detail}") from None
    pix = got.pixels
    bits = 16 if got.bits > 8 else 8
    meta = metadata.from_groups(exif=got.exif, iptc=got.iptc, xmp=got.xmp, dpi=got.dpi, bit_depth=bits,
                                notes=got.notes)
    grey = pix.ndim == 2
    if depth == "8" and pix.dtype == np.uint16:
        pix = _scale_16bit(pix)
    pix = _oriented(pix, metadata.orientation(meta.exif))
    rgb = _grey_to_rgb(pix) if grey else np.ascontiguousarray(pix)
    icc = got.icc if got.colorspace == "icc" else None
    rgb, note = _to_srgb(rgb, ("I;16" if rgb.dtype == np.uint16 else "L") if grey else "RGB", icc)
    if note is not None:
        meta = replace(meta, notes=(*meta.notes, ("icc", note)))
    if depth == "16" and rgb.dtype == np.uint8:
        rgb = rgb.astype(np.uint16) * np.uint16(257)
    return DecodedImage(rgb, meta)


def _oriented(pix: np.ndarray, orientation: int) -> np.ndarray:
    """Pixels stored for EXIF ``orientation`` (2..8), made upright (the same mapping as PIL.ImageOps.exif_transpose)."""
    if orientation in (5, 6, 7, 8):
        pix = np.swapaxes(pix, 0, 1)  # transpose first, then the flips below
        orientation = {5: 1, 6: 2, 7: 3, 8: 4}[orientation]
    if orientation in (2, 3):
        pix = pix[:, ::-1]
    if orientation in (3, 4):
        pix = pix[::-1]
    return pix


def _read_meta(im: Image.Image, pixels: int, lift: bool) -> Metadata:
    """Load the pixels and read the metadata, each at the moment its format allows (see metadata.read)."""
    try:  # counting frames seeks through the file: done before the pixels, so frame 0 is what loads
        getattr(im, "n_frames", 1)
    except MemoryError:
        raise
    except Exception:
        pass
    if im.format == "TIFF":
        meta = metadata.read(im)
        _load(im, pixels, lift)
        return meta
    bits = metadata.source_bit_depth(im)
    _load(im, pixels, lift)
    meta = metadata.read(im)
    return meta if meta.bit_depth == bits else replace(meta, bit_depth=bits)


def _managed_pixels(im: Image.Image, meta: Metadata, depth: Depth) -> np.ndarray:
    if depth != "8" and meta.bit_depth == 16:
        if im.mode in _GREY16_MODES:
            return _grey_to_rgb(np.asarray(im).astype(np.uint16))
        if im.mode == "I":
            a = np.asarray(im)
            if a.size and a.min() >= 0 and a.max() <= 65535:
                return _grey_to_rgb(a.astype(np.uint16))
    return _to_rgb_array(im)


def _tiff_rgb48(data: bytes, im: Image.Image, meta: Metadata) -> tuple[np.ndarray | None, Metadata]:
    """A 48-bit RGB TIFF's first page at 16 bits, upright (Pillow reads only the high bytes).

    tifffile without imagecodecs decodes uncompressed and deflate TIFFs; anything else (LZW, JPEG,
    PackBits) stays on Pillow's 8-bit path with a note. tifffile inflates a whole strip whatever it holds, so
    each deflate strip is first inflated here with a bound (:func:`_check_strips`); one that would inflate past
    its pixels keeps the image on the 8-bit path too (Pillow has loaded it already, and libtiff inflates into
    a buffer of the strip's size), with a note: corrupt 16-bit data, but the picture is often fine.
    """
    try:
        import tifffile

        with tifffile.TiffFile(io.BytesIO(data)) as tf:
            page = tf.pages[0]
            _check_strips(data, page)
            a = page.asarray()
            if page.planarconfig == tifffile.PLANARCONFIG.SEPARATE and a.ndim == 3:
                a = np.moveaxis(a, 0, -1)
            tag = page.tags.get(_EXIF_ORIENTATION)
            # Pillow applies a TIFF's orientation while loading (and forgets the tag): take it from the file
            orientation = int(tag.value) if tag is not None and isinstance(tag.value, int) else 1
        a = _orient_array(a, orientation if orientation in _ORIENTATION_TRANSPOSE else 1)
        if a.dtype != np.uint16 or a.shape != (im.height, im.width, 3):
            raise ValueError(f"page 0 is {a.dtype} {a.shape}, not 16-bit RGB {im.height}x{im.width}")
    except MemoryError:
        raise
    except Exception as e:
        note = ("depth", f"48-bit RGB TIFF read at 8 bits: tifffile: {type(e).__name__}: {e}")
        return None, replace(meta, notes=(*meta.notes, note))
    return np.ascontiguousarray(a), meta


def _check_strips(data: bytes, page: Any) -> None:
    """Raise ValueError unless every strip (or tile) of ``page`` inflates to at most the pixels it holds.

    Checked before tifffile allocates anything: each stream is inflated with ``max_length`` one byte past its
    share of the pixel budget (rows per strip x width x samples x 2 bytes, or a tile's), so a stream that
    would inflate 1000x costs at most its share. Only when tifffile would inflate with its own fallback,
    ``zlib.decompress``, unbounded: with imagecodecs (optional) it uses libdeflate into a buffer of the strip's
    size, which refuses the bomb itself (LIBDEFLATE_INSUFFICIENT_SPACE), and the check would only cost a second
    inflate (+0.11 s on a 6 MP 48-bit TIFF that decodes in 0.23 s). Other codecs (LZW, ...) exist only with
    imagecodecs, which decodes them into the strip's buffer; they are left to it.
    """
    compression = int(page.compression)
    if compression not in (8, 32946) or _tifffile_inflates_bounded():  # uncompressed: its bytes are the file's
        return
    contig = int(page.planarconfig) == 1
    samples = int(page.samplesperpixel) if contig else 1
    if page.is_tiled:
        per = int(page.tilewidth) * int(page.tilelength) * max(1, int(page.tiledepth)) * samples * 2
    else:
        rows = min(int(page.rowsperstrip) or int(page.imagelength), int(page.imagelength))
        per = rows * int(page.imagewidth) * samples * 2
    for offset, count in zip(page.dataoffsets, page.databytecounts):
        stream = data[int(offset) : int(offset) + int(count)]
        out = zlib.decompressobj().decompress(stream, per + 1)
        if len(out) > per:
            raise ValueError(f"a strip at byte {offset} inflates past its {per} bytes of pixels (a deflate bomb)")


@cache
def _tifffile_inflates_bounded() -> bool:
    """Whether tifffile's deflate decoder is imagecodecs' (bounded by the strip), not its zlib fallback."""
    try:
        import tifffile

        decoder = tifffile.TIFF.DECOMPRESSORS[8]
    except Exception:  # another tifffile: check the strips ourselves
        return False
    return str(getattr(decoder, "__module__", "")).split(".")[0] == "imagecodecs"


def _orient_array(a: np.ndarray, orientation: int) -> np.ndarray:
    """EXIF orientation on an (H, W, C) array, the same result as _ORIENTATION_TRANSPOSE in Pillow."""
    if orientation == 2:
        return a[:, ::-1]
    if orientation == 3:
        return a[::-1, ::-1]
    if orientation == 4:
        return a[::-1]
    if orientation == 5:
        return a.transpose(1, 0, 2)
    if orientation == 6:
        return np.rot90(a, -1)
    if orientation == 7:
        return a[::-1, ::-1].transpose(1, 0, 2)
    if orientation == 8:
        return np.rot90(a, 1)
    return a


def device_decodable_jpeg(
    data: bytes, *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> tuple[int, int, int, Metadata] | None:
    """EXIF orientation and upright-size check for a JPEG an accelerator (nvJPEG) may decode instead of Pillow.

    Reads the header only (no pixels). Returns (orientation 1..8, upright width, upright height, metadata) for a
    baseline 8-bit grey or YCbCr JPEG in sRGB; None for anything that must take :func:`decode`'s path instead
    (not a JPEG, progressive, CMYK/YCCK, an ICC profile that is not sRGB (LittleCMS converts it there), over
    max_pixels, unreadable header), so every policy decision and every error reason stays with decode.
    """
    if len(data) < 4 or data[:2] != b"\xff\xd8":
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data), formats=["JPEG"])
        try:
            if im.mode not in ("L", "RGB") or im.info.get("progressive") or im.info.get("progression"):
                return None
            w, h = im.size
            if w < 1 or h < 1 or (max_pixels is not None and w * h > max_pixels):
                return None
            try:
                orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1))
            except Exception:  # malformed EXIF is orientation 1, as in decode_rgb
                orientation = 1
            if orientation not in _ORIENTATION_TRANSPOSE:
                orientation = 1
            icc = im.info.get("icc_profile")
            if icc and _icc_plan(bytes(icc), im.mode == "L", False) != (None, None):
                return None
            meta = metadata.read(im)  # a JPEG's metadata segments are all parsed with its header
            return (orientation, h, w, meta) if orientation >= 5 else (orientation, w, h, meta)
        finally:
            im.close()
    except Exception:
        return None


def _needs_lift(max_pixels: int | None) -> bool:
    """Whether Pillow's hard bomb limit would refuse images this call accepts."""
    pil_max = Image.MAX_IMAGE_PIXELS
    if pil_max is None:
        return False
    return max_pixels is None or max_pixels > 2 * pil_max


@contextmanager
def _pillow_guard(lift: bool, *, quiet: bool = False) -> Iterator[None]:
    """Silence Pillow's bomb warning (and lift its hard limit if asked) for one call.

    ``quiet`` silences every warning (used when re-parsing a file already refused).
    """
    with _PIL_GLOBALS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Warning if quiet else Image.DecompressionBombWarning)
        if not lift:
            yield
            return
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _open(data: bytes, max_pixels: int | None, lift: bool) -> Image.Image:
    try:
        with _pillow_guard(lift):
            return Image.open(io.BytesIO(data), formats=_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DecodeError("too_large", str(e)) from None
    except UnidentifiedImageError:
        reason, detail = _diagnose_unidentified(data)
        raise DecodeError(reason, detail) from None
    except MemoryError:
        raise
    except Exception as e:  # a plugin raised something Image.open does not catch
        reason = "truncated" if _has_signature(data) else "not_an_image"
        raise DecodeError(reason, f"cannot parse header: {type(e).__name__}: {e}") from None


def _jpeg_without_exif(data: bytes) -> bytes | None:
    """A JPEG with its APP1 Exif segments cut out (one walk over the segments before the image data), or None
    when it is not a JPEG or has none."""
    if bytes(data[:2]) != b"\xff\xd8":
        return None
    pos, keep, cut = 2, [b"\xff\xd8"], False
    while pos + 4 <= len(data) and data[pos] == 0xFF and data[pos + 1] not in (0xDA, 0xD9):
        n = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        seg = data[pos : pos + 2 + n]
        if data[pos + 1] == 0xE1 and seg[4:10] == b"Exif\0\0":
            cut = True
        else:
            keep.append(bytes(seg))
        pos += 2 + n
    return b"".join([*keep, bytes(data[pos:])]) if cut else None


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_TEXT = (b"tEXt", b"zTXt", b"iTXt")
_TEXT_GROUPS = {"XML:com.adobe.xmp": "xmp", "Raw profile type iptc": "iptc", "Raw profile type 8bim": "iptc",
                "Raw profile type exif": "exif"}


def _png_within_caps(data: bytes) -> tuple[bytes, bytes | None, tuple[tuple[str, str], ...]]:
    """A PNG without the chunks Pillow would refuse the whole image for, the ICC profile taken out of an
    oversize iCCP, and notes: (bytes for Pillow, that profile or None, notes).

    Pillow raises on a text or ICC chunk that inflates past ``PngImagePlugin.MAX_TEXT_CHUNK`` (1 MiB), and on
    text past ``MAX_TEXT_MEMORY`` in all, and the image is lost as truncated. Its limits are globals, never
    changed here; instead one walk over the chunk headers (linear: each chunk's header once, each text or
    ICC stream inflated once with a bound) drops what is over metadata's caps with a note, and hands an ICC
    profile over Pillow's limit but within ``metadata.MAX_ICC_BYTES`` (large genuine ones exist) to decode
    directly. The bytes are rebuilt only when a chunk goes.
    """
    from PIL import PngImagePlugin

    pil_chunk = min(metadata.MAX_TEXT_CHUNK, PngImagePlugin.MAX_TEXT_CHUNK)
    pil_total = min(metadata.MAX_TEXT_TOTAL, PngImagePlugin.MAX_TEXT_MEMORY)
    pieces, notes, icc = [], [], None
    pos, keep_from, text_total, n = 8, 0, 0, len(data)
    while pos + 12 <= n:
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if end > n or kind == b"IEND":
            break
        if kind == b"iCCP" or kind in _PNG_TEXT:
            body = bytes(data[pos + 8 : pos + 8 + length])
            why, profile = None, None
            if kind == b"iCCP":
                why, profile = _oversize_icc(body, pil_chunk)
                icc = profile if profile is not None else icc
                group = "icc"
            else:
                key, size = _png_text_size(kind, body, pil_chunk)
                group = _TEXT_GROUPS.get(key, f"png.{kind.decode()}")
                if size >= pil_chunk:  # (at exactly the limit Pillow may still refuse: zlib's end is unread)
                    why = f"dropped: a {kind.decode()} chunk {key[:40]!r} inflates past the text cap ({pil_chunk} B)"
                elif text_total + size > pil_total:
                    why = f"dropped: a {kind.decode()} chunk {key[:40]!r} goes past the text total ({pil_total} B)"
                else:
                    text_total += size
            if why is not None or profile is not None:
                pieces.append(data[keep_from:pos])
                keep_from = end
                if why is not None:
                    notes.append((group, why))
        pos = end
    if not pieces:
        return data, icc, tuple(notes)
    pieces.append(data[keep_from:])
    return b"".join(pieces), icc, tuple(notes)


def _oversize_icc(body: bytes, pil_limit: int) -> tuple[str | None, bytes | None]:
    """For an iCCP chunk: (why it goes, None), (None, the profile) when Pillow would refuse a profile within
    our cap, or (None, None) when Pillow can read it (or it is not ours to judge: Pillow ignores bad zlib)."""
    zero = body.find(b"\0", 0, 80)
    if zero < 0 or zero + 2 > len(body) or body[zero + 1] != 0:
        return None, None
    d = zlib.decompressobj()
    try:
        profile = d.decompress(body[zero + 2 :], metadata.MAX_ICC_BYTES + 1)
    except zlib.error:
        return None, None
    if len(profile) > metadata.MAX_ICC_BYTES:
        return f"dropped: the iCCP profile inflates past the ICC cap ({metadata.MAX_ICC_BYTES} B); assumed sRGB", None
    if len(profile) < pil_limit:
        return None, None
    return None, profile


def _png_text_size(kind: bytes, body: bytes, limit: int) -> tuple[str, int]:
    """(keyword, the text's size once inflated, or limit + 1 when past it) of a tEXt/zTXt/iTXt chunk.

    What Pillow would skip (no keyword, a bad stream) counts 0: dropping it is not ours to decide."""
    zero = body.find(b"\0", 0, 80)
    key = body[: max(zero, 0)].decode("latin-1")
    if zero < 0:
        return body[:79].decode("latin-1"), 0
    if kind == b"tEXt":
        return key, len(body) - zero - 1
    if kind == b"zTXt":
        stream = body[zero + 2 :]
    else:  # iTXt: flag, method, language\0, translated keyword\0, text
        if len(body) < zero + 3:
            return key, 0
        lang = body.find(b"\0", zero + 3)
        tk = body.find(b"\0", lang + 1) if lang >= 0 else -1
        if tk < 0:
            return key, 0
        if body[zero + 1] == 0:
            return key, len(body) - tk - 1
        stream = body[tk + 1 :]
    try:
        return key, len(zlib.decompressobj().decompress(stream, limit + 1))
    except zlib.error:
        return key, 0


def _has_signature(data: bytes) -> bool:
    return formats.sniff(data) is not None


def _diagnose_unidentified(data: bytes) -> tuple[DecodeReason, str]:
    """Classify bytes Image.open(formats=_FORMATS) could not identify (failure path only)."""
    prefix = bytes(data[:16])
    Image.init()
    ours = [(f, Image.OPEN[f]) for f in _FORMATS]
    others = [(f, v) for f, v in list(Image.OPEN.items()) if f not in _FORMATS]
    for fmt, (factory, accept) in ours + others:
        if accept is None:  # plugins without a signature check would match anything
            continue
        try:
            verdict = accept(prefix)
        except Exception:
            continue
        if not verdict:
            continue
        if fmt not in _FORMATS:
            return "unsupported", f"{fmt} images are not supported"
        if isinstance(verdict, str):
            return "unsupported", f"{fmt}: {verdict}"
        try:  # reproduce the plugin's own complaint, which Image.open swallows
            with _pillow_guard(False, quiet=True):
                factory(io.BytesIO(data), "").close()
        except MemoryError:
            raise
        except Exception as e:
            msg = str(e)
            if any(hint in msg.lower() for hint in _UNSUPPORTED_HINTS):
                return "unsupported", f"{fmt}: {msg}"
            return "truncated", f"{fmt} header is truncated or corrupt: {msg}"
        return "truncated", f"{fmt} header is truncated or corrupt"
    if _has_signature(data):
        return "truncated", "header is truncated or corrupt"
    return "not_an_image", f"not a recognised image ({len(data)} bytes starting {prefix[:8]!r})"


def _load(im: Image.Image, pixels: int, lift: bool) -> None:
    pil_max = Image.MAX_IMAGE_PIXELS
    # Pillow re-checks the size while loading some formats (TIFF, GIF): guard those
    # loads only when that check could fire, so ordinary decodes run in parallel.
    guard = lift or (pil_max is not None and pixels > pil_max)
    try:
        with _pillow_guard(lift) if guard else nullcontext():
            im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DecodeError("too_large", str(e)) from None
    except _TRUNCATION_ERRORS as e:
        msg = str(e)
        if isinstance(e, OSError) and any(hint in msg.lower() for hint in _UNSUPPORTED_HINTS):
            raise DecodeError("unsupported", f"{im.format}: {msg}") from None
        raise DecodeError(
            "truncated", f"{im.format} pixel data is truncated or corrupt: {type(e).__name__}: {msg}"
        ) from None


def _apply_orientation(im: Image.Image) -> Image.Image:
    try:
        orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # malformed EXIF: keep the stored orientation
        return im
    method = _ORIENTATION_TRANSPOSE.get(orientation)
    if method is None:
        return im
    try:
        out = ImageOps.exif_transpose(im)
    except MemoryError:
        raise
    except Exception:  # odd metadata can trip the tag rewrite; the pixels still rotate
        out = im.transpose(method)
    im.close()
    return out


def _to_rgb_array(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode in _GREY16_MODES:
        return _grey_to_rgb(_scale_16bit(np.asarray(im)))
    if mode == "I":
        return _grey_to_rgb(_scale_int32(np.asarray(im)))
    if mode == "F":
        return _grey_to_rgb(_scale_float(np.asarray(im)))
    if _has_alpha(im):
        return _composite_on_white(im)
    if mode == "L":  # Pillow's L -> RGB copies the plane three times; this is the same pixels
        return _grey_to_rgb(np.asarray(im))
    if mode == "P":
        im = im.convert("RGB")
    elif mode == "CMYK":
        im = _cmyk_to_rgb(im)
    elif mode in _CONVERT_MODES:
        im = im.convert("RGB")
    elif mode != "RGB":
        raise DecodeError("unsupported", f"pixel mode {mode!r} of {im.format} image")
    return _writeable_contiguous(np.asarray(im))


def _has_alpha(im: Image.Image) -> bool:
    if im.mode in _ALPHA_MODES:
        return True
    if im.mode in _COLOR_KEY_MODES and im.info.get("transparency") is not None:
        return True
    palette = im.palette if im.mode == "P" else None
    return palette is not None and palette.mode == "RGBA"


def _composite_on_white(im: Image.Image) -> np.ndarray:
    if im.mode != "RGBA":
        # La / RGBa are premultiplied: convert through RGBA un-premultiplies them.
        im = (im.convert("LA") if im.mode == "La" else im).convert("RGBA")
    white = Image.new("RGBA", im.size, (255, 255, 255, 255))
    out = Image.alpha_composite(white, im).convert("RGB")
    return _writeable_contiguous(np.asarray(out))


@cache
def _srgb_profile() -> Any:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(io.BytesIO(metadata.srgb_icc()))


def _cmyk_to_rgb(im: Image.Image) -> Image.Image:
    icc = im.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            out = ImageCms.profileToProfile(im, src, _srgb_profile(), outputMode="RGB")
            if out is not None and out.mode == "RGB":
                return out
        except MemoryError:
            raise
        except Exception:  # no LittleCMS, a broken or non-CMYK profile: fall back
            pass
    return im.convert("RGB")


# --------------------------------------------------------------------------- colour management (decode only)

_GREY_FAMILY = frozenset({"1", "L", "LA", "La", "I", "F"}) | _GREY16_MODES
_RGB_FAMILY = frozenset({"RGB", "RGBA", "RGBa", "RGBX", "P", "PA"})


def _to_srgb(rgb: np.ndarray, mode: str, icc: bytes | None) -> tuple[np.ndarray, str | None]:
    """Pixels described by ``icc`` (the source's profile, ``mode`` its Pillow mode) -> sRGB, and a note.

    CMYK was converted through its profile already; YCbCr/LAB/HSV profiles are not ours to apply.
    """
    if not icc or (mode not in _GREY_FAMILY and mode not in _RGB_FAMILY):
        return rgb, None
    from PIL import ImageCms

    grey = mode in _GREY_FAMILY
    wide = rgb.dtype == np.uint16
    transform, note = _icc_plan(bytes(icc), grey, wide and grey)
    if transform is None:
        return rgb, note
    if grey:  # grey -> sRGB's grey (same TRC on all three channels): neutral stays exactly neutral
        out = np.asarray(ImageCms.applyTransform(Image.fromarray(np.ascontiguousarray(rgb[:, :, 0])), transform))
        return _grey_to_rgb(out.astype(rgb.dtype)), note
    if wide:
        rgb = _scale_16bit(rgb)
        note = f"{note} at 8 bits (Pillow's LittleCMS binding has no 48-bit RGB transform)"
    out = ImageCms.applyTransform(Image.fromarray(rgb), transform)
    return _writeable_contiguous(np.asarray(out)), note


@lru_cache(maxsize=16)  # an archive's files share a handful of profiles; building a transform is the cost
def _icc_plan(icc: bytes, grey: bool, wide: bool) -> tuple[Any, str | None]:
    """(LittleCMS transform to sRGB, note); (None, None) for an sRGB(-equivalent) profile."""
    from PIL import ImageCms

    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        desc = (src.profile.profile_description or "").strip() or "an unnamed profile"
        space = src.profile.xcolor_space.strip()
    except Exception as e:
        return None, f"LittleCMS refused the profile: {type(e).__name__}: {e}; assumed sRGB"
    if space != ("GRAY" if grey else "RGB"):
        kind = "grey" if grey else "RGB"
        return None, f"{desc} is a {space} profile on {kind} pixels; ignored, assumed sRGB"
    if not grey and "sRGB" in desc:
        return None, None
    mode = ("I;16" if wide else "L") if grey else "RGB"
    try:
        transform = ImageCms.buildTransform(
            src,
            _srgb_grey_profile() if grey else _srgb_profile(),
            mode,
            mode,
            renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC,
            flags=ImageCms.Flags.BLACKPOINTCOMPENSATION,
        )
        if _is_identity(transform, mode):
            return None, None
    except Exception as e:
        return None, f"LittleCMS refused the profile {desc}: {type(e).__name__}: {e}; assumed sRGB"
    return transform, f"converted from {desc} to sRGB"


def _is_identity(transform: Any, mode: str) -> bool:
    """Whether a transform moves no probe value by more than one 8-bit step (an sRGB twin by another name)."""
    from PIL import ImageCms

    ramp = np.arange(256, dtype=np.uint8)
    if mode == "RGB":
        cube = np.stack(np.meshgrid(*[np.arange(0, 256, 51, dtype=np.uint8)] * 3), -1).reshape(-1, 3)
        probe = np.concatenate([np.repeat(ramp[:, None], 3, 1), cube])[None]
    else:
        probe = (ramp[None].astype(np.uint16) * 257) if mode == "I;16" else ramp[None]
    out = np.asarray(ImageCms.applyTransform(Image.fromarray(probe), transform))
    step = 257 if mode == "I;16" else 1
    return int(np.abs(out.astype(np.int32) - probe.astype(np.int32)).max()) <= step


@cache
def _srgb_grey_profile() -> Any:
    """A grey ICC profile with sRGB's tone curve (D50 white): grey sources land on sRGB's neutral axis.

    Built here because Pillow can only create RGB, Lab and XYZ profiles; ICC v2 layout, sRGB's
    piecewise curve as a parametric curve (type 3), which LittleCMS reads in any version.
    """
    from PIL import ImageCms

    def s15(x: float) -> bytes:
        return struct.pack(">i", round(x * 65536))

    desc = b"sRGB grey (raycolor)\0"
    tags = [
        (b"desc", b"desc\0\0\0\0" + struct.pack(">I", len(desc)) + desc + b"\0" * 78),
        (b"wtpt", b"XYZ \0\0\0\0" + s15(0.9642) + s15(1.0) + s15(0.8249)),
        (b"kTRC", b"para\0\0\0\0" + struct.pack(">HH", 3, 0)
         + b"".join(s15(v) for v in (2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045))),
        (b"cprt", b"text\0\0\0\0public domain\0"),
    ]
    offset, table, body = 128 + 4 + 12 * len(tags), b"", b""
    for sig, data in tags:
        body += b"\0" * (-len(body) % 4)
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data
    size = offset + len(body)
    header = (
        struct.pack(">I4sI4s4s4s", size, b"lcms", 0x02100000, b"mntr", b"GRAY", b"XYZ ")
        + b"\0" * 12 + b"acsp" + b"\0" * 28 + s15(0.9642) + s15(1.0) + s15(0.8249) + b"\0" * 48
    )
    return ImageCms.ImageCmsProfile(io.BytesIO(header + struct.pack(">I", len(tags)) + table + body))


def _scale_16bit(a: np.ndarray) -> np.ndarray:
    # round(v / 257) in integers: 65535 -> 255, 32768 -> 128, 257 -> 1.
    return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _stretch(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    scaled = (a.astype(np.float64) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _scale_int32(a: np.ndarray) -> np.ndarray:
    if a.size and a.min() >= 0 and a.max() <= 65535:
        return _scale_16bit(a)
    return _stretch(a)


def _scale_float(a: np.ndarray) -> np.ndarray:
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if a.size == 0:
        return a.astype(np.uint8)
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0.0 and hi <= 1.0:
        scaled = a * 255.0
    elif lo >= 0.0 and hi <= 255.0:
        scaled = a
    elif lo >= 0.0 and hi <= 65535.0:
        scaled = a / 257.0
    else:
        return _stretch(a)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    """A grey plane as (H, W, 3) RGB without three copies of it: a view whose three channels are the one plane
    (stride 0), as Pillow's L -> RGB would give them. Archive masters are mostly grey, and this is 2 or 4
    B/pixel a 39 MP scan does not hold. Nothing writes into decoded pixels; each consumer copies what it keeps."""
    grey = np.ascontiguousarray(grey)
    if not grey.flags.writeable:  # torch takes only writable arrays
        grey = grey.copy()
    return np.lib.stride_tricks.as_strided(grey[:, :, None], shape=(*grey.shape, 3), strides=(*grey.strides, 0))


def _writeable_contiguous(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.uint8)
    if not a.flags.writeable:
        a = a.copy()
    return a


# --------------------------------------------------------------------------- encoding


def _rgb_image(rgb: np.ndarray) -> Image.Image:
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) array, got {arr.dtype} {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"cannot encode an empty image {arr.shape}")
    return Image.fromarray(np.ascontiguousarray(arr))


def encode_png(rgb: np.ndarray, *, level: int = 1) -> bytes:
    """Lossless PNG of a uint8 ``(H, W, 3)`` array; ``level`` is the zlib level 0..9."""
    if not 0 <= level <= 9:
        raise ValueError(f"png level must be in 0..9, got {level}")
    buf = io.BytesIO()
    _rgb_image(rgb).save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


def extension(fmt: str) -> str:
    """File suffix for an output format (the format registry's: ``".png"``, ``".jpg"``, ``".tif"``, ...)."""
    return formats.extension(fmt)
