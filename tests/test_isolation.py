"""One image's unexpected exception is that image's error row, at every stage, never a failed task; and a bug that
fails every image stops the run (raycolor.core.failures, ColorizeConfig.stop_after_internal).

Ray-free: the stages run by hand as tests/test_stages.py runs them. The fault is injected where a library would
raise (Pillow's encoder, the decoder, the model's forward) for one chosen image, identified by its size: the
files and everything around them are real. The run-level stop is checked on the rows finish_batch really hands
back, through the driver's own counter.
"""

from __future__ import annotations

import logging
import struct

import numpy as np
import pytest
import torch
from support import encoded, noise, one_row_each
from test_stages import GOOD, _config, _inputs, _run_stages, _shards

from raycolor.core import failures
from raycolor.core.images import decode as real_decode
from raycolor.inputs import reading
from raycolor.outputs import ledger
from raycolor.pipelines import colorize as colorize_driver
from raycolor.pipelines import stages

# the odd image: a size no GOOD image has, so the injected fault strikes it alone
ODD = ("odd.png", (19, 23))


@pytest.fixture(scope="module")
def model(tiny_ckpt):
    from raycolor.core import checkpoint

    return checkpoint.load(tiny_ckpt)


def _with_odd(tmp_path):
    rel, (h, w) = ODD
    manifest = _inputs(tmp_path / "in", {rel: encoded(noise(w, h, 7), "PNG")})
    return manifest, [str(tmp_path / "in" / r) for r, _ in GOOD] + [str(tmp_path / "in" / rel)]


def _check_one_internal(out, srcs, finished, where: str, exc_name: str) -> None:
    """The odd image's row is `internal: <type>: ... (in <where>)`; every other image is written."""
    odd = srcs[-1]
    rows = one_row_each(out, srcs)
    row = rows[odd]
    assert row["status"] == "error" and ledger.reason_of(row["error"]) == failures.INTERNAL, row
    assert row["error"].startswith(f"internal: {exc_name}: ") and row["error"].endswith(f"(in {where})"), row["error"]
    assert row["output"] is None and row["metadata"] is None
    assert all(rows[s]["status"] == "ok" for s in srcs[:-1]), rows
    back = {r["source"]: r["internal"] for r in finished}
    assert back[odd] == row["error"] and not any(back[s] for s in srcs[:-1])


def test_an_exception_in_encoding_is_that_images_row(tmp_path, tiny_ckpt, model, monkeypatch, caplog):
    """The issue's first reproduction, in kind: the encoder raised struct.error, which ended the task and the run.
    Now it is the image's row, and the traceback is logged once however many images meet the same line."""
    m, meta = model
    manifest, srcs = _with_odd(tmp_path)
    real = stages.formats.encode

    def encode(rgb, *a, **kw):
        if rgb.shape[:2] == ODD[1]:
            struct.pack(">I", 1 << 40)  # what a too-large pHYs did inside the PNG writer
        return real(rgb, *a, **kw)

    monkeypatch.setattr(stages.formats, "encode", encode)
    out = tmp_path / "out"
    with caplog.at_level(logging.ERROR, logger="raycolor"):
        finished, _ = _run_stages(_config(manifest, out, tiny_ckpt), _shards(manifest, 100), m, meta, block_rows=3)
        _run_stages(_config(manifest, tmp_path / "again", tiny_ckpt), _shards(manifest, 100), m, meta)
    _check_one_internal(out, srcs, finished, "encode", "error")
    logged = [r for r in caplog.records if "internal error in encode" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None  # twice met, once logged, with its traceback


def test_an_exception_in_decoding_is_that_images_row(tmp_path, tiny_ckpt, model, monkeypatch):
    """Anything the decoder raises besides DecodeError (a library's own bug on a hostile file) is the image's row:
    the reading loop (training's too) goes on with the next item."""
    m, meta = model
    manifest, srcs = _with_odd(tmp_path)

    def decode(data, **kw):
        got = real_decode(data, **kw)
        if got.rgb.shape[:2] == ODD[1]:
            raise IndexError("tuple index out of range")  # as Pillow plugins have raised on odd headers
        return got

    monkeypatch.setattr(reading, "decode", decode)
    out = tmp_path / "out"
    finished, _ = _run_stages(_config(manifest, out, tiny_ckpt), _shards(manifest, 100), m, meta, block_rows=3)
    _check_one_internal(out, srcs, finished, "decode", "IndexError")


class _Fragile(torch.nn.Module):
    """The model, raising for any batch that holds a flat render (the odd image, one grey below; the others are noise)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        flat = x.flatten(1)
        if bool(((flat.max(1).values - flat.min(1).values) < 1e-6).any()):
            raise RuntimeError("a kernel failed on this input")
        return self.inner(x)


def test_an_exception_in_the_model_costs_only_its_image(tmp_path, tiny_ckpt, model):
    """The model raising for a batch: the batch is tried again an image at a time, and only the image that still
    raises becomes its row; its batch-mates are written."""
    m, meta = model
    rel, (h, w) = ODD
    grey = np.full((h, w, 3), 128, np.uint8)
    manifest = _inputs(tmp_path / "in", {rel: encoded(grey, "PNG")})
    srcs = [str(tmp_path / "in" / r) for r, _ in GOOD] + [str(tmp_path / "in" / rel)]
    out = tmp_path / "out"
    # model batches of 2 (test_stages._config): the odd image shares its batch with a good one
    finished, _ = _run_stages(_config(manifest, out, tiny_ckpt), _shards(manifest, 100), _Fragile(m), meta,
                              block_rows=8)
    _check_one_internal(out, srcs, finished, "model", "RuntimeError")


def test_a_bug_that_fails_every_image_stops_the_run(tmp_path, tiny_ckpt, model, monkeypatch):
    """Every image failing the same way is a bug, not a bad archive: the driver's counter, fed the rows
    finish_batch hands back, stops at the limit with a message that says what to do; below the limit, or with
    a good row in between, it goes on."""
    m, meta = model
    manifest, srcs = _with_odd(tmp_path)

    def encode(*a, **kw):
        raise ValueError("a broken installation")

    monkeypatch.setattr(stages.formats, "encode", encode)
    finished, _ = _run_stages(_config(manifest, tmp_path / "out", tiny_ckpt), _shards(manifest, 100), m, meta)
    col = [r["internal"] for r in finished]
    assert len(col) == len(srcs) and all(col)

    colorize_driver._InternalStreak(len(col) + 1).add(col)  # not yet
    colorize_driver._InternalStreak(0).add(col * 10)  # 0: never
    streak = colorize_driver._InternalStreak(3)
    streak.add(col[:2] + [""] + col[:2])  # a good row in between resets the count
    with pytest.raises(colorize_driver.InternalErrors) as e:
        colorize_driver._InternalStreak(len(col)).add(col)
    msg = str(e.value)
    assert f"the last {len(col)} images" in msg and "ValueError: a broken installation" in msg
    assert "--stop-after-internal 0" in msg and "re-run the same command" in msg
