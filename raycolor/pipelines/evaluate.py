"""Evaluation through the same Ray Data path as colorize: grey-ify, colorize, compare with the original.

Every table has the model next to the grey baseline (ab = 0, i.e. the input's own lightness), so a
model that does not beat "leave it grey" is visible at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from raycolor import inputs, storage
from raycolor.config import EvaluateConfig
from raycolor.core import gallery, images, precision
from raycolor.core.metrics import AB_BINS, METRICS, auc_rebalanced_from_sums, ratio_of_means
from raycolor.pipelines import runtime
from raycolor.pipelines.colorize import predicted_dataset, resolve_model
from raycolor.pipelines.stages import ModelStage, colorized_rgb

_THUMB_H = 160
_PREFIXES = ("model_", "baseline_")
_BINS = "ab_bins"  # a batch column per prefix: auc_bin_sums' (2, AB_BINS) float64 as bytes, summed by the driver


@dataclass(frozen=True)
class EvaluateReport:
    model_id: str
    images: int  # evaluated (decodable) images
    errors: int
    model: dict  # each metric over the images: see _summary
    baseline: dict
    per_image: list  # one dict per image: source, model_<metric>, baseline_<metric> (image_metrics' values)
    gallery: str | None = None
    precision: str = ""  # what the model ran in ("bf16", "fp32"; "bf16, fp32" if actors differed)

    def as_json(self) -> dict:
        return {
            "model_id": self.model_id,
            "images": self.images,
            "errors": self.errors,
            "model": self.model,
            "baseline": self.baseline,
            "gallery": self.gallery,
            "precision": self.precision,
        }


def _metrics_batch(batch: dict, *, thumbs: bool, stage: ModelStage) -> dict:
    import torch

    from raycolor.core.colorize import grey_baseline
    from raycolor.core.metrics import auc_bin_sums, image_metrics, lab

    torch.set_num_threads(1)
    out: dict[str, list] = {"source": [], "error": [], "thumbs": [], "precision": []}
    for prefix in _PREFIXES:
        for m in METRICS:
            out[prefix + m] = []
        out[prefix + _BINS] = []
    for i, source in enumerate(batch["source"]):
        err = batch["error"][i] or ""
        out["source"].append(source)
        out["error"].append(err)
        out["precision"].append("" if err or "precision" not in batch else str(batch["precision"][i]))
        if err:
            for prefix in _PREFIXES:
                for m in METRICS:
                    out[prefix + m].append(math.nan)
                out[prefix + _BINS].append(b"")
            out["thumbs"].append(b"")
            continue
        h, w = int(batch["height"][i]), int(batch["width"][i])
        original = np.frombuffer(batch["original"][i], dtype=np.uint8).reshape(h, w, 3)
        colorized = colorized_rgb(batch, i, stage)
        grey = grey_baseline(original)
        original_lab = lab(original)
        for prefix, img in (("model_", colorized), ("baseline_", grey)):
            for m, v in image_metrics(img, original, original_lab=original_lab).items():
                out[prefix + m].append(v)
            # per true-ab bin: pixels and AuC scores, added up over the set by the driver (auc_rebalanced)
            out[prefix + _BINS].append(auc_bin_sums(lab(img), original_lab).tobytes())
        # three small PNGs side by side in one blob, for the driver's gallery
        strip = b""
        if thumbs:
            parts = [images.encode_png(gallery.thumbnail(x, _THUMB_H), level=1) for x in (grey, colorized, original)]
            strip = b"".join(len(p).to_bytes(4, "big") + p for p in parts)
        out["thumbs"].append(strip)
    blobs = ("source", "error", "thumbs", "precision", *(p + _BINS for p in _PREFIXES))
    return {k: np.array(v, dtype=object if k in blobs else np.float64) for k, v in out.items()}


def _split_thumbs(blob: bytes) -> list[np.ndarray]:
    parts, pos = [], 0
    while pos < len(blob):
        n = int.from_bytes(blob[pos : pos + 4], "big")
        parts.append(images.decode_rgb(blob[pos + 4 : pos + 4 + n]))
        pos += 4 + n
    return parts


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]  # SSIM is NaN for images too small for its window
    return float(np.mean(finite)) if finite else math.nan


def _summary(ok: list[dict], prefix: str, bin_sums: np.ndarray) -> dict:
    """One section of the report: the mean over images of each metric, except two set-level figures --
    colourfulness_ratio is the ratio of the mean colourfulness to the originals' (the report's own two
    colourfulness figures; a mean of per-image ratios would be dominated by near-grey originals), and
    auc_rebalanced weights each pixel by the inverse frequency of its true ab bin over ALL the evaluated
    pixels (the paper's dataset prior, taken from this set), not per image."""
    summary = {m: _mean([r[prefix + m] for r in ok]) for m in METRICS}
    summary["colourfulness_ratio"] = ratio_of_means(
        [r[prefix + "colourfulness"] for r in ok], [r[prefix + "colourfulness_original"] for r in ok]
    )
    summary["auc_rebalanced"] = auc_rebalanced_from_sums(bin_sums)
    return summary


def evaluate(
    config: EvaluateConfig,
    *,
    on_total: Callable[[int, int], None] | None = None,
    on_rows: Callable[[int, int], None] | None = None,
) -> EvaluateReport:
    """Progress hooks as in pipelines.colorize.colorize: on_total(images, 0), then on_rows(ok, error) per batch."""
    precision.check(config.precision)
    meta, render_size = resolve_model(config.checkpoint, config.render_size, store=config.storage)
    items = inputs.list_items(config.data, store=config.storage)
    runtime.ensure_ray()
    if on_total:
        on_total(len(items), 0)
    stage = ModelStage(
        checkpoint=config.checkpoint,
        render_size=render_size,
        # the metrics stage runs one task per model batch: small enough batches spread it over every CPU
        batch_size=max(1, min(config.batch_size, math.ceil(len(items) / runtime.cluster_cpus()))),
        gpus=config.gpus,
        max_pixels=config.max_pixels,
        storage=config.storage,
        keep_rgb=True,
        precision=config.precision,
    )
    ds = predicted_dataset(items, stage)
    ds = ds.map_batches(
        _metrics_batch,
        batch_format="numpy",
        batch_size=None,
        num_cpus=1,
        fn_kwargs={"thumbs": bool(config.gallery), "stage": stage},
    )
    per_image, rows = [], []
    bin_sums = {p: np.zeros((2, AB_BINS)) for p in _PREFIXES}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        if on_rows:
            n_err = sum(1 for e in batch["error"] if e)
            on_rows(len(batch["error"]) - n_err, n_err)
        for p in _PREFIXES:
            for blob in batch[p + _BINS]:
                if blob:
                    bin_sums[p] += np.frombuffer(blob, dtype=np.float64).reshape(2, AB_BINS)
        for i, source in enumerate(batch["source"]):
            rec = {
                k: (v[i].item() if hasattr(v[i], "item") else v[i])
                for k, v in batch.items()
                if k != "thumbs" and not k.endswith(_BINS)
            }
            per_image.append(rec)
            if config.gallery and not rec["error"] and len(rows) < config.gallery_rows:
                rows.append((source.rsplit("/", 1)[-1], *_split_thumbs(batch["thumbs"][i])))
    per_image.sort(key=lambda r: r["source"])
    ok = [r for r in per_image if not r["error"]]
    if not ok:
        raise ValueError("no decodable images to evaluate")
    gallery_uri = None
    if config.gallery:
        rows.sort(key=lambda r: r[0])
        png = images.encode_png(gallery.make_gallery(rows, height=_THUMB_H), level=6)
        gallery_uri = config.gallery
        storage.write_bytes_atomic(gallery_uri, png, store=config.storage)
    return EvaluateReport(
        model_id=meta.model_id,
        images=len(ok),
        errors=len(per_image) - len(ok),
        model=_summary(ok, "model_", bin_sums["model_"]),
        baseline=_summary(ok, "baseline_", bin_sums["baseline_"]),
        per_image=per_image,
        gallery=gallery_uri,
        precision=", ".join(sorted({r["precision"] for r in ok if r["precision"]})),
    )
