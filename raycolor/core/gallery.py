"""Before/after galleries: rows of grey | colorized | original, labelled. Pure Pillow/NumPy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

COLUMNS = ("grey", "colorized", "original")
_LABEL_H = 14
_PAD = 4


def thumbnail(rgb: np.ndarray, height: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    width = max(1, round(w * height / h))
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.LANCZOS))


def make_gallery(rows: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]], *, height: int = 160) -> np.ndarray:
    """rows of (name, grey, colorized, original) uint8 RGB images -> one uint8 RGB gallery image."""
    if not rows:
        raise ValueError("a gallery needs at least one image")
    thumbs = [(name, [thumbnail(img, height) for img in imgs]) for name, *imgs in rows]
    col_w = [max(t[1][c].shape[1] for t in thumbs) for c in range(3)]
    width = sum(col_w) + _PAD * 4
    row_h = height + _LABEL_H + _PAD
    canvas = Image.new("RGB", (width, _LABEL_H + len(thumbs) * row_h + _PAD), "white")
    draw = ImageDraw.Draw(canvas)
    x = _PAD
    for c, title in enumerate(COLUMNS):
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
