"""Full-resolution colorization in pure torch: the one path an image takes through the model.

    RGB uint8 (H, W, 3) -> L full-res (1, H, W) ─┬─ resize -> L (1, r, r) -> model -> ab (2, r, r)
                                                 └────────── + bilinear-upsampled ab (2, H, W) -> RGB uint8

The three steps are separate functions so a pipeline can run them in different processes
(prepare and compose on CPU workers, predict on the GPU actor) while sharing this code.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from raycolor.core import color
from raycolor.core.precision import autocast, resolve


def _as_chw(rgb: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(rgb, np.ndarray):
        # arrays from Arrow/Ray batches are read-only views; torch wants to own writable memory
        rgb = torch.from_numpy(rgb if rgb.flags.writeable and rgb.flags.c_contiguous else rgb.copy())
    return rgb.permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)


def orient(rgb: torch.Tensor, orientation: int) -> torch.Tensor:
    """(3, H, W) as stored -> upright, for EXIF orientation 1..8 (Pillow's exif_transpose, on any device)."""
    if orientation == 2:
        return rgb.flip(-1)
    if orientation == 3:
        return rgb.flip(-1).flip(-2)
    if orientation == 4:
        return rgb.flip(-2)
    if orientation == 5:
        return rgb.transpose(-2, -1)
    if orientation == 6:
        return torch.rot90(rgb, -1, dims=(-2, -1))
    if orientation == 7:
        return torch.rot90(rgb.transpose(-2, -1), 2, dims=(-2, -1))
    if orientation == 8:
        return torch.rot90(rgb, 1, dims=(-2, -1))
    return rgb


# Full-resolution maths runs in row strips of about this many pixels, so a 39 MP scan needs ~50 MB of float
# temporaries (Lab -> RGB and the gamut fit hold ~100 B/pixel) instead of ~4 GB (docs/performance.md).
STRIP_PIXELS = 1 << 19


def strips(height: int, width: int, pixels: int | None = None) -> list[tuple[int, int]]:
    """Row ranges [y0, y1) covering an image, each about `pixels` pixels.

    Rows per strip are a multiple of 64, so every strip starts on a multiple of 64 pixels: torch's SIMD
    loops (up to 2 x 16 float lanes) then see each pixel in the same lane as in one whole-image loop, and
    the per-pixel results (pow's vector and scalar paths differ by an ulp) are bit-identical to it.
    """
    rows = max(64, (pixels or STRIP_PIXELS) // max(1, width) // 64 * 64)
    return [(y0, min(height, y0 + rows)) for y0 in range(0, height, rows)]


def _grey_plane(rgb: np.ndarray | torch.Tensor) -> np.ndarray | None:
    """The one plane (H, W) of a uint8 or uint16 numpy RGB image whose three channels are equal: a grey source's
    stride-0 view (images._grey_to_rgb), or a plain copy of one (compared by strips, the first row first, so a
    colour image costs microseconds). None for anything else."""
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype not in (np.uint8, np.uint16):
        return None
    plane = rgb[:, :, 0]
    if rgb.strides[2] == 0:
        return plane
    H, W = plane.shape
    for y0, y1 in [(0, min(1, H))] + strips(H, W):
        rows = rgb[y0:y1]
        if not (np.array_equal(rows[:, :, 0], rows[:, :, 1]) and np.array_equal(rows[:, :, 0], rows[:, :, 2])):
            return None
    return plane


def full_l(rgb: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 or uint16 RGB (H, W, 3) -> float32 L (1, H, W); a 16-bit master keeps its precision in L.
    In row strips: the only full-size float is L itself (4 B/pixel). A grey image (R = G = B) takes L from a
    table by its one plane, with no copy of the (read-only) decoded pixels: color.grey_to_l."""
    grey = _grey_plane(rgb)
    if grey is not None:
        H, W = grey.shape
        L = np.empty((1, H, W), dtype=np.float32)
        for y0, y1 in strips(H, W):  # np.take's index temporary is a strip's (8 B/pixel), not the image's
            color.grey_to_l(grey[y0:y1], out=L[0, y0:y1])
        return torch.from_numpy(L)
    chw = _as_chw(rgb)  # (3, H, W), a view
    H, W = chw.shape[-2:]
    L = torch.empty((1, H, W), dtype=torch.float32, device=chw.device)
    for y0, y1 in strips(H, W):
        L[:, y0:y1] = color.rgb_uint8_to_l(chw[:, y0:y1])
    return L


def render_l(L: torch.Tensor, render_size: int) -> torch.Tensor:
    """L (..., 1, H, W) -> (..., 1, r, r): the square the model sees (aspect is restored by compose)."""
    squeeze = L.dim() == 3
    x = L.unsqueeze(0) if squeeze else L
    # antialias: archive scans are often 10x the render size and aliasing shows up as colour noise
    x = F.interpolate(x, size=(render_size, render_size), mode="bilinear", align_corners=False, antialias=True)
    return x.squeeze(0) if squeeze else x


def prepare(rgb: np.ndarray | torch.Tensor, render_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 or uint16 RGB (H, W, 3) -> (L full-res (1, H, W), L at render size (1, r, r))."""
    L = full_l(rgb)
    return L, render_l(L, render_size)


L_SCALE = 65535 / 100  # L in [0, 100] <-> uint16: 2 bytes a pixel between processes, 0.0015 L units of precision


def pack_l(L: torch.Tensor) -> bytearray:
    """Full-resolution L (1, H, W) -> uint16 bytes, the form in which it crosses Ray's object store.
    In row strips, straight into the buffer returned: no full-size temporary beside L (a 39 MP scan: 2 B/pixel
    out, not 14; Arrow takes a bytearray as binary like bytes)."""
    x = L[0].numpy()
    out = bytearray(2 * x.size)
    packed = np.frombuffer(out, dtype=np.uint16).reshape(x.shape)
    for y0, y1 in strips(*x.shape):
        packed[y0:y1] = np.rint(x[y0:y1] * np.float32(L_SCALE))
    return out


def packed_l(raw: bytes, height: int, width: int) -> np.ndarray:
    """pack_l's bytes as the uint16 (1, H, W) array they hold (a view: no copy); compose unpacks it by strips."""
    return np.frombuffer(raw, dtype=np.uint16).reshape(1, height, width)


def unpack_l(raw: bytes, height: int, width: int) -> torch.Tensor:
    """pack_l's inverse: (1, H, W) float32 L (divided in place: one full-size float, 4 B/pixel)."""
    return _unpacked(packed_l(raw, height, width))


def _unpacked(packed: np.ndarray) -> torch.Tensor:
    """uint16 L (any rows of pack_l's array) -> float32 L, divided in place: the one unpacking rule, used whole
    (unpack_l) and by strips (compose), so both give the same floats."""
    L = packed.astype(np.float32)
    L /= np.float32(L_SCALE)
    return torch.from_numpy(L)


DEFAULT_TEMPERATURE = 0.38  # the annealed mean's T (Zhang et al. 2016); ColorizeConfig.temperature


@torch.inference_mode()
def predict_ab(
    model: torch.nn.Module, l_small: torch.Tensor, *, temperature: float = DEFAULT_TEMPERATURE, precision: str = "auto",
) -> torch.Tensor:
    """(N, 1, r, r) L -> (N, 2, r, r) float32 ab, on the model's device. The trunk runs in `precision` as
    raycolor.core.precision resolves it for that device ("auto": bf16 on CUDA and on a CPU with native bf16, else
    fp32); a classification model's logits are decoded by the annealed mean at `temperature` in float32, outside
    autocast; a regression model's output is its ab, and `temperature` is ignored. The caller lays the model out
    (raycolor.core.precision.to_layout) once; this only runs it."""
    device = next(model.parameters()).device
    x = l_small.to(device, non_blocking=True)
    with autocast(resolve(precision, device), device):
        out = model(x)
    if getattr(model, "head_kind", "regression") == "classification":
        return model.decode_ab(out.float(), temperature)
    return out.float()


def _bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(index0, index1, weight0, weight1) per output position of a bilinear resize n_in -> n_out with
    align_corners=False: F.interpolate's taps, in its float32 arithmetic (aten's compute_source_index_and_lambda,
    two roundings as its default CPU kernel has them), computed once here rather than by a SIMD kernel."""
    if n_in == n_out:
        i = np.arange(n_out)
        return i, i, np.ones(n_out, np.float32), np.zeros(n_out, np.float32)
    scale = np.float32(n_in) / np.float32(n_out)
    src = scale * (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    src = np.maximum(src, np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    w1 = np.clip(src - i0.astype(np.float32), np.float32(0), np.float32(1))
    return i0, np.minimum(i0 + 1, n_in - 1), np.float32(1) - w1, w1


class UpsampledAB:
    """ab (N, 2, r, r) bilinearly upsampled to (N, 2, H, W), handed out a row strip at a time: full-resolution ab
    is 8 B/pixel, the largest thing compose held. Each output pixel is (x00 w0 + x01 w1) h0 + (x10 w0 + x11 w1) h1
    as F.interpolate computes it (bit-identical to its default CPU kernel), but in separate elementwise ops:
    every strip, every device and every SIMD kernel gives the same values (tests/test_colorize.py)."""

    def __init__(self, ab_small: torch.Tensor, height: int, width: int):
        device = ab_small.device
        ab = ab_small.float()  # (N, 2, r, r)
        x0, x1, w0, w1 = (torch.from_numpy(t).to(device) for t in _bilinear_taps(ab.shape[-1], width))
        # along x first, on ab transposed: index_select then copies whole rows, not single floats along the last
        # dim (5.6 -> 0.7 ms for 224 -> 1024 on one core); the same multiplies and adds, so the same floats
        cols = ab.transpose(-2, -1).contiguous()  # (N, 2, x, y)
        cols = cols.index_select(2, x0).mul_(w0[:, None]).add_(cols.index_select(2, x1).mul_(w1[:, None]))
        self.rows = cols.transpose(-2, -1).contiguous()  # (N, 2, r, W)
        self.taps = [torch.from_numpy(t).to(device) for t in _bilinear_taps(ab.shape[-2], height)]

    def strip(self, y0: int, y1: int) -> torch.Tensor:
        """Rows [y0, y1) of the full-resolution ab: (N, 2, y1 - y0, W)."""
        i0, i1, w0, w1 = (t[y0:y1] for t in self.taps)
        top = self.rows.index_select(2, i0).mul_(w0[:, None])
        return top.add_(self.rows.index_select(2, i1).mul_(w1[:, None]))  # in place: the same floats, fewer passes


def _l_strip(L: torch.Tensor | np.ndarray, y0: int, y1: int) -> torch.Tensor:
    """Rows [y0, y1) of full-res L as float32: L itself, or L still packed (uint16 from pack_l), unpacked here a
    strip at a time exactly as unpack_l does it."""
    return _unpacked(L[..., y0:y1, :]) if isinstance(L, np.ndarray) else L[..., y0:y1, :]


def compose_batch(L: torch.Tensor | np.ndarray, ab_small: torch.Tensor, *, bits: int = 8) -> torch.Tensor:
    """L (N, 1, H, W) full-res + ab (N, 2, r, r) -> RGB (N, H, W, 3), uint8 (bits=8) or uint16 (bits=16);
    the output keeps L exactly, up to that quantisation. L is float32, or a uint16 array still packed by
    pack_l (then it is never unpacked whole). All full-resolution maths runs in row strips: beside L and the
    output, a strip of floats (~100 B/pixel of it) is all compose holds.

    Batched so that an accelerator composes a whole batch of same-size images in a few kernels.
    """
    N, H, W = L.shape[0], *L.shape[-2:]
    device = L.device if isinstance(L, torch.Tensor) else torch.device("cpu")
    ab = UpsampledAB(ab_small.to(device), H, W)
    scale, dtype = (65535, torch.uint16) if bits == 16 else (255, torch.uint8)
    out = torch.empty((N, H, W, 3), dtype=dtype, device=device)
    for y0, y1 in strips(H, W):  # Lab -> RGB and the gamut fit are per pixel: strips change no result
        rgb = color.lab_to_rgb_in_gamut(_l_strip(L, y0, y1), ab.strip(y0, y1))  # (N, 3, k, W) in [0, 1]
        out[:, y0:y1] = rgb.mul_(scale).round_().to(dtype).permute(0, 2, 3, 1)
    return out


def compose(L: torch.Tensor | np.ndarray, ab_small: torch.Tensor, *, bits: int = 8) -> torch.Tensor:
    """L (1, H, W) full-res (float32, or uint16 packed by pack_l) + ab (2, r, r) -> RGB (H, W, 3), uint8 or
    (bits=16) uint16; L kept exactly."""
    return compose_batch(L[None], ab_small.unsqueeze(0), bits=bits)[0]


def colorize_rgb(
    model: torch.nn.Module, images: Sequence[np.ndarray | torch.Tensor], *, render_size: int,
    temperature: float = DEFAULT_TEMPERATURE, precision: str = "auto",
) -> list[np.ndarray]:
    """Full-res uint8 RGB images of any sizes -> colorized uint8 RGB images of the same sizes (`temperature`: the
    annealed mean's, for a classification model; `precision`: predict_ab's)."""
    if not images:
        return []
    prepared = [prepare(img, render_size) for img in images]
    ab = predict_ab(model, torch.stack([small for _, small in prepared]), temperature=temperature,
                    precision=precision).cpu()
    return [compose(L, ab[i]).numpy() for i, (L, _) in enumerate(prepared)]


def grey_baseline(rgb: np.ndarray | torch.Tensor) -> np.ndarray:
    """The ab = 0 baseline: the input's lightness as a grey RGB image."""
    L = full_l(rgb)
    return color.lab_to_rgb_uint8(torch.cat([L, torch.zeros(2, *L.shape[-2:])], dim=0)).permute(1, 2, 0).numpy()
