"""The colorizer: VGG16 features (torchvision's layers and weights) as encoder, a light U-Net decoder predicting bounded ab.

Contract: forward(L) with L in Lab units [0, 100], shape (N, 1, H, W), H and W multiples of 16, returns
  head="regression" (the default): ab in Lab units, shape (N, 2, H, W), |ab| < AB_NORM;
  head="classification": logits over the Q quantised ab bins (raycolor.core.abbins), shape (N, Q, H, W).
    model.decode_ab(logits, T) gives ab (the annealed mean); raycolor.core.colorize.predict_ab does that for
    either head, so everything after "ab" (compose, the Predictor's output, the finish stage) is one path.
    The bins and the class-rebalancing weights are buffers (`bins`, `prior_weights`): a checkpoint carries them.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from raycolor.core import color

# VGG16 `features` indices of the five blocks. Each block begins with the previous block's max-pool,
# so block k outputs the last ReLU before pool k (conv1_2 .. conv5_3): exactly the U-Net skip tensors.
VGG_BLOCKS: tuple[tuple[int, int], ...] = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))
_ENCODER_LEN = VGG_BLOCKS[-1][1]  # conv1_1 .. conv5_3 + ReLU; VGG's last pool and classifier are unused
_ENCODER_CHANNELS = (64, 128, 256, 512, 512)
# decoder widths at 1/8, 1/4, 1/2, 1/1 of the input: small, so the decoder costs ~15 % of the encoder's FLOPs
_DECODER_CHANNELS = (128, 64, 32, 16)

# torchvision's VGG16 ("D") feature layers, built as torchvision's `make_layers(cfgs["D"])` builds them (same
# modules, same order, same default init, so torchvision's state dicts load by index). Why not import it:
# `import torchvision` pulls in torch._dynamo through torchvision.ops, 1.6-2.8 s of CPU on the 2-core dev
# box, paid again by every model actor and training worker at start. tests/test_model.py checks the two agree.
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for v in _VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = v
    return nn.Sequential(*layers)


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsUnavailableError(RuntimeError):
    """The requested pretrained weights could not be obtained (offline, or a bad file)."""


class _UpBlock(nn.Module):
    def __init__(self, c_in: int, c_skip: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in + c_skip, c_out, 3, padding=1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return F.relu(self.conv2(F.relu(self.conv1(x))))


HEADS = ("regression", "classification")


class Colorizer(nn.Module):
    def __init__(self, *, skips: bool = True, head: str = "regression", n_bins: int | None = None) -> None:
        """head="classification": n_bins logits per pixel (default: the derived gamut bins, abbins.derive_bins);
        the buffers `bins` (Q, 2) and `prior_weights` (Q,) are set with set_bins / set_prior (the weights start at
        1: unweighted). A regression model has no such buffers, so its state dict is exactly today's."""
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        self.skips = skips
        self.head_kind = head
        # exactly torchvision's vgg16().features, built without the 120M-parameter classifier we never use
        self.encoder = vgg16_features()[:_ENCODER_LEN]
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.reduce = nn.Conv2d(_ENCODER_CHANNELS[-1], 256, 1)
        # U-Net skips: the decoder sees VGG's own edges at 1/8..1/1 resolution, which sharpens colour
        # boundaries for ~1.5 GFLOP at 224 px (kept as default after docs/quality.md's comparison).
        ins = (256,) + _DECODER_CHANNELS[:-1]
        skip_ch = tuple(reversed(_ENCODER_CHANNELS[:-1])) if skips else (0, 0, 0, 0)
        self.up = nn.ModuleList(_UpBlock(i, s, o) for i, s, o in zip(ins, skip_ch, _DECODER_CHANNELS))
        if head == "regression":
            self.head = nn.Conv2d(_DECODER_CHANNELS[-1], 2, 1)
        else:
            from raycolor.core import abbins

            bins = abbins.derive_bins() if n_bins is None else torch.zeros(n_bins, 2)
            self.register_buffer("bins", bins.float())
            self.register_buffer("prior_weights", torch.ones(len(bins)))
            self.head = nn.Conv2d(_DECODER_CHANNELS[-1], len(bins), 1)

    @property
    def n_bins(self) -> int | None:
        return int(self.bins.shape[0]) if self.head_kind == "classification" else None

    def set_prior(self, weights: torch.Tensor) -> None:
        """The class-rebalancing weights (abbins.rebalancing_weights), one per bin."""
        self.prior_weights.copy_(torch.as_tensor(weights, dtype=torch.float32).view(-1))

    def decode_ab(self, out: torch.Tensor, temperature: float) -> torch.Tensor:
        """forward's output -> ab (N, 2, H, W): the annealed mean for classification, as is for regression."""
        if self.head_kind == "regression":
            return out
        from raycolor.core import abbins

        return abbins.annealed_mean(out, self.bins, temperature)

    def grey_input(self, L: torch.Tensor) -> torch.Tensor:
        # a pretrained VGG16 expects ImageNet-normalised RGB: give it the grey image with lightness L
        g = color.l_to_grey(L)  # (N, 1, H, W) in [0, 1]
        return (g - self.mean) / self.std  # (N, 3, H, W)

    def forward(self, L: torch.Tensor) -> torch.Tensor:
        x = self.grey_input(L)
        feats = []
        for a, b in VGG_BLOCKS:
            x = self.encoder[a:b](x)
            feats.append(x)
        # feats: (N,64,H,W) (N,128,H/2,W/2) (N,256,H/4,W/4) (N,512,H/8,W/8) (N,512,H/16,W/16)
        x = F.relu(self.reduce(feats[-1]))  # (N, 256, H/16, W/16)
        for up, skip in zip(self.up, reversed(feats[:-1])):
            x = up(x, skip if self.skips else None)
        # the 1x1 head (<1 % of the FLOPs) in float32 whatever the trunk ran in: under bf16 autocast its output
        # (logits that the annealed mean divides by T = 0.38, or ab up to 110 after tanh) would otherwise be
        # rounded to 8 significant bits, 0.25 ab units at |ab| = 100 (raycolor.core.precision)
        with torch.autocast(x.device.type, enabled=False):
            out = self.head(x.float())
        if self.head_kind == "classification":
            return out  # (N, Q, H, W) logits
        return color.denormalize_ab(torch.tanh(out))  # (N, 2, H, W), |ab| < AB_NORM

    def encoder_block_params(self, block: int) -> list[nn.Parameter]:
        a, b = VGG_BLOCKS[block]
        return [p for m in self.encoder[a:b] for p in m.parameters()]

    def decoder_params(self) -> list[nn.Parameter]:
        enc = {id(p) for p in self.encoder.parameters()}
        return [p for p in self.parameters() if id(p) not in enc]

    def configure_optimizers(self, *, lr: float, finetune_lr: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
        """One AdamW for both training stages: the decoder at `lr`, the whole encoder at `finetune_lr`.

        Frozen encoder blocks get no gradient, so AdamW skips them; one optimizer (not one per stage) keeps
        its state, and so the checkpoints, valid across the switch from feature extraction to fine-tuning."""
        encoder = [p for b in range(len(VGG_BLOCKS)) for p in self.encoder_block_params(b)]
        groups = [{"params": self.decoder_params(), "lr": lr}, {"params": encoder, "lr": finetune_lr}]
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)


# Smooth-L1 (Huber) on ab / 110, so errors live in about [-1, 1]. With torch's default beta = 1 the loss
# would be quadratic over that whole range, i.e. plain MSE/2, which averages the plausible colours of
# ambiguous objects into brown-grey. beta = 0.05 (about 5.5 ab units, roughly a just-noticeable chroma
# difference) keeps the quadratic part only where errors are already invisible -- smooth gradients
# near the optimum -- and is L1 (the median, which keeps saturation and ignores outlier pixels) elsewhere.
SMOOTH_L1_BETA = 0.05
LOSSES = ("smooth_l1", "mse")


def ab_loss(pred_ab: torch.Tensor, true_ab: torch.Tensor, kind: str = "smooth_l1") -> torch.Tensor:
    """Per-element loss (N, 2, H, W) between predicted and true ab, both normalised to about [-1, 1]."""
    p, t = color.normalize_ab(pred_ab.float()), color.normalize_ab(true_ab.float())
    if kind == "mse":
        return F.mse_loss(p, t, reduction="none")
    return F.smooth_l1_loss(p, t, beta=SMOOTH_L1_BETA, reduction="none")


def set_trainable_encoder_blocks(model: Colorizer, n: int) -> None:
    """Freeze the encoder except its top `n` VGG blocks (0 = feature extraction, 5 = everything)."""
    if not 0 <= n <= len(VGG_BLOCKS):
        raise ValueError(f"trainable encoder blocks must be in 0..{len(VGG_BLOCKS)}, got {n}")
    for block in range(len(VGG_BLOCKS)):
        trainable = block >= len(VGG_BLOCKS) - n
        for p in model.encoder_block_params(block):
            p.requires_grad_(trainable)


def vgg16_state_dict_to_encoder(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A torchvision-format VGG16 state dict -> the encoder's keys (features.N.* with N < 30)."""
    out = {}
    for key, value in state.items():
        if not key.startswith("features."):
            continue
        index = int(key.split(".")[1])
        if index < _ENCODER_LEN:
            out[key.removeprefix("features.")] = value
    if not out:
        raise WeightsUnavailableError("the weights file holds no VGG16 'features.*' tensors")
    return out


def load_weights(weights: str | os.PathLike) -> dict[str, torch.Tensor]:
    if str(weights) == "imagenet":
        from torchvision.models import VGG16_Weights

        try:
            return VGG16_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
        except Exception as e:  # urllib/socket errors differ by platform; all mean the same to a user
            raise WeightsUnavailableError(
                f"could not download the ImageNet VGG16 weights ({type(e).__name__}); when offline, fetch "
                f"{VGG16_Weights.IMAGENET1K_V1.url} elsewhere and pass its path with --weights PATH, "
                "or train from scratch with --weights none"
            ) from None
    path = Path(weights)
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file not found: {path} (expected a torchvision VGG16 state dict)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsUnavailableError(f"could not read VGG16 weights from {path}: {e}") from None


def build_colorizer(
    *, weights: str | os.PathLike | None = None, skips: bool = True, head: str = "regression"
) -> Colorizer:
    """weights: "imagenet" (torchvision VGG16_Weights.IMAGENET1K_V1), a local VGG16 state-dict path, or None.
    head: "regression" (ab) or "classification" (logits over the derived ab bins)."""
    model = Colorizer(skips=skips, head=head)
    if weights is not None and str(weights).lower() != "none":
        model.encoder.load_state_dict(vgg16_state_dict_to_encoder(load_weights(weights)))
    return model
