#!/usr/bin/env python
"""What --derivative costs: `colorize` throughput with two derivatives (an access JPEG and a thumbnail) against
plain colorize, on the same inputs, in one Ray session, runs interleaved (plain, derivatives, plain, ...) so that
a drifting machine costs both alike.

    python bench/derivatives_cost.py                          # 120 synthetic 640x480 JPEGs, render 224, PNG master
    python bench/derivatives_cost.py --format tiff --derivative jpeg:3000 --derivative jpeg:400 --images 60

The inputs and checkpoint are colorize_throughput's (synthetic photo-like JPEGs, an untrained model: throughput
does not depend on the weights). images/s is the whole run's (inputs / elapsed, planning and the model's start
included), the figure a user sees, after a warm-up run; each mode's figure is the mean of its runs. Issue 36's target: derivatives >=
0.8x plain.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from colorize_throughput import make_checkpoint, make_inputs  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=120)
    ap.add_argument("--render-size", type=int, default=224)
    ap.add_argument("--format", default="png")
    ap.add_argument("--derivative", action="append", default=None, help="default: jpeg:3000 and jpeg:400")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each mode")
    ap.add_argument("--warmup", type=int, default=1, help="plain runs first, not counted (workers, caches)")
    ap.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "raycolor-bench"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import ray

    from raycolor.config import ColorizeConfig, DerivativeSpec
    from raycolor.pipelines.colorize import colorize

    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    folder = make_inputs(cache, args.images)
    ckpt = make_checkpoint(cache, args.render_size)
    specs = tuple(DerivativeSpec.parse(d) for d in (args.derivative or ["jpeg:3000", "jpeg:400"]))
    ray.init(include_dashboard=False, log_to_driver=False)
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    rates: dict[str, list[float]] = {"plain": [], "derivatives": []}
    sizes: dict[str, int] = {}
    out_root = Path(tempfile.mkdtemp(prefix="deriv-cost-", dir=cache))
    try:
        for r in range(-args.warmup, args.repeats):
            for mode in ("plain", "derivatives") if r >= 0 else ("plain",):
                out = out_root / f"{mode}-{r}"
                cfg = ColorizeConfig(inputs=(str(folder),), output=str(out), checkpoint=ckpt, format=args.format,
                                     derivatives=specs if mode == "derivatives" else ())
                t = time.perf_counter()
                s = colorize(cfg)
                elapsed = time.perf_counter() - t
                assert s.ok == args.images, s
                if r < 0:
                    print(f"warm-up run: {args.images / elapsed:6.2f} images/s", flush=True)
                    shutil.rmtree(out)
                    continue
                rates[mode].append(args.images / elapsed)
                sizes[mode] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()
                                  and p.parts[len(out.parts)] in ("images", "derivatives"))
                print(f"{mode:12s} run {r}: {args.images / elapsed:6.2f} images/s ({elapsed:.1f} s)", flush=True)
                shutil.rmtree(out)
    finally:
        shutil.rmtree(out_root, ignore_errors=True)
    mean = {k: sum(v) / len(v) for k, v in rates.items()}
    ratio = mean["derivatives"] / mean["plain"]
    print(f"plain {mean['plain']:.2f} images/s, with {', '.join(s.name for s in specs)} {mean['derivatives']:.2f} "
          f"images/s: {ratio:.3f}x (target >= 0.8)")
    if args.json:
        print(json.dumps({"images": args.images, "render_size": args.render_size, "format": args.format,
                          "derivatives": [s.name for s in specs], "images_per_s": mean, "runs": rates,
                          "ratio": round(ratio, 3), "bytes_written": sizes}))


if __name__ == "__main__":
    main()
