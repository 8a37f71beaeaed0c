"""Memory of big masters: peak memory of a whole `raycolor colorize` run (driver, workers, object store) on
archive-sized TIFF scans, above the same command on one tiny image, in bytes per pixel.

Machine memory in use (MemTotal - MemAvailable, /proc/meminfo) is sampled every 0.3 s while the command runs,
so everything the run holds counts: the driver, Ray's workers and its object store (shared memory). Each case
runs as a user runs it: `raycolor colorize FOLDER --output OUT --checkpoint CKPT --format png`, a new local Ray
each time. Cases (--cases, default all):

    1x8     one 7200 x 5400 (39 MP) 8-bit grey scan          target <= 0.8 GB above the tiny run (~20 B/pixel)
    24x8    24 of them                                        target <= 3 GB above the tiny run, <= 186 s
    1x16    one 39 MP 16-bit grey scan (16-bit PNG out)
    24x16   24 of them
    100x16  one 100 MP (11,550 x 8,660) 16-bit scan         target: completes within 3 GB above the tiny run
    1x16jp2   one 39 MP 16-bit grey JPEG 2000 master (lossless) in, 16-bit JP2 (lossless) out
    100x16jp2 one 100 MP 16-bit JPEG 2000 master in, JP2 out  target: within 3 GB above the tiny run, as TIFF

    .venv/bin/python bench/big_scans.py --cases 1x8 1x16        # a few minutes on 2 cores
    .venv/bin/python bench/big_scans.py --json                  # everything (~15 min on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

CASES = {"1x8": (1, 8, (5400, 7200)), "24x8": (24, 8, (5400, 7200)), "1x16": (1, 16, (5400, 7200)),
         "24x16": (24, 16, (5400, 7200)), "100x16": (1, 16, (8660, 11550)),
         "1x16jp2": (1, 16, (5400, 7200)), "100x16jp2": (1, 16, (8660, 11550))}


def container(case: str) -> tuple[str, str]:
    """(the masters' suffix, the --format written) of a case: JP2 cases are JP2 in and out, the others TIFF in,
    PNG out."""
    return (".jp2", "jp2") if case.endswith("jp2") else (".tif", "png")


def used_bytes() -> int:
    info = meminfo()
    return info["MemTotal"] - info["MemAvailable"]


def scan(height: int, width: int, bits: int, seed: int) -> np.ndarray:
    """A grey scan-like image: smooth shading plus film grain (compresses like a real scan, not like noise)."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    img = 0.5 + 0.3 * np.sin(6 * x + 3 * y + seed) * np.cos(4 * y)
    img = img + rng.normal(0, 0.02, (height, width)).astype(np.float32)
    top = 65535 if bits == 16 else 255
    return np.clip(img * top, 0, top).astype(np.uint16 if bits == 16 else np.uint8)


def write_scans(folder: Path, n: int, bits: int, size: tuple[int, int], suffix: str = ".tif") -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    first = folder / f"scan-000{suffix}"
    if suffix == ".jp2":  # a lossless master, tiled as archives keep them
        from raycolor.core import jp2

        first.write_bytes(jp2.encode(scan(*size, bits, 0)))
    else:
        Image.fromarray(scan(*size, bits, 0)).save(first, compression="tiff_deflate")
    for i in range(1, n):  # the same pixels under other names: decoding cost is per file, not per content
        (folder / f"scan-{i:03d}{suffix}").write_bytes(first.read_bytes())


def where(top: int = 6) -> str:
    """Where memory is now: the object store's shared memory, and the processes holding the most private memory
    (Pss_Anon: their heaps, not the object store pages they map)."""
    procs = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            anon = next(int(x.split()[1]) for x in (d / "smaps_rollup").read_text().splitlines() if x.startswith("Pss_Anon:"))
            name = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:60] or d.name
        except (OSError, StopIteration):
            continue
        procs.append((anon * 1024, name))
    procs.sort(reverse=True)
    shm = meminfo()["Shmem"]
    return f"shared memory {shm / 1e9:.2f} GB; " + "; ".join(f"{b / 1e9:.2f} GB {n}" for b, n in procs[:top])


def meminfo() -> dict[str, int]:
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            info[k] = int(v.split()[0]) * 1024
    return info


def own_bytes(root: int) -> int:
    """Memory of one command alone: the private memory (Pss_Anon) of its process tree (the driver, Ray's own
    processes and workers: a local Ray runs under the driver) plus the machine's shared memory (Ray's object
    store). For figures on a machine where something else runs too; the headline stays machine-wide."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            total += 1024 * next(int(x.split()[1]) for x in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
                                 if x.startswith("Pss_Anon:"))
        except (OSError, StopIteration):
            pass
    return total + meminfo()["Shmem"]


def run(cmd: list[str], log: Path, breakdown: bool = False) -> tuple[int, float, int]:
    """(peak bytes in use while cmd runs, seconds, returncode). breakdown: print where the memory was at the peak,
    and the command's own peak (own_bytes)."""
    peak, stop, at_peak, own = [used_bytes()], threading.Event(), [""], [0]
    proc: list[subprocess.Popen] = []

    def sample() -> None:
        while not stop.wait(0.3):
            now = used_bytes()
            if breakdown and proc:
                own[0] = max(own[0], own_bytes(proc[0].pid))
            if now > peak[0]:
                peak[0] = now
                if breakdown:
                    at_peak[0] = where()

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT))
        rc = proc[0].wait()
    elapsed = time.perf_counter() - t0
    stop.set()
    t.join()
    if breakdown:
        print(f"  at the peak: {at_peak[0]}\n  the command's own peak: {own[0] / 1e9:.2f} GB", flush=True)
    return peak[0], elapsed, rc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more colorize flags, e.g. --memory-per-cpu 2GB")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--breakdown", action="store_true", help="print where the memory was at each case's peak")
    args = ap.parse_args()

    import torch
    from PIL import Image

    from raycolor.core import checkpoint
    from raycolor.core.model import build_colorizer

    raycolor = [sys.executable, "-m", "raycolor.cli", "colorize"]
    figures: dict = {}
    with tempfile.TemporaryDirectory(prefix="big-scans-") as tmp:
        tmp = Path(tmp)
        ckpt = str(tmp / "model")
        torch.manual_seed(0)
        checkpoint.save(ckpt, build_colorizer(weights=None), render_size=224)
        (tmp / "tiny").mkdir()
        Image.fromarray(scan(48, 64, 8, 0)).save(tmp / "tiny" / "tiny.tif")

        def colorize(folder: Path, name: str, fmt: str = "png") -> tuple[int, float, int]:
            cmd = [*raycolor, str(folder), "--output", str(tmp / f"out-{name}"), "--checkpoint", ckpt,
                   "--format", fmt, *args.extra]
            return run(cmd, tmp / f"{name}.log", breakdown=args.breakdown)

        idle = used_bytes()
        tiny_peak, tiny_s, rc = colorize(tmp / "tiny", "tiny")
        assert rc == 0, (tmp / "tiny.log").read_text()[-2000:]
        print(f"tiny run: {(tiny_peak - idle) / 1e9:.2f} GB above idle, {tiny_s:.1f} s", flush=True)
        figures["tiny"] = {"above_idle_gb": round((tiny_peak - idle) / 1e9, 2), "seconds": round(tiny_s, 1)}
        for case in args.cases:
            n, bits, (h, w) = CASES[case]
            folder = tmp / f"in-{case}"
            suffix, fmt = container(case)
            write_scans(folder, n, bits, (h, w), suffix)
            peak, secs, rc = colorize(folder, case, fmt)
            log = (tmp / f"{case}.log").read_text()
            above = peak - tiny_peak
            row = {"scans": n, "bits": bits, "megapixels": round(h * w / 1e6, 1), "returncode": rc,
                   "peak_above_tiny_gb": round(above / 1e9, 2), "bytes_per_pixel": round(above / (h * w), 1),
                   "seconds": round(secs, 1)}
            figures[case] = row
            print(f"{case}: {n} x {h * w / 1e6:.0f} MP {bits}-bit -> peak {above / 1e9:.2f} GB above the tiny run "
                  f"({above / (h * w):.0f} B/pixel of one scan), {secs:.0f} s, exit {rc}", flush=True)
            if rc:
                print(log[-1500:], flush=True)
            for p in folder.iterdir():
                p.unlink()
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
