"""Quality end to end: a briefly trained model beats the grey baseline through `raycolor evaluate --json`.

The set is learnable on purpose: light red-ish top halves over dark blue-ish bottom halves under random grey
texture (the same offset on R, G and B, so lightness varies but the hue is fixed by position and lightness).
A few epochs of Ray Train from scratch (weights=None, 32 px, one CPU worker) on the session's local Ray must
give held-out images a higher PSNR than leaving them grey, measured by the real CLI in this process (the
``ray_local`` fixture started Ray, so ``raycolor evaluate`` reuses it). Nothing is mocked.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from raycolor.cli import app
from raycolor.config import TrainConfig

pytestmark = pytest.mark.slow

TOP = (225, 95, 85)  # light red
BOTTOM = (35, 45, 150)  # dark blue


def make_set(folder: Path, n: int, size: int, seed: int) -> Path:
    """n PNGs of size x size: colour follows position and lightness, texture is grey noise."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = np.empty((size, size, 3), np.float32)
        split = size // 2 + int(rng.integers(-size // 8, size // 8 + 1))  # the boundary moves a little
        img[:split] = TOP
        img[split:] = BOTTOM
        img += rng.normal(0, 4, 3)  # a small per-image colour cast
        img += rng.uniform(-25, 25, (size, size, 1))  # grey texture
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / f"img{i:02d}.png")
    return folder


def test_trained_model_beats_grey_baseline_via_cli(ray_local, tmp_path):
    from raycolor.pipelines.training import driver as ray_train

    train = make_set(tmp_path / "train", n=20, size=32, seed=0)
    held_out = make_set(tmp_path / "held-out", n=6, size=48, seed=1)  # larger than the render size on purpose
    out = tmp_path / "run"

    t0 = time.perf_counter()
    result = ray_train.fit(
        TrainConfig(
            data=(str(train),),
            val=(str(held_out),),
            output=str(out),
            epochs=3,
            image_size=32,
            batch_size=4,
            workers=1,
            weights=None,
            freeze_encoder_epochs=1,
            lr=2e-3,
            finetune_lr=2e-4,
            seed=0,
        ),
        progress=False,
    )
    fit_s = time.perf_counter() - t0
    assert result.epochs_run == 3
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["stage"] for m in lines] == ["frozen", "finetune", "finetune"]

    t0 = time.perf_counter()
    gallery = tmp_path / "gallery.png"
    r = CliRunner().invoke(
        app,
        ["evaluate", "--checkpoint", str(out / "model"), "--data", str(held_out), "--json", "--gallery", str(gallery)],
    )
    eval_s = time.perf_counter() - t0
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)  # the connect line goes to stderr: stdout is the JSON object alone
    print(f"fit {fit_s:.1f} s, evaluate {eval_s:.1f} s, report {report}, training {lines[-1]}")

    assert report["images"] == 6 and report["errors"] == 0
    model, baseline = report["model"], report["baseline"]
    for section in (model, baseline):
        for key in ("psnr", "ssim", "colourfulness", "colourfulness_original", "delta_cf"):
            assert isinstance(section[key], float) and math.isfinite(section[key]), (key, report)
    assert model["psnr"] > baseline["psnr"], report
    # the grey baseline has no colour beyond uint8 rounding of the Lab round trip; the model put some back
    assert baseline["colourfulness"] < 0.5
    assert model["colourfulness"] > 5 * max(baseline["colourfulness"], 0.5)
    assert model["colourfulness_original"] == pytest.approx(baseline["colourfulness_original"])
    assert gallery.is_file() and report["gallery"] == str(gallery)
