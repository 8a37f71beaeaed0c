#!/usr/bin/env python
"""Bulk-colorization throughput: the model alone vs the whole Ray Data pipeline, on the same images, in one run.

    python bench/colorize_throughput.py                                   # 200 images, render 224, PNG
    python bench/colorize_throughput.py --images 200 --render-size 64     # a quick CPU run
    python bench/colorize_throughput.py --gpus 1 --compile --images 5000  # a GPU node (16 CPUs + 1 GPU)

What it prints (all from one process, one run, so ratios are comparable even on a noisy machine):

* model-only images/s: the Predictor's model (loaded from a checkpoint exactly as the actor loads it) on
  random L batches at the render size, after warm-up, via ``raycolor.core.colorize.predict_ab``, in a Ray
  worker (the same kind of process as the actor: Ray runs workers at nice 15, so on a shared machine a
  measurement in the driver would not be comparable). CUDA: bf16 autocast and channels_last as in the
  actor, plus a torch.compile'd figure with ``--compile``. CPU: fp32, torch threads = the cores (``--cpus``
  or the largest node's CPUs). Measured before and after the end-to-end run; the mean of the two is the
  reference (the spread shows how noisy the machine was).
* end-to-end: ``raycolor.pipelines.colorize.colorize`` over the synthetic inputs, timing every batch the driver
  receives through its ``on_rows(ok, error)`` callback (timed here). steady-state images/s = images completed between the
  10 % and 90 % marks / the time between them; plus time to first output and the total.
* the ratio steady-state / model-only (CPU target: >= 0.70 at the same render size).
* a single-thread CPU profile on 640x480 images (ms/image of decode, prepare, model, compose, encode and the
  two Ray CPU stage functions as a whole), the one-core PNG/JPEG encode rates on the pipeline's own
  outputs, and the PNG target (>= 85 % of cores x one-core PNG rate) when ``--format png``.
* the CPU-sharing ceiling: if the model (all cores) and the CPU stages (one core each) shared the cores
  perfectly, e2e/model = 1 / (1 + c_cpu * model_rate / cores); a measured ratio far below that is
  scheduling loss, not work.

Inputs are N synthetic 640x480 JPEGs (smooth gradients, shapes and noise, quality 90, ~60-100 KB like
photos), generated once into ``--cache-dir``. The checkpoint is a fresh ``build_colorizer(weights=None)``
saved at the render size (throughput does not depend on the weights; gamut fitting does a little: see
"out of gamut" in the profile).

With ``--address`` (an existing cluster) the cache dir must be on storage every node can read (or run it
on a single node); outputs go to ``--output`` (default: a fresh folder in the cache dir, deleted afterwards
unless ``--keep-output``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WIDTH, HEIGHT = 640, 480


# ------------------------------------------------------------------------------------------- inputs


def synthetic_image(seed: int) -> np.ndarray:
    """A photo-like 640x480 RGB image: smooth colour field, a few soft shapes, texture and sensor noise."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (rng.integers(3, 7), rng.integers(4, 9), 3), dtype=np.uint8)
    im = Image.fromarray(coarse).resize((WIDTH, HEIGHT), Image.BICUBIC)
    draw = ImageDraw.Draw(im)
    for _ in range(rng.integers(3, 9)):
        x0, y0 = int(rng.integers(-100, WIDTH)), int(rng.integers(-100, HEIGHT))
        x1, y1 = x0 + int(rng.integers(40, 300)), y0 + int(rng.integers(40, 300))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    im = im.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.8, 2.5))))
    arr = np.asarray(im).astype(np.float32)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    texture = 10 * np.sin(xx / rng.uniform(3, 12) + yy / rng.uniform(5, 20))  # fine detail, as in foliage/fabric
    arr += texture[..., None] * rng.uniform(0.2, 1.0)
    arr += rng.normal(0, rng.uniform(2, 6), arr.shape)  # grain
    return np.clip(arr, 0, 255).astype(np.uint8)


def make_inputs(cache_dir: Path, n: int) -> Path:
    """N synthetic JPEGs in cache_dir/inputs-640x480-N (generated once, reused by later runs)."""
    from PIL import Image

    folder = cache_dir / f"inputs-{WIDTH}x{HEIGHT}-{n}"
    done = folder / ".complete"
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = folder / f"img{i:06d}.jpg"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            Image.fromarray(synthetic_image(i)).save(tmp, format="JPEG", quality=90)
            tmp.rename(path)
    done.write_text(str(n))
    return folder


def make_checkpoint(cache_dir: Path, render_size: int) -> str:
    import torch

    from raycolor.core import checkpoint
    from raycolor.core.model import build_colorizer

    torch.manual_seed(0)
    path = Path(tempfile.mkdtemp(prefix=f"ckpt-r{render_size}-", dir=cache_dir))
    checkpoint.save(str(path), build_colorizer(weights=None), render_size=render_size)
    return str(path)


# ------------------------------------------------------------------------------------------ helpers


def cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def local_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover (macOS)
        return os.cpu_count() or 1


def timed(fn, items: list, *, repeats: int = 3) -> dict:
    """ms per item of fn(item) over all items: "wall" = best of `repeats` (filters other users' bursts),
    "cpu" = this thread's CPU time per item (robust to a loaded machine; single-threaded work only)."""
    best, cpu = float("inf"), float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.thread_time()
        for x in items:
            fn(x)
        best = min(best, (time.perf_counter() - t0) / len(items))
        cpu = min(cpu, (time.thread_time() - c0) / len(items))
    return {"wall": round(best * 1e3, 3), "cpu": round(cpu * 1e3, 3)}


class CpuMeter:
    """CPU seconds used by this process and all its descendants (a local Ray: GCS, raylet, every worker).

    Read from /proc (utime + stime of each process), sampled every `period` s by a thread and at each
    sample() call, keeping the last value seen per process, so workers that exit (the actor pool at the
    end of its stage) still count, minus at most one period each. Robust to other users' load, unlike
    wall time. The sampling thread's own CPU is not counted. `available` is False off Linux.
    """

    def __init__(self, period: float = 0.25) -> None:
        import threading

        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.available = Path("/proc/self/stat").exists()
        self.seen: dict[tuple[int, int], tuple[str, float]] = {}  # (pid, start time) -> (name, CPU seconds)
        self.own_overhead = 0.0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, args=(period,), daemon=True)
        if self.available:
            self.thread.start()

    def _loop(self, period: float) -> None:
        while not self.stop.wait(period):
            c0 = time.thread_time()
            self._walk()
            with self.lock:
                self.own_overhead += time.thread_time() - c0

    @staticmethod
    def _children(pid: int) -> list[int]:
        out = []
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                try:
                    out += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
                except OSError:
                    pass
        except OSError:
            pass
        return out

    def _walk(self) -> None:
        todo = self._children(os.getpid())
        found = {}
        while todo:
            pid = todo.pop()
            try:
                raw = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            fields = raw[raw.rindex(")") + 2:].split()  # after "pid (comm) "
            name = raw[raw.index("(") + 1:raw.rindex(")")]
            found[(pid, int(fields[19]))] = (name, (int(fields[11]) + int(fields[12])) / self.tick)
            todo += self._children(pid)
        with self.lock:
            self.seen.update(found)

    def sample(self) -> float | None:
        if not self.available:
            return None
        self._walk()
        t = os.times()
        with self.lock:
            return sum(c for _, c in self.seen.values()) + t.user + t.system - self.own_overhead

    def by_name(self) -> dict[str, float]:
        """CPU seconds so far per process name (15-character kernel names: "raylet", "ray::MapWorker(", ...)."""
        out: dict[str, float] = {}
        with self.lock:
            for name, c in self.seen.values():
                out[name] = out.get(name, 0.0) + c
        t = os.times()
        out["(driver)"] = t.user + t.system - self.own_overhead
        return out

    def close(self) -> None:
        self.stop.set()


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_model(model, *, render_size: int, batch_size: int, device, min_seconds: float, warmup: int) -> dict:
    """images/s of predict_ab(model, L) on random L batches (CPU tensors, as the actor receives them)."""
    import torch

    from raycolor.core.colorize import predict_ab

    g = torch.Generator().manual_seed(1)
    batches = [torch.rand(batch_size, 1, render_size, render_size, generator=g) * 100 for _ in range(2)]
    for i in range(warmup):
        predict_ab(model, batches[i % 2])
    sync(device)
    rates = []
    n = 0
    c0 = time.process_time()
    t0 = time.perf_counter()
    while True:
        tb = time.perf_counter()
        predict_ab(model, batches[n % 2])
        sync(device)
        rates.append(batch_size / (time.perf_counter() - tb))
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds and n >= 3:
            break
    cpu = time.process_time() - c0
    return {"images_per_s": n * batch_size / elapsed, "batches": n, "median_batch_images_per_s": statistics.median(rates),
            "cpu_ms_per_image": cpu / (n * batch_size) * 1e3}


def load_model(ckpt: str, device, *, compile_model: bool):
    import torch

    from raycolor.core import checkpoint

    model, _ = checkpoint.load(ckpt, map_location=device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)  # as the Predictor does
    if compile_model:
        model = torch.compile(model)
    return model


# ------------------------------------------------------------------------------------------ profile


def profile_stages(folder: Path, ckpt: str, args, *, sample: int, include_model: bool) -> dict:
    """Single-thread ms/image of every CPU step an image takes, on `sample` of the inputs."""
    import torch

    from raycolor.core import color, formats, images, metadata
    from raycolor.core.colorize import compose, predict_ab, prepare

    torch.set_num_threads(1)
    paths = sorted(folder.glob("*.jpg"))[:sample]
    blobs = [p.read_bytes() for p in paths]
    r = args.render_size
    out: dict = {"sample_images": len(blobs), "input_jpeg_kb": sum(map(len, blobs)) / len(blobs) / 1024}
    ms = {}
    ms["read file"] = timed(lambda p: p.read_bytes(), paths)
    ms["decode (decode_rgb)"] = timed(images.decode_rgb, blobs)
    rgbs = [images.decode_rgb(b) for b in blobs]
    ms["prepare (RGB->L full + L small)"] = timed(lambda x: prepare(x, r), rgbs)
    prepared = [prepare(x, r) for x in rgbs]
    from raycolor.core.colorize import pack_l, unpack_l

    ms["pack L (float->uint16 bytes)"] = timed(lambda p: pack_l(p[0]), prepared)
    packed = [pack_l(p[0]) for p in prepared]
    ms["unpack L (uint16 bytes->float)"] = timed(lambda b: unpack_l(b, HEIGHT, WIDTH), packed)

    model = load_model(ckpt, torch.device("cpu"), compile_model=False)
    smalls = torch.stack([s for _, s in prepared])
    if include_model:
        predict_ab(model, smalls[:2])
        t0, c0 = time.perf_counter(), time.thread_time()
        ab = predict_ab(model, smalls)
        ms[f"model (1 thread, batch {len(smalls)}, r={r})"] = {
            "wall": round((time.perf_counter() - t0) / len(smalls) * 1e3, 3),
            "cpu": round((time.thread_time() - c0) / len(smalls) * 1e3, 3)}
    else:
        ab = predict_ab(model, smalls[:1]).expand(len(smalls), -1, -1, -1)
    ab = ab.half().float()  # the pipeline ships ab as float16
    pairs = [(prepared[i][0], ab[i]) for i in range(len(prepared))]
    ms["compose (upsample + gamut fit + Lab->RGB)"] = timed(lambda p: compose(*p), pairs)

    # compose's parts, to see which one costs
    import torch.nn.functional as F

    def up(p):
        L, a = p
        return F.interpolate(a.unsqueeze(0), size=L.shape[-2:], mode="bilinear", align_corners=False)[0]

    ups = [(L, up((L, a))) for L, a in pairs]
    ms["  compose: ab upsample"] = timed(up, pairs)
    ms["  compose: fit_ab_to_gamut"] = timed(lambda p: color.fit_ab_to_gamut(*p), ups)
    fitted = [(L, color.fit_ab_to_gamut(L, a)) for L, a in ups]
    ms["  compose: Lab->RGB uint8"] = timed(
        lambda p: color.lab_to_rgb_uint8(torch.cat(p, 0)).permute(1, 2, 0).contiguous(), fitted)
    bad = 0.0
    for L, a in ups:
        rgb = color.lab_to_rgb(torch.cat([L, a], 0), clamp=False)
        bad += float(((rgb < -1e-4) | (rgb > 1 + 1e-4)).any(0).float().mean())
    out["out_of_gamut_fraction"] = bad / len(ups)

    outputs = [compose(*p).numpy() for p in pairs]
    ms[f"encode PNG (level {args.png_level})"] = timed(lambda x: images.encode_png(x, level=args.png_level), outputs)
    # JPEG as the finish stage writes it: the format registry's one encoder, with the provenance it embeds
    prov = metadata.Provenance(software=metadata.SOFTWARE, model_id="bench")
    jpeg = lambda x: formats.encode(x, "jpeg", None, prov, keep=False, jpeg_quality=args.jpeg_quality)[0]  # noqa: E731
    ms[f"encode JPEG (quality {args.jpeg_quality})"] = timed(jpeg, outputs)
    ms["encode PNG of the input photo (reference)"] = timed(
        lambda x: images.encode_png(x, level=args.png_level), rgbs)
    out["output_png_kb"] = sum(len(images.encode_png(x, level=args.png_level)) for x in outputs) / len(outputs) / 1024
    out["output_jpeg_kb"] = sum(len(jpeg(x)) for x in outputs) / len(outputs) / 1024
    out["ms_per_image"] = ms

    # the two Ray CPU stage functions as they run in a task (file read/write included), if importable
    out["stage_ms_per_image"] = stage_functions(paths, ckpt, args, model)
    return out


def stage_functions(paths: list[Path], ckpt: str, args, model) -> dict:
    try:
        from dataclasses import asdict

        from raycolor import inputs
        from raycolor.pipelines import stages

        wanted = {str(p) for p in paths}
        listed = [asdict(i) for i in inputs.list_items([str(paths[0].parent)]) if i.source in wanted]
        items = {k: np.array([row[k] for row in listed], dtype=object if isinstance(listed[0][k], str) else np.int64)
                 for k in listed[0]}
        items["shard"] = np.array(["bench"] * len(listed), dtype=object)  # the ledger's columns
        items["shard_n"] = np.full(len(listed), len(listed), dtype=np.int64)
        items["error"] = np.full(len(listed), "", dtype=object)
        import torch

        from raycolor.config import ColorizeConfig, StorageConfig

        res = {}
        storage = StorageConfig(retries=1)
        config = ColorizeConfig(inputs=(), output="", checkpoint=ckpt, format=args.format, png_level=args.png_level,
                                jpeg_quality=args.jpeg_quality, max_pixels=None, storage=storage)
        stage = stages.ModelStage.for_colorize(config, args.render_size)
        pred = stages.Predictor.with_model(model, torch.device("cpu"), stage)  # the actor's __call__ without its process
        dec, fin = [], []
        for _ in range(3):  # the first round pays imports and first-write costs; keep the best
            t0, c0 = time.perf_counter(), time.thread_time()
            decoded = stages.decode_batch(items, stage=stage)
            dec.append((time.perf_counter() - t0, time.thread_time() - c0))
            predicted = pred(decoded)
            with tempfile.TemporaryDirectory() as tmp:
                t0, c0 = time.perf_counter(), time.thread_time()
                stages.finish_batch(predicted, config=config, stage=stage, output=tmp, model_id="bench")
                fin.append((time.perf_counter() - t0, time.thread_time() - c0))
        for name, xs in (("decode stage (decode_batch)", dec), (f"finish stage (finish_batch, {args.format})", fin)):
            res[name] = {"wall": round(min(w for w, _ in xs) / len(listed) * 1e3, 3),
                         "cpu": round(min(c for _, c in xs) / len(listed) * 1e3, 3)}
        return res
    except Exception as e:  # private functions: the profile must survive their refactoring
        return {"unavailable": f"{type(e).__name__}: {e}"}


# ---------------------------------------------------------------------------------------- end to end


def steady_state(events: list[tuple[float, int, float | None]], total: int, start: float) -> dict:
    """images/s between the moments 10 % and 90 % of the images had come back (batch granularity), and the
    CPU seconds the local Ray used per image over the same window (None on a remote cluster)."""
    cum, marks = 0, []
    for t, n, cpu in events:
        cum += n
        marks.append((t, cum, cpu))
    if not marks:
        return {"images_per_s": None}
    lo = next((m for m in marks if m[1] >= 0.1 * total), marks[0])
    hi = next((m for m in marks if m[1] >= 0.9 * total), marks[-1])
    if hi[0] <= lo[0]:  # one batch covers both marks: fall back to first->last output
        lo, hi = marks[0], marks[-1]
    n = hi[1] - lo[1]
    rate = n / (hi[0] - lo[0]) if hi[0] > lo[0] else None
    cpu_ms = (hi[2] - lo[2]) / n * 1e3 if n and hi[2] is not None and lo[2] is not None else None
    return {"images_per_s": rate, "from_s": lo[0] - start, "to_s": hi[0] - start, "images": n,
            "batches": len(marks), "cpu_ms_per_image": cpu_ms}


def run_e2e(folder: Path, ckpt: str, output: str, args) -> dict:
    from raycolor.config import ColorizeConfig
    from raycolor.pipelines.colorize import colorize

    kw = {}
    if args.cpu_actors:
        kw["cpu_actors"] = args.cpu_actors
    if args.device_codec != "auto":
        if "device_codec" not in ColorizeConfig.__dataclass_fields__:
            raise SystemExit("--device-codec: this version of raycolor has no ColorizeConfig.device_codec")
        kw["device_codec"] = args.device_codec == "on"
    config = ColorizeConfig(
        inputs=(str(folder),), output=output, checkpoint=ckpt, render_size=args.render_size, format=args.format,
        png_level=args.png_level, jpeg_quality=args.jpeg_quality, batch_size=args.batch_size, gpus=args.gpus, **kw,
    )
    meter = CpuMeter() if not args.address else None  # a remote cluster's CPUs cannot be read from here
    events: list[tuple[float, int, float | None]] = []
    cpu0 = meter.sample() if meter else None
    names0 = meter.by_name() if meter else {}
    start = time.time()
    try:
        summary = colorize(
            config, on_rows=lambda ok, err: events.append((time.time(), ok + err, meter.sample() if meter else None))
        )
    finally:
        total_s = time.time() - start
        cpu1 = meter.sample() if meter else None
        names1 = meter.by_name() if meter else {}
        if meter:
            meter.close()
    return {
        "images": summary.processed,
        "ok": summary.ok,
        "errors": summary.error,
        "total_s": total_s,
        "images_per_s_overall": summary.processed / total_s if total_s else None,
        "first_output_s": summary.first_output_s,
        "steady": steady_state(events, summary.processed, start),
        # CPU seconds of the whole local Ray (driver, raylet, GCS, workers, startup included) per image
        "cpu_ms_per_image_overall": (cpu1 - cpu0) / summary.processed * 1e3 if cpu0 is not None and summary.processed else None,
        # the same, split by process (kernel) name: where the pipeline's CPU went, startup included
        "cpu_ms_per_image_by_process": {
            k: round((v - names0.get(k, 0.0)) / summary.processed * 1e3, 2)
            for k, v in sorted(names1.items(), key=lambda kv: -(kv[1] - names0.get(kv[0], 0.0)))
            if summary.processed and v - names0.get(k, 0.0) > 0
        },
    }


def model_only(ckpt: str, *, render_size: int, batch_size: int, use_cuda: bool, threads: int, compile_model: bool,
               min_seconds: float, warmup: int) -> dict:
    """The model-only measurement, meant to run in a Ray worker: the same process kind as the Predictor
    (same niceness -- Ray runs workers at nice 15 -- and environment), so the comparison stays fair on a
    machine shared with other users."""
    import torch

    device = torch.device("cuda" if use_cuda else "cpu")
    if not use_cuda:
        torch.set_num_threads(max(1, threads))  # as the Predictor does
    model = load_model(ckpt, device, compile_model=False)
    out = {"eager": bench_model(model, render_size=render_size, batch_size=batch_size, device=device,
                                min_seconds=min_seconds, warmup=warmup)}
    out["eager"]["threads"] = None if use_cuda else torch.get_num_threads()
    out["eager"]["niceness"] = os.nice(0) if hasattr(os, "nice") else None
    if compile_model and use_cuda:
        cmodel = load_model(ckpt, device, compile_model=True)
        out["compiled"] = bench_model(cmodel, render_size=render_size, batch_size=batch_size, device=device,
                                      min_seconds=min_seconds, warmup=max(warmup, 10))
    return out


def remote_model_only(ckpt: str, args, *, threads: int, min_seconds: float, warmup: int) -> dict:
    import ray

    use_cuda = args.gpus > 0
    task = ray.remote(model_only).options(num_cpus=1 if use_cuda else threads, num_gpus=1 if use_cuda else 0)
    return ray.get(task.remote(ckpt, render_size=args.render_size, batch_size=args.batch_size, use_cuda=use_cuda,
                               threads=threads, compile_model=args.compile and use_cuda, min_seconds=min_seconds,
                               warmup=warmup))


def start_ray(args) -> dict:
    import ray

    if args.address:
        ray.init(address=args.address, log_to_driver=False)
    else:
        ray.init(num_cpus=args.cpus, num_gpus=None, include_dashboard=False, log_to_driver=False)
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    res = ray.cluster_resources()
    node_cpus = max((int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")), default=1)
    return {"cpus": int(res.get("CPU", 0)), "gpus": int(res.get("GPU", 0)), "nodes": len(ray.nodes()),
            "max_node_cpus": node_cpus}


# --------------------------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=200, help="synthetic 640x480 JPEG inputs (default 200)")
    p.add_argument("--render-size", type=int, default=224, help="model input side (default 224; 64 for a quick CPU run)")
    p.add_argument("--format", choices=("png", "jpeg"), default="png")
    p.add_argument("--png-level", type=int, default=1)
    p.add_argument("--jpeg-quality", type=int, default=92)
    p.add_argument("--batch-size", type=int, default=32, help="model batch size (ColorizeConfig.batch_size)")
    p.add_argument("--gpus", type=int, default=0, help="GPU actors (0: CPU actor pool)")
    p.add_argument("--cpu-actors", type=int, default=None, help="CPU-mode actor pool size (default: the library's)")
    p.add_argument("--device-codec", choices=("auto", "on", "off"), default="auto",
                   help="JPEG decode/encode inside the model actor (ColorizeConfig.device_codec; auto: on with --gpus)")
    p.add_argument("--cpus", type=int, default=None, help="ray.init(num_cpus=...) for a local Ray; also the CPU model's threads")
    p.add_argument("--address", default=None, help="connect to this Ray cluster instead of starting one")
    p.add_argument("--compile", action="store_true", help="CUDA: also measure the model under torch.compile")
    p.add_argument("--model-seconds", type=float, default=None, help="time per model-only measurement (default 8 CPU, 5 GPU)")
    p.add_argument("--profile-images", type=int, default=8, help="images in the single-thread CPU profile (0: skip)")
    p.add_argument("--cache-dir", default=os.environ.get("RAYCOLOR_BENCH_CACHE", str(Path(tempfile.gettempdir()) / "raycolor-bench")))
    p.add_argument("--output", default=None, help="where the colorized images go (default: fresh folder in the cache dir)")
    p.add_argument("--keep-output", action="store_true")
    p.add_argument("--skip-e2e", action="store_true", help="model-only and profile, no Ray")
    p.add_argument("--json", action="store_true", help="also print one JSON object with every figure")
    args = p.parse_args(argv)
    if args.render_size % 16:
        p.error("--render-size must be a multiple of 16")
    return args


def rounded(x):
    if isinstance(x, float):
        return round(x, 4)
    if isinstance(x, dict):
        return {k: rounded(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [rounded(v) for v in x]
    return x


def fmt_rate(x) -> str:
    return "n/a" if x is None else f"{x:,.1f}"


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    use_cuda = args.gpus > 0
    if use_cuda and not args.address and not torch.cuda.is_available():
        sys.exit("--gpus given but torch sees no CUDA device on this machine (use --address for a cluster)")
    device = torch.device("cuda" if use_cuda else "cpu")
    cores = args.cpus or local_cores()
    min_s = args.model_seconds or (5.0 if use_cuda else 8.0)

    report: dict = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "machine": {
            "host": platform.node(), "cpu": cpu_model_name(), "local_cores": local_cores(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__,
            "loadavg_start": os.getloadavg(),
        },
        "settings": {k: v for k, v in vars(args).items() if k not in ("json",)},
    }
    t = time.perf_counter()
    folder = make_inputs(cache, args.images)
    ckpt = make_checkpoint(cache, args.render_size)
    print(f"inputs: {args.images} x {WIDTH}x{HEIGHT} JPEG in {folder} ({time.perf_counter() - t:.1f}s); checkpoint {ckpt}")

    # 1. single-thread profile of the CPU stages (also gives the one-core PNG/JPEG rates)
    if args.profile_images > 0:
        prof = profile_stages(folder, ckpt, args, sample=min(args.profile_images, args.images), include_model=not use_cuda)
        report["profile"] = prof
        print(f"\nSingle-thread CPU profile, {prof['sample_images']} images of {WIDTH}x{HEIGHT} "
              f"(input JPEG {prof['input_jpeg_kb']:.0f} KB, output PNG {prof['output_png_kb']:.0f} KB / JPEG "
              f"{prof['output_jpeg_kb']:.0f} KB, {100 * prof['out_of_gamut_fraction']:.1f} % pixels out of gamut):")
        print(f"  {'ms/image':<48} {'wall':>9} {'CPU':>9}")
        for k, v in {**prof["ms_per_image"], **prof["stage_ms_per_image"]}.items():
            print(f"  {k:<48} {v['wall']:>9.2f} {v['cpu']:>9.2f}" if isinstance(v, dict) else f"  {k}: {v}")

    # 2. model only (before), in a Ray worker like the Predictor
    report["ray"] = start_ray(args)
    threads = args.cpus or report["ray"]["max_node_cpus"]  # CPU model: torch threads = the cores
    m_before = remote_model_only(ckpt, args, threads=threads, min_seconds=min_s, warmup=3)
    compiled = m_before.get("compiled")
    m_before = m_before["eager"]
    print(f"\nmodel only ({device.type}, {'bf16 autocast, channels_last' if use_cuda else f'fp32, {threads} threads'}, "
          f"batch {args.batch_size}, r={args.render_size}, in a Ray worker at nice {m_before['niceness']}): "
          f"{fmt_rate(m_before['images_per_s'])} images/s ({m_before['cpu_ms_per_image']:.1f} CPU ms/image)")
    if compiled:
        print(f"model only, torch.compile: {fmt_rate(compiled['images_per_s'])} images/s")

    # 3. end to end
    e2e = None
    if not args.skip_e2e:
        output = args.output or tempfile.mkdtemp(prefix="out-", dir=cache)
        try:
            e2e = run_e2e(folder, ckpt, output, args)
        finally:
            if not args.keep_output and not args.output:
                shutil.rmtree(output, ignore_errors=True)
        st = e2e["steady"]
        print(f"\nend to end (Ray Data, {report['ray']['cpus']} CPUs, {report['ray']['gpus']} GPUs, {args.format}, "
              f"device codec {args.device_codec}): "
              f"{e2e['images']} images in {e2e['total_s']:.1f}s = {fmt_rate(e2e['images_per_s_overall'])} images/s overall; "
              f"first output after {e2e['first_output_s']}s")
        if st["images_per_s"] is not None:
            print(f"  steady state (10 %..90 %: {st['images']} images, {st['from_s']:.1f}s..{st['to_s']:.1f}s, "
                  f"{st['batches']} batches back): {fmt_rate(st['images_per_s'])} images/s")
            if st["cpu_ms_per_image"] is not None:
                print(f"  CPU used by the local Ray per image: {st['cpu_ms_per_image']:.1f} ms in the steady window, "
                      f"{e2e['cpu_ms_per_image_overall']:.1f} ms overall (startup included), of which "
                      + ", ".join(f"{k} {v:.1f}" for k, v in list(e2e["cpu_ms_per_image_by_process"].items())[:8]))
            if st["batches"] < 8:
                print("  (few batches came back: the 10 %..90 % window is coarse; use more --images or a smaller --batch-size)")

    # 4. model only (after): the spread between before and after is the machine's noise
    m_after = remote_model_only(ckpt, args, threads=threads, min_seconds=min_s, warmup=1)["eager"]
    import ray

    ray.shutdown()
    model_rate = (m_before["images_per_s"] + m_after["images_per_s"]) / 2
    model_cpu_ms = (m_before["cpu_ms_per_image"] + m_after["cpu_ms_per_image"]) / 2
    spread = abs(m_before["images_per_s"] - m_after["images_per_s"]) / model_rate
    print(f"model only again: {fmt_rate(m_after['images_per_s'])} images/s -> reference {fmt_rate(model_rate)} images/s")
    if spread > 0.25:
        print(f"WARNING: the model-only rate moved by {100 * spread:.0f} % between before and after: the machine was busy "
              "(a multi-threaded model suffers more from other users' load than the one-thread CPU tasks), so the "
              "ratios below are unreliable; rerun when the load average is below the core count")
    report["model_only"] = {"before": m_before, "after": m_after, "images_per_s": model_rate, "cpu_ms_per_image": model_cpu_ms,
                            "before_after_spread": spread,
                            "compiled": compiled, "threads": None if use_cuda else threads}

    # 5. ratios and targets
    ratios: dict = {}
    if e2e and e2e["steady"]["images_per_s"]:
        ratios["steady_over_model"] = e2e["steady"]["images_per_s"] / model_rate
        ratios["overall_over_model"] = e2e["images_per_s_overall"] / model_rate
        if compiled:
            ratios["steady_over_compiled_model"] = e2e["steady"]["images_per_s"] / compiled["images_per_s"]
        print(f"\nratio steady-state / model-only: {ratios['steady_over_model']:.2f} "
              f"(CPU local-mode target >= 0.70{'' if use_cuda else ': ' + ('met' if ratios['steady_over_model'] >= 0.70 else 'NOT met')})")
    if not use_cuda and e2e and e2e["steady"].get("cpu_ms_per_image"):
        # load-robust: what the ratio would be on a dedicated machine if the pipeline kept every core busy
        ratios["cpu_cost_ratio"] = model_cpu_ms / e2e["steady"]["cpu_ms_per_image"]
        print(f"CPU-cost ratio (model-only CPU ms/image / pipeline CPU ms/image, steady window): "
              f"{model_cpu_ms:.1f} / {e2e['steady']['cpu_ms_per_image']:.1f} = {ratios['cpu_cost_ratio']:.2f} "
              "(the throughput ratio a dedicated machine would show with every core busy)")
    prof = report.get("profile")
    if prof:
        ms = prof["ms_per_image"]
        png_ms = ms[f"encode PNG (level {args.png_level})"]["cpu"]
        jpg_ms = ms[f"encode JPEG (quality {args.jpeg_quality})"]["cpu"]
        one_core_png = 1e3 / png_ms
        ratios["one_core_png_images_per_s"] = one_core_png
        ratios["one_core_jpeg_images_per_s"] = 1e3 / jpg_ms
        ray_cpus = (report.get("ray") or {}).get("cpus") or cores
        print(f"one-core encode on these outputs (CPU time): PNG level {args.png_level} {one_core_png:.1f} images/s, "
              f"JPEG q{args.jpeg_quality} {1e3 / jpg_ms:.1f} images/s")
        if args.format == "png":
            target = 0.85 * ray_cpus * one_core_png
            ratios["png_target_images_per_s"] = target
            line = f"PNG target: >= 0.85 x {ray_cpus} cores x {one_core_png:.1f} = {target:.1f} images/s"
            if e2e and e2e["steady"]["images_per_s"]:
                ratios["steady_over_png_target"] = e2e["steady"]["images_per_s"] / target
                line += f"; steady state is {ratios['steady_over_png_target']:.2f} of it"
                if not use_cuda:
                    line += " (on CPU the model shares those cores, so this target applies to GPU nodes)"
            print(line)
        stages = prof["stage_ms_per_image"]
        if not use_cuda and "unavailable" not in stages:
            c_cpu = sum(v["cpu"] for v in stages.values())  # CPU ms per image in the CPU task stages
            ceiling = model_cpu_ms / (model_cpu_ms + c_cpu)
            ratios["cpu_sharing_ceiling"] = ceiling
            print(f"CPU-sharing ceiling: CPU stages {c_cpu:.1f} ms/image + model {model_cpu_ms:.1f} CPU ms/image -> "
                  f"e2e/model <= {model_cpu_ms:.1f} / ({model_cpu_ms:.1f} + {c_cpu:.1f}) = {ceiling:.2f} "
                  "with perfect sharing of the cores")
    report["e2e"] = e2e
    report["ratios"] = ratios
    report["machine"]["loadavg_end"] = os.getloadavg()
    print(f"load average at start {report['machine']['loadavg_start'][0]:.1f}, at end {report['machine']['loadavg_end'][0]:.1f} "
          f"({local_cores()} cores here): above the core count, other processes were competing for the CPUs")
    if args.json:
        print(json.dumps(rounded(report), default=str))
    return report


if __name__ == "__main__":
    main()
