"""Metrics formatting: the epoch's record, OUTPUT/metrics.jsonl, the progress line, OUTPUT/curves.png."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from raycolor import storage
from raycolor.config import TrainConfig
from raycolor.pipelines.progress import fmt_duration

if TYPE_CHECKING:
    from raycolor.pipelines.training.loop import EpochSums

METRICS_NAME = "metrics.jsonl"
CURVES_NAME = "curves.png"


def _finite(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def _metrics_jsonl(history: list[dict]) -> bytes:
    return "".join(json.dumps(_finite(m), sort_keys=True, allow_nan=False) + "\n" for m in history).encode()


def _fmt(x, spec: str) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def progress_line(m: dict, eta_s: float | None) -> str:
    """An epoch's record as the one line the terminal report shows."""
    return (
        f"epoch {m['epoch']}/{m['epochs']} [{m['stage']}] train_loss {_fmt(m['train_loss'], '.4f')} "
        f"val_loss {_fmt(m['val_loss'], '.4f')} val_psnr {_fmt(m['val_psnr'], '.2f')} dB "
        f"(grey baseline {_fmt(m['baseline_psnr'], '.2f')} dB) {_fmt(m['images_per_s'], '.1f')} img/s "
        f"ETA {fmt_duration(eta_s)}"
    )


def epoch_record(epoch: int, stage: str, sums: EpochSums, *, config: TrainConfig, steps: int, train_time: float,
                  epoch_time: float, resumed_from: int, workers: int) -> dict:
    """The line metrics.jsonl gets for an epoch (None where there was nothing to average)."""
    avg = lambda total, n: total / n if n else None  # noqa: E731
    return _finite({
        "epoch": epoch + 1,
        "epochs": config.epochs,
        "stage": stage,
        "train_loss": avg(sums.train_loss, sums.train_images),
        "val_loss": avg(sums.val_loss, sums.val_images),
        "val_psnr": avg(sums.val_psnr, sums.val_images),
        "baseline_psnr": avg(sums.val_baseline_psnr, sums.val_images),
        # colour: as `raycolor evaluate`'s colourfulness_ratio (a ratio of the sums) and auc (a mean over images)
        "val_colourfulness_ratio": avg(sums.val_colourfulness, sums.val_colourfulness_original),
        "val_auc": avg(sums.val_auc, sums.val_images),
        # all ranks' images over this rank's training wall time (ranks run in lockstep)
        "images_per_s": sums.train_images / train_time if train_time > 0 else 0.0,
        "train_images": int(sums.train_images),
        "val_images": int(sums.val_images),
        "steps": steps,  # optimizer steps per rank this epoch
        "train_time_s": train_time,
        "epoch_time_s": epoch_time,
        "resumed_from": resumed_from,
        "workers": workers,
    })


def write_metrics(history: list[dict], config: TrainConfig) -> str:
    """OUTPUT/metrics.jsonl, rewritten whole (one line per finished epoch); its URI."""
    uri = storage.join_uri(config.output, METRICS_NAME)
    storage.write_bytes_atomic(uri, _metrics_jsonl(history), store=config.storage)
    return uri


def write_curves(history: list[dict], config: TrainConfig) -> str | None:
    """OUTPUT/curves.png from the metrics history; None (with a message) without matplotlib."""
    from raycolor.core.curves import render_curves

    png = render_curves(history) if history else None
    if png is None:
        if history:
            print("training curves skipped: install matplotlib (pip install 'raycolor[plots]') for OUTPUT/curves.png")
        return None
    uri = storage.join_uri(config.output, CURVES_NAME)
    storage.write_bytes_atomic(uri, png, store=config.storage)
    return uri
