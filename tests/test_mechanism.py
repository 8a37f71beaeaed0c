"""The controlled test of why the classification head gives colour where regression gives grey (issue 34).

One texture (a fixed noise pattern around L = 60), identical in every image, is blue in half the images and
yellow in the other half. Blue and yellow, not red and blue: red and blue are not opposite in Lab (their mean is
a purple of chroma ~35, so regression would not be grey), and the argument needs two colours whose mean is
grey. Both are real sRGB colours at these L (checked below).

What the optimum of each loss is, since the inputs are identical and the model can only output one thing:
- regression with MSE: the mean of the targets, (-2.5, 2.5): chroma 3.5. The bound is chroma < 10.
- classification with the soft-encoded, class-rebalanced cross-entropy: the weighted average q* of the two
  soft targets. Its annealed mean at T = 0.38 is computed below from q* itself (about 42); the bound is > 30.
  At T = 1 (the plain mean) it is near grey like regression, and at T = 0 (the mode) it is one of the two colours.
  Note: in an exactly symmetric case (both colours at bin centres, opposite) q* is symmetric and even the
  annealed mean is grey; here yellow sits on a bin centre and blue on a corner between four bins, so q* has
  one sharp mode (yellow's bin) and a flat one, and the annealing picks the sharp mode. That is the
  mechanism the paper relies on: sharpening toward the mode of a multimodal prediction.

The trained models must come near those optima: seeded, encoder frozen (weights=None), 32 px, full batch.
"""

import torch

from raycolor.core import abbins, color
from raycolor.core.model import ab_loss, build_colorizer, set_trainable_encoder_blocks

YELLOW = (-10.0, 60.0)  # a bin centre
BLUE = (5.0, -55.0)  # the corner of four bins
S = 32


def _data():
    g = torch.Generator().manual_seed(0)
    tex = 60 + 4 * (torch.rand(1, 1, S, S, generator=g) * 2 - 1)  # L in [56, 64]
    L = tex.expand(2, 1, S, S).clone()
    ab = torch.stack([torch.tensor(YELLOW).view(2, 1, 1).expand(2, S, S), torch.tensor(BLUE).view(2, 1, 1).expand(2, S, S)])
    return L, ab


def _train(head: str, loss_fn, *, steps: int, lr: float, prior: torch.Tensor | None = None):
    """A seeded model trained full-batch on _data(), encoder frozen; returns it in eval mode and its input L."""
    torch.manual_seed(0)
    model = build_colorizer(weights=None, head=head)
    if prior is not None:
        model.set_prior(prior)
    set_trainable_encoder_blocks(model, 0)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    L, ab = _data()
    for _ in range(steps):
        loss = loss_fn(model, L, ab)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), L


def test_colours_are_real_srgb_colours():
    L, ab = _data()
    rgb = color.lab_to_rgb(torch.cat([L, ab], 1), clamp=False)
    assert ((rgb >= 0) & (rgb <= 1)).all()


def test_regression_predicts_grey():
    model, L = _train("regression", lambda m, L, ab: ab_loss(m(L), ab, "mse").mean(), steps=60, lr=1e-3)
    with torch.no_grad():
        pred = model(L)
    mean_ab = pred.mean(dim=(0, 2, 3))
    assert torch.allclose(mean_ab, torch.tensor([-2.5, 2.5]), atol=4)  # the MSE optimum, the targets' mean
    assert float(abbins.chroma(pred).max()) < 10


def test_classification_with_the_annealed_mean_predicts_a_saturated_colour():
    bins = abbins.derive_bins()
    L, ab = _data()
    weights = abbins.rebalancing_weights(abbins.bin_counts(ab, bins), bins)
    # the optimum, from reasoning: the (weight-averaged) soft targets
    z = abbins.soft_encode(ab, bins)
    w = weights[abbins.nearest_bin(ab, bins)].unsqueeze(1)
    q = (w * z).sum(dim=(0, 2, 3)) / w.sum(dim=(0, 2, 3))
    best = {T: float(abbins.chroma(abbins.annealed_mean(torch.log(q + 1e-12).view(1, -1, 1, 1), bins, T))) for T in (1.0, 0.38)}
    assert best[1.0] < 10 and best[0.38] > 38

    def loss(m, L, ab):
        return abbins.weighted_cross_entropy(m(L), ab, m.bins, m.prior_weights).mean()

    # 300 steps: the last pixels (at the borders, where the frozen random encoder's features differ most) reach
    # the optimum there; by 160 steps the median already has (about 9 s on 2 cores in all)
    model, L = _train("classification", loss, steps=300, lr=3e-3, prior=weights)
    with torch.no_grad():
        logits = model(L)
    chroma = {T: abbins.chroma(abbins.annealed_mean(logits, bins, T)) for T in (1.0, 0.38, 0.0)}
    assert float(chroma[0.38].min()) > 30  # every pixel a saturated colour
    assert abs(float(chroma[0.38].median()) - best[0.38]) < 3  # at the optimum reasoned above
    assert float(chroma[1.0].median()) < 15  # the plain mean of the same prediction is the grey regression gives
    assert float(chroma[0.0].min()) > 55  # the mode: one of the two colours themselves
