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

from raycolor import color


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


# Memory one image holds at full resolution in a decode or finish task, per pixel (bench/big_scans.py measured
# a whole run at 23 B/pixel for an 8-bit scan and 41 for a 16-bit one): what --memory-per-cpu is divided by.
BYTES_PER_PIXEL = {8: 24, 16: 40}

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


def full_l(rgb: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 or uint16 RGB (H, W, 3) -> float32 L (1, H, W); a 16-bit master keeps its precision in L.
    In row strips: the only full-size float is L itself (4 B/pixel)."""
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


def pack_l(L: torch.Tensor) -> bytes:
    """Full-resolution L (1, H, W) -> uint16 bytes, the form in which it crosses Ray's object store.
    In row strips: no full-size float temporary beside L (a 39 MP scan: 2 B/pixel out, not 14)."""
    x = L[0].numpy()
    packed = np.empty(x.shape, dtype=np.uint16)
    for y0, y1 in strips(*x.shape):
        packed[y0:y1] = np.rint(x[y0:y1] * np.float32(L_SCALE))
    return packed.tobytes()


def unpack_l(raw: bytes, height: int, width: int) -> torch.Tensor:
    """pack_l's inverse: (1, H, W) float32 L (divided in place: one full-size float, 4 B/pixel)."""
    L = np.frombuffer(raw, dtype=np.uint16).reshape(1, height, width).astype(np.float32)
    L /= np.float32(L_SCALE)
    return torch.from_numpy(L)


@torch.inference_mode()
def predict_ab(model: torch.nn.Module, l_small: torch.Tensor) -> torch.Tensor:
    """(N, 1, r, r) L -> (N, 2, r, r) float32 ab, on the model's device (bf16 autocast on CUDA)."""
    device = next(model.parameters()).device
    x = l_small.to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        ab = model(x)
    return ab.float()


def compose_batch(L: torch.Tensor, ab_small: torch.Tensor, *, bits: int = 8) -> torch.Tensor:
    """L (N, 1, H, W) full-res + ab (N, 2, r, r) -> RGB (N, H, W, 3), uint8 (bits=8) or uint16 (bits=16);
    the output keeps L exactly, up to that quantisation.

    Batched so that an accelerator composes a whole batch of same-size images in a few kernels.
    """
    N, H, W = L.shape[0], *L.shape[-2:]
    ab = F.interpolate(ab_small.to(L), size=(H, W), mode="bilinear", align_corners=False)  # (N, 2, H, W)
    scale, dtype = (65535, torch.uint16) if bits == 16 else (255, torch.uint8)
    out = torch.empty((N, H, W, 3), dtype=dtype, device=L.device)
    for y0, y1 in strips(H, W):  # Lab -> RGB and the gamut fit are per pixel: strips change no result
        rgb = color.lab_to_rgb_in_gamut(L[..., y0:y1, :], ab[..., y0:y1, :])  # (N, 3, k, W) in [0, 1]
        out[:, y0:y1] = (rgb * scale).round_().to(dtype).permute(0, 2, 3, 1)
    return out


def compose(L: torch.Tensor, ab_small: torch.Tensor, *, bits: int = 8) -> torch.Tensor:
    """L (1, H, W) full-res + ab (2, r, r) -> RGB (H, W, 3), uint8 or (bits=16) uint16; L kept exactly."""
    return compose_batch(L.unsqueeze(0), ab_small.unsqueeze(0), bits=bits)[0]


def colorize_rgb(
    model: torch.nn.Module, images: Sequence[np.ndarray | torch.Tensor], *, render_size: int
) -> list[np.ndarray]:
    """Full-res uint8 RGB images of any sizes -> colorized uint8 RGB images of the same sizes."""
    if not images:
        return []
    prepared = [prepare(img, render_size) for img in images]
    ab = predict_ab(model, torch.stack([small for _, small in prepared])).cpu()
    return [compose(L, ab[i]).numpy() for i, (L, _) in enumerate(prepared)]


def grey_baseline(rgb: np.ndarray | torch.Tensor) -> np.ndarray:
    """The ab = 0 baseline: the input's lightness as a grey RGB image."""
    L = full_l(rgb)
    return color.lab_to_rgb_uint8(torch.cat([L, torch.zeros(2, *L.shape[-2:])], dim=0)).permute(1, 2, 0).numpy()
