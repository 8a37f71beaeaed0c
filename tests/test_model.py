import pytest
import torch

from raycolor.core import color
from raycolor.core.model import (
    VGG_BLOCKS,
    WeightsUnavailableError,
    build_colorizer,
    set_trainable_encoder_blocks,
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_colorizer(weights=None)


@pytest.mark.parametrize("size", [(32, 32), (48, 80)])
def test_output_shape_and_bounds(model, size):
    L = torch.rand(2, 1, *size) * 100
    with torch.no_grad():
        ab = model(L)
    assert ab.shape == (2, 2, *size)
    assert ab.abs().max() <= color.AB_NORM


def test_without_skips():
    m = build_colorizer(weights=None, skips=False)
    assert m(torch.rand(1, 1, 32, 32) * 100).shape == (1, 2, 32, 32)
    assert sum(p.numel() for p in m.parameters()) < sum(p.numel() for p in build_colorizer().parameters())


def _grads(model):
    model.zero_grad(set_to_none=True)
    model(torch.rand(1, 1, 32, 32) * 100).square().mean().backward()
    return [[p.grad is not None for p in model.encoder_block_params(b)] for b in range(len(VGG_BLOCKS))]


def test_freeze_then_unfreeze_top_blocks(model):
    set_trainable_encoder_blocks(model, 0)
    assert not any(any(g) for g in _grads(model))
    assert all(p.grad is not None for p in model.decoder_params())
    set_trainable_encoder_blocks(model, 2)
    grads = _grads(model)
    assert [all(g) for g in grads] == [False, False, False, True, True]
    assert [any(g) for g in grads] == [False, False, False, True, True]
    with pytest.raises(ValueError):
        set_trainable_encoder_blocks(model, 6)


@pytest.mark.kernel_free
def test_encoder_layers_are_torchvisions_make_layers():
    from torchvision.models.vgg import cfgs, make_layers

    from raycolor.core.model import vgg16_features

    ours, theirs = vgg16_features(), make_layers(cfgs["D"], batch_norm=False)
    assert [repr(m) for m in ours] == [repr(m) for m in theirs]
    torch.manual_seed(3)
    a = vgg16_features().state_dict()
    torch.manual_seed(3)
    b = make_layers(cfgs["D"], batch_norm=False).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # same default init, same order


@pytest.mark.kernel_free
def test_loads_a_local_torchvision_state_dict(tmp_path):
    """A file in torchvision's own layout (every key of vgg16().state_dict(), classifier included) loads its
    encoder weights. The keys and shapes come from torchvision's vgg16 built on the meta device (no memory);
    the unused 120M-parameter classifier is saved as zero-stride views of one zero, so the file is 59 MB, not
    553 MB: building, saving and loading the real thing cost this test ~15 CPU-s."""
    from torchvision.models import vgg16

    with torch.device("meta"):
        layout = vgg16(weights=None).state_dict()
    g = torch.Generator().manual_seed(1)
    state = {
        k: torch.randn(v.shape, generator=g) if k.startswith("features.") else torch.zeros(()).expand(v.shape)
        for k, v in layout.items()
    }
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    m = build_colorizer(weights=path)
    torch.testing.assert_close(m.encoder[28].weight, state["features.28.weight"])
    torch.testing.assert_close(m.encoder[0].bias, state["features.0.bias"])


def test_bad_weights_give_one_clear_error(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="not found"):
        build_colorizer(weights=tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a state dict")
    with pytest.raises(WeightsUnavailableError, match="could not read"):
        build_colorizer(weights=junk)


def test_imagenet_offline_message(monkeypatch, tmp_path):
    # an empty torch hub cache and no network: the message must say how to pass a local file
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    from torchvision.models import VGG16_Weights

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(VGG16_Weights.IMAGENET1K_V1.__class__, "get_state_dict", offline)
    with pytest.raises(WeightsUnavailableError, match="--weights PATH"):
        build_colorizer(weights="imagenet")


def test_overfits_one_tiny_batch():
    # colour follows position, texture is random: learnable from L alone
    torch.manual_seed(0)
    m = build_colorizer(weights=None)
    S = 16
    y = torch.linspace(0, 1, S).view(1, 1, S, 1).expand(4, 1, S, S)
    x = torch.linspace(0, 1, S).view(1, 1, 1, S).expand(4, 1, S, S)
    tex = torch.rand(4, 1, S, S) * 0.3 + 0.35
    rgb = torch.cat([tex + 0.4 * (y - 0.5), tex + 0.3 * (x - 0.5), tex - 0.3 * (y - 0.5)], 1).clamp(0, 1)
    lab = color.rgb_to_lab(rgb)
    L, ab = lab[:, :1], color.normalize_ab(lab[:, 1:])
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):  # a 17.7x drop by then (9.6x at 20 steps, 318x at 120)
        loss = torch.nn.functional.mse_loss(color.normalize_ab(m(L)), ab)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10


def test_configure_optimizers_covers_every_parameter_once_with_the_stage_rates():
    from raycolor.core.model import build_colorizer

    model = build_colorizer(weights=None)
    opt = model.configure_optimizers(lr=1e-3, finetune_lr=1e-5, weight_decay=0.01)
    decoder, encoder = opt.param_groups
    assert (decoder["lr"], encoder["lr"]) == (1e-3, 1e-5) and decoder["weight_decay"] == 0.01
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert {id(p) for p in encoder["params"]} == {id(p) for p in model.encoder.parameters()}


def test_ab_loss_smooth_l1_is_l1_beyond_beta_and_mse_is_squared():
    from raycolor.core import color
    from raycolor.core.model import SMOOTH_L1_BETA, ab_loss

    true = torch.zeros(1, 2, 1, 1)
    far = torch.full((1, 2, 1, 1), 0.5 * color.AB_NORM)  # 0.5 in normalised units, far beyond beta
    assert torch.allclose(ab_loss(far, true), torch.full_like(true, 0.5 - SMOOTH_L1_BETA / 2))
    assert torch.allclose(ab_loss(far, true, "mse"), torch.full_like(true, 0.25))
