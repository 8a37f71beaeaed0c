"""Folder listings at scale: the driver's peak memory and the wall time of `raycolor list` (listing in Ray
tasks) against one listing of everything on the driver (what the command did before: inputs.list_items,
then the parts written from the driver's list), and `raycolor colorize FOLDER`'s driver peak memory and
time to its first finished shard (the folder listed in tasks too), for folder trees of --sizes empty `.jpg`
files (each becomes an error row at once: the bookkeeping is measured, not decoding).

The tree is `root/cNN/bNNN/NNNNNN.jpg` (collections, boxes: an archive's usual shape), 1,000 files per
box. Both sides write the same manifest parts (--shard-size entries each) to a fresh folder. Figures, from
one run: per size and side, wall seconds and peak RSS (VmHWM) of the driver process; the ratio of the
largest to the smallest size's RSS tells whether the driver grows with the archive.

    .venv/bin/python bench/list_scale.py                        # 20k and 200k files
    .venv/bin/python bench/list_scale.py --sizes 20000 1000000  # ~1M empty files: a few GB of inodes
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from archive_scale import checkpoint_dir, env, first_shard, peak_rss_mb

ON_DRIVER = r"""
import io, sys
import pyarrow as pa, pyarrow.parquet as pq
from raycolor import inputs, storage
src, out, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
items = inputs.list_items([src])
for k, a in enumerate(range(0, len(items), size)):
    chunk = items[a:a + size]
    buf = io.BytesIO()
    pq.write_table(pa.table({"uri": [i.uri for i in chunk], "relpath": [i.relpath for i in chunk]}), buf)
    storage.write_bytes_atomic(f"{out}/part-{k:05d}.parquet", buf.getvalue())
print(len(items))
"""


def make_tree(root: Path, n: int) -> None:
    for i in range(n):
        d = root / f"c{i // 100_000:02d}" / f"b{(i // 1000) % 100:03d}"
        if i % 1000 == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"{i:07d}.jpg").touch()


def measure(cmd: list[str]) -> dict:
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, peak_rss_mb(proc.pid) or 0.0)
        time.sleep(0.05)
    out = proc.stdout.read()
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{out[-2000:]}")
    return {"wall_s": round(time.perf_counter() - t, 1), "driver_peak_rss_mb": round(peak, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000])
    ap.add_argument("--shard-size", type=int, default=10_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    figures = {}
    with tempfile.TemporaryDirectory(prefix="list-scale-") as tmp:
        ckpt = checkpoint_dir(Path(tmp))
        for n in args.sizes:
            src = Path(tmp) / f"tree-{n}"
            make_tree(src, n)
            fig = {
                "tasks": measure([sys.executable, "-m", "raycolor.cli", "list", str(src), "--output", f"{tmp}/tasks-{n}",
                                  "--shard-size", str(args.shard_size)]),
                "driver": measure([sys.executable, "-c", ON_DRIVER, str(src), f"{tmp}/driver-{n}", str(args.shard_size)]),
            }
            fig["colorize"] = first_shard(src, Path(tmp) / f"colorized-{n}", ckpt, 900)
            figures[n] = fig
            print(f"{n:>10,} files: list in tasks {fig['tasks']['wall_s']} s, driver peak RSS {fig['tasks']['driver_peak_rss_mb']} MB"
                  f" | one listing on the driver {fig['driver']['wall_s']} s, {fig['driver']['driver_peak_rss_mb']} MB"
                  f" | colorize FOLDER: first shard {fig['colorize']['first_shard_s']} s, driver peak RSS "
                  f"{fig['colorize']['driver_peak_rss_mb']} MB", flush=True)
    lo, hi = min(figures), max(figures)
    for side in ("tasks", "driver", "colorize"):
        ratio = figures[hi][side]["driver_peak_rss_mb"] / figures[lo][side]["driver_peak_rss_mb"]
        figures[f"rss_ratio_{side}"] = round(ratio, 2)
        print(f"{side}: driver peak RSS at {hi:,} / at {lo:,} files = {ratio:.2f}x")
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
