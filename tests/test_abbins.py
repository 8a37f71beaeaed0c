"""The classification head's ab maths (raycolor.core.abbins) and its place in the model, predict_ab and checkpoints."""

import json

import numpy as np
import pytest
import torch

from raycolor.core import abbins, checkpoint, color
from raycolor.core.colorize import colorize_rgb, predict_ab
from raycolor.core.model import build_colorizer


@pytest.fixture(scope="module")
def bins():
    return abbins.derive_bins()


def test_derived_bins_cover_every_srgb_colour_and_nothing_outside(bins):
    assert len(bins) == abbins.GAMUT_BINS == 262
    assert torch.equal(bins, torch.round(bins / 10) * 10)  # on the grid of step 10
    assert (bins[:, 0].min(), bins[:, 0].max(), bins[:, 1].min(), bins[:, 1].max()) == (-90, 100, -110, 90)
    # every sRGB colour (a 33^3 lattice of the cube) is within its nearest bin's cell: no real pixel is lost
    t = torch.linspace(0, 1, 33, dtype=torch.float64)
    rgb = torch.stack(torch.meshgrid(t, t, t, indexing="ij")).reshape(3, 1, -1)
    ab = color.rgb_to_lab(rgb)[1:].float().unsqueeze(0)  # (1, 2, 1, P)
    nearest = bins[abbins.nearest_bin(ab, bins)]  # (1, 1, P, 2)
    assert (nearest.squeeze() - ab.squeeze().T).abs().max() <= 5 + 1e-3
    # and no kept bin is out of gamut everywhere: each one's cell holds a colour of the lattice or of a finer one
    centre = abbins.derive_bins(rule="centre")
    assert 220 < len(centre) < len(bins) and set(map(tuple, centre.tolist())) <= set(map(tuple, bins.tolist()))
    assert (0.0, 0.0) in set(map(tuple, bins.tolist())) and (100.0, -110.0) not in set(map(tuple, bins.tolist()))


def test_soft_encode_is_five_gaussian_weights_summing_to_one(bins):
    ab = torch.tensor([[0.0, 0.0], [33.0, -47.0], [3.0, 4.0]]).T.reshape(1, 2, 1, 3)
    z = abbins.soft_encode(ab, bins)
    assert z.shape == (1, len(bins), 1, 3)
    torch.testing.assert_close(z.sum(dim=1), torch.ones(1, 1, 3))
    assert ((z > 0).sum(dim=1) == 5).all()
    # at a bin centre: that bin and its 4 neighbours at 10, weights 1 : e^(-100/50) each
    z0 = z[0, :, 0, 0]
    i0 = int(((bins - torch.tensor([0.0, 0.0])).abs().sum(1) == 0).nonzero())
    torch.testing.assert_close(z0[i0], torch.tensor(1 / (1 + 4 * np.exp(-2.0))).float())
    # (3, 4): weights proportional to exp(-d^2 / 50) of the 5 nearest
    d2 = ((bins - torch.tensor([3.0, 4.0])) ** 2).sum(1)
    near = d2.topk(5, largest=False).indices
    expect = torch.exp(-d2[near] / 50)
    torch.testing.assert_close(z[0, near, 0, 2], expect / expect.sum())


def test_rebalancing_weights(bins):
    Q = len(bins)
    # uniform counts: smoothing keeps (nearly) uniform and every weight is 1 where p~ is uniform
    w = abbins.rebalancing_weights(torch.ones(Q), bins)
    p = torch.ones(Q) / Q
    assert w.shape == (Q,)
    # skewed counts: the expected weight under p~ is 1, rare colours weigh more than common ones
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(Q)
    grey = int((bins.abs().sum(1) == 0).nonzero())
    counts[grey] = 1e6
    counts += torch.randint(0, 100, (Q,), generator=g).float()
    w = abbins.rebalancing_weights(counts, bins)
    c = bins.double()
    k = torch.exp(-torch.cdist(c, c) ** 2 / 50)
    smooth = (k / k.sum(0, keepdim=True)) @ (counts.double() / counts.sum())
    torch.testing.assert_close(float((smooth * w.double()).sum()), 1.0)
    assert w[grey] < w.median() / 5 and w.min() == w[grey]
    # lam = 1: pure uniform prior, all weights 1; lam = 0: w ∝ 1 / p~
    torch.testing.assert_close(abbins.rebalancing_weights(counts, bins, lam=1.0), torch.ones(Q))
    w0 = abbins.rebalancing_weights(counts, bins, lam=0.0).double()
    torch.testing.assert_close(w0 * smooth, torch.full((Q,), float(w0[0] * smooth[0]), dtype=torch.float64), rtol=1e-5, atol=0)
    del p
    with pytest.raises(ValueError):
        abbins.rebalancing_weights(torch.zeros(Q), bins)


def test_annealed_mean_runs_from_mode_to_mean(bins):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, len(bins), 3, 4, generator=g) * 2
    mean = torch.einsum("nqhw,qc->nchw", torch.softmax(logits, 1), bins)
    torch.testing.assert_close(abbins.annealed_mean(logits, bins, 1.0), mean)
    mode = bins[logits.argmax(1)].permute(0, 3, 1, 2)
    torch.testing.assert_close(abbins.annealed_mean(logits, bins, 0.0), mode)
    torch.testing.assert_close(abbins.annealed_mean(logits, bins, 1e-4), mode, atol=0.5, rtol=0)
    # two opposite colours at 62 % / 38 %: the mean (T = 1) is near grey, T = 0.38 sharpens to 79 % / 21 %
    warm, cool = (int(((bins - torch.tensor(v)).abs().sum(1) == 0).nonzero()) for v in ([40.0, -40.0], [-40.0, 40.0]))
    two = torch.full((1, len(bins), 1, 1), -30.0)
    two[0, warm], two[0, cool] = 1.5, 1.0
    c1, c038 = (float(abbins.chroma(abbins.annealed_mean(two, bins, T))) for T in (1.0, 0.38))
    assert c1 == pytest.approx(56.57 * (2 / (1 + np.exp(-0.5)) - 1), abs=0.1)  # 13.8
    assert c038 == pytest.approx(56.57 * (2 / (1 + np.exp(-0.5 / 0.38)) - 1), abs=0.1)  # 32.9


def test_weighted_cross_entropy(bins):
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(1, len(bins), 2, 2, generator=g)
    ab = torch.tensor([[[[0.0, 20.0], [-30.0, 55.0]], [[0.0, 10.0], [40.0, -5.0]]]])
    plain = abbins.weighted_cross_entropy(logits, ab, bins, None)
    z = abbins.soft_encode(ab, bins)
    torch.testing.assert_close(plain, -(z * torch.log_softmax(logits, 1)).sum(1))
    w = torch.arange(1, len(bins) + 1).float()
    weighted = abbins.weighted_cross_entropy(logits, ab, bins, w)
    torch.testing.assert_close(weighted, plain * w[abbins.nearest_bin(ab, bins)])
    # the loss is least where the logits are the target's log-probabilities
    good = abbins.weighted_cross_entropy(torch.log(z + 1e-9), ab, bins, None)
    assert (good < plain).all()


def test_classification_model_outputs_logits_and_predict_ab_decodes_them(bins):
    torch.manual_seed(0)
    m = build_colorizer(weights=None, head="classification").eval()
    assert m.head_kind == "classification" and m.n_bins == len(bins) and torch.equal(m.bins, bins)
    L = torch.rand(2, 1, 32, 32) * 100
    with torch.no_grad():
        logits = m(L)
    assert logits.shape == (2, len(bins), 32, 32)
    for T in (0.38, 1.0):  # fp32 as the logits above (bf16 against fp32: tests/test_precision.py)
        torch.testing.assert_close(predict_ab(m, L, temperature=T, precision="fp32"), abbins.annealed_mean(logits, bins, T))
    assert not torch.equal(predict_ab(m, L, temperature=0.1), predict_ab(m, L, temperature=1.0))
    # regression: no new buffers or keys, and the temperature changes nothing
    r = build_colorizer(weights=None).eval()
    assert not any(k in ("bins", "prior_weights") for k in r.state_dict())
    assert torch.equal(predict_ab(r, L, temperature=0.1), predict_ab(r, L, temperature=1.0))
    with pytest.raises(ValueError, match="head"):
        build_colorizer(weights=None, head="nope")


def test_classification_checkpoint_carries_head_bins_and_prior(tmp_path, bins):
    torch.manual_seed(0)
    m = build_colorizer(weights=None, head="classification").eval()
    prior = torch.linspace(0.5, 2.0, len(bins))
    m.set_prior(prior)
    meta = checkpoint.save(str(tmp_path / "c"), m, render_size=32)
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    assert (cfg["head"], cfg["n_bins"]) == ("classification", len(bins)) == (meta.head, meta.n_bins)
    loaded, meta2 = checkpoint.load(str(tmp_path / "c"))
    assert meta2 == meta and torch.equal(loaded.bins, bins) and torch.equal(loaded.prior_weights, prior)
    L = torch.rand(1, 1, 32, 32) * 100
    torch.testing.assert_close(predict_ab(loaded, L), predict_ab(m, L), rtol=0, atol=0)
    # a config.json that lies about the head is refused with a clear error
    cfg["head"] = "regression"
    del cfg["n_bins"]
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(checkpoint.CheckpointError, match="does not fit"):
        checkpoint.load(str(tmp_path / "c"))
    cfg["head"] = "classification"
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(checkpoint.CheckpointError, match="n_bins"):
        checkpoint.load(str(tmp_path / "c"))


# sha256 of the colorized image below, produced by the code before the classification head (commit a53581f),
# the same under ATEN_CPU_CAPABILITY=default, avx2 and avx512 (the uint8 rounding absorbs their differences)
LEGACY_REGRESSION_DIGEST = "53dfb74bdadb0b67ce5c216b5e580aabb1a057991c3a7df60f61d9096dc0f20a"


def test_regression_checkpoint_without_head_colorizes_byte_identically(tmp_path):
    """A checkpoint whose config.json has no "head" (all written before it existed) is regression and colorizes
    to exactly the bytes the code before the classification head gave."""
    import hashlib

    torch.manual_seed(0)
    m = build_colorizer(weights=None).eval()
    with torch.no_grad():
        m.head.weight.mul_(50.0)  # a colourful output, so that a change in ab shows in the bytes
    d = tmp_path / "legacy"
    checkpoint.save(str(d), m, render_size=32)
    cfg = json.loads((d / "config.json").read_text())
    assert cfg.pop("head") == "regression" and cfg.pop("n_bins") is None
    (d / "config.json").write_text(json.dumps(cfg))  # as an old checkpoint has it
    loaded, meta = checkpoint.load(str(d))
    assert meta.head == "regression" and loaded.head_kind == "regression"
    y, x = np.mgrid[0:40, 0:56]
    img = np.stack([(x * 4) % 256, (y * 6) % 256, ((x + y) * 3) % 256], -1).astype(np.uint8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # fp32, as that code ran on CPU (auto is bf16 on a CPU with native bf16: tests/test_precision.py)
        out = colorize_rgb(loaded, [img], render_size=32, precision="fp32")[0]
        out_t = colorize_rgb(loaded, [img], render_size=32, temperature=0.01, precision="fp32")[0]
    finally:
        torch.set_num_threads(threads)
    assert out.std(axis=(0, 1)).min() > 5  # colour, not grey
    assert hashlib.sha256(out.tobytes()).hexdigest() == LEGACY_REGRESSION_DIGEST
    assert np.array_equal(out, out_t)
