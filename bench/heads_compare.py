"""The two colour heads under the same from-scratch budget (issue 34): `make demo`'s split of the bundled photos
(12 train, every 4th held out), its training recipe (epochs, size, two stages, learning rates), one run per
head, then `evaluate` on the held-out photos neither saw: PSNR, AuC raw and rebalanced, colourfulness ratio and
CIEDE2000 for each, and a gallery each (grey | colorized | original, with the ab histograms).

    .venv/bin/python bench/heads_compare.py --out /tmp/heads      # ~4-6 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="heads-compare")
    ap.add_argument("--epochs", type=int, default=None, help="default: the demo's")
    args = ap.parse_args()

    from raycolor.config import DemoConfig, EvaluateConfig, TrainConfig
    from raycolor.demo import write_split
    from raycolor.pipelines import evaluate as ray_evaluate
    from raycolor.pipelines import runtime
    from raycolor.pipelines.training import driver as ray_train

    demo = DemoConfig()
    epochs = args.epochs or demo.epochs
    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    write_split(out)  # out/train.txt, out/held-out.txt
    print(runtime.connect(None))
    rows = {}
    for head in ("regression", "classification"):
        fit = ray_train.fit(TrainConfig(
            data=(str(out / "train.txt"),), val=(str(out / "held-out.txt"),), output=str(out / head),
            epochs=epochs, image_size=demo.image_size, batch_size=4, workers=demo.workers, weights=None,
            freeze_encoder_epochs=max(1, epochs // 2), finetune_blocks=2, lr=2e-3, finetune_lr=2e-4, head=head,
        ))
        # evaluate decodes a classification checkpoint at the default temperature (0.38), as colorize does
        report = ray_evaluate.evaluate(EvaluateConfig(
            checkpoint=fit.model_uri, data=(str(out / "held-out.txt"),), render_size=demo.image_size,
            gallery=str(out / f"gallery-{head}.png"),
        ))
        rows[head] = {"model": report.model, "grey": report.baseline, "val_psnr": (fit.metrics or {}).get("val_psnr")}
        print(head, json.dumps(rows[head]), flush=True)
    keys = ("psnr", "auc", "auc_rebalanced", "colourfulness_ratio", "ciede2000", "ssim")
    print("\n| head | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for head, r in [("grey", {"model": rows["regression"]["grey"]}), *rows.items()]:
        m = r["model"]
        print(f"| {head} | " + " | ".join(f"{m.get(k, float('nan')):.3f}" for k in keys) + " |")
    (out / "heads.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
