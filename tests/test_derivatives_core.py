"""The reduction behind --derivative (raycolor/core/derivatives.py): sizes, the area-then-Lanczos filter against
Pillow's whole-image resize, never upscaled, and the metadata's resolution scaled with the pixels."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from support import noise

from raycolor.core import derivatives
from raycolor.core.metadata import Metadata


def test_target_size_keeps_the_aspect_and_never_upscales():
    assert derivatives.target_size(6000, 4000, 3000) == (3000, 2000)
    assert derivatives.target_size(4000, 6000, 400) == (267, 400)  # 266.67 rounds to 267
    assert derivatives.target_size(5000, 1, 100) == (100, 1)  # a side never goes to 0
    assert derivatives.target_size(300, 200, 300) == (300, 200)  # no bigger: its own size
    assert derivatives.target_size(300, 200, 3000) == (300, 200)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_reduce_is_an_area_then_lanczos_reduction(dtype):
    top = np.iinfo(dtype).max
    flat = np.full((900, 1300, 3), top // 3, dtype=dtype)
    small = derivatives.reduce(flat, 100)
    # a flat image stays flat: the box step averages equal values and Lanczos' weights sum to 1 (Pillow normalises
    # them per output pixel), so each value is the input's up to one rounding of each step
    assert small.shape == (69, 100, 3) and small.dtype == dtype
    assert np.abs(small.astype(np.int64) - top // 3).max() <= 1
    # a horizontal ramp: the reduction keeps each column's mean (linear data, symmetric filters), so the ramp's
    # ends stay within one source step's worth per output pixel (13 source columns per output column) of the truth
    ramp = np.broadcast_to(np.linspace(0, 255, 1300).astype(np.uint8)[None, :, None], (900, 1300, 3)).astype(dtype)
    r = derivatives.reduce(np.ascontiguousarray(ramp), 100)[..., 0].astype(np.float64)
    centres = (np.arange(100) + 0.5) * 13 - 0.5  # source column under each output column's centre
    truth = np.interp(centres, np.arange(1300), np.linspace(0, 255, 1300).astype(np.uint8).astype(np.float64))
    assert np.abs(r[34, 5:-5] - truth[5:-5]).max() <= 1.5  # edges left out: Lanczos rings at the image's border
    img = noise(64, 30)
    assert derivatives.reduce(img, 64) is img and derivatives.reduce(img, 1000) is img  # never upscaled, no copy


@pytest.mark.parametrize("shape,edge", [((1001, 1501, 3), 400), ((1200, 1800, 3), 900), ((777, 333, 3), 100)])
def test_the_strips_give_the_whole_image_resize(shape, edge):
    """Box then Lanczos in strips against Pillow's Lanczos of the whole box-reduced image: within one unit (the
    strip's offset changes the float rounding of a pixel's centre, not its weights)."""
    a = noise(shape[1], shape[0], 3)
    h, w = shape[:2]
    tw, th = derivatives.target_size(w, h, edge)
    k = max(1, min(w // tw, h // th) // 2)
    small = np.asarray(Image.fromarray(a).reduce(k)) if k > 1 else a
    whole = np.asarray(Image.fromarray(small).resize((tw, th), Image.Resampling.LANCZOS,
                                                      box=(0, 0, min(small.shape[1], w / k), min(small.shape[0], h / k))))
    got = derivatives.reduce(a, edge)
    assert got.shape == whole.shape and np.abs(got.astype(int) - whole.astype(int)).max() <= 1


def test_scaled_meta_keeps_the_print_size_true():
    m = Metadata(dpi=(600.0, 600.0))
    assert derivatives.scaled_meta(m, (6000, 4000), (3000, 2000)).dpi == (300.0, 300.0)
    assert derivatives.scaled_meta(m, (6000, 4000), (6000, 4000)) is m
    assert derivatives.scaled_meta(Metadata(), (6000, 4000), (30, 20)).dpi is None


