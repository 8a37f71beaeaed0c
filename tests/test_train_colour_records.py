"""Training's validation records see colour: evaluate's `colour` sums and the epoch record's
val_colourfulness_ratio and val_auc, without Ray, on a stand-in model that predicts a fixed ab."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raycolor.config import TrainConfig
from raycolor.core import color, metrics
from raycolor.pipelines.training.loop import evaluate
from raycolor.pipelines.training.records import EpochSums
from raycolor.pipelines.training.records import epoch_record

SIZE = 32


class _Fixed(torch.nn.Module):
    """Predicts `ab` (2, H, W), set before each call, for every image of the batch."""

    def __init__(self):
        super().__init__()
        self.ab: torch.Tensor | None = None

    def forward(self, L):
        return self.ab.expand(len(L), -1, -1, -1).clone()


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Light red over dark blue under grey texture, in Lab, as the val transform makes them."""
    rng = np.random.default_rng(seed)
    rgb = np.empty((2, SIZE, SIZE, 3), np.float32)
    rgb[:, : SIZE // 2] = (225, 95, 85)
    rgb[:, SIZE // 2 :] = (35, 45, 150)
    rgb += rng.uniform(-25, 25, (2, SIZE, SIZE, 1))
    u8 = torch.from_numpy(rgb.clip(0, 255).astype(np.uint8)).permute(0, 3, 1, 2)
    lab = torch.stack([color.rgb_uint8_to_lab(x) for x in u8]).float()
    return {"L": lab[:, :1].contiguous(), "ab": lab[:, 1:].contiguous()}


def _truth_rgb(batch) -> list[np.ndarray]:
    u8 = color.lab_to_rgb_uint8(torch.cat([batch["L"], batch["ab"]], dim=1))
    return list(u8.permute(0, 2, 3, 1).numpy())


def test_evaluate_adds_colour_sums_and_keeps_its_return_value():
    batch = _batch()
    model = _Fixed()
    model.ab = torch.zeros(2, SIZE, SIZE)  # grey: colourfulness ~0, AuC 1 - mean chroma / 150
    colour = [0.0, 0.0, 0.0]
    plain = evaluate(model, [batch])
    assert evaluate(model, [batch], colour=colour) == plain  # the 4-tuple as before
    truth = _truth_rgb(batch)
    cf_ref = sum(metrics.colourfulness(t) for t in truth)
    assert colour[1] == pytest.approx(cf_ref) and cf_ref > 20
    assert colour[0] < 0.01 * cf_ref
    grey = color.lab_to_rgb_uint8(torch.cat([batch["L"], torch.zeros_like(batch["ab"])], dim=1))
    expected_auc = sum(metrics.auc(g, t) for g, t in zip(grey.permute(0, 2, 3, 1).numpy(), truth))
    assert colour[2] == pytest.approx(expected_auc)
    assert colour[2] / 2 < 0.75  # the chroma of red and blue is far from grey

    # sums add up over batches
    again = [0.0, 0.0, 0.0]
    evaluate(model, [batch, batch], colour=again)
    assert again == pytest.approx([2 * c for c in colour])


def test_evaluate_of_the_truth_scores_ratio_one_and_auc_one():
    batch = _batch(1)
    model = _Fixed()
    colour = [0.0, 0.0, 0.0]
    for i in range(2):  # one image at a time, each predicted as its own ab
        model.ab = batch["ab"][i]
        evaluate(model, [{k: v[i : i + 1] for k, v in batch.items()}], colour=colour)
    assert colour[0] / colour[1] == pytest.approx(1.0, abs=0.02)  # gamut fitting and rounding only
    assert colour[2] / 2 > 0.99


def test_epoch_record_has_the_colour_figures():
    config = TrainConfig(data=("d",), output="o", epochs=3)
    timing = dict(config=config, steps=1, train_time=1.0, epoch_time=1.0, resumed_from=0, workers=1)
    sums = EpochSums(
        train_loss=1.0, train_images=2, val_loss=1.0, val_psnr=40.0, val_baseline_psnr=30.0, val_images=2,
        val_colourfulness=30.0, val_colourfulness_original=60.0, val_auc=1.6,
    )
    rec = epoch_record(0, "frozen", sums, **timing)
    assert rec["val_colourfulness_ratio"] == 0.5 and rec["val_auc"] == 0.8
    rec = epoch_record(0, "frozen", EpochSums(val_images=2), **timing)  # a grey validation set: no ratio to give
    assert rec["val_colourfulness_ratio"] is None
