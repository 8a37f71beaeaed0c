"""The checkpoint store (driver and workers): naming, writing, recovery and export, like timm's CheckpointSaver.

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

Ray is imported only where a checkpoint goes to or comes from Ray Train (save, restore, latest_valid):
write_folder, read_folder and export work on folders and URIs without it.
"""

from __future__ import annotations

import logging
import os
import posixpath
import tempfile
from dataclasses import dataclass

import torch

from raycolor import storage
from raycolor.config import StorageConfig
from raycolor.core import checkpoint as core_checkpoint
from raycolor.core.checkpoint import CheckpointError
from raycolor import paths

log = logging.getLogger(__name__)

TRAIN_STATE_NAME = "train_state.pt"
STATE_FORMAT = 1


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
        return paths.checkpoint_name(epoch)

    def names(self) -> list[str]:
        import pyarrow.fs as pafs

        infos = self.fs.get_file_info(pafs.FileSelector(self.exp_path, allow_not_found=True))
        return sorted(
            i.base_name for i in infos if i.type == pafs.FileType.Directory and paths.is_checkpoint_name(i.base_name)
        )

    @staticmethod
    def read_folder(d: str, name: str, *, want_files: bool = False) -> _Restored:
        """A checkpoint folder on local disk -> its verified model, its training state and (when asked) its core
        files' bytes; CheckpointError when it is not a complete raycolor training checkpoint."""
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

    @staticmethod
    def _load(ckpt, name: str, *, want_files: bool = False) -> _Restored:
        """A ray.train.Checkpoint (local or on OUTPUT's filesystem) read through read_folder."""
        with ckpt.as_directory() as d:
            return CheckpointStore.read_folder(d, name, want_files=want_files)

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

    @staticmethod
    def write_folder(folder: str, *, model, optimizer, line: dict, history: list[dict], render_size: int) -> None:
        """Rank 0's checkpoint files in `folder`: the core checkpoint (config.json + weights.pt) and train_state.pt."""
        core_checkpoint.save(folder, model, render_size=render_size, extra={"epoch": line["epoch"], "metrics": line})
        state = {
            "format": STATE_FORMAT,
            "epoch": line["epoch"],
            "stage": line["stage"],
            "optimizer": optimizer.state_dict(),
            "history": history,
        }
        torch.save(state, os.path.join(folder, TRAIN_STATE_NAME))

    def save(self, *, rank: int, model, optimizer, line: dict, history: list[dict], render_size: int) -> None:
        """Every rank reports the epoch's metrics; rank 0 also hands Ray Train the checkpoint to persist."""
        import ray.train
        from ray.train import Checkpoint

        with tempfile.TemporaryDirectory(prefix="raycolor-ckpt-") as tmp:
            ckpt, name = None, None
            if rank == 0:
                self.write_folder(tmp, model=model, optimizer=optimizer, line=line, history=history, render_size=render_size)
                ckpt, name = Checkpoint.from_directory(tmp), self.new_name(line["epoch"])
            ray.train.report(line, checkpoint=ckpt, checkpoint_dir_name=name)

    @staticmethod
    def export(restored: _Restored, model_uri: str, store: StorageConfig) -> str:
        """Copy a checkpoint's core files to model_uri: config.json removed first, weights, config last, so a
        reader never takes old config with new weights (checkpoint.load verifies the pair anyway)."""
        config_uri = storage.join_uri(model_uri, core_checkpoint.CONFIG_NAME)
        storage.remove(config_uri, store=store)
        for name in (core_checkpoint.WEIGHTS_NAME, core_checkpoint.CONFIG_NAME):
            storage.write_bytes_atomic(storage.join_uri(model_uri, name), restored.files[name], store=store)
        return model_uri
