"""The gallery's ab panels: where a colour lands on the ab plane, and the panels' place in the gallery."""

import numpy as np
import pytest

from raycolor.core import gallery, metrics

H = 40


def _solid(rgb, h=30, w=45):
    return np.full((h, w, 3), rgb, np.uint8)


def _coloured_pixels(panel: np.ndarray) -> np.ndarray:
    """(y, x) of the panel's pixels that are neither background nor crosshair."""
    grey = (panel.max(axis=2) - panel.min(axis=2)) < 3
    return np.argwhere(~grey)


def test_ab_histogram_counts_every_pixel_in_the_right_cell():
    img = _solid((200, 40, 40))  # a red: a > 0, b > 0
    h = gallery.ab_histogram(img)
    assert h.sum() == img.shape[0] * img.shape[1] and np.count_nonzero(h) == 1
    (row, col), = np.argwhere(h)
    a, b = metrics.lab(img[:1, :1])[0, 0, 1:]
    assert col == int((a + 110) / 220 * 64) and row == 63 - int((b + 110) / 220 * 64)


@pytest.mark.parametrize(
    ("rgb", "quadrant"),
    [((200, 40, 40), "upper right"), ((40, 170, 60), "upper left"), ((40, 60, 200), "lower right"),
     ((128,) * 3, "centre")],
)
def test_ab_panel_puts_a_colour_in_its_quadrant_in_its_own_hue(rgb, quadrant):
    panel = gallery.ab_panel(_solid(rgb), 128)
    assert panel.shape == (128, 128, 3) and panel.dtype == np.uint8
    pix = _coloured_pixels(panel)
    assert (panel[64, 10] < panel[10, 10]).all()  # the crosshair is drawn
    if quadrant == "centre":  # grey: one cell beside the crosshair, in a near-grey (its centre is 2.4 off)
        assert len(pix) > 0 and (np.abs(pix - 63) <= 1).all()
        return
    y, x = pix.mean(axis=0)
    assert (y < 64) == quadrant.startswith("upper") and (x > 64) == quadrant.endswith("right")
    painted = panel[int(y), int(x)].astype(int)
    assert int(np.argmax(painted)) == int(np.argmax(rgb))  # painted in its own hue


def test_a_cast_is_a_small_blob_and_a_photo_a_spread():
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    sepia = np.clip(photo.mean(axis=2, keepdims=True) * (1.1, 0.95, 0.75), 0, 255).astype(np.uint8)
    spread = len(_coloured_pixels(gallery.ab_panel(photo, 64)))
    cast = len(_coloured_pixels(gallery.ab_panel(sepia, 64)))
    assert cast < spread / 10


def test_gallery_has_the_two_ab_panels_per_row():
    rows = [
        ("red", _solid((118,) * 3), _solid((150, 120, 90)), _solid((200, 40, 40))),
        ("blue", _solid((90,) * 3, 20, 20), _solid((120, 100, 80), 20, 20), _solid((40, 60, 200), 20, 20)),
    ]
    plain = gallery.make_gallery(rows, height=H, ab_panels=False)
    g = gallery.make_gallery(rows, height=H)
    assert g.shape[0] == plain.shape[0]
    assert g.shape[1] == plain.shape[1] + 2 * (H + 4)  # two square panels and their padding
    x0 = plain.shape[1]  # the first panel starts where the plain gallery's right padding began
    for r, (_, _, colorized, original) in enumerate(rows):
        y0 = 14 + r * (H + 14 + 4) + 14
        for k, img in enumerate((colorized, original)):
            x = x0 + k * (H + 4)
            expected = gallery.ab_panel(gallery.thumbnail(img, H), H)
            assert np.array_equal(g[y0 : y0 + H, x : x + H], expected), (r, k)
    # and the model's panel differs from the original's where the colours differ
    assert not np.array_equal(g[28 : 28 + H, x0 : x0 + H], g[28 : 28 + H, x0 + H + 4 : x0 + 2 * H + 4])
