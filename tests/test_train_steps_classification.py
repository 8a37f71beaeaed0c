"""The training steps (loop.train_one_epoch / evaluate) with the classification head, without Ray."""

import torch

from raycolor.core import abbins, color, metrics
from raycolor.core.model import build_colorizer
from raycolor.pipelines.training.loop import evaluate, pixel_loss, train_one_epoch


def _batches(n_batches=3, n=2, s=32, seed=0):
    """Blocks of 8 px, dark or light at random; light ones orange (40, 30), dark ones blue (5, -40): learnable from L."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        light = (torch.rand(n, 1, s // 8, s // 8, generator=g) < 0.5).repeat_interleave(8, -1).repeat_interleave(8, -2)
        L = torch.where(light, 70.0, 35.0)
        ab = torch.where(light, torch.tensor([40.0, 30.0]).view(1, 2, 1, 1), torch.tensor([5.0, -40.0]).view(1, 2, 1, 1))
        out.append({"L": L, "ab": ab})
    return out


def test_classification_trains_with_the_weighted_cross_entropy_and_validates_on_the_annealed_mean():
    torch.manual_seed(0)
    model = build_colorizer(weights=None, head="classification")
    batches = _batches()
    counts = sum(abbins.bin_counts(b["ab"], model.bins) for b in batches)
    model.set_prior(abbins.rebalancing_weights(counts, model.bins))
    # the step's loss is the weighted CE with the model's own bins and prior
    with torch.no_grad():
        out = model(batches[0]["L"])
    torch.testing.assert_close(
        pixel_loss(model, out, batches[0]["ab"], "smooth_l1"),
        abbins.weighted_cross_entropy(out, batches[0]["ab"], model.bins, model.prior_weights),
    )
    opt = model.configure_optimizers(lr=3e-3, finetune_lr=1e-4)
    first, images, steps = train_one_epoch(model, opt, batches)
    assert (images, steps) == (6, 3)
    for _ in range(7):
        last, _, _ = train_one_epoch(model, opt, batches)
    assert last < first * 0.7, (first, last)
    loss_sum, psnr, base, n = evaluate(model, batches[:1])
    assert n == 2 and model.training
    # PSNR is of the annealed mean at T = 0.38, fitted into gamut, as colorize shows it
    model.eval()
    with torch.no_grad():
        L, ab = batches[0]["L"], batches[0]["ab"]
        logits = model(L)
        pred = abbins.annealed_mean(logits, model.bins, 0.38)
    shown = color.lab_to_rgb_uint8(torch.cat([L, color.fit_ab_to_gamut(L, pred)], 1)).permute(0, 2, 3, 1).numpy()
    truth = color.lab_to_rgb_uint8(torch.cat([L, ab], 1)).permute(0, 2, 3, 1).numpy()
    expect = sum(metrics.psnr(a, b) for a, b in zip(shown, truth))
    assert abs(psnr - expect) < 1e-6
    ce = abbins.weighted_cross_entropy(logits, ab, model.bins, model.prior_weights).mean(dim=(1, 2)).sum()
    assert abs(loss_sum - float(ce)) < 1e-4 * abs(float(ce))
