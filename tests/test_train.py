"""Ray Train (V2) training end to end on a tiny learnable set: 32 px PNGs, 2 CPU workers, weights=None, the
classification head (its prior pass included; HEAD below says why that head).

Red-over-blue images whose colour follows lightness (light red top, dark blue bottom) under random grey
texture: a few AdamW steps visibly lower the validation loss. Every fit runs on the session's local Ray
(2 CPUs) and, for S3, the moto server; nothing is mocked.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support import SIZE, assert_finite_lines, base_config, make_images

from raycolor.config import StorageConfig
from raycolor.core import abbins, checkpoint
from raycolor.core.checkpoint import CheckpointError
from raycolor.core.colorize import colorize_rgb
from raycolor.core.model import WeightsUnavailableError


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def checkpoint_dirs(output: Path) -> list[Path]:
    return sorted(p for p in (output / "train").glob("checkpoint_*") if p.is_dir())


# --------------------------------------------------------------------------------------------- fast


@pytest.mark.ray  # fit imports Ray's library before it checks the config
def test_config_is_validated_before_anything_starts(tmp_path):
    from raycolor.pipelines.training.driver import fit

    cfg = base_config(str(tmp_path), str(tmp_path / "out"))
    for change, message in [
        ({"image_size": 40}, "multiple of 16"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"workers": 0}, "workers"),
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"finetune_blocks": 6}, "finetune_blocks"),
        ({"loss": "l2"}, "loss"),
        ({"lr": 0.0}, "lr"),
        ({"data": ()}, "data"),
    ]:
        with pytest.raises(ValueError, match=message):
            fit(dataclasses.replace(cfg, **change), progress=False)
    # a weights file that is not there fails on the driver, before Ray or any worker is started
    with pytest.raises(WeightsUnavailableError, match="not found"):
        fit(dataclasses.replace(cfg, weights=str(tmp_path / "missing.pt")), progress=False)


def test_one_reading_loop_reads_the_batch_together_and_training_drops_unreadable_rows(tmp_path, monkeypatch):
    """inputs.read_decoded, the one reading loop of colorize and training: one read_items call per batch,
    one result per item in order (decoded RGB, the bytes a peek hook took, or colorize's error text);
    the training transforms log and drop the error rows and transform the rest."""
    from raycolor import inputs, storage
    from raycolor.pipelines.training import data as train_data

    folder = make_images(tmp_path / "imgs", n=3)
    rows = [str(folder / "img00.png"), str(tmp_path / "gone.png"), str(folder / "broken.png"), str(folder / "img02.png")]
    items = [inputs.Item(source=r, relpath="", uri=r) for r in rows]
    calls = []
    read_items = storage.read_items
    monkeypatch.setattr(storage, "read_items", lambda its, **kw: calls.append(len(its)) or read_items(its, **kw))
    mine = (folder / "img02.png").read_bytes()
    got = list(inputs.read_decoded(
        items, store=StorageConfig(retries=1, io_concurrency=4), max_pixels=None, peek=lambda data: "mine" if data == mine else None
    ))
    assert calls == [4]  # the batch's reads went out together
    assert np.array_equal(got[0].rgb, np.asarray(Image.open(folder / "img00.png").convert("RGB")))
    assert got[1].rgb is None and got[1].error.startswith("read_failed: ") and "gone.png" in got[1].error
    assert got[2].rgb is None and got[2].error.startswith("truncated: ")  # the DecodeError text, as colorize stores it
    assert got[3].rgb is None and got[3].peeked == "mine" and got[3].data == mine

    batch = {
        "source": np.array(rows, dtype=object),
        "uri": np.array(rows, dtype=object),
        "offset": np.zeros(len(rows), np.int64),
        "size": np.full(len(rows), -1, np.int64),
    }
    warnings: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())  # type: ignore[method-assign]
    train_data.log.addHandler(handler)
    try:
        out = train_data.val_transform(batch, size=16, store=StorageConfig(retries=1, io_concurrency=4))
    finally:
        train_data.log.removeHandler(handler)
    assert calls == [4, 4]
    assert out["L"].shape == (2, 1, 16, 16) and out["ab"].shape == (2, 2, 16, 16)
    assert len(warnings) == 2, warnings
    assert "unreadable validation image" in warnings[0] and "gone.png" in warnings[0]
    assert "undecodable validation image" in warnings[1] and "broken.png" in warnings[1]


def test_hash_split_is_deterministic_and_never_empty():
    from raycolor.inputs import Item
    from raycolor.pipelines.training.split import split_items

    items = [Item(source=f"/d/{i}.png", relpath=f"{i}.png", uri=f"/d/{i}.png") for i in range(50)]
    train, val = split_items(items, 0.2)
    train_r, val_r = split_items(list(reversed(items)), 0.2)  # membership depends on the source alone
    assert {it.source for it in val} == {it.source for it in val_r}
    assert {it.source for it in train} == {it.source for it in train_r}
    assert 0 < len(val) < 25 and len(train) + len(val) == 50
    two = items[:2]
    for frac in (1e-9, 0.999999):
        t, v = split_items(two, frac)
        assert len(t) == 1 and len(v) == 1


def test_shard_split_equals_split_items():
    """Training holds no item list: per-shard SplitStats, summed, choose a rule that each shard's rows
    apply alone; the result is split_items' on the whole list, boundary moves included."""
    from raycolor.inputs import Item
    from raycolor.pipelines.training.split import Split, SplitStats, split_items

    items = [Item(source=f"s3://b/d/{i}.jpg", relpath=f"{i}.jpg", uri=f"s3://b/d/{i}.jpg") for i in range(200)]
    cases = [(items, 0.1), (items, 0.5), (items[:2], 1e-9), (items[:2], 0.999999), (items[:7], 1e-9),
             (items[:7], 0.999999), (items[:3], 0.4)]
    for its, frac in cases:
        shards = [its[a : a + 13] for a in range(0, len(its), 13)]  # uneven shards, one of them short
        stats = sum((SplitStats.of((i.source for i in sh), frac) for sh in shards), SplitStats())
        rule, n_train, n_val = Split.choose(stats, frac)
        train, val = split_items(its, frac)
        assert [i for sh in shards for i in sh if not rule.is_val(i.source)] == train, (len(its), frac)
        assert [i for sh in shards for i in sh if rule.is_val(i.source)] == val, (len(its), frac)
        assert (n_train, n_val) == (len(train), len(val))
    with pytest.raises(ValueError, match="need at least 2 images"):
        Split.choose(SplitStats.of(["/d/only.png"], 0.1), 0.1)


# --------------------------------------------------------------------------------------------- Ray

slow = pytest.mark.slow


# The fits below train the classification head: it runs every step the regression head does (two stages, DDP on
# two workers, checkpoints, resume) plus its own (the prior pass, cached in OUTPUT and read again on resume). The
# regression head trains on Ray Train in tests/test_quality.py and the demo; the steps of both heads, without Ray,
# are tests/test_train_steps*.py.
HEAD = "classification"


def config(data, out, **kw):
    return base_config(str(data), str(out), head=HEAD, **kw)


@pytest.fixture(scope="module")
def resumed_run(ray_local, tmp_path_factory):
    """One epoch, then the same command with epochs=2: the second call resumes and trains epoch 2 only."""
    from raycolor.pipelines.training.driver import fit

    root = tmp_path_factory.mktemp("train")
    data = make_images(root / "data")
    out = root / "out"
    first = fit(config(data, out, epochs=1))
    lines_after_first = read_lines(out / "metrics.jsonl")
    prior_after_first = ((out / "prior.json").read_text(), (out / "prior.json").stat().st_mtime_ns)
    model_after_first = checkpoint.load(first.model_uri)
    shutil.copytree(out, root / "out-after-1-epoch")
    second = fit(config(data, out, epochs=2))
    return {
        "data": data,
        "out": out,
        "out_after_1": root / "out-after-1-epoch",
        "first": first,
        "second": second,
        "lines_after_first": lines_after_first,
        "prior_after_first": prior_after_first,
        "model_after_first": model_after_first,
    }


@slow
def test_two_stage_training_exports_a_loadable_model(resumed_run):
    out, second = resumed_run["out"], resumed_run["second"]
    lines = read_lines(out / "metrics.jsonl")
    assert [m["epoch"] for m in lines] == [1, 2]
    assert [m["stage"] for m in lines] == ["frozen", "finetune"]
    assert_finite_lines(lines)
    assert lines[1]["val_loss"] < lines[0]["val_loss"], lines
    assert lines[1]["val_psnr"] > lines[1]["baseline_psnr"] - 1.0  # sane, not a strict quality bar
    assert lines[0]["train_images"] > 0 and lines[0]["val_images"] > 0  # broken.png was dropped, not fatal
    assert second.metrics == lines[-1] and second.metrics_uri == str(out / "metrics.jsonl")
    assert second.model_uri == str(out / "model")
    model, meta = checkpoint.load(second.model_uri)
    assert meta.render_size == SIZE and meta.extra["epoch"] == 2
    with torch.no_grad():
        logits = model(torch.rand(1, 1, SIZE, SIZE) * 100)
    assert logits.shape == (1, meta.n_bins, SIZE, SIZE) and torch.isfinite(logits).all()
    img = (np.random.default_rng(0).random((SIZE + 8, SIZE, 3)) * 255).astype(np.uint8)
    got = colorize_rgb(model, [img], render_size=meta.render_size)[0]  # the annealed mean, at full size
    assert got.shape == img.shape and got.dtype == np.uint8
    # the core files only: the training state stays in the checkpoints
    assert sorted(os.listdir(out / "model")) == ["config.json", "weights.pt"]
    # curves (matplotlib is in the dev extra): loss and PSNR vs the grey baseline
    assert second.curves_uri == str(out / "curves.png")
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@slow
def test_rerun_resumes_from_checkpoint_with_optimizer_state(resumed_run):
    from raycolor.pipelines.training.checkpoints import TRAIN_STATE_NAME
    from raycolor.pipelines.training.driver import fit

    out, first, second = resumed_run["out"], resumed_run["first"], resumed_run["second"]
    assert first.epochs_run == 1 and second.epochs_run == 1
    assert len(resumed_run["lines_after_first"]) == 1
    lines = read_lines(out / "metrics.jsonl")
    assert lines[0] == resumed_run["lines_after_first"][0]  # the earlier line is kept, not re-trained
    assert lines[0]["resumed_from"] == 0 and lines[1]["resumed_from"] == 1
    # AdamW's step count in the final state covers both epochs: its state was restored, not rebuilt
    state = torch.load(checkpoint_dirs(out)[-1] / TRAIN_STATE_NAME, map_location="cpu", weights_only=True)
    assert state["epoch"] == 2 and state["stage"] == "finetune" and state["history"] == lines
    decoder_first = state["optimizer"]["param_groups"][0]["params"][0]
    step = float(state["optimizer"]["state"][decoder_first]["step"])
    assert step == lines[0]["steps"] + lines[1]["steps"] and lines[1]["steps"] > 0
    # an encoder param in a fine-tuned block has state from epoch 2 only; a frozen block's has none
    encoder = state["optimizer"]["param_groups"][1]["params"]
    assert float(state["optimizer"]["state"][encoder[-1]]["step"]) == lines[1]["steps"]
    assert encoder[0] not in state["optimizer"]["state"]
    # a finished run: the same command returns without training (how fast is for the benches, not a test)
    again = fit(config(resumed_run["data"], out, epochs=2), progress=False)
    assert again.epochs_run == 0 and again.metrics == lines[-1] and again.images_per_s == 0
    assert read_lines(out / "metrics.jsonl") == lines


@slow
def test_the_prior_pass_is_made_once_cached_and_carried_by_the_model(resumed_run):
    """The classification head's prior: one Ray Data pass, cached in OUTPUT/prior.json; the exported model is a
    classification checkpoint carrying the bins and that prior; the resumed run read the cached pass."""
    out = resumed_run["out"]
    text, stamp = resumed_run["prior_after_first"]
    prior = json.loads(text)
    bins = abbins.derive_bins()
    assert prior["bins"] == bins.tolist() and sum(prior["counts"]) > 0
    counts = torch.tensor(prior["counts"], dtype=torch.float64)
    torch.testing.assert_close(torch.tensor(prior["weights"]), abbins.rebalancing_weights(counts, bins))
    for model, meta in (resumed_run["model_after_first"], checkpoint.load(resumed_run["second"].model_uri)):
        assert (meta.head, meta.n_bins) == ("classification", len(bins))
        assert torch.equal(model.prior_weights, torch.tensor(prior["weights"]))
    assert (out / "prior.json").stat().st_mtime_ns == stamp  # the resumed run read the cached pass, made none


# Training on S3 (an S3 prefix and a tar shard in; checkpoints, metrics and model out), with a stage switch
# inside one attempt and a training worker's node lost mid-run (Ray Train restoring from the last checkpoint),
# is tests/test_chaos.py::test_train_node_of_a_worker_removed_restores_from_checkpoint: one fit for both.


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])  # what an interrupted upload leaves


@slow
def test_corrupt_latest_checkpoint_is_never_loaded(resumed_run, tmp_path):
    from raycolor.pipelines.training.driver import fit

    data = str(resumed_run["data"])
    # after a 1-epoch run the only checkpoint is corrupt: nothing safe to resume from, so a clear error
    # (raised on the driver before any worker starts) rather than a silent restart or a bad load
    one = tmp_path / "one"
    shutil.copytree(resumed_run["out_after_1"], one)
    (only,) = checkpoint_dirs(one)
    truncate(only / "weights.pt")
    with pytest.raises(CheckpointError, match="no usable checkpoint.*does not match its model_id"):
        fit(config(data, one, epochs=2), progress=False)

    # with an older checkpoint to fall back to, that one is used: after the 2-epoch run, corrupt epoch 2;
    # a re-run asking for 1 epoch finds epoch 1 intact and done, and exports it (never the corrupt one)
    two = tmp_path / "two"
    shutil.copytree(resumed_run["out"], two)
    first, second = checkpoint_dirs(two)
    truncate(second / "weights.pt")
    result = fit(config(data, two, epochs=1), progress=False)
    assert result.epochs_run == 0 and result.metrics["epoch"] == 1
    model, meta = checkpoint.load(result.model_uri)
    assert meta.extra["epoch"] == 1
    assert (two / "model" / "weights.pt").read_bytes() == (first / "weights.pt").read_bytes()
    assert [m["epoch"] for m in read_lines(two / "metrics.jsonl")] == [1]
