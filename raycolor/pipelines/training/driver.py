"""The training driver: fit in named steps, and what it checks and starts on the way.

    fit = check config -> connect -> plan -> checkpoints so far -> progress report -> class prior (classification
          head) -> trainer (datasets, workers) -> run -> summary (export the model, metrics, curves)

The steps are the package's modules: plan (shards, counts, the hold-out rule), data (the datasets), loop (the
workers), checkpoints (the store), records (metrics.jsonl, curves.png).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import IO, Any

from raycolor import storage
from raycolor.config import TrainConfig
from raycolor.core import precision
from raycolor.core.checkpoint import CheckpointError
from raycolor.core.model import (
    LOSSES,
    VGG_BLOCKS,
    WeightsUnavailableError,
    build_colorizer,
)
from raycolor import paths
from raycolor.pipelines import runtime
from raycolor.pipelines.progress import TrainProgress
from raycolor.pipelines.training.checkpoints import CheckpointStore
from raycolor.pipelines.training.data import (
    build_dataset,
    ingest_config,
    train_transform,
    val_transform,
)
from raycolor.pipelines.training.loop import train_loop
from raycolor.pipelines.training.plan import Data, classify, plan_data
from raycolor.pipelines.training.prior import class_prior
from raycolor.pipelines.training.records import write_curves, write_metrics

__all__ = ["TrainResult", "fit", "validate_config"]

log = logging.getLogger(__name__)



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
    precision.check(config.precision)
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
# Progress: rank 0's events (loop._Events) through a queue actor, drawn by a thread on the driver
# ----------------------------------------------------------------------------------------------------


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
    return config, classify(config.data, config), classify(config.val, config)


def _connect(config: TrainConfig) -> None:
    """Start or join Ray; on a multi-node cluster, check that every node reaches OUTPUT."""
    runtime.ensure_ray()
    runtime.check_output_reachable(config.output, shared=config.storage.shared_output)


def _progress_report(config: TrainConfig, data: Data, start_epoch: int, terminal: IO[str] | None) -> TrainProgress:
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



def _storage(config: TrainConfig) -> tuple[Any, str, CheckpointStore]:
    """(pyarrow filesystem, storage path without scheme) for RunConfig, and the run's checkpoint store."""
    import pyarrow.fs as pafs
    from fsspec.implementations.local import LocalFileSystem

    fs, path = storage.filesystem(config.output, store=config.storage)

    if isinstance(fs, LocalFileSystem):
        storage_fs, storage_path = pafs.LocalFileSystem(), path
    else:
        # s3fs (endpoint, no credentials) wrapped for Ray; it pickles to the controller and workers
        storage_fs, storage_path = pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path.rstrip("/")
    return storage_fs, storage_path, CheckpointStore(storage_fs, f"{storage_path}/{paths.TRAIN_RUN}")


def _prior(config: TrainConfig, data: Data) -> list[float] | None:
    """The classification head's class-rebalancing weights: OUTPUT/prior.json, made by one Ray Data pass over
    the training data the first time (prior.class_prior). None for the regression head."""
    if config.head != "classification":
        return None
    return class_prior(config, data)["weights"]


def _trainer(config: TrainConfig, data: Data, store: CheckpointStore, storage_fs, storage_path: str, events,
             prior: list[float] | None = None):
    """The TorchTrainer: the train and val datasets, `workers` DDP workers running loop.train_loop, the run in
    OUTPUT/train with Ray Train's checkpoint and failure settings."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    resources, threads = worker_resources(config)
    with _no_data_progress_bars():
        datasets = {
            "train": build_dataset("train", train_transform, data, config),
            "val": build_dataset("val", val_transform, data, config),
        }
        return TorchTrainer(
            train_loop,
            train_loop_config={"config": config, "events": events, "threads": threads, "store": store, "prior": prior},
            torch_config=TorchConfig(backend="nccl" if config.use_gpu else "gloo"),
            scaling_config=ray.train.ScalingConfig(num_workers=config.workers, use_gpu=config.use_gpu, resources_per_worker=resources),
            run_config=ray.train.RunConfig(
                name=paths.TRAIN_RUN,
                storage_path=storage_path,
                storage_filesystem=storage_fs,
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.num_to_keep),
                failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
            ),
            datasets=datasets,
            dataset_config=ingest_config(),
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
    model_uri = CheckpointStore.export(final, paths.model_uri(config.output), config.storage)
    history = list(final.state.get("history", []))
    metrics_uri = write_metrics(history, config)
    curves_uri = write_curves(history, config)
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
    data = plan_data(config, data_roots, val_roots)  # shard descriptors and totals, no per-image list
    storage_fs, storage_path, store = _storage(config)
    latest = store.latest_valid()
    start_epoch = int(latest.state["epoch"]) if latest else 0
    report = _progress_report(config, data, start_epoch, terminal) if progress else None
    if start_epoch < config.epochs:
        prior = _prior(config, data)  # classification: the rebalancing weights (cached in OUTPUT)
        events = _event_queue() if report else None
        trainer = _trainer(config, data, store, storage_fs, storage_path, events, prior)
        _run(trainer, events, report)
    return _summary(config, store, start_epoch, t_start)
