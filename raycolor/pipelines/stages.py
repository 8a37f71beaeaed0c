"""The colorize stages, plain functions of a batch (Ray Data's map_batches runs them in its tasks and actors;
tests/test_stages.py and the benchmarks call them without Ray); raycolor/pipelines/colorize.py wires them
into a dataset. The per-image maths lives in the core modules (images, colorize, color); where and how
images are written in raycolor/outputs (ledger.py, writers.py).

torch is imported only by the stages that use it (decode, the model, compose). A merge, expansion or listing
task often gets a process of its own: the merges are 0-CPU tasks, so while every worker is busy Ray starts a new
one for each, and reaps it when idle (on tests/test_chaos.py's cluster, with a 0-CPU head, 21 of 54 worker
processes ran one merge and nothing else). Importing torch there cost ~2 s of CPU and ~300 MB each, for nothing.

    expand_batch        a shard descriptor -> item rows (a tar's members, a manifest chunk)
    decode_block        bytes -> RGB -> L full-res (uint16) + L at render size
    Predictor           the model on one device: L small -> ab small, or on a device full-res RGB (JPEGs
                        decoded/encoded there with nvJPEG)
    finish_batch        compose + encode + write images (the layout's writer), spool rows per shard
    (merge_shard        per shard: one manifest part + stats (+ the layout's writer's merge): raycolor/outputs/merge.py)

ModelStage, settled once on the driver, says what each stage does; no stage guesses from its columns. What
crosses the object store: L as uint16 (2 B/pixel) and render-size L/ab on the CPU path; with the device codec
the JPEG bytes go to the actor and composed RGB (or encoded JPEG) comes back. Pillow never runs in the actor.

Images are written before their rows (temp + rename locally, one PUT on object stores), so a crash leaves at
worst an image without a row, which the re-run overwrites with identical content. Spool files are named by the
sources they hold, so a retried task overwrites its own file instead of adding a duplicate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import posixpath
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raycolor import inputs, storage
from raycolor.config import DEFAULT_MAX_PIXELS, ColorizeConfig, DerivativeSpec, StorageConfig
from raycolor.core import chroma, derivatives, formats, images, metadata, signing
from raycolor.core.failures import INTERNAL, internal_error
from raycolor.core.budget import BLOCK_PIXELS, BYTES_PER_PIXEL, DEVICE_PIXELS
from raycolor import paths
from raycolor.outputs import ledger
from raycolor.outputs.ledger import DERIVATIVE_IMAGES_COLUMN, IMAGE_COLUMN, MANIFEST_SCHEMA
from raycolor.outputs.merge import spool
from raycolor.outputs.writers import WRITERS
from raycolor.pipelines import runtime


@dataclass(frozen=True)
class ModelStage:
    """How the decode and model stages run (and what they hand on), settled once on the driver from a
    ColorizeConfig or an EvaluateConfig. Every stage reads its mode here, never from the columns a batch
    happens to carry."""

    checkpoint: str
    render_size: int
    batch_size: int  # images per model call
    gpus: int = 0  # 0: CPU actors
    cpu_actors: int | None = None  # CPU-mode pool size; None: one actor
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    storage: StorageConfig = field(default_factory=StorageConfig)
    device_codec: bool = False  # baseline JPEGs travel as their bytes and the actor decodes them
    encode_jpeg_quality: int | None = None  # set: the actor also encodes the output as JPEG (nvJPEG on GPU)
    keep_rgb: bool = False  # the decoded original travels along too (evaluate compares against it)
    temperature: float = 0.38  # the annealed mean's, for a classification checkpoint (ColorizeConfig.temperature)
    depth: str = "8"  # images.decode's depth: "auto" keeps a 16-bit master at 16 bits (PNG/TIFF output)
    bits: str = "auto"  # composed output: "auto" (the decoded array's), "8" or "16"
    memory_budget: int | None = None  # bytes a decode or finish task may hold (ColorizeConfig.memory_per_cpu)
    colour_inputs: str = "colorize"  # "skip": an input with several hues becomes a skipped row (ColorizeConfig)
    # "auto" | "fp32" | "bf16" as asked for (ColorizeConfig.precision): each actor resolves it for its own device
    # (raycolor.core.precision) and its rows' column `precision` says what ran
    precision: str = "auto"

    @property
    def compose_on_device(self) -> bool:
        """The actor composes full-res RGB (column `rgb`, or `encoded` when it encodes too); otherwise it
        hands on `ab` at render size and the next CPU stage composes."""
        return self.gpus > 0 or self.device_codec

    @classmethod
    def for_colorize(cls, config: ColorizeConfig, render_size: int) -> ModelStage:
        codec = config.uses_device_codec
        deep = formats.holds(config.format, 16) and config.bit_depth != "8"
        return cls(
            checkpoint=config.checkpoint,
            render_size=render_size,
            batch_size=config.batch_size,
            gpus=config.gpus,
            cpu_actors=config.cpu_actors,
            max_pixels=config.max_pixels,
            storage=config.storage,
            device_codec=codec,
            # derivatives are reduced from the composed RGB on the CPU: the actor then hands that on, not a JPEG
            encode_jpeg_quality=(config.jpeg_quality if codec and formats.get(config.format).name == "jpeg"
                                 and not config.derivatives else None),
            # a 16-bit master stays 16-bit only as deep as the output can hold it
            depth="auto" if deep else "8",
            bits=config.bit_depth if deep else "8",
            memory_budget=config.memory_per_cpu,
            temperature=config.temperature,
            colour_inputs=config.colour_inputs,
            precision=config.precision,
        )

    def pixel_limit(self) -> tuple[int | None, str]:
        """(most pixels an input may have, how to name that limit in its error row): --max-pixels, or fewer
        when the memory budget holds fewer (at the bytes per pixel of the deepest image this stage decodes)."""
        if not self.memory_budget:
            return self.max_pixels, "the limit"
        bpp = BYTES_PER_PIXEL[8 if self.depth == "8" else 16]
        fits = self.memory_budget // bpp
        if self.max_pixels is not None and self.max_pixels <= fits:
            return self.max_pixels, "the limit"
        return fits, f"what --memory-per-cpu {self.memory_budget / 1e9:.3g} GB holds at {bpp} B/pixel"

    @property
    def block_pixels(self) -> int:
        """Most pixels one block of decoded images holds (one bigger image travels alone): the memory budget's
        worth at this stage's bytes per pixel, or budget.BLOCK_PIXELS without one. Blocks, and so every
        decode, model and finish call, are cut by this rather than by a row count."""
        if not self.memory_budget:
            return BLOCK_PIXELS
        return max(1, min(BLOCK_PIXELS, self.memory_budget // BYTES_PER_PIXEL[8 if self.depth == "8" else 16]))

    def dataset_limits(self, cpus: int) -> dict:
        """Ray Data's limits for this stage's datasets (runtime.dataset_limits): blocks of block_pixels of packed L
        (2 B/pixel), and STORE_BLOCKS_PER_CPU such blocks per CPU of the cluster in the object store, so decoding
        runs ahead of a slow finish stage by a few blocks per CPU, not by half the store."""
        block = 2 * self.block_pixels
        return {"block_bytes": block, "object_store_bytes": STORE_BLOCKS_PER_CPU * cpus * block}

    def output_bits(self, decoded_bits: int) -> int:
        """Bits per sample of a composed image whose input decoded at `decoded_bits`."""
        return decoded_bits if self.bits == "auto" else int(self.bits)


def decode_batch(batch: dict, *, stage: ModelStage) -> dict:
    """Item rows -> decoded rows (all of decode_parts' parts in one batch; benchmarks and tests call this)."""
    return _concat(list(decode_parts(batch, stage=stage)))


def decode_parts(batch: dict, *, stage: ModelStage) -> Iterator[dict]:
    """Item rows -> decoded rows: L packed at full resolution and L at render size, handed on in parts of at
    most stage.block_pixels pixels (one bigger image travels alone), so a task holds one part's images, not
    its batch's. stage.keep_rgb: the decoded RGB (raw bytes) travels along, for evaluation against the
    original. stage.device_codec: baseline JPEGs skip Pillow and travel as their own bytes (+ EXIF
    orientation) to the actor, which decodes them on its device; everything else is decoded here as usual.
    Columns other than the item's pass through."""
    import torch

    torch.set_num_threads(1)  # one task per CPU slot; torch must not oversubscribe the node
    store = stage.storage
    max_pixels, limit = stage.pixel_limit()
    n = len(batch["source"])
    pre = batch["error"]  # rows that failed before reading (a shard that could not be expanded)
    items = inputs.Item.from_batch(batch, [i for i in range(n) if not pre[i]])
    # the one reading loop (training's too): the whole batch's reads in flight together, so object-store
    # latency is paid about once per batch; a failed read or decode is this row's error, the job goes on
    peek = (lambda data: images.device_decodable_jpeg(data, max_pixels=max_pixels)) if stage.device_codec else None
    decoded = iter(inputs.read_decoded(
        items,
        store=store,
        max_pixels=max_pixels,
        peek=peek,
        depth=stage.depth,
        limit=limit,
    ))
    # the item's columns are consumed here; everything else (the ledger's shard bookkeeping) travels on
    passthrough = {k: v for k, v in batch.items() if k not in _ITEM_COLUMNS}
    part: list[tuple[int, dict]] = []
    pixels = 0
    for i in range(n):
        row = {"error": pre[i]} if pre[i] else _decode_row(decoded, stage)
        part.append((i, row))
        pixels += row.get("width", 0) * row.get("height", 0)
        if pixels >= stage.block_pixels:
            yield _decoded_part(passthrough, part, stage)
            part, pixels = [], 0
    if part:
        yield _decoded_part(passthrough, part, stage)


def _decode_row(decoded: Iterator[inputs.Decoded], stage: ModelStage) -> dict:
    """The next read item -> its decoded columns (error only, when it failed). Takes it from the iterator
    itself, so that the decoded RGB goes as soon as L is made (nothing else holds it)."""
    from raycolor.core.colorize import pack_l, prepare

    got = next(decoded)
    sha = {"source_sha256": got.sha256} if got.sha256 else {}  # the bytes read, hashed by the reading loop
    if got.error is not None:
        return {"error": got.error, **sha}
    if got.peeked is not None:  # a JPEG the actor decodes on its device
        orientation, width, height, m = got.peeked
        return {"jpeg": got.data, "orientation": orientation, "width": width, "height": height,
                "meta": m.pack(), "bits": stage.output_bits(8), **sha}
    rgb, meta = got.rgb, got.meta
    del got
    try:
        row = {"height": rgb.shape[0], "width": rgb.shape[1],
               "bits": stage.output_bits(16 if rgb.dtype == np.uint16 else 8), "meta": meta.pack(), **sha}
        colour = chroma.measure(rgb)  # a few ms whatever the size (0 for a grey source's stride-0 view)
        row.update(_colour_columns(colour))
        skipped = _skipped(row, colour, stage)
        if skipped:
            return skipped
        if stage.keep_rgb:
            row["original"] = rgb.tobytes()
        L, small = prepare(rgb, stage.render_size)
        del rgb  # a 39 MP scan: 117 MB gone before L is packed
        row.update(l_full=pack_l(L), l_small=small.numpy())
    except Exception as e:  # this image's error row (raycolor.core.failures), never the task's end
        return {"error": internal_error(e, "prepare"), **sha}
    return row


def _colour_columns(c: chroma.Chroma) -> dict:
    """A decoded row's columns of raycolor.core.chroma's measure (NaN / -1: not measured, null in the manifest)."""
    return {"input_chroma": c.input_chroma, "tone_hue": np.nan if c.tone_hue is None else c.tone_hue,
            "has_colour": int(c.has_colour)}


def _skips(c: chroma.Chroma, stage: ModelStage) -> str | None:
    """The error of an input left alone (stage.colour_inputs "skip" and it has colour): "has_colour: <chroma>"
    (ledger.HAS_COLOUR; finish_batch makes its status "skipped"); None when it is colorized."""
    return f"{ledger.HAS_COLOUR}: {c.input_chroma:.1f}" if stage.colour_inputs == "skip" and c.has_colour else None


def _skipped(row: dict, c: chroma.Chroma, stage: ModelStage) -> dict | None:
    """`row` as a skipped row (its size and colour, no pixels: it is not colorized), or None (_skips)."""
    error = _skips(c, stage)
    keep = ("height", "width", "input_chroma", "tone_hue", "has_colour", "source_sha256")
    return {"error": error, **{k: row[k] for k in keep if k in row}} if error else None


def _objects(values: list) -> np.ndarray:
    """A 1-D object array of exactly these values (np.array would look inside sequences)."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _decoded_part(passthrough: dict, part: list[tuple[int, dict]], stage: ModelStage) -> dict:
    """Decoded rows -> the batch the next stage gets: passthrough columns of those rows + the decoded ones."""
    idx = np.array([i for i, _ in part], dtype=np.int64)
    rows = [row for _, row in part]
    r = stage.render_size
    l_small = np.zeros((len(rows), 1, r, r), dtype=np.float32)
    for k, row in enumerate(rows):
        if "l_small" in row:
            l_small[k] = row["l_small"]
    out = {k: v[idx] for k, v in passthrough.items()}
    out.update(
        width=np.array([row.get("width", 0) for row in rows], dtype=np.int64),
        height=np.array([row.get("height", 0) for row in rows], dtype=np.int64),
        bits=np.array([row.get("bits", 8) for row in rows], dtype=np.int64),  # of the output (stage.output_bits)
        meta=_objects([row.get("meta", b"") for row in rows]),  # metadata.Metadata.pack(): the finish stage writes it back
        error=_objects([row.get("error") or "" for row in rows]),  # "": no error (an all-null column would not survive Arrow)
        l_full=_objects([row.get("l_full", b"") for row in rows]),
        l_small=l_small,
        input_chroma=np.array([row.get("input_chroma", np.nan) for row in rows], dtype=np.float64),
        tone_hue=np.array([row.get("tone_hue", np.nan) for row in rows], dtype=np.float64),
        has_colour=np.array([row.get("has_colour", -1) for row in rows], dtype=np.int8),  # -1: not measured
        source_sha256=_objects([row.get("source_sha256") or "" for row in rows]),  # "": never read
    )
    if stage.keep_rgb:
        out["original"] = _objects([row.get("original", b"") for row in rows])
    if stage.device_codec:
        out["jpeg"] = _objects([row.get("jpeg", b"") for row in rows])
        out["orientation"] = np.array([row.get("orientation", 1) for row in rows], dtype=np.int64)
    return out


def _concat(parts: list[dict]) -> dict:
    """Batches with the same columns -> one batch."""
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def decode_block(block: dict, *, stage: ModelStage) -> Iterator[dict]:
    """A block of item rows -> decoded rows, read a group at a time and handed on in parts (decode_parts).
    A group is stage.batch_size items, or as many as stage.block_pixels holds at the size of the images read
    so far, starting with one: a block of 39 MP scans reads one at a time, a block of thumbnails a batch at a
    time. (Ray Data's own batch_size=32 costs a batcher pass per batch: 61 s to the first shard of 2M
    manifest entries against 40 s this way.)"""
    n = len(block["source"])
    start, group = 0, 1
    while start < n:
        stop = min(n, start + group)
        seen = pixels = 0
        for part in decode_parts({k: v[start:stop] for k, v in block.items()}, stage=stage):
            sizes = part["width"] * part["height"]
            seen, pixels = seen + int(np.count_nonzero(sizes)), pixels + int(sizes.sum())
            yield part
        start = stop
        runtime.trim_heap(pixels * 8)  # RGB, float L and packed L passed through
        per_image = pixels / seen if seen else 0
        group = max(1, min(stage.batch_size, int(stage.block_pixels // per_image) if per_image else 2 * group))


def _restarted_actor() -> bool:
    """Whether this process is an actor that Ray restarted after its first process died."""
    import ray

    return ray.is_initialized() and ray.get_runtime_context().was_current_actor_reconstructed


_ITEM_COLUMNS = ("uri", "offset", "size")  # read by the decode stage; source and relpath stay with the row

# Decoded blocks the object store holds per CPU of the cluster (ModelStage.dataset_limits): 256 MiB a CPU at the
# default block size, 4 GiB for a 16-CPU GPU node, which at 4,000 images/s is a second of its pipeline.
STORE_BLOCKS_PER_CPU = 8


def _l_full(batch: dict, i: int):
    from raycolor.core.colorize import unpack_l

    return unpack_l(batch["l_full"][i], int(batch["height"][i]), int(batch["width"][i]))


@contextlib.contextmanager
def _torchvision_io() -> Iterator[None]:
    """torchvision 0.29 warns on every call of its image codecs that TorchCodec will replace them; they are still
    its nvJPEG path (and GPU machines here run 0.26), so the warning says nothing a user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                                category=DeprecationWarning)
        yield


class Predictor:
    """The model on one device. Keeps no per-image CPU work: L small in, ab (or RGB, on GPU) out."""

    def __init__(self, stage: ModelStage, *, threads: int):
        import torch

        from raycolor.core import checkpoint

        if stage.gpus == 0:
            torch.set_num_threads(max(1, threads))
        device = torch.device("cuda" if stage.gpus > 0 else "cpu")
        self.broken: Exception | None = None
        try:
            model, self.meta = checkpoint.load(stage.checkpoint, map_location=device, store=stage.storage)
        except Exception as e:
            if not _restarted_actor():
                raise  # at start Ray Data fails the run at once with this error
            # Ray restarted this actor (its process died) and the checkpoint cannot be read any more. Raising
            # here would leave a dead actor that Ray Data 2.60 neither replaces nor reports when no batch was
            # in flight on it (ray-project/ray#62746): the run would hang. Alive, it fails the next batch with
            # this error instead, which ends the run with a clear message.
            self.broken, self.meta = e, None
            return
        self._use(model, device, stage)

    @classmethod
    def with_model(cls, model, device, stage: ModelStage) -> Predictor:
        """A Predictor around a model already in memory (benchmarks, tests): __call__ without the actor."""
        self = cls.__new__(cls)
        self.meta, self.broken = None, None
        self._use(model, device, stage)
        return self

    def _use(self, model, device, stage: ModelStage) -> None:
        from raycolor.core import precision

        self.device = device
        self.model = precision.to_layout(model)
        self.stage = stage
        self.precision = precision.resolve(stage.precision, device)  # "bf16" | "fp32": what this actor runs

    def _decode_jpegs(self, batch: dict, rows: list[int], errors: np.ndarray) -> dict:
        """Rows' JPEG bytes -> upright uint8 (3, H, W) on the device; a failing image becomes an error row."""
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        from raycolor.core.colorize import orient

        data = [torch.frombuffer(bytearray(batch["jpeg"][i]), dtype=torch.uint8) for i in rows]
        with _torchvision_io():
            try:
                decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)  # one batched call
            except RuntimeError:  # one bad image fails the batch: find it
                decoded = []
                for i, d in zip(rows, data):
                    try:
                        decoded.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=self.device))
                    except RuntimeError as e:
                        errors[i] = f"truncated: {storage.redact(e)}"
                        decoded.append(None)
        return {
            i: orient(t, int(batch["orientation"][i])) for i, t in zip(rows, decoded) if t is not None
        }

    def _measure(self, on_device: dict, i: int, colour: dict, errors: np.ndarray) -> None:
        """Row i's JPEG, decoded on the device: chroma.measure of its samples (grid's rows and columns, a few
        MB brought to the host), into the colour columns; with colour_inputs "skip" and colour, a skipped row."""
        import torch

        t = on_device[i]  # (3, H, W) uint8
        rows, cols, k = chroma.grid(int(t.shape[1]), int(t.shape[2]))
        block = t[:, torch.from_numpy(rows).to(t.device)][:, :, torch.from_numpy(cols).to(t.device)]
        c = chroma.judge(chroma.from_grid(block.permute(1, 2, 0).cpu().numpy(), k))
        for key, value in _colour_columns(c).items():
            colour[key][i] = value
        if _skips(c, self.stage):
            errors[i] = _skips(c, self.stage)
            del on_device[i]

    def __call__(self, batch: dict) -> dict:
        """A block of decoded rows -> predicted rows, stage.batch_size rows per model call. With the compose on
        the device, a call also holds at most budget.DEVICE_PIXELS of full-resolution images there."""
        if self.broken is not None:
            raise self.broken
        sizes = np.asarray(batch["width"], dtype=np.int64) * np.asarray(batch["height"], dtype=np.int64)
        cuts = chunks(sizes, rows=self.stage.batch_size, pixels=DEVICE_PIXELS if self.stage.compose_on_device else None)
        if len(cuts) == 1:
            return self._guarded(batch)
        return _concat([self._guarded({k: v[a:b] for k, v in batch.items()}) for a, b in cuts])

    def _guarded(self, batch: dict) -> dict:
        """_predict, with an unexpected exception costing only the images that raise it: the batch is tried
        again one image at a time, and an image that still raises becomes its error row."""
        try:
            return self._predict(batch)
        except Exception as e:
            if len(batch["error"]) == 1:
                return self._failed(batch, internal_error(e, "model"))
        return _concat([self._guarded({k: v[i:i + 1] for k, v in batch.items()}) for i in range(len(batch["error"]))])

    def _failed(self, batch: dict, error: str) -> dict:
        """A one-row batch as _predict hands it on, with `error` set and nothing predicted."""
        r = batch["l_small"].shape[-1]
        consumed = {"l_small", "jpeg", "orientation"} | ({"l_full"} if self.stage.compose_on_device else set())
        out = {k: v for k, v in batch.items() if k not in consumed}
        out["error"] = _objects([error])
        out["precision"] = _objects([self.precision])  # the columns _predict's rows have, for _concat
        if self.stage.compose_on_device:
            out["rgb"], out["encoded"] = _objects([b""]), _objects([b""])
        else:
            out["ab"] = np.zeros((1, 2, r, r), dtype=np.float16)
        return out

    def _predict(self, batch: dict) -> dict:
        import torch

        from raycolor.core import color
        from raycolor.core.colorize import compose_batch, predict_ab, render_l

        errors = np.array(batch["error"], dtype=object)
        n = len(errors)
        r = batch["l_small"].shape[-1]
        stage = self.stage
        jpeg_rows = [i for i in range(n) if stage.device_codec and not errors[i] and len(batch["jpeg"][i])]
        on_device = self._decode_jpegs(batch, jpeg_rows, errors) if jpeg_rows else {}
        colour = {k: np.array(batch[k]) for k in ("input_chroma", "tone_hue", "has_colour") if k in batch}
        for i in list(on_device):  # the decode stage measured every other image (chroma.measure)
            if colour:
                self._measure(on_device, i, colour, errors)
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
            pred = predict_ab(self.model, l_small[torch.from_numpy(ok).to(self.device)], temperature=stage.temperature,
                              precision=self.precision)
            if stage.compose_on_device:
                # full-res Lab->RGB on the accelerator; the L planes are the only full-res data shipped in
                composed = {}
                by_size: dict[tuple[int, int, int], list[tuple[int, int]]] = {}  # (H, W, bits) -> [(row, pred index)]
                for j, i in enumerate(np.flatnonzero(ok)):
                    key = (int(batch["height"][i]), int(batch["width"][i]), int(batch["bits"][i]))
                    by_size.setdefault(key, []).append((i, j))
                for (_, _, bits), group in by_size.items():  # archives are mostly one size: few groups, few kernels
                    L = torch.stack(
                        [l_device[i] if i in l_device else _l_full(batch, i).to(self.device) for i, _ in group]
                    )
                    rgbs = compose_batch(L, pred[[j for _, j in group]], bits=bits)  # (n, H, W, 3) uint8/uint16
                    composed.update({i: rgbs[k] for k, (i, _) in enumerate(group)})
                if stage.encode_jpeg_quality is not None:
                    from torchvision.io import encode_jpeg

                    rows = list(composed)
                    with _torchvision_io():
                        blobs = encode_jpeg([composed[i].permute(2, 0, 1) for i in rows], quality=stage.encode_jpeg_quality)
                    for i, blob in zip(rows, blobs):
                        encoded[i] = blob.cpu().numpy().tobytes()
                else:
                    for i, t in composed.items():
                        rgb[i] = t.cpu().numpy().tobytes()
            else:
                ab[ok] = pred.cpu().numpy().astype(np.float16)
        # pass every other column through (e.g. evaluate's originals); drop what is consumed here
        consumed = {"l_small", "jpeg", "orientation"} | ({"l_full"} if stage.compose_on_device else set())
        out = {k: v for k, v in batch.items() if k not in consumed}
        out.update(colour)
        out["error"] = errors
        out["precision"] = np.full(n, self.precision, dtype=object)
        if stage.compose_on_device:
            out["rgb"] = rgb
            out["encoded"] = encoded
        else:
            out["ab"] = ab
        return out


def chunks(sizes: np.ndarray, *, rows: int, pixels: int | None = None) -> list[tuple[int, int]]:
    """Consecutive [a, b) ranges over images of these pixel counts: at most `rows` images and (if set) `pixels`
    pixels each, an image bigger than that alone."""
    cuts, a, total = [], 0, 0
    for i, size in enumerate(sizes):
        if i > a and (i - a >= rows or (pixels is not None and total + size > pixels)):
            cuts.append((a, i))
            a, total = i, 0
        total += int(size)
    return [*cuts, (a, len(sizes))] if len(sizes) else [(0, 0)]


def colorized_rgb(batch: dict, i: int, stage: ModelStage) -> np.ndarray:
    """Row i of a predicted batch -> full-res RGB (H, W, 3), uint8 or (a 16-bit output) uint16, composing on
    this CPU if the actor did not."""
    import torch

    from raycolor.core.colorize import compose, packed_l

    h, w, bits = int(batch["height"][i]), int(batch["width"][i]), int(batch["bits"][i])
    if stage.compose_on_device:
        return np.frombuffer(batch["rgb"][i], dtype=np.uint16 if bits == 16 else np.uint8).reshape(h, w, 3)
    # L stays packed (2 B/pixel): compose unpacks it a strip at a time
    return compose(packed_l(batch["l_full"][i], h, w), torch.from_numpy(batch["ab"][i].astype(np.float32)), bits=bits).numpy()


@dataclass(frozen=True)
class Rendered:
    """One final output of an input (the master or a derivative): what finish_batch hashes and writes, and the
    manifest's `outputs` describes."""

    name: str  # ledger.MASTER, or the derivative's name ("jpeg-3000")
    format: str
    extension: str  # ".tif", ".jpg"
    width: int
    height: int
    data: bytes  # the file's final bytes
    report: str  # the metadata report (the manifest's `metadata` column is the master's)


def rendered_outputs(batch: dict, i: int, *, stage: ModelStage, config: ColorizeConfig, prov: metadata.Provenance,
                     keep: bool) -> list[Rendered]:
    """Row i of a predicted batch -> its final outputs: the master, then each of config.derivatives. The input was
    decoded and predicted once; every derivative is reduced (raycolor.core.derivatives) from the same colorized
    full-resolution array the master was encoded from, and carries the master's metadata with its own size.
    Every output leaves through :func:`_final`."""
    meta = metadata.Metadata.unpack(batch["meta"][i])
    w, h = int(batch["width"][i]), int(batch["height"][i])
    if stage.encode_jpeg_quality is not None:  # encoded by the actor (nvJPEG): metadata goes in here
        rgb = None  # (ModelStage.for_colorize leaves the encoding on the CPU when there are derivatives)
        data, report = formats.embed_jpeg(bytes(batch["encoded"][i]), meta, prov, keep=keep, width=w, height=h)
    else:
        rgb = colorized_rgb(batch, i, stage)
        data, report = formats.encode(rgb, config.format, meta, prov, keep=keep, options=encode_options(config))
    outs = [Rendered(ledger.MASTER, config.format, images.extension(config.format), w, h, data, report)]
    for spec in config.derivatives:
        small = derivatives.reduce(rgb, spec.long_edge)  # rgb itself when it is no bigger: never upscaled
        size = (int(small.shape[1]), int(small.shape[0]))
        data, report = formats.encode(small, spec.format, derivatives.scaled_meta(meta, (w, h), size), prov, keep=keep,
                                      options=derivative_options(config, spec))
        outs.append(Rendered(spec.name, spec.format, images.extension(spec.format), *size, data, report))
        del small
    sha = batch.get("source_sha256")
    source = {"source_sha256": (str(sha[i]) or None) if sha is not None else None,  # "": never read
              "source_name": posixpath.basename(str(batch["relpath"][i])), "model_id": prov.model_id}
    return [_final(out, config, **source) for out in outs]


def _final(out: Rendered, config: ColorizeConfig, *, source_sha256: str | None, source_name: str,
           model_id: str) -> Rendered:
    """An output's bytes as they will be hashed, written and verified. The one place to change them after
    encoding: with --sign, the C2PA manifest goes in here (raycolor/core/signing.py), so the manifest's sha256 is
    the signed file's. signing.SignFailed (or a SignError building this process's Signer: the key missing on
    this node) is the image's sign_failed row (finish_batch)."""
    if config.sign is None:
        return out
    signer = signing.signer_for(_sign_config(config.sign))  # one per finish task process
    data = signer.sign(out.data, out.format, source_sha256=source_sha256, source_name=source_name, model_id=model_id)
    return dataclasses.replace(out, data=data)


_SIGN_CONFIGS: dict[str, signing.SignConfig] = {}


def _sign_config(path: str) -> signing.SignConfig:
    """The --sign TOML, read once per process (it names files; the key is read by the Signer)."""
    if path not in _SIGN_CONFIGS:
        _SIGN_CONFIGS[path] = signing.SignConfig.load(path)
    return _SIGN_CONFIGS[path]


def derivative_options(config: ColorizeConfig, spec: DerivativeSpec) -> formats.EncodeOptions:
    """How a derivative is encoded: the run's options (encode_options), no pyramid unless asked, then its own."""
    return encode_options(config).derived(spec.options)


def encode_options(config: ColorizeConfig) -> formats.EncodeOptions:
    """How this run encodes its outputs (one finish task is one CPU: a codec's threads stay at one)."""
    return formats.EncodeOptions(**config.encode_settings)


def _colour_of(batch: dict, i: int) -> dict:
    """Row i's manifest columns input_chroma, tone_hue, has_colour (null where not measured)."""
    if "has_colour" not in batch or int(batch["has_colour"][i]) < 0:
        return {"input_chroma": None, "tone_hue": None, "has_colour": None}
    hue = float(batch["tone_hue"][i])
    return {"input_chroma": float(batch["input_chroma"][i]), "tone_hue": None if np.isnan(hue) else hue,
            "has_colour": bool(batch["has_colour"][i])}


# Encoded images a finish task holds before it writes them (all of a batch of thumbnails, one by one for big
# masters): writes in flight together hide object-store latency, a bound keeps a block of scans from piling up.
WRITE_BYTES = 64 << 20


class Claims:
    """`--dedupe content`: which input of this run first wrote the bytes of each source_sha256 (a dict here; on Ray
    one actor of the driver's holds it, ClaimsActor). An input is registered only once all its outputs are written,
    so a duplicate never points at an output that is not there."""

    def __init__(self) -> None:
        self.first: dict[str, dict] = {}

    def lookup(self, shas: list[str]) -> list[dict | None]:
        return [self.first.get(s) for s in shas]

    def register(self, entries: list[tuple[str, dict]]) -> None:
        for sha, entry in entries:
            self.first.setdefault(sha, entry)


class RemoteClaims:
    """Claims through the driver's actor (ClaimsActor): one call per finish batch each way."""

    def __init__(self, actor) -> None:
        self.actor = actor

    def lookup(self, shas: list[str]) -> list[dict | None]:
        return runtime.ray_get(self.actor.lookup.remote(shas))

    def register(self, entries: list[tuple[str, dict]]) -> None:
        runtime.ray_get(self.actor.register.remote(entries))


def finish_batch(batch: dict, *, config: ColorizeConfig, stage: ModelStage, output: str, model_id: str,
                 claims: Claims | RemoteClaims | None = None) -> dict:
    """Encode (rendered_outputs: the master and its derivatives), hash, write the images (unless config.layout's
    writer spools them: its merge writes them), spool the rows per shard. An input is done only when every one of
    its outputs is written: a failed write of any of them makes its row an error row. `output`: config.output made
    absolute. `claims` (`--dedupe content`): an input whose bytes an earlier input of this run already wrote is
    not written again; its row points at those outputs (`duplicate_of`: that input's source)."""
    import torch

    torch.set_num_threads(1)
    f = _Finishing(batch, config=config, stage=stage, output=output, model_id=model_id)
    f.find_copies(claims)  # --dedupe content: rows whose bytes another input writes
    f.encode_and_write()  # each row's outputs encoded, hashed and written, a bounded number of bytes at a time
    f.register(claims)  # --dedupe content: what this batch wrote, for the batches after it
    table = f.manifest()  # one row per input
    spool(table, f.shard_col, output=output, store=config.storage)
    return f.driver_rows(table)


class _Finishing:
    """One finish batch's state, through finish_batch's steps: each row's rendered outputs, where they go, their
    hashes, and the error a row got here (an encode that failed, a write past the retry limit)."""

    def __init__(self, batch: dict, *, config: ColorizeConfig, stage: ModelStage, output: str, model_id: str):
        self.batch, self.config, self.stage, self.output, self.model_id = batch, config, stage, output, model_id
        self.n = n = len(batch["source"])
        self.writer, self.store = WRITERS[config.layout], config.storage
        self.prov = metadata.Provenance(software=metadata.SOFTWARE, model_id=model_id)
        self.keep = config.metadata == "keep"
        self.done: list[list[Rendered] | None] = [None] * n  # each row's outputs, master first
        self.uris: list[list[str] | None] = [None] * n  # where each goes (writer.row_output / derivative_output)
        self.hashes: list[list[tuple[str, int]] | None] = [None] * n  # each output's (sha256, bytes), before the bytes go
        self.failures: dict[int, Exception | None] = {}  # row -> its first output's failed write (None: written)
        self.failed_uri: dict[int, str] = {}
        self.own_errors: dict[int, str] = {}  # row -> the error this task gave it ("internal: ...", "too_large: ...")
        self.shard_col = [str(x) for x in batch["shard"]]
        self.keep_blobs = config.parquet_images or self.writer.spools_images  # the spool carries the images too
        self.pending: list[int] = []
        self.source_sha = batch.get("source_sha256")
        # --dedupe content: row -> the entry of the input that wrote its bytes (an earlier batch's), or the row of
        # this batch that writes them (its first with those bytes: written, then its copies point at it)
        self.earlier: dict[int, dict] = {}
        self.copy_of: dict[int, int] = {}

    def find_copies(self, claims: Claims | RemoteClaims | None) -> None:
        if claims is None or self.source_sha is None:
            return
        sha, batch = self.source_sha, self.batch
        todo = [i for i in range(self.n) if not batch["error"][i] and sha[i]]
        for i, entry in zip(todo, claims.lookup([str(sha[i]) for i in todo])):
            if entry is not None:
                self.earlier[i] = entry
        first_here: dict[str, int] = {}
        for i in todo:
            if i not in self.earlier:
                j = first_here.setdefault(str(sha[i]), i)
                if j != i:
                    self.copy_of[i] = j

    def encode_and_write(self) -> None:
        for i in range(self.n):
            if not self.batch["error"][i] and i not in self.earlier and i not in self.copy_of:
                self._encode(i)
        self._write_pending()
        for i, j in list(self.copy_of.items()):  # a copy whose first could not be written is written itself
            if not self._written(j):
                del self.copy_of[i]
                self._encode(i)
        self._write_pending()

    def _encode(self, i: int) -> None:
        """Row i's outputs rendered, placed and hashed (an error: its own row); queued for writing."""
        try:
            self.done[i] = rendered_outputs(self.batch, i, stage=self.stage, config=self.config, prov=self.prov,
                                            keep=self.keep)
            relpath = self.batch["relpath"][i]
            self.uris[i] = [self.writer.row_output(self.output, paths.output_key(relpath, out.extension))
                            if out.name == ledger.MASTER else
                            self.writer.derivative_output(self.output, out.name, paths.output_key(relpath, out.extension))
                            for out in self.done[i]]
            self.hashes[i] = [(hashlib.sha256(out.data).hexdigest(), len(out.data)) for out in self.done[i]]
        except (signing.SignFailed, signing.SignError) as e:  # --sign: this image's row, never the task's end
            self._fail(i, f"{ledger.SIGN_FAILED}: {e}")
            return
        except formats.CannotHold as e:  # e.g. wider than WebP holds: a property of the image, not a bug
            self._fail(i, f"too_large: {e}")
            return
        except Exception as e:  # this image's error row, never the task's end
            self._fail(i, internal_error(e, "encode"))
            return
        if not self.writer.spools_images:
            self.pending.append(i)
            if sum(len(out.data) for j in self.pending for out in self.done[j]) >= WRITE_BYTES:
                self._write_pending()

    def _fail(self, i: int, error: str) -> None:
        self.own_errors[i] = error
        self.done[i] = self.uris[i] = None

    def _write_pending(self) -> None:
        """The pending images written (before the manifest part that names them)."""
        if not self.pending:
            return
        pending, done, uris = self.pending, self.done, self.uris
        pairs = [(uri, out.data) for i in pending for uri, out in zip(uris[i], done[i])]
        owners = [i for i in pending for _ in done[i]]
        try:
            written = self.writer.write_images(pairs, [self.shard_col[i] for i in owners], output=self.output,
                                               store=self.store)
        except Exception as e:  # the writer itself broke (not a store's answer): these images' rows say so
            err = internal_error(e, "write")
            written = [None] * len(pairs)
            for i in pending:
                self.own_errors[i] = err
        for i, (uri, _), failed in zip(owners, pairs, written):  # a row fails with its first output that failed
            if self.failures.get(i) is None:
                self.failures[i] = failed
                if failed is not None:
                    self.failed_uri[i] = uri
        handled = sum(len(out.data) for i in pending for out in done[i])
        handled += sum(3 * int(self.batch["width"][i]) * int(self.batch["height"][i]) for i in pending)
        if not self.keep_blobs:
            for i in pending:  # written: a task holds WRITE_BYTES of encoded images, not its block's
                done[i] = [dataclasses.replace(out, data=b"") for out in done[i]]
        pending.clear()
        runtime.trim_heap(handled)  # what was composed and encoded

    def _written(self, i: int) -> bool:
        return self.done[i] is not None and self.failures.get(i) is None and i not in self.own_errors

    def _entry(self, i: int) -> dict:
        """Row i's outputs as a copy of it names them (--dedupe content)."""
        return {"source": self.batch["source"][i], "output": self.uris[i][0], "sha256": self.hashes[i][0][0],
                "outputs": _outputs_of(self.done[i], self.uris[i], self.hashes[i])}

    def register(self, claims: Claims | RemoteClaims | None) -> None:
        if claims is None or self.source_sha is None:
            return
        firsts = [i for i in range(self.n) if self._written(i) and self.source_sha[i]]
        claims.register([(str(self.source_sha[i]), self._entry(i)) for i in firsts])
        for i, j in self.copy_of.items():
            self.earlier[i] = self._entry(j)

    def manifest(self) -> pa.Table:
        """One manifest row per input (MANIFEST_SCHEMA), with the image columns when the spool carries images."""
        batch, source_sha = self.batch, self.source_sha
        rows: dict[str, list] = {name: [] for name in MANIFEST_SCHEMA.names}
        blobs: list[bytes | None] = []
        extra: list[list[bytes] | None] = []
        for i in range(self.n):
            source, err = batch["source"][i], batch["error"][i] or None
            outs = self.done[i]
            out_uri = self.uris[i][0] if self.uris[i] else None
            if self.failures.get(i) is not None:  # past the retry limit: an error row, never a silent loss
                err, outs, out_uri = f"write_failed: {storage.redact(self.failures[i], self.failed_uri.get(i))}", None, None
            elif i in self.own_errors:
                err, outs, out_uri = storage.redact(self.own_errors[i], source), None, None
            rows["source"].append(source)
            rows["output"].append(out_uri)
            rows["status"].append("ok" if err is None else "skipped" if ledger.reason_of(err) == ledger.HAS_COLOUR else "error")
            rows["error"].append(err)
            rows["width"].append(int(batch["width"][i]) or None)  # 0: never decoded
            rows["height"].append(int(batch["height"][i]) or None)
            rows["model_id"].append(self.model_id)
            rows["format"].append(self.config.format)
            rows["precision"].append(str(batch["precision"][i]) if err is None and "precision" in batch else None)
            rows["finished_at"].append(time.time())
            rows["bit_depth"].append(int(batch["bits"][i]) if err is None else None)
            rows["metadata"].append(outs[0].report if err is None and outs else None)
            for key, value in _colour_of(batch, i).items():
                rows[key].append(value)
            rows["source_sha256"].append((source_sha[i] or None) if source_sha is not None else None)
            first = self.earlier.get(i) if err is None else None
            rows["duplicate_of"].append(first["source"] if first else None)
            if first:  # written once, by `first`: this row names its outputs
                rows["output"][-1] = first["output"]
                rows["sha256"].append(first["sha256"])
                rows["outputs"].append(first["outputs"])
                blobs.append(None)
                extra.append(None)
                continue
            rows["sha256"].append(self.hashes[i][0][0] if err is None else None)
            rows["outputs"].append(None if err is not None else _outputs_of(outs, self.uris[i], self.hashes[i]))
            blobs.append(outs[0].data if self.keep_blobs and err is None else None)
            extra.append([out.data for out in outs[1:]] if self.keep_blobs and err is None else None)
        table = pa.table(rows, schema=MANIFEST_SCHEMA)
        if self.keep_blobs:
            table = table.append_column(IMAGE_COLUMN, pa.array(blobs, type=pa.binary()))
            if self.config.derivatives:
                table = table.append_column(DERIVATIVE_IMAGES_COLUMN, pa.array(extra, type=DERIVATIVE_IMAGES_COLUMN.type))
        return table

    def driver_rows(self, table: pa.Table) -> dict:
        """What goes back to the driver: a few columns per row (the manifest rows themselves are spooled)."""
        errors = table.column("error").to_pylist()
        return {
            "source": np.array(table.column("source").to_pylist(), dtype=object),
            "status": np.array(table.column("status").to_pylist(), dtype=object),
            # the driver stops a run whose every image fails with an internal error (ColorizeConfig.stop_after_internal)
            "internal": np.array([e if ledger.reason_of(e) == INTERNAL else "" for e in errors], dtype=object),
            "shard": np.array(self.shard_col, dtype=object),
            "shard_n": np.asarray(self.batch["shard_n"], dtype=np.int64),
            # 1: the model predicted this row (it reached this stage without an error); _SUCCESS.json's `predictions`
            "predicted": np.array([0 if self.batch["error"][i] else 1 for i in range(self.n)], dtype=np.int8),
        }


def _outputs_of(outs: list[Rendered], uris: list[str], hashes: list[tuple[str, int]]) -> list[dict]:
    """The manifest's `outputs` entries of one input: the master first, then each derivative."""
    return [{"name": out.name, "uri": uri, "format": out.format, "width": out.width, "height": out.height,
             "bytes": size, "sha256": sha} for out, uri, (sha, size) in zip(outs, uris, hashes)]


def _expand_shard(row: dict, *, output: str, store: StorageConfig) -> list[dict]:
    """One shard descriptor -> its item rows (source, relpath under the root's namespace, uri, offset,
    size, shard, shard_n, error). A shard that cannot be expanded becomes one error row (its marker)."""
    shard = inputs.Shard.from_row(row)
    try:
        items = inputs.expand(shard, store=store)
    except Exception as e:  # after retries: one error row stands for the shard; --retry-errors redoes it
        return [{"source": row["marker"], "relpath": "", "uri": "", "offset": 0, "size": 0, "shard": shard.id,
                 "shard_n": 1, "error": f"read_failed: {storage.redact(e, shard.uri)}"}]
    if shard.retry != "none":
        fs, path = storage.filesystem(paths.part_uri(output, shard.id), store=store)
        try:
            old = pq.read_table(io.BytesIO(storage.retrying(lambda: fs.cat_file(path), store.retries)),
                                columns=["source", "error", "status"])
        except FileNotFoundError:  # the part is gone (removed by hand): the whole shard is redone
            old = None
        if old is not None:
            redo = {s for s, e, st in zip(old.column("source").to_pylist(), old.column("error").to_pylist(),
                                          old.column("status").to_pylist())
                    if ledger.is_retryable(e, shard.retry, st)}
            if row["marker"] not in redo:
                items = [i for i in items if i.source in redo]
    ns = shard.namespace
    return [
        {"source": i.source, "relpath": paths.namespaced(ns, i.relpath), "uri": i.uri, "offset": i.offset,
         "size": i.size, "shard": shard.id, "shard_n": len(items), "error": ""}
        for i in items
    ]


def expand_batch(batch: pa.Table, *, rows: Callable[..., list[dict]] | None = None, schema: pa.Schema | None = None,
                 **kw) -> pa.Table:
    """Shard descriptors (one per batch) -> one table of their item rows, ``rows(descriptor, **kw)`` each:
    colorize's (:func:`_expand_shard`, schema ``_ITEM_ROWS``) unless another expansion and its schema are given
    (training keeps one side of its hold-out). Run it as ``map_batches(expand_batch, batch_size=1,
    batch_format="pyarrow", num_cpus=1)`` followed by ``repartition(target_num_rows_per_block=...)``: Ray Data
    fuses the two (see colorize.build_dataset)."""
    rows, schema = rows or _expand_shard, schema or _ITEM_ROWS
    return pa.Table.from_pylist([r for row in batch.to_pylist() for r in rows(row, **kw)], schema=schema)


_ITEM_ROWS = pa.schema([("source", pa.string()), ("relpath", pa.string()), ("uri", pa.string()), ("offset", pa.int64()),
                        ("size", pa.int64()), ("shard", pa.string()), ("shard_n", pa.int64()), ("error", pa.string())])

