"""The `raycolor` command: flags map one-to-one onto the config dataclasses, then one call.

Ray and torch are imported inside the commands, so `raycolor --help` is instant.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import IO, Annotated, Any, Optional

import typer

from raycolor import __version__
from raycolor.core import formats
from raycolor.config import (
    DEFAULT_STORE,
    ColorizeConfig,
    DemoConfig,
    DerivativeSpec,
    EvaluateConfig,
    StorageConfig,
    TrainConfig,
)
from raycolor.pipelines.progress import DEFAULT_EVERY_S

app = typer.Typer(
    name="raycolor",
    help="Colorize black-and-white photos at archive scale with Ray.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)

EXIT_USAGE = 2


_UNITS = {"": 1, "B": 1, "K": 1e3, "KB": 1e3, "M": 1e6, "MB": 1e6, "G": 1e9, "GB": 1e9, "T": 1e12, "TB": 1e12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_bytes(text: str) -> int:
    """"4GB", "512MiB", "1.5G", "2000000" -> bytes; a clear usage error otherwise."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = m.group(2).upper() if m else None
    if not m or unit not in _UNITS or float(m.group(1)) <= 0:
        raise typer.BadParameter(f"{text!r} is not a size such as 4GB, 512MiB or 2000000000")
    return int(float(m.group(1)) * _UNITS[unit])


# --format's choices: every format the registry writes (raycolor.core.formats), nothing spelled here
Format = Enum("Format", {name: name for name in formats.WRITABLE}, type=str)


class MetadataMode(str, Enum):
    keep = "keep"
    strip = "strip"


class BitDepth(str, Enum):
    auto = "auto"
    eight = "8"
    sixteen = "16"


class Layout(str, Enum):
    files = "files"
    webdataset = "webdataset"


class ColourInputs(str, Enum):
    colorize = "colorize"
    skip = "skip"


class Head(str, Enum):
    regression = "regression"
    classification = "classification"


class Loss(str, Enum):
    smooth_l1 = "smooth_l1"
    mse = "mse"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


Address = Annotated[
    Optional[str],
    typer.Option("--address", help="Ray cluster to join (else RAY_ADDRESS, else a local Ray on 127.0.0.1)."),
]
S3Endpoint = Annotated[
    Optional[str],
    typer.Option("--s3-endpoint", help="S3-compatible endpoint URL (else AWS_ENDPOINT_URL / the AWS default)."),
]
Verbose = Annotated[
    bool, typer.Option("--verbose", "-v", help="Show Ray's own logs and the workers' output on the terminal.")
]
ProgressEvery = Annotated[
    float,
    typer.Option(min=1.0, help="Seconds between progress lines when stderr is not a terminal (a live bar when it is)."),
]
SharedOutput = Annotated[
    bool,
    typer.Option(
        "--shared-output", help="A local --output path is shared storage mounted on every node (else refused on a multi-node cluster)."
    ),
]
Retries = Annotated[int, typer.Option(min=1, help="Attempts per object read/write before an item becomes an error row.")]
PrecisionOpt = Annotated[
    Precision,
    typer.Option(
        "--precision",
        help="The model's numeric precision: auto is bf16 on GPUs and on CPUs that run it natively (AVX512_BF16, AMX), "
        "fp32 elsewhere. L and the colour maths stay float32 either way (docs/performance.md, docs/quality.md).",
    ),
]
IOConcurrency = Annotated[
    int,
    typer.Option(
        "--io-concurrency",
        min=1,
        help="Object reads/writes in flight at once per batch (hides object-store latency; 1 = one at a time).",
    ),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"raycolor {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Colorize black-and-white photos at archive scale: train with Ray Train, colorize with Ray Data."""


def _usage_errors() -> tuple[type[BaseException], ...]:
    from raycolor.core.checkpoint import CheckpointError
    from raycolor.core.model import WeightsUnavailableError
    from raycolor.storage import InputError

    # ValueError covers ledger.OutputLocked (another driver holds OUTPUT) and ledger.OwnershipError
    return (InputError, CheckpointError, WeightsUnavailableError, ValueError, ConnectionError, FileNotFoundError)


def _stopped_errors() -> tuple[type[BaseException], ...]:
    from raycolor.pipelines.colorize import InternalErrors

    return (InternalErrors,)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C so that every `finally` (the OUTPUT lock) runs."""


def _on_sigterm(signum, frame) -> None:
    raise _Terminated()


def _resume_hint() -> str:
    import shlex
    import sys

    return "raycolor " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _out_of_space(e: BaseException) -> str:
    """The ENOSPC / EDQUOT behind `e` (raised here, or in a Ray task: its cause, or its text), else ""."""
    import errno
    import re

    seen: set[int] = set()
    stack: list[Any] = [e]
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, OSError) and x.errno in (errno.ENOSPC, errno.EDQUOT):
            return str(x)
        stack += [getattr(x, "cause", None), x.__cause__, x.__context__]
    m = re.search(rf"(?:OSError|IOError): \[Errno (?:{errno.ENOSPC}|{errno.EDQUOT})\][^\n]*", str(e))
    return m.group(0) if m else ""


def _run(
    address: str | None,
    store: StorageConfig,
    call: Callable[[IO[str]], Any],
    *,
    verbose: bool = False,
    connect: bool = True,
) -> Any:
    """Connect to Ray (printing which, first), make the one call; user errors exit 2 with one line, a full
    disk exits 1 and Ctrl-C / SIGTERM exit 130 / 143, each with one line on how to resume.

    Unless verbose, Ray's own logs stay off the terminal (runtime.quiet_stderr); `call` gets the stream on
    which to draw progress. Anything else that goes wrong is shown in full, with where Ray's logs are.
    """
    import signal
    import threading

    from raycolor.pipelines import runtime
    from raycolor.storage import redact

    owned = connect and not runtime.connected()  # a connection made here is left here, one made before is not

    def leave() -> None:
        if owned:
            runtime.disconnect()  # before the last line: Ray's core would otherwise log after it, unfiltered

    with runtime.quiet_stderr(enabled=not verbose) as terminal:
        try:
            if connect:
                # stderr, so stdout stays machine-readable (evaluate --json)
                typer.echo(runtime.connect(address, store=store, verbose=verbose), err=True)
            if threading.current_thread() is threading.main_thread():
                # after ray.init, whose own handler would exit with status 15 and skip nothing we need
                signal.signal(signal.SIGTERM, _on_sigterm)
            return call(terminal)
        except _usage_errors() as e:
            leave()
            typer.echo(f"error: {redact(e)}", err=True)
            raise typer.Exit(EXIT_USAGE) from None
        except _stopped_errors() as e:  # the run stopped itself and says why and what to do, in one line
            leave()
            typer.echo(f"error: {redact(e)}", err=True)
            raise typer.Exit(1) from None
        except Exception as e:
            if not _out_of_space(e):
                if connect:
                    typer.echo(
                        f"raycolor failed; Ray's full logs: {runtime.logs_dir()} (rerun with --verbose to see them here)",
                        err=True,
                    )
                raise
            leave()
            typer.echo(f"error: no space left on device while writing the output ({redact(_out_of_space(e))}); "
                       f"nothing finished is lost: free space, then run the same command to resume "
                       f"(with --retry-errors for images that became write errors): {redact(_resume_hint())}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt as e:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            term = isinstance(e, _Terminated)
            leave()
            typer.echo(f"{'terminated' if term else 'interrupted'}: nothing finished is lost; "
                       f"run the same command to resume: {redact(_resume_hint())}", err=True)
            raise typer.Exit(143 if term else 130) from None


def _derivative(text: str) -> DerivativeSpec:
    """One --derivative, parsed (config.DerivativeSpec.parse) with its format's registry name ("jpg" -> "jpeg"); its
    options are checked with the rest of the config (colorize.check_config)."""
    try:
        spec = DerivativeSpec.parse(text)
        return dataclasses.replace(spec, format=formats.get(spec.format).name)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--derivative") from None


def _progress(label: str, terminal: IO[str], every_s: float):
    from raycolor.pipelines.progress import Progress

    return Progress(label, stream=terminal, every_s=every_s)


def _table(title: str, rows: dict[str, Any]) -> None:
    """A plain two-column summary: paths are printed whole (never wrapped), so they can be copied."""
    width = max(len(k) for k in rows)
    typer.echo(title)
    for key, value in rows.items():
        typer.echo(f"  {key:<{width}}  {value:.3f}" if isinstance(value, float) else f"  {key:<{width}}  {value}")


def _not_taken_rows(counts: dict[str, int]) -> dict[str, str]:
    """The "not taken" row of a summary table: {".pdf": 12000, ".xml": 345} -> "12,000 .pdf, 345 .xml", in
    the order the listing gave (largest first: inputs.merge_not_taken); no row when nothing was left out."""
    shown = [f"{n:,} {k}" for k, n in (counts or {}).items() if n]
    return {"not taken": ", ".join(shown)} if shown else {}


@app.command(
    epilog="Example: raycolor train --data s3://photos/train/ --output s3://runs/exp1 --workers 4 --gpu --epochs 20"
)
def train(
    data: Annotated[list[str], typer.Option("--data", help="Inputs as colorize takes them: folder, s3:// prefix, .tar, manifest (file, folder or glob); repeatable.")],
    output: Annotated[str, typer.Option(help="Run directory or s3:// prefix: checkpoints, metrics.jsonl, model/.")],
    val: Annotated[Optional[list[str]], typer.Option("--val", help="Validation URIs (else a hashed hold-out).")] = None,
    val_fraction: Annotated[float, typer.Option(min=0.0, max=0.9)] = TrainConfig.val_fraction,
    epochs: Annotated[int, typer.Option(min=1)] = TrainConfig.epochs,
    image_size: Annotated[int, typer.Option(help="Training crop side in pixels (multiple of 16).")] = TrainConfig.image_size,
    batch_size: Annotated[int, typer.Option(min=1, help="Per worker.")] = TrainConfig.batch_size,
    workers: Annotated[int, typer.Option(min=1, help="Ray Train workers (one GPU each with --gpu).")] = TrainConfig.workers,
    gpu: Annotated[bool, typer.Option("--gpu/--cpu", help="Train on GPUs (NCCL, bf16) or CPUs (gloo).")] = TrainConfig.use_gpu,
    weights: Annotated[str, typer.Option(help="Encoder init: imagenet, none, or a local VGG16 state-dict path.")] = TrainConfig.weights,
    skips: Annotated[bool, typer.Option("--skips/--no-skips", help="U-Net skips from VGG stages.")] = TrainConfig.skips,
    freeze_encoder_epochs: Annotated[int, typer.Option(min=0, help="Stage 1: epochs with the encoder frozen.")] = TrainConfig.freeze_encoder_epochs,
    finetune_blocks: Annotated[int, typer.Option(min=0, max=5, help="Stage 2: top VGG blocks to unfreeze.")] = TrainConfig.finetune_blocks,
    lr: Annotated[float, typer.Option(help="Decoder learning rate.")] = TrainConfig.lr,
    finetune_lr: Annotated[float, typer.Option(help="Learning rate of unfrozen encoder blocks.")] = TrainConfig.finetune_lr,
    loss: Annotated[Loss, typer.Option(help="Loss on normalised ab (regression head).")] = Loss(TrainConfig.loss),
    head: Annotated[
        Head,
        typer.Option(help="regression: ab directly; classification: quantised ab bins, class-rebalanced weighted "
                     "cross-entropy, decoded by the annealed mean (Zhang et al. 2016)."),
    ] = Head(TrainConfig.head),
    weight_decay: float = TrainConfig.weight_decay,
    num_to_keep: Annotated[int, typer.Option(min=1, help="Checkpoints kept in storage.")] = TrainConfig.num_to_keep,
    max_failures: Annotated[int, typer.Option(min=-1, help="Worker failures to recover from (-1: unlimited).")] = TrainConfig.max_failures,
    seed: int = TrainConfig.seed,
    max_pixels: int = TrainConfig.max_pixels,
    precision: PrecisionOpt = Precision(TrainConfig.precision),
    s3_endpoint: S3Endpoint = None,
    retries: Retries = StorageConfig.retries,
    io_concurrency: IOConcurrency = StorageConfig.io_concurrency,
    shared_output: SharedOutput = StorageConfig.shared_output,
    address: Address = None,
    verbose: Verbose = False,
) -> None:
    """Fit the colorizer with Ray Train (DDP); re-running the same command resumes from the last checkpoint."""
    config = TrainConfig(
        data=tuple(data),
        output=output,
        val=tuple(val or ()),
        val_fraction=val_fraction,
        epochs=epochs,
        image_size=image_size,
        batch_size=batch_size,
        workers=workers,
        use_gpu=gpu,
        weights=None if weights.lower() == "none" else weights,
        skips=skips,
        freeze_encoder_epochs=freeze_encoder_epochs,
        finetune_blocks=finetune_blocks,
        lr=lr,
        finetune_lr=finetune_lr,
        loss=loss.value,
        head=head.value,
        weight_decay=weight_decay,
        num_to_keep=num_to_keep,
        max_failures=max_failures,
        seed=seed,
        max_pixels=max_pixels,
        precision=precision.value,
        storage=StorageConfig(
            s3_endpoint=s3_endpoint, retries=retries, io_concurrency=io_concurrency, shared_output=shared_output
        ),
    )

    def call(terminal):
        from raycolor.pipelines.training import driver as ray_train

        return ray_train.fit(config, terminal=terminal)

    result = _run(address, config.storage, call, verbose=verbose)
    _table("raycolor train", _train_rows(result))


def _train_rows(result: Any) -> dict[str, Any]:
    rows = {"epochs run": result.epochs_run}
    for key in ("train_loss", "val_loss", "val_psnr", "baseline_psnr"):
        if key in (result.metrics or {}):
            rows[key] = result.metrics[key]
    rows.update(
        {
            "images/s": result.images_per_s,
            "elapsed s": result.elapsed_s,
            "model": result.model_uri,
            "metrics": result.metrics_uri,
            "curves": getattr(result, "curves_uri", None) or "- (matplotlib not installed)",
        }
    )
    return rows


@app.command(
    epilog="Example: raycolor colorize s3://archive/scans/ manifest.parquet --output s3://archive/colorized "
    "--checkpoint s3://runs/exp1/model --gpus 4 --format jpeg"
)
def colorize(
    inputs: Annotated[list[str], typer.Argument(help="Folders, s3:// prefixes, .tar shards, .txt/.parquet manifests.")],
    output: Annotated[str, typer.Option(help="Local directory or s3:// prefix for images/, manifest/, _SUCCESS.json.")],
    checkpoint: Annotated[str, typer.Option(help="Model directory written by `raycolor train` (OUTPUT/model).")],
    render_size: Annotated[Optional[int], typer.Option(help="Model input side (multiple of 16); default: the checkpoint's.")] = None,
    format: Annotated[
        Format,
        typer.Option("--format", help="Output image format (tiff: deflate, tags carried; jp2: lossless unless "
                     "--jp2-rate; docs/colorizing.md has each)."),
    ] = Format(ColorizeConfig.format),
    jp2_rate: Annotated[
        Optional[float],
        typer.Option("--jp2-rate", min=0.01, max=48,
                     help="JPEG 2000 bits per pixel for lossy (9-7) access copies, e.g. 1.0; default: lossless 5-3."),
    ] = ColorizeConfig.jp2_rate,
    tiff_pyramid: Annotated[
        bool,
        typer.Option("--tiff-pyramid", help="With --format tiff: a tiled TIFF (512 px tiles) with half-size levels "
                     "as SubIFDs down to 256 px, the pyramid IIIF servers (Cantaloupe, IIPImage) and libvips read."),
    ] = ColorizeConfig.tiff_pyramid,
    derivative: Annotated[
        Optional[list[str]],
        typer.Option("--derivative", metavar="FORMAT:LONG_EDGE[:OPTION=VALUE...]",
                     help="Also write a copy of each output at this long edge (never upscaled), e.g. jpeg:3000 "
                     "(an access copy) or jpeg:400:jpeg_quality=80 (a thumbnail), to OUTPUT/derivatives/<format>-<edge>/; "
                     "repeatable. Made from the same prediction; the manifest's `outputs` lists them."),
    ] = None,
    sign: Annotated[
        Optional[str],
        typer.Option("--sign", metavar="CONFIG",
                     help="Sign every output (master and derivatives) with C2PA Content Credentials: CONFIG is a TOML "
                     "with alg, sign_cert, private_key (a file only its owner reads, or env:NAME) and optionally "
                     "ta_url, at the same path on every node. Checked before any image; needs raycolor[sign]. "
                     "JPEG, PNG, TIFF and WebP (not JP2). docs/security.md: how the key reaches the workers."),
    ] = ColorizeConfig.sign,
    metadata: Annotated[
        MetadataMode,
        typer.Option(
            "--metadata",
            help="keep: carry EXIF, IPTC, XMP and resolution from input to output; strip: drop them. "
            "Both mark the output as machine-colorized (IPTC DigitalSourceType, model id).",
        ),
    ] = MetadataMode(ColorizeConfig.metadata),
    memory_per_cpu: Annotated[
        Optional[str],
        typer.Option(
            "--memory-per-cpu",
            help="Memory one decode/finish task may use, e.g. 4GB: tasks ask Ray for it, and a scan too big for it "
            "alone is an error row (see docs/colorizing.md, sizing). Default: no budget.",
        ),
    ] = None,
    bit_depth: Annotated[
        BitDepth,
        typer.Option("--bit-depth", help="PNG/TIFF bits per sample: auto follows the input (16-bit masters stay 16-bit)."),
    ] = BitDepth(ColorizeConfig.bit_depth),
    png_level: Annotated[int, typer.Option(min=0, max=9, help="PNG zlib level (lossless at any level).")] = ColorizeConfig.png_level,
    jpeg_quality: Annotated[int, typer.Option(min=1, max=100)] = ColorizeConfig.jpeg_quality,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model call.")] = ColorizeConfig.batch_size,
    temperature: Annotated[
        float,
        typer.Option(min=0.0, help="Annealed-mean temperature of a classification checkpoint: toward 0 the most "
                     "likely colour (vivid), 1 the mean (muted). A regression checkpoint ignores it."),
    ] = ColorizeConfig.temperature,
    gpus: Annotated[int, typer.Option(min=0, help="Model actors, one GPU each; 0 = CPU actors.")] = ColorizeConfig.gpus,
    cpu_actors: Annotated[Optional[int], typer.Option(min=1, help="CPU-mode model actors (default 1).")] = None,
    parquet_images: Annotated[bool, typer.Option(help="Also store encoded images in the manifest.")] = ColorizeConfig.parquet_images,
    dedupe: Annotated[str, typer.Option(
        "--dedupe", help="content: an input whose bytes (source_sha256) another input of this run already wrote is "
        "not written again; its row names those outputs (duplicate_of). Layout files only.")] = ColorizeConfig.dedupe,
    max_pixels: Annotated[int, typer.Option(help="Decompression-bomb limit per image.")] = ColorizeConfig.max_pixels,
    device_codec: Annotated[
        Optional[bool],
        typer.Option(
            "--device-codec/--cpu-codec",
            help="Decode baseline JPEGs (and encode JPEG output) in the model actor with nvJPEG; default: on with --gpus.",
        ),
    ] = None,
    shard_size: Annotated[
        int, typer.Option(min=1, help="Inputs per shard (manifest or listing chunk; a .tar is one shard). Keep it across re-runs.")
    ] = ColorizeConfig.shard_size,
    retry_errors: Annotated[
        bool, typer.Option("--retry-errors", help="Re-attempt error rows from read/write failures (transient) of earlier runs.")
    ] = False,
    retry_all_errors: Annotated[
        bool, typer.Option("--retry-all-errors", help="Re-attempt every error row, undecodable inputs included.")
    ] = False,
    force_unlock: Annotated[
        bool, typer.Option("--force-unlock", help="Take over OUTPUT/_lock.json left by a driver that is gone.")
    ] = ColorizeConfig.force_unlock,
    layout: Annotated[
        Layout, typer.Option("--layout", help="files: OUTPUT/images/...; webdataset: one tar per shard in OUTPUT/shards/.")
    ] = Layout(ColorizeConfig.layout),
    stop_after_internal: Annotated[
        int,
        typer.Option(min=0, help="Stop after this many consecutive images fail with an internal error (a bug, not a "
                     "bad file; each bad file is its own error row); 0: never."),
    ] = ColorizeConfig.stop_after_internal,
    colour_inputs: Annotated[
        ColourInputs,
        typer.Option("--colour-inputs", help="Inputs with several hues (hand-tinted prints, colour photographs): "
                     "colorize them as any other (the row says has_colour), or skip them: no output, status skipped. "
                     "Toned prints (sepia, cyanotype) are colorized either way (docs/colorizing.md)."),
    ] = ColourInputs(ColorizeConfig.colour_inputs),
    precision: PrecisionOpt = Precision(ColorizeConfig.precision),
    s3_endpoint: S3Endpoint = None,
    retries: Retries = StorageConfig.retries,
    io_concurrency: IOConcurrency = StorageConfig.io_concurrency,
    shared_output: SharedOutput = StorageConfig.shared_output,
    address: Address = None,
    progress_every: ProgressEvery = DEFAULT_EVERY_S,
    verbose: Verbose = False,
) -> None:
    """Colorize every image under INPUTS into OUTPUT; re-running skips what is already done."""
    config = ColorizeConfig(
        inputs=tuple(inputs),
        output=output,
        checkpoint=checkpoint,
        render_size=render_size,
        format=format.value,
        metadata=metadata.value,
        bit_depth=bit_depth.value,
        memory_per_cpu=parse_bytes(memory_per_cpu) if memory_per_cpu else None,
        png_level=png_level,
        jpeg_quality=jpeg_quality,
        jp2_rate=jp2_rate,
        tiff_pyramid=tiff_pyramid,
        derivatives=tuple(_derivative(d) for d in derivative or ()),
        sign=sign,
        batch_size=batch_size,
        temperature=temperature,
        gpus=gpus,
        cpu_actors=cpu_actors,
        parquet_images=parquet_images,
        dedupe=dedupe,
        max_pixels=max_pixels,
        device_codec=device_codec,
        shard_size=shard_size,
        retry_errors="all" if retry_all_errors else "transient" if retry_errors else "none",
        force_unlock=force_unlock,
        layout=layout.value,
        stop_after_internal=stop_after_internal,
        colour_inputs=colour_inputs.value,
        precision=precision.value,
        storage=StorageConfig(
            s3_endpoint=s3_endpoint, retries=retries, io_concurrency=io_concurrency, shared_output=shared_output
        ),
    )

    def call(terminal):
        from raycolor.pipelines import colorize as ray_colorize

        with _progress("colorize", terminal, progress_every) as bar:
            return ray_colorize.colorize(config, on_total=bar.start, on_rows=bar.update)

    s = _run(address, config.storage, call, verbose=verbose)
    _table(
        "raycolor colorize",
        {
            "inputs": s.inputs,
            "ok": s.ok,
            "errors": s.error,
            **({"skipped (has colour)": s.colour_skipped} if s.colour_skipped else {}),
            **({"with colour": s.has_colour} if s.has_colour else {}),
            "skipped (done before)": s.skipped,
            "images/s": s.images_per_s,
            "precision": ", ".join(f"{k} ({v})" for k, v in sorted(s.precision.items())) or "-",
            "first output s": s.first_output_s if s.first_output_s is not None else "-",
            "elapsed s": s.elapsed_s,
            **_not_taken_rows(s.not_taken),
            "output": s.output,
        },
    )


@app.command(epilog="Example: raycolor verify s3://archive/colour --sources")
def verify(
    output: Annotated[str, typer.Argument(help="A colorize OUTPUT (local directory or s3:// prefix).")],
    sources: Annotated[
        bool, typer.Option("--sources", help="Check the inputs against the source_sha256 their rows recorded, "
                           "instead of the outputs.")
    ] = False,
    c2pa: Annotated[
        bool, typer.Option("--c2pa", help="Also verify each output's Content Credentials (--sign): any state but "
                           "valid (untrusted is accepted: no trust list is configured) fails.")
    ] = False,
    s3_endpoint: S3Endpoint = None,
    retries: Retries = StorageConfig.retries,
    io_concurrency: IOConcurrency = StorageConfig.io_concurrency,
    address: Address = None,
    verbose: Verbose = False,
) -> None:
    """Re-read every output an OUTPUT's manifest names, in Ray tasks, and compare it with the SHA-256 recorded
    when it was written: missing, changed and unexpected files are named, and any of them exits 1."""
    store = StorageConfig(s3_endpoint=s3_endpoint, retries=retries, io_concurrency=io_concurrency)

    def call(terminal):
        from raycolor.pipelines.verify import verify as ray_verify

        return ray_verify(output, sources=sources, store=store, c2pa=c2pa)

    result = _run(address, store, call, verbose=verbose)
    r = result.report
    _table(
        f"raycolor verify{' --sources' if sources else ''}{' --c2pa' if c2pa else ''}",
        {"manifest parts": result.parts, "checked": r.checked, "ok": r.ok,
         **({"unhashed (written before fixity)": r.unhashed} if r.unhashed else {}),
         **{kind: n for kind, n in r.counts.items()
            if n or kind in ("missing", "changed", "unexpected") or (kind == "c2pa" and c2pa)},
         "output": result.output},
    )
    for kind, names in r.named.items():
        for name in sorted(names):
            typer.echo(f"{kind}: {name}", err=True)
        if r.counts[kind] > len(names):
            typer.echo(f"{kind}: ... and {r.counts[kind] - len(names):,} more", err=True)
    if not result.ok:
        raise typer.Exit(1)


@app.command(
    name="list",
    epilog="Example: raycolor list s3://archive/scans/ --output s3://archive/lists/scans; "
    "then raycolor colorize s3://archive/lists/scans --output ... (no listing of the prefix again)",
)
def list_(
    inputs: Annotated[list[str], typer.Argument(help="Folders or s3:// prefixes to list (recursively).")],
    output: Annotated[str, typer.Option(help="Folder or s3:// prefix for the manifest shards part-<chunk id>.parquet.")],
    shard_size: Annotated[
        int, typer.Option(min=1, help="Entries per manifest shard.")
    ] = ColorizeConfig.shard_size,
    address: Address = None,
    s3_endpoint: S3Endpoint = None,
    retries: Retries = StorageConfig.retries,
    verbose: Verbose = False,
) -> None:
    """List images once, in parallel Ray tasks (one per sub-folder group), and save the listing as Parquet
    manifest shards (uri, relpath) for `colorize`."""

    store = StorageConfig(s3_endpoint=s3_endpoint, retries=retries)

    def call(terminal):
        from raycolor.pipelines.planning import write_listing

        return write_listing(inputs, output, shard_size=shard_size, store=store)

    entries, parts, not_taken = _run(address, store, call, verbose=verbose)
    _table("raycolor list", {"entries": entries, "manifest shards": parts, **_not_taken_rows(not_taken), "output": output})


@app.command(
    epilog="Example: raycolor evaluate --checkpoint runs/exp1/model --data photos/val --gallery gallery.png --json"
)
def evaluate(
    checkpoint: Annotated[str, typer.Option(help="Model directory (OUTPUT/model of a training run).")],
    data: Annotated[list[str], typer.Option("--data", help="Colour images to grey-ify, colorize and compare; repeatable.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object with model and baseline sections.")] = False,
    gallery: Annotated[Optional[str], typer.Option(help="Write a grey | colorized | original PNG here, with the ab histograms.")] = None,
    gallery_rows: Annotated[int, typer.Option(min=1)] = EvaluateConfig.gallery_rows,
    render_size: Annotated[Optional[int], typer.Option()] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = EvaluateConfig.batch_size,
    gpus: Annotated[int, typer.Option(min=0)] = EvaluateConfig.gpus,
    max_pixels: int = EvaluateConfig.max_pixels,
    precision: PrecisionOpt = Precision(EvaluateConfig.precision),
    s3_endpoint: S3Endpoint = None,
    retries: Retries = StorageConfig.retries,
    io_concurrency: IOConcurrency = StorageConfig.io_concurrency,
    address: Address = None,
    progress_every: ProgressEvery = DEFAULT_EVERY_S,
    verbose: Verbose = False,
) -> None:
    """PSNR, SSIM, colourfulness ratio, AuC (raw and rebalanced) and CIEDE2000 of the model against the grey baseline (ab = 0)."""
    config = EvaluateConfig(
        checkpoint=checkpoint,
        data=tuple(data),
        render_size=render_size,
        batch_size=batch_size,
        gpus=gpus,
        gallery=gallery,
        gallery_rows=gallery_rows,
        max_pixels=max_pixels,
        precision=precision.value,
        storage=StorageConfig(s3_endpoint=s3_endpoint, retries=retries, io_concurrency=io_concurrency),
    )

    def call(terminal):
        from raycolor.pipelines import evaluate as ray_evaluate

        with _progress("evaluate", terminal, progress_every) as bar:
            return ray_evaluate.evaluate(config, on_total=bar.start, on_rows=bar.update)

    report = _run(address, config.storage, call, verbose=verbose)
    if json_out:
        import json

        typer.echo(json.dumps(report.as_json(), allow_nan=True))
        return
    typer.echo(f"raycolor evaluate: {report.images} images, {report.errors} errors, precision {report.precision or '-'}")
    width = max(len(k) for k in report.model)
    typer.echo(f"  {'metric':<{width}}  {'model':>9}  {'grey baseline':>13}")
    for key in report.model:
        typer.echo(f"  {key:<{width}}  {report.model[key]:>9.3f}  {report.baseline[key]:>13.3f}")
    if report.gallery:
        typer.echo(f"gallery: {report.gallery}")


@app.command()
def demo(
    output: Annotated[Path, typer.Option(help="Where the demo writes its run, images, manifest and gallery.")] = Path(DemoConfig.output),
    epochs: Annotated[int, typer.Option(min=1)] = DemoConfig.epochs,
    image_size: Annotated[int, typer.Option(help="Training/render size in pixels (multiple of 16).")] = DemoConfig.image_size,
    workers: Annotated[int, typer.Option(min=1)] = DemoConfig.workers,
    weights: Annotated[str, typer.Option(help="imagenet (falls back to none when offline), none, or a path.")] = DemoConfig.weights,
    address: Address = None,
    verbose: Verbose = False,
) -> None:
    """Train briefly on the bundled sample photos, colorize the held-out ones, write a gallery."""
    config = DemoConfig(output=str(output), epochs=epochs, image_size=image_size, workers=workers, weights=weights)

    def call(terminal):
        from raycolor import demo as demo_module

        return demo_module.run_demo(
            config, echo=typer.echo, progress=lambda label: _progress(label, terminal, DEFAULT_EVERY_S), terminal=terminal
        )

    result = _run(address, DEFAULT_STORE, call, verbose=verbose)
    _table("raycolor demo", result.where())


if __name__ == "__main__":  # pragma: no cover
    app()
