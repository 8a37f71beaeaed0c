"""The colorize stages without Ray, as Ray's batch-inference guide advises ("test your predictor on a batch
locally, without Ray"): every stage is a plain function of a numpy batch, and `Predictor.with_model` runs the
actor's code on a model in memory.

`_run_stages` reproduces by hand what `build_dataset` / `predicted_dataset` / `colorize` (its `_stream_and_merge` step) in
raycolor/pipelines/colorize.py wire together from raycolor/pipelines/stages.py: a .txt manifest cut into shards (inputs.size_object, as planning does), each shard
expanded into item rows (inputs.expand; the columns `_expand_shard` gives them), blocks of those rows ->
decode_block -> Predictor -> finish_batch, and a shard's `merge_shard` once its last row is back (the driver's
count against `shard_n`). Only the scheduling is left out: the rows, files and ledger records are the real ones.

Also `CheckpointStore` without `fit`: what it reads and exports. Its `save` and `restore` run only inside a Ray
Train worker (ray.train.report / ray.train.get_checkpoint), and `train_one_epoch` / `evaluate` read a Ray Data
shard (`shard.iter_torch_batches`): those stay with tests/test_train.py, through `fit`.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from support import (
    TAGS,
    check_carried_groups,
    check_provenance,
    encoded,
    exiftool_read,
    exiftool_write,
    lightness_rounding_bound,
    needs_exiftool,
    noise,
    one_row_each,
)

from raycolor import inputs, storage
from raycolor.config import ColorizeConfig, StorageConfig
from raycolor.core import checkpoint, color, images
from raycolor.core.colorize import L_SCALE
from raycolor import paths
from raycolor.outputs import ledger, merge, writers
from raycolor.pipelines import stages

# (relpath in the manifest, (h, w)): sizes all different, so an image written under another row's name shows
GOOD = [("a.png", (24, 32)), ("sub/b.jpg", (40, 20)), ("c.png", (17, 30)), ("sub/deeper/d.png", (33, 33)),
        ("e.jpg", (8, 50))]
# L of an output against L of its input: 8-bit rounding of the composed RGB (support.lightness_rounding_bound,
# ~0.44), L crossing the object store as uint16 (half a step of 1/L_SCALE) and float32 maths (< 1e-4 per L, as
# tests/test_colorize.py bounds it, on both sides)
L_TOL = lightness_rounding_bound() + 0.5 / L_SCALE + 2e-4


@pytest.fixture(scope="module")
def model(tiny_ckpt):
    """The tiny checkpoint, loaded as the actor loads it: (model, meta)."""
    return checkpoint.load(tiny_ckpt)


def _inputs(folder: Path, extra: dict[str, bytes] | None = None) -> Path:
    """GOOD's images (noise; JPEGs at quality 95) and `extra` files in `folder`, listed in folder/list.txt with
    relative entries: returns the manifest."""
    for k, (rel, (h, w)) in enumerate(GOOD):
        p = folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(encoded(noise(w, h, k), "PNG" if rel.endswith(".png") else "JPEG", **({} if rel.endswith(".png") else {"quality": 95})))
    extra = extra or {}
    for rel, data in extra.items():
        (folder / rel).write_bytes(data)
    manifest = folder / "list.txt"
    manifest.write_text("# inputs\n" + "".join(f"{rel}\n" for rel in [r for r, _ in GOOD] + list(extra)))
    return manifest


def _shards(manifest: Path, shard_size: int) -> list[inputs.Shard]:
    """The manifest's shards, as planning makes them (one root, so no namespace)."""
    plan = inputs.classify(str(manifest))
    [(kind, uri, tag)] = plan.objects
    return inputs.size_object(kind, uri, tag, root=plan.root, shard_size=shard_size)


def _item_rows(shard: inputs.Shard) -> list[dict]:
    """A shard's item rows, with the columns the expand task gives them."""
    items = inputs.expand(shard)
    return [{"source": i.source, "relpath": i.relpath, "uri": i.uri, "offset": i.offset, "size": i.size,
             "shard": shard.id, "shard_n": len(items), "error": ""} for i in items]


def _descriptor(shard: inputs.Shard) -> dict:
    """What the driver hands merge_shard: the shard's fields and its marker (the source of the one error row
    standing for a .txt shard that could not be expanded)."""
    return {**asdict(shard), "marker": f"{shard.uri}#bytes={shard.start}-{shard.stop}"}


def _batch(rows: list[dict]) -> dict[str, np.ndarray]:
    """Rows -> a numpy batch as Ray Data hands one to map_batches (strings as object arrays)."""
    return {k: np.array([r[k] for r in rows], dtype=np.int64 if isinstance(rows[0][k], int) else object)
            for k in rows[0]}


def _run_stages(config: ColorizeConfig, shards: list[inputs.Shard], model, meta, *, block_rows: int = 4, claims=None):
    """shards -> expand -> decode_block -> Predictor -> finish_batch -> merge_shard, by hand. Blocks of
    `block_rows` item rows cut across shards, as Ray Data's blocks do. Returns (the rows finish_batch handed
    back, {shard id: merge_shard's stats})."""
    output = storage.absolute(config.output)
    stage = stages.ModelStage.for_colorize(config, meta.render_size)
    predictor = stages.Predictor.with_model(model, torch.device("cpu"), stage)
    descriptors = {s.id: _descriptor(s) for s in shards}
    rows = [r for s in shards for r in _item_rows(s)]
    finished, seen, stats = [], {}, {}
    for start in range(0, len(rows), block_rows):
        for decoded in stages.decode_block(_batch(rows[start:start + block_rows]), stage=stage):
            if stage.device_codec:  # the JPEGs really went to the actor as their bytes
                assert any(len(j) for j in decoded["jpeg"])
            out = stages.finish_batch(predictor(decoded), config=config, stage=stage, output=output, model_id=meta.model_id,
                                      claims=claims)
            finished += [dict(zip(out, values)) for values in zip(*out.values())]
            for sid, n in zip(out["shard"], out["shard_n"]):
                seen[sid] = seen.get(sid, 0) + 1
                if seen[sid] == n:  # the shard's last row is back: merge it
                    stats[sid] = merge.merge_shard(descriptors[sid], output=output, store=config.storage,
                                                layout=config.layout,
                                                parquet_images=config.parquet_images)
    return finished, stats


def _config(manifest: Path, out: Path, ckpt: str, **kw) -> ColorizeConfig:
    return ColorizeConfig(inputs=(str(manifest),), output=str(out), checkpoint=ckpt, batch_size=2,
                          storage=StorageConfig(retries=1), **kw)


def _lightness(rgb: np.ndarray) -> torch.Tensor:
    return color.rgb_uint8_to_l(torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1))


def _check_ledger(out: Path, shards: list[inputs.Shard], stats: dict, *, ok: int, errors: dict[str, int]) -> None:
    """Every shard merged once: its stats record on disk (what merge returned), its part, no spool left."""
    assert set(stats) == {s.id for s in shards}
    assert ledger.finished_shards(str(out)) == set(stats)
    on_disk = ledger.read_stats(str(out), list(stats))
    for s in shards:
        st = stats[s.id]
        assert on_disk[s.id] == st
        assert (st["shard"], st["kind"], st["uri"], st["root"]) == (s.id, "txt", s.uri, s.root)
        assert st["rows"] == s.count == st["ok"] + st["error"]
        assert Path(paths.part_uri(str(out), s.id)).is_file()
    assert sum(st["ok"] for st in stats.values()) == ok
    reasons: dict[str, int] = {}
    for st in stats.values():
        for reason, n in st["errors_by_reason"].items():
            reasons[reason] = reasons.get(reason, 0) + n
    assert reasons == errors
    assert not (out / "_spool").exists() or not any((out / "_spool").iterdir())


def _check_image(data: bytes, src: Path, row: dict, *, fmt: str = "PNG") -> None:
    """An output: decodes as `fmt`, at its source's size, with its source's lightness."""
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == fmt and im.mode == "RGB"
        rgb = np.array(im)
    source = images.decode_rgb(src.read_bytes())
    assert rgb.shape == source.shape and (row["width"], row["height"]) == (source.shape[1], source.shape[0])
    dl = (_lightness(rgb) - _lightness(source)).abs().max().item()
    assert dl <= L_TOL, (src.name, dl, L_TOL)


# --------------------------------------------------------------------------------------------- the two layouts


def test_files_layout_decode_predict_finish_merge(tmp_path, tiny_ckpt, model):
    """Two shards (3 + 2 inputs) whose rows share blocks: every image written under images/<relpath>.png with
    its source's size and lightness, one manifest row each, one part and one stats record per shard."""
    m, meta = model
    manifest = _inputs(tmp_path / "in")
    shards = _shards(manifest, shard_size=3)
    assert [s.count for s in shards] == [3, 2]
    out = tmp_path / "out"
    config = _config(manifest, out, tiny_ckpt)
    finished, stats = _run_stages(config, shards, m, meta)

    srcs = [str(tmp_path / "in" / rel) for rel, _ in GOOD]
    assert sorted(r["source"] for r in finished) == sorted(srcs) and {r["status"] for r in finished} == {"ok"}
    _check_ledger(out, shards, stats, ok=len(GOOD), errors={})
    rows = one_row_each(out, srcs)
    for rel, _ in GOOD:
        row = rows[str(tmp_path / "in" / rel)]
        want = out / "images" / paths.output_key(rel, ".png")
        assert row["output"] == str(want) and (row["status"], row["error"]) == ("ok", None)
        assert (row["model_id"], row["format"], row["bit_depth"]) == (meta.model_id, "png", 8)
        assert "provenance" in json.loads(row["metadata"])["added"]
        _check_image(want.read_bytes(), tmp_path / "in" / rel, row)
    # nothing else written: the images, one part and one stats record per shard
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert written == ({f"images/{paths.output_key(rel, '.png')}" for rel, _ in GOOD}
                       | {f"manifest/{s.id}.parquet" for s in shards} | {f"_stats/{s.id}.json" for s in shards})


def test_webdataset_layout_writes_one_tar_per_shard(tmp_path, tiny_ckpt, model):
    """layout "webdataset": no images/ folder; each shard's merge writes OUTPUT/shards/<id>.tar holding key.png +
    key.json per row, and its manifest rows point into it (<tar>#key.png); the images stay out of the manifest."""
    m, meta = model
    manifest = _inputs(tmp_path / "in")
    shards = _shards(manifest, shard_size=3)
    out = tmp_path / "out"
    _, stats = _run_stages(_config(manifest, out, tiny_ckpt, layout="webdataset"), shards, m, meta)

    _check_ledger(out, shards, stats, ok=len(GOOD), errors={})
    assert not (out / "images").exists()
    assert sorted(p.name for p in (out / "shards").iterdir()) == sorted(f"{s.id}.tar" for s in shards)
    srcs = {str(tmp_path / "in" / rel): rel for rel, _ in GOOD}
    rows = one_row_each(out, srcs)
    members: dict[str, dict[str, bytes]] = {}
    for s in shards:
        tar = out / "shards" / f"{s.id}.tar"
        with tarfile.open(tar) as tf:
            members[str(tar)] = {mb.name: tf.extractfile(mb).read() for mb in tf.getmembers()}
        assert len(members[str(tar)]) == 2 * s.count  # an image and its sidecar per input
        assert "image" not in pq.read_schema(paths.part_uri(str(out), s.id)).names
    for src, rel in srcs.items():
        row = rows[src]
        tar, name = row["output"].split("#")
        key = paths.wds_key(paths.output_key(rel, ".png"))
        assert name == f"{key}.png" and tar in members
        _check_image(members[tar][name], Path(src), row)
        side = json.loads(members[tar][f"{key}.json"])
        assert {k: side[k] for k in ("source", "status", "width", "height", "model_id", "format", "bit_depth")} == {
            "source": src, "status": "ok", "width": row["width"], "height": row["height"], "model_id": meta.model_id,
            "format": "png", "bit_depth": 8}
        assert side["metadata"] == json.loads(row["metadata"])


@pytest.mark.parametrize("layout", ["files", "webdataset"])
def test_bad_inputs_become_error_rows_and_the_rest_is_written(tmp_path, tiny_ckpt, model, layout):
    """A cut-short PNG and an HTML page in the same batches as good images: two error rows with their reason,
    nothing written for them, every other image written."""
    m, meta = model
    bad = {"cut.png": encoded(noise(20, 20), "PNG")[:60], "page.jpg": b"<html>not an image</html>"}
    manifest = _inputs(tmp_path / "in", bad)
    shards = _shards(manifest, shard_size=100)
    out = tmp_path / "out"
    finished, stats = _run_stages(_config(manifest, out, tiny_ckpt, layout=layout), shards, m, meta, block_rows=3)

    srcs = [str(tmp_path / "in" / rel) for rel in [r for r, _ in GOOD] + list(bad)]
    assert sorted(r["source"] for r in finished) == sorted(srcs)
    _check_ledger(out, shards, stats, ok=len(GOOD), errors={"truncated": 1, "not_an_image": 1})
    rows = one_row_each(out, srcs)
    for rel, reason in (("cut.png", "truncated"), ("page.jpg", "not_an_image")):
        row = rows[str(tmp_path / "in" / rel)]
        assert row["status"] == "error" and ledger.reason_of(row["error"]) == reason, row
        assert (row["output"], row["width"], row["height"], row["bit_depth"], row["metadata"]) == (None,) * 5
    for rel, _ in GOOD:
        row = rows[str(tmp_path / "in" / rel)]
        assert row["status"] == "ok"
        if layout == "files":
            _check_image(Path(row["output"]).read_bytes(), tmp_path / "in" / rel, row)
        else:
            tar, name = row["output"].split("#")
            with tarfile.open(tar) as tf:
                _check_image(tf.extractfile(name).read(), tmp_path / "in" / rel, row)
    if layout == "webdataset":
        with tarfile.open(out / "shards" / f"{shards[0].id}.tar") as tf:
            assert len(tf.getmembers()) == 2 * len(GOOD)  # nothing for the bad inputs


def test_merge_keeps_one_row_per_source_after_a_retried_task(tmp_path, tiny_ckpt, model):
    """A finish task retried with other batch boundaries leaves a second spool file holding the same sources;
    the merge keeps one row per source, the newest."""
    m, meta = model
    manifest = _inputs(tmp_path / "in")
    [shard] = _shards(manifest, shard_size=100)
    out = tmp_path / "out"
    config = _config(manifest, out, tiny_ckpt)
    stage = stages.ModelStage.for_colorize(config, meta.render_size)
    predicted = stages.Predictor.with_model(m, torch.device("cpu"), stage)(stages.decode_batch(_batch(_item_rows(shard)), stage=stage))
    first = stages.finish_batch(predicted, config=config, stage=stage, output=str(out), model_id=meta.model_id)
    assert list(first["status"]) == ["ok"] * len(GOOD)
    cut = {k: v[:3] for k, v in predicted.items()}  # the retry's batch: the first three rows only
    stages.finish_batch(cut, config=config, stage=stage, output=str(out), model_id=meta.model_id)
    spooled = list(Path(paths.spool_dir(str(out), shard.id)).glob("*.parquet"))
    assert len(spooled) == 2 and sum(pq.read_metadata(p).num_rows for p in spooled) == len(GOOD) + 3
    newest = {r["source"]: r["finished_at"] for r in pq.read_table(min(spooled, key=lambda p: pq.read_metadata(p).num_rows)).to_pylist()}

    stats = merge.merge_shard(_descriptor(shard), output=str(out), store=StorageConfig(retries=1))
    assert (stats["rows"], stats["ok"]) == (len(GOOD), len(GOOD))
    rows = one_row_each(out, [str(tmp_path / "in" / rel) for rel, _ in GOOD])
    for src, t in newest.items():
        assert rows[src]["finished_at"] == t


# --------------------------------------------------------------------------------------------- archival metadata


@needs_exiftool
@pytest.mark.parametrize("device_codec", [False, True], ids=["cpu-codec", "device-codec"])
def test_archival_metadata_survives_the_stages(tmp_path, tiny_ckpt, model, device_codec):
    """A grey JPEG scan tagged as an archive's are (EXIF, IPTC, XMP, GPS, 600 dpi, Orientation 6), JPEG out:
    through decode -> actor -> finish the output keeps every group, is upright, and says a model made its
    colour (with the device codec the actor decodes and encodes the JPEG and finish_batch inserts the metadata)."""
    m, meta = model
    folder = tmp_path / "in"
    folder.mkdir()
    scan = folder / "scan.jpg"
    grey = np.random.default_rng(7).integers(0, 256, (48, 64), dtype=np.uint8)  # stored 64 wide, 48 high
    scan.write_bytes(encoded(Image.fromarray(grey, "L"), "JPEG", quality=95, dpi=(600, 600)))
    exiftool_write([scan], "-Orientation#=6", *(f"-{k}={v}" for k, v in TAGS.items()))
    manifest = folder / "list.txt"
    manifest.write_text("scan.jpg\n")
    shards = _shards(manifest, shard_size=10)
    out = tmp_path / "out"
    config = _config(manifest, out, tiny_ckpt, format="jpeg", device_codec=device_codec)
    _, stats = _run_stages(config, shards, m, meta)

    _check_ledger(out, shards, stats, ok=1, errors={})
    [row] = one_row_each(out, [str(scan)]).values()
    assert (row["width"], row["height"], row["bit_depth"]) == (48, 64, 8)  # upright
    report = json.loads(row["metadata"])
    assert {"exif", "iptc", "xmp", "dpi"} <= set(report["kept"]) and "provenance" in report["added"]
    written = Path(row["output"])
    assert written == out / "images" / "scan.jpg"
    with Image.open(written) as im:
        assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (48, 64))
    t = exiftool_read([written])["scan.jpg"]
    check_carried_groups(t, fmt="jpeg")
    check_provenance(t, meta.model_id)


# --------------------------------------------------------------------------------------------- CheckpointStore


def _store(path: Path):
    import pyarrow.fs as pafs

    from raycolor.pipelines.training.checkpoints import CheckpointStore

    return CheckpointStore(pafs.LocalFileSystem(), str(path))


def test_checkpoint_names_sort_by_epoch_and_only_checkpoints_count(tmp_path):
    """new_name puts the epoch first (zero-padded), so names() in order is the order of progress; other folders
    and files in the run's folder are not checkpoints."""
    from raycolor.pipelines.training.checkpoints import CheckpointStore

    store = _store(tmp_path / "train")
    assert store.names() == []  # no folder yet
    names = [CheckpointStore.new_name(e) for e in (10, 2, 9)]
    for n in names:
        (tmp_path / "train" / n).mkdir(parents=True)
    (tmp_path / "train" / "checkpoint_file").write_text("not a folder")
    (tmp_path / "train" / "other").mkdir()
    assert store.names() == [names[1], names[2], names[0]]


def _write_checkpoint(store_dir: Path, epoch: int, seed: int) -> tuple[str, torch.nn.Module, torch.optim.Optimizer]:
    """A checkpoint folder as CheckpointStore.save hands it to Ray Train: the core checkpoint plus train_state.pt."""
    from raycolor.core.model import build_colorizer
    from raycolor.pipelines.training import checkpoints as ray_train

    torch.manual_seed(seed)
    m = build_colorizer(weights=None)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    m(torch.rand(1, 1, 32, 32) * 100).mean().backward()
    opt.step()  # an optimizer state worth restoring
    name = ray_train.CheckpointStore.new_name(epoch)
    d = store_dir / name
    line = {"epoch": epoch, "stage": "frozen"}
    checkpoint.save(str(d), m, render_size=32, extra={"epoch": epoch, "metrics": line})
    torch.save({"format": ray_train.STATE_FORMAT, "epoch": epoch, "stage": "frozen", "optimizer": opt.state_dict(),
                "history": [line]}, d / ray_train.TRAIN_STATE_NAME)
    return name, m, opt


@pytest.mark.ray  # latest_valid reads through ray.train.Checkpoint: Ray's library, no cluster (checked below)
def test_checkpoint_store_skips_unusable_checkpoints_and_exports_the_newest_good_one(tmp_path):
    import ray

    from raycolor.core.checkpoint import CheckpointError

    started_before = ray.is_initialized()  # another test file of this pytest worker may have started one
    run = tmp_path / "train"
    store = _store(run)
    assert store.latest_valid() is None  # nothing yet: train from scratch
    first, _, _ = _write_checkpoint(run, 1, seed=1)
    good, m2, _ = _write_checkpoint(run, 2, seed=2)
    corrupt, _, _ = _write_checkpoint(run, 3, seed=3)
    weights = run / corrupt / checkpoint.WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:-10])  # cut short: no longer its model_id
    no_state, _, _ = _write_checkpoint(run, 4, seed=4)
    (run / no_state / "train_state.pt").unlink()

    restored = store.latest_valid(want_files=True)
    assert restored.name == good and restored.state["epoch"] == 2 and restored.state["history"] == [{"epoch": 2, "stage": "frozen"}]
    for k, v in m2.state_dict().items():
        assert torch.equal(restored.model.state_dict()[k], v), k
    assert set(restored.state["optimizer"]["state"])  # AdamW's moments came back

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / checkpoint.CONFIG_NAME).write_text("{}")  # an older export's config is replaced, not mixed in
    from raycolor.pipelines.training.checkpoints import CheckpointStore

    assert CheckpointStore.export(restored, str(model_dir), StorageConfig(retries=1)) == str(model_dir)
    exported, exported_meta = checkpoint.load(str(model_dir))
    assert exported_meta.model_id == restored.meta.model_id
    for k, v in m2.state_dict().items():
        assert torch.equal(exported.state_dict()[k], v), k

    for name in (first, good):  # no usable checkpoint left: an error, never a silent fresh start
        (run / name / checkpoint.WEIGHTS_NAME).write_bytes(b"")
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        store.latest_valid()
    assert ray.is_initialized() == started_before  # Ray's library only: this test started nothing


def test_a_run_that_stops_after_its_checkpoint_went_names_the_checkpoint(tmp_path, tiny_ckpt):
    """The colorize driver's report of a failed stream (pipelines.colorize.model_gone): Ray Data may end a run
    whose restarted model actor cannot load the checkpoint with its own error about the dead actor's task; the
    driver then reads the checkpoint again and reports that instead. A readable checkpoint changes nothing."""
    import shutil

    from raycolor.pipelines.colorize import model_gone

    ckpt = tmp_path / "model"
    shutil.copytree(tiny_ckpt, ckpt)
    cfg = ColorizeConfig(inputs=(str(tmp_path),), output=str(tmp_path / "out"), checkpoint=str(ckpt))
    ray_data_error = AssertionError("Above ray.get should raise an exception.")
    assert model_gone(cfg.checkpoint, ray_data_error, store=cfg.storage) is None  # readable: the pipeline's own error stands
    (ckpt / checkpoint.CONFIG_NAME).unlink()
    gone = model_gone(cfg.checkpoint, ray_data_error, store=cfg.storage)
    assert isinstance(gone, checkpoint.CheckpointError)
    assert str(gone).startswith(f"no checkpoint at {ckpt}") and str(gone).endswith("(the run stopped with AssertionError)")
    # the actor's own CheckpointError already says it
    assert model_gone(cfg.checkpoint, checkpoint.CheckpointError(f"cannot read checkpoint {ckpt}"), store=cfg.storage) is None


# --------------------------------------------------------------------------------------------- inputs with colour


def _coloured_inputs(folder: Path) -> tuple[Path, dict[str, str]]:
    """A sepia JPEG, a grey PNG (decoded as a stride-0 view), a colour photograph (a bundled sample, as a small
    baseline JPEG) and a hand-tinted JPEG (a red and a green region), listed in folder/list.txt in that order
    (each of decode_block's parts of _run_stages's 3-row blocks holds a JPEG, for the device codec): (manifest,
    {relpath: "grey" | "toned" | "colour"})."""
    from madecolour import grey_ramp, hand_tinted, toned

    folder.mkdir(parents=True, exist_ok=True)
    photo = Image.open(Path(__file__).parent.parent / "raycolor" / "samples" / "02-colorful-cups.jpg").convert("RGB")
    photo.thumbnail((160, 160))
    files = {
        "sepia.jpg": (encoded(toned(70, 25)[:64, :96], "JPEG", quality=90), "toned"),
        "grey.png": (encoded(Image.fromarray(grey_ramp()[:64, :96, 0], "L"), "PNG"), "grey"),
        "photo.jpg": (encoded(photo, "JPEG", quality=90), "colour"),
        "tinted.jpg": (encoded(hand_tinted()[::3, ::3], "JPEG", quality=90), "colour"),
    }
    for rel, (data, _) in files.items():
        (folder / rel).write_bytes(data)
    manifest = folder / "list.txt"
    manifest.write_text("".join(f"{rel}\n" for rel in files))
    return manifest, {rel: kind for rel, (_, kind) in files.items()}


@pytest.mark.parametrize("device_codec", [False, True], ids=["cpu-codec", "device-codec"])
@pytest.mark.parametrize("colour_inputs", ["colorize", "skip"])
def test_inputs_with_colour_are_measured_and_skipped_on_request(tmp_path, tiny_ckpt, model, colour_inputs, device_codec):
    """Every row carries input_chroma, tone_hue (the sepia's 70 degrees) and has_colour; the decode stage measures
    them, or the actor for a JPEG it decodes itself. With colour_inputs "skip" the hand-tinted print and the
    photograph are skipped rows (status "skipped", error "has_colour: <input_chroma>", their size, no output) and
    the stats count them as skipped, not as errors; grey and toned inputs are written either way."""
    m, meta = model
    manifest, kinds = _coloured_inputs(tmp_path / "in")
    shards = _shards(manifest, shard_size=100)
    out = tmp_path / "out"
    config = _config(manifest, out, tiny_ckpt, colour_inputs=colour_inputs, device_codec=device_codec)
    finished, stats = _run_stages(config, shards, m, meta, block_rows=3)

    skip = colour_inputs == "skip"
    rows = one_row_each(out, [str(tmp_path / "in" / rel) for rel in kinds])
    for rel, kind in kinds.items():
        row = rows[str(tmp_path / "in" / rel)]
        assert row["has_colour"] is (kind == "colour"), row
        if kind == "grey":
            assert (row["input_chroma"], row["tone_hue"]) == (0.0, None)
        elif kind == "toned":
            assert row["input_chroma"] > 15 and abs(row["tone_hue"] - 70) < 6, row
        else:
            assert row["input_chroma"] > 30 and row["tone_hue"] is None, row
        if skip and kind == "colour":
            assert (row["status"], row["error"]) == ("skipped", f"has_colour: {row['input_chroma']:.1f}"), row
            assert row["output"] is None and row["bit_depth"] is None and row["metadata"] is None
            assert row["width"] and row["height"]  # it was decoded: its size is known
        else:
            assert (row["status"], row["error"]) == ("ok", None), row
            assert Path(row["output"]).is_file()
    n_skipped = 2 if skip else 0
    [st] = stats.values()
    assert (st["rows"], st["ok"], st["error"], st["skipped"], st["has_colour"]) == (4, 4 - n_skipped, 0, n_skipped, 2)
    assert st["errors_by_reason"] == {}
    assert sorted(r["status"] for r in finished) == sorted(["ok"] * (4 - n_skipped) + ["skipped"] * n_skipped)
    written = {p.name for p in (out / "images").iterdir()}
    assert written == {paths.output_key(rel, ".png") for rel, kind in kinds.items() if not (skip and kind == "colour")}


def test_retry_all_errors_leaves_skipped_rows_alone(tmp_path, tiny_ckpt, model):
    """A finished shard's skipped rows are done: expanding it again for --retry-errors all redoes its error
    rows only (here a cut-short PNG), never a skipped one; the merge keeps the skipped row as it was."""
    m, meta = model
    manifest, kinds = _coloured_inputs(tmp_path / "in")
    (tmp_path / "in" / "cut.png").write_bytes(encoded(noise(20, 20), "PNG")[:60])
    manifest.write_text(manifest.read_text() + "cut.png\n")
    [shard] = _shards(manifest, shard_size=100)
    out = tmp_path / "out"
    _, first = _run_stages(_config(manifest, out, tiny_ckpt, colour_inputs="skip"), [shard], m, meta)
    assert (first[shard.id]["skipped"], first[shard.id]["errors_by_reason"]) == (2, {"truncated": 1})
    before = one_row_each(out, [str(tmp_path / "in" / rel) for rel in [*kinds, "cut.png"]])

    retry = shard.with_(retry="all")
    redo = stages._expand_shard({**asdict(retry), "marker": _descriptor(shard)["marker"]}, output=str(out),
                                store=StorageConfig(retries=1))
    assert [r["source"] for r in redo] == [str(tmp_path / "in" / "cut.png")]
    assert not ledger.is_retryable("has_colour: 54.0", "all") and not ledger.is_retryable("x: y", "all", "skipped")
    assert ledger.is_retryable("truncated: cut", "all", "error")
    merge.merge_shard({**_descriptor(shard), "retry": "all"}, output=str(out), store=StorageConfig(retries=1))
    after = one_row_each(out, before)
    for src in before:
        if before[src]["status"] == "skipped":
            assert after[src] == before[src]
