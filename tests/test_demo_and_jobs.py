"""`raycolor demo` (the embedded default job) and the jobs/ entry points, run for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from raycolor.cli import app
from raycolor.core import checkpoint
from raycolor.core.model import build_colorizer
from raycolor.demo import HELD_OUT_EVERY, sample_photos

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_samples_are_shipped_with_attribution():
    photos = sample_photos()
    assert 10 <= len(photos) <= 20
    assert sum(p.stat().st_size for p in photos) <= 2 * 1024 * 1024
    attribution = (photos[0].parent / "ATTRIBUTION.md").read_text()
    assert all(p.name in attribution for p in photos)


def test_demo_small(ray_local, tmp_path):
    out = tmp_path / "demo"
    r = CliRunner().invoke(
        app, ["demo", "--output", str(out), "--epochs", "1", "--image-size", "32", "--weights", "none"]
    )
    assert r.exit_code == 0, r.output
    held_out = len(sample_photos()[HELD_OUT_EVERY - 1 :: HELD_OUT_EVERY])
    pngs = list((out / "colorized" / "images").rglob("*.png"))
    assert len(pngs) == held_out
    rows = pads.dataset(str(out / "colorized" / "manifest"), format="parquet").to_table().to_pylist()
    assert len(rows) == held_out and {r["status"] for r in rows} == {"ok"}
    gallery = Image.open(out / "gallery.png")
    assert gallery.size[0] > 3 * 32 and gallery.size[1] > held_out * 32
    assert (out / "train" / "model" / "config.json").exists()
    assert len((out / "train" / "metrics.jsonl").read_text().splitlines()) == 1
    assert str(out / "gallery.png") in r.output


def _ray_address() -> str:
    import ray

    return ray.get_runtime_context().gcs_address


def test_colorize_job_joins_the_running_cluster(ray_local, tmp_path):
    torch.manual_seed(0)
    checkpoint.save(str(tmp_path / "ck"), build_colorizer(weights=None), render_size=32)
    (tmp_path / "in").mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(tmp_path / "in" / "a.jpg")
    env = {**os.environ, "RAY_ADDRESS": _ray_address()}
    r = subprocess.run(
        [sys.executable, "jobs/colorize.py", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
         "--checkpoint", str(tmp_path / "ck")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert f"Connected to Ray cluster at {env['RAY_ADDRESS']}" in r.stderr
    assert json.loads((tmp_path / "out" / "_SUCCESS.json").read_text())["ok"] == 1


@pytest.mark.parametrize("job", ["train", "colorize", "evaluate"])
def test_job_entry_points_take_the_cli_flags(job):
    r = subprocess.run([sys.executable, f"jobs/{job}.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "--output" in r.stdout or "--checkpoint" in r.stdout
