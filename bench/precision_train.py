"""Training under fp32 against bf16 autocast on CPU (issue 35, item 3), both heads: `make demo`'s recipe and split
of the bundled photos (12 train, every 4th held out; epochs, 96 px, batch 4, two workers, two stages, learning
rates; weights=None as bench/heads_compare.py has it), one `fit` per (head, precision). Prints each epoch's
train loss, val loss, val PSNR and training images/s side by side, and keeps the four exported models
(OUT/<head>-<precision>/model) for bench/precision_quality.py.

    .venv/bin/python bench/precision_train.py --out /tmp/prec-train      # ~10 min on 2 cores

Curves do not depend on the machine's load; the images/s do (measure the step alone with
bench/precision_cost.py under a quiet machine).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="precision-train")
    ap.add_argument("--epochs", type=int, default=None, help="default: the demo's")
    ap.add_argument("--heads", default="regression,classification")
    ap.add_argument("--precisions", default="fp32,bf16")
    args = ap.parse_args()

    from raycolor.config import DemoConfig, TrainConfig
    from raycolor.demo import write_split
    from raycolor.pipelines import runtime
    from raycolor.pipelines.training import driver as ray_train

    demo = DemoConfig()
    epochs = args.epochs or demo.epochs
    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    write_split(out)  # out/train.txt, out/held-out.txt
    print(runtime.connect(None))
    runs = {}
    for head in args.heads.split(","):
        for prec in args.precisions.split(","):
            name = f"{head}-{prec}"
            fit = ray_train.fit(TrainConfig(
                data=(str(out / "train.txt"),), val=(str(out / "held-out.txt"),), output=str(out / name),
                epochs=epochs, image_size=demo.image_size, batch_size=4, workers=demo.workers, weights=None,
                freeze_encoder_epochs=max(1, epochs // 2), finetune_blocks=2, lr=2e-3, finetune_lr=2e-4, head=head,
                precision=prec,
            ))
            lines = [json.loads(x) for x in Path(fit.metrics_uri).read_text().splitlines() if x.strip()]
            runs[name] = {"model": fit.model_uri, "elapsed_s": fit.elapsed_s, "epochs": lines}
            print(name, f"{fit.elapsed_s:.1f} s", flush=True)
    keys = ("train_loss", "val_loss", "val_psnr", "images_per_s")
    for head in args.heads.split(","):
        precs = args.precisions.split(",")
        print(f"\n{head}: epoch | " + " | ".join(f"{k} {p}" for k in keys for p in precs))
        for e in range(epochs):
            cells = []
            for k in keys:
                for p in precs:
                    line = runs[f"{head}-{p}"]["epochs"][e]
                    v = line.get(k)
                    cells.append("-" if v is None else f"{v:.4f}" if k != "images_per_s" else f"{v:.2f}")
            print(f"| {e + 1} | " + " | ".join(cells) + " |")
        print("precision recorded:", {p: runs[f"{head}-{p}"]["epochs"][-1].get("precision") for p in precs})
    (out / "runs.json").write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
