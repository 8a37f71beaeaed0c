"""Driver planning: shard descriptors of the inputs (the colorize planner), counts and the hold-out rule.

The driver holds shard descriptors only, never a per-image list: one cheap task per shard expands it,
reads no image, and returns its SplitStats; their sum gives the totals and the hold-out rule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from raycolor import inputs
from raycolor.config import DEFAULT_SHARD_SIZE, StorageConfig, TrainConfig
from raycolor import paths
from raycolor.pipelines import runtime
from raycolor.pipelines.training.split import Split, SplitStats


@dataclass
class Data:
    """What the driver holds about the data: shard descriptors, never a per-image list."""

    train: list[dict]  # shard descriptors (inputs.Shard's fields) of the training side
    val: list[dict]  # of the validation side: the same shards as train without --val
    split: Split | None  # the hold-out rule, None with --val
    held: Any  # with --val: ObjectRef of the frozenset of validation sources, excluded from training
    n_train: int
    n_val: int


def classify(uris: Sequence[str], config: TrainConfig) -> list:
    """What each input is (inputs.classify, as colorize does); raises InputError before Ray starts."""
    return [inputs.classify(u, store=config.storage) for u in uris]


def expand_shard(desc: dict, *, store: StorageConfig) -> list[inputs.Item]:
    """One shard descriptor -> its items, as colorize expands it (inputs.expand)."""
    shard = inputs.Shard.from_row(desc)
    return inputs.expand(shard, store=store)


def _shard_stats(desc: dict, *, val_fraction: float, held: frozenset | None, store: StorageConfig) -> SplitStats:
    """One shard's SplitStats (a task: expands the shard, reads no image)."""
    items = expand_shard(desc, store=store)
    return SplitStats.of((i.source for i in items if held is None or i.source not in held), val_fraction)


def _sources_of(descs: list[dict], *, store: StorageConfig) -> tuple[frozenset, int]:
    """The --val sources as one set (a task; it stays in the object store) and their number."""
    held = frozenset(i.source for d in descs for i in expand_shard(d, store=store))
    return held, len(held)


def plan_data(config: TrainConfig, data_roots: list, val_roots: list) -> Data:
    """Shards of the inputs (planning.shard_inputs, the colorize planner: folder listings are chunked
    into the run's OUTPUT/_listing/), then each shard's count and hash stats, in a cheap task per shard
    that expands it and reads no image: the totals and the hold-out rule."""
    import ray

    from raycolor.pipelines.planning import shard_inputs

    listing = paths.training_listing_uri(config.output)

    def descriptors(roots: list) -> list[dict]:
        return [dataclasses.asdict(shard)
                for shards in shard_inputs(roots, shard_size=DEFAULT_SHARD_SIZE, listing=listing,
                                           store=config.storage).values()
                for shard in shards]

    train = descriptors(data_roots)
    val, held, split = train, None, None
    if val_roots:
        val = descriptors(val_roots)
        # the set is made in a task and stays in the object store
        task = ray.remote(num_cpus=0.5, max_retries=3, num_returns=2)(_sources_of)
        held, n_val_ref = task.remote(val, store=config.storage)
        n_val = runtime.ray_get(n_val_ref)
    stats_task = ray.remote(num_cpus=0.5, max_retries=3)(_shard_stats)
    refs = [stats_task.remote(d, val_fraction=config.val_fraction, held=held, store=config.storage)
            for d in train]
    stats = sum(runtime.ray_get(refs), SplitStats())
    if val_roots:
        n_train = stats.n
    else:
        split, n_train, n_val = Split.choose(stats, config.val_fraction)
    if n_train < config.workers:
        raise ValueError(f"{n_train} training images cannot feed {config.workers} workers")
    return Data(train=train, val=val, split=split, held=held, n_train=n_train, n_val=n_val)