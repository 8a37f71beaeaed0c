"""The image formats raycolor reads and writes: one registry, one entry per format (a module each).

An entry (:class:`Format`) holds a format's suffixes, its signature, its decoder (Pillow's, or its own), its
writer, the bit depths it holds and the metadata groups its container carries. Everything else asks here: the
CLI's ``--format`` choices and the config check (:data:`WRITABLE`, :func:`get`), listing (:data:`INPUT_SUFFIXES`,
through :mod:`raycolor.core.suffixes`), the decoder (:func:`sniff`, :data:`PILLOW_IDS`), the output's extension
and depth (:func:`extension`, :func:`holds`), and encoding (:func:`encode`, :func:`embed_jpeg`). Adding a format
is one module here and one line in ``_ENTRIES``.

Pure NumPy + Pillow (+ imagecodecs for JPEG 2000, imported when used): no Ray, no torch.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from raycolor.core.formats import jp2, jpeg, png, readonly, tiff, webp
from raycolor.core.formats.base import CannotHold, EncodeOptions, Format
from raycolor.core.metadata import Metadata, Provenance, prepare

__all__ = [
    "INPUT_SUFFIXES",
    "PILLOW_IDS",
    "REGISTRY",
    "WRITABLE",
    "CannotHold",
    "EncodeOptions",
    "Format",
    "embed_jpeg",
    "encode",
    "extension",
    "get",
    "holds",
    "sniff",
]

_ENTRIES = (jpeg.FORMAT, png.FORMAT, tiff.FORMAT, webp.FORMAT, jp2.FORMAT, readonly.BMP, readonly.GIF)
REGISTRY: dict[str, Format] = {f.name: f for f in _ENTRIES}
_NAMES: dict[str, Format] = {**{a: f for f in _ENTRIES for a in f.aliases}, **REGISTRY}
WRITABLE: tuple[str, ...] = tuple(f.name for f in _ENTRIES if f.write is not None)  # --format's choices
INPUT_SUFFIXES: frozenset[str] = frozenset(s for f in _ENTRIES for s in f.suffixes)  # what a listing takes
PILLOW_IDS: tuple[str, ...] = tuple(i for f in _ENTRIES for i in f.pillow)  # what Image.open may use


def get(name: str) -> Format:
    """The entry of a format name or alias ("jpg" -> jpeg); ValueError naming the choices otherwise."""
    fmt = _NAMES.get(str(name).lower())
    if fmt is None:
        raise ValueError(f"unknown image format {name!r} (raycolor writes {', '.join(WRITABLE)})")
    return fmt


def writable(name: str) -> Format:
    fmt = get(name)
    if fmt.write is None:
        raise ValueError(f"raycolor reads {fmt.name} but does not write it (it writes {', '.join(WRITABLE)})")
    return fmt


def sniff(head: bytes) -> Format | None:
    """The format a file starting with ``head`` (16 bytes or more) is in, by its signature; None if none."""
    head = bytes(head[:16])
    return next((f for f in _ENTRIES if f.recognises(head)), None)


def extension(name: str) -> str:
    """The output file's suffix for a format: ".png", ".jpg", ".tif", ".webp", ".jp2"."""
    return writable(name).extension


def holds(name: str, bits: int) -> bool:
    """Whether the format writes ``bits`` bits per sample."""
    return bits in writable(name).bits


def encode(
    rgb: np.ndarray,
    fmt: str,
    meta: Metadata | None,
    prov: Provenance,
    *,
    keep: bool = True,
    options: EncodeOptions | None = None,
    png_level: int | None = None,
    jpeg_quality: int | None = None,
) -> tuple[bytes, str]:
    """Upright sRGB pixels with the input's metadata and provenance -> (the file's bytes, the JSON report of the
    manifest's ``metadata`` column).

    ``rgb``: uint8 or uint16 ``(H, W, 3)``; a format that holds 8 bits only gets ``round(v / 257)``, and the
    report says so. ``options`` (or its two most used fields as keywords) say how to encode."""
    entry = writable(fmt)
    options = options or EncodeOptions()
    if png_level is not None or jpeg_quality is not None:
        options = dataclasses.replace(
            options,
            png_level=options.png_level if png_level is None else png_level,
            jpeg_quality=options.jpeg_quality if jpeg_quality is None else jpeg_quality,
        )
    options.check()
    arr = _check_pixels(rgb)
    h, w = arr.shape[:2]
    if entry.max_side is not None and max(h, w) > entry.max_side:
        raise CannotHold(f"{w}x{h} is larger than {entry.name} holds ({entry.max_side} px a side)")
    prepared, report = prepare(meta, prov, keep, (w, h))
    if arr.dtype == np.uint16 and 16 not in entry.bits:
        arr = ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
        report.change("depth", f"16-bit samples written as 8-bit ({entry.name.upper()} has no 16-bit mode)")
    return entry.write(arr, prepared, report, options), report.json()


def embed_jpeg(jpeg_bytes: bytes, meta: Metadata | None, prov: Provenance, *, keep: bool = True, width: int,
               height: int) -> tuple[bytes, str]:
    """The metadata :func:`encode` writes into a JPEG, inserted into one encoded elsewhere (nvJPEG on a GPU)."""
    prepared, report = prepare(meta, prov, keep, (int(width), int(height)))
    return jpeg.embed(bytes(jpeg_bytes), prepared, report), report.json()


def _check_pixels(rgb: np.ndarray) -> np.ndarray:
    arr = np.asarray(rgb)
    if arr.dtype not in (np.uint8, np.uint16) or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected a uint8 or uint16 (H, W, 3) array, got {arr.dtype} {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"cannot encode an empty image {arr.shape}")
    return np.ascontiguousarray(arr)
