"""Bulk colorization with Ray Data: wiring only; the maths lives in the core modules.

    items (driver) ─▶ read + decode + prepare   CPU tasks: bytes -> RGB -> L full-res (uint16) + L at render size
                  ─▶ Predictor                  fixed actor pool, one per GPU (or a CPU pool): L small -> ab small
                  ─▶ compose + encode + write   CPU tasks: L full + ab -> RGB -> PNG/JPEG -> OUTPUT/images/...
                                                 and one Parquet manifest part per batch -> OUTPUT/manifest/
    driver: counts rows as they stream back, then checks the manifest and writes OUTPUT/_SUCCESS.json last.

Only small arrays cross the object store: L as uint16 (2 B/pixel, 0.0015 L units precision) and the
render-size L/ab; never float RGB. Per-image Pillow work never runs in the actor process.

Exactly once: a source with a manifest row is done; a re-run skips it. Images are written before their
manifest row (temp + rename locally, one PUT on object stores), so a crash leaves at worst an image without
a row, which the re-run overwrites with identical content. Manifest part names are a hash of the sources
they hold, so a retried task overwrites its own part instead of adding a duplicate.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raycolor import checkpoint, images, runtime, sources
from raycolor.config import DEFAULT_IO_CONCURRENCY, ColorizeConfig

L_SCALE = 65535 / 100  # L in [0, 100] <-> uint16

MANIFEST_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("output", pa.string()),
        ("status", pa.string()),  # "ok" | "error"
        ("error", pa.string()),  # "<reason>: <detail>" or null
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("model_id", pa.string()),
        ("format", pa.string()),
        ("finished_at", pa.float64()),
    ]
)
IMAGE_COLUMN = pa.field("image", pa.binary())


@dataclass(frozen=True)
class ColorizeSummary:
    inputs: int
    ok: int
    error: int
    skipped: int  # already done by an earlier run
    processed: int  # rows produced by this run
    elapsed_s: float
    images_per_s: float
    first_output_s: float | None
    output: str
    model_id: str
    settings: dict = field(default_factory=dict)
    duplicates_removed: int = 0


# --------------------------------------------------------------------------------------------
# Stage functions (run inside Ray workers; plain functions of a numpy batch)
# --------------------------------------------------------------------------------------------


def _decode_batch(
    batch: dict,
    *,
    render_size: int,
    max_pixels: int | None,
    s3_endpoint,
    retries: int,
    keep_rgb: bool = False,
    device_codec: bool = False,
    io_concurrency: int = DEFAULT_IO_CONCURRENCY,
) -> dict:
    """keep_rgb: also ship the decoded RGB (raw bytes) downstream, for evaluation against the original.
    device_codec: baseline JPEGs skip Pillow and travel as their own bytes (+ EXIF orientation) to the
    actor, which decodes them on its device; everything else is decoded here as usual."""
    import torch

    from raycolor.colorize import prepare

    torch.set_num_threads(1)  # one task per CPU slot; torch must not oversubscribe the node
    n = len(batch["source"])
    l_full = np.empty(n, dtype=object)
    original = np.full(n, b"", dtype=object)
    jpeg = np.full(n, b"", dtype=object)
    orientation = np.ones(n, dtype=np.int64)
    l_small = np.zeros((n, 1, render_size, render_size), dtype=np.float32)
    width = np.zeros(n, dtype=np.int64)
    height = np.zeros(n, dtype=np.int64)
    error = np.full(n, "", dtype=object)  # "" = no error: an all-null column would not survive Arrow
    items = [
        sources.Item(
            source=batch["source"][i],
            relpath=batch["relpath"][i],
            uri=batch["uri"][i],
            offset=int(batch["offset"][i]),
            size=int(batch["size"][i]),
        )
        for i in range(n)
    ]
    # the whole batch's reads in flight together: object-store latency is paid about once per batch
    datas = sources.read_items(items, s3_endpoint=s3_endpoint, retries=retries, max_in_flight=io_concurrency)
    for i, (item, data) in enumerate(zip(items, datas)):
        if isinstance(data, Exception):  # after retries: this item is an error row, the job goes on
            error[i] = f"read_failed: {sources.redact(data, item.uri)}"
            l_full[i] = b""
            continue
        peek = images.device_decodable_jpeg(data, max_pixels=max_pixels) if device_codec else None
        if peek is not None:
            orientation[i], width[i], height[i] = peek
            jpeg[i], l_full[i] = data, b""
            continue
        try:
            rgb = images.decode_rgb(data, max_pixels=max_pixels)
        except images.DecodeError as e:
            error[i] = str(e)
            l_full[i] = b""
            continue
        height[i], width[i] = rgb.shape[:2]
        if keep_rgb:
            original[i] = rgb.tobytes()
        L, small = prepare(rgb, render_size)
        l_full[i] = (L[0].numpy() * L_SCALE).round().astype(np.uint16).tobytes()
        l_small[i] = small.numpy()
    out = {
        "source": batch["source"],
        "relpath": batch["relpath"],
        "width": width,
        "height": height,
        "error": error,
        "l_full": l_full,
        "l_small": l_small,
    }
    if keep_rgb:
        out["original"] = original
    if device_codec:
        out["jpeg"] = jpeg
        out["orientation"] = orientation
    return out


def _l_full(batch: dict, i: int):
    import torch

    h, w = int(batch["height"][i]), int(batch["width"][i])
    raw = np.frombuffer(batch["l_full"][i], dtype=np.uint16).reshape(1, h, w)
    return torch.from_numpy(raw.astype(np.float32) / L_SCALE)


class Predictor:
    """The model on one device. Keeps no per-image CPU work: L small in, ab (or RGB, on GPU) out."""

    def __init__(
        self,
        checkpoint_uri: str,
        *,
        use_gpu: bool,
        compose_on_device: bool,
        threads: int,
        s3_endpoint,
        encode_jpeg_quality: int | None = None,
    ):
        import torch

        if not use_gpu:
            torch.set_num_threads(max(1, threads))
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.model, self.meta = checkpoint.load(checkpoint_uri, map_location=self.device, s3_endpoint=s3_endpoint)
        if use_gpu:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.compose_on_device = compose_on_device
        self.encode_jpeg_quality = encode_jpeg_quality  # set: JPEG output is encoded here (nvJPEG on GPU)

    def _decode_jpegs(self, batch: dict, rows: list[int], errors: np.ndarray) -> dict:
        """Rows' JPEG bytes -> upright uint8 (3, H, W) on the device; a failing image becomes an error row."""
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        from raycolor.colorize import orient

        data = [torch.frombuffer(bytearray(batch["jpeg"][i]), dtype=torch.uint8) for i in rows]
        try:
            decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)  # one batched call
        except RuntimeError:  # one bad image fails the batch: find it
            decoded = []
            for i, d in zip(rows, data):
                try:
                    decoded.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=self.device))
                except RuntimeError as e:
                    errors[i] = f"truncated: {sources.redact(e)}"
                    decoded.append(None)
        return {
            i: orient(t, int(batch["orientation"][i])) for i, t in zip(rows, decoded) if t is not None
        }

    def __call__(self, batch: dict) -> dict:
        import torch

        from raycolor import color
        from raycolor.colorize import compose_batch, predict_ab, render_l

        errors = np.array(batch["error"], dtype=object)
        n = len(errors)
        r = batch["l_small"].shape[-1]
        jpeg_rows = [i for i in range(n) if not errors[i] and "jpeg" in batch and len(batch["jpeg"][i])]
        on_device = self._decode_jpegs(batch, jpeg_rows, errors) if jpeg_rows else {}
        l_small = torch.from_numpy(np.array(batch["l_small"], dtype=np.float32)).to(self.device)
        l_device = {}
        for i, rgb_t in on_device.items():
            l_device[i] = color.rgb_uint8_to_l(rgb_t)  # (1, H, W)
            l_small[i] = render_l(l_device[i], r)
        ok = np.array([not e for e in errors], dtype=bool)
        ab = np.zeros((n, 2, r, r), dtype=np.float16)
        rgb = np.full(n, b"", dtype=object)
        encoded = np.full(n, b"", dtype=object)
        if ok.any():
            pred = predict_ab(self.model, l_small[torch.from_numpy(ok).to(self.device)])
            if self.compose_on_device:
                # full-res Lab->RGB on the accelerator; the L planes are the only full-res data shipped in
                composed = {}
                by_size: dict[tuple[int, int], list[tuple[int, int]]] = {}  # (H, W) -> [(row, pred index)]
                for j, i in enumerate(np.flatnonzero(ok)):
                    by_size.setdefault((int(batch["height"][i]), int(batch["width"][i])), []).append((i, j))
                for group in by_size.values():  # archives are mostly one size: few groups, few kernels
                    L = torch.stack(
                        [l_device[i] if i in l_device else _l_full(batch, i).to(self.device) for i, _ in group]
                    )
                    rgbs = compose_batch(L, pred[[j for _, j in group]])  # (n, H, W, 3) uint8
                    composed.update({i: rgbs[k] for k, (i, _) in enumerate(group)})
                if self.encode_jpeg_quality is not None:
                    from torchvision.io import encode_jpeg

                    rows = list(composed)
                    blobs = encode_jpeg([composed[i].permute(2, 0, 1) for i in rows], quality=self.encode_jpeg_quality)
                    for i, blob in zip(rows, blobs):
                        encoded[i] = blob.cpu().numpy().tobytes()
                else:
                    for i, t in composed.items():
                        rgb[i] = t.cpu().numpy().tobytes()
            else:
                ab[ok] = pred.cpu().numpy().astype(np.float16)
        # pass every other column through (e.g. evaluate's originals); drop what is consumed here
        consumed = {"l_small", "jpeg", "orientation"} | ({"l_full"} if self.compose_on_device else set())
        out = {k: v for k, v in batch.items() if k not in consumed}
        out["error"] = errors
        if self.compose_on_device:
            out["rgb"] = rgb
            out["encoded"] = encoded
        else:
            out["ab"] = ab
        return out


def colorized_rgb(batch: dict, i: int) -> np.ndarray:
    """Row i of a predicted batch -> full-res uint8 RGB (H, W, 3), composing on this CPU if needed."""
    import torch

    from raycolor.colorize import compose

    h, w = int(batch["height"][i]), int(batch["width"][i])
    if "rgb" in batch:
        return np.frombuffer(batch["rgb"][i], dtype=np.uint8).reshape(h, w, 3)
    return compose(_l_full(batch, i), torch.from_numpy(batch["ab"][i].astype(np.float32))).numpy()


def _part_name(sources_in_batch) -> str:
    digest = hashlib.sha1("\n".join(sorted(sources_in_batch)).encode()).hexdigest()[:20]
    return f"part-{digest}.parquet"


def _finish_batch(
    batch: dict,
    *,
    output: str,
    fmt: str,
    png_level: int,
    jpeg_quality: int,
    parquet_images: bool,
    model_id: str,
    s3_endpoint,
    retries: int,
    io_concurrency: int = DEFAULT_IO_CONCURRENCY,
) -> dict:
    import torch

    torch.set_num_threads(1)
    n = len(batch["source"])
    rows: dict[str, list] = {name: [] for name in MANIFEST_SCHEMA.names}
    blobs: list[bytes | None] = []
    ext = images.extension(fmt)
    out_uris: list[str | None] = [None] * n
    encoded: list[bytes | None] = [None] * n
    for i in range(n):
        if not batch["error"][i]:
            if "encoded" in batch and len(batch["encoded"][i]):
                encoded[i] = bytes(batch["encoded"][i])  # encoded by the actor (nvJPEG)
            else:
                encoded[i] = images.encode(colorized_rgb(batch, i), fmt, png_level=png_level, jpeg_quality=jpeg_quality)
            out_uris[i] = sources.join_uri(output, "images", sources.output_key(batch["relpath"][i], ext))
    todo = [i for i in range(n) if out_uris[i] is not None]
    # the batch's image writes in flight together (each still atomic); the manifest part follows them
    written = sources.write_many(
        [(out_uris[i], encoded[i]) for i in todo], s3_endpoint=s3_endpoint, retries=retries, max_in_flight=io_concurrency
    )
    failures = dict(zip(todo, written))
    for i in range(n):
        source, err = batch["source"][i], batch["error"][i] or None
        out_uri, blob = out_uris[i], encoded[i]
        if failures.get(i) is not None:  # past the retry limit: an error row, never a silent loss
            err, out_uri, blob = f"write_failed: {sources.redact(failures[i], out_uri)}", None, None
        rows["source"].append(source)
        rows["output"].append(out_uri)
        rows["status"].append("ok" if err is None else "error")
        rows["error"].append(err)
        rows["width"].append(int(batch["width"][i]) or None)  # 0: never decoded
        rows["height"].append(int(batch["height"][i]) or None)
        rows["model_id"].append(model_id)
        rows["format"].append(fmt)
        rows["finished_at"].append(time.time())
        blobs.append(blob)
    table = pa.table(rows, schema=MANIFEST_SCHEMA)
    if parquet_images:
        table = table.append_column(IMAGE_COLUMN, pa.array(blobs, type=pa.binary()))
    buf = io.BytesIO()
    pq.write_table(table, buf)
    part = sources.join_uri(output, "manifest", _part_name(rows["source"]))
    sources.write_bytes_atomic(part, buf.getvalue(), s3_endpoint=s3_endpoint, retries=retries)
    return {"source": np.array(rows["source"], dtype=object), "status": np.array(rows["status"], dtype=object)}


# --------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------


def read_manifest(output: str, *, s3_endpoint=None, columns=None) -> pa.Table:
    """All manifest rows under OUTPUT/manifest/ (empty table if none), with a `_part` column."""
    fs, path = sources.filesystem(sources.join_uri(output, "manifest"), s3_endpoint=s3_endpoint)
    try:
        names = sorted(p for p in fs.ls(path, detail=False) if p.endswith(".parquet"))
    except FileNotFoundError:
        names = []
    cols = columns or MANIFEST_SCHEMA.names
    tables = []
    for name in names:
        t = pq.read_table(io.BytesIO(fs.cat_file(name)), columns=cols)
        tables.append(t.append_column("_part", pa.array([name] * t.num_rows, type=pa.string())))
    if not tables:
        return pa.table({c: pa.array([], type=MANIFEST_SCHEMA.field(c).type) for c in cols} | {"_part": pa.array([], pa.string())})
    return pa.concat_tables(tables, promote_options="default")


def _remove_duplicates(output: str, table: pa.Table, *, s3_endpoint, retries: int) -> int:
    """Keep one row per source (the first, by part name); rewrite parts that held extra copies."""
    seen: set[str] = set()
    drop: dict[str, set[int]] = {}
    srcs, parts = table.column("source").to_pylist(), table.column("_part").to_pylist()
    index_in_part: dict[str, int] = {}
    for src, part in zip(srcs, parts):
        k = index_in_part.get(part, 0)
        index_in_part[part] = k + 1
        if src in seen:
            drop.setdefault(part, set()).add(k)
        seen.add(src)
    if not drop:
        return 0
    fs, _ = sources.filesystem(output, s3_endpoint=s3_endpoint)
    for part, rows in drop.items():
        t = pq.read_table(io.BytesIO(fs.cat_file(part)))
        keep = [i for i in range(t.num_rows) if i not in rows]
        if not keep:  # every row is a copy: the part goes
            fs.rm(part)
            continue
        buf = io.BytesIO()
        pq.write_table(t.take(pa.array(keep, type=pa.int64())), buf)
        uri = sources.join_uri(output, "manifest", part.rsplit("/", 1)[-1])
        sources.write_bytes_atomic(uri, buf.getvalue(), s3_endpoint=s3_endpoint, retries=retries)
    return sum(len(r) for r in drop.values())


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def _absolute(output: str) -> str:
    # Ray workers run in another working directory: relative local paths must be resolved here
    if "://" in output:
        return output.rstrip("/")
    return sources.filesystem(output)[1]


def _cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def predicted_dataset(items: list[sources.Item], *, checkpoint_uri: str, render_size: int, batch_size: int,
                      gpus: int, cpu_actors: int | None, max_pixels: int | None, storage, compose_on_device: bool,
                      keep_rgb: bool = False, device_codec: bool = False, encode_jpeg_quality: int | None = None):
    """Lazy dataset of items -> decode tasks -> model actor pool. Rows: source, relpath, width, height,
    error ("" when fine) and either l_full + ab (CPU compose) or rgb (composed on the device)."""
    import ray
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    cpus = _cluster_cpus()
    n_actors = gpus if gpus > 0 else (cpu_actors or 1)
    endpoint, retries = storage.s3_endpoint, storage.retries
    # small blocks so every stage has several tasks in flight, but not so small that overhead dominates
    per_block = max(1, min(batch_size, math.ceil(len(items) / (4 * cpus))))
    ds = ray.data.from_items(
        [asdict(i) for i in items], override_num_blocks=max(1, math.ceil(len(items) / per_block))
    )
    ds = ds.map_batches(
        _decode_batch,
        batch_format="numpy",
        batch_size=None,
        fn_kwargs={
            "render_size": render_size,
            "max_pixels": max_pixels,
            "s3_endpoint": endpoint,
            "retries": retries,
            "io_concurrency": storage.io_concurrency,
            "keep_rgb": keep_rgb,
            "device_codec": device_codec,
        },
        num_cpus=1,
        # Ray Data fuses a task stage into a following actor stage when their pool sizes match; fused,
        # Pillow decoding would run inside the single model process. A task pool sized to the cluster's
        # CPUs (never the actor count) keeps the stages apart, and is the right cap for decoding anyway.
        compute=TaskPoolStrategy(size=cpus if cpus != n_actors else cpus + 1),
    )
    return ds.map_batches(
        Predictor,
        batch_format="numpy",
        batch_size=batch_size,
        compute=ActorPoolStrategy(size=n_actors),
        num_gpus=1 if gpus > 0 else 0,
        # CPU mode: the actor reserves no CPU slot (it still runs `threads` torch threads). Reserving one
        # left a 2-core node a single task slot, which Ray Data kept giving to decoding: nothing was
        # written until the model had seen every image (bench/colorize_throughput.py; docs/performance.md)
        num_cpus=1 if gpus > 0 else 0,
        fn_constructor_kwargs={
            "checkpoint_uri": checkpoint_uri,
            "use_gpu": gpus > 0,
            "compose_on_device": compose_on_device,
            # CPU mode: the model gets the cores the CPU tasks leave idle (they are mostly waiting on it)
            "threads": max(1, cpus // n_actors),
            "s3_endpoint": endpoint,
            "encode_jpeg_quality": encode_jpeg_quality,
        },
    )


def build_dataset(items: list[sources.Item], config: ColorizeConfig, *, output: str, render_size: int, model_id: str):
    """The lazy Ray Data pipeline for `items` (not yet executed)."""
    device_codec = config.gpus > 0 if config.device_codec is None else config.device_codec
    ds = predicted_dataset(
        items,
        checkpoint_uri=config.checkpoint,
        render_size=render_size,
        batch_size=config.batch_size,
        gpus=config.gpus,
        cpu_actors=config.cpu_actors,
        max_pixels=config.max_pixels,
        storage=config.storage,
        compose_on_device=config.gpus > 0 or device_codec,
        device_codec=device_codec,
        encode_jpeg_quality=config.jpeg_quality if device_codec and config.format == "jpeg" else None,
    )
    return ds.map_batches(
        _finish_batch,
        batch_format="numpy",
        batch_size=None,
        num_cpus=1,
        fn_kwargs={
            "output": output,
            "fmt": config.format,
            "png_level": config.png_level,
            "jpeg_quality": config.jpeg_quality,
            "parquet_images": config.parquet_images,
            "model_id": model_id,
            "s3_endpoint": config.storage.s3_endpoint,
            "retries": config.storage.retries,
            "io_concurrency": config.storage.io_concurrency,
        },
    )


def resolve_model(checkpoint_uri: str, render_size: int | None, *, s3_endpoint) -> tuple[checkpoint.CheckpointMeta, int]:
    """Read the checkpoint's metadata (failing fast, before any Ray work) and settle the render size."""
    meta = checkpoint.read_meta(checkpoint_uri, s3_endpoint=s3_endpoint)
    size = render_size or meta.render_size
    if size % 16:
        raise ValueError(f"render size must be a multiple of 16, got {size}")
    return meta, size


def colorize(
    config: ColorizeConfig,
    *,
    on_total: Callable[[int, int], None] | None = None,
    on_rows: Callable[[int, int], None] | None = None,
) -> ColorizeSummary:
    """Colorize every input under config.output; resumable.

    Progress hooks, called on the driver: on_total(inputs, skipped) once the listing and the resume check
    are done, then on_rows(ok, error) for each finished batch."""
    import ray

    start = time.time()
    endpoint, retries = config.storage.s3_endpoint, config.storage.retries
    output = _absolute(config.output)
    meta, render_size = resolve_model(config.checkpoint, config.render_size, s3_endpoint=endpoint)
    items = sources.list_items(config.inputs, s3_endpoint=endpoint)
    if not ray.is_initialized():
        ray.init()
    runtime.check_output_reachable(output, shared=config.storage.shared_output)
    if config.gpus and ray.cluster_resources().get("GPU", 0) < config.gpus:
        raise ValueError(
            f"--gpus {config.gpus} but the cluster has {int(ray.cluster_resources().get('GPU', 0))} GPU(s)"
        )
    done = set(read_manifest(output, s3_endpoint=endpoint, columns=["source"]).column("source").to_pylist())
    todo = [i for i in items if i.source not in done]
    if on_total:
        on_total(len(items), len(items) - len(todo))
    first_output: float | None = None
    processed = 0
    if todo:
        # _SUCCESS.json marks a finished run: one from an earlier run must not outlive new work
        fs, path = sources.filesystem(sources.join_uri(output, "_SUCCESS.json"), s3_endpoint=endpoint)
        if fs.exists(path):
            fs.rm(path)
        ds = build_dataset(todo, config, output=output, render_size=render_size, model_id=meta.model_id)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            now = time.time()
            first_output = first_output if first_output is not None else now - start
            processed += len(batch["source"])
            if on_rows:
                n_ok = int(np.count_nonzero(batch["status"] == "ok"))
                on_rows(n_ok, len(batch["status"]) - n_ok)
    elapsed = time.time() - start
    table = read_manifest(output, s3_endpoint=endpoint, columns=["source", "status"])
    dupes = _remove_duplicates(output, table, s3_endpoint=endpoint, retries=retries)
    if dupes:
        table = read_manifest(output, s3_endpoint=endpoint, columns=["source", "status"])
    wanted = {i.source for i in items}
    status = {s: st for s, st in zip(table.column("source").to_pylist(), table.column("status").to_pylist()) if s in wanted}
    missing = wanted - status.keys()
    if missing:
        raise RuntimeError(f"{len(missing)} input(s) have no manifest row after the run, e.g. {sorted(missing)[0]}")
    ok = sum(1 for s in status.values() if s == "ok")
    settings = {
        "inputs": list(config.inputs),
        "checkpoint": config.checkpoint,
        "render_size": render_size,
        "format": config.format,
        "png_level": config.png_level,
        "jpeg_quality": config.jpeg_quality,
        "batch_size": config.batch_size,
        "gpus": config.gpus,
        "parquet_images": config.parquet_images,
        "device_codec": config.gpus > 0 if config.device_codec is None else config.device_codec,
    }
    summary = ColorizeSummary(
        inputs=len(items),
        ok=ok,
        error=len(status) - ok,
        skipped=len(items) - len(todo),
        processed=processed,
        elapsed_s=round(elapsed, 3),
        images_per_s=round(processed / elapsed, 3) if elapsed > 0 else 0.0,
        first_output_s=None if first_output is None else round(first_output, 3),
        output=output,
        model_id=meta.model_id,
        settings=settings,
        duplicates_removed=dupes,
    )
    sources.write_bytes_atomic(
        sources.join_uri(output, "_SUCCESS.json"),
        json.dumps(asdict(summary), indent=2).encode(),
        s3_endpoint=endpoint,
        retries=retries,
    )
    return summary
