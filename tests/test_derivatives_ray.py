"""Issue 36's acceptance on the session's local Ray: a 6,000 px scan through `raycolor colorize --format tiff
--tiff-pyramid --derivative jpeg:3000 --derivative jpeg:400` (the tiled pyramid, two JPEGs with the provenance
tags, one manifest row with three outputs and their hashes, one prediction per input), `raycolor verify` passing
and failing as it must. A driver SIGKILLed mid-run with derivatives, then re-run (every input with all of its
outputs, each exactly once) is tests/test_ledger_ray.py's kill test, which writes derivatives in both layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from support import TAGS, check_provenance, encoded, exiftool_read, exiftool_write, needs_exiftool, one_row_each
from typer.testing import CliRunner

from raycolor.cli import app
from raycolor.core import checkpoint
from raycolor.pipelines import runtime

pytestmark = pytest.mark.slow


@needs_exiftool
def test_acceptance_6000_px_scan_pyramid_two_jpegs_verify(ray_local, tiny_ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "connect", lambda address, **kw: "local")  # the session's Ray
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    scan = np.full((4000, 6000, 3), 180, np.uint8)  # mostly flat: the TIFF's deflate stays quick
    scan[1000:3000, 2000:4000] = 60
    (src / "scan.jpg").write_bytes(encoded(scan, "JPEG", quality=90))
    exiftool_write([src / "scan.jpg"], *(f"-{k}={v}" for k, v in TAGS.items()))
    r = CliRunner().invoke(app, ["colorize", str(src), "--output", str(out), "--checkpoint", tiny_ckpt, "--format", "tiff",
                                 "--tiff-pyramid", "--derivative", "jpeg:3000", "--derivative", "jpeg:400"])
    assert r.exit_code == 0, r.output

    [row] = one_row_each(out, [str(src / "scan.jpg")]).values()
    master, access, thumb = row["outputs"]
    assert [(e["name"], e["format"], e["width"], e["height"]) for e in row["outputs"]] == [
        ("master", "tiff", 6000, 4000), ("jpeg-3000", "jpeg", 3000, 2000), ("jpeg-400", "jpeg", 400, 267)]
    assert all(len(e["sha256"]) == 64 and e["bytes"] > 0 for e in row["outputs"]) and row["sha256"] == master["sha256"]
    with tifffile.TiffFile(master["uri"]) as tf:
        page = tf.pages[0]
        assert page.is_tiled and page.shape == (4000, 6000, 3) and len(page.subifds) >= 4  # >= 5 levels in all
        assert [lv.shape[:2] for lv in tf.series[0].levels][:5] == [(4000, 6000), (2000, 3000), (1000, 1500),
                                                                   (500, 750), (250, 375)]
    assert access["uri"] == str(out / "derivatives" / "jpeg-3000" / "scan.jpg")
    meta = checkpoint.read_meta(tiny_ckpt)
    for e in (access, thumb):  # one read each: both are named scan.jpg, in their own folders
        t = exiftool_read([Path(e["uri"])])["scan.jpg"]
        check_provenance(t, meta.model_id)
        assert (t["File:ImageWidth"], t["File:ImageHeight"]) == (e["width"], e["height"])
        assert t["IPTC:By-line"] == TAGS["IPTC:By-line"]
        with Image.open(e["uri"]) as im:
            assert im.format == "JPEG" and im.size == (e["width"], e["height"])
    success = json.loads((out / "_SUCCESS.json").read_text())
    assert success["predictions"] == success["inputs"] == 1

    def run_verify():
        return CliRunner().invoke(app, ["verify", str(out)])

    assert run_verify().exit_code == 0
    data = bytearray(Path(access["uri"]).read_bytes())
    data[len(data) // 2] ^= 0x01
    Path(access["uri"]).write_bytes(bytes(data))
    r = run_verify()
    assert r.exit_code == 1 and f"changed: {access['uri']}" in r.output, r.output
    Path(thumb["uri"]).unlink()
    r = run_verify()
    assert r.exit_code == 1 and f"missing: {thumb['uri']}" in r.output, r.output
