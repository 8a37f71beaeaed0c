"""The has-colour rule (raycolor.core.chroma) on made images: toned prints are one tone, tinted prints and colour
photographs several hues, grey (JPEG-noisy, scanner-noisy, or a grey PNG) is grey. No Ray."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from madecolour import cyanotype, grey_noise, grey_ramp, hand_tinted, jpeg, scanned_grey, toned

from raycolor.core import chroma, color, images

SAMPLES = sorted((Path(__file__).parent.parent / "raycolor" / "samples").glob("*.jpg"))


def _hue_distance(a: float, b: float) -> float:
    return abs((a - b + 180) % 360 - 180)


def test_numpy_lab_is_colors_lab():
    rgb = np.random.default_rng(1).integers(0, 256, (4096, 3), dtype=np.uint8)
    ours = chroma.lab(rgb / 255.0)
    theirs = color.rgb_to_lab(torch.from_numpy(rgb.T.reshape(3, 64, 64).astype(np.float64) / 255)).reshape(3, -1).T.numpy()
    assert np.abs(ours - theirs).max() < 1e-6


@pytest.mark.parametrize("make, hue", [
    (lambda: toned(70, 25), 70),  # sepia
    (lambda: toned(30, 8), 30),  # selenium: faint
    (lambda: toned(270, 35), 270),  # cyanotype, made in Lab
    (cyanotype, 280),  # cyanotype, Prussian blue on paper
])
@pytest.mark.parametrize("through", ["png", "jpeg75", "noise3"])
def test_toned_prints_are_one_tone(make, hue, through):
    rgb = make()
    if through == "jpeg75":
        rgb = jpeg(rgb)
    elif through == "noise3":
        rgb = np.clip(rgb + np.random.default_rng(2).normal(0, 3, rgb.shape), 0, 255).astype(np.uint8)
    got = chroma.measure(rgb)
    assert got.has_colour is False, got
    assert got.tone_hue is not None and _hue_distance(got.tone_hue, hue) < 6, got  # JPEG moves a faint tone by ~4
    assert got.input_chroma > chroma.GREY_CHROMA, got
    lab = chroma.lab(chroma.sample(rgb))
    assert chroma.residual(lab) < chroma.TONE_RESIDUAL / 2  # margin: at most 2.5 measured


@pytest.mark.parametrize("through", ["png", "jpeg75"])
def test_hand_tinted_has_colour(through):
    rgb = hand_tinted() if through == "png" else jpeg(hand_tinted())
    got = chroma.measure(rgb)
    assert got.has_colour is True and got.tone_hue is None, got
    assert got.input_chroma > 40, got


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_colour_photographs_have_colour(path):
    got = chroma.measure(np.asarray(Image.open(path).convert("RGB")))
    assert got.has_colour is True and got.tone_hue is None, got


def test_hue_spread_alone_would_call_a_photo_toned():
    """Why the rule also asks the colour to follow lightness: a green meadow spreads less than a sepia print."""
    rgb = np.asarray(Image.open(next(p for p in SAMPLES if "meadow" in p.name)).convert("RGB"))
    lab = chroma.lab(chroma.sample(rgb))
    voting = lab[np.hypot(lab[:, 1], lab[:, 2]) > chroma.NOISE_FLOOR]
    assert chroma.hue_spread(voting[:, 1], voting[:, 2])[1] < chroma.TONE_SPREAD
    assert chroma.residual(lab) > 2 * chroma.TONE_RESIDUAL


@pytest.mark.parametrize("make, most", [
    (lambda: jpeg(grey_noise()), 0.05),  # JPEG 4:2:0 q75 of grey noise: flat chroma planes, ~0.004
    (lambda: jpeg(grey_noise(), 30), 0.05),
    (lambda: scanned_grey(2), 2.0),
    (lambda: scanned_grey(5), 4.0),  # ~3.1 after the 4 x 4 means
    (lambda: scanned_grey(5)[:192, :256], 4.5),  # small: the means overlap
    (lambda: jpeg(scanned_grey(5)), 2.0),
])
def test_noisy_grey_is_grey(make, most):
    got = chroma.measure(make())
    assert got == (got.input_chroma, None, False), got
    assert got.input_chroma < most, got
    assert most < chroma.GREY_CHROMA


def test_grey_png_and_stride_zero_grey():
    png = io.BytesIO()
    Image.fromarray(grey_ramp()[..., 0], "L").save(png, "PNG")
    decoded = images.decode(png.getvalue()).rgb
    assert chroma.is_exact_grey(decoded)  # images._grey_to_rgb's view: channel stride 0
    assert chroma.measure(decoded) == chroma.GREY
    rgb_png = io.BytesIO()
    Image.fromarray(grey_ramp()).save(rgb_png, "PNG")  # grey stored as RGB: measured, and still grey
    got = chroma.measure(images.decode(rgb_png.getvalue()).rgb)
    assert not chroma.is_exact_grey(grey_ramp())
    assert got.input_chroma < 0.05 and got.tone_hue is None and not got.has_colour


def test_sixteen_bit_and_float_agree_with_eight_bit():
    rgb = hand_tinted()
    eight = chroma.measure(rgb)
    assert chroma.measure(rgb.astype(np.uint16) * 257).input_chroma == pytest.approx(eight.input_chroma, abs=1e-6)
    assert chroma.measure(rgb / 255.0).input_chroma == pytest.approx(eight.input_chroma, abs=1e-6)
    sepia = toned(70, 25)
    assert chroma.measure(sepia.astype(np.uint16) * 257).tone_hue == pytest.approx(chroma.measure(sepia).tone_hue)


def test_tiny_and_odd_shapes():
    assert chroma.measure(np.zeros((0, 0, 3), np.uint8)) == chroma.GREY
    one = chroma.measure(np.array([[[200, 40, 40]]], np.uint8))  # one red pixel: one tone
    assert one.tone_hue is not None and not one.has_colour
    strip = hand_tinted()[:2]  # 2 rows: boxes of 2 x 2
    assert chroma.measure(strip).input_chroma >= 0


def test_cost_is_the_samples_not_the_image():
    """A 39 MP image costs what a small one does: a few ms (the decode stage runs it on every input)."""
    big = np.asarray(Image.fromarray(hand_tinted()).resize((7650, 5100)))
    chroma.measure(big)
    t0 = time.perf_counter()
    for _ in range(5):
        got = chroma.measure(big)
    per_image = (time.perf_counter() - t0) / 5
    assert got.has_colour
    assert per_image < 0.05, f"{per_image * 1e3:.1f} ms"  # measured ~8 ms on one core


def test_grid_reads_what_sample_reads():
    """The model actor samples a JPEG it decoded on its device by grid()'s rows and columns: the same samples."""
    for shape in ((384, 512), (5, 3), (1000, 37), (2, 2)):
        rgb = np.random.default_rng(3).integers(0, 256, (*shape, 3), dtype=np.uint8)
        rows, cols, k = chroma.grid(*shape)
        assert np.allclose(chroma.from_grid(rgb[rows][:, cols], k), chroma.sample(rgb))
