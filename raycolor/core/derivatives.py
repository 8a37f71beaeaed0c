"""Derivatives: a colorized full-resolution image made smaller (an access JPEG, a thumbnail), with its metadata.

The reduction is in two steps, as Pillow's own ``reducing_gap`` does it, but with the big step in row strips so
that a 100 MP master is never copied whole: a box (area) average by an integer factor ``k`` (``k`` rows of the
master at a time, float32), which leaves an image at least twice the target's size, then Lanczos on that small
image to the exact size. Box then Lanczos is what libvips' ``thumbnail`` and Pillow do; the box step's aliasing is
removed by the Lanczos step's own filter because ``k`` leaves at least a factor of 2 for it. Never upscaled: a
target no smaller than the image gives the image itself.

NumPy + Pillow only (no torch, no storage): the finish stage calls it on the array it just encoded.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from raycolor.core.metadata import Metadata

# rows of the master reduced at once: k rows per output row of the box step, so a strip holds k * W * 3 floats
_STRIP_ROWS = 64


def target_size(width: int, height: int, long_edge: int) -> tuple[int, int]:
    """(W, H) of a derivative whose long edge is `long_edge`, aspect kept (each side at least 1 px); the image's
    own size when it is no bigger than that (never upscaled)."""
    long = max(width, height)
    if long_edge >= long:
        return width, height
    s = long_edge / long
    if width >= height:
        return long_edge, max(1, round(height * s))
    return max(1, round(width * s)), long_edge


def reduce(rgb: np.ndarray, long_edge: int) -> np.ndarray:
    """(H, W, 3) uint8 or uint16 -> the same image with its long edge at most `long_edge`, same dtype; the
    input itself when it is no bigger (never upscaled, never copied)."""
    h, w = rgb.shape[:2]
    tw, th = target_size(w, h, long_edge)
    if (tw, th) == (w, h):
        return rgb
    k = max(1, min(w // tw, h // th) // 2)  # the box factor leaves >= 2x for Lanczos
    small = _box(rgb, k) if k > 1 else rgb
    return _lanczos(small, (tw, th), box=(0.0, 0.0, w / k, h / k))


def scaled_meta(meta: Metadata, size: tuple[int, int], to: tuple[int, int]) -> Metadata:
    """The master's metadata for a derivative of size `to`: the resolution scaled with the pixels, so the print
    size the resolution states stays true (a 600 dpi scan halved is 300 dpi). Pixel dimensions in EXIF/XMP are
    fixed by metadata.prepare, as for any output."""
    if meta.dpi is None or to == size:
        return meta
    sx, sy = to[0] / size[0], to[1] / size[1]
    return dataclasses.replace(meta, dpi=(meta.dpi[0] * sx, meta.dpi[1] * sy))


def _box(rgb: np.ndarray, k: int) -> np.ndarray:
    """Area average over k x k blocks, a strip of whole block rows at a time; a partial block at the right or bottom
    edge is the mean of the pixels it has. (ceil(H/k), ceil(W/k), 3), rgb's dtype, rounded."""
    h, w = rgb.shape[:2]
    oh, ow = -(-h // k), -(-w // k)
    out = np.empty((oh, ow, 3), dtype=rgb.dtype)
    step = max(1, _STRIP_ROWS // k) * k
    if rgb.dtype == np.uint8:  # Pillow's reduce is this same average, in C (about 6x numpy's)
        from PIL import Image

        for r0 in range(0, h, step):
            out[r0 // k:r0 // k + -(-min(step, h - r0) // k)] = np.asarray(
                Image.fromarray(np.ascontiguousarray(rgb[r0:r0 + step])).reduce(k))
        return out
    pad = ow * k - w
    col_n = np.full(ow, float(k), dtype=np.float32)
    if pad:
        col_n[-1] = k - pad
    top = np.iinfo(rgb.dtype).max
    for r0 in range(0, h, step):
        strip = rgb[r0:r0 + step].astype(np.float32)  # (s, W, 3)
        s = strip.shape[0]
        if pad:
            strip = np.concatenate([strip, np.zeros((s, pad, 3), np.float32)], axis=1)
        rows = -(-s // k)
        if rows * k != s:
            strip = np.concatenate([strip, np.zeros((rows * k - s, ow * k, 3), np.float32)], axis=0)
        sums = strip.reshape(rows, k, ow, k, 3).sum(axis=(1, 3))  # (rows, ow, 3)
        row_n = np.full(rows, float(k), dtype=np.float32)
        row_n[-1] = s - (rows - 1) * k
        mean = sums / (row_n[:, None, None] * col_n[None, :, None])
        out[r0 // k:r0 // k + rows] = np.clip(np.rint(mean), 0, top).astype(rgb.dtype)
    return out


def _lanczos(rgb: np.ndarray, size: tuple[int, int], box: tuple[float, float, float, float]) -> np.ndarray:
    """Pillow's Lanczos to `size` of the region `box` of `rgb` (the box step's partial edge blocks cover less than
    a whole pixel: the region stops where the master did), rgb's dtype; in strips of output rows, each from the
    source rows its filter reaches, so that no full-size copy is made. The result is the whole-image resize's to
    within one unit (Pillow's weights for an output row depend only on the rows within its support, which each
    strip holds; the strip's offset changes the float rounding of its centre, not the filter).
    16-bit: each channel as a float image (Pillow has no 16-bit RGB mode)."""
    h, w = rgb.shape[:2]
    tw, th = size
    x1, y1 = min(float(w), box[2]), min(float(h), box[3])
    scale = y1 / th  # source rows per output row
    reach = 3.0 * max(scale, 1.0) + 2  # Lanczos-3's support in source rows, and a row of rounding
    step = max(8, int(_STRIP_ROWS * 4 / max(scale, 1.0)))
    out = np.empty((th, tw, 3), dtype=rgb.dtype)
    for o0 in range(0, th, step):
        o1 = min(th, o0 + step)
        s0, s1 = o0 * scale, o1 * scale
        c0, c1 = max(0, int(s0 - reach)), min(h, int(np.ceil(s1 + reach)))
        out[o0:o1] = _resize(rgb[c0:c1], (tw, o1 - o0), (0.0, s0 - c0, x1, s1 - c0))
    return out


def _resize(rgb: np.ndarray, size: tuple[int, int], region: tuple[float, float, float, float]) -> np.ndarray:
    from PIL import Image

    if rgb.dtype == np.uint8:
        return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize(size, Image.Resampling.LANCZOS, box=region))
    planes = [np.asarray(Image.fromarray(np.ascontiguousarray(rgb[..., c], dtype=np.float32))
                         .resize(size, Image.Resampling.LANCZOS, box=region)) for c in range(3)]
    top = np.iinfo(rgb.dtype).max
    return np.clip(np.rint(np.stack(planes, axis=-1)), 0, top).astype(rgb.dtype)
