"""--tiff-pyramid (issue 36, item 2): a tiled TIFF with its reduced-resolution levels as SubIFDs, the form
IIIF image servers (Cantaloupe, IIPImage) and libvips read. Read back with tifffile, Pillow (libtiff) and
exiftool, each independent of the writer. Fast, no Ray."""

from __future__ import annotations

import io
import json
import shutil
import subprocess

import numpy as np
import pytest
import tifffile
from PIL import Image
from support import TAGS, check_carried_groups, check_provenance, encoded, exiftool_read, exiftool_write, needs_exiftool

from raycolor.core import metadata
from raycolor.core.formats import EncodeOptions, encode
from raycolor.core.images import decode
from raycolor.core.metadata import Metadata, Provenance

PROV = Provenance(metadata.SOFTWARE, "ckpt-pyramid-0123")
PYRAMID = EncodeOptions(tiff_pyramid=True)


def pixels(h: int, w: int, bits: int, seed: int = 0) -> np.ndarray:
    """A smooth ramp under noise: every level differs from the one before, and rounding matters."""
    rng = np.random.default_rng(seed)
    top = 65535 if bits == 16 else 255
    ramp = np.linspace(0, top * 0.7, w)[None, :, None] + np.linspace(0, top * 0.2, h)[:, None, None]
    a = ramp + rng.integers(0, top // 10, (h, w, 3))
    return a.clip(0, top).astype(np.uint16 if bits == 16 else np.uint8)


def area_average(a: np.ndarray) -> np.ndarray:
    """The exact 2x2 mean (float), an odd last row or column taken with itself: what a level must round."""
    f = a.astype(np.float64)
    if f.shape[0] % 2:
        f = np.concatenate([f, f[-1:]], axis=0)
    if f.shape[1] % 2:
        f = np.concatenate([f, f[:, -1:]], axis=1)
    return (f[0::2, 0::2] + f[1::2, 0::2] + f[0::2, 1::2] + f[1::2, 1::2]) / 4


def expected_sizes(h: int, w: int) -> list[tuple[int, int]]:
    sizes = []
    while max(h, w) > 256:
        h, w = (h + 1) // 2, (w + 1) // 2
        sizes.append((h, w))
    return sizes


def levels(data: bytes) -> tuple[tifffile.TiffPage, list[np.ndarray]]:
    """IFD0 and the pixels of every level, full resolution first, as tifffile reads them."""
    with tifffile.TiffFile(io.BytesIO(data)) as tf:
        assert len(tf.pages) == 1, "the levels are SubIFDs of IFD0, not pages of their own"
        page = tf.pages[0]
        subs = list(page.pages)
        for sub in subs:
            assert sub.is_tiled and sub.subfiletype == 1 and (sub.tilewidth, sub.tilelength) == (512, 512)
            assert (sub.compression, sub.predictor) == (8, 2)
        return page, [page.asarray()] + [s.asarray() for s in subs]


@pytest.mark.parametrize(("bits", "exif_order"), [(8, "<"), (16, "<"), (16, ">")])
def test_levels_halve_down_to_256_and_level_0_is_lossless(bits, exif_order):
    a = pixels(1037, 1301, bits)  # odd sides: the last row and column of each level are averaged with themselves
    meta = None if exif_order == "<" else Metadata(exif=_big_endian_exif())  # a TIFF keeps the EXIF's order
    data, _ = encode(a, "tiff", meta, PROV, options=PYRAMID)
    assert data[:2] == (b"II" if exif_order == "<" else b"MM")
    page, lv = levels(data)
    assert page.is_tiled and (page.tilewidth, page.tilelength) == (512, 512) and page.compression == 8
    assert [x.shape[:2] for x in lv[1:]] == expected_sizes(1037, 1301) == [(519, 651), (260, 326), (130, 163)]
    assert all(x.dtype == a.dtype and x.shape[2] == 3 for x in lv)
    assert np.array_equal(lv[0], a)
    for before, after in zip(lv, lv[1:]):
        err = np.abs(after.astype(np.float64) - area_average(before))
        assert err.max() <= 0.5, err.max()  # the 2x2 area average, rounded
        assert not np.array_equal(after, before[::2, ::2])  # not a decimation


def test_pillow_and_decode_read_level_0():
    for bits in (8, 16):
        a = pixels(600, 700, bits, seed=bits)
        data, _ = encode(a, "tiff", None, PROV, options=PYRAMID)
        with Image.open(io.BytesIO(data)) as im:  # libtiff: tiled, deflate, predictor 2
            assert im.size == (700, 600)
            got = np.asarray(im.convert("RGB"))
        want = a if bits == 8 else ((a.astype(np.uint32) + 128) // 257)
        assert np.abs(got.astype(int) - want.astype(int)).max() <= (0 if bits == 8 else 1)
        dec = decode(data, depth="auto")
        assert dec.rgb.dtype == a.dtype and np.array_equal(dec.rgb, a)


def test_6000_px_scan_has_at_least_5_levels():
    a = np.full((4000, 6000, 3), 200, np.uint8)  # mostly flat: deflate is quick
    a[1000:3000, 2000:4000] = (40, 90, 160)
    data, _ = encode(a, "tiff", None, PROV, options=PYRAMID)
    page, lv = levels(data)
    assert page.shape == (4000, 6000, 3) and page.is_tiled
    assert [x.shape[:2] for x in lv[1:]] == [(2000, 3000), (1000, 1500), (500, 750), (250, 375), (125, 188)]
    assert max(lv[-1].shape[:2]) <= 256 < max(lv[-2].shape[:2])
    block = np.zeros(lv[3].shape[:2], bool)
    block[125:375, 250:500] = True  # the block, 8 times smaller
    assert (lv[3][block] == (40, 90, 160)).all() and (lv[3][~block] == 200).all()


def test_default_tiff_is_strips_and_options_survive_encode_keywords():
    a = pixels(300, 600, 8)
    flat, _ = encode(a, "tiff", None, PROV)
    with tifffile.TiffFile(io.BytesIO(flat)) as tf:
        assert not tf.pages[0].is_tiled and not tf.pages[0].subifds
    tiled, _ = encode(a, "tiff", None, PROV, options=PYRAMID, png_level=6)  # the keyword keeps tiff_pyramid
    with tifffile.TiffFile(io.BytesIO(tiled)) as tf:
        assert tf.pages[0].is_tiled and len(tf.pages[0].subifds) == 2  # 600 -> 300 -> 150
    small, _ = encode(pixels(200, 256, 8), "tiff", None, PROV, options=PYRAMID)  # already <= 256: no levels
    with tifffile.TiffFile(io.BytesIO(small)) as tf:
        assert tf.pages[0].is_tiled and not tf.pages[0].subifds


@needs_exiftool
def test_metadata_on_ifd0_as_in_a_strip_tiff(tmp_path):
    src = tmp_path / "in.jpg"
    src.write_bytes(encoded(pixels(640, 560, 8), "JPEG"))
    exiftool_write([src], "-Orientation#=6", *(f"-{k}={v}" for k, v in TAGS.items()))
    dec = decode(src.read_bytes())
    outs = {}
    for name, options in (("strips.tif", EncodeOptions()), ("pyramid.tif", PYRAMID)):
        data, report = encode(dec.rgb, "tiff", dec.meta, PROV, options=options)
        (tmp_path / name).write_bytes(data)
        outs[name] = json.loads(report)
    t = exiftool_read([tmp_path / "strips.tif", tmp_path / "pyramid.tif"])
    p = t["pyramid.tif"]
    check_carried_groups(p, fmt="tiff")  # Artist, EXIF/GPS sub-IFDs, IPTC, XMP, ICC, 600 dpi, no thumbnail
    check_provenance(p, PROV.model_id)  # DigitalSourceType, CreatorTool, Software, the model
    assert p["IFD0:ImageWidth"] == 640 and p["IFD0:TileWidth"] == 512 and p["IFD0:SubfileType"] == 0
    assert (p["SubIFD:ImageWidth"], p["SubIFD:ImageHeight"], p["SubIFD:SubfileType"]) == (320, 280, 1)
    assert p["SubIFD:XResolution"] == 300 and p["SubIFD1:ImageWidth"] == 160
    assert outs["pyramid.tif"] == outs["strips.tif"]
    structural = ("Offsets", "ByteCounts", "RowsPerStrip", "TileWidth", "TileLength", "SubfileType")
    same = {k: v for k, v in t["strips.tif"].items() if k.split(":")[0] not in ("System", "SourceFile")}
    for k, v in same.items():
        if k.startswith(("IFD0:", "ExifIFD:", "GPS:", "IPTC:", "XMP", "ICC")) and not k.endswith(structural):
            assert p.get(k) == v, k


def _big_endian_exif() -> bytes:
    import struct

    return b"MM\0*" + struct.pack(">IH", 8, 1) + struct.pack(">HHI", 0x013B, 2, 4) + b"Bob\0" + b"\0\0\0\0"


@pytest.mark.skipif(shutil.which("vips") is None, reason="libvips' command-line tools (libvips-tools) not installed")
@pytest.mark.parametrize("bits", [8, 16])
def test_libvips_opens_every_level(tmp_path, bits):
    """What IIIF image servers built on libvips (and vips itself) see: each SubIFD level opens, at its size and
    depth, with the pixels tifffile reads (libvips reads the file with its own libtiff, an independent reader)."""
    a = pixels(1037, 1301, bits, seed=3)
    data, _ = encode(a, "tiff", None, PROV, options=PYRAMID)
    path = tmp_path / "pyramid.tif"
    path.write_bytes(data)
    _, lv = levels(data)
    for n, level in enumerate(lv):  # subifd=-1 is IFD0 itself, 0.. its SubIFDs
        ref = f"{path}[subifd={n - 1}]"
        head = subprocess.run(["vipsheader", ref], capture_output=True, text=True, check=True).stdout
        h, w = level.shape[:2]
        assert f"{w}x{h} {'uchar' if bits == 8 else 'ushort'}, 3 bands" in head, head
        avg = float(subprocess.run(["vips", "avg", ref], capture_output=True, text=True, check=True).stdout)
        assert abs(avg - level.astype(np.float64).mean()) < 1e-6 * max(1.0, avg), (n, avg)  # the same pixels
