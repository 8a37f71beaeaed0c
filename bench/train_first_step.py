"""Training's first step at archive scale: seconds from `fit` starting to rank 0's first optimizer step, on a
Parquet manifest of N entries (default 200,000), for this checkout and optionally an older revision, in one run.

What it measures is what training does before it can step: plan the manifest into shards, start the
workers, expand the first shards into items, read, decode, crop and convert enough of them to fill one
batch. The entries are hard links to a few small JPEGs under distinct names (nothing is de-duplicated away,
and 200k of them cost a few seconds and no disk). The run is stopped at the first step (SIGINT, as Ctrl-C).

    .venv/bin/python bench/train_first_step.py                                  # this checkout, 200k entries
    .venv/bin/python bench/train_first_step.py --before 58ba6b9^ --json         # and an older revision, after

The older revision is checked out into a temporary git worktree and run with the same interpreter. Each run
starts its own local Ray; the two run one after the other, never side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

REPO = Path(__file__).resolve().parent.parent

# Runs in a child process with PYTHONPATH=<checkout>; prints one JSON line. The names moved between
# revisions (raycolor.ray_train -> raycolor.pipelines...), so it looks for fit where each revision has it.
DRIVER = r"""
import _thread, importlib, io, json, sys, time
manifest, output = sys.argv[1:3]
t0 = time.perf_counter()
from raycolor.config import TrainConfig
fit = None
for name in ("raycolor.pipelines.training.driver", "raycolor.pipelines.train",
             "raycolor.ray_train"):
    try:
        fit = importlib.import_module(name).fit
        break
    except (ImportError, AttributeError):
        continue
for name in ("raycolor.pipelines.progress", "raycolor.progress"):
    try:
        TrainProgress = importlib.import_module(name).TrainProgress
        break
    except ImportError:
        continue
first = {}
handle = TrainProgress.handle
def on_event(self, event):
    if event[0] == "step" and "step" not in first:
        first["step"] = time.perf_counter() - t0
        # printed here: Ray Train's own SIGINT handler aborts the run and may exit before fit returns
        print(json.dumps({"first_step_s": first["step"]}), flush=True)
        _thread.interrupt_main()
    return handle(self, event)
TrainProgress.handle = on_event
config = TrainConfig(data=(manifest,), output=output, epochs=1, image_size=32, batch_size=8, workers=1,
                     use_gpu=False, weights=None, freeze_encoder_epochs=1, max_failures=0)
try:
    fit(config, progress=True, terminal=io.StringIO())
except KeyboardInterrupt:
    pass
if "step" not in first:
    print(json.dumps({"first_step_s": None}), flush=True)
"""


def make_manifest(root: Path, n: int, distinct: int = 16) -> Path:
    """n entries naming hard links to `distinct` small JPEGs, 1,000 per folder."""
    rng = np.random.default_rng(0)
    originals = []
    for i in range(distinct):
        path = root / "originals" / f"{i:02d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(path, quality=90)
        originals.append(path)
    uris = []
    for i in range(n):
        link = root / "links" / f"d{i // 1000:04d}" / f"{i:07d}.jpg"
        if i % 1000 == 0:
            link.parent.mkdir(parents=True, exist_ok=True)
        os.link(originals[i % distinct], link)
        uris.append(str(link))
    manifest = root / "train.parquet"
    pq.write_table(pa.table({"uri": uris}), manifest)
    return manifest


def _first_batch_out(since: float) -> bool:
    """Whether Ray Data's log of the run's training dataset (this machine's latest Ray session) shows its split
    operator's first block handed to a worker: the signal for revisions whose progress events the hook misses."""
    logs = Path(tempfile.gettempdir()) / "ray" / "session_latest" / "logs" / "ray-data"
    for path in logs.glob("ray-data-train_*.log"):
        if path.stat().st_mtime < since:
            continue
        if re.search(r"split\(\d+, equal=True\).*Blocks Outputted: [1-9]", path.read_text(errors="replace")):
            return True
    return False


def first_step(checkout: Path, manifest: Path, output: Path, timeout: float) -> dict:
    """Seconds to the first step (rank 0's progress event, where the revision's hook sees it) and to the first
    block handed to the worker (Ray Data's log, every revision). The child is stopped as soon as either is
    known (SIGINT, then SIGKILL to its group), and its Ray is waited out before the next run starts."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    start = time.time()
    t0 = time.monotonic()
    err_path = output.parent / f"{output.name}.stderr"  # a file: a pipe nobody reads would stall the child
    with open(err_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(manifest), str(output)], env=env,
                                cwd=output.parent, stdout=subprocess.PIPE, stderr=err, start_new_session=True)
    os.set_blocking(proc.stdout.fileno(), False)
    result: dict = {"first_step_s": None, "first_batch_s": None}
    buf = b""
    try:
        while time.monotonic() - t0 < timeout and proc.poll() is None:
            buf += proc.stdout.read() or b""
            m = re.search(rb'\{"first_step_s": ([0-9.]+)\}', buf)
            if m:
                result["first_step_s"] = float(m.group(1))
            if result["first_batch_s"] is None and _first_batch_out(start):
                result["first_batch_s"] = time.monotonic() - t0
            if result["first_batch_s"] is not None:  # the signal every revision gives: compare on it
                break
            if result["first_step_s"] is not None and time.monotonic() - t0 > result["first_step_s"] + 90:
                break  # Ray Data's log lines come every few seconds; give up on it after 90 s more
            time.sleep(0.25)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for _ in range(60):  # the child's raylet goes with it; the next run must not share the CPUs with it
            if subprocess.run(["pgrep", "-f", "raylet"], capture_output=True).returncode != 0:
                break
            time.sleep(0.5)
    if result["first_step_s"] is None and result["first_batch_s"] is None:
        tail = err_path.read_text(errors="replace")[-3000:]
        raise SystemExit(f"{checkout}: no first step within {timeout:.0f} s (exit {proc.returncode}):\n{tail}")
    return {k: (round(v, 1) if v is not None else None) for k, v in result.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=200_000)
    ap.add_argument("--before", help="a git revision to measure too, after this checkout (e.g. 58ba6b9^)")
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="raycolor-first-step-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        manifest = make_manifest(root, args.entries)
        made_s = time.perf_counter() - t
        runs = {"now": REPO}
        if args.before:
            old = root / "before"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(old), args.before], check=True)
            runs["before"] = old
        results = {}
        try:
            for name, checkout in runs.items():
                results[name] = first_step(checkout, manifest, root / f"out-{name}", args.timeout)
        finally:
            if args.before:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(root / "before")], check=False)
        load = os.getloadavg()
        report = {"entries": args.entries, "manifest_made_s": round(made_s, 1), "runs": results,
                  "load_avg": [round(x, 2) for x in load]}
        if "before" in results:
            for key in ("first_step_s", "first_batch_s"):
                if results["before"][key] and results["now"][key]:
                    report[f"ratio_now_over_before_{key}"] = round(results["now"][key] / results["before"][key], 3)
        if args.json:
            print(json.dumps(report))
        else:
            for name, r in results.items():
                print(f"{name:>7}: first step after {r['first_step_s']} s, first batch out after {r['first_batch_s']} s")
            print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
