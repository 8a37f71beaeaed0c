"""JPEG 2000 (the JP2 file and its raw codestream): read by raycolor.core.jp2 (OpenJPEG through imagecodecs, all
precisions, the container's boxes), written there too. The master form is lossless (reversible 5-3); --jp2-rate
gives lossy 9-7 access copies. Tiles of 1024², RPCL, resolution levels down to about 256 px, so an image server
answers a thumbnail from one level. The container holds every group: XMP, EXIF and IPTC in their uuid boxes,
resolution in `res `, colour as enumerated sRGB in `colr`."""

from __future__ import annotations

from raycolor.core import jp2
from raycolor.core.formats.base import EncodeOptions, Format
from raycolor.core.metadata import Prepared, Report


def write(arr, prepared: Prepared, report: Report, options: EncodeOptions) -> bytes:
    return jp2.encode(arr, lossless=options.jp2_rate is None, rate=options.jp2_rate, xmp=prepared.xmp,
                      exif=prepared.exif_bytes(), iptc=prepared.iptc, dpi=prepared.dpi, threads=options.threads)


FORMAT = Format(
    name="jp2", suffixes=jp2.SUFFIXES, magic=jp2.SIGNATURES, write=write, bits=(8, 16),
    carries=frozenset({"exif", "iptc", "xmp", "icc", "dpi"}), aliases=("jpeg2000", "j2k"), max_side=2**32 - 1,
    read=jp2.decode, mime="image/jp2",
    summary="JPEG 2000, lossless 5-3 (or lossy at --jp2-rate), 8 or 16 bits, tiled, RPCL",
)
