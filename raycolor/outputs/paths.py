"""Where a run's files go under its OUTPUT: every path raycolor writes is made here (colorize's are next to the
ledger that reads them back, in raycolor.outputs.ledger, until they move here), and nothing else spells one.

Training (`raycolor train --output OUTPUT`):

    OUTPUT/train/checkpoint_e<epoch>_<time>/   the Ray Train run (RunConfig(name="train", storage_path=OUTPUT))
    OUTPUT/model/                              the exported model (raycolor.core.checkpoint's format)
    OUTPUT/metrics.jsonl                       one line per epoch
    OUTPUT/curves.png                          the training curves
    OUTPUT/prior.json                          the classification head's class prior (one Ray Data pass)
    OUTPUT/_listing/<shard id>.parquet         folder inputs' listing chunks, as colorize keeps them
"""

from __future__ import annotations

import time

from raycolor import storage

# Ray Train names the run's folder (RunConfig(name=...)) below OUTPUT itself: the name, not a path
TRAIN_RUN = "train"
CHECKPOINT_PREFIX = "checkpoint_"


def train_run_uri(output: str) -> str:
    return storage.join_uri(output, TRAIN_RUN)


def model_uri(output: str) -> str:
    return storage.join_uri(output, "model")


def metrics_uri(output: str) -> str:
    return storage.join_uri(output, "metrics.jsonl")


def curves_uri(output: str) -> str:
    return storage.join_uri(output, "curves.png")


def prior_uri(output: str) -> str:
    return storage.join_uri(output, "prior.json")


def training_listing_uri(output: str) -> str:
    """The listing chunks' URI pattern ({id}: the shard id), as colorize's OUTPUT/_listing/."""
    return storage.join_uri(output, "_listing", "{id}.parquet")


def checkpoint_name(epoch: int) -> str:
    """A new checkpoint folder's name below the run: the epoch first, zero-padded, so that the names in order are
    the order of progress; the time and nanoseconds after it keep two saves of one epoch apart."""
    return f"{CHECKPOINT_PREFIX}e{epoch:06d}_{time.strftime('%Y%m%d-%H%M%S')}_{time.time_ns() % 10**9:09d}"


def is_checkpoint_name(name: str) -> bool:
    return name.startswith(CHECKPOINT_PREFIX)
