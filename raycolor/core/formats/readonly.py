"""Formats raycolor reads but does not write: their first frame decodes like any still (Pillow)."""

from raycolor.core.formats.base import Format

BMP = Format(name="bmp", suffixes=(".bmp",), magic=(b"BM",), pillow=("BMP",), mime="image/bmp",
             summary="BMP (read only)")
GIF = Format(name="gif", suffixes=(".gif",), magic=(b"GIF87a", b"GIF89a"), pillow=("GIF",), mime="image/gif",
             summary="GIF, first frame (read only)")
