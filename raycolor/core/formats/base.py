"""What a format entry is: the one record every part of raycolor asks about an image format."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace


class CannotHold(ValueError):
    """An image its output format cannot hold (WebP: at most 16383 px a side): that image's ``too_large`` row."""


@dataclass(frozen=True)
class EncodeOptions:
    """How an output is encoded, whatever its format (each writer reads what concerns it)."""

    png_level: int = 1  # zlib level of PNG and of TIFF's deflate (lossless at any level)
    jpeg_quality: int = 92  # JPEG and lossy WebP
    jp2_rate: float | None = None  # None: lossless JPEG 2000 (reversible 5-3); else bits per pixel, lossy 9-7
    threads: int = 1  # threads a codec that has them may use
    tiff_pyramid: bool = False  # TIFF: tiled, with half-size levels as SubIFDs (for IIIF image servers)

    def check(self) -> None:
        if not 0 <= self.png_level <= 9:
            raise ValueError(f"png level must be in 0..9, got {self.png_level}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg quality must be in 1..100, got {self.jpeg_quality}")
        if self.jp2_rate is not None and not 0 < self.jp2_rate <= 48:
            raise ValueError(f"jp2 rate must be in (0, 48] bits per pixel, got {self.jp2_rate}")

    def derived(self, options) -> EncodeOptions:
        """A derivative's options: these (the run's), no pyramid unless asked, then its own ((key, value) pairs)."""
        return replace(self, **{"tiff_pyramid": False, **dict(options)})


@dataclass(frozen=True)
class Format:
    """One image format: how to recognise it, read it and write it, and what its container holds.

    ``write(pixels, prepared, report, options) -> bytes`` gets upright sRGB ``(H, W, 3)`` pixels at one of
    ``bits`` (the registry converts), the output's metadata (:class:`raycolor.core.metadata.Prepared`) and its
    :class:`~raycolor.core.metadata.Report`, which it tells about any group its container could not take."""

    name: str  # the --format value and the manifest's `format` column
    suffixes: tuple[str, ...]  # lower-case; an input with one of these is taken; the first is the output's extension
    magic: tuple[bytes, ...]  # leading bytes of a file of this format (one of them)
    pillow: tuple[str, ...] = ()  # Pillow format ids that read it (images.decode); () when `read` does
    write: Callable | None = None  # None: read only
    bits: tuple[int, ...] = ()  # bits per sample it writes
    carries: frozenset[str] = field(default_factory=frozenset)  # metadata groups its container holds
    aliases: tuple[str, ...] = ()  # other spellings of `name` ("jpg")
    max_side: int | None = None  # the most pixels a side may have in this format
    read: Callable | None = None  # its own decoder, when Pillow's is not the one used (see images.decode)
    sniff: Callable[[bytes], bool] | None = None  # when a prefix is not enough (WebP: RIFF....WEBP)
    summary: str = ""  # one line for --help and the docs
    mime: str = ""  # its media type ("image/jpeg"): what C2PA signing and HTTP name it by

    def recognises(self, head: bytes) -> bool:
        """Whether a file starting with ``head`` (its first 16 bytes or more) is of this format."""
        return self.sniff(head) if self.sniff is not None else head.startswith(self.magic)

    @property
    def extension(self) -> str:
        return self.suffixes[0]
