"""The `raycolor` command: flags map one-to-one onto the config dataclasses, then one call.

Ray and torch are imported inside the commands, so `raycolor --help` is instant.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from raycolor import __version__
from raycolor.config import (
    DEFAULT_MAX_PIXELS,
    ColorizeConfig,
    DemoConfig,
    EvaluateConfig,
    StorageConfig,
    TrainConfig,
)

app = typer.Typer(
    name="raycolor",
    help="Colorize black-and-white photos at archive scale with Ray.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)

EXIT_USAGE = 2


class Format(str, Enum):
    png = "png"
    jpeg = "jpeg"


class Layout(str, Enum):
    files = "files"
    webdataset = "webdataset"


class Loss(str, Enum):
    smooth_l1 = "smooth_l1"
    mse = "mse"


Address = Annotated[
    Optional[str],
    typer.Option("--address", help="Ray cluster to join (else RAY_ADDRESS, else a local Ray on 127.0.0.1)."),
]
S3Endpoint = Annotated[
    Optional[str],
    typer.Option("--s3-endpoint", help="S3-compatible endpoint URL (else AWS_ENDPOINT_URL / the AWS default)."),
]
Retries = Annotated[int, typer.Option(min=1, help="Attempts per object read/write before an item becomes an error row.")]


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
    from raycolor.checkpoint import CheckpointError
    from raycolor.model import WeightsUnavailableError
    from raycolor.sources import InputError

    # ValueError covers ledger.OutputLocked (another driver holds OUTPUT) and ledger.OwnershipError
    return (InputError, CheckpointError, WeightsUnavailableError, ValueError, ConnectionError, FileNotFoundError)


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


def _run(address: str | None, s3_endpoint: str | None, call: Callable[[], Any], *, connect: bool = True) -> Any:
    """Connect to Ray (printing which, first), make the one call, map user errors to exit code 2 and
    Ctrl-C / SIGTERM to one line on how to resume and exit 130 / 143."""
    import signal
    import threading

    from raycolor import runtime
    from raycolor.sources import redact

    try:
        if connect:
            # stderr, so stdout stays machine-readable (evaluate --json)
            typer.echo(runtime.connect(address, s3_endpoint=s3_endpoint), err=True)
        if threading.current_thread() is threading.main_thread():
            # after ray.init, whose own handler would exit with status 15 and skip nothing we need
            signal.signal(signal.SIGTERM, _on_sigterm)
        return call()
    except _usage_errors() as e:
        typer.echo(f"error: {redact(e)}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    except Exception as e:
        if not _out_of_space(e):
            raise
        typer.echo(f"error: no space left on device while writing the output ({redact(_out_of_space(e))}); "
                   f"nothing finished is lost: free space, then run the same command to resume "
                   f"(with --retry-errors for images that became write errors): {redact(_resume_hint())}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt as e:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        term = isinstance(e, _Terminated)
        typer.echo(f"{'terminated' if term else 'interrupted'}: nothing finished is lost; "
                   f"run the same command to resume: {redact(_resume_hint())}", err=True)
        raise typer.Exit(143 if term else 130) from None


def _table(title: str, rows: dict[str, Any]) -> None:
    """A plain two-column summary: paths are printed whole (never wrapped), so they can be copied."""
    width = max(len(k) for k in rows)
    typer.echo(title)
    for key, value in rows.items():
        typer.echo(f"  {key:<{width}}  {value:.3f}" if isinstance(value, float) else f"  {key:<{width}}  {value}")


@app.command(
    epilog="Example: raycolor train --data s3://photos/train/ --output s3://runs/exp1 --workers 4 --gpu --epochs 20"
)
def train(
    data: Annotated[list[str], typer.Option("--data", help="Image folder, s3:// prefix, .tar shard or manifest; repeatable.")],
    output: Annotated[str, typer.Option(help="Run directory or s3:// prefix: checkpoints, metrics.jsonl, model/.")],
    val: Annotated[Optional[list[str]], typer.Option("--val", help="Validation URIs (else a hashed hold-out).")] = None,
    val_fraction: Annotated[float, typer.Option(min=0.0, max=0.9)] = 0.1,
    epochs: Annotated[int, typer.Option(min=1)] = 10,
    image_size: Annotated[int, typer.Option(help="Training crop side in pixels (multiple of 16).")] = 224,
    batch_size: Annotated[int, typer.Option(min=1, help="Per worker.")] = 32,
    workers: Annotated[int, typer.Option(min=1, help="Ray Train workers (one GPU each with --gpu).")] = 1,
    gpu: Annotated[bool, typer.Option("--gpu/--cpu", help="Train on GPUs (NCCL, bf16) or CPUs (gloo).")] = False,
    weights: Annotated[str, typer.Option(help="Encoder init: imagenet, none, or a local VGG16 state-dict path.")] = "imagenet",
    skips: Annotated[bool, typer.Option("--skips/--no-skips", help="U-Net skips from VGG stages.")] = True,
    freeze_encoder_epochs: Annotated[int, typer.Option(min=0, help="Stage 1: epochs with the encoder frozen.")] = 2,
    finetune_blocks: Annotated[int, typer.Option(min=0, max=5, help="Stage 2: top VGG blocks to unfreeze.")] = 2,
    lr: Annotated[float, typer.Option(help="Decoder learning rate.")] = 1e-3,
    finetune_lr: Annotated[float, typer.Option(help="Learning rate of unfrozen encoder blocks.")] = 1e-4,
    loss: Annotated[Loss, typer.Option(help="Loss on normalised ab.")] = Loss.smooth_l1,
    weight_decay: float = 0.0,
    num_to_keep: Annotated[int, typer.Option(min=1, help="Checkpoints kept in storage.")] = 2,
    max_failures: Annotated[int, typer.Option(min=-1, help="Worker failures to recover from (-1: unlimited).")] = 1,
    seed: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    s3_endpoint: S3Endpoint = None,
    retries: Retries = 5,
    address: Address = None,
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
        weight_decay=weight_decay,
        num_to_keep=num_to_keep,
        max_failures=max_failures,
        seed=seed,
        max_pixels=max_pixels,
        storage=StorageConfig(s3_endpoint=s3_endpoint, retries=retries),
    )

    def call():
        from raycolor import ray_train

        return ray_train.fit(config)

    result = _run(address, s3_endpoint, call)
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
    format: Annotated[Format, typer.Option("--format", help="Output image format.")] = Format.png,
    png_level: Annotated[int, typer.Option(min=0, max=9, help="PNG zlib level (lossless at any level).")] = 1,
    jpeg_quality: Annotated[int, typer.Option(min=1, max=100)] = 92,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model call.")] = 32,
    gpus: Annotated[int, typer.Option(min=0, help="Model actors, one GPU each; 0 = CPU actors.")] = 0,
    cpu_actors: Annotated[Optional[int], typer.Option(min=1, help="CPU-mode model actors (default 1).")] = None,
    parquet_images: Annotated[bool, typer.Option(help="Also store encoded images in the manifest.")] = False,
    max_pixels: Annotated[int, typer.Option(help="Decompression-bomb limit per image.")] = DEFAULT_MAX_PIXELS,
    device_codec: Annotated[
        Optional[bool],
        typer.Option(
            "--device-codec/--cpu-codec",
            help="Decode baseline JPEGs (and encode JPEG output) in the model actor with nvJPEG; default: on with --gpus.",
        ),
    ] = None,
    shard_size: Annotated[
        int, typer.Option(min=1, help="Inputs per shard (manifest or listing chunk; a .tar is one shard). Keep it across re-runs.")
    ] = ColorizeConfig.__dataclass_fields__["shard_size"].default,
    retry_errors: Annotated[
        bool, typer.Option("--retry-errors", help="Re-attempt error rows from read/write failures (transient) of earlier runs.")
    ] = False,
    retry_all_errors: Annotated[
        bool, typer.Option("--retry-all-errors", help="Re-attempt every error row, undecodable inputs included.")
    ] = False,
    force_unlock: Annotated[
        bool, typer.Option("--force-unlock", help="Take over OUTPUT/_lock.json left by a driver that is gone.")
    ] = False,
    layout: Annotated[
        Layout, typer.Option("--layout", help="files: OUTPUT/images/...; webdataset: one tar per shard in OUTPUT/shards/.")
    ] = Layout.files,
    s3_endpoint: S3Endpoint = None,
    retries: Retries = 5,
    address: Address = None,
) -> None:
    """Colorize every image under INPUTS into OUTPUT; re-running skips what is already done."""
    config = ColorizeConfig(
        inputs=tuple(inputs),
        output=output,
        checkpoint=checkpoint,
        render_size=render_size,
        format=format.value,
        png_level=png_level,
        jpeg_quality=jpeg_quality,
        batch_size=batch_size,
        gpus=gpus,
        cpu_actors=cpu_actors,
        parquet_images=parquet_images,
        max_pixels=max_pixels,
        device_codec=device_codec,
        shard_size=shard_size,
        retry_errors="all" if retry_all_errors else "transient" if retry_errors else "none",
        force_unlock=force_unlock,
        layout=layout.value,
        storage=StorageConfig(s3_endpoint=s3_endpoint, retries=retries),
    )

    def call():
        from raycolor import ray_colorize

        return ray_colorize.colorize(config)

    s = _run(address, s3_endpoint, call)
    _table(
        "raycolor colorize",
        {
            "inputs": s.inputs,
            "ok": s.ok,
            "errors": s.error,
            "skipped (done before)": s.skipped,
            "images/s": s.images_per_s,
            "first output s": s.first_output_s if s.first_output_s is not None else "-",
            "elapsed s": s.elapsed_s,
            "output": s.output,
        },
    )


@app.command(
    name="list",
    epilog="Example: raycolor list s3://archive/scans/ --output s3://archive/lists/scans; "
    "then raycolor colorize s3://archive/lists/scans --output ... (no listing of the prefix again)",
)
def list_(
    inputs: Annotated[list[str], typer.Argument(help="Folders or s3:// prefixes to list (recursively).")],
    output: Annotated[str, typer.Option(help="Folder or s3:// prefix for the manifest shards part-NNNNN.parquet.")],
    shard_size: Annotated[
        int, typer.Option(min=1, help="Entries per manifest shard.")
    ] = ColorizeConfig.__dataclass_fields__["shard_size"].default,
    s3_endpoint: S3Endpoint = None,
    retries: Retries = 5,
) -> None:
    """List images once and save the listing as Parquet manifest shards (uri, relpath) for `colorize`."""

    def call():
        from raycolor import ledger

        return ledger.write_listing(inputs, output, shard_size=shard_size, s3_endpoint=s3_endpoint, retries=retries)

    entries, parts = _run(None, s3_endpoint, call, connect=False)
    _table("raycolor list", {"entries": entries, "manifest shards": parts, "output": output})


@app.command(
    epilog="Example: raycolor evaluate --checkpoint runs/exp1/model --data photos/val --gallery gallery.png --json"
)
def evaluate(
    checkpoint: Annotated[str, typer.Option(help="Model directory (OUTPUT/model of a training run).")],
    data: Annotated[list[str], typer.Option("--data", help="Colour images to grey-ify, colorize and compare; repeatable.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object with model and baseline sections.")] = False,
    gallery: Annotated[Optional[str], typer.Option(help="Write a grey | colorized | original PNG here.")] = None,
    gallery_rows: Annotated[int, typer.Option(min=1)] = 8,
    render_size: Annotated[Optional[int], typer.Option()] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    gpus: Annotated[int, typer.Option(min=0)] = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    s3_endpoint: S3Endpoint = None,
    retries: Retries = 5,
    address: Address = None,
) -> None:
    """PSNR, SSIM and colourfulness of the model against the grey baseline (ab = 0)."""
    config = EvaluateConfig(
        checkpoint=checkpoint,
        data=tuple(data),
        render_size=render_size,
        batch_size=batch_size,
        gpus=gpus,
        gallery=gallery,
        gallery_rows=gallery_rows,
        max_pixels=max_pixels,
        storage=StorageConfig(s3_endpoint=s3_endpoint, retries=retries),
    )

    def call():
        from raycolor import ray_evaluate

        return ray_evaluate.evaluate(config)

    report = _run(address, s3_endpoint, call)
    if json_out:
        import json

        typer.echo(json.dumps(report.as_json(), allow_nan=True))
        return
    typer.echo(f"raycolor evaluate: {report.images} images, {report.errors} errors")
    width = max(len(k) for k in report.model)
    typer.echo(f"  {'metric':<{width}}  {'model':>9}  {'grey baseline':>13}")
    for key in report.model:
        typer.echo(f"  {key:<{width}}  {report.model[key]:>9.3f}  {report.baseline[key]:>13.3f}")
    if report.gallery:
        typer.echo(f"gallery: {report.gallery}")


@app.command()
def demo(
    output: Annotated[Path, typer.Option(help="Where the demo writes its run, images, manifest and gallery.")] = Path("demo-output"),
    epochs: Annotated[int, typer.Option(min=1)] = 6,
    image_size: Annotated[int, typer.Option(help="Training/render size in pixels (multiple of 16).")] = 96,
    workers: Annotated[int, typer.Option(min=1)] = 2,
    weights: Annotated[str, typer.Option(help="imagenet (falls back to none when offline), none, or a path.")] = "imagenet",
    address: Address = None,
) -> None:
    """Train briefly on the bundled sample photos, colorize the held-out ones, write a gallery."""
    config = DemoConfig(output=str(output), epochs=epochs, image_size=image_size, workers=workers, weights=weights)

    def call():
        from raycolor import demo as demo_module

        return demo_module.run_demo(config, echo=typer.echo)

    result = _run(address, None, call)
    _table("raycolor demo", result.where())


if __name__ == "__main__":  # pragma: no cover
    app()
