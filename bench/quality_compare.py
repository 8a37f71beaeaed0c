#!/usr/bin/env python
"""Quality ablation on the shipped sample photos: one baseline, one change at a time, same seed for all.

    python bench/quality_compare.py                                  # CPU: 64 px, 30 epochs, 2 workers, weights none, seeds 0,1,2
    python bench/quality_compare.py --weights imagenet --epochs 20   # with the pretrained encoder (online)
    python bench/quality_compare.py --variants baseline,mse          # a subset

Data: ``raycolor.demo.sample_photos()`` with the demo's split (every 4th photo held out: 12 train, 4 held out).
Each variant trains with ``raycolor.pipelines.training.driver.fit`` into ``OUT/<variant>/`` (``--val`` = the held-out list,
so the training log's val numbers are on the same 4 photos) and is then scored with
``raycolor.pipelines.evaluate.evaluate`` on the held-out originals at full resolution (grey-ify, colorize at the
render size, compare), with a gallery in ``OUT/<variant>/gallery.png``.

Variants (the baseline is TrainConfig's defaults for the three choices under test):

    baseline         loss smooth_l1, skips on, encoder frozen for --freeze-encoder-epochs then fine-tuned
    mse              loss mse                              (everything else as baseline)
    no-skips         decoder without the U-Net skips       (everything else as baseline)
    frozen-only      freeze_encoder_epochs = epochs, i.e. never fine-tuned

Seeds. Every variant runs once per seed in --seeds, and all variants share each seed. TrainConfig.seed fixes
the initial weights, but the training crops/flips draw fresh entropy in each Ray Data task and the block order
is randomised, so even two runs of one config differ; the spread over seeds, and the per-seed difference to
the baseline, say how much of a difference between variants is noise. With a single seed, add
``baseline-rerun`` (the baseline config again, same seed) to see that noise floor.

Output: a markdown table on stdout (also written to OUT/table.md) and OUT/results.json with every number.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

VARIANTS: dict[str, dict] = {
    "baseline": {},
    "mse": {"loss": "mse"},
    "no-skips": {"skips": False},
    "frozen-only": {"frozen_only": True},
    "baseline-rerun": {},  # not in the default set: the same config again, for a one-seed noise floor
}
DEFAULT_VARIANTS = ("baseline", "mse", "no-skips", "frozen-only")


def _weights(value: str) -> str | None:
    return None if value.lower() == "none" else value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench-output/quality", help="folder for the runs, results.json and table.md")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--image-size", type=int, default=64, help="training crop = render size (multiple of 16)")
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers")
    p.add_argument("--weights", default="none", help="encoder init: PATH (VGG16 state dict), imagenet, or none")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"comma-separated, from {','.join(VARIANTS)}")
    p.add_argument("--batch-size", type=int, default=4, help="per worker (the demo's)")
    p.add_argument(
        "--freeze-encoder-epochs", type=int, default=None, help="baseline's stage-1 epochs (default: max(1, epochs // 2), as the demo)"
    )
    p.add_argument("--lr", type=float, default=2e-3, help="decoder learning rate (the demo's)")
    p.add_argument("--finetune-lr", type=float, default=2e-4, help="encoder learning rate in stage 2 (the demo's)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated TrainConfig seeds; every variant runs once per seed")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--address", default=None, help="an existing Ray cluster (the sample photos must be readable there)")
    args = p.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants:
        p.error(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    try:
        args.seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        p.error("--seeds: comma-separated integers")
    if not args.seeds or len(set(args.seeds)) != len(args.seeds):
        p.error("--seeds: at least one, no repeats")
    if args.freeze_encoder_epochs is None:
        args.freeze_encoder_epochs = max(1, args.epochs // 2)
    if not 0 < args.freeze_encoder_epochs < args.epochs:
        p.error("the baseline must freeze then fine-tune: need 0 < --freeze-encoder-epochs < --epochs")
    return args


def split_samples(out: Path) -> tuple[Path, Path, int, int]:
    """The demo's split of the bundled photos, written as two list files (train.txt, held-out.txt)."""
    from raycolor.demo import HELD_OUT_EVERY, sample_photos

    photos = sample_photos()
    held_out = photos[HELD_OUT_EVERY - 1 :: HELD_OUT_EVERY]
    train = [p for p in photos if p not in held_out]
    out.mkdir(parents=True, exist_ok=True)
    train_list, held_list = out / "train.txt", out / "held-out.txt"
    train_list.write_text("".join(f"{p}\n" for p in train))
    held_list.write_text("".join(f"{p}\n" for p in held_out))
    return train_list, held_list, len(train), len(held_out)


def run_name(variant: str, seed: int) -> str:
    return f"{variant}-s{seed}"


def train_config(args: argparse.Namespace, variant: str, seed: int, train_list: Path, held_list: Path, out: Path):
    from raycolor.config import TrainConfig

    change = dict(VARIANTS[variant])
    frozen_only = change.pop("frozen_only", False)
    return TrainConfig(
        data=(str(train_list),),
        val=(str(held_list),),
        output=str(out / run_name(variant, seed)),
        epochs=args.epochs,
        image_size=args.image_size,
        batch_size=args.batch_size,
        workers=args.workers,
        weights=_weights(args.weights),
        freeze_encoder_epochs=args.epochs if frozen_only else args.freeze_encoder_epochs,
        finetune_blocks=2,
        lr=args.lr,
        finetune_lr=args.finetune_lr,
        seed=seed,
        num_to_keep=1,
        **change,  # loss / skips: the one thing this variant changes
    )


def run_variant(args: argparse.Namespace, variant: str, seed: int, train_list: Path, held_list: Path, out: Path) -> dict:
    from raycolor.config import EvaluateConfig
    from raycolor.pipelines import evaluate as ray_evaluate
    from raycolor.pipelines.training import driver as ray_train

    cfg = train_config(args, variant, seed, train_list, held_list, out)
    run = out / run_name(variant, seed)
    if (run / "train").exists():
        sys.exit(f"{run} already holds a run (fit would resume it): choose another --out or delete it")
    print(f"== {variant}, seed {seed}: loss {cfg.loss}, skips {cfg.skips}, frozen {cfg.freeze_encoder_epochs}/{cfg.epochs} epochs", flush=True)
    t0 = time.perf_counter()
    fit = ray_train.fit(cfg, progress=True)
    fit_s = time.perf_counter() - t0
    history = [json.loads(line) for line in Path(fit.metrics_uri).read_text().splitlines()]
    t0 = time.perf_counter()
    report = ray_evaluate.evaluate(
        EvaluateConfig(
            checkpoint=fit.model_uri,
            data=(str(held_list),),
            render_size=args.image_size,
            batch_size=4,
            gallery=str(run / "gallery.png"),
        )
    )
    eval_s = time.perf_counter() - t0
    last = fit.metrics
    return {
        "variant": variant,
        "seed": seed,
        "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("storage",)},
        "val_loss": last.get("val_loss"),
        "train_loss": last.get("train_loss"),
        "train_val_psnr": last.get("val_psnr"),
        "train_baseline_psnr": last.get("baseline_psnr"),
        "history": history,
        "train_s": sum(m.get("epoch_time_s") or 0.0 for m in history),  # the epochs themselves
        "fit_s": fit_s,  # the whole fit call: Ray Train start-up, data pipeline, checkpoints, export
        "eval_s": eval_s,
        "eval": report.as_json(),
        "per_image": report.per_image,
    }


def _f(x, spec: str) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def _mean(xs: list) -> float | None:
    xs = [x for x in xs if isinstance(x, (int, float)) and math.isfinite(x)]
    return sum(xs) / len(xs) if xs else None


def _by_variant(results: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in results:
        out.setdefault(r["variant"], []).append(r)
    return out


def table(results: list[dict]) -> str:
    """One row per variant: means over its seeds; the last column is model PSNR minus the baseline variant's,
    seed by seed (the paired difference: same seed, one change)."""
    head = (
        "| variant | val loss (last epoch) | PSNR model | PSNR grey | SSIM model | SSIM grey "
        "| colourfulness model / original | deltaCF | train s (epochs) | fit s (total) | PSNR per seed | vs baseline, per seed |"
    )
    rows = [head, "|" + "|".join(["---"] * 12) + "|"]
    base = {r["seed"]: r["eval"]["model"]["psnr"] for r in results if r["variant"] == "baseline"}
    for variant, rs in _by_variant(results).items():
        m = {k: _mean([r["eval"]["model"][k] for r in rs]) for k in rs[0]["eval"]["model"]}
        b = {k: _mean([r["eval"]["baseline"][k] for r in rs]) for k in rs[0]["eval"]["baseline"]}
        loss = rs[0]["config"]["loss"]
        per_seed = " / ".join(_f(r["eval"]["model"]["psnr"], ".2f") for r in rs)
        diffs = [r["eval"]["model"]["psnr"] - base[r["seed"]] for r in rs if r["seed"] in base]
        vs = "-" if variant == "baseline" or not diffs else " / ".join(_f(d, "+.2f") for d in diffs)
        rows.append(
            f"| {variant} | {_f(_mean([r['val_loss'] for r in rs]), '.4f')} ({loss}) | {_f(m['psnr'], '.2f')} "
            f"| {_f(b['psnr'], '.2f')} | {_f(m['ssim'], '.4f')} | {_f(b['ssim'], '.4f')} "
            f"| {_f(m['colourfulness'], '.1f')} / {_f(m['colourfulness_original'], '.1f')} | {_f(m['delta_cf'], '+.1f')} "
            f"| {_f(_mean([r['train_s'] for r in rs]), '.0f')} | {_f(_mean([r['fit_s'] for r in rs]), '.0f')} "
            f"| {per_seed} | {vs} |"
        )
    return "\n".join(rows)


def per_image_table(results: list[dict]) -> str:
    """PSNR per held-out photo and variant (mean over seeds), next to grey: is one photo driving the mean?"""
    groups = _by_variant(results)
    sources = sorted({p["source"] for r in results for p in r["per_image"]})
    head = "| photo | " + " | ".join(groups) + " | grey |"
    rows = [head, "|" + "|".join(["---"] * (len(groups) + 2)) + "|"]
    for s in sources:
        cells, grey = [], []
        for rs in groups.values():
            ps = [p for r in rs for p in r["per_image"] if p["source"] == s]
            cells.append(_f(_mean([p["model_psnr"] for p in ps]), ".2f"))
            grey += [p["baseline_psnr"] for p in ps]
        rows.append(f"| {os.path.basename(s)} | " + " | ".join(cells) + f" | {_f(_mean(grey), '.2f')} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    train_list, held_list, n_train, n_held = split_samples(out)

    from raycolor.pipelines import runtime

    print(runtime.connect(args.address, num_cpus=args.num_cpus), flush=True)
    import ray

    started = _dt.datetime.now().astimezone()
    machine = f"{platform.node() or 'host'}: {platform.machine()}, {os.cpu_count()} logical CPUs, Ray CPUs {int(ray.cluster_resources().get('CPU', 0))}"
    results: list[dict] = []
    for seed in args.seeds:  # seed-major: an interrupted run still has every variant for the first seeds
        for variant in args.variants:
            results.append(run_variant(args, variant, seed, train_list, held_list, out))
            (out / "results.json").write_text(json.dumps({"args": vars(args), "machine": machine, "results": results}, indent=1))
            print(table(results), flush=True)

    command = "python bench/quality_compare.py " + " ".join(sys.argv[1:]) if argv is None else "quality_compare " + " ".join(argv)
    md = "\n".join(
        [
            f"Sample photos: {n_train} train / {n_held} held out (demo split); {args.epochs} epochs at {args.image_size} px, "
            f"{args.workers} workers, batch {args.batch_size}, weights {args.weights}, lr {args.lr} / {args.finetune_lr}, "
            f"baseline frozen for {args.freeze_encoder_epochs} epochs, seeds {','.join(map(str, args.seeds))}.",
            f"Started {started:%Y-%m-%d %H:%M %Z} on {machine}.",
            f"Command: `{command}`",
            "",
            table(results),
            "",
            "Per held-out photo, PSNR (dB), mean over seeds, model vs grey:",
            "",
            per_image_table(results),
            "",
        ]
    )
    (out / "table.md").write_text(md)
    print()
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
