"""`raycolor evaluate` through the CLI on the session's local Ray: the report has the colour metrics for the
model and the grey baseline, its set-level figures follow their definitions, and the gallery has the ab panels."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from raycolor.cli import app
from raycolor.core import metrics
from raycolor.core.colorize import grey_baseline
from raycolor.core.metrics import METRICS

pytestmark = pytest.mark.slow

COLOUR_KEYS = ("auc", "auc_rebalanced", "colourfulness_ratio", "ciede2000")


def _images(folder) -> list[np.ndarray]:
    """Three colourful images of different sizes and one grey one (its own colourfulness ratio is undefined)."""
    rng = np.random.default_rng(7)
    folder.mkdir()
    imgs = []
    for h, w in [(24, 36), (30, 30), (40, 28)]:
        img = np.empty((h, w, 3), np.float64)
        img[: h // 2] = rng.integers(30, 226, 3)
        img[h // 2 :] = rng.integers(30, 226, 3)
        img += rng.uniform(-20, 20, (h, w, 1))
        imgs.append(img.clip(0, 255).astype(np.uint8))
    imgs.append(np.tile(np.linspace(20, 230, 32, dtype=np.uint8)[None, :, None], (26, 1, 3)))
    for i, img in enumerate(imgs):
        Image.fromarray(img).save(folder / f"{i}.png")
    return imgs


def test_evaluate_json_has_the_colour_metrics_for_model_and_baseline(ray_local, tiny_ckpt, tmp_path):
    originals = _images(tmp_path / "in")
    gallery = tmp_path / "g.png"
    args = ["evaluate", "--checkpoint", tiny_ckpt, "--data", str(tmp_path / "in"), "--json", "--gallery", str(gallery)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["images"] == 4 and report["errors"] == 0
    model, baseline = report["model"], report["baseline"]
    for section in (model, baseline):
        assert list(section) == list(METRICS)
        for key in COLOUR_KEYS:
            assert isinstance(section[key], float) and math.isfinite(section[key]), (key, report)
        # the set's colourfulness ratio is the ratio of the two means the report shows beside it
        assert section["colourfulness_ratio"] == pytest.approx(
            section["colourfulness"] / section["colourfulness_original"]
        )
        assert 0 <= section["auc_rebalanced"] <= 1 and 0 <= section["auc"] <= 1

    # the grey baseline is deterministic: its figures, computed here from the originals
    greys = [grey_baseline(o) for o in originals]
    per = [metrics.image_metrics(g, o) for g, o in zip(greys, originals)]
    for key in ("auc", "ciede2000"):
        assert baseline[key] == pytest.approx(np.mean([p[key] for p in per]), rel=1e-6), key
    sums = sum(metrics.auc_bin_sums(metrics.lab(g), metrics.lab(o)) for g, o in zip(greys, originals))
    assert baseline["auc_rebalanced"] == pytest.approx(metrics.auc_rebalanced_from_sums(sums), rel=1e-6)
    # set-level, not the mean of the images' own rebalanced AuCs
    assert baseline["auc_rebalanced"] != pytest.approx(np.mean([p["auc_rebalanced"] for p in per]), rel=1e-3)
    assert baseline["colourfulness_ratio"] < 0.02  # grey is grey
    assert baseline["auc_rebalanced"] < baseline["auc"]  # the rarer, more saturated colours are the ones grey misses

    # the gallery: five columns, the last two the square ab panels
    g = np.asarray(Image.open(gallery))
    widest = max(round(o.shape[1] * 160 / o.shape[0]) for o in originals)
    assert g.shape[1] == 3 * widest + 2 * 160 + 6 * 4
