"""JPEG 2000 through the whole pipeline, as an archive meets it (issue 33): masters in JP2 (ours, and another
encoder's in the Library of Congress newspaper profile), mixed with TIFF and JPEG, in a folder, a tar and a
manifest on S3; outputs in JP2 checked by jpylyzer (the validator JP2 archives use) and exiftool (independent
readers), and 16-bit masters coming back 16-bit."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import EXIFTOOL, encoded, exiftool_read, lightness_rounding_bound, noise

from raycolor.config import ColorizeConfig
from raycolor.core import color, images, jp2, metadata
from raycolor.outputs.ledger import read_manifest
from raycolor.pipelines.colorize import colorize

pytestmark = [pytest.mark.slow]

JPYLYZER = shutil.which("jpylyzer") or str(Path(__file__).parent.parent / ".venv" / "bin" / "jpylyzer")


def _valid_jp2(path: str) -> bool:
    """jpylyzer's verdict on a file: isValid True."""
    out = subprocess.run([JPYLYZER, path], capture_output=True, text=True, check=True).stdout
    return "<isValid format=\"jp2\">True</isValid>" in out


def _ramp16() -> np.ndarray:
    return np.linspace(0, 65535, 96 * 128).round().astype(np.uint16).reshape(96, 128)


def _lightness_f64(v: np.ndarray, levels: int) -> np.ndarray:
    c = v.astype(np.float64) / (levels - 1)
    y = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return 116 * np.where(y > (6 / 29) ** 3, np.cbrt(y), y / (3 * (6 / 29) ** 2) + 4 / 29) - 16


def _rgb_lightness16(out: np.ndarray) -> np.ndarray:
    lin = np.where(out / 65535 <= 0.04045, out / 65535 / 12.92, ((out / 65535 + 0.055) / 1.055) ** 2.4)
    y = lin @ np.array([0.212671, 0.715160, 0.072169])
    f = np.where(y > (6 / 29) ** 3, np.cbrt(y), y / (3 * (6 / 29) ** 2) + 4 / 29)
    return 116 * f - 16


def _loc_newspaper(grey: np.ndarray) -> bytes:
    """Another encoder's JP2 in the Chronicling America profile: 8-bit grey, 1024² tiles, RLCP, 9-7 irreversible,
    about 1 bit per pixel (Pillow's OpenJPEG writer, not raycolor's)."""
    return encoded(Image.fromarray(grey), "JPEG2000", tile_size=(1024, 1024), progression="RLCP", irreversible=True,
                   quality_mode="rates", quality_layers=[8.0], num_resolutions=6)


def test_16_bit_jp2_masters_come_back_16_bit_in_jp2_tiff_and_png(ray_local, tiny_ckpt, tmp_path):
    """A 16-bit grey JP2 master in gives a 16-bit JP2, TIFF or PNG out whose lightness is the master's: p99.9
    |dL| <= 0.05 (the bound test_archival holds for TIFF, for the same reasons: L crosses the object store in
    steps of 100/65535, the 16-bit output rounds to 1/65535 of full scale, and the model's chroma near a = b = 0
    leaves L as it is). The JP2 output is lossless (reversible 5-3), so it holds exactly what was composed."""
    import tifffile

    src = tmp_path / "in"
    src.mkdir()
    (src / "master16.jp2").write_bytes(jp2.encode(_ramp16(), dpi=(400.0, 400.0)))
    for fmt in ("jp2", "tiff", "png"):
        out = tmp_path / f"out-{fmt}"
        s = colorize(ColorizeConfig(inputs=(str(src),), output=str(out), checkpoint=tiny_ckpt, format=fmt))
        [row] = read_manifest(str(out)).to_pylist()
        assert (s.ok, row["bit_depth"]) == (1, 16), row
        data = Path(row["output"]).read_bytes()
        if fmt == "tiff":
            got = tifffile.imread(row["output"])
        elif fmt == "png":  # Pillow reads a 48-bit PNG's high bytes only: imagecodecs' libpng reads all 16
            import imagecodecs

            got = imagecodecs.png_decode(data)
        else:
            got = jp2.decode(data, max_pixels=None).pixels
            assert _valid_jp2(row["output"])
        assert got.dtype == np.uint16 and got.shape == (*_ramp16().shape, 3), (fmt, got.dtype, got.shape)
        dl = np.abs(_rgb_lightness16(got.astype(np.float64)) - _lightness_f64(_ramp16(), 65536))
        assert np.quantile(dl, 0.999) <= 0.05, (fmt, np.quantile(dl, 0.999))


@pytest.mark.skipif(EXIFTOOL is None, reason="needs exiftool")
def test_a_mixed_archive_folder_a_tar_of_jp2s_and_what_is_not_taken(ray_local, tiny_ckpt, tmp_path):
    """One run over a folder holding JP2 (ours and the newspaper profile's), TIFF, JPEG, PDF and XML files, and a
    tar of JP2 members, written as JP2: every image colorized, each JP2 output valid to jpylyzer, exiftool reads
    the provenance and the resolution from it, the newspaper page's L is the decoder's own pixels' L (within 8-bit
    rounding of the composed output), and the PDFs and XML are reported as not taken."""
    folder = tmp_path / "archive"
    folder.mkdir()
    page = np.asarray(Image.fromarray(noise(300, 200, 3)).convert("L").resize((300, 200)))
    (folder / "page.jp2").write_bytes(_loc_newspaper(page))
    (folder / "ours.jp2").write_bytes(jp2.encode(noise(40, 30, 4), dpi=(300.0, 300.0)))
    (folder / "scan.tif").write_bytes(encoded(noise(36, 28, 5), "TIFF"))
    (folder / "photo.jpg").write_bytes(encoded(noise(32, 24, 6), "JPEG"))
    for i in range(3):
        (folder / f"doc{i}.pdf").write_bytes(b"%PDF-1.4\n%%EOF\n")
    (folder / "mets.xml").write_bytes(b"<mets/>")
    tar = tmp_path / "batch.tar"
    with tarfile.open(tar, "w") as tf:
        for name, seed in (("a/one.jp2", 7), ("two.j2k", 8)):
            data = jp2.encode(noise(24, 20, seed))
            if name.endswith(".j2k"):  # a raw codestream, as .j2k files are
                data = data[data.index(b"jp2c") + 4:]
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    out = tmp_path / "out"
    s = colorize(ColorizeConfig(inputs=(str(folder), str(tar)), output=str(out), checkpoint=tiny_ckpt, format="jp2"))
    rows = {r["source"].rsplit("/", 1)[-1]: r for r in read_manifest(str(out)).to_pylist()}
    assert s.error == 0 and s.ok == 6, rows
    assert set(rows) == {"page.jp2", "ours.jp2", "scan.tif", "photo.jpg", "batch.tar#a/one.jp2".rsplit("/", 1)[-1],
                         "batch.tar#two.j2k"}
    assert s.not_taken == {".pdf": 3, ".xml": 1}
    success = json.loads((out / "_SUCCESS.json").read_text())
    assert success["not_taken"] == {".pdf": 3, ".xml": 1}
    outputs = [Path(r["output"]) for r in rows.values()]
    assert all(p.suffix == ".jp2" and _valid_jp2(str(p)) for p in outputs)
    tool = exiftool_read(outputs)
    for p in outputs:
        t = tool[p.name]
        assert t["XMP-iptcExt:DigitalSourceType"] == metadata.DIGITAL_SOURCE_TYPE, t
        assert t["XMP-xmp:CreatorTool"] == metadata.SOFTWARE
    # the `res ` box's capture resolution, which exiftool gives per centimetre: 300 dpi is 118.11 px/cm
    assert float(tool["ours.jp2"]["Jpeg2000:CaptureXResolution"]) == pytest.approx(300 / 2.54, rel=1e-3)
    # the newspaper page: L of the output against L of the decoder's own pixels (Pillow's OpenJPEG)
    with Image.open(folder / "page.jp2") as im:
        own = np.asarray(im.convert("L"))
    got = jp2.decode(Path(rows["page.jp2"]["output"]).read_bytes(), max_pixels=None).pixels
    import torch

    def lightness(rgb):
        return color.rgb_uint8_to_l(torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1))

    dl = (lightness(got) - lightness(np.repeat(own[..., None], 3, 2))).abs().max().item()
    assert dl <= lightness_rounding_bound() + 1e-3, dl


def test_a_manifest_of_jp2_objects_on_s3(ray_local, s3_env, tiny_ckpt):
    fs = s3_env.fs()
    bucket = s3_env.bucket("jp2")
    for i in range(3):
        fs.pipe(f"{bucket}/masters/m{i}.jp2", jp2.encode(noise(30 + i, 20, i)))
    fs.pipe(f"{bucket}/lists/list.txt", "".join(f"s3://{bucket}/masters/m{i}.jp2\n" for i in range(3)).encode())
    out = f"s3://{bucket}/out"
    s = colorize(ColorizeConfig(inputs=(f"s3://{bucket}/lists/list.txt",), output=out, checkpoint=tiny_ckpt,
                                format="jpeg"))
    assert (s.inputs, s.ok, s.error) == (3, 3, 0)
    rows = read_manifest(out).to_pylist()
    assert sorted(r["width"] for r in rows) == [30, 31, 32] and {r["height"] for r in rows} == {20}
    for r in rows:
        assert images.decode(fs.cat_file(r["output"].split("://", 1)[1])).rgb.shape[:2] == (r["height"], r["width"])
