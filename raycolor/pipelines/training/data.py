"""Training's Ray Data side: a shard expanded into one side's item rows, the CPU transforms that decode,
crop and convert them to Lab, and the datasets and ingest split the workers read.

    shards ─expand (as colorize), keep this side's rows ─┬─ train: read + decode (inputs.read_decoded),
                                                          │  random-resized crop, flip, Lab
                                                          └─ val: read + decode, Lab, squash resize
                                                             (the square inference renders)
"""

from __future__ import annotations

import logging
import math
import random
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from raycolor import inputs, storage
from raycolor.config import DEFAULT_STORE, StorageConfig, TrainConfig
from raycolor.pipelines import runtime
from raycolor.pipelines.stages import expand_batch
from raycolor.pipelines.training.plan import Data, expand_shard
from raycolor.pipelines.training.split import Split

if TYPE_CHECKING:
    import torch

# torch (and the colour maths, which is torch) is imported only by the transforms that decode: Ray Train's
# SplitCoordinator and the expand tasks unpickle this module's functions too, and need neither (~1.6 s of CPU
# and ~300 MB a process, as in pipelines/stages.py)

log = logging.getLogger(__name__)

CROP_SCALE = (0.3, 1.0)  # random-resized-crop area fraction
CROP_RATIO = (3 / 4, 4 / 3)  # and aspect ratio, as torchvision's RandomResizedCrop
_DECODE_BATCH = 8  # images per Ray Data map_batches call
# At most this many images per decode task, not runtime.MAX_BLOCK_ROWS (128, measured for colorize's decode
# stage): training's 64 predates that measurement and was never measured against it, so it stays until
# bench/train_throughput.py compares the two (a change would change training's ingest). runtime.rows_per_block
# gives small data sets fewer, so every CPU gets some.
_BLOCK_ROWS = 64


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


def shard_rows(desc: dict, *, side: str, split: Split | None, held, store: StorageConfig) -> list[dict]:
    """One shard descriptor -> the item rows of `side` ("train" or "val"; columns TRAIN_ROWS), in a Ray Data
    task (through stages.expand_batch): the shard expanded as colorize expands it (inputs.expand), the
    hold-out rule (or the --val sources) applied row by row. Training rows come in a fresh random order each
    epoch; a shard that cannot be expanded gives none (logged)."""
    try:
        items = expand_shard(desc, store=store)
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
    batch: dict[str, np.ndarray], *, store: StorageConfig, max_pixels, what: str,
):
    """The batch's images through the one reading loop (inputs.read_decoded, as colorize reads): uint8 RGB
    arrays; a row that cannot be read or decoded is logged and dropped (training has no error rows)."""
    items = inputs.Item.from_batch(batch)
    decoded = inputs.read_decoded(items, store=store, max_pixels=max_pixels)
    for item, got in zip(items, decoded):
        if got.error is not None:
            kind = "unreadable" if got.error.startswith("read_failed:") else "undecodable"
            log.warning("dropping %s %s image %s (%s)", kind, what, item.source, got.error)
            continue
        yield got.rgb


def _lab_batch(labs: list[torch.Tensor], size: int) -> dict[str, np.ndarray]:
    import torch

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
    batch: dict[str, np.ndarray], *, size: int, store: StorageConfig = DEFAULT_STORE, max_pixels=None,
) -> dict[str, np.ndarray]:
    """Rows of items -> {"L": (n,1,s,s), "ab": (n,2,s,s)} float32: random-resized crop, h-flip, Lab."""
    import torch
    from PIL import Image

    from raycolor.core import color

    torch.set_num_threads(1)
    rng = np.random.default_rng()  # fresh entropy per call: every epoch sees new crops
    labs = []
    for rgb in _rgbs(batch, store=store, max_pixels=max_pixels, what="training"):
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
    batch: dict[str, np.ndarray], *, size: int, store: StorageConfig = DEFAULT_STORE, max_pixels=None,
) -> dict[str, np.ndarray]:
    """Rows of items -> Lab squashed to size x size exactly as inference renders L (colorize.render_l)."""
    import torch

    from raycolor.core import color, colorize

    torch.set_num_threads(1)
    labs = []
    for rgb in _rgbs(batch, store=store, max_pixels=max_pixels, what="validation"):
        lab = color.rgb_uint8_to_lab(torch.from_numpy(rgb).permute(2, 0, 1))
        labs.append(colorize.render_l(lab, size))  # same antialiased bilinear squash for L and ab
    return _lab_batch(labs, size)


# ----------------------------------------------------------------------------------------------------
# Dataset wiring: descriptors -> rows -> small blocks -> Lab batches; the ingest split per worker
# ----------------------------------------------------------------------------------------------------


def build_dataset(side: str, fn, data: Data, config: TrainConfig):
    """Shard descriptors -> item rows of `side` (tasks) -> small blocks -> decoded Lab (tasks)."""
    import ray

    descs, n = (data.train, data.n_train) if side == "train" else (data.val, data.n_val)
    ds = ray.data.from_items(descs, override_num_blocks=max(1, len(descs)))
    if side == "train" and len(descs) > 1:
        ds = ds.randomize_block_order()  # the shards in a new order each epoch: a barrier over descriptors only
    # expanded as colorize expands (pipelines.colorize.build_dataset): a map_batches of one descriptor at a time,
    # which Ray Data fuses with the streaming repartition below (same 1 CPU, so the remote args match), so the
    # expand task itself cuts its shard into small blocks that many tasks decode. As flat_map + repartition,
    # the repartition was a stage of its own holding a CPU slot (docs/performance.md)
    ds = ds.map_batches(
        expand_batch,
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=1,
        fn_kwargs={"rows": shard_rows, "schema": TRAIN_ROWS, "side": side, "split": data.split,
                   "held": data.held if side == "train" else None, "store": config.storage},
    )
    ds = ds.repartition(target_num_rows_per_block=runtime.rows_per_block(n, cap=_BLOCK_ROWS))
    return ds.map_batches(
        fn,
        batch_size=_DECODE_BATCH,
        batch_format="numpy",
        num_cpus=1,
        fn_kwargs={
            "size": config.image_size,
            "store": config.storage,
            "max_pixels": config.max_pixels,
        },
    )


def ingest_config():
    """Ray Train's DataConfig for the two datasets: train split equally between the workers, val unequally."""
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