"""`raycolor evaluate` end to end, and SSIM alone, on the issue's case: 13 photos of 1024x640.

Figures from one run:
* SSIM on one 1024x640 pair: raycolor.core.metrics.ssim (scikit-image) vs the 2-D float64 convolution it
  replaced (written out here as the reference), and the largest difference between their values;
* the whole command as a user runs it -- `raycolor evaluate --checkpoint ... --data ... --json`, a fresh
  process starting its own local Ray -- wall-clock seconds (target <= 90 s on 2 cores).

    .venv/bin/python bench/evaluate_speed.py            # 13 images, render size 224
    .venv/bin/python bench/evaluate_speed.py --images 40 --json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from raycolor.core import checkpoint
from raycolor.core.metrics import ssim
from raycolor.core.model import build_colorizer
from raycolor.demo import sample_photos


def ssim_conv2d(a: np.ndarray, b: np.ndarray, window: int = 11, sigma: float = 1.5) -> float:
    """The implementation before scikit-image: one 2-D float64 convolution per statistic."""
    x = torch.from_numpy(a.astype(np.float64)).permute(2, 0, 1).unsqueeze(1)
    y = torch.from_numpy(b.astype(np.float64)).permute(2, 0, 1).unsqueeze(1)
    g = torch.exp(-((torch.arange(window, dtype=torch.float64) - (window - 1) / 2) ** 2) / (2 * sigma**2))
    k = ((g / g.sum())[:, None] * (g / g.sum())[None, :]).view(1, 1, window, window)
    mx, my = F.conv2d(x, k), F.conv2d(y, k)
    sxx, syy, sxy = F.conv2d(x * x, k) - mx**2, F.conv2d(y * y, k) - my**2, F.conv2d(x * y, k) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    return float((((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))).mean())


def photos(folder: Path, n: int, size: tuple[int, int]) -> list[Path]:
    """n colour photos at `size`: the bundled samples, resized (and reused round-robin)."""
    folder.mkdir(parents=True, exist_ok=True)
    samples = sample_photos()
    out = []
    for i in range(n):
        p = folder / f"{i:03d}.jpg"
        Image.open(samples[i % len(samples)]).convert("RGB").resize(size, Image.BICUBIC).save(p, quality=92)
        out.append(p)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=13)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--height", type=int, default=640)
    ap.add_argument("--render-size", type=int, default=224)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="raycolor-bench-eval-") as tmp:
        tmp = Path(tmp)
        files = photos(tmp / "photos", args.images, (args.width, args.height))
        torch.manual_seed(0)
        checkpoint.save(str(tmp / "model"), build_colorizer(weights=None), render_size=args.render_size)

        a = np.asarray(Image.open(files[0]))
        b = np.asarray(Image.open(files[1 % len(files)]))
        torch.set_num_threads(1)
        t = time.perf_counter()
        new = ssim(a, b)
        t_new = time.perf_counter() - t
        t = time.perf_counter()
        old = ssim_conv2d(a, b)
        t_old = time.perf_counter() - t
        torch.set_num_threads(os.cpu_count() or 1)

        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        cmd = [sys.executable, "-m", "raycolor.cli", "evaluate", "--checkpoint", str(tmp / "model"),
               "--data", str(tmp / "photos"), "--json"]
        t = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        t_cli = time.perf_counter() - t
        if r.returncode:
            sys.exit(f"evaluate failed ({r.returncode}):\n{r.stderr[-3000:]}")
        report = json.loads(r.stdout)

    figures = {
        "images": args.images,
        "size": f"{args.width}x{args.height}",
        "ssim_skimage_s": round(t_new, 3),
        "ssim_conv2d_s": round(t_old, 3),
        "ssim_speedup": round(t_old / t_new, 1),
        "ssim_abs_diff": abs(new - old),
        "evaluate_cli_s": round(t_cli, 1),
        "evaluated": report["images"],
        "load_avg": os.getloadavg(),
    }
    print(f"SSIM on one {figures['size']} pair, one thread: scikit-image {t_new:.3f} s, 2-D conv {t_old:.3f} s "
          f"({figures['ssim_speedup']}x), |difference| {figures['ssim_abs_diff']:.1e}")
    print(f"raycolor evaluate, {args.images} images of {figures['size']}, end to end (Ray start-up included): "
          f"{t_cli:.1f} s (target <= 90 s on 2 cores); load average {figures['load_avg']}")
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
