"""The training steps without Ray: train_one_epoch and evaluate on an iterable of batches built here (the Ray
worker hands them `shard.iter_torch_batches(...)`), on the real colorizer built with weights=None and 32 px
images; EpochSums.all_reduce in one process without torch.distributed; and a shard expanded into one side's
training rows through stages.expand_batch, the function the Ray Data task runs."""

from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np
import pyarrow as pa
import pytest
import torch
from support import manifest_shards

from raycolor.config import StorageConfig
from raycolor.core import color
from raycolor.core.metrics import PSNR_CAP_DB
from raycolor.core.model import (
    SMOOTH_L1_BETA,
    VGG_BLOCKS,
    build_colorizer,
    set_trainable_encoder_blocks,
)
from raycolor.pipelines.stages import expand_batch
from raycolor.pipelines.training.data import TRAIN_ROWS, shard_rows
from raycolor.pipelines.training.loop import evaluate, train_one_epoch
from raycolor.pipelines.training.records import EpochSums
from raycolor.pipelines.training.split import Split

SIZE = 32


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return build_colorizer(weights=None)


def _textured_batch(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """n images as the val transform makes them: light red over dark blue under grey texture, in Lab."""
    rng = np.random.default_rng(seed)
    rgb = np.empty((n, SIZE, SIZE, 3), np.float32)
    rgb[:, : SIZE // 2] = (225, 95, 85)
    rgb[:, SIZE // 2 :] = (35, 45, 150)
    rgb += rng.uniform(-25, 25, (n, SIZE, SIZE, 1))
    u8 = torch.from_numpy(rgb.clip(0, 255).astype(np.uint8)).permute(0, 3, 1, 2)
    lab = torch.stack([color.rgb_uint8_to_lab(x) for x in u8]).float()
    return {"L": lab[:, :1].contiguous(), "ab": lab[:, 1:].contiguous()}


def _flat_batch(abs_: list[tuple[float, float]], L: float = 50.0) -> dict[str, torch.Tensor]:
    """One image per (a, b): lightness L and that chroma everywhere."""
    n = len(abs_)
    ab = torch.tensor(abs_, dtype=torch.float32).view(n, 2, 1, 1).expand(n, 2, SIZE, SIZE).contiguous()
    return {"L": torch.full((n, 1, SIZE, SIZE), L), "ab": ab}


def _predicting(model, a: float, b: float):
    """The colorizer made to predict ab = (a, b) everywhere: head weights 0, bias atanh(ab / AB_NORM)."""
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.atanh(torch.tensor([a, b]) / color.AB_NORM))
    return model


def _split(batch: dict[str, torch.Tensor], sizes: list[int]) -> list[dict[str, torch.Tensor]]:
    out, start = [], 0
    for n in sizes:
        out.append({k: v[start : start + n] for k, v in batch.items()})
        start += n
    return out


# --------------------------------------------------------------------------------------------- train_one_epoch


def test_train_one_epoch_lowers_the_loss_on_a_fixed_batch_and_counts_steps():
    model = _model()
    opt = model.configure_optimizers(lr=1e-3, finetune_lr=1e-4)
    set_trainable_encoder_blocks(model, 0)
    batch = _textured_batch(4)
    before = evaluate(model, [batch])[0]
    seen = []
    loss_sum, images, steps = train_one_epoch(model, opt, [batch] * 8, on_step=seen.append)
    after = evaluate(model, [batch])[0]
    assert (images, steps, seen) == (32, 8, list(range(1, 9)))
    assert after < before, (before, after)
    assert model.training  # evaluate hands the model back in training mode
    assert math.isfinite(loss_sum) and loss_sum > 0


def test_train_one_epoch_loss_sum_is_each_batch_mean_times_its_size():
    """With lr = 0 nothing moves, so every batch's mean loss is evaluate's per-image mean over that batch (the
    images are the same size): the sum over batches of mean x size equals evaluate's sum of per-image means.
    Both come from float32 means over 2 * 32 * 32 values per image (pairwise sums: relative error below
    log2(8192) * 2**-24 ~ 1e-6 each); 1e-5 covers them."""
    model = _model()
    set_trainable_encoder_blocks(model, 0)
    opt = model.configure_optimizers(lr=0.0, finetune_lr=0.0)
    batches = _split(_textured_batch(5), [3, 2])
    for loss in ("smooth_l1", "mse"):
        loss_sum, images, steps = train_one_epoch(model, opt, batches, loss=loss)
        expected, _, _, n = evaluate(model, batches, loss=loss)
        assert (images, steps, n) == (5, 2, 5)
        assert loss_sum == pytest.approx(expected, rel=1e-5), loss


def test_train_one_epoch_of_no_batches_is_zero():
    model = _model()
    opt = model.configure_optimizers(lr=1e-3, finetune_lr=1e-4)
    assert train_one_epoch(model, opt, []) == (0.0, 0, 0)


@pytest.mark.parametrize("trainable", [0, 2])
def test_frozen_encoder_blocks_do_not_change(trainable):
    """The frozen stage (0 blocks) and fine-tuning the top 2: the lower blocks stay bit-identical even with
    weight decay (AdamW skips parameters without a gradient); the trainable ones and the decoder move."""
    model = _model()
    opt = model.configure_optimizers(lr=1e-3, finetune_lr=1e-3, weight_decay=0.1)
    set_trainable_encoder_blocks(model, trainable)
    blocks = [[p.detach().clone() for p in model.encoder_block_params(b)] for b in range(len(VGG_BLOCKS))]
    decoder = [p.detach().clone() for p in model.decoder_params()]
    train_one_epoch(model, opt, [_textured_batch(2)] * 2)
    for b in range(len(VGG_BLOCKS)):
        same = [torch.equal(old, p) for old, p in zip(blocks[b], model.encoder_block_params(b))]
        if b < len(VGG_BLOCKS) - trainable:
            assert all(same), b
        else:
            assert not any(same), b
    assert not any(torch.equal(old, p) for old, p in zip(decoder, model.decoder_params()))


# --------------------------------------------------------------------------------------------- evaluate

# chroma (22, -11) is (0.2, -0.1) after dividing by AB_NORM = 110: beyond SMOOTH_L1_BETA = 0.05, so smooth L1
# is |x| - beta / 2 on each channel and the image's mean loss is (0.175 + 0.075) / 2; MSE gives (0.04 + 0.01) / 2
CHROMA = (22.0, -11.0)
HAND_LOSS = {"smooth_l1": ((0.2 - SMOOTH_L1_BETA / 2) + (0.1 - SMOOTH_L1_BETA / 2)) / 2, "mse": (0.2**2 + 0.1**2) / 2}
# a prediction within 1 uint8 code of the truth on every value: MSE <= 1, so PSNR >= 20 log10(255)
ONE_CODE_PSNR = 20 * math.log10(255)


@pytest.mark.parametrize("loss", ["smooth_l1", "mse"])
def test_evaluate_grey_prediction_by_hand(loss):
    """A colorizer that predicts ab = 0 on a coloured and a grey image: the loss is the coloured image's hand
    value (float32 division by 110: relative 1e-6), the shown image is the grey baseline itself, and on the
    grey image both are exact (PSNR capped at PSNR_CAP_DB)."""
    model = _predicting(_model(), 0.0, 0.0)
    batch = _flat_batch([CHROMA, (0.0, 0.0)])
    loss_sum, psnr, base, images = evaluate(model, [batch], loss=loss)
    assert images == 2
    assert loss_sum == pytest.approx(HAND_LOSS[loss], rel=1e-5)
    assert psnr == base  # shown == grey, image by image
    per_image = [evaluate(model, [b], loss=loss) for b in _split(batch, [1, 1])]
    assert per_image[1][1:3] == (PSNR_CAP_DB, PSNR_CAP_DB)
    assert per_image[0][1] < PSNR_CAP_DB  # the coloured image's baseline is not perfect
    assert sum(r[0] for r in per_image) == pytest.approx(loss_sum, rel=1e-12)  # sums, batch by batch
    assert sum(r[2] for r in per_image) == pytest.approx(base, rel=1e-12)


def test_evaluate_right_colour_prediction_by_hand():
    """Predicting the coloured image's chroma: its loss is ~0 (tanh(atanh(x)) in float32: |error| ~ 1e-7 x 110
    ab units, in the quadratic part of smooth L1) and its shown image is the truth to within one code (PSNR >=
    20 log10 255); on the grey image the same prediction costs the hand value, and its PSNR is the coloured
    image's baseline (PSNR is symmetric), within the same one-code rounding."""
    model = _predicting(_model(), *CHROMA)
    coloured, grey = _split(_flat_batch([CHROMA, (0.0, 0.0)]), [1, 1])
    loss_c, psnr_c, base_c, _ = evaluate(model, [coloured])
    loss_g, psnr_g, base_g, _ = evaluate(model, [grey])
    assert loss_c < 1e-6
    assert psnr_c >= ONE_CODE_PSNR and base_c < psnr_c
    assert loss_g == pytest.approx(HAND_LOSS["smooth_l1"], rel=1e-5)
    assert base_g == PSNR_CAP_DB
    # grey vs coloured compared both ways: equal up to the uint8 rounding of the predicted colour
    assert abs(psnr_g - base_c) < 1.0


# --------------------------------------------------------------------------------------------- EpochSums


def test_epoch_sums_all_reduce_in_one_process_without_torch_distributed():
    import torch.distributed as dist

    assert not (dist.is_available() and dist.is_initialized())
    sums = EpochSums(1.5, 4.0, 0.25, 61.0, 40.5, 2.0)
    out = sums.all_reduce(torch.device("cpu"))
    assert isinstance(out, EpochSums) and out == sums


# --------------------------------------------------------------------------------------------- shard -> rows


def test_a_shard_expands_into_one_side_of_the_hold_out(tmp_path):
    """stages.expand_batch with training's rows (what the fused Ray Data task runs): the two sides are
    disjoint, together every listed image, each row on the side Split says, in TRAIN_ROWS' columns; a shard
    that cannot be expanded gives no rows (dropped for the epoch, never fatal)."""
    names = [f"img{i:02d}.jpg" for i in range(40)]
    manifest = tmp_path / "list.txt"
    manifest.write_text("".join(f"{n}\n" for n in names))
    [shard] = manifest_shards(manifest, shard_size=1000)
    split = Split(0.5)
    batch = pa.Table.from_pylist([asdict(shard)])
    kw = dict(rows=shard_rows, schema=TRAIN_ROWS, split=split, held=None, store=StorageConfig(retries=1))
    sides = {side: expand_batch(batch, side=side, **kw) for side in ("train", "val")}
    for t in sides.values():
        assert t.schema == TRAIN_ROWS
    train, val = (set(sides[s].column("source").to_pylist()) for s in ("train", "val"))
    assert train.isdisjoint(val) and train | val == {str(tmp_path / n) for n in names}
    assert val and train  # 40 hashes against 1/2: both sides hold some (P(all on one side) = 2**-39)
    assert all(split.is_val(s) for s in val) and not any(split.is_val(s) for s in train)

    manifest.unlink()  # gone since planning
    empty = expand_batch(batch, side="train", **kw)
    assert empty.num_rows == 0 and empty.schema == TRAIN_ROWS
