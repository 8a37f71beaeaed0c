"""Metrics formatting: the epoch's record, OUTPUT/metrics.jsonl, the progress line, OUTPUT/curves.png."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from raycolor import storage
from raycolor.config import TrainConfig
from raycolor import paths
from raycolor.pipelines.progress import fmt_duration

if TYPE_CHECKING:
    import torch

@dataclass
class EpochSums:
    """What a rank adds up over one epoch; summed over ranks as one float64 tensor, in field order."""

    train_loss: float = 0.0  # sum over training images of the batch-mean loss
    train_images: float = 0.0
    val_loss: float = 0.0  # sum over validation images of each image's mean loss
    val_psnr: float = 0.0  # of the prediction as `raycolor colorize` shows it
    val_baseline_psnr: float = 0.0  # of the grey baseline (ab = 0)
    val_images: float = 0.0
    val_colourfulness: float = 0.0  # sums over validation images: the shown prediction's colourfulness,
    val_colourfulness_original: float = 0.0  # the truth's,
    val_auc: float = 0.0  # and the AuC of the ab error (metrics.auc)

    def all_reduce(self, device: torch.device) -> EpochSums:
        """Summed over the ranks of torch.distributed's default group; in one process without it, the same sums."""
        import torch
        import torch.distributed as dist

        t = torch.tensor(dataclasses.astuple(self), dtype=torch.float64, device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(t)
        return EpochSums(*t.cpu().tolist())




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
    uri = paths.metrics_uri(config.output)
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
    uri = paths.curves_uri(config.output)
    storage.write_bytes_atomic(uri, png, store=config.storage)
    return uri
