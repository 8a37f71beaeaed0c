"""raycolor against the loop a user would write instead (issue 35, item 5), on the same inputs, in one run,
alternating: peer, raycolor, peer, [raycolor, peer ...]. Prints each run's images/s and each raycolor run's ratio
to the mean of the peer runs on either side of it.

The peer is the plain loop: decode with Pillow, raycolor.core.colorize.prepare, the model in batches of 16 in
float32 with torch on every core (NCHW, no autocast: what torch does unasked), raycolor.core.colorize.compose,
encode with Pillow (JPEG at quality 92, or PNG at zlib level 1: raycolor's own defaults, so the codecs cost
both sides the same) and write. raycolor is `raycolor colorize` as a subprocess, Ray's start included, with
`--precision` as given ("auto": bf16 on a CPU with native bf16).

Inputs: the bundled sample photos made grey and scaled to `--size` px wide (1024 or 3000), saved as JPEG
(quality 90) and repeated to `--images` files; the checkpoint is a random-init model at 224 px (throughput does
not depend on the weights), one per head.

    .venv/bin/python bench/peer_loop.py --images 600 --size 1024 --format jpeg              # the headline, ~9 min
    .venv/bin/python bench/peer_loop.py --images 200 --precision fp32
    .venv/bin/python bench/peer_loop.py --images 100 --size 3000 --format png --head classification
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RENDER = 224
BATCH = 16


def make_inputs(cache: Path, n: int, size: int) -> Path:
    """The sample photos, grey, `size` px wide, repeated to n JPEGs (made once per (n, size), reused)."""
    from PIL import Image

    from raycolor.demo import sample_photos

    folder = cache / f"grey-{size}-{n}"
    if (folder / ".complete").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    greys = []
    for p in sample_photos():
        im = Image.open(p).convert("L")
        greys.append(im.resize((size, round(im.height * size / im.width)), Image.Resampling.LANCZOS))
    for i in range(n):
        greys[i % len(greys)].save(folder / f"img{i:05d}.jpg", quality=90)
    (folder / ".complete").write_text(str(n))
    return folder


def make_checkpoint(cache: Path, head: str) -> str:
    import torch

    from raycolor.core import checkpoint
    from raycolor.core.model import build_colorizer

    path = cache / f"ckpt-{head}-r{RENDER}"
    if not (path / "config.json").exists():
        torch.manual_seed(0)
        checkpoint.save(str(path), build_colorizer(weights=None, head=head), render_size=RENDER)
    return str(path)


def peer(folder: Path, ckpt: str, out: Path, fmt: str) -> float:
    """The plain loop; images/s over the whole run, the model's load included."""
    import numpy as np
    import torch
    from PIL import Image

    from raycolor.core import checkpoint
    from raycolor.core.colorize import compose, prepare

    t0 = time.perf_counter()
    torch.set_num_threads(os.cpu_count() or 1)
    model, _ = checkpoint.load(ckpt)
    model.eval()
    paths = sorted(folder.glob("*.jpg"))
    out.mkdir(parents=True, exist_ok=True)
    for a in range(0, len(paths), BATCH):
        batch = paths[a:a + BATCH]
        prepared = [prepare(np.asarray(Image.open(p).convert("RGB")), RENDER) for p in batch]
        with torch.inference_mode():
            out_ab = model(torch.stack([s for _, s in prepared]))
            if getattr(model, "head_kind", "regression") == "classification":
                out_ab = model.decode_ab(out_ab, 0.38)
        for p, (L, _), ab in zip(batch, prepared, out_ab):
            rgb = Image.fromarray(compose(L, ab).numpy())
            if fmt == "jpeg":
                rgb.save(out / (p.stem + ".jpg"), quality=92)
            else:
                rgb.save(out / (p.stem + ".png"), compress_level=1)
    return len(paths) / (time.perf_counter() - t0)


def raycolor_run(folder: Path, ckpt: str, out: Path, fmt: str, precision: str) -> tuple[float, dict]:
    """`raycolor colorize` in a subprocess: images/s from start to exit (Ray's start included), and its summary."""
    exe = Path(sys.executable).with_name("raycolor")
    t0 = time.perf_counter()
    subprocess.run([str(exe), "colorize", str(folder), "--output", str(out), "--checkpoint", ckpt, "--format", fmt,
                    "--precision", precision], check=True, stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - t0
    summary = json.loads((out / "_SUCCESS.json").read_text())
    n = summary["ok"]
    return n / elapsed, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--size", type=int, default=1024, help="input width in px (1024, 3000)")
    ap.add_argument("--format", choices=("jpeg", "png"), default="jpeg")
    ap.add_argument("--head", choices=("regression", "classification"), default="regression")
    ap.add_argument("--precision", default="auto", help="raycolor's --precision; comma-separated: one raycolor run each")
    ap.add_argument("--cache-dir", default=os.environ.get("RAYCOLOR_BENCH_CACHE", "/tmp/raycolor-bench"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    folder = make_inputs(cache, args.images, args.size)
    ckpt = make_checkpoint(cache, args.head)
    work = Path(tempfile.mkdtemp(prefix="peer-", dir=cache))
    print(f"{args.images} grey JPEGs {args.size} px wide, {args.head} head at {RENDER} px, {args.format} out; "
          f"load average {os.getloadavg()}", flush=True)
    try:
        peers = [peer(folder, ckpt, work / "peer0", args.format)]
        print(f"peer loop (fp32): {peers[-1]:.2f} img/s  load {os.getloadavg()[0]:.2f}", flush=True)
        result = {"images": args.images, "size": args.size, "format": args.format, "head": args.head, "runs": []}
        for k, prec in enumerate(args.precision.split(",")):
            rate, summary = raycolor_run(folder, ckpt, work / f"rc{k}", args.format, prec)
            print(f"raycolor --precision {prec}: {rate:.2f} img/s (ran {summary.get('precision')}; pipeline's own "
                  f"{summary['images_per_s']:.2f} img/s)  load {os.getloadavg()[0]:.2f}", flush=True)
            peers.append(peer(folder, ckpt, work / f"peer{k + 1}", args.format))
            print(f"peer loop (fp32): {peers[-1]:.2f} img/s  load {os.getloadavg()[0]:.2f}", flush=True)
            ratio = rate / ((peers[-2] + peers[-1]) / 2)
            print(f"RATIO raycolor --precision {prec} / peer: {ratio:.2f}x", flush=True)
            result["runs"].append({"precision": prec, "ran": summary.get("precision"), "raycolor_img_s": round(rate, 3),
                                   "peers_img_s": [round(peers[-2], 3), round(peers[-1], 3)], "ratio": round(ratio, 3)})
            shutil.rmtree(work / f"rc{k}", ignore_errors=True)
        result["load_average_end"] = os.getloadavg()
        if args.json:
            print(json.dumps(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
