"""The classification head's class-rebalancing prior: one Ray Data pass over the training data before the first
epoch, counting each pixel's nearest ab bin, cached as OUTPUT/prior.json so that a resumed run reads it back
instead of repeating the pass.

    train shards ─ expand + decode (data.build_dataset, squashed to image_size as validation renders it)
                 ─ per batch: bin counts (abbins.bin_counts) ─ summed on the driver
                 ─ abbins.rebalancing_weights (sigma 5, lambda 0.5) ─ OUTPUT/prior.json

The pass decodes with val_transform (the whole image, squashed), not the training crops: the prior is of the
training set's colours, not of one epoch's random crops.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from raycolor import storage
from raycolor.config import TrainConfig
from raycolor import paths
from raycolor.pipelines.training.plan import Data

log = logging.getLogger(__name__)


def _count_batch(batch: dict[str, np.ndarray], *, bins: np.ndarray) -> dict[str, np.ndarray]:
    """A decoded batch (ab (n, 2, s, s)) -> {"counts": (1, Q)}: pixels nearest each bin."""
    import torch

    from raycolor.core import abbins

    torch.set_num_threads(1)
    counts = abbins.bin_counts(torch.from_numpy(np.asarray(batch["ab"], dtype=np.float32)), torch.from_numpy(bins))
    return {"counts": counts.numpy()[None]}


def count_bins(config: TrainConfig, data: Data, bins: np.ndarray) -> np.ndarray:
    """Pixels of the training data nearest each bin, (Q,) float64: one Ray Data pass."""
    from raycolor.pipelines.training.data import build_dataset, val_transform

    ds = build_dataset("train", val_transform, data, config)
    ds = ds.map_batches(_count_batch, batch_size=None, batch_format="numpy", num_cpus=1, fn_kwargs={"bins": bins})
    total = np.zeros(len(bins), dtype=np.float64)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        total += np.asarray(batch["counts"], dtype=np.float64).sum(axis=0)
    return total


def class_prior(config: TrainConfig, data: Data) -> dict:
    """{"bins", "counts", "weights", ...}: OUTPUT/prior.json if this run already made it (same bins), else
    counted now (count_bins) and written there. Raises ValueError when the training data has no pixel."""
    import torch

    from raycolor.core import abbins

    bins = abbins.derive_bins()
    uri = paths.prior_uri(config.output)
    fs, path = storage.filesystem(uri, store=config.storage)
    if fs.exists(path):
        prior = json.loads(fs.cat_file(path))
        if prior.get("bins") == bins.tolist():
            return prior
        log.warning("%s was made for other bins: counting again", uri)
    counts = count_bins(config, data, bins.numpy())
    if counts.sum() <= 0:
        raise ValueError("the training data gave no pixel to count for the class-rebalancing prior")
    weights = abbins.rebalancing_weights(torch.from_numpy(counts), bins)
    prior = {
        "bins": bins.tolist(),
        "counts": counts.tolist(),
        "weights": weights.tolist(),
        "sigma": abbins.SIGMA,
        "lambda": abbins.LAMBDA,
        "image_size": config.image_size,
    }
    # the run's OUTPUT may not exist yet (the prior is the first thing a new run writes): the one write rule
    storage.write_bytes_atomic(uri, json.dumps(prior).encode(), store=config.storage)
    return prior
