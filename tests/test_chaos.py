"""Chaos on real processes and real (multi-node) Ray clusters: the driver interrupted, a node lost mid-run,
a full disk, a checkpoint that becomes unreadable -- and still exactly one row and one output per input.

Every scenario runs its own Ray in a fresh subprocess (the `raycolor` CLI, or a small driver script that
builds a ``ray.cluster_utils.Cluster``), so nothing here touches the session-scoped ``ray_local`` of the
pytest process. Nothing of Ray or S3 is mocked.
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

from raycolor.ray_colorize import read_manifest
from tests.test_ledger_ray import _img, _one_row_each

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra) -> dict:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "RAY_DEDUP_LOGS": "0", **extra}


def _cli(*args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "raycolor.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, env=popen.pop("env", None) or _env(), **popen)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _wait_for(cond, proc: subprocess.Popen | None, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the driver ended before {what}: rc {proc.returncode}\n{err.decode()[-3000:]}")
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
    rows = _one_row_each(out, [str(p) for p in src.iterdir()])
    assert {r["status"] for r in rows.values()} == {"ok"}, rows
    assert sorted(p.name for p in (out / "images").iterdir() if not p.name.startswith(".")) == sorted(
        f"{i:03d}.png" for i in range(n))
    assert sorted(r["output"] for r in rows.values()) == sorted(str(out / "images" / f"{i:03d}.png") for i in range(n))


# --------------------------------------------------------------------------------------------
# 1. Ctrl-C / SIGTERM of the driver
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_driver_interrupted_stops_cleanly_and_the_same_command_resumes(tiny_ckpt, tmp_path, sig, code):
    src, out = tmp_path / "in", tmp_path / "out"
    n = 15
    for i in range(n):
        _img(src / f"{i:03d}.png", 200 + i)
    cmd = ["colorize", str(src), "--output", str(out), "--checkpoint", tiny_ckpt, "--batch-size", "1", "--shard-size", "3"]
    proc = _cli(*cmd)
    try:
        _wait_for(lambda: any((out / "_stats").glob("*.json")), proc, 240, "the first finished shard")
        # Ctrl-C in a terminal reaches the whole foreground process group; a scheduler's SIGTERM the driver
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
        t0 = time.time()
        _, err = proc.communicate(timeout=60)
        stopped_s = time.time() - t0
    finally:
        _kill_group(proc)
    err = err.decode()
    assert proc.returncode == code, err[-3000:]
    assert stopped_s < 30, f"took {stopped_s:.1f} s to stop"
    done = _finished_rows(out)
    assert 0 < done < n, "the signal must land mid-run for this test to mean anything"
    hint = [line for line in err.splitlines() if "run the same command to resume" in line]
    assert len(hint) == 1 and hint[0].endswith("raycolor " + " ".join(cmd)), err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert not (out / "_lock.json").exists(), "the OUTPUT lock must be released"
    _assert_nothing_partial(out)
    assert not list(out.rglob("*.tmp")), sorted(out.rglob("*.tmp"))

    again = _cli(*cmd)
    try:
        stdout, err = again.communicate(timeout=300)
    finally:
        _kill_group(again)
    assert again.returncode == 0, err.decode()[-3000:]
    text = stdout.decode()
    assert f"skipped (done before)  {done}" in text and f"ok                     {n}" in text, text
    _assert_exactly_once(out, src, n)
    assert not (out / "_lock.json").exists()
