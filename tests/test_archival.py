"""Archival fidelity through the whole pipeline (issue 21): real files in, `colorize` on the session's local Ray,
outputs read back by exiftool (an independent reader, not Pillow) and by tifffile for the 16-bit pixels.

The core's own tests (tests/test_metadata.py) check every group per format on single images; here the metadata
must survive the stages: decode task -> object store -> model actor -> finish task (CPU or device codec),
both layouts, and land in the manifest's `bit_depth` and `metadata` columns.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import (
    EXIFTOOL,
    NO_EXIFTOOL,
    TAGS,
    bad_metadata_inputs,
    check_carried_groups,
    check_provenance,
    encoded,
    exiftool_read,
    exiftool_write,
    noise,
)

from raycolor.config import ColorizeConfig
from raycolor.outputs.ledger import read_manifest
from raycolor.pipelines.colorize import colorize

pytestmark = [pytest.mark.slow, pytest.mark.skipif(EXIFTOOL is None, reason=NO_EXIFTOOL)]

STORED = (64, 48)  # (W, H) as stored; Orientation 6 makes the output 48 wide, 64 high


def _lightness_f64(v: np.ndarray, levels: int) -> np.ndarray:
    c = v.astype(np.float64) / (levels - 1)
    y = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return 116 * np.where(y > (6 / 29) ** 3, np.cbrt(y), y / (3 * (6 / 29) ** 2) + 4 / 29) - 16


def _ramp16() -> np.ndarray:
    return np.linspace(0, 65535, 96 * 128).round().astype(np.uint16).reshape(96, 128)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """An archive's folder: tagged JPEG, PNG and TIFF (exiftool-written: Orientation 6, 600 dpi, EXIF, IPTC,
    XMP, GPS), 16-bit grey masters (TIFF and PNG), and one file for each kind of bad metadata."""
    d = tmp_path_factory.mktemp("archive")
    good = d / "good"
    good.mkdir()
    stored = noise(*STORED)
    tagged = []
    for fmt, suffix in (("JPEG", ".jpg"), ("PNG", ".png"), ("TIFF", ".tif")):
        p = good / f"photo{suffix}"
        p.write_bytes(encoded(stored, fmt))
        tagged.append(p)
    ramp = _ramp16()
    (good / "master16.tif").write_bytes(encoded(Image.fromarray(ramp), "TIFF"))
    (good / "master16.png").write_bytes(encoded(Image.fromarray(ramp), "PNG"))
    tagged += [good / "master16.tif", good / "master16.png"]
    exiftool_write(tagged, "-Orientation#=6", *(f"-{k}={v}" for k, v in TAGS.items()))
    for p in (good / "master16.tif", good / "master16.png"):  # masters stay as scanned: upright
        exiftool_write([p], "-Orientation#=1")

    bad = d / "bad"
    bad.mkdir()
    exif = Image.Exif()  # a valid block for the corpus to cut short
    exif[0x010F] = "Acme"
    exif[0x8769] = {0x9003: "1950:06:01 05:30:00"}
    inputs, _ = bad_metadata_inputs(noise(32, 24, 5), exif.tobytes())
    for name, (data, _) in inputs.items():
        suffix = ".png" if data.startswith(b"\x89PNG") else ".jpg"
        (bad / f"{name}{suffix}").write_bytes(data)
    return good, bad


def _run(tiny_ckpt, inputs, out: Path, **kw):
    s = colorize(ColorizeConfig(inputs=tuple(map(str, inputs)), output=str(out), checkpoint=tiny_ckpt,
                                batch_size=4, **kw))
    rows = {Path(r["source"]).name: r for r in read_manifest(str(out)).to_pylist()}
    return s, rows


@pytest.mark.parametrize("device_codec", [False, True], ids=["cpu-codec", "device-codec"])
def test_jpeg_to_jpeg_keeps_every_group_and_says_a_model_coloured_it(ray_local, tiny_ckpt, archive, tmp_path,
                                                                      device_codec):
    """JPEG in, JPEG out, by Pillow in the finish task or (device codec) encoded in the model actor with the
    metadata inserted after; the bad-metadata corpus rides along: every image written, the reason in its row."""
    good, bad = archive
    s, rows = _run(tiny_ckpt, [good / "photo.jpg", bad], tmp_path / "out", format="jpeg", device_codec=device_codec)
    assert s.settings["device_codec"] is device_codec
    assert s.error == 0 and s.ok == len(rows) == 8
    row = rows["photo.jpg"]
    assert (row["width"], row["height"]) == (STORED[1], STORED[0]) and row["bit_depth"] == 8
    report = json.loads(row["metadata"])
    assert {"exif", "iptc", "xmp", "dpi"} <= set(report["kept"]) and "provenance" in report["added"]
    tool = exiftool_read([Path(r["output"]) for r in rows.values()])
    t = tool["photo.jpg"]
    check_carried_groups(t, fmt="jpeg")
    check_provenance(t, s.model_id)
    expected = {  # group dropped -> words of its reason (tests/test_metadata.py holds the exact texts)
        "corrupt_exif.jpg": ("exif", "corrupt"),
        "makernote.jpg": ("exif.MakerNote", "dropped"),
        "big_xmp.png": ("xmp", "exceeds a JPEG APP1 segment"),
        "unparseable_xmp.png": ("xmp", "unparseable"),
        "refused_icc.jpg": ("icc", "LittleCMS refused"),
        "truncated_exif.jpg": ("exif.", "truncated or corrupt"),
    }
    for name, (group, words) in expected.items():
        r = rows[name]
        assert r["status"] == "ok" and Path(r["output"]).stat().st_size > 0, name
        dropped = json.loads(r["metadata"]).get("dropped", {})
        assert any((g == group or (group.endswith(".") and g.startswith(group))) and words in why
                   for g, why in dropped.items()), (name, dropped)
        check_provenance(tool[Path(r["output"]).name], s.model_id)
    assert "iptc" in json.loads(rows["wrong_iptc.jpg"]["metadata"])["kept"]  # copied verbatim, charset and all


def test_strip_keeps_only_the_provenance(ray_local, tiny_ckpt, archive, tmp_path):
    good, _ = archive
    s, rows = _run(tiny_ckpt, [good / "photo.jpg"], tmp_path / "out", format="jpeg", metadata="strip")
    t = exiftool_read([Path(rows["photo.jpg"]["output"])])["photo.jpg"]
    check_provenance(t, s.model_id)
    assert not any(k.startswith(("GPS:", "IPTC:", "XMP-dc:", "ExifIFD:DateTime")) for k in t)
    assert "IFD0:Artist" not in t and "IFD0:Copyright" not in t
    assert s.settings["metadata"] == "strip"


def test_tiff_masters_come_back_16_bit_with_their_tags(ray_local, tiny_ckpt, archive, tmp_path):
    """TIFF in, TIFF out (deflate). The 16-bit ramp keeps its lightness: p99.9 |dL| <= 0.05 (8 bits cannot do
    better than ~0.14 near black: half a code step times dL/dv = 69.9 / 255). L crosses the object store as
    uint16 in steps of 100/65535 (error <= 7.6e-4), the 16-bit output rounds to 1/65535 of full scale
    (<= 5.3e-4 of L near black), and the model's chroma at a = b ~ 0 moves L by nothing (L is kept)."""
    import tifffile

    good, _ = archive
    s, rows = _run(tiny_ckpt, [good / "photo.tif", good / "master16.tif"], tmp_path / "out", format="tiff")
    assert s.ok == 2
    master, photo = rows["master16.tif"], rows["photo.tif"]
    assert master["bit_depth"] == 16 and photo["bit_depth"] == 8
    assert master["output"].endswith(".tif")
    out = tifffile.imread(master["output"])
    assert out.dtype == np.uint16 and out.shape == (*_ramp16().shape, 3)
    # L of the colorized output against L of the master, both in float64
    lin = np.where(out / 65535 <= 0.04045, out / 65535 / 12.92, ((out / 65535 + 0.055) / 1.055) ** 2.4)
    y = lin @ np.array([0.212671, 0.715160, 0.072169])
    f = np.where(y > (6 / 29) ** 3, np.cbrt(y), y / (3 * (6 / 29) ** 2) + 4 / 29)
    dl = np.abs((116 * f - 16) - _lightness_f64(_ramp16(), 65536))
    assert np.quantile(dl, 0.999) <= 0.05, np.quantile(dl, 0.999)
    tool = exiftool_read([Path(master["output"]), Path(photo["output"])])
    assert tool["master16.tif"]["IFD0:BitsPerSample"] == "16 16 16"
    for name in ("master16.tif", "photo.tif"):
        check_carried_groups(tool[name], fmt="tiff")
        check_provenance(tool[name], s.model_id)


def test_png_in_webdataset_tars_carries_it_too(ray_local, tiny_ckpt, archive, tmp_path):
    """PNG in, PNG out in the webdataset layout: the tar members are the same files, 16-bit included."""
    good, _ = archive
    out = tmp_path / "out"
    s, rows = _run(tiny_ckpt, [good / "photo.png", good / "master16.png"], out, format="png", layout="webdataset")
    assert s.ok == 2 and rows["master16.png"]["bit_depth"] == 16
    extracted = tmp_path / "members"
    extracted.mkdir()
    for tar_path in out.glob("shards/*.tar"):
        with tarfile.open(tar_path) as tf:
            for m in tf.getmembers():
                (extracted / Path(m.name).name).write_bytes(tf.extractfile(m).read())
    side = json.loads((extracted / "master16.json").read_bytes())
    assert side["bit_depth"] == 16 and "xmp" in side["metadata"]["kept"]
    tool = exiftool_read([extracted / "photo.png", extracted / "master16.png"])
    assert tool["master16.png"]["PNG:BitDepth"] == 16
    for name in ("photo.png", "master16.png"):
        check_carried_groups(tool[name], fmt="png")
        check_provenance(tool[name], s.model_id)
