"""The embedded default job (`raycolor demo`, `make demo`): train briefly on the bundled sample photos with
Ray Train, colorize the held-out ones with Ray Data, and write a before/after gallery.

Every step is the product's own code path; only the inputs (the photos shipped in raycolor/samples) and the
sizes are chosen to finish in a few minutes on a 2-core laptop.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO, Any

from raycolor.config import ColorizeConfig, DemoConfig, EvaluateConfig, TrainConfig

HELD_OUT_EVERY = 4  # every 4th sample photo is held out: 12 train, 4 colorized


def split_photos() -> tuple[list[Path], list[Path]]:
    """The demo's split of the sample photos: (train, held out), every HELD_OUT_EVERY-th held out."""
    photos = sample_photos()
    held = photos[HELD_OUT_EVERY - 1 :: HELD_OUT_EVERY]
    return [p for p in photos if p not in held], held


def write_split(folder: Path) -> tuple[Path, Path]:
    """The demo's split as two .txt manifests in `folder` (train.txt, held-out.txt), for the demo and the benches
    that compare choices under its budget."""
    train, held = split_photos()
    folder.mkdir(parents=True, exist_ok=True)
    lists = folder / "train.txt", folder / "held-out.txt"
    for path, photos in zip(lists, (train, held)):
        path.write_text("".join(f"{p}\n" for p in photos))
    return lists


@dataclass(frozen=True)
class DemoResult:
    output: str
    weights: str | None
    model: str
    metrics: str
    images: str
    manifest: str
    gallery: str
    curves: str | None
    val_psnr: float | None
    baseline_psnr: float | None
    elapsed_s: float

    def where(self) -> dict[str, object]:
        return {
            "weights": self.weights or "none (trained from scratch)",
            "val PSNR model / grey": f"{self.val_psnr:.2f} / {self.baseline_psnr:.2f} dB"
            if self.val_psnr is not None and self.baseline_psnr is not None
            else "-",
            "model": self.model,
            "training metrics": self.metrics,
            "colorized PNGs": self.images,
            "manifest (Parquet)": self.manifest,
            "gallery": self.gallery,
            "training curves": self.curves or "- (install matplotlib)",
            "elapsed s": round(self.elapsed_s, 1),
        }


def sample_photos() -> list[Path]:
    folder = resources.files("raycolor") / "samples"
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.lower().endswith(".jpg"))


def _resolve_weights(weights: str | None, echo: Callable[[str], None]) -> str | None:
    if weights is None or str(weights).lower() == "none":
        return None
    from raycolor.core.model import WeightsUnavailableError, load_weights

    try:
        load_weights(weights)
    except WeightsUnavailableError as e:
        if str(weights) != "imagenet":
            raise
        echo(f"note: {e}")
        echo("note: continuing with weights=None (training from scratch): expect muted, brownish colours")
        return None
    return str(weights)


def run_demo(
    config: DemoConfig,
    *,
    echo: Callable[[str], None] = print,
    progress: Callable[[str], Any] | None = None,
    terminal: IO[str] | None = None,
) -> DemoResult:
    """progress(label) makes a raycolor.pipelines.progress.Progress for the colorize and evaluate steps (none: silent);
    terminal: where training draws its progress."""
    from raycolor import paths
    from raycolor.pipelines import colorize as ray_colorize
    from raycolor.pipelines import evaluate as ray_evaluate
    from raycolor.pipelines.training import driver as ray_train

    start = time.time()
    out = Path(config.output).resolve()
    train, held_out = split_photos()
    train_list, held_list = write_split(out / "inputs")
    weights = _resolve_weights(config.weights, echo)
    echo(f"demo: training on {len(train)} sample photos, {config.epochs} epochs at {config.image_size} px")
    fit = ray_train.fit(
        TrainConfig(
            data=(str(train_list),),
            val=(str(held_list),),
            output=str(out / "train"),
            epochs=config.epochs,
            image_size=config.image_size,
            batch_size=4,
            workers=config.workers,
            weights=weights,
            freeze_encoder_epochs=max(1, config.epochs // 2),
            finetune_blocks=2,
            lr=2e-3,
            finetune_lr=2e-4,
        ),
        terminal=terminal,
    )

    def hooks(label: str) -> contextlib.AbstractContextManager:
        return progress(label) if progress else contextlib.nullcontext()

    echo(f"demo: colorizing {len(held_out)} held-out photos at full resolution")
    colorized = out / "colorized"
    with hooks("colorize") as bar:
        ray_colorize.colorize(
            ColorizeConfig(
                inputs=(str(held_list),), output=str(colorized), checkpoint=fit.model_uri, render_size=config.image_size, batch_size=4
            ),
            on_total=bar and bar.start,
            on_rows=bar and bar.update,
        )
    echo("demo: evaluating the model against the grey baseline")
    gallery = out / "gallery.png"
    with hooks("evaluate") as bar:
        ray_evaluate.evaluate(
            EvaluateConfig(checkpoint=fit.model_uri, data=(str(held_list),), render_size=config.image_size, gallery=str(gallery)),
            on_total=bar and bar.start,
            on_rows=bar and bar.update,
        )
    metrics = fit.metrics or {}
    return DemoResult(
        output=str(out),
        weights=weights,
        model=fit.model_uri,
        metrics=fit.metrics_uri,
        images=paths.images_dir(str(colorized)),
        manifest=paths.manifest_dir(str(colorized)),
        gallery=str(gallery),
        curves=fit.curves_uri,
        val_psnr=metrics.get("val_psnr"),
        baseline_psnr=metrics.get("baseline_psnr"),
        elapsed_s=time.time() - start,
    )
