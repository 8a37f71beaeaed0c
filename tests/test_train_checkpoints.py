"""CheckpointStore without Ray and without fit: the folder rank 0 hands Ray Train (write_folder), read back and
verified (read_folder), and exported to OUTPUT/model (export). Ray Train's part (save's report, restore's
get_checkpoint, latest_valid's ray.train.Checkpoint) runs through fit in tests/test_train.py."""

from __future__ import annotations

import pyarrow.fs as pafs
import pytest
import torch

from raycolor.config import StorageConfig
from raycolor.core import checkpoint
from raycolor.core.checkpoint import CheckpointError
from raycolor.core.model import build_colorizer
from raycolor.pipelines.training.checkpoints import (
    STATE_FORMAT,
    TRAIN_STATE_NAME,
    CheckpointStore,
)


def _trained(seed: int):
    """A colorizer and its AdamW after one step, so both have a state worth restoring."""
    torch.manual_seed(seed)
    model = build_colorizer(weights=None)
    optimizer = model.configure_optimizers(lr=1e-3, finetune_lr=0.0)
    model(torch.rand(1, 1, 32, 32) * 100).mean().backward()
    optimizer.step()
    return model, optimizer


def _write(run, epoch: int, seed: int = 1):
    model, optimizer = _trained(seed)
    line = {"epoch": epoch, "stage": "frozen", "val_loss": 0.5}
    history = [{"epoch": e, "stage": "frozen"} for e in range(1, epoch)] + [line]
    folder = run / CheckpointStore.new_name(epoch)
    CheckpointStore.write_folder(str(folder), model=model, optimizer=optimizer, line=line, history=history, render_size=32)
    return folder, model, optimizer, history


def test_a_written_checkpoint_reads_back_and_exports_the_same_model(tmp_path):
    run = tmp_path / "train"
    folder, model, optimizer, history = _write(run, 3)
    assert CheckpointStore(pafs.LocalFileSystem(), str(run)).names() == [folder.name]

    restored = CheckpointStore.read_folder(str(folder), folder.name, want_files=True)
    assert restored.name == folder.name and restored.meta.render_size == 32
    assert {k: restored.state[k] for k in ("format", "epoch", "stage", "history")} == {
        "format": STATE_FORMAT, "epoch": 3, "stage": "frozen", "history": history}
    for k, v in model.state_dict().items():
        assert torch.equal(restored.model.state_dict()[k], v), k
    # the optimizer state goes into another run's optimizer as restore() puts it there: AdamW's moments come back
    _, other = _trained(seed=2)
    other.load_state_dict(restored.state["optimizer"])
    theirs, ours = other.state_dict()["state"], optimizer.state_dict()["state"]
    assert theirs.keys() == ours.keys() and theirs
    for i in ours:
        assert all(torch.equal(theirs[i][k], ours[i][k]) for k in ours[i]), i
    assert restored.files == {n: (folder / n).read_bytes() for n in (checkpoint.WEIGHTS_NAME, checkpoint.CONFIG_NAME)}
    assert CheckpointStore.read_folder(str(folder), folder.name).files == {}  # the bytes only when asked for

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / checkpoint.CONFIG_NAME).write_text("{}")  # an older export's config is replaced, not mixed in
    assert CheckpointStore.export(restored, str(model_dir), StorageConfig(retries=1)) == str(model_dir)
    exported, meta = checkpoint.load(str(model_dir))
    assert meta.model_id == restored.meta.model_id and not (model_dir / TRAIN_STATE_NAME).exists()
    for k, v in model.state_dict().items():
        assert torch.equal(exported.state_dict()[k], v), k


def test_an_incomplete_checkpoint_is_refused(tmp_path):
    folder, *_ = _write(tmp_path / "train", 2)
    state = folder / TRAIN_STATE_NAME
    state.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=f"unreadable {TRAIN_STATE_NAME}"):
        CheckpointStore.read_folder(str(folder), folder.name)
    torch.save({"epoch": "2"}, state)
    with pytest.raises(CheckpointError, match="not a raycolor training state"):
        CheckpointStore.read_folder(str(folder), folder.name)
    state.unlink()
    with pytest.raises(CheckpointError, match=f"has no {TRAIN_STATE_NAME}"):
        CheckpointStore.read_folder(str(folder), folder.name)
    weights = folder / checkpoint.WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="corrupt"):
        CheckpointStore.read_folder(str(folder), folder.name)
