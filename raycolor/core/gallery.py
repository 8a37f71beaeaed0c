"""Before/after galleries: rows of grey | colorized | original | ab of colorized | ab of original, labelled.
Pure Pillow/NumPy (and scikit-image for one palette).

The two ab panels show a cast at a glance: each is a 2-D histogram of the image's chroma on the ab plane
(a left to right, green to red; b bottom to top, blue to yellow; the crosshair is a = b = 0, grey), every
occupied cell painted in its own hue with an opacity rising with log(1 + count). A photo's colours spread out from
the centre in several directions; a sepia cast is one small blob near the centre, towards orange-yellow; a
grey image is a dot on the crosshair. Side by side, the model's spread against the original's is visible even
where the thumbnails' colours are too small or too similar to judge. (Chosen over a hue histogram, which
hides chroma, and over an error map, which needs the original to read and shows where, not what, is wrong.)
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np
from PIL import Image, ImageDraw

COLUMNS = ("grey", "colorized", "original")
AB_COLUMNS = ("ab: colorized", "ab: original")
AB_CELLS = 64  # histogram cells per axis
AB_RANGE = 110.0  # the histogram covers a, b in [-AB_RANGE, AB_RANGE]
_AB_L = 70.0  # the lightness the cells are painted at
_AB_BACKGROUND = 238
_LABEL_H = 14
_PAD = 4


def thumbnail(rgb: np.ndarray, height: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    width = max(1, round(w * height / h))
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.LANCZOS))


@cache
def _ab_palette() -> np.ndarray:
    """(AB_CELLS, AB_CELLS, 3) float: each cell's centre colour at L = _AB_L, clipped into sRGB; row 0 is the
    largest b (the top of the picture)."""
    from skimage.color import lab2rgb

    centres = (np.arange(AB_CELLS) + 0.5) / AB_CELLS * 2 * AB_RANGE - AB_RANGE
    a, b = np.meshgrid(centres, centres[::-1])
    lab = np.stack([np.full_like(a, _AB_L), a, b], axis=-1)
    return np.clip(lab2rgb(lab), 0, 1) * 255


def ab_histogram(rgb: np.ndarray) -> np.ndarray:
    """(AB_CELLS, AB_CELLS) float64 pixel counts of uint8 RGB's ab (D65 Lab), b decreasing down the rows."""
    from raycolor.core.metrics import lab

    ab = lab(rgb)[..., 1:].reshape(-1, 2)
    cell = np.clip(((ab + AB_RANGE) / (2 * AB_RANGE) * AB_CELLS).astype(np.int64), 0, AB_CELLS - 1)
    counts = np.bincount((AB_CELLS - 1 - cell[:, 1]) * AB_CELLS + cell[:, 0], minlength=AB_CELLS**2)
    return counts.reshape(AB_CELLS, AB_CELLS).astype(np.float64)


def ab_panel(rgb: np.ndarray, size: int) -> np.ndarray:
    """A size x size uint8 RGB picture of ab_histogram(rgb): each occupied cell in its own hue, with opacity
    0.25 + 0.75 * log(1 + count) / log(1 + max count) (so a single pixel's colour still shows), over light grey
    with a 1 px grey crosshair at a = b = 0."""
    counts = ab_histogram(rgb)
    alpha = np.where(counts > 0, 0.25 + 0.75 * np.log1p(counts) / np.log1p(max(counts.max(), 1.0)), 0.0)
    cell = np.arange(size) * AB_CELLS // size  # nearest-neighbour upscaling, any size
    alpha, palette = alpha[cell][:, cell, None], _ab_palette()[cell][:, cell]
    back = np.full((size, size, 3), float(_AB_BACKGROUND))
    back[size // 2, :] = back[:, size // 2] = 170
    return np.rint(alpha * palette + (1 - alpha) * back).astype(np.uint8)


def make_gallery(
    rows: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]], *, height: int = 160, ab_panels: bool = True
) -> np.ndarray:
    """rows of (name, grey, colorized, original) uint8 RGB images -> one uint8 RGB gallery image; with
    ab_panels, each row ends with the ab histograms (ab_panel, height x height) of the colorized image and of
    the original, computed from the thumbnails."""
    if not rows:
        raise ValueError("a gallery needs at least one image")
    thumbs = []
    for name, *imgs in rows:
        cols = [thumbnail(img, height) for img in imgs]
        if ab_panels:
            cols += [ab_panel(cols[1], height), ab_panel(cols[2], height)]
        thumbs.append((name, cols))
    titles = COLUMNS + (AB_COLUMNS if ab_panels else ())
    col_w = [max(t[1][c].shape[1] for t in thumbs) for c in range(len(titles))]
    width = sum(col_w) + _PAD * (len(titles) + 1)
    row_h = height + _LABEL_H + _PAD
    canvas = Image.new("RGB", (width, _LABEL_H + len(thumbs) * row_h + _PAD), "white")
    draw = ImageDraw.Draw(canvas)
    x = _PAD
    for c, title in enumerate(titles):
        draw.text((x, 1), title, fill="black")
        x += col_w[c] + _PAD
    for r, (name, imgs) in enumerate(thumbs):
        y = _LABEL_H + r * row_h
        draw.text((_PAD, y), name[-60:], fill=(80, 80, 80))
        x = _PAD
        for c, img in enumerate(imgs):
            canvas.paste(Image.fromarray(img), (x, y + _LABEL_H))
            x += col_w[c] + _PAD
    return np.asarray(canvas)
