"""The model step and the training step under each precision and layout on CPU (issue 35): `predict_ab` for a batch
of 16 at 224 px on 2 threads, inference mode, as the actor runs it, for fp32 as raycolor ran it on CPU before
(contiguous NCHW), fp32 channels_last, and bf16 autocast channels_last; and one training step (forward, loss,
backward, AdamW) of 8 images at 224 px, fp32 against bf16 (both channels_last, as the worker runs them); both
heads, each variant in a fresh process (so one's caches and allocator do not help the next).

    .venv/bin/python bench/precision_cost.py                  # ~4 min on 2 cores
    .venv/bin/python bench/precision_cost.py --skip-train     # the model step only, ~2 min
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _one(head: str, what: str, variant: str, size: int, threads: int, batch: int) -> dict:
    import torch

    from raycolor.core import precision
    from raycolor.core.colorize import predict_ab
    from raycolor.core.model import build_colorizer
    from raycolor.pipelines.training.loop import train_one_epoch

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    model = build_colorizer(weights=None, head=head)
    prec, layout = variant.split("-")  # "fp32-nchw", "fp32-cl", "bf16-cl"
    if layout == "cl":
        precision.to_layout(model)
    if what == "predict":
        model.eval()
        L = torch.rand(batch, 1, size, size) * 100
        times = []
        for _ in range(4):  # the first is warm-up (oneDNN primitive creation, weight reorders)
            t = time.perf_counter()
            predict_ab(model, L, precision=prec)
            times.append(time.perf_counter() - t)
        return {"ms_per_image": round(1e3 * sorted(times[1:])[1] / batch, 1)}
    model.train()
    opt = model.configure_optimizers(lr=1e-4, finetune_lr=1e-5)
    b = {"L": torch.rand(batch, 1, size, size) * 100, "ab": (torch.rand(batch, 2, size, size) - 0.5) * 60}
    times = []
    for _ in range(3):
        t = time.perf_counter()
        train_one_epoch(model, opt, [b], autocast=precision.autocast_args(prec, "cpu"))
        times.append(time.perf_counter() - t)
    return {"ms_per_image": round(1e3 * min(times[1:]) / batch, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16, help="the model step's batch")
    ap.add_argument("--train-batch", type=int, default=8)
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--heads", default="regression,classification")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        head, what, variant = args.child
        batch = args.batch if what == "predict" else args.train_batch
        print(json.dumps(_one(head, what, variant, args.size, args.threads, batch)))
        return
    print("load average before:", os.getloadavg())
    rows: dict = {}
    plan = [("predict", v) for v in ("fp32-nchw", "fp32-cl", "bf16-cl")]
    if not args.skip_train:
        plan += [("train", v) for v in ("fp32-cl", "bf16-cl")]
    for head in args.heads.split(","):
        for what, variant in plan:
            got = subprocess.run([sys.executable, __file__, "--size", str(args.size), "--threads", str(args.threads),
                                  "--batch", str(args.batch), "--train-batch", str(args.train_batch),
                                  "--child", head, what, variant], capture_output=True, text=True, check=True)
            rows[(head, what, variant)] = json.loads(got.stdout.strip().splitlines()[-1])["ms_per_image"]
            print(head, what, variant, rows[(head, what, variant)], "ms/image", flush=True)
    print("load average after:", os.getloadavg())
    print(f"\n| head | step | fp32 NCHW (before) | fp32 channels_last | bf16 channels_last | bf16 vs before |\n|---|---|---|---|---|---|")
    for head in args.heads.split(","):
        for what in ("predict", "train"):
            r = {v: rows.get((head, what, v)) for v in ("fp32-nchw", "fp32-cl", "bf16-cl")}
            if r["bf16-cl"] is None:
                continue
            base = r["fp32-nchw"] or r["fp32-cl"]
            cells = " | ".join("-" if x is None else f"{x}" for x in r.values())
            print(f"| {head} | {what} | {cells} | {base / r['bf16-cl']:.2f}x |")


if __name__ == "__main__":
    main()
