"""Full-resolution compose, old against new: ms per image, bit-identical output checked on every image.

"old" is the implementation before the rewrite, kept verbatim in tests/test_compose_exact.py as the reference;
"new" is raycolor.core.colorize.compose. The ab comes from a checkpoint (the benches' random-init 224-px
regression checkpoint by default), the L from grey JPEGs 1024 and 3000 px wide (bench/peer_loop.py writes both
sets under /tmp/raycolor-bench). Per image, old and new alternate (old, new, old, new) and each keeps its faster
run, so load that comes and goes hits both alike. Run it quiet: /work/bin/rc-quiet .venv/bin/python bench/compose_cost.py
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import time

import numpy as np
import torch
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _reference():
    spec = importlib.util.spec_from_file_location("compose_reference", ROOT / "tests" / "test_compose_exact.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _bad_fraction(ref, L: torch.Tensor, ab: torch.Tensor) -> float:
    from raycolor.core.colorize import UpsampledAB

    up = UpsampledAB(ab[None], *L.shape[-2:]).strip(0, L.shape[-2])
    rgb = ref.ref_lab_to_rgb(torch.cat([L[None], up], 1), clamp=False)
    return ((rgb < -1e-4) | (rgb > 1 + 1e-4)).any(1).float().mean().item()


def _ms(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="/tmp/raycolor-bench/ckpt-regression-r224")
    ap.add_argument("--sets", nargs="+", default=["/tmp/raycolor-bench/grey-1024-600:16",
                                                  "/tmp/raycolor-bench/grey-3000-32:6"],
                    help="DIR:N, the first N JPEGs of each")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--bits", type=int, default=8, choices=[8, 16])
    args = ap.parse_args()

    from raycolor.core import checkpoint
    from raycolor.core.colorize import compose, predict_ab, prepare

    ref = _reference()
    model, _ = checkpoint.load(args.checkpoint)
    model.eval()
    print(f"torch {torch.__version__}, CPU kernel {torch.backends.cpu.get_cpu_capability()}, {args.bits}-bit out")
    for spec in args.sets:
        folder, n = spec.rsplit(":", 1)
        paths = sorted(pathlib.Path(folder).glob("*.jpg"))[: int(n)]
        torch.set_num_threads(2)
        prepped = [prepare(np.asarray(Image.open(p).convert("RGB")), 224) for p in paths]
        ab = predict_ab(model, torch.stack([s for _, s in prepped]), precision="fp32")
        images = [(L, ab[i], _bad_fraction(ref, L, ab[i])) for i, (L, _) in enumerate(prepped)]
        H, W = images[0][0].shape[-2:]
        print(f"\n{folder}: {len(images)} images, {W}x{H}; out-of-gamut pixels: mean "
              f"{np.mean([b for *_, b in images]):.1%}, min {min(b for *_, b in images):.1%}, "
              f"max {max(b for *_, b in images):.1%}")
        for threads in args.threads:
            torch.set_num_threads(threads)
            rows = []
            for L, a, bad in images:
                old, new = [], []
                for _ in range(2):
                    old.append(_ms(lambda: ref.ref_compose(L, a, bits=args.bits)))
                    new.append(_ms(lambda: compose(L, a, bits=args.bits)))
                assert torch.equal(compose(L, a, bits=args.bits), ref.ref_compose(L, a, bits=args.bits))
                rows.append((bad, min(old), min(new)))
            o, n_ = np.mean([r[1] for r in rows]), np.mean([r[2] for r in rows])
            lo, hi = min(rows), max(rows)
            print(f"  {threads} thread(s): old {o:7.1f} ms/img, new {n_:7.1f} ms/img, {o / n_:.2f}x   "
                  f"| least out ({lo[0]:.1%}): {lo[1]:.1f} -> {lo[2]:.1f} ms ({lo[1] / lo[2]:.2f}x)   "
                  f"| most out ({hi[0]:.1%}): {hi[1]:.1f} -> {hi[2]:.1f} ms ({hi[1] / hi[2]:.2f}x)   [identical]")


if __name__ == "__main__":
    main()
