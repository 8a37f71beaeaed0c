"""What the classification head costs against regression (issue 34, item 4): the model step at 224 px on CPU (16
images, `predict_ab` as the actor runs it), the annealed mean alone, a training step (forward + loss + backward +
AdamW, 8 images) and the peak memory of one actor-sized call (32 images), each head in a fresh process.

    .venv/bin/python bench/heads_cost.py            # ~2-3 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def _one(head: str, what: str, size: int, threads: int) -> dict:
    import resource

    import torch

    from raycolor.core import abbins
    from raycolor.core.colorize import predict_ab
    from raycolor.core.model import build_colorizer
    from raycolor.pipelines.training.loop import pixel_loss

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    model = build_colorizer(weights=None, head=head).eval()
    out: dict = {"head": head}
    if what == "memory":
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with torch.inference_mode():
            predict_ab(model, torch.rand(32, 1, size, size) * 100)
        out["peak_mb_batch32"] = round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, 1)
        return out
    L = torch.rand(16, 1, size, size) * 100
    times = []
    for _ in range(4):  # the first is warm-up
        t = time.perf_counter()
        predict_ab(model, L)
        times.append(time.perf_counter() - t)
    out["predict_ms_per_image"] = round(1e3 * sorted(times[1:])[1] / len(L), 1)
    if head == "classification":
        with torch.inference_mode():
            logits = model(L)
        t = time.perf_counter()
        for _ in range(3):
            abbins.annealed_mean(logits, model.bins, 0.38)
        out["annealed_mean_ms_per_image"] = round(1e3 * (time.perf_counter() - t) / 3 / len(L), 2)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    Lt, ab = torch.rand(8, 1, size, size) * 100, (torch.rand(8, 2, size, size) - 0.5) * 60
    steps = []
    for _ in range(3):
        t = time.perf_counter()
        loss = pixel_loss(model, model(Lt), ab, "smooth_l1").mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps.append(time.perf_counter() - t)
    out["train_ms_per_image"] = round(1e3 * sorted(steps[1:])[0] / len(Lt), 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_one(*args.child, args.size, args.threads)))
        return
    rows = {}
    for head in ("regression", "classification"):
        row = {}
        for what in ("speed", "memory"):  # a fresh process each: peak RSS belongs to one call
            got = subprocess.run([sys.executable, __file__, "--size", str(args.size), "--threads", str(args.threads),
                                  "--child", head, what], capture_output=True, text=True, check=True)
            row.update(json.loads(got.stdout.strip().splitlines()[-1]))
        rows[head] = row
        print(json.dumps(row), flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
