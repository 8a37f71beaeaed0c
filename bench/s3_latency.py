#!/usr/bin/env python
"""Colorize throughput from S3 with and without added per-request latency, in one run.

    python bench/s3_latency.py                      # 600 160x120 JPEGs, 0 ms vs 30 ms, plus sequential at 30 ms
    python bench/s3_latency.py --images 300 --json  # quicker; one JSON object at the end

The same seeded images are colorized from a moto S3 server (started here, in a child process so that its
request handling does not share this process's GIL) through tests/faultproxy.py's ``FaultProxy`` with
``latency_s`` = 0 and then ``--latency-ms``; inputs and outputs both on S3, so every image costs a GET and
a PUT through the proxy, and every batch a manifest PUT. A tiny checkpoint (``build_colorizer(weights=None)``
at ``--render-size``) keeps the model cheap, so the runs measure I/O, not the network.

Runs, each into a fresh OUTPUT prefix (nothing skipped), after a warm-up run that pays Ray's worker
start-up and imports:

1. ``0 ms``: ``--io-concurrency`` requests in flight per batch (default: the library default);
2. ``N ms``: the same with the latency added to every request;
3. ``N ms sequential``: ``io_concurrency=1``, i.e. one request at a time per task, as before
   ``storage.read_items`` / ``write_many`` existed (skip with ``--skip-sequential``);
4. ``0 ms`` again: the 0 ms reference is the mean of runs 1 and 4, and their difference is printed as the
   machine's noise (on a shared machine, ratios are only as good as that).

Before the pipeline runs, a no-Ray comparison of ways to issue the GETs (``--raw-reads`` objects, at 0 and
N ms): ``read_items`` one at a time, ``read_items`` with the default concurrency (threads over
``read_item``), and s3fs's batch ``cat(list)``.

Throughput = images / the colorize call's own elapsed time (``ColorizeSummary.images_per_s``: listing,
the pipeline, the manifest check and ``_SUCCESS.json`` included) and, separately, the steady state between
the 10 % and 90 % marks of the rows coming back. The ratio N ms / 0 ms is the figure the issue targets
(>= 0.8); sequential / concurrent at N ms shows how much of it the concurrent I/O buys.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def fault_proxy_class():
    """tests/faultproxy.py's FaultProxy (the suite's S3 fault and latency proxy), loaded from its file: the
    bench shares the suite's proxy without putting the repository on sys.path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("faultproxy", ROOT / "tests" / "faultproxy.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["faultproxy"] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module.FaultProxy

AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, str]:
    port = _free_port()
    code = (
        "import time; from moto.server import ThreadedMotoServer as S; "
        f"S(ip_address='127.0.0.1', port={port}, verbose=False).start(); time.sleep(1e9)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto server did not start")


def make_jpegs(n: int, width: int, height: int, seed: int) -> list[bytes]:
    """Seeded photo-like JPEGs: a smooth colour field, a few shapes, grain; quality 90."""
    from PIL import Image, ImageDraw

    out = []
    for i in range(n):
        rng = np.random.default_rng(seed + i)
        coarse = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
        im = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
        draw = ImageDraw.Draw(im)
        for _ in range(3):
            x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
            draw.ellipse((x0, y0, x0 + int(rng.integers(10, 60)), y0 + int(rng.integers(10, 60))),
                         fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        arr = np.asarray(im).astype(np.float32) + rng.normal(0, 4, (height, width, 3))
        buf = io.BytesIO()
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def steady_state(marks: list[tuple[float, int]], total: int) -> float | None:
    """Images/s between the 10 % and 90 % marks of rows coming back (None with too few batches)."""
    done, t10, n10, t90, n90 = 0, None, 0, None, 0
    for t, n in marks:
        done += n
        if t10 is None and done >= 0.1 * total:
            t10, n10 = t, done
        if t90 is None and done >= 0.9 * total:
            t90, n90 = t, done
    if t10 is None or t90 is None or t90 <= t10:
        return None
    return (n90 - n10) / (t90 - t10)


def run_once(name: str, *, bucket: str, proxy, latency_s: float, io_concurrency: int, ckpt: str, args) -> dict:
    from raycolor.config import ColorizeConfig, StorageConfig
    from raycolor.pipelines.colorize import colorize

    proxy.latency_s = latency_s
    before = proxy.counts["requests"]
    marks: list[tuple[float, int]] = []
    summary = colorize(
        ColorizeConfig(
            inputs=(f"s3://{bucket}/in",),
            output=f"s3://{bucket}/out-{name}",
            checkpoint=ckpt,
            render_size=args.render_size,
            batch_size=args.batch_size,
            storage=StorageConfig(s3_endpoint=proxy.url, retries=3, io_concurrency=io_concurrency),
        ),
        on_rows=lambda t, n: marks.append((t, n)),
    )
    if summary.ok != summary.inputs:
        raise RuntimeError(f"{name}: {summary.error} error rows")
    res = {
        "latency_ms": round(latency_s * 1e3, 1),
        "io_concurrency": io_concurrency,
        "images": summary.processed,
        "elapsed_s": summary.elapsed_s,
        "images_per_s": summary.images_per_s,
        "steady_images_per_s": None if (s := steady_state(marks, summary.processed)) is None else round(s, 2),
        "first_output_s": summary.first_output_s,
        "requests": proxy.counts["requests"] - before,
    }
    print(f"  {name:<16} {res['images_per_s']:7.1f} img/s end to end, steady "
          f"{res['steady_images_per_s'] or float('nan'):7.1f} img/s, {res['elapsed_s']:6.1f} s, "
          f"{res['requests']} requests through the proxy", flush=True)
    return res


def raw_reads(fs, bucket: str, n: int, proxy, latency_s: float, concurrency: int) -> dict:
    """The GETs alone, no Ray: read_items one at a time, read_items with ``concurrency`` in flight (threads over
    read_item), and s3fs's own batch ``cat`` of the same keys (coroutines gathered on its event loop)."""
    from raycolor import inputs, storage
    from raycolor.config import StorageConfig

    items = [inputs.Item(source=str(i), relpath="x.jpg", uri=f"s3://{bucket}/in/{i:05d}.jpg") for i in range(n)]
    store = StorageConfig(s3_endpoint=proxy.url)
    s3, _ = storage.filesystem(f"s3://{bucket}/in", store=store)
    proxy.latency_s = latency_s
    storage.read_items(items[:4], store=store)  # connect outside the timings
    out = {}
    for name, call in (
        ("read_items sequential", lambda: storage.read_items(items, store=replace(store, io_concurrency=1))),
        (f"read_items x{concurrency}", lambda: storage.read_items(items, store=replace(store, io_concurrency=concurrency))),
        ("s3fs cat(list)", lambda: list(s3.cat([f"{bucket}/in/{i:05d}.jpg" for i in range(n)], on_error="return").values())),
    ):
        t0 = time.perf_counter()
        got = call()
        dt = time.perf_counter() - t0
        assert all(isinstance(g, bytes) for g in got), name
        out[name] = round(n / dt, 1)
    print(f"  raw GETs at {latency_s * 1e3:g} ms, objects/s: " + ", ".join(f"{k} {v}" for k, v in out.items()), flush=True)
    return out


def stage_profile(bucket: str, proxy, ckpt: str, args, latency_s: float, concurrency: int) -> dict:
    """Wall ms per batch of the two Ray CPU stage functions, called here without Ray (best of 3 batches, so
    other users' load counts little): ``decode_batch`` (reads + decode) and ``finish_batch`` (encode +
    image writes + manifest part), at 0 ms, at ``latency_s`` with ``concurrency``, and at ``latency_s``
    one request at a time."""
    import torch

    from raycolor.config import ColorizeConfig, StorageConfig
    from raycolor.core import checkpoint
    from raycolor.pipelines import stages

    model, _ = checkpoint.load(ckpt)
    b = args.batch_size

    def batch(k: int) -> dict:
        idx = range(k * b, (k + 1) * b)
        return {
            "source": np.array([f"s3://{bucket}/in/{i:05d}.jpg" for i in idx], dtype=object),
            "relpath": np.array([f"{i:05d}.jpg" for i in idx], dtype=object),
            "uri": np.array([f"s3://{bucket}/in/{i:05d}.jpg" for i in idx], dtype=object),
            "offset": np.zeros(b, np.int64),
            "size": np.full(b, -1, np.int64),
            "error": np.full(b, "", dtype=object),
            "shard": np.full(b, f"bench-{k}", dtype=object),  # the ledger's columns
            "shard_n": np.full(b, b, np.int64),
        }

    out = {}
    for name, lat, conc in (("0ms", 0.0, concurrency), (f"{latency_s * 1e3:g}ms", latency_s, concurrency),
                            (f"{latency_s * 1e3:g}ms-sequential", latency_s, 1)):
        proxy.latency_s = lat
        output = f"s3://{bucket}/out-stages-{name}"
        config = ColorizeConfig(inputs=(), output=output, checkpoint=ckpt, format="png", max_pixels=None,
                                storage=StorageConfig(s3_endpoint=proxy.url, retries=3, io_concurrency=conc))
        stage = stages.ModelStage.for_colorize(config, args.render_size)
        pred = stages.Predictor.with_model(model, torch.device("cpu"), stage)  # the actor's __call__ without its process
        dec, fin = [], []
        for k in range(3):
            t0 = time.perf_counter()
            decoded = stages.decode_batch(batch(k), stage=stage)
            dec.append(time.perf_counter() - t0)
            predicted = pred(decoded)
            t0 = time.perf_counter()
            stages.finish_batch(predicted, config=config, stage=stage, output=output, model_id="bench")
            fin.append(time.perf_counter() - t0)
        out[name] = {"decode_ms_per_batch": round(min(dec) * 1e3, 1), "finish_ms_per_batch": round(min(fin) * 1e3, 1)}
        print(f"  stages {name:<16} decode {out[name]['decode_ms_per_batch']:7.1f} ms, finish "
              f"{out[name]['finish_ms_per_batch']:7.1f} ms per batch of {b} (best of 3)", flush=True)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=600)
    p.add_argument("--size", default="160x120", help="WxH of the generated JPEGs")
    p.add_argument("--render-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--latency-ms", type=float, default=30.0)
    p.add_argument("--io-concurrency", type=int, default=None, help="default: the library default")
    p.add_argument("--cpus", type=int, default=2, help="ray.init(num_cpus=...)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-sequential", action="store_true")
    p.add_argument("--raw-reads", type=int, default=200, help="objects in the no-Ray GET comparison (0: skip it)")
    p.add_argument("--skip-pipeline", action="store_true", help="leave out the Ray colorize runs")
    p.add_argument("--no-stages", dest="stages", action="store_false", help="leave out the no-Ray stage timings")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    from raycolor.config import DEFAULT_IO_CONCURRENCY

    concurrency = args.io_concurrency or DEFAULT_IO_CONCURRENCY
    width, height = (int(v) for v in args.size.lower().split("x"))
    os.environ.update(AWS_ENV)
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(var, None)

    import ray
    import s3fs
    import torch

    from raycolor.core import checkpoint
    from raycolor.core.model import build_colorizer
    FaultProxy = fault_proxy_class()

    t_start = time.time()
    moto, endpoint = start_moto()
    try:
        fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
        bucket = "bench-s3-latency"
        fs.mkdir(bucket)
        jpegs = make_jpegs(args.images, width, height, args.seed)
        fs.pipe({f"{bucket}/in/{i:05d}.jpg": data for i, data in enumerate(jpegs)})
        warm = max(2 * args.batch_size, 64)
        fs.pipe({f"{bucket}/warm/{i:05d}.jpg": data for i, data in enumerate(jpegs[:warm])})
        with tempfile.TemporaryDirectory() as tmp:
            torch.manual_seed(0)
            ckpt = str(Path(tmp) / "ckpt")
            checkpoint.save(ckpt, build_colorizer(weights=None), render_size=args.render_size)
            ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)  # never join a cluster another process on this machine started
            print(f"{args.images} JPEGs {width}x{height} (~{sum(map(len, jpegs)) // len(jpegs) // 1024} KB), render "
                  f"{args.render_size}, batch {args.batch_size}, {args.cpus} CPUs, io_concurrency {concurrency}; "
                  f"load average {os.getloadavg()[0]:.1f}", flush=True)
            runs: dict[str, dict] = {}
            raw: dict[str, dict] = {}
            lat, ms = args.latency_ms / 1e3, f"{args.latency_ms:g}ms"
            with FaultProxy(endpoint) as proxy:
                if args.raw_reads:
                    n_raw = min(args.raw_reads, args.images)
                    raw["0ms"] = raw_reads(fs, bucket, n_raw, proxy, 0.0, concurrency)
                    raw[ms] = raw_reads(fs, bucket, n_raw, proxy, lat, concurrency)
                stages = stage_profile(bucket, proxy, ckpt, args, lat, concurrency) if args.stages else {}
                if not args.skip_pipeline:
                    from raycolor.config import ColorizeConfig, StorageConfig
                    from raycolor.pipelines.colorize import colorize

                    colorize(ColorizeConfig(  # warm-up: Ray workers, imports, the S3 clients
                        inputs=(f"s3://{bucket}/warm",), output=f"s3://{bucket}/out-warm", checkpoint=ckpt,
                        render_size=args.render_size, batch_size=args.batch_size,
                        storage=StorageConfig(s3_endpoint=proxy.url, io_concurrency=concurrency)))
                    common = {"bucket": bucket, "proxy": proxy, "ckpt": ckpt, "args": args}
                    runs["0ms"] = run_once("0ms", latency_s=0.0, io_concurrency=concurrency, **common)
                    runs[ms] = run_once(ms, latency_s=lat, io_concurrency=concurrency, **common)
                    if not args.skip_sequential:
                        runs[f"{ms}-sequential"] = run_once(f"{ms}-sequential", latency_s=lat, io_concurrency=1, **common)
                    # the 0 ms run again: the reference is the mean of the two, their spread is the machine's noise
                    runs["0ms-again"] = run_once("0ms-again", latency_s=0.0, io_concurrency=concurrency, **common)
            ray.shutdown()
    finally:
        moto.terminate()
        moto.wait(10)

    def rate(name: str, key: str) -> float | None:
        if name == "0ms" and "0ms-again" in runs:  # the reference: mean of the runs before and after
            values = [runs[r].get(key) for r in ("0ms", "0ms-again")]
            return sum(values) / 2 if all(values) else None
        return runs.get(name, {}).get(key)

    def ratio(a: str, b: str, key: str = "images_per_s") -> float | None:
        x, y = rate(a, key), rate(b, key)
        return round(x / y, 3) if x and y else None

    def spread(key: str) -> float | None:
        x, y = (runs.get(r, {}).get(key) for r in ("0ms", "0ms-again"))
        return round(abs(x - y) / ((x + y) / 2), 3) if x and y else None

    report = {
        "settings": {"images": args.images, "size": [width, height], "render_size": args.render_size,
                     "batch_size": args.batch_size, "cpus": args.cpus, "latency_ms": args.latency_ms,
                     "io_concurrency": concurrency},
        "raw_reads_objects_per_s": raw,
        "stages": stages,
        "runs": runs,
        "ratio_latency_vs_0ms": ratio(ms, "0ms"),
        "ratio_latency_vs_0ms_steady": ratio(ms, "0ms", "steady_images_per_s"),
        "speedup_concurrent_vs_sequential": ratio(ms, f"{ms}-sequential"),
        "ratio_sequential_vs_0ms": ratio(f"{ms}-sequential", "0ms"),
        "noise_0ms_runs": spread("images_per_s"),
        "noise_0ms_runs_steady": spread("steady_images_per_s"),
        "load_average_end": round(os.getloadavg()[0], 2),
        "wall_s": round(time.time() - t_start, 1),
    }
    if runs:
        print(f"{ms} / 0ms throughput: {report['ratio_latency_vs_0ms']} end to end, "
              f"{report['ratio_latency_vs_0ms_steady']} steady state (target >= 0.8; 0 ms = mean of its two runs, "
              f"which differ by {report['noise_0ms_runs']} / {report['noise_0ms_runs_steady']})")
    if runs and not args.skip_sequential:
        print(f"at {ms}: concurrent / sequential = {report['speedup_concurrent_vs_sequential']}; "
              f"sequential / 0ms = {report['ratio_sequential_vs_0ms']}")
    print(f"load average at end {report['load_average_end']}, bench wall time {report['wall_s']} s")
    if args.json:
        print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
