"""The model checkpoint format: a directory (local or any fsspec URI) holding

    config.json   {"format": "raycolor", "version": 1, "arch", "skips", "render_size", "normalization", "model_id",
                   "head", "n_bins", ...}
    weights.pt    the state dict, loadable with torch.load(weights_only=True)

head: "regression" (ab out) or "classification" (logits over n_bins quantised ab bins; the bins and the
class-rebalancing weights are buffers in weights.pt). A config.json without "head" (every checkpoint written
before the classification head) is regression, and loads exactly as before.

weights.pt is written first and config.json last, so a directory without config.json is incomplete.
model_id is the SHA-256 of weights.pt: it names the model in manifests and detects corrupt or partial files.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from raycolor import storage
from raycolor.config import DEFAULT_STORE, StorageConfig

if TYPE_CHECKING:
    import torch

    from raycolor.core.model import Colorizer

# torch is imported by the functions that save or load weights, not here: the colorize driver reads a
# checkpoint's config.json (read_meta) and never the weights, and `raycolor colorize` should not pay ~2 s of CPU
# and ~300 MB for torch on the driver.

ARCH = "vgg16-unet"  # raycolor.core.model's architecture: the name every checkpoint of this version holds
FORMAT = "raycolor"
VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "weights.pt"


class CheckpointError(ValueError):
    """The checkpoint is missing, incomplete, corrupt or of an unknown format."""


@dataclass(frozen=True)
class CheckpointMeta:
    arch: str
    skips: bool
    render_size: int
    model_id: str
    normalization: dict
    format: str = FORMAT
    version: int = VERSION
    extra: dict | None = None  # e.g. training epoch and metrics; never needed to load
    head: str = "regression"  # absent from older checkpoints: they are all regression
    n_bins: int | None = None  # classification: Q, the number of ab bins (the logits' channels)


def _fs(uri: str, store: StorageConfig):
    fs, path = storage.filesystem(uri, store=store)
    return fs, path.rstrip("/")


def state_bytes(state: dict) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def save(
    uri: str, model: Colorizer, *, render_size: int, extra: dict | None = None, store: StorageConfig = DEFAULT_STORE
) -> CheckpointMeta:
    from raycolor.core import color

    model = getattr(model, "module", model)  # unwrap DDP
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}  # one layout, whatever ran
    data = state_bytes(state)
    meta = CheckpointMeta(
        arch=ARCH,
        skips=model.skips,
        render_size=render_size,
        model_id=hashlib.sha256(data).hexdigest()[:16],
        normalization={"l_cent": color.L_CENT, "l_norm": color.L_NORM, "ab_norm": color.AB_NORM},
        extra=extra,
        head=getattr(model, "head_kind", "regression"),
        n_bins=getattr(model, "n_bins", None),
    )
    fs, path = _fs(uri, store)
    fs.makedirs(path, exist_ok=True)
    fs.pipe_file(f"{path}/{WEIGHTS_NAME}", data)
    fs.pipe_file(f"{path}/{CONFIG_NAME}", json.dumps(asdict(meta), indent=2).encode())
    return meta


def read_meta(uri: str, *, store: StorageConfig = DEFAULT_STORE) -> CheckpointMeta:
    fs, path = _fs(uri, store)
    try:
        raw = json.loads(fs.cat_file(f"{path}/{CONFIG_NAME}"))
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {uri} (missing {CONFIG_NAME}; an interrupted save?)") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"invalid {CONFIG_NAME} in {uri}: {e}") from None
    except Exception as e:  # noqa: BLE001 - OSError, and botocore's errors (no OSError): an unreachable store
        raise CheckpointError(f"cannot read checkpoint {uri}: {storage.redact(e, uri)}") from None
    if raw.get("format") != FORMAT or raw.get("version") != VERSION:
        raise CheckpointError(f"{uri} is not a raycolor v{VERSION} checkpoint")
    if raw.get("arch") != ARCH:
        raise CheckpointError(f"{uri} holds architecture {raw.get('arch')!r}, this version reads {ARCH!r}")
    head = raw.get("head", "regression")
    if head not in ("regression", "classification"):
        raise CheckpointError(f"{uri} has head {head!r}, this version reads 'regression' or 'classification'")
    if head == "classification" and not (isinstance(raw.get("n_bins"), int) and raw["n_bins"] > 0):
        raise CheckpointError(f"{uri} is a classification checkpoint without a valid n_bins")
    fields = CheckpointMeta.__dataclass_fields__
    return CheckpointMeta(**{k: v for k, v in raw.items() if k in fields})


def load(
    uri: str, *, map_location: str | torch.device = "cpu", store: StorageConfig = DEFAULT_STORE
) -> tuple[Colorizer, CheckpointMeta]:
    """Load a checkpoint directory; the model is returned in eval mode."""
    import torch

    from raycolor.core.model import Colorizer

    meta = read_meta(uri, store=store)
    fs, path = _fs(uri, store)
    try:
        data = fs.cat_file(f"{path}/{WEIGHTS_NAME}")
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {uri} has no {WEIGHTS_NAME}") from None
    except Exception as e:  # noqa: BLE001 - as in read_meta
        raise CheckpointError(f"cannot read checkpoint {uri}: {storage.redact(e, uri)}") from None
    if hashlib.sha256(data).hexdigest()[:16] != meta.model_id:
        raise CheckpointError(f"checkpoint {uri} is corrupt: {WEIGHTS_NAME} does not match its model_id")
    state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    model = Colorizer(skips=meta.skips, head=meta.head, n_bins=meta.n_bins)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {uri}: {WEIGHTS_NAME} does not fit its config.json ({meta.head} head): {e}") from None
    return model.eval().to(map_location), meta
