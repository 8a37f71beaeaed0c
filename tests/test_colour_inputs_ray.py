"""--colour-inputs skip through Ray Data on the local Ray: a skipped row is done (resume, --retry-errors all)."""

from __future__ import annotations

import json

import pytest
from madecolour import grey_ramp, hand_tinted
from PIL import Image

from raycolor.config import ColorizeConfig
from raycolor.outputs.ledger import read_manifest
from raycolor.pipelines.colorize import colorize

pytestmark = pytest.mark.slow


def test_skip_colour_inputs_then_rerun_and_retry_all(ray_local, tiny_ckpt, tmp_path):
    """A grey image and a two-hue (hand-tinted) image: one ok row and output, one skipped row (error
    "has_colour: <chroma>", no output) that _SUCCESS.json counts as skipped, not as an error; re-runs, plain and
    with retry_errors="all", keep it as it is: one row, never redone."""
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(grey_ramp()[::4, ::4, 0], "L").save(src / "grey.png")
    Image.fromarray(hand_tinted()[::4, ::4]).save(src / "tinted.png")
    out = tmp_path / "out"
    config = ColorizeConfig(inputs=(str(src),), output=str(out), checkpoint=tiny_ckpt, batch_size=4,
                            colour_inputs="skip")

    s = colorize(config)
    assert (s.inputs, s.ok, s.error, s.colour_skipped, s.has_colour, s.processed) == (2, 1, 0, 1, 1, 2)
    rows = {r["source"]: r for r in read_manifest(str(out)).to_pylist()}
    assert len(rows) == 2
    grey, tinted = rows[str(src / "grey.png")], rows[str(src / "tinted.png")]
    assert (grey["status"], grey["has_colour"], grey["input_chroma"], grey["tone_hue"]) == ("ok", False, 0.0, None)
    assert (tinted["status"], tinted["output"], tinted["has_colour"]) == ("skipped", None, True)
    assert tinted["error"] == f"has_colour: {tinted['input_chroma']:.1f}" and tinted["input_chroma"] > 30
    assert [p.name for p in (out / "images").iterdir()] == ["grey.png"]
    success = json.loads((out / "_SUCCESS.json").read_text())
    assert (success["ok"], success["error"], success["colour_skipped"], success["has_colour"]) == (1, 0, 1, 1)
    assert success["settings"]["colour_inputs"] == "skip"
    [stats] = [json.loads(p.read_text()) for p in (out / "_stats").iterdir()]
    assert (stats["skipped"], stats["error"], stats["errors_by_reason"]) == (1, 0, {})

    for retry in ("none", "all"):
        again = colorize(ColorizeConfig(**{**config.__dict__, "retry_errors": retry}))
        assert (again.processed, again.ok, again.error, again.colour_skipped) == (0, 1, 0, 1), retry
        after = {r["source"]: r for r in read_manifest(str(out)).to_pylist()}
        assert len(read_manifest(str(out))) == 2 and after[str(src / "tinted.png")] == tinted, retry
    assert [p.name for p in (out / "images").iterdir()] == ["grey.png"]
