"""Distributed training on Ray Train (V2) fed by Ray Data: the one training module that imports Ray.

Training takes the inputs of `raycolor colorize` through its reading path, and the driver holds shard
descriptors only, never a per-image list:

    inputs ─classify, list folders in tasks, size manifests/tars (planning.shard_inputs)─▶ shard descriptors
    one task per shard: expand, count, hash (no image read) ─▶ totals + the hold-out rule (= split_items)
    shards ─Ray Data: expand (as colorize), keep this side's rows ───┬─ train: read + decode (images.read_decoded),
                                                                     │  random-resized crop, flip, Lab
                                                                     │  ─ streaming_split(workers, equal) ─┐
                                                                     └─ val: read + decode, Lab, squash resize ─┤
                                                                        (the square inference renders)          │
    TorchTrainer workers (DDP; gloo on CPU, NCCL + bf16 autocast on GPU) <─ iter_torch_batches ────────────────┘
      per epoch: train -> val sums all_reduced -> rank 0 writes a checkpoint
      (core format + train_state.pt) via ray.train.report -> OUTPUT/train/checkpoint_*
      and rewrites OUTPUT/metrics.jsonl
    driver: at the end copies the latest valid checkpoint's model to OUTPUT/model/ (core format).

Layout of OUTPUT (a local folder or s3://bucket/prefix):

    train/                       the Ray Train run (RunConfig(name="train", storage_path=OUTPUT))
      checkpoint_manager_snapshot.json   Ray's own record of the reported checkpoints
      checkpoint_e000003_<time>/  config.json + weights.pt (core format) + train_state.pt
    metrics.jsonl                one JSON object per finished epoch
    model/                       the final model: config.json + weights.pt, for `raycolor colorize`
    _listing/<shard id>.parquet  folder inputs' listing chunks (uri, relpath, source), as colorize keeps them

Resume. Ray Train V2 restores by run location: when a TrainController starts, its CheckpointManager
reads OUTPUT/train/checkpoint_manager_snapshot.json, and `ray.train.get_checkpoint()` on every worker
returns the latest checkpoint recorded there, both when the same command is run again and when the
worker group is restarted after a failure (FailureConfig.max_failures). V2 no longer accepts
`resume_from_checkpoint`. The training state (epoch, stage, AdamW state, metrics history) lives in each
checkpoint's train_state.pt, so the loop continues where that checkpoint left off.
Workers resume from the newest checkpoint folder that verifies, which is Ray's registered one or newer:
rank 0 persists a checkpoint before the controller registers it, so a worker lost in between leaves a
complete but unregistered folder behind, and re-training that epoch would be wasted. A checkpoint is
only used after `checkpoint.load` has verified its weights hash and train_state.pt has loaded; a
corrupt or partial one is skipped (with a warning) in favour of the next older one, and if none is
usable the run stops with a CheckpointError instead of silently starting over.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import math
import os
import posixpath
import random
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
import pyarrow as pa
import torch

from raycolor import inputs, storage
from raycolor.config import (
    DEFAULT_IO_CONCURRENCY,
    DEFAULT_SHARD_SIZE,
    StorageConfig,
    TrainConfig,
)
from raycolor.core import checkpoint as core_checkpoint
from raycolor.core import color, colorize, images, metrics
from raycolor.core.checkpoint import CheckpointError
from raycolor.core.model import (
    LOSSES,
    VGG_BLOCKS,
    WeightsUnavailableError,
    ab_loss,
    build_colorizer,
    set_trainable_encoder_blocks,
)
from raycolor.pipelines import runtime
from raycolor.pipelines.progress import TrainProgress, fmt_duration
from raycolor.pipelines.stages import expand_batch

__all__ = ["Split", "SplitStats", "TrainResult", "fit", "split_items", "validate_config"]

log = logging.getLogger(__name__)

RUN_NAME = "train"  # RunConfig(name): the Ray Train run lives in OUTPUT/train/
MODEL_DIR = "model"
METRICS_NAME = "metrics.jsonl"
CURVES_NAME = "curves.png"
TRAIN_STATE_NAME = "train_state.pt"
CHECKPOINT_PREFIX = "checkpoint_"
STATE_FORMAT = 1

CROP_SCALE = (0.3, 1.0)  # random-resized-crop area fraction
CROP_RATIO = (3 / 4, 4 / 3)  # and aspect ratio, as torchvision's RandomResizedCrop
_DECODE_BATCH = 8  # images per Ray Data map_batches call
_BLOCK_ROWS = 64  # at most this many images per decode task (fewer on small data sets, so every CPU gets some)


@dataclass(frozen=True)
class TrainResult:
    epochs_run: int  # epochs trained by this call (0 when the run had already finished)
    metrics: dict  # the last epoch's metrics line (as in metrics.jsonl)
    model_uri: str  # OUTPUT/model: the exported final model (core checkpoint format)
    metrics_uri: str  # OUTPUT/metrics.jsonl
    elapsed_s: float  # wall time of this call
    images_per_s: float  # training images per second over the epochs trained by this call (0.0 if none)
    curves_uri: str | None = None  # OUTPUT/curves.png, None without matplotlib


# ----------------------------------------------------------------------------------------------------
# Config checks (driver, before Ray starts)
# ----------------------------------------------------------------------------------------------------


def validate_config(config: TrainConfig) -> None:
    """Raise ValueError with a one-line message for a config that cannot train."""
    if not config.data or any(not isinstance(d, str) or not d.strip() for d in config.data):
        raise ValueError("data: give at least one non-empty input URI (folder, image, .tar or manifest)")
    if not isinstance(config.output, str) or not config.output.strip():
        raise ValueError("output: give a folder or s3:// prefix for checkpoints and the final model")
    if config.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {config.epochs}")
    if config.image_size < 16 or config.image_size % 16:
        raise ValueError(f"image_size must be a multiple of 16 (the encoder halves it 4 times), got {config.image_size}")
    if config.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {config.batch_size}")
    if config.workers < 1:
        raise ValueError(f"workers must be >= 1, got {config.workers}")
    if not config.val and not 0.0 < config.val_fraction < 1.0:
        raise ValueError(
            f"val_fraction must be in (0, 1) when no val data is given, got {config.val_fraction}"
        )
    if config.freeze_encoder_epochs < 0:
        raise ValueError(f"freeze_encoder_epochs must be >= 0, got {config.freeze_encoder_epochs}")
    if not 0 <= config.finetune_blocks <= len(VGG_BLOCKS):
        raise ValueError(f"finetune_blocks must be in 0..{len(VGG_BLOCKS)}, got {config.finetune_blocks}")
    if not config.lr > 0:
        raise ValueError(f"lr must be > 0, got {config.lr}")
    if not config.finetune_lr >= 0:
        raise ValueError(f"finetune_lr must be >= 0, got {config.finetune_lr}")
    if not config.weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {config.weight_decay}")
    if config.loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {config.loss!r}")
    if config.num_to_keep < 1:
        raise ValueError(f"num_to_keep must be >= 1, got {config.num_to_keep}")
    if config.max_failures < -1:
        raise ValueError(f"max_failures must be >= 0 (or -1 for unlimited), got {config.max_failures}")
    if config.max_pixels is not None and config.max_pixels < 1:
        raise ValueError(f"max_pixels must be positive, got {config.max_pixels}")


def _check_weights(config: TrainConfig) -> None:
    """Fail fast on the driver: the workers would hit the same WeightsUnavailableError after starting up."""
    if config.weights is None or str(config.weights).lower() == "none":
        return
    build_colorizer(weights=config.weights, skips=config.skips)  # raises WeightsUnavailableError


# ----------------------------------------------------------------------------------------------------
# The hold-out split: the rule (split_items), its sums over shards (SplitStats), the rule per row (Split)
# ----------------------------------------------------------------------------------------------------


def _hash_fraction(source: str) -> float:
    """A stable number in [0, 1) from the item's source URI (sha1), independent of listing order."""
    return int(storage.digest(source, 16), 16) / 2.0**64


def split_items(
    items: Sequence[inputs.Item], val_fraction: float
) -> tuple[list[inputs.Item], list[inputs.Item]]:
    """Deterministic hold-out: an item is validation iff sha1(source) maps below val_fraction.

    With >= 2 items both sides get at least one (the lowest-hash item is moved to val, or the highest to
    train), so tiny data sets still train and validate. The reference for :class:`SplitStats` and
    :class:`Split`, which give the same result without the list (training plans shards, not items).
    """
    scored = sorted(((_hash_fraction(it.source), i, it) for i, it in enumerate(items)), key=lambda t: t[:2])
    val = [t for t in scored if t[0] < val_fraction]
    train = [t for t in scored if t[0] >= val_fraction]
    if len(scored) >= 2:
        if not val:
            val, train = train[:1], train[1:]
        elif not train:
            val, train = val[:-1], val[-1:]
    order = lambda ts: [it for _, _, it in sorted(ts, key=lambda t: t[1])]  # noqa: E731  (listing order)
    return order(train), order(val)


@dataclass(frozen=True)
class SplitStats:
    """What the hold-out needs to know about some items, summed over shards: count, how many hash below
    val_fraction, and the lowest and highest (hash, source)."""

    n: int = 0
    below: int = 0
    lo: tuple[float, str] | None = None
    hi: tuple[float, str] | None = None

    @classmethod
    def of(cls, srcs: Iterable[str], val_fraction: float) -> SplitStats:
        n = below = 0
        lo = hi = None
        for s in srcs:
            h = (_hash_fraction(s), s)
            n += 1
            below += h[0] < val_fraction
            lo = h if lo is None or h < lo else lo
            hi = h if hi is None or h > hi else hi
        return cls(n, below, lo, hi)

    def __add__(self, other: SplitStats) -> SplitStats:
        los = [x for x in (self.lo, other.lo) if x is not None]
        his = [x for x in (self.hi, other.hi) if x is not None]
        return SplitStats(self.n + other.n, self.below + other.below, min(los, default=None), max(his, default=None))


@dataclass(frozen=True)
class Split:
    """The hold-out rule, applied to each row where shards are expanded: validation iff the source's hash
    is below ``threshold`` (or equal to it, when ``inclusive``)."""

    threshold: float
    inclusive: bool = False

    def is_val(self, source: str) -> bool:
        h = _hash_fraction(source)
        return h < self.threshold or (self.inclusive and h == self.threshold)

    @classmethod
    def choose(cls, stats: SplitStats, val_fraction: float) -> tuple[Split, int, int]:
        """(rule, training images, validation images) equal to :func:`split_items` over all the items:
        val iff hash < val_fraction, except that with >= 2 items an empty side takes the boundary item
        (the lowest hash moves to val: val iff hash <= lowest; the highest moves to train: val iff hash <
        highest). Items with the very same hash fraction (in practice: one source listed twice) move
        together where split_items moves one of them."""
        if stats.n < 2:
            raise ValueError(f"need at least 2 images to hold some out for validation, found {stats.n}")
        if stats.below == 0:
            return cls(stats.lo[0], inclusive=True), stats.n - 1, 1
        if stats.below == stats.n:
            return cls(stats.hi[0]), 1, stats.n - 1
        return cls(val_fraction), stats.n - stats.below, stats.below


# ----------------------------------------------------------------------------------------------------
# Driver planning: shard descriptors of the inputs (the colorize planner), counts and the hold-out rule
# ----------------------------------------------------------------------------------------------------


@dataclass
class _Data:
    """What the driver holds about the data: shard descriptors, never a per-image list."""

    train: list[dict]  # shard descriptors (inputs.Shard's fields) of the training side
    val: list[dict]  # of the validation side: the same shards as train without --val
    split: Split | None  # the hold-out rule, None with --val
    held: Any  # with --val: ObjectRef of the frozenset of validation sources, excluded from training
    n_train: int
    n_val: int


def _classify(uris: Sequence[str], config: TrainConfig) -> list:
    """What each input is (inputs.classify, as colorize does); raises InputError before Ray starts."""
    return [inputs.classify(u, s3_endpoint=config.storage.s3_endpoint) for u in uris]


def _expand(desc: dict, *, s3_endpoint, retries: int) -> list[inputs.Item]:
    shard = inputs.Shard.from_row(desc)
    return inputs.expand(shard, s3_endpoint=s3_endpoint, retries=retries)


def _shard_stats(desc: dict, *, val_fraction: float, held: frozenset | None, s3_endpoint, retries: int) -> SplitStats:
    """One shard's SplitStats (a task: expands the shard, reads no image)."""
    items = _expand(desc, s3_endpoint=s3_endpoint, retries=retries)
    return SplitStats.of((i.source for i in items if held is None or i.source not in held), val_fraction)


def _sources_of(descs: list[dict], *, s3_endpoint, retries: int) -> tuple[frozenset, int]:
    """The --val sources as one set (a task; it stays in the object store) and their number."""
    held = frozenset(i.source for d in descs for i in _expand(d, s3_endpoint=s3_endpoint, retries=retries))
    return held, len(held)


def _plan(config: TrainConfig, data_roots: list, val_roots: list) -> _Data:
    """Shards of the inputs (planning.shard_inputs, the colorize planner: folder listings are chunked
    into the run's OUTPUT/_listing/), then each shard's count and hash stats, in a cheap task per shard
    that expands it and reads no image: the totals and the hold-out rule."""
    import ray

    from raycolor.pipelines.planning import shard_inputs

    endpoint, retries = config.storage.s3_endpoint, config.storage.retries
    listing = storage.join_uri(config.output, "_listing", "{id}.parquet")

    def descriptors(roots: list) -> list[dict]:
        return [dataclasses.asdict(shard)
                for shards in shard_inputs(roots, shard_size=DEFAULT_SHARD_SIZE, s3_endpoint=endpoint, listing=listing,
                                           retries=retries).values()
                for shard in shards]

    train = descriptors(data_roots)
    val, held, split = train, None, None
    if val_roots:
        val = descriptors(val_roots)
        # the set is made in a task and stays in the object store
        task = ray.remote(num_cpus=0.5, max_retries=3, num_returns=2)(_sources_of)
        held, n_val_ref = task.remote(val, s3_endpoint=endpoint, retries=retries)
        n_val = runtime.ray_get(n_val_ref)
    stats_task = ray.remote(num_cpus=0.5, max_retries=3)(_shard_stats)
    refs = [stats_task.remote(d, val_fraction=config.val_fraction, held=held, s3_endpoint=endpoint, retries=retries)
            for d in train]
    stats = sum(runtime.ray_get(refs), SplitStats())
    if val_roots:
        n_train = stats.n
    else:
        split, n_train, n_val = Split.choose(stats, config.val_fraction)
    if n_train < config.workers:
        raise ValueError(f"{n_train} training images cannot feed {config.workers} workers")
    return _Data(train=train, val=val, split=split, held=held, n_train=n_train, n_val=n_val)


# ----------------------------------------------------------------------------------------------------
# Shard -> rows (Ray Data tasks): a shard expanded as colorize expands it, one side of the hold-out kept
# ----------------------------------------------------------------------------------------------------


_HELD: dict[str, frozenset] = {}  # the --val sources, fetched once per worker process


def _held_sources(ref) -> frozenset:
    import ray

    key = ref.hex()
    if key not in _HELD:
        _HELD.clear()
        _HELD[key] = ray.get(ref)
    return _HELD[key]


TRAIN_ROWS = pa.schema([("source", pa.string()), ("uri", pa.string()), ("offset", pa.int64()), ("size", pa.int64())])


def shard_rows(desc: dict, *, side: str, split: Split | None, held, s3_endpoint, retries: int) -> list[dict]:
    """One shard descriptor -> the item rows of `side` ("train" or "val"; columns TRAIN_ROWS), in a Ray Data
    task (through ray_colorize.expand_batch): the shard expanded as colorize expands it (inputs.expand), the
    hold-out rule (or the --val sources) applied row by row. Training rows come in a fresh random order each
    epoch; a shard that cannot be expanded gives none (logged)."""
    try:
        items = _expand(desc, s3_endpoint=s3_endpoint, retries=retries)
    except Exception as e:  # noqa: BLE001 - after retries; it expanded when the run was planned: never fatal
        log.warning("dropping shard %s of %s this epoch (%s)", desc["id"], desc["root"], storage.redact(e, desc["uri"]))
        return []
    if held is not None:
        exclude = _held_sources(held)
        items = [i for i in items if i.source not in exclude]
    if split is not None:
        items = [i for i in items if split.is_val(i.source) == (side == "val")]
    rows = [{"source": i.source, "uri": i.uri, "offset": i.offset, "size": i.size} for i in items]
    if side == "train":
        random.shuffle(rows)  # the shards' order is shuffled too (randomize_block_order on the descriptors)
    return rows


# ----------------------------------------------------------------------------------------------------
# CPU transforms (Ray Data tasks): item rows -> decoded, cropped, Lab batches
# ----------------------------------------------------------------------------------------------------


def _rgbs(
    batch: dict[str, np.ndarray], *, s3_endpoint, retries: int, max_pixels, what: str,
    io_concurrency: int = DEFAULT_IO_CONCURRENCY,
):
    """The batch's images through the one reading loop (images.read_decoded, as colorize reads): uint8 RGB
    arrays; a row that cannot be read or decoded is logged and dropped (training has no error rows)."""
    items = inputs.Item.from_batch(batch)
    decoded = images.read_decoded(
        items, s3_endpoint=s3_endpoint, retries=retries, max_pixels=max_pixels, io_concurrency=io_concurrency
    )
    for item, got in zip(items, decoded):
        if got.error is not None:
            kind = "unreadable" if got.error.startswith("read_failed:") else "undecodable"
            log.warning("dropping %s %s image %s (%s)", kind, what, item.source, got.error)
            continue
        yield got.rgb


def _lab_batch(labs: list[torch.Tensor], size: int) -> dict[str, np.ndarray]:
    if not labs:
        return {"L": np.zeros((0, 1, size, size), np.float32), "ab": np.zeros((0, 2, size, size), np.float32)}
    lab = torch.stack(labs).to(torch.float32).numpy()
    return {"L": np.ascontiguousarray(lab[:, :1]), "ab": np.ascontiguousarray(lab[:, 1:])}


def _random_box(h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random crop covering CROP_SCALE of the area (torchvision's recipe)."""
    area = h * w
    log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for _ in range(10):
        target = area * rng.uniform(*CROP_SCALE)
        ratio = math.exp(rng.uniform(log_lo, log_hi))
        cw, ch = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    # fallback: the largest centred crop with a ratio in range
    ratio = w / h
    if ratio < CROP_RATIO[0]:
        cw, ch = w, int(round(w / CROP_RATIO[0]))
    elif ratio > CROP_RATIO[1]:
        ch, cw = h, int(round(h * CROP_RATIO[1]))
    else:
        ch, cw = h, w
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def train_transform(
    batch: dict[str, np.ndarray], *, size: int, s3_endpoint=None, retries: int = 5, max_pixels=None,
    io_concurrency: int = DEFAULT_IO_CONCURRENCY,
) -> dict[str, np.ndarray]:
    """Rows of items -> {"L": (n,1,s,s), "ab": (n,2,s,s)} float32: random-resized crop, h-flip, Lab."""
    from PIL import Image

    torch.set_num_threads(1)
    rng = np.random.default_rng()  # fresh entropy per call: every epoch sees new crops
    labs = []
    for rgb in _rgbs(
        batch, s3_endpoint=s3_endpoint, retries=retries, max_pixels=max_pixels, what="training", io_concurrency=io_concurrency
    ):
        top, left, ch, cw = _random_box(rgb.shape[0], rgb.shape[1], rng)
        # PIL resizes the crop with an antialiasing (support-scaled) bilinear filter, in C, before the Lab
        # maths, so big scans cost one resize rather than a full-resolution colour conversion
        small = Image.fromarray(rgb).resize((size, size), Image.BILINEAR, box=(left, top, left + cw, top + ch))
        arr = np.array(small)  # a writable copy for torch
        if rng.random() < 0.5:
            arr = np.ascontiguousarray(arr[:, ::-1])
        labs.append(color.rgb_uint8_to_lab(torch.from_numpy(arr).permute(2, 0, 1)))
    return _lab_batch(labs, size)


def val_transform(
    batch: dict[str, np.ndarray], *, size: int, s3_endpoint=None, retries: int = 5, max_pixels=None,
    io_concurrency: int = DEFAULT_IO_CONCURRENCY,
) -> dict[str, np.ndarray]:
    """Rows of items -> Lab squashed to size x size exactly as inference renders L (colorize.render_l)."""
    torch.set_num_threads(1)
    labs = []
    for rgb in _rgbs(
        batch, s3_endpoint=s3_endpoint, retries=retries, max_pixels=max_pixels, what="validation", io_concurrency=io_concurrency
    ):
        lab = color.rgb_uint8_to_lab(torch.from_numpy(rgb).permute(2, 0, 1))
        labs.append(colorize.render_l(lab, size))  # same antialiased bilinear squash for L and ab
    return _lab_batch(labs, size)


# ----------------------------------------------------------------------------------------------------
# Dataset wiring: descriptors -> rows -> small blocks -> Lab batches; the ingest split per worker
# ----------------------------------------------------------------------------------------------------


def _dataset(side: str, fn, data: _Data, config: TrainConfig):
    """Shard descriptors -> item rows of `side` (tasks) -> small blocks -> decoded Lab (tasks)."""
    import ray

    descs, n = (data.train, data.n_train) if side == "train" else (data.val, data.n_val)
    endpoint, retries = config.storage.s3_endpoint, config.storage.retries
    ds = ray.data.from_items(descs, override_num_blocks=max(1, len(descs)))
    if side == "train" and len(descs) > 1:
        ds = ds.randomize_block_order()  # the shards in a new order each epoch: a barrier over descriptors only
    # expanded as colorize expands (ray_colorize.build_dataset): a map_batches of one descriptor at a time,
    # which Ray Data fuses with the streaming repartition below (same 1 CPU, so the remote args match), so the
    # expand task itself cuts its shard into small blocks that many tasks decode. As flat_map + repartition,
    # the repartition was a stage of its own holding a CPU slot (docs/performance.md)
    ds = ds.map_batches(
        expand_batch,
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=1,
        fn_kwargs={"rows": shard_rows, "schema": TRAIN_ROWS, "side": side, "split": data.split,
                   "held": data.held if side == "train" else None, "s3_endpoint": endpoint, "retries": retries},
    )
    ds = ds.repartition(target_num_rows_per_block=runtime.rows_per_block(n, cap=_BLOCK_ROWS))
    return ds.map_batches(
        fn,
        batch_size=_DECODE_BATCH,
        batch_format="numpy",
        num_cpus=1,
        fn_kwargs={
            "size": config.image_size,
            "s3_endpoint": endpoint,
            "retries": retries,
            "io_concurrency": config.storage.io_concurrency,
            "max_pixels": config.max_pixels,
        },
    )


def _ingest_config():
    import ray.train

    class IngestConfig(ray.train.DataConfig):
        """Train split equally (DDP needs the same number of steps on every rank); val split unequally, so
        no validation image is dropped (ranks only all_reduce sums after their val loop)."""

        def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
            out = [{} for _ in range(world_size)]
            for name, ds in datasets.items():
                if name != "val":
                    part = super().configure({name: ds}, world_size, worker_handles, worker_node_ids, **kwargs)
                    for i in range(world_size):
                        out[i][name] = part[i][name]
                    continue
                if ds.name is None:
                    ds.set_name(name)
                ds = ds.copy(ds)
                ds.context.execution_options = self.default_ingest_options()
                for i, split in enumerate(ds.streaming_split(world_size, equal=False)):
                    out[i][name] = split
            return out

    # pickled by value with the trainer (it is a local class), so workers need not import it by name
    return IngestConfig()


# ----------------------------------------------------------------------------------------------------
# The checkpoint store (driver and workers): naming, writing, recovery and export, like timm's CheckpointSaver
# ----------------------------------------------------------------------------------------------------


@dataclass
class _Restored:
    name: str
    model: torch.nn.Module
    meta: core_checkpoint.CheckpointMeta
    state: dict
    files: dict[str, bytes]  # config.json / weights.pt bytes, when asked for


class CheckpointStore:
    """The run's checkpoints in OUTPUT/train: a folder per epoch, core format (config.json + weights.pt)
    plus train_state.pt (epoch, stage, AdamW state, metrics history). Rank 0 writes through
    ray.train.report, so Ray Train keeps `num_to_keep` and records them for restarts."""

    def __init__(self, fs, exp_path: str):
        self.fs, self.exp_path = fs, exp_path  # a pyarrow filesystem: it pickles to the workers

    @staticmethod
    def new_name(epoch: int) -> str:
        # epoch first so names sort by progress; the time keeps a re-trained epoch's name unique
        return f"{CHECKPOINT_PREFIX}e{epoch:06d}_{time.strftime('%Y%m%d-%H%M%S')}_{time.time_ns() % 10**9:09d}"

    def names(self) -> list[str]:
        import pyarrow.fs as pafs

        infos = self.fs.get_file_info(pafs.FileSelector(self.exp_path, allow_not_found=True))
        return sorted(
            i.base_name for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith(CHECKPOINT_PREFIX)
        )

    @staticmethod
    def _load(ckpt, name: str, *, want_files: bool = False) -> _Restored:
        with ckpt.as_directory() as d:
            model, meta = core_checkpoint.load(d)  # verifies weights.pt against config.json's model_id
            try:
                state = torch.load(os.path.join(d, TRAIN_STATE_NAME), map_location="cpu", weights_only=True)
            except FileNotFoundError:
                raise CheckpointError(f"checkpoint {name} has no {TRAIN_STATE_NAME}") from None
            except Exception as e:
                raise CheckpointError(f"checkpoint {name}: unreadable {TRAIN_STATE_NAME} ({type(e).__name__}: {e})") from None
            if not (isinstance(state, dict) and isinstance(state.get("epoch"), int) and "optimizer" in state):
                raise CheckpointError(f"checkpoint {name}: {TRAIN_STATE_NAME} is not a raycolor training state")
            files = {}
            if want_files:
                for f in (core_checkpoint.WEIGHTS_NAME, core_checkpoint.CONFIG_NAME):
                    with open(os.path.join(d, f), "rb") as fh:
                        files[f] = fh.read()
        return _Restored(name=name, model=model, meta=meta, state=state, files=files)

    def latest_valid(self, *, want_files: bool = False) -> _Restored | None:
        """The newest checkpoint (names sort by epoch, then time) that loads and verifies.

        None when there is no checkpoint at all; CheckpointError when there are some but none is usable.
        """
        from ray.train import Checkpoint

        problems = []
        for name in reversed(self.names()):
            try:
                ckpt = Checkpoint(path=f"{self.exp_path}/{name}", filesystem=self.fs)
                return self._load(ckpt, name, want_files=want_files)
            except Exception as e:  # a checkpoint that does not load is never used, whatever the reason
                msg = storage.redact(e)
                log.warning("skipping unusable checkpoint %s: %s", name, msg)
                problems.append(f"{name}: {msg}")
        if problems:
            raise CheckpointError(
                f"no usable checkpoint in {self.exp_path} ({'; '.join(problems[:3])}); "
                "delete that folder (or choose another output) to train from scratch"
            )
        return None

    def restore(self, model, optimizer) -> tuple[int, list[dict]]:
        """Load the newest usable checkpoint into model and optimizer; (epochs done, metrics history).

        Ray Train V2 hands every worker its latest *registered* checkpoint (ray.train.get_checkpoint()). The
        folder can hold a newer complete one: rank 0 persists a checkpoint before the controller registers
        it, so a worker lost in between leaves it unregistered. Both are candidates; the newest that
        verifies wins, and a corrupt one is skipped, never loaded.
        """
        import ray.train

        ckpt = ray.train.get_checkpoint()
        registered = posixpath.basename(ckpt.path.rstrip("/")) if ckpt is not None else None
        restored = self.latest_valid()
        if restored is None:
            if registered is not None:
                raise CheckpointError(f"the latest checkpoint {ckpt.path} is missing; delete {self.exp_path} to start over")
            return 0, []
        if registered is None:
            log.warning("Ray Train has no record of a checkpoint; resuming from %s found in %s", restored.name, self.exp_path)
        elif restored.name < registered:
            log.warning("latest checkpoint %s is unusable; resuming from %s", registered, restored.name)
        elif restored.name > registered:
            log.warning("resuming from %s, newer than Ray's last registered checkpoint %s", restored.name, registered)
        model.load_state_dict(restored.model.state_dict())
        optimizer.load_state_dict(restored.state["optimizer"])
        return int(restored.state["epoch"]), list(restored.state.get("history", []))

    def save(self, *, rank: int, model, optimizer, line: dict, history: list[dict], render_size: int) -> None:
        """Every rank reports the epoch's metrics; rank 0 also hands Ray Train the checkpoint to persist."""
        import ray.train
        from ray.train import Checkpoint

        with tempfile.TemporaryDirectory(prefix="raycolor-ckpt-") as tmp:
            ckpt, name = None, None
            if rank == 0:
                core_checkpoint.save(tmp, model, render_size=render_size, extra={"epoch": line["epoch"], "metrics": line})
                state = {
                    "format": STATE_FORMAT,
                    "epoch": line["epoch"],
                    "stage": line["stage"],
                    "optimizer": optimizer.state_dict(),
                    "history": history,
                }
                torch.save(state, os.path.join(tmp, TRAIN_STATE_NAME))
                ckpt, name = Checkpoint.from_directory(tmp), self.new_name(line["epoch"])
            ray.train.report(line, checkpoint=ckpt, checkpoint_dir_name=name)

    @staticmethod
    def export(restored: _Restored, model_uri: str, store: StorageConfig) -> str:
        """Copy a checkpoint's core files to model_uri: config.json removed first, weights, config last, so a
        reader never takes old config with new weights (checkpoint.load verifies the pair anyway)."""
        config_uri = storage.join_uri(model_uri, core_checkpoint.CONFIG_NAME)
        storage.remove(config_uri, s3_endpoint=store.s3_endpoint, retries=store.retries)
        for name in (core_checkpoint.WEIGHTS_NAME, core_checkpoint.CONFIG_NAME):
            storage.write_bytes_atomic(
                storage.join_uri(model_uri, name), restored.files[name], s3_endpoint=store.s3_endpoint, retries=store.retries
            )
        return model_uri


def _storage(config: TrainConfig) -> tuple[Any, str, CheckpointStore]:
    """(pyarrow filesystem, storage path without scheme) for RunConfig, and the run's checkpoint store."""
    import pyarrow.fs as pafs
    from fsspec.implementations.local import LocalFileSystem

    fs, path = storage.filesystem(config.output, s3_endpoint=config.storage.s3_endpoint)

    if isinstance(fs, LocalFileSystem):
        storage_fs, storage_path = pafs.LocalFileSystem(), path
    else:
        # s3fs (endpoint, no credentials) wrapped for Ray; it pickles to the controller and workers
        storage_fs, storage_path = pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path.rstrip("/")
    return storage_fs, storage_path, CheckpointStore(storage_fs, f"{storage_path}/{RUN_NAME}")


# ----------------------------------------------------------------------------------------------------
# Metrics formatting: the epoch's record, metrics.jsonl, the progress line, curves.png
# ----------------------------------------------------------------------------------------------------


def _finite(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def _metrics_jsonl(history: list[dict]) -> bytes:
    return "".join(json.dumps(_finite(m), sort_keys=True, allow_nan=False) + "\n" for m in history).encode()


def _fmt(x, spec: str) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def progress_line(m: dict, eta_s: float | None) -> str:
    return (
        f"epoch {m['epoch']}/{m['epochs']} [{m['stage']}] train_loss {_fmt(m['train_loss'], '.4f')} "
        f"val_loss {_fmt(m['val_loss'], '.4f')} val_psnr {_fmt(m['val_psnr'], '.2f')} dB "
        f"(grey baseline {_fmt(m['baseline_psnr'], '.2f')} dB) {_fmt(m['images_per_s'], '.1f')} img/s "
        f"ETA {fmt_duration(eta_s)}"
    )


def _epoch_record(epoch: int, stage: str, sums: EpochSums, *, config: TrainConfig, steps: int, train_time: float,
                  epoch_time: float, resumed_from: int, workers: int) -> dict:
    """The line metrics.jsonl gets for an epoch (None where there was nothing to average)."""
    avg = lambda total, n: total / n if n else None  # noqa: E731
    return _finite({
        "epoch": epoch + 1,
        "epochs": config.epochs,
        "stage": stage,
        "train_loss": avg(sums.train_loss, sums.train_images),
        "val_loss": avg(sums.val_loss, sums.val_images),
        "val_psnr": avg(sums.val_psnr, sums.val_images),
        "baseline_psnr": avg(sums.val_baseline_psnr, sums.val_images),
        # all ranks' images over this rank's training wall time (ranks run in lockstep)
        "images_per_s": sums.train_images / train_time if train_time > 0 else 0.0,
        "train_images": int(sums.train_images),
        "val_images": int(sums.val_images),
        "steps": steps,  # optimizer steps per rank this epoch
        "train_time_s": train_time,
        "epoch_time_s": epoch_time,
        "resumed_from": resumed_from,
        "workers": workers,
    })


def _write_metrics(history: list[dict], config: TrainConfig) -> str:
    """OUTPUT/metrics.jsonl, rewritten whole (one line per finished epoch); its URI."""
    uri = storage.join_uri(config.output, METRICS_NAME)
    storage.write_bytes_atomic(uri, _metrics_jsonl(history), s3_endpoint=config.storage.s3_endpoint,
                               retries=config.storage.retries)
    return uri


def _write_curves(history: list[dict], config: TrainConfig) -> str | None:
    """OUTPUT/curves.png from the metrics history; None (with a message) without matplotlib."""
    from raycolor.core.curves import render_curves

    png = render_curves(history) if history else None
    if png is None:
        if history:
            print("training curves skipped: install matplotlib (pip install 'raycolor[plots]') for OUTPUT/curves.png")
        return None
    uri = storage.join_uri(config.output, CURVES_NAME)
    storage.write_bytes_atomic(uri, png, s3_endpoint=config.storage.s3_endpoint, retries=config.storage.retries)
    return uri


# ----------------------------------------------------------------------------------------------------
# Training steps: plain functions of an iterable of batches, no Ray (tests/test_train_steps.py runs them)
# ----------------------------------------------------------------------------------------------------


def stage_of(epoch: int, config: TrainConfig) -> str:
    """0-based epoch -> "frozen" (encoder frozen) or "finetune" (top finetune_blocks VGG blocks trainable)."""
    return "frozen" if epoch < config.freeze_encoder_epochs else "finetune"


def _autocast(args: dict | None):
    return torch.autocast(**args) if args else contextlib.nullcontext()


def train_one_epoch(
    model, optimizer, batches: Iterable[dict[str, torch.Tensor]], *, loss: str = "smooth_l1", autocast: dict | None = None,
    on_step: Callable[[int], None] | None = None,
) -> tuple[float, int, int]:
    """One optimizer step per batch ({"L": (n, 1, s, s), "ab": (n, 2, s, s)} float32, on the model's device):
    (sum of batch-mean losses x batch size, images, steps). `model` may be DDP-wrapped; `autocast`: the
    arguments of torch.autocast (None: full precision); `on_step(steps so far)` after each step."""
    model.train()
    loss_sum = None  # a tensor on the batches' device: no host sync per step
    images, steps = 0, 0
    for batch in batches:
        L, ab = batch["L"], batch["ab"]
        with _autocast(autocast):
            pred = model(L)
        batch_loss = ab_loss(pred, ab, loss).mean()
        optimizer.zero_grad(set_to_none=True)
        batch_loss.backward()
        optimizer.step()
        term = batch_loss.detach().double() * len(L)
        loss_sum = term if loss_sum is None else loss_sum + term
        images += len(L)
        steps += 1
        if on_step is not None:
            on_step(steps)
    return (float(loss_sum.item()) if loss_sum is not None else 0.0), images, steps


def _psnr_sum(a: torch.Tensor, b: torch.Tensor) -> float:
    """Sum over the batch of per-image PSNR (metrics.psnr) between uint8 (N, 3, H, W) tensors."""
    a = a.permute(0, 2, 3, 1).cpu().numpy()
    b = b.permute(0, 2, 3, 1).cpu().numpy()
    return float(sum(metrics.psnr(x, y) for x, y in zip(a, b)))


@torch.no_grad()
def evaluate(
    model, batches: Iterable[dict[str, torch.Tensor]], *, loss: str = "smooth_l1", autocast: dict | None = None,
) -> tuple[float, float, float, int]:
    """Validation sums over `batches` (as train_one_epoch's): (sum over images of each image's mean loss,
    of the PSNR of the colorized image as `raycolor colorize` shows it, of the PSNR of the grey baseline
    (ab = 0), images). Leaves the model in training mode.

    Give it the plain module, not DDP: DDP's forward would broadcast buffers (a collective) and val shards are uneven.
    """
    model.eval()
    loss_sum = psnr = base = 0.0
    images = 0
    for batch in batches:
        L, ab = batch["L"], batch["ab"]
        with _autocast(autocast):
            pred = model(L)
        pred = pred.float()
        loss_sum += float(ab_loss(pred, ab, loss).mean(dim=(1, 2, 3)).double().sum())
        truth = color.lab_to_rgb_uint8(torch.cat([L, ab], dim=1))
        # the prediction as `raycolor colorize` shows it: chroma fitted into gamut, L kept
        shown = color.lab_to_rgb_uint8(torch.cat([L, color.fit_ab_to_gamut(L, pred)], dim=1))
        grey = color.lab_to_rgb_uint8(torch.cat([L, torch.zeros_like(ab)], dim=1))
        psnr += _psnr_sum(shown, truth)
        base += _psnr_sum(grey, truth)
        images += len(L)
    model.train()
    return loss_sum, psnr, base, images


@dataclass
class EpochSums:
    """What a rank adds up over one epoch; summed over ranks as one float64 tensor, in field order."""

    train_loss: float = 0.0  # sum over training images of the batch-mean loss
    train_images: float = 0.0
    val_loss: float = 0.0  # sum over validation images of each image's mean loss
    val_psnr: float = 0.0  # of the prediction as `raycolor colorize` shows it
    val_baseline_psnr: float = 0.0  # of the grey baseline (ab = 0)
    val_images: float = 0.0

    def all_reduce(self, device: torch.device) -> EpochSums:
        """Summed over the ranks of torch.distributed's default group; in one process without it, the same sums."""
        import torch.distributed as dist

        t = torch.tensor(dataclasses.astuple(self), dtype=torch.float64, device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(t)
        return EpochSums(*t.cpu().tolist())


# ----------------------------------------------------------------------------------------------------
# The worker loop (every Ray Train worker): setup -> restore -> per epoch: stage, train, evaluate,
# all-reduce, record, checkpoint
# ----------------------------------------------------------------------------------------------------


@dataclass
class _Worker:
    """This Ray Train worker: rank, world size, device, precision and its progress channel."""

    rank: int
    world: int
    device: torch.device
    autocast: dict  # torch.autocast's arguments: bf16 on GPU, off on CPU
    stats_device: torch.device  # where EpochSums are all_reduced (gloo: CPU, NCCL: the GPU)
    events: _Events


def _setup_worker(loop_config: dict) -> _Worker:
    """Rank, device, CPU threads and seeds of this worker."""
    import ray.train
    import ray.train.torch

    config: TrainConfig = loop_config["config"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(loop_config["threads"])
    torch.manual_seed(config.seed)
    np.random.seed(config.seed + rank)
    return _Worker(
        rank=rank, world=world, device=device,
        autocast=dict(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"),
        stats_device=device if device.type == "cuda" else torch.device("cpu"),
        events=_Events(loop_config["events"], rank),
    )


def _build_model(config: TrainConfig, device: torch.device):
    """The colorizer on `device` and its one AdamW (model.configure_optimizers)."""
    model = build_colorizer(weights=config.weights, skips=config.skips).to(device)
    optimizer = model.configure_optimizers(lr=config.lr, finetune_lr=config.finetune_lr, weight_decay=config.weight_decay)
    return model, optimizer


def _wrap_for_stage(model, stage: str, config: TrainConfig):
    """Set which encoder blocks train in `stage` and return a fresh DDP wrapper around the same module:
    DDP registers gradient hooks only for parameters that require grad when it is built."""
    import ray.train.torch

    set_trainable_encoder_blocks(model, 0 if stage == "frozen" else config.finetune_blocks)
    gc.collect()  # the previous wrapper and its reducer go first
    return ray.train.torch.prepare_model(model)


def _train_batches(shard, config: TrainConfig, device):
    """This rank's training batches for one epoch (a Ray Data iterator), locally shuffled."""
    return shard.iter_torch_batches(
        batch_size=config.batch_size, dtypes=torch.float32, device=device, local_shuffle_buffer_size=max(config.batch_size * 4, 16)
    )


def _val_batches(shard, config: TrainConfig, device):
    return shard.iter_torch_batches(batch_size=config.batch_size, dtypes=torch.float32, device=device)


def _save_epoch(store: CheckpointStore, w: _Worker, model, optimizer, line: dict, history: list[dict], *,
                config: TrainConfig, eta_s: float) -> None:
    """The epoch's checkpoint (every rank reports, rank 0 persists), then rank 0 rewrites metrics.jsonl and
    sends the epoch's progress line."""
    store.save(rank=w.rank, model=model, optimizer=optimizer, line=line, history=history, render_size=config.image_size)
    if w.rank == 0:
        _write_metrics(history, config)
        w.events.epoch(line, eta_s)


def _train_loop(loop_config: dict) -> None:
    import ray.train

    config: TrainConfig = loop_config["config"]
    store: CheckpointStore = loop_config["store"]
    w = _setup_worker(loop_config)
    model, optimizer = _build_model(config, w.device)
    start_epoch, history = store.restore(model, optimizer)
    if start_epoch >= config.epochs:
        return  # the run already finished: nothing to train (the driver exports the model)
    train_shard, val_shard = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("val")

    ddp, current_stage = None, None
    epoch_times: list[float] = []
    for epoch in range(start_epoch, config.epochs):
        t_epoch = time.perf_counter()
        stage = stage_of(epoch, config)
        if stage != current_stage:
            ddp, current_stage = None, stage
            ddp = _wrap_for_stage(model, stage, config)
        t0 = time.perf_counter()
        loss, images, steps = train_one_epoch(
            ddp, optimizer, _train_batches(train_shard, config, w.device), loss=config.loss, autocast=w.autocast,
            on_step=lambda n: w.events.step(epoch + 1, config.epochs, n),
        )
        train_time = time.perf_counter() - t0
        val = evaluate(model, _val_batches(val_shard, config, w.device), loss=config.loss, autocast=w.autocast)
        sums = EpochSums(loss, images, *val).all_reduce(w.stats_device)
        epoch_times.append(time.perf_counter() - t_epoch)
        line = _epoch_record(
            epoch, stage, sums, config=config, steps=steps, train_time=train_time, epoch_time=epoch_times[-1],
            resumed_from=start_epoch, workers=w.world,
        )
        history.append(line)
        eta_s = (config.epochs - epoch - 1) * (sum(epoch_times) / len(epoch_times))
        _save_epoch(store, w, model, optimizer, line, history, config=config, eta_s=eta_s)


# ----------------------------------------------------------------------------------------------------
# Progress: rank 0's events through a queue actor, drawn by a thread on the driver
# ----------------------------------------------------------------------------------------------------


class _Events:
    """Rank 0's progress for the driver (a ray.util.queue.Queue, or None): steps at most twice a second."""

    def __init__(self, queue, rank: int):
        self.queue = queue if rank == 0 else None
        self.last = 0.0

    def step(self, epoch: int, epochs: int, steps: int) -> None:
        if self.queue is not None and time.perf_counter() - self.last > 0.5:
            self.queue.put_nowait(("step", epoch, epochs, steps))
            self.last = time.perf_counter()

    def epoch(self, line: dict, eta_s: float) -> None:
        if self.queue is not None:
            self.queue.put_nowait(("epoch", progress_line(line, eta_s)))


def _event_queue():
    from ray.util.queue import Queue

    return Queue(actor_options={"num_cpus": 0})  # must not take a CPU slot from the training workers


@contextlib.contextmanager
def _drawing(events, report: TrainProgress | None):
    """Draw rank 0's progress events on the driver while the block (trainer.fit) runs."""
    if events is None or report is None:
        yield
        return
    stop = threading.Event()

    def drain(timeout: float) -> None:
        try:
            for event in events.get_nowait_batch(events.qsize()) or [events.get(timeout=timeout)]:
                report.handle(event)
        except Exception:  # queue.Empty, or the queue actor gone at shutdown
            pass

    def loop() -> None:
        while not stop.is_set():
            drain(0.5)

    thread = threading.Thread(target=loop, name="raycolor-train-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        drain(0.1)  # the last epoch's line
        report.close()
        events.shutdown()


# ----------------------------------------------------------------------------------------------------
# Driver: fit = check config -> connect -> plan -> checkpoints so far -> progress report -> trainer
# (datasets, workers) -> run -> summary (export the model, metrics, curves)
# ----------------------------------------------------------------------------------------------------


def worker_resources(config: TrainConfig) -> tuple[dict, int]:
    """(resources per worker, torch threads per CPU worker).

    GPU: 1 GPU + 1 CPU each. CPU: share the cluster's CPUs between the workers but leave at least one CPU
    (a quarter on big machines) to the Ray Data decode tasks, or they could never be scheduled.
    """
    import ray

    if config.use_gpu:
        gpus = ray.cluster_resources().get("GPU", 0)
        if gpus < config.workers:
            log.warning("asked for %d GPU workers but the cluster has %s GPUs now", config.workers, gpus)
        return {"CPU": 1, "GPU": 1}, 1
    total = float(ray.cluster_resources().get("CPU", 1))
    reserve = max(1.0, total // 4)
    per_worker = max(0.1, (total - reserve) / config.workers)
    return {"CPU": math.floor(per_worker * 100) / 100}, max(1, int(per_worker))


def _unwrap_failure(err: BaseException) -> BaseException | None:
    """The user-level cause of a Ray Train failure that deserves its own type on the driver."""
    failures = getattr(err, "worker_failures", None) or {}
    for exc in failures.values():
        if isinstance(exc, (WeightsUnavailableError, CheckpointError)):
            return exc
    cause = getattr(err, "controller_failure", None)
    if isinstance(cause, (WeightsUnavailableError, CheckpointError)):
        return cause
    return None


def _checked(config: TrainConfig) -> tuple[TrainConfig, list, list]:
    """Everything that can be checked before Ray starts: the config, the weights, what each input is.
    Returns the config with an absolute output, and the classified data and --val inputs."""
    validate_config(config)
    config = dataclasses.replace(config, output=storage.absolute(config.output))
    _check_weights(config)
    return config, _classify(config.data, config), _classify(config.val, config)


def _connect(config: TrainConfig) -> None:
    """Start or join Ray; on a multi-node cluster, check that every node reaches OUTPUT."""
    runtime.ensure_ray()
    runtime.check_output_reachable(config.output, shared=config.storage.shared_output)


def _progress_report(config: TrainConfig, data: _Data, start_epoch: int, terminal: IO[str] | None) -> TrainProgress:
    """The terminal report, opened with the run's first line."""
    report = TrainProgress(stream=terminal, steps_per_epoch=math.ceil(data.n_train / (config.workers * config.batch_size)))
    report.handle((
        "epoch",
        f"raycolor train: {data.n_train} training / {data.n_val} validation images, "
        f"{config.workers} {'GPU' if config.use_gpu else 'CPU'} worker(s), output {config.output}"
        + (f", resuming after epoch {start_epoch}" if start_epoch else ""),
    ))
    return report


@contextlib.contextmanager
def _no_data_progress_bars():
    """Ray Data's progress bars off while datasets and the trainer are built: the epoch lines are the report."""
    data_ctx = runtime.data_context()
    saved_bars = data_ctx.enable_progress_bars
    data_ctx.enable_progress_bars = False
    try:
        yield
    finally:
        data_ctx.enable_progress_bars = saved_bars


def _trainer(config: TrainConfig, data: _Data, store: CheckpointStore, storage_fs, storage_path: str, events):
    """The TorchTrainer: the train and val datasets, `workers` DDP workers running _train_loop, the run in
    OUTPUT/train with Ray Train's checkpoint and failure settings."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    resources, threads = worker_resources(config)
    with _no_data_progress_bars():
        datasets = {
            "train": _dataset("train", train_transform, data, config),
            "val": _dataset("val", val_transform, data, config),
        }
        return TorchTrainer(
            _train_loop,
            train_loop_config={"config": config, "events": events, "threads": threads, "store": store},
            torch_config=TorchConfig(backend="nccl" if config.use_gpu else "gloo"),
            scaling_config=ray.train.ScalingConfig(num_workers=config.workers, use_gpu=config.use_gpu, resources_per_worker=resources),
            run_config=ray.train.RunConfig(
                name=RUN_NAME,
                storage_path=storage_path,
                storage_filesystem=storage_fs,
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.num_to_keep),
                failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
            ),
            datasets=datasets,
            dataset_config=_ingest_config(),
        )


def _run(trainer, events, report: TrainProgress | None) -> None:
    """trainer.fit() with progress drawn; a worker's WeightsUnavailableError or CheckpointError re-raised as such."""
    import ray.train

    try:
        with _drawing(events, report):
            trainer.fit()
    except ray.train.TrainingFailedError as e:
        cause = _unwrap_failure(e)
        if cause is not None:
            raise type(cause)(*cause.args) from e
        raise


def _summary(config: TrainConfig, store: CheckpointStore, start_epoch: int, t_start: float) -> TrainResult:
    """The latest valid checkpoint's model exported to OUTPUT/model, metrics.jsonl and curves.png from its
    history, and this call's figures."""
    final = store.latest_valid(want_files=True)
    if final is None:
        raise CheckpointError(f"training finished without a checkpoint in {store.exp_path}")
    model_uri = CheckpointStore.export(final, storage.join_uri(config.output, MODEL_DIR), config.storage)
    history = list(final.state.get("history", []))
    metrics_uri = _write_metrics(history, config)
    curves_uri = _write_curves(history, config)
    trained = [m for m in history if m.get("epoch", 0) > start_epoch]
    images = sum(m.get("train_images") or 0 for m in trained)
    seconds = sum(m.get("train_time_s") or 0.0 for m in trained)
    return TrainResult(
        epochs_run=len(trained),
        metrics=history[-1] if history else {},
        model_uri=model_uri,
        metrics_uri=metrics_uri,
        curves_uri=curves_uri,
        elapsed_s=time.perf_counter() - t_start,
        images_per_s=images / seconds if seconds > 0 else 0.0,
    )


def fit(config: TrainConfig, *, progress: bool = True, terminal: IO[str] | None = None) -> TrainResult:
    """Train (or resume training) the colorizer on Ray Train; export the final model to OUTPUT/model.

    Raises ValueError (bad config), inputs.InputError (bad data URIs), WeightsUnavailableError,
    CheckpointError (OUTPUT holds checkpoints but none is usable), ray.train.TrainingFailedError.
    """
    t_start = time.perf_counter()
    config, data_roots, val_roots = _checked(config)
    _connect(config)
    data = _plan(config, data_roots, val_roots)  # shard descriptors and totals, no per-image list
    storage_fs, storage_path, store = _storage(config)
    latest = store.latest_valid()
    start_epoch = int(latest.state["epoch"]) if latest else 0
    report = _progress_report(config, data, start_epoch, terminal) if progress else None
    if start_epoch < config.epochs:
        events = _event_queue() if report else None
        trainer = _trainer(config, data, store, storage_fs, storage_path, events)
        _run(trainer, events, report)
    return _summary(config, store, start_epoch, t_start)
