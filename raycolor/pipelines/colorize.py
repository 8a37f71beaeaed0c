"""Bulk colorization with Ray Data: the stages (raycolor/pipelines/stages.py) wired into a lazy dataset, and the
driver that plans the shards, streams the dataset and keeps the run's bookkeeping.

    shard descriptors (driver) ─▶ expand       CPU tasks: a shard -> item rows (a tar's members, a manifest chunk)
        ─▶ decode_block                       CPU tasks: bytes -> RGB -> L full-res (uint16) + L at render size
        ─▶ Predictor                           actor pool, one per GPU (or CPU actors): L small -> ab small, or
                                               on a device full-res RGB (JPEGs decoded/encoded there with nvJPEG)
        ─▶ finish_batch                       CPU tasks: compose + encode + write images, spool rows per shard
        ─▶ merge                               per shard: one manifest part + stats (+ one tar for webdataset)
    driver: counts rows as they stream back, then checks the manifest and writes OUTPUT/_SUCCESS.json last.

Exactly once: a source with a manifest row is done; a re-run skips finished shards (how the stages keep a
crash from leaving duplicates: raycolor/pipelines/stages.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from raycolor import inputs, storage
from raycolor.config import ColorizeConfig, StorageConfig
from raycolor.core import checkpoint, formats, precision
from raycolor import paths
from raycolor.outputs import ledger
from raycolor.outputs.merge import merge_shard
from raycolor.outputs.writers import WRITERS
from raycolor.pipelines import runtime
from raycolor.pipelines.planning import classify_inputs, plan
from raycolor.pipelines.stages import (
    ModelStage,
    Predictor,
    decode_block,
    expand_batch,
    Claims,
    RemoteClaims,
    finish_batch,
)


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
    shards: int = 0  # shards of the inputs
    shards_skipped: int = 0  # finished by an earlier run (and nothing to retry)
    # what the inputs hold that was not taken, on this listing: {suffix: files} ("(none)": no suffix), largest
    # first, e.g. {".pdf": 12000, ".xml": 345}: folders' files that are not images, tars' other members
    not_taken: dict = field(default_factory=dict)
    # inputs with several hues (hand-tinted, colour photographs; raycolor.core.chroma), colorized or not, and of
    # them those left alone by --colour-inputs skip (status "skipped": done, neither ok nor error)
    has_colour: int = 0
    colour_skipped: int = 0
    # ok images by the precision the model ran in ({"bf16": 600}; raycolor.core.precision), over every shard's
    # stats; shards finished before stats recorded it are not counted
    precision: dict = field(default_factory=dict)
    # inputs the model predicted in this run: one prediction per input, however many outputs (--derivative) it has
    predictions: int = 0



# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def predicted_dataset(items, stage: ModelStage, *, total: int | None = None):
    """Lazy dataset of items -> decode tasks -> model actor pool. Rows: source, relpath, width, height,
    error ("" when fine) and either l_full + ab or, when stage.compose_on_device, rgb / encoded.

    ``items``: a list of :class:`inputs.Item`, or a Ray Dataset of item rows (source, relpath, uri,
    offset, size, error; optional shard, shard_n), e.g. expanded from shards inside tasks; then ``total``
    (the number of rows, or an estimate) sizes the blocks."""
    import ray
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    cpus = runtime.cluster_cpus()
    n_actors = stage.gpus if stage.gpus > 0 else (stage.cpu_actors or 1)
    n = len(items) if isinstance(items, list) else max(1, total or 1)
    # small blocks so every stage has several tasks in flight, but not so small that overhead dominates
    per_block = runtime.rows_per_block(n, cpus)
    if isinstance(items, list):
        rows = [{**asdict(i), "error": ""} for i in items]
        with runtime.dataset_limits(**stage.dataset_limits(cpus)):
            ds = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(n / per_block)))
    else:
        # a shard expands into one big block; a streaming split (no barrier) gives the decode stage
        # per_block-row blocks, so one shard is decoded by many tasks and its first images come out early
        ds = items.repartition(target_num_rows_per_block=per_block)
    ds = ds.map_batches(
        decode_block,
        batch_format="numpy",
        batch_size=None,
        fn_kwargs={"stage": stage},
        num_cpus=1,
        # Ray Data fuses a task stage into a following actor stage when their pool sizes match; fused,
        # Pillow decoding would run inside the single model process. A task pool sized to the cluster's
        # CPUs (never the actor count) keeps the stages apart, and is the right cap for decoding anyway.
        compute=TaskPoolStrategy(size=cpus if cpus != n_actors else cpus + 1),
        # a budget: each task asks Ray for it, so a node runs only as many decodes as its memory holds
        **({"memory": stage.memory_budget} if stage.memory_budget else {}),
    )
    return ds.map_batches(
        Predictor,
        batch_format="numpy",
        # CPU actors take a decoded block as it comes (cut by pixels) and feed the model batch_size rows at a
        # time: Ray Data's own batching would gather batch_size rows from many blocks, 32 scans' L at once. GPU
        # actors must name a batch size (Ray Data insists); there the host holds batch_size images per call
        batch_size=stage.batch_size if stage.gpus > 0 else None,
        compute=ActorPoolStrategy(size=n_actors),
        num_gpus=1 if stage.gpus > 0 else 0,
        # CPU mode on one machine: the actor reserves no CPU slot (it still runs `threads` torch threads).
        # Reserving one left a 2-core node a single task slot, which Ray Data kept giving to decoding: nothing
        # was written until the model had seen every image (bench/colorize_throughput.py; docs/performance.md).
        # On a multi-node cluster it reserves one, so that Ray places it on a worker node: a 0-CPU actor lands
        # on the head, which large clusters start with 0 CPUs precisely so that no work runs there
        num_cpus=1 if stage.gpus > 0 or runtime.node_count() > 1 else 0,
        # CPU mode: the model gets the cores the CPU tasks leave idle (they are mostly waiting on it)
        fn_constructor_kwargs={"stage": stage, "threads": max(1, cpus // n_actors)},
    )


def build_dataset(shards: list[inputs.Shard], config: ColorizeConfig, *, output: str, render_size: int, model_id: str,
                  total: int):
    """The lazy Ray Data pipeline for `shards` (not yet executed): shard descriptors -> items (in tasks)
    -> decode -> model -> compose/encode/write images and spool rows. Yields one row per input."""
    import ray
    from ray.data import TaskPoolStrategy

    stage = ModelStage.for_colorize(config, render_size)
    descriptors = [{**asdict(s), "marker": _marker(s)} for s in shards]
    with runtime.dataset_limits(**stage.dataset_limits(runtime.cluster_cpus())):
        ds = ray.data.from_items(descriptors, override_num_blocks=max(1, len(descriptors)))
    # map_batches, not flat_map: Ray Data fuses it with predicted_dataset's streaming repartition, so the
    # expand task itself emits small blocks. As a stage of its own, the repartition held a CPU slot, and on a
    # 2-CPU node the later stages got none until every shard was expanded (docs/performance.md)
    ds = ds.map_batches(expand_batch, batch_size=1, batch_format="pyarrow", num_cpus=1,
                        fn_kwargs={"output": output, "store": config.storage})
    ds = predicted_dataset(ds, stage, total=total)
    # On one machine the finish tasks reserve no CPU slot (at most one per CPU runs at once, like the CPU-mode
    # model actor): Ray Data reserves CPU for the stages upstream first, and with expand and decode holding a
    # 2-CPU node's two slots, no shard finished until every shard was expanded (2M entries: none in 360 s;
    # docs/performance.md). On a multi-node cluster they reserve one, so that none runs on a 0-CPU head.
    one_node = runtime.node_count() <= 1
    return ds.map_batches(
        finish_batch,
        batch_format="numpy",
        batch_size=None,
        num_cpus=0 if one_node else 1,
        compute=TaskPoolStrategy(size=runtime.cluster_cpus()) if one_node else None,
        **({"memory": config.memory_per_cpu} if config.memory_per_cpu else {}),
        fn_kwargs={"config": config, "stage": stage, "output": output, "model_id": model_id, "claims": _claims(config)},
    )


def _claims(config: ColorizeConfig) -> RemoteClaims | None:
    """--dedupe content: the run's one record of which input wrote which bytes (an actor of this driver's: it ends
    with the run; a re-run starts a new one, so copies are found within a run)."""
    import ray

    if config.dedupe != "content":
        return None
    return RemoteClaims(ray.remote(num_cpus=0, max_restarts=0)(Claims).remote())


def _marker(shard: inputs.Shard) -> str:
    """The `source` of the one error row that stands for a shard that could not be expanded."""
    if shard.kind in ("tar", "listing"):
        return shard.uri if shard.kind == "tar" else f"{shard.root}#listing={shard.id}"
    return f"{shard.uri}#{'rows' if shard.kind == 'parquet' else 'bytes'}={shard.start}-{shard.stop}"


def resolve_model(checkpoint_uri: str, render_size: int | None, *, store: StorageConfig) -> tuple[checkpoint.CheckpointMeta, int]:
    """Read the checkpoint's metadata (failing fast, before any Ray work) and settle the render size."""
    meta = checkpoint.read_meta(checkpoint_uri, store=store)
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
    """Colorize every input under config.output; resumable, shard by shard (see raycolor/outputs/ledger.py).

    Progress hooks, called on the driver: on_total(total, skipped) once, before any image is processed
    (`total` inputs in all, `skipped` of them already done by an earlier run), then on_rows(ok, error) for
    each batch of finished rows as it comes back.

    The driver in named steps: check (config, model, inputs, cluster: all before anything is written) ->
    lock (OUTPUT's ledger.Book read under it) -> plan (shards, the roots' records, what is left) -> stream +
    merge -> summary.
    """
    start = time.time()
    output = storage.absolute(config.output)
    check_config(config)  # what the flags say, before any read: a typo costs nothing
    meta, render_size = resolve_model(config.checkpoint, config.render_size, store=config.storage)
    roots = classify_inputs(config.inputs, store=config.storage)
    _check_cluster(config, output)
    with ledger.locked(output, force=config.force_unlock, store=config.storage) as book:
        p = plan(config, output, roots, book)
        if on_total:
            on_total(p.left.total, p.left.total - p.left.rows)
        try:
            run = (_stream_and_merge(config, output, p.left, meta.model_id, render_size, start, on_rows)
                   if p.left.todo else _Run())
        except Exception as e:
            gone = model_gone(config.checkpoint, e, store=config.storage)
            if gone:
                raise gone from e
            raise
        return _summary(config, output, p, run, meta.model_id, render_size, start)


def model_gone(checkpoint_uri: str, err: Exception, *, store: StorageConfig) -> checkpoint.CheckpointError | None:
    """After a failed stream: the error to report instead when the checkpoint cannot be read any more.

    A model actor that dies mid-run (OOM, a lost node, a kill) is restarted and loads the checkpoint again. If
    that load fails, the actor fails its next batch with a CheckpointError, but Ray Data 2.60 can end the run
    first with its own error about the dead actor's unfinished task (an AssertionError from its operator's
    on_data_ready), which names neither the model nor the fix. So the checkpoint's config.json is read again
    (one small read, on a failure only). None when it reads, or when err already is the CheckpointError."""
    if isinstance(err, checkpoint.CheckpointError):
        return None
    try:
        checkpoint.read_meta(checkpoint_uri, store=store)
    except checkpoint.CheckpointError as e:
        return checkpoint.CheckpointError(f"{e} (the run stopped with {type(err).__name__})")
    return None


def check_config(config: ColorizeConfig) -> None:
    """The settings a ColorizeConfig's type cannot check, refused before anything starts."""
    if config.retry_errors not in ("none", "transient", "all"):
        raise ValueError(f"retry_errors must be none, transient or all, not {config.retry_errors!r}")
    if config.colour_inputs not in ("colorize", "skip"):
        raise ValueError(f"colour_inputs must be colorize or skip, not {config.colour_inputs!r}")
    precision.check(config.precision)
    if config.layout not in WRITERS:
        raise ValueError(f"layout must be files or webdataset, not {config.layout!r}")
    if config.dedupe not in ("none", "content"):
        raise ValueError(f"dedupe must be none or content, not {config.dedupe!r}")
    if config.dedupe == "content" and config.layout != "files":
        raise ValueError("--dedupe content needs --layout files: a WebDataset sample's member exists only once its "
                         "shard is merged, so a copy in another shard could point at nothing yet")
    entry = formats.writable(config.format)  # ValueError naming what raycolor writes
    if config.metadata not in ("keep", "strip"):
        raise ValueError(f"metadata must be keep or strip, not {config.metadata!r}")
    if config.bit_depth not in ("auto", "8", "16"):
        raise ValueError(f"bit depth must be auto, 8 or 16, not {config.bit_depth!r}")
    if config.memory_per_cpu is not None and config.memory_per_cpu < 1:
        raise ValueError(f"memory per CPU must be positive, got {config.memory_per_cpu}")
    if config.bit_depth == "16" and 16 not in entry.bits:
        deep = ", ".join(f.upper() for f in formats.WRITABLE if formats.holds(f, 16))
        raise ValueError(f"--bit-depth 16 needs {deep} output: {config.format} holds 8 bits per sample")
    if config.jp2_rate is not None and entry.name != "jp2":
        raise ValueError(f"--jp2-rate is for --format jp2, not {config.format}")
    if config.tiff_pyramid and entry.name != "tiff":
        raise ValueError(f"--tiff-pyramid is for --format tiff, not {config.format}")
    run = formats.EncodeOptions(**config.encode_settings)
    run.check()
    _check_derivatives(config, run)
    if config.sign is not None:
        _check_signing(config)


def _check_signing(config: ColorizeConfig) -> None:
    """--sign: every output format signable (not JP2), the TOML readable, and the key and certificate able to
    sign: a fresh Signer here reads the key (refused if its group or others may read it), signs an 8x8 JPEG and
    verifies it, so a bad key stops the run before any image (signing.SignError, a ValueError: exit 2)."""
    from raycolor.core import signing

    for fmt in (config.format, *(spec.format for spec in config.derivatives)):
        signing.check_format(fmt)
    signing.Signer(signing.SignConfig.load(config.sign))  # not signer_for's cached one: check the key as it is now


def _check_derivatives(config: ColorizeConfig, run: formats.EncodeOptions) -> None:
    """Each --derivative: a format raycolor writes, options that EncodeOptions has (with values of its kind, in
    its ranges), one name each. `run`: the run's own encode options, which a derivative's override."""
    fields = {f.name: f.default for f in dataclasses.fields(formats.EncodeOptions) if f.name != "threads"}
    names: set[str] = set()
    for spec in config.derivatives:
        entry = formats.writable(spec.format)
        if spec.name in names:
            raise ValueError(f"--derivative {spec.name} is given twice")
        names.add(spec.name)
        for key, value in spec.options:
            if key not in fields:
                raise ValueError(f"--derivative {spec.name}: no option {key!r} (options: {', '.join(sorted(fields))})")
            if isinstance(value, bool) != isinstance(fields[key], bool) or (isinstance(fields[key], int) and not isinstance(value, int)):
                raise ValueError(f"--derivative {spec.name}: {key}={value} is not a value {key} takes")
        options = run.derived(spec.options)
        options.check()
        if options.tiff_pyramid and entry.name != "tiff":
            raise ValueError(f"--derivative {spec.name}: tiff_pyramid is for a tiff derivative")


def _check_cluster(config: ColorizeConfig, output: str) -> None:
    """Ray up, the output reachable from every node, and the cluster able to grant what the run asks for."""
    import ray

    runtime.ensure_ray()
    runtime.check_output_reachable(output, shared=config.storage.shared_output)
    runtime.check_memory_request(config.memory_per_cpu)
    if config.gpus and ray.cluster_resources().get("GPU", 0) < config.gpus:
        raise ValueError(
            f"--gpus {config.gpus} but the cluster has {int(ray.cluster_resources().get('GPU', 0))} GPU(s)"
        )


@dataclass
class _Run:
    """What streaming the left shards gave: rows processed, seconds to the first, each merged shard's stats."""

    processed: int = 0
    predictions: int = 0  # rows the model predicted (each input once, whatever its outputs)
    first_output: float | None = None
    merged: dict = field(default_factory=dict)


def _stream_and_merge(config: ColorizeConfig, output: str, left: ledger.Left, model_id: str, render_size: int,
                      start: float, on_rows) -> _Run:
    """Run the pipeline over the left shards, counting rows as they stream back; merge each shard as soon as
    its last row is back (a Ray task each), and fail if a shard came back incomplete."""
    import ray

    # _SUCCESS.json marks a finished run: one from an earlier run must not outlive new work
    storage.remove(paths.success_uri(output), store=config.storage)
    by_id = {s.id: {**asdict(s), "marker": _marker(s)} for s in left.todo}
    merge = ray.remote(num_cpus=0, max_retries=3)(merge_shard)
    merge_kw = {"output": output, "store": config.storage,
                "layout": config.layout, "parquet_images": config.parquet_images}
    run = _Run()
    streak = _InternalStreak(config.stop_after_internal)
    seen: dict[str, int] = {}
    expected: dict[str, int] = {}
    merging: dict[str, object] = {}
    ds = build_dataset(left.todo, config, output=output, render_size=render_size, model_id=model_id,
                       total=max(1, left.rows))
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        if run.first_output is None:
            run.first_output = time.time() - start
        n = len(batch["source"])
        run.processed += n
        run.predictions += int(np.sum(batch["predicted"]))
        for sid, sn in zip(batch["shard"], batch["shard_n"]):
            seen[sid] = seen.get(sid, 0) + 1
            expected[sid] = int(sn)
        for sid in set(batch["shard"]):
            if seen[sid] >= expected[sid] and sid not in merging:  # the shard's last rows: merge it now
                merging[sid] = merge.remote(by_id[sid], **merge_kw)
        if on_rows:
            n_ok = int(np.count_nonzero(batch["status"] != "error"))  # a skipped row (has colour) is done too
            on_rows(n_ok, n - n_ok)
        streak.add(batch["internal"])
    incomplete = {sid: (seen[sid], expected[sid]) for sid in seen if sid not in merging}
    for s in left.todo:
        if s.id in seen:
            continue
        if s.retry != "none":  # nothing to redo after all (e.g. a retry whose rows were fine)
            merging[s.id] = merge.remote(by_id[s.id], **merge_kw)
        else:  # a shard with inputs but no row back: never marked done with an empty part
            incomplete[s.id] = (0, s.count)
    run.merged = dict(zip(merging, ray.get(list(merging.values()))))
    if incomplete:
        sid, (got, want) = next(iter(incomplete.items()))
        raise RuntimeError(f"{len(incomplete)} shard(s) came back incomplete, e.g. {sid}: {got} of {want} rows; re-run to redo them")
    return run


class InternalErrors(RuntimeError):
    """The run stopped: its last ColorizeConfig.stop_after_internal images all failed with internal errors."""


@dataclass
class _InternalStreak:
    """Consecutive rows, as they come back, whose error is "internal" (raycolor.core.failures): one odd file is
    its row and the run goes on, but a bug that fails every image stops the run at `limit` (0: never)."""

    limit: int
    run: int = 0
    first: str = ""

    def add(self, internal_errors) -> None:
        for err in internal_errors:
            if not err:
                self.run, self.first = 0, ""
                continue
            self.run, self.first = self.run + 1, self.first or str(err)
            if self.limit and self.run >= self.limit:
                raise InternalErrors(
                    f"stopped: the last {self.run} images all failed with an internal error, which is a bug or a "
                    f"broken installation rather than bad files; the first: {self.first}. The traceback is in the "
                    "workers' log. Fix it and re-run the same command (what was written is kept); "
                    "--stop-after-internal 0 never stops"
                )


def _precision_ran(stats: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for st in stats:
        for p, n in st.get("precision", {}).items():
            counts[p] = counts.get(p, 0) + n
    return dict(sorted(counts.items()))


def _summary(config: ColorizeConfig, output: str, p, run: _Run, model_id: str, render_size: int,
             start: float) -> ColorizeSummary:
    """The run's summary, from every shard's stats (this run's and earlier ones'), written last as
    OUTPUT/_SUCCESS.json."""
    elapsed = time.time() - start
    left = p.left
    stats = {**left.done_before, **run.merged}
    mine = [stats[s.id] for s in p.shards]
    inputs = sum(st["rows"] for st in mine)
    ok = sum(st["ok"] for st in mine)
    colour_skipped = sum(st.get("skipped", 0) for st in mine)  # stats written before skipping have none
    settings = {
        "inputs": list(config.inputs),
        "checkpoint": config.checkpoint,
        "render_size": render_size,
        "format": config.format,
        "metadata": config.metadata,
        "bit_depth": config.bit_depth,
        "memory_per_cpu": config.memory_per_cpu,
        "png_level": config.png_level,
        "jpeg_quality": config.jpeg_quality,
        "jp2_rate": config.jp2_rate,
        "tiff_pyramid": config.tiff_pyramid,
        "batch_size": config.batch_size,
        "gpus": config.gpus,
        "parquet_images": config.parquet_images,
        "device_codec": config.uses_device_codec,
        "shard_size": config.shard_size,
        "retry_errors": config.retry_errors,
        "layout": config.layout,
        "colour_inputs": config.colour_inputs,
        "derivatives": [{"name": d.name, "format": d.format, "long_edge": d.long_edge, "options": dict(d.options)}
                        for d in config.derivatives],
        "precision": config.precision,  # as asked for; the summary's `precision` says what ran
        "namespaces": {r: rec["namespace"] for r, rec in p.roots.items()},
        "key_rules": {r: rec["key_rule"] for r, rec in p.roots.items()},  # the output-key rule of each root
    }
    summary = ColorizeSummary(
        inputs=inputs,
        ok=ok,
        error=inputs - ok - colour_skipped,
        skipped=inputs - run.processed,
        processed=run.processed,
        elapsed_s=round(elapsed, 3),
        images_per_s=round(run.processed / elapsed, 3) if elapsed > 0 else 0.0,
        first_output_s=None if run.first_output is None else round(run.first_output, 3),
        output=output,
        model_id=model_id,
        settings=settings,
        shards=len(p.shards),
        shards_skipped=len(p.shards) - len(left.todo),
        not_taken=p.not_taken_in_all(),
        has_colour=sum(st.get("has_colour", 0) for st in mine),
        colour_skipped=colour_skipped,
        precision=_precision_ran(mine),
        predictions=run.predictions,
    )
    storage.write_bytes_atomic(
        paths.success_uri(output),
        json.dumps(asdict(summary), indent=2).encode(),
        store=config.storage,
    )
    return summary
