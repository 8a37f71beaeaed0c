"""Faults on real processes, one machine: the driver interrupted (Ctrl-C at a terminal, a scheduler's SIGTERM),
a full disk, a checkpoint that becomes unreadable -- and still exactly one row and one output per input.

Every driver is a real subprocess (the `raycolor` CLI, joining the session's Ray as a cluster job, or in local
mode where that is the point) or a real colorize run behind tests/faultproxy.py. Nothing of Ray or S3 is
mocked. The multi-node scenarios are in test_chaos.py (a separate file, so that pytest-xdist runs its long
cluster fixture on one worker while the other takes these).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from support import one_row_each, subprocess_env, write_image

from raycolor.outputs.ledger import read_manifest
from tests.drivers import finish, joining_env, kill_group, output, spawn

pytestmark = pytest.mark.slow


def _cli(*args: str, env: dict, logs: Path) -> subprocess.Popen:
    """`raycolor *args` as a subprocess in its own session, printing into files under `logs` (drivers.spawn)."""
    return spawn([sys.executable, "-m", "raycolor.cli", *args], env, logs)


def _wait_for(cond, proc: subprocess.Popen | None, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            proc.wait()
            err = output(proc)[1]
            raise AssertionError(f"the driver ended before {what}: rc {proc.returncode}\n{err[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _finished_rows(out: Path) -> int:
    return sum(json.loads(p.read_text())["rows"] for p in (out / "_stats").glob("*.json"))


def _assert_nothing_partial(out: Path) -> None:
    """Every file under a final name is whole: images decode, manifest parts and stats records parse."""
    import pyarrow.parquet as pq

    for p in out.rglob("*"):
        if not p.is_file() or p.name.startswith(".") or p.name.endswith(".tmp"):
            continue
        if p.suffix == ".png":
            with Image.open(p) as im:
                im.load()
        elif p.suffix == ".parquet":
            pq.read_table(p)
        elif p.suffix == ".json":
            json.loads(p.read_text())


def _assert_exactly_once(out: Path, src: Path, n: int) -> None:
    rows = one_row_each(out, [str(p) for p in src.iterdir()])
    assert {r["status"] for r in rows.values()} == {"ok"}, rows
    assert sorted(p.name for p in (out / "images").iterdir() if not p.name.startswith(".")) == sorted(
        f"{i:03d}.png" for i in range(n))
    assert sorted(r["output"] for r in rows.values()) == sorted(str(out / "images" / f"{i:03d}.png") for i in range(n))


# --------------------------------------------------------------------------------------------
# 1. Ctrl-C / SIGTERM of the driver
# --------------------------------------------------------------------------------------------


def _interrupt(cmd: list[str], out: Path, sig: int, env: dict, after: int, logs: Path) -> tuple[int, str, float]:
    """Start `raycolor *cmd`, send `sig` once more than `after` rows are finished; (rc, stderr, seconds to stop)."""
    proc = _cli(*cmd, env=env, logs=logs)
    try:
        _wait_for(lambda: _finished_rows(out) > after if (out / "_stats").exists() else False, proc, 240,
                  "a newly finished shard")
        # Ctrl-C in a terminal reaches the whole foreground process group; a scheduler's SIGTERM the driver
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
        t0 = time.time()
        proc.wait(timeout=60)
        return proc.returncode, output(proc)[1], time.time() - t0
    finally:
        kill_group(proc)


def test_driver_interrupted_stops_cleanly_and_the_same_command_resumes(ray_address, tiny_ckpt, tmp_path):
    """Ctrl-C of a local-mode run at a terminal (exit 130), then the same command run as a job on a running
    cluster and stopped by a scheduler's SIGTERM (exit 143), then the same command once more to the end."""
    src, out = tmp_path / "in", tmp_path / "out"
    n = 18
    for i in range(n):
        write_image(src / f"{i:03d}.png", 200 + i)
    cmd = ["colorize", str(src), "--output", str(out), "--checkpoint", tiny_ckpt, "--batch-size", "1", "--shard-size", "3"]
    done = 0
    for sig, code, env in ((signal.SIGINT, 130, subprocess_env()), (signal.SIGTERM, 143, joining_env(ray_address))):
        rc, err, stopped_s = _interrupt(cmd, out, sig, env, after=done, logs=tmp_path / "logs")
        assert rc == code, err[-3000:]
        assert stopped_s < 30, f"took {stopped_s:.1f} s to stop"
        now = _finished_rows(out)
        assert done < now < n, "the signal must land mid-run for this test to mean anything"
        done = now
        hint = [line for line in err.splitlines() if "run the same command to resume" in line]
        assert len(hint) == 1 and hint[0].endswith("raycolor " + " ".join(cmd)), err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        assert not (out / "_lock.json").exists(), "the OUTPUT lock must be released"
        _assert_nothing_partial(out)
        # a write cut off by the stop leaves its temp file only in its shard's spool, which the shard's merge
        # removes (checked at the end)
        assert all("_spool" in p.relative_to(out).parts for p in out.rglob("*.tmp")), sorted(out.rglob("*.tmp"))

    again = _cli(*cmd, env=joining_env(ray_address), logs=tmp_path / "logs")
    text, err = finish(again, timeout=300)
    assert again.returncode == 0, err[-3000:]
    assert f"skipped (done before)  {done}" in text and f"ok                     {n}" in text, text
    _assert_exactly_once(out, src, n)
    assert not (out / "_lock.json").exists()
    spool = out / "_spool"
    assert not list(out.rglob("*.tmp")) and not (spool.exists() and list(spool.iterdir())), sorted(out.rglob("*"))


# --------------------------------------------------------------------------------------------
# 4. Disk full on a local OUTPUT (a small tmpfs), then space freed and the same command re-run
# --------------------------------------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 160 KiB tmpfs mounted at a fresh folder; yields (path, resize(size))."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mnt)], check=False, capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {r.stderr.strip()}")

    def resize(size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True)

    try:
        yield mnt, resize
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_on_local_output_nothing_damaged_and_rerun_finishes(ray_address, tiny_ckpt, tmp_path, small_tmpfs):
    """A real ENOSPC from the kernel (tmpfs of 160 KiB; 16 noise PNGs of ~12 KiB each do not fit). The driver
    joins the session's Ray; the writes fail in its worker processes, as on a cluster."""
    out, resize = small_tmpfs
    src = tmp_path / "in"
    n = 16
    for i in range(n):
        write_image(src / f"{i:03d}.png", 400 + i, (48, 64))
    cmd = ["colorize", str(src), "--output", str(out), "--checkpoint", tiny_ckpt, "--batch-size", "2", "--shard-size", "4",
           "--retries", "1"]
    proc = _cli(*cmd, env=joining_env(ray_address), logs=tmp_path / "logs")
    _, err = finish(proc, timeout=400)
    if proc.returncode == 0:  # the affected images became error rows naming the write failure
        rows = read_manifest(str(out)).to_pylist()
        bad = [r for r in rows if r["status"] != "ok"]
        assert bad and all("No space left on device" in (r["error"] or "") for r in bad), rows
    else:  # or the job stopped with one clear line, no traceback
        assert proc.returncode == 1, (proc.returncode, err[-3000:])
        assert "No space left on device" in err.strip().splitlines()[-1] and "Traceback" not in err, err[-3000:]
    _assert_nothing_partial(out)
    before = {p: p.read_bytes() for p in (out / "images").rglob("*.png")} if (out / "images").exists() else {}
    assert not (out / "_lock.json").exists()

    resize("16m")  # space freed
    again = _cli(*cmd, "--retry-errors", env=joining_env(ray_address), logs=tmp_path / "logs")
    _, err = finish(again, timeout=400)
    assert again.returncode == 0, err[-3000:]
    _assert_exactly_once(out, src, n)
    for p, data in before.items():  # what was already written is intact (same bytes: the model is deterministic)
        assert p.read_bytes() == data, p
    assert json.loads((out / "_SUCCESS.json").read_text())["ok"] == n


# --------------------------------------------------------------------------------------------
# 5. The checkpoint on S3 becomes unreadable mid-colorize, then the model actor dies
# --------------------------------------------------------------------------------------------


def test_checkpoint_unreadable_mid_run_restarting_actor_fails_clearly(ray_local, s3_env, tiny_ckpt, tmp_path):
    """All S3 traffic through tests/faultproxy.py; after the first images, every request for the checkpoint's
    keys is reset, and the model actor process is SIGKILLed so that Ray restarts it: its constructor cannot
    load the model. The job must end with an error naming the checkpoint within a bounded time, not hang."""
    import traceback

    from raycolor.config import ColorizeConfig, StorageConfig
    from tests.drivers import colorize_in_thread, model_actor_mid_run
    from tests.faultproxy import FaultProxy, always

    fs = s3_env.fs()
    bucket = s3_env.bucket("ckpt-gone")
    fs.put(tiny_ckpt, f"{bucket}/model", recursive=True)
    src = tmp_path / "in"
    n = 14
    for i in range(n):
        write_image(src / f"{i:03d}.png", 500 + i)
    out = tmp_path / "out"
    with FaultProxy(s3_env.endpoint) as proxy:
        cfg = ColorizeConfig(inputs=(str(src),), output=str(out), checkpoint=f"s3://{bucket}/model", batch_size=1,
                             shard_size=2, storage=StorageConfig(s3_endpoint=proxy.url, retries=1))
        thread, result = colorize_in_thread(cfg)
        actor = model_actor_mid_run(thread, result, lambda: bool(list((out / "_spool").rglob("*.parquet"))), timeout=240)
        proxy.policy = always("reset", where=lambda m, k: k.startswith(f"/{bucket}/model"))
        os.kill(actor["Pid"], signal.SIGKILL)
        t0 = time.time()
        thread.join(timeout=240)
        took = time.time() - t0
        hung = thread.is_alive()
    assert not hung, "colorize hung after the model actor could not be restarted"
    assert "summary" not in result, "a run whose model cannot be loaded cannot have finished every input"
    text = "".join(traceback.format_exception(result["error"]))
    assert f"cannot read checkpoint s3://{bucket}/model" in text, text[-3000:]
    assert took < 240
    assert not (out / "_lock.json").exists()
    _assert_nothing_partial(out)
