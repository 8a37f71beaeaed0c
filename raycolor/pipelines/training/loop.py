"""The training loop: the steps (plain functions of an iterable of batches, no Ray: tests/test_train_steps.py
runs them) and the Ray Train worker that runs them epoch by epoch in named steps.

    setup -> restore -> per epoch: stage, train, evaluate, all-reduce, record, checkpoint

Ray Train pickles `train_loop` by reference: workers import it from this module. Ray is imported inside the
worker's steps only, so the steps import without it.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from raycolor.config import TrainConfig
from raycolor.core import abbins, color, metrics, precision
from raycolor.core.colorize import DEFAULT_TEMPERATURE
from raycolor.core.model import ab_loss, build_colorizer, set_trainable_encoder_blocks
from raycolor.pipelines.training.checkpoints import CheckpointStore
from raycolor.pipelines.training.records import EpochSums, epoch_record, progress_line, write_metrics

# ----------------------------------------------------------------------------------------------------
# Training steps: plain functions of an iterable of batches, no Ray (tests/test_train_steps.py runs them)
# ----------------------------------------------------------------------------------------------------


def stage_of(epoch: int, config: TrainConfig) -> str:
    """0-based epoch -> "frozen" (encoder frozen) or "finetune" (top finetune_blocks VGG blocks trainable)."""
    return "frozen" if epoch < config.freeze_encoder_epochs else "finetune"


def _autocast(args: dict | None):
    return torch.autocast(**args) if args else contextlib.nullcontext()


def _is_classifier(model) -> bool:
    return getattr(getattr(model, "module", model), "head_kind", "regression") == "classification"


def pixel_loss(model, out: torch.Tensor, ab: torch.Tensor, loss: str) -> torch.Tensor:
    """The training loss per element of `out`, the model's forward output: regression, ab_loss (N, 2, H, W) of
    kind `loss`; classification, the class-rebalanced weighted cross-entropy (N, H, W) against the soft-encoded
    ab, with the bins and prior weights the model holds (`loss` unused). `model` may be DDP-wrapped."""
    module = getattr(model, "module", model)
    if _is_classifier(module):
        return abbins.weighted_cross_entropy(out, ab, module.bins, module.prior_weights)
    return ab_loss(out, ab, loss)


def train_one_epoch(
    model, optimizer, batches: Iterable[dict[str, torch.Tensor]], *, loss: str = "smooth_l1", autocast: dict | None = None,
    on_step: Callable[[int], None] | None = None,
) -> tuple[float, int, int]:
    """One optimizer step per batch ({"L": (n, 1, s, s), "ab": (n, 2, s, s)} float32, on the model's device):
    (sum of batch-mean losses x batch size, images, steps). The loss follows the model's head (pixel_loss).
    `model` may be DDP-wrapped; `autocast`: the arguments of torch.autocast (None: full precision);
    `on_step(steps so far)` after each step."""
    model.train()
    loss_sum = None  # a tensor on the batches' device: no host sync per step
    images, steps = 0, 0
    for batch in batches:
        L, ab = batch["L"], batch["ab"]
        with _autocast(autocast):
            pred = model(L)
        batch_loss = pixel_loss(model, pred, ab, loss).mean()
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


def _colour_sums(shown: torch.Tensor, truth: torch.Tensor) -> tuple[float, float, float]:
    """Sums over the batch (uint8 (N, 3, H, W)) of the shown prediction's colourfulness, the truth's, and the
    AuC of the ab error (metrics.auc): what the epoch record's val_colourfulness_ratio and val_auc come from."""
    a = shown.permute(0, 2, 3, 1).cpu().numpy()
    b = truth.permute(0, 2, 3, 1).cpu().numpy()
    cf = sum(metrics.colourfulness(x) for x in a)
    cf_ref = sum(metrics.colourfulness(y) for y in b)
    return float(cf), float(cf_ref), float(sum(metrics.auc(x, y) for x, y in zip(a, b)))


@torch.no_grad()
def evaluate(
    model, batches: Iterable[dict[str, torch.Tensor]], *, loss: str = "smooth_l1", autocast: dict | None = None,
    colour: list[float] | None = None,
) -> tuple[float, float, float, int]:
    """Validation sums over `batches` (as train_one_epoch's): (sum over images of each image's mean loss,
    of the PSNR of the colorized image as `raycolor colorize` shows it, of the PSNR of the grey baseline
    (ab = 0), images). A classification model's PSNR is of its annealed mean at T = 0.38, as colorize decodes
    it by default, so the two heads' PSNRs compare. Leaves the model in training mode. `colour`, a list of 3
    floats, has _colour_sums' sums over the images added into it.

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
        per_pixel = pixel_loss(model, pred, ab, loss)
        loss_sum += float(per_pixel.flatten(1).mean(dim=1).double().sum())
        if _is_classifier(model):  # PSNR of what colorize shows: the annealed mean at colorize's default T
            pred = model.decode_ab(pred, DEFAULT_TEMPERATURE)
        truth = color.lab_to_rgb_uint8(torch.cat([L, ab], dim=1))
        # the prediction as `raycolor colorize` shows it: chroma fitted into gamut, L kept
        shown = color.lab_to_rgb_uint8(torch.cat([L, color.fit_ab_to_gamut(L, pred)], dim=1))
        grey = color.lab_to_rgb_uint8(torch.cat([L, torch.zeros_like(ab)], dim=1))
        psnr += _psnr_sum(shown, truth)
        base += _psnr_sum(grey, truth)
        if colour is not None:
            colour[:] = [s + t for s, t in zip(colour, _colour_sums(shown, truth))]
        images += len(L)
    model.train()
    return loss_sum, psnr, base, images


# ----------------------------------------------------------------------------------------------------
# The worker loop (every Ray Train worker): setup -> restore -> per epoch: stage, train, evaluate,
# all-reduce, record, checkpoint
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


@dataclass
class _Worker:
    """This Ray Train worker: rank, world size, device, precision and its progress channel."""

    rank: int
    world: int
    device: torch.device
    precision: str  # "bf16" | "fp32": TrainConfig.precision resolved for this worker's device
    autocast: dict  # torch.autocast's arguments for it (precision.autocast_args)
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
    ran = precision.resolve(config.precision, device, training=True)
    return _Worker(
        rank=rank, world=world, device=device, precision=ran, autocast=precision.autocast_args(ran, device),
        stats_device=device if device.type == "cuda" else torch.device("cpu"),
        events=_Events(loop_config["events"], rank),
    )


def _build_model(config: TrainConfig, device: torch.device, prior: list[float] | None = None):
    """The colorizer on `device` and its one AdamW (model.configure_optimizers); a classification model gets the
    class-rebalancing weights `prior` (the driver's prior step)."""
    model = build_colorizer(weights=config.weights, skips=config.skips, head=config.head)
    if prior is not None:
        model.set_prior(torch.tensor(prior))
    model = precision.to_layout(model.to(device))  # the optimizer's state follows the parameters' layout
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
        write_metrics(history, config)
        w.events.epoch(line, eta_s)


def train_loop(loop_config: dict) -> None:
    """One Ray Train worker's run: restore the newest usable checkpoint, then each remaining epoch in steps."""
    import ray.train

    config: TrainConfig = loop_config["config"]
    store: CheckpointStore = loop_config["store"]
    w = _setup_worker(loop_config)
    model, optimizer = _build_model(config, w.device, loop_config.get("prior"))
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
        colour = [0.0, 0.0, 0.0]
        val = evaluate(
            model, _val_batches(val_shard, config, w.device), loss=config.loss, autocast=w.autocast, colour=colour
        )
        sums = EpochSums(loss, images, *val, *colour).all_reduce(w.stats_device)
        epoch_times.append(time.perf_counter() - t_epoch)
        line = epoch_record(
            epoch, stage, sums, config=config, steps=steps, train_time=train_time, epoch_time=epoch_times[-1],
            resumed_from=start_epoch, workers=w.world,
        )
        line["precision"] = w.precision  # what this epoch's steps ran in (rank 0's; every rank resolves alike)
        history.append(line)
        eta_s = (config.epochs - epoch - 1) * (sum(epoch_times) / len(epoch_times))
        _save_epoch(store, w, model, optimizer, line, history, config=config, eta_s=eta_s)
