"""The driver's bookkeeping at archive scale: `raycolor colorize` over big manifests, run as a user runs it.

Entries name files that do not exist, so each becomes an error row at once: what is measured is the
bookkeeping (planning shards, the ledger, the summary), not decoding or the model.

Figures, from one run of this script:

* **driver**: for each manifest size in --sizes (default 20,000 and 2,000,000 entries), the driver's peak RSS
  (VmHWM of the `raycolor` process) and the time from start to the first finished shard (the first
  OUTPUT/_stats record); the driver is then stopped (SIGINT). Targets (2 cores): 2M entries -> first shard
  <= 60 s, driver peak RSS within +25 % of the 20k run.
* **full run** of --full entries (default 200,000; pass a smaller number on a small machine): rows/s, the
  number of files under OUTPUT/manifest (target <= 40 for 200k), and a re-run over the finished run
  (target <= 30 s).

    .venv/bin/python bench/archive_scale.py                      # the issue's sizes (the full run is long)
    .venv/bin/python bench/archive_scale.py --full 20000         # a quicker full run
    .venv/bin/python bench/archive_scale.py --sizes 20000 200000 --full 0 --json

The S3 latency figures (0 ms vs 30 ms added per request) come from bench/s3_latency.py, and CPU per image
outside the model actor from bench/colorize_throughput.py (its CPU accounting, --device-codec on|off).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def write_manifest(path: Path, n: int, missing_root: Path) -> None:
    """A Parquet manifest of n entries naming files that do not exist (row groups of 100k)."""
    with pq.ParquetWriter(path, pa.schema([("uri", pa.string())])) as w:
        for start in range(0, n, 100_000):
            stop = min(n, start + 100_000)
            w.write_table(pa.table({"uri": [f"{missing_root}/d{i // 1000:05d}/{i:09d}.jpg" for i in range(start, stop)]}))


def checkpoint_dir(root: Path) -> str:
    import torch

    from raycolor.core import checkpoint
    from raycolor.core.model import build_colorizer

    torch.manual_seed(0)
    path = root / "model"
    checkpoint.save(str(path), build_colorizer(weights=None), render_size=32)
    return str(path)


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def colorize_cmd(manifest: Path, out: Path, ckpt: str) -> list[str]:
    return [sys.executable, "-m", "raycolor.cli", "colorize", str(manifest), "--output", str(out), "--checkpoint", ckpt,
            "--progress-every", "30"]


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


def first_shard(manifest: Path, out: Path, ckpt: str, timeout_s: float) -> dict:
    """Start the driver, wait for the first stats record, note the driver's peak RSS, stop it."""
    start = time.perf_counter()
    proc = subprocess.Popen(colorize_cmd(manifest, out, ckpt), env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    first, peak = None, 0.0
    while time.perf_counter() - start < timeout_s and proc.poll() is None:
        peak = max(peak, peak_rss_mb(proc.pid) or 0.0)
        stats = out / "_stats"
        if stats.is_dir() and any(p.suffix == ".json" for p in stats.iterdir()):
            first = time.perf_counter() - start
            break
        time.sleep(0.2)
    peak = max(peak, peak_rss_mb(proc.pid) or 0.0)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return {"first_shard_s": None if first is None else round(first, 1), "driver_peak_rss_mb": round(peak, 1),
            "stderr_tail": (proc.stderr.read() or "")[-500:] if first is None else ""}


def full_run(manifest: Path, out: Path, ckpt: str, n: int) -> dict:
    t = time.perf_counter()
    r = subprocess.run(colorize_cmd(manifest, out, ckpt), env=env(), capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if r.returncode:
        sys.exit(f"full run failed ({r.returncode}): {r.stderr[-2000:]}")
    parts = len(list((out / "manifest").glob("*.parquet")))
    rows = pq.read_table(out / "manifest", columns=["source"]).num_rows
    t = time.perf_counter()
    again = subprocess.run(colorize_cmd(manifest, out, ckpt), env=env(), capture_output=True, text=True)
    rerun = time.perf_counter() - t
    if again.returncode:
        sys.exit(f"re-run failed ({again.returncode}): {again.stderr[-2000:]}")
    return {"entries": n, "elapsed_s": round(elapsed, 1), "rows_per_s": round(n / elapsed, 1),
            "manifest_files": parts, "manifest_rows": rows, "rerun_s": round(rerun, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 2_000_000])
    ap.add_argument("--full", type=int, default=200_000, help="entries of the full run (0: skip it)")
    ap.add_argument("--first-shard-timeout", type=float, default=600)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    figures: dict = {"load_avg_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="raycolor-bench-archive-") as tmp:
        tmp = Path(tmp)
        ckpt = checkpoint_dir(tmp)
        figures["driver"] = {}
        for n in args.sizes:
            manifest = tmp / f"manifest-{n}.parquet"
            write_manifest(manifest, n, tmp / "missing")
            fig = first_shard(manifest, tmp / f"out-{n}", ckpt, args.first_shard_timeout)
            figures["driver"][n] = fig
            print(f"{n:>10,} entries: first shard after {fig['first_shard_s']} s, driver peak RSS "
                  f"{fig['driver_peak_rss_mb']} MB {fig['stderr_tail']}", flush=True)
        small, big = min(args.sizes), max(args.sizes)
        if small != big and figures["driver"][small]["driver_peak_rss_mb"]:
            ratio = figures["driver"][big]["driver_peak_rss_mb"] / figures["driver"][small]["driver_peak_rss_mb"]
            figures["rss_ratio"] = round(ratio, 3)
            print(f"driver peak RSS {big:,} / {small:,} entries: {ratio:.2f} (target <= 1.25)")
        if args.full:
            manifest = tmp / f"manifest-{args.full}.parquet"
            if not manifest.exists():
                write_manifest(manifest, args.full, tmp / "missing")
            fig = full_run(manifest, tmp / "full", ckpt, args.full)
            figures["full"] = fig
            print(f"full run of {args.full:,} entries: {fig['elapsed_s']} s ({fig['rows_per_s']} rows/s), "
                  f"{fig['manifest_files']} manifest files holding {fig['manifest_rows']:,} rows, "
                  f"re-run over the finished run {fig['rerun_s']} s")
    figures["load_avg_end"] = os.getloadavg()
    print(f"load average: start {figures['load_avg_start']}, end {figures['load_avg_end']}")
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
