"""Frozen configuration dataclasses: the only way settings reach the library.

The CLI and jobs/ map flags one-to-one onto these and call one function with them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# Pillow's own default is ~89 Mpx; archives hold big scans, so allow a little more by default.
DEFAULT_MAX_PIXELS = 178_956_970
# Object reads/writes in flight at once per batch (per CPU task); see storage.read_items and
# docs/performance.md ("Object storage latency") for how it was chosen.
DEFAULT_IO_CONCURRENCY = 32
# Inputs per shard (a manifest or listing chunk; a .tar is one shard): the unit of work, resume and, in
# training, of shuffling
DEFAULT_SHARD_SIZE = 10_000


@dataclass(frozen=True)
class StorageConfig:
    s3_endpoint: str | None = None  # overrides AWS_ENDPOINT_URL for S3-compatible stores
    retries: int = 5  # attempts per object read/write before an item becomes an error row
    io_concurrency: int = DEFAULT_IO_CONCURRENCY  # object reads/writes in flight at once per batch
    # a local OUTPUT path is storage shared by every node (NFS, Lustre...): allowed on a multi-node cluster
    shared_output: bool = False


# the default of every storage call's ``store=`` (the dataclass is frozen, so one instance is shared safely)
DEFAULT_STORE = StorageConfig()


@dataclass(frozen=True)
class DerivativeSpec:
    """One --derivative: a copy of each colorized output in `format`, its long edge `long_edge` px (never
    upscaled: an image no bigger is written at its own size), encoded with `options` (EncodeOptions fields, e.g.
    (("jpeg_quality", 80),)) over the run's own. Written to OUTPUT/derivatives/<name>/. `format` and the option
    names are checked against the format registry by colorize's check_config."""

    format: str
    long_edge: int
    options: tuple[tuple[str, int | float | bool], ...] = ()

    @property
    def name(self) -> str:
        """Its folder under OUTPUT/derivatives/ and its `name` in the manifest's `outputs`: "jpeg-3000"."""
        return f"{self.format}-{self.long_edge}"

    @classmethod
    def parse(cls, text: str) -> DerivativeSpec:
        """"FORMAT:LONG_EDGE[:OPTION=VALUE...]" ("jpeg:3000", "jpeg:400:jpeg_quality=80") -> a spec; ValueError
        saying what is wrong. Values: integers, decimals, true / false."""
        parts = str(text).strip().split(":")
        if len(parts) < 2 or not parts[0] or not parts[1].isdigit() or int(parts[1]) < 1:
            raise ValueError(f"{text!r} is not FORMAT:LONG_EDGE[:OPTION=VALUE...] (e.g. jpeg:3000, jpeg:400:jpeg_quality=80)")
        options: dict[str, int | float | bool] = {}
        for opt in parts[2:]:
            key, eq, value = opt.partition("=")
            if not eq or not key or not value or key in options:
                raise ValueError(f"{text!r}: {opt!r} is not OPTION=VALUE (each option once)")
            options[key] = _option_value(value)
        return cls(format=parts[0].lower(), long_edge=int(parts[1]), options=tuple(sorted(options.items())))


def _option_value(text: str) -> int | float | bool:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"option value {text!r} is not a number, true or false") from None


@dataclass(frozen=True)
class TrainConfig:
    data: tuple[str, ...]
    output: str
    val: tuple[str, ...] = ()
    val_fraction: float = 0.1  # hold-out fraction chosen by hashing each path, when no --val
    epochs: int = 10
    image_size: int = 224
    batch_size: int = 32  # per worker
    workers: int = 1
    use_gpu: bool = False
    weights: str | None = "imagenet"  # "imagenet", a local VGG16 state-dict path, or None
    skips: bool = True
    freeze_encoder_epochs: int = 2  # stage 1: encoder frozen (feature extraction)
    finetune_blocks: int = 2  # stage 2: how many top VGG blocks to unfreeze
    lr: float = 1e-3
    finetune_lr: float = 1e-4
    loss: Literal["smooth_l1", "mse"] = "smooth_l1"  # regression head only
    # "regression" (ab, the loss above) or "classification" (logits over quantised ab, class-rebalanced
    # weighted cross-entropy; raycolor.core.abbins)
    head: Literal["regression", "classification"] = "regression"
    weight_decay: float = 0.0
    num_to_keep: int = 2
    max_failures: int = 1
    seed: int = 0
    max_pixels: int = DEFAULT_MAX_PIXELS
    # the trunk's numeric precision: "bf16", "fp32", or "auto": bf16 on CUDA, fp32 on a CPU (training's auto: bf16
    # did not clearly hold the demo's curve; raycolor.core.precision), the losses and L float32 either way
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    storage: StorageConfig = field(default_factory=StorageConfig)


@dataclass(frozen=True)
class ColorizeConfig:
    inputs: tuple[str, ...]
    output: str
    checkpoint: str
    render_size: int | None = None  # None: the checkpoint's own render size
    format: str = "png"  # a format raycolor writes (raycolor.core.formats.WRITABLE; colorize checks it)
    png_level: int = 1  # zlib level; 1 is ~3x faster than Pillow's default 6 and still lossless
    jpeg_quality: int = 92
    jp2_rate: float | None = None  # JPEG 2000: None is lossless (the master form); else bits per pixel, lossy
    tiff_pyramid: bool = False  # TIFF: tiled, with half-size levels as SubIFDs (IIIF image servers)
    batch_size: int = 32
    gpus: int = 0  # 0: CPU actor pool sized to the cluster's CPUs
    cpu_actors: int | None = None  # CPU-mode pool size; None: one actor (it gets the cores the CPU tasks leave)
    parquet_images: bool = False  # also store the encoded image bytes in the manifest
    # "content": an input whose bytes (source_sha256) an earlier input of the run wrote is not written again; its
    # row points at those outputs (duplicate_of). Opt-in: one actor holds ~200 bytes per image written (layout files)
    dedupe: Literal["none", "content"] = "none"
    max_pixels: int = DEFAULT_MAX_PIXELS
    # decode baseline JPEGs (and encode JPEG output) inside the model actor with torchvision/nvJPEG
    # instead of Pillow in CPU tasks; None: on exactly when the actors have GPUs
    device_codec: bool | None = None
    # inputs per shard (the unit of work, resume and ledger): a manifest chunk or a listing chunk; a .tar
    # is one shard whatever its size. Keep it the same across re-runs of one OUTPUT.
    shard_size: int = DEFAULT_SHARD_SIZE
    # re-attempt error rows of finished shards: "transient" (read/write failures) or "all"
    retry_errors: Literal["none", "transient", "all"] = "none"
    force_unlock: bool = False  # take over OUTPUT/_lock.json left by a driver that is gone
    # "files": OUTPUT/images/<key>; "webdataset": one tar per shard, OUTPUT/shards/<shard id>.tar
    layout: Literal["files", "webdataset"] = "files"
    # "keep": the input's EXIF, IPTC-IIM, XMP and resolution go into the output (fixed where no longer true);
    # "strip": none of it. Either way the output says a model made its colour (XMP DigitalSourceType,
    # CreatorTool, model id; EXIF Software) and carries an sRGB ICC profile. docs/colorizing.md has the table.
    metadata: Literal["keep", "strip"] = "keep"
    # output bits per sample, for a format that holds 16 (PNG, TIFF, JP2): "auto" follows the input (a 16-bit
    # master gives 16-bit output), "8" or "16" force it. JPEG and WebP hold 8 bits only.
    bit_depth: Literal["auto", "8", "16"] = "auto"
    # bytes one decode or finish task may hold; None: no budget. Each such task asks Ray for this much memory, so
    # a node runs only as many as fit, and an image whose full-resolution working set (budget.BYTES_PER_PIXEL)
    # is over it becomes a "too_large" error row instead of an out-of-memory kill (docs/colorizing.md, sizing)
    memory_per_cpu: int | None = None
    # stop the run after this many consecutive images failed with an "internal" error (an exception no one
    # planned for: a bug, not a bad file), 0: never. One odd file is its own error row and the run goes on; a bug
    # that fails every image must not write 100M error rows. 50 rows is a few batches: past any run of odd files
    # seen together in one folder, and seconds of work on a GPU node.
    stop_after_internal: int = 50
    # an input with several hues (hand-tinted, a colour photograph; raycolor.core.chroma): "colorize" it as any
    # other (its row says has_colour), or "skip" it: no output, status "skipped", error "has_colour: <chroma>"
    colour_inputs: Literal["colorize", "skip"] = "colorize"
    # the annealed mean's temperature for a classification checkpoint (T -> 0: the mode, T = 1: the mean);
    # a regression checkpoint ignores it
    temperature: float = 0.38
    # the trunk's numeric precision: "bf16", "fp32", or "auto": bf16 on CUDA and on a CPU that runs it natively
    # (AVX512_BF16, AMX), fp32 elsewhere (raycolor.core.precision; the softmax, losses and L stay float32)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # copies of every output at other sizes and formats, made in the same pass from the colorized full-resolution
    # image (--derivative jpeg:3000); each input's row lists them in `outputs`
    derivatives: tuple[DerivativeSpec, ...] = ()
    # --sign: the path of a C2PA signing TOML (alg, sign_cert, private_key path or env:NAME, ta_url;
    # raycolor.core.signing), the same on every node; every output then carries signed Content Credentials. It
    # names files, never holds the key: each finish task process reads the key itself (docs/security.md)
    sign: str | None = None
    storage: StorageConfig = field(default_factory=StorageConfig)

    @property
    def uses_device_codec(self) -> bool:
        """device_codec as set, or by default on exactly when the model actors have GPUs."""
        return self.gpus > 0 if self.device_codec is None else self.device_codec

    @property
    def encode_settings(self) -> dict:
        """The flags that say how outputs are encoded, as raycolor.core.formats.EncodeOptions' keywords."""
        return {"png_level": self.png_level, "jpeg_quality": self.jpeg_quality, "jp2_rate": self.jp2_rate,
                "tiff_pyramid": self.tiff_pyramid}


@dataclass(frozen=True)
class EvaluateConfig:
    checkpoint: str
    data: tuple[str, ...]
    render_size: int | None = None
    batch_size: int = 32
    gpus: int = 0
    gallery: str | None = None  # path of a grey | colorized | original PNG
    gallery_rows: int = 8
    max_pixels: int = DEFAULT_MAX_PIXELS
    # the trunk's numeric precision: "bf16", "fp32", or "auto": bf16 on CUDA and on a CPU that runs it natively
    # (AVX512_BF16, AMX), fp32 elsewhere (raycolor.core.precision; the softmax, losses and L stay float32)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    storage: StorageConfig = field(default_factory=StorageConfig)


@dataclass(frozen=True)
class DemoConfig:
    output: str = "demo-output"
    epochs: int = 6
    image_size: int = 96
    workers: int = 2
    weights: str | None = "imagenet"  # falls back to None (with a message) when the weights cannot be had
