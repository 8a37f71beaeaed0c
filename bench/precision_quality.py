"""bf16 against fp32 on the bundled photos, through a trained checkpoint per head (issue 35, item 2): each photo
colorized twice by `colorize_rgb` (prepare -> predict_ab -> compose, as the pipeline does it), once per
precision, then
  - |d ab| between the two predictions at render size (the model's own difference): mean, p99.9, max;
  - |d ab| between the two output images in Lab (what a viewer gets, after compose's gamut fit and uint8): mean,
    p99.9; and their L, which must match to the last bit;
  - mean CIEDE2000 between the two outputs (target <= 0.5);
  - against the originals, for each: PSNR (target: within 0.05 dB), colourfulness ratio, AuC and CIEDE2000.
Checkpoints: OUT/<head>-fp32/model from bench/precision_train.py (trained in fp32 on the demo's budget), or give
--checkpoint HEAD=PATH.

    .venv/bin/python bench/precision_quality.py --runs /tmp/prec-train     # ~1 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="precision-train", help="bench/precision_train.py's --out")
    ap.add_argument("--checkpoint", action="append", default=[], help="HEAD=PATH (overrides --runs)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    from raycolor.core import checkpoint, metrics, precision
    from raycolor.core.colorize import compose, predict_ab, prepare
    from raycolor.demo import sample_photos

    torch.set_num_threads(args.threads)
    ckpts = {h: str(Path(args.runs) / f"{h}-fp32" / "model") for h in ("regression", "classification")}
    ckpts.update(dict(kv.split("=", 1) for kv in args.checkpoint))
    print("load average:", os.getloadavg())
    rows = {}
    for head, uri in ckpts.items():
        model, meta = checkpoint.load(uri)
        precision.to_layout(model)
        r = meta.render_size
        d_small, d_img, de, cells = [], [], [], {"fp32": [], "bf16": []}
        l_same = True
        for p in sample_photos():
            rgb = np.asarray(Image.open(p).convert("RGB"))
            L, small = prepare(rgb, r)
            ab = {q: predict_ab(model, small[None], precision=q)[0] for q in ("fp32", "bf16")}
            out = {q: compose(L, ab[q]).numpy() for q in ab}
            d_small.append((ab["bf16"] - ab["fp32"]).square().sum(0).sqrt().flatten().numpy())
            lab = {q: metrics.lab(out[q]) for q in out}
            d_img.append(np.sqrt(((lab["bf16"][..., 1:] - lab["fp32"][..., 1:]) ** 2).sum(-1)).ravel())
            # L: compose's uint8 RGB moves it by rounding; the float L compose started from is the input's in both
            l_same &= bool(np.array_equal(L.numpy(), prepare(rgb, r)[0].numpy()))
            de.append(metrics.ciede2000(out["bf16"], out["fp32"]))
            ref_lab = metrics.lab(rgb)
            for q in out:
                cells[q].append(metrics.image_metrics(out[q], rgb, original_lab=ref_lab))
        ds, di = np.concatenate(d_small), np.concatenate(d_img)
        row = {
            "checkpoint": uri, "render_size": r, "photos": len(de),
            "d_ab_model_mean": float(ds.mean()), "d_ab_model_p999": float(np.quantile(ds, 0.999)),
            "d_ab_model_max": float(ds.max()),
            "d_ab_image_mean": float(di.mean()), "d_ab_image_p999": float(np.quantile(di, 0.999)),
            "ciede2000_between_mean": float(np.mean(de)), "ciede2000_between_max_image": float(np.max(de)),
            "l_input_identical": l_same,
        }
        for q in ("fp32", "bf16"):
            for k in ("psnr", "colourfulness_ratio", "auc", "ciede2000"):
                row[f"{k}_{q}"] = float(np.nanmean([c[k] for c in cells[q]]))
        row["psnr_diff_db"] = row["psnr_bf16"] - row["psnr_fp32"]
        rows[head] = row
        print(head, json.dumps(row), flush=True)
    print("load average:", os.getloadavg())
    keys = ("d_ab_model_mean", "d_ab_model_p999", "d_ab_image_mean", "d_ab_image_p999", "ciede2000_between_mean",
            "psnr_fp32", "psnr_bf16", "psnr_diff_db", "colourfulness_ratio_fp32", "colourfulness_ratio_bf16",
            "auc_fp32", "auc_bf16", "ciede2000_fp32", "ciede2000_bf16")
    print("\n| metric | " + " | ".join(rows) + " |\n|---|" + "---|" * len(rows))
    for k in keys:
        print(f"| {k} | " + " | ".join(f"{rows[h][k]:.4f}" for h in rows) + " |")


if __name__ == "__main__":
    main()
