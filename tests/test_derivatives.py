"""Derivatives without Ray: the --derivative spec and its checks, and
the stages chained by hand (decode_block -> Predictor.with_model -> finish_batch -> merge_shard, as
tests/test_stages.py does) writing a master and its derivatives from one prediction, both layouts; a failed
derivative write makes the input's row an error and --retry-errors then writes every output once.
tests/test_derivatives_core.py tests the reduction itself; tests/test_derivatives_ray.py runs the acceptance through
the CLI on Ray."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image
from support import TAGS, check_provenance, encoded, exiftool_read, exiftool_write, needs_exiftool, noise, one_row_each

from raycolor import inputs, storage
from raycolor.config import ColorizeConfig, DerivativeSpec, StorageConfig
from raycolor.core import checkpoint, derivatives
from raycolor import paths
from raycolor.outputs import fixity, ledger, merge
from raycolor.pipelines import stages
from raycolor.pipelines.colorize import check_config

# (relpath, (h, w)): a landscape, a portrait, and one smaller than every derivative (written at its own size)
SIZES = {"a.png": (30, 64), "sub/b.jpg": (72, 40), "c.png": (9, 12)}
DERIVS = (DerivativeSpec("jpeg", 32), DerivativeSpec("png", 16, (("png_level", 9),)))


@pytest.fixture(scope="module")
def model(tiny_ckpt):
    return checkpoint.load(tiny_ckpt)


# --------------------------------------------------------------------------------------------- the spec


def test_spec_parses_once_and_says_what_is_wrong(tmp_path):
    assert DerivativeSpec.parse("jpeg:3000") == DerivativeSpec("jpeg", 3000)
    spec = DerivativeSpec.parse("JPEG:400:jpeg_quality=80")
    assert (spec.name, spec.options) == ("jpeg-400", (("jpeg_quality", 80),))
    assert DerivativeSpec.parse("tiff:512:tiff_pyramid=true:png_level=6").options == (("png_level", 6), ("tiff_pyramid", True))
    for bad in ("jpeg", "jpeg:0", "jpeg:-3", "jpeg:big", ":300", "jpeg:300:quality", "jpeg:300:q=1:q=2", "jpeg:300:q=x"):
        with pytest.raises(ValueError):
            DerivativeSpec.parse(bad)

    def cfg(*specs):
        return ColorizeConfig(inputs=("x",), output=str(tmp_path), checkpoint="c", format="tiff", derivatives=specs)

    check_config(cfg(*DERIVS))
    for specs, says in (
        ((DerivativeSpec("gif", 300),), "does not write"),
        ((DerivativeSpec("jpeg", 300), DerivativeSpec("jpeg", 300, (("jpeg_quality", 50),))), "given twice"),
        ((DerivativeSpec("jpeg", 300, (("quality", 50),)),), "no option 'quality'"),
        ((DerivativeSpec("jpeg", 300, (("jpeg_quality", 500),)),), "jpeg quality must be in 1..100"),
        ((DerivativeSpec("jpeg", 300, (("jpeg_quality", 5.5),)),), "not a value"),
        ((DerivativeSpec("jpeg", 300, (("tiff_pyramid", True),)),), "tiff_pyramid is for a tiff derivative"),
    ):
        with pytest.raises(ValueError, match=says):
            check_config(cfg(*specs))


# --------------------------------------------------------------------------------------------- through the stages


def _inputs(folder: Path, tagged: bool = False) -> Path:
    for k, (rel, (h, w)) in enumerate(SIZES.items()):
        p = folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(encoded(noise(w, h, k), "PNG" if rel.endswith(".png") else "JPEG"))
        if tagged and rel.endswith(".jpg"):
            exiftool_write([p], *(f"-{k}={v}" for k, v in TAGS.items()))
    (folder / "list.txt").write_text("".join(f"{rel}\n" for rel in SIZES))
    return folder / "list.txt"


def colorize_by_hand(config: ColorizeConfig, model, *, retry: str = "none") -> list[inputs.Shard]:
    """The manifest's shards through expand -> decode_block -> Predictor -> finish_batch -> merge_shard; returns
    the shards and counts the rows finish_batch says the model predicted (in `colorize_by_hand.predicted`)."""
    m, meta = model
    plan = inputs.classify(config.inputs[0])
    [(kind, uri, tag)] = plan.objects
    shards = inputs.size_object(kind, uri, tag, root=plan.root, shard_size=config.shard_size)
    output = storage.absolute(config.output)
    stage = stages.ModelStage.for_colorize(config, meta.render_size)
    predictor = stages.Predictor.with_model(m, torch.device("cpu"), stage)
    colorize_by_hand.predicted = 0
    for s in shards:
        descriptor = {**asdict(s.with_(retry=retry)), "marker": f"{s.uri}#bytes={s.start}-{s.stop}"}
        rows = stages.expand_batch(pa.Table.from_pylist([descriptor]), output=output, store=config.storage).to_pylist()
        if rows:
            batch = {k: np.array([r[k] for r in rows], dtype=np.int64 if isinstance(rows[0][k], int) else object)
                     for k in rows[0]}
            for decoded in stages.decode_block(batch, stage=stage):
                out = stages.finish_batch(predictor(decoded), config=config, stage=stage, output=output,
                                          model_id=meta.model_id)
                colorize_by_hand.predicted += int(out["predicted"].sum())
        merge.merge_shard(descriptor, output=output, store=config.storage, layout=config.layout,
                           parquet_images=config.parquet_images)
    return shards


def _config(tmp_path: Path, ckpt: str, *, tagged: bool = False, **kw) -> ColorizeConfig:
    manifest = _inputs(tmp_path / "in", tagged)
    kw = {"format": "tiff", "tiff_pyramid": True, "derivatives": DERIVS, "shard_size": 2, **kw}
    return ColorizeConfig(inputs=(str(manifest),), output=str(tmp_path / "out"), checkpoint=ckpt, batch_size=2,
                          storage=StorageConfig(retries=1), **kw)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _decoded_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.size


def test_files_layout_master_and_derivatives_from_one_prediction(tmp_path, tiny_ckpt, model):
    config = _config(tmp_path, tiny_ckpt)
    colorize_by_hand(config, model)
    out = tmp_path / "out"
    assert colorize_by_hand.predicted == len(SIZES)  # one prediction per input, three outputs each
    rows = one_row_each(out, [str(tmp_path / "in" / rel) for rel in SIZES])
    written = set()
    for rel, (h, w) in SIZES.items():
        row = rows[str(tmp_path / "in" / rel)]
        master, jpeg, png = row["outputs"]
        assert (master["name"], master["uri"], master["sha256"]) == (ledger.MASTER, row["output"], row["sha256"])
        assert master["uri"] == str(out / "images" / paths.output_key(rel, ".tif"))
        assert jpeg["uri"] == str(out / "derivatives" / "jpeg-32" / paths.output_key(rel, ".jpg"))
        assert png["uri"] == str(out / "derivatives" / "png-16" / paths.output_key(rel, ".png"))
        for entry, want in ((master, (w, h)), (jpeg, derivatives.target_size(w, h, 32)),
                            (png, derivatives.target_size(w, h, 16))):
            data = Path(entry["uri"]).read_bytes()
            assert (entry["bytes"], entry["sha256"]) == (len(data), _sha(data))
            assert (entry["width"], entry["height"]) == want == _decoded_size(data)
            written.add(entry["uri"])
        assert (jpeg["format"], png["format"]) == ("jpeg", "png")
    # c.png (12 x 9) is smaller than both: written at its own size, never upscaled
    assert {(e["width"], e["height"]) for e in rows[str(tmp_path / "in" / "c.png")]["outputs"]} == {(12, 9)}
    on_disk = {str(p) for p in out.rglob("*") if p.is_file() and p.parts[len(out.parts)] in ("images", "derivatives")}
    assert on_disk == written and len(written) == 3 * len(SIZES)
    report = fixity.Report()
    for part in fixity.part_uris(str(out)):
        report.merge(fixity.check_part(part))
    assert (report.problems, report.ok) == (0, 9)


@needs_exiftool
def test_derivatives_carry_the_metadata_and_provenance_with_their_own_size(tmp_path, tiny_ckpt, model):
    config = _config(tmp_path, tiny_ckpt, tagged=True)
    colorize_by_hand(config, model)
    row = one_row_each(tmp_path / "out", [str(tmp_path / "in" / rel) for rel in SIZES])[str(tmp_path / "in" / "sub/b.jpg")]
    paths = [Path(e["uri"]) for e in row["outputs"]]
    tags = exiftool_read(paths)
    _, meta = model
    for e, p in zip(row["outputs"], paths):
        t = tags[p.name]
        check_provenance(t, meta.model_id)
        assert t["IFD0:Artist"] == TAGS["EXIF:Artist"] and t["XMP-dc:Creator"] == TAGS["XMP-dc:Creator"]
        assert t["IPTC:By-line"] == TAGS["IPTC:By-line"]
        # the resolution scales with the pixels: the print size stays 40 / 600 inches wide
        assert t["IFD0:XResolution"] == pytest.approx(600 * e["width"] / 40, rel=1e-3)
        if "ExifIFD:ExifImageWidth" in t:
            assert (t["ExifIFD:ExifImageWidth"], t["ExifIFD:ExifImageHeight"]) == (e["width"], e["height"])
        assert json.loads(row["metadata"])  # the master's report


def test_webdataset_members_for_each_derivative(tmp_path, tiny_ckpt, model):
    config = _config(tmp_path, tiny_ckpt, layout="webdataset")
    colorize_by_hand(config, model)
    out = tmp_path / "out"
    rows = one_row_each(out, [str(tmp_path / "in" / rel) for rel in SIZES])
    for rel in SIZES:
        row = rows[str(tmp_path / "in" / rel)]
        tar_uri, member = row["output"].split("#", 1)
        key = member.rsplit(".", 1)[0]
        with tarfile.open(tar_uri) as tf:
            members = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}
        assert [e["uri"] for e in row["outputs"]] == [f"{tar_uri}#{key}.tif", f"{tar_uri}#{key}.jpeg-32.jpg",
                                                     f"{tar_uri}#{key}.png-16.png"]
        for e in row["outputs"]:
            assert _sha(members[e["uri"].split("#", 1)[1]]) == e["sha256"]
        assert f"{key}.json" in members
    assert "derivative_images" not in pa.parquet.read_schema(paths.part_uri(str(out), tar_uri.rsplit("/", 1)[1][:-4])).names


def test_a_failed_derivative_write_is_the_rows_error_and_a_retry_writes_each_output_once(tmp_path, tiny_ckpt, model):
    config = _config(tmp_path, tiny_ckpt)
    out = tmp_path / "out"
    out.mkdir()
    (out / "derivatives").write_bytes(b"a file where the folder goes: every derivative write fails")
    colorize_by_hand(config, model)
    rows = one_row_each(out, [str(tmp_path / "in" / rel) for rel in SIZES])
    assert {r["status"] for r in rows.values()} == {"error"}
    assert {ledger.reason_of(r["error"]) for r in rows.values()} == {"write_failed"}
    assert {r["outputs"] for r in rows.values()} == {None}
    (out / "derivatives").unlink()
    colorize_by_hand(config, model, retry="transient")
    assert colorize_by_hand.predicted == len(SIZES)
    rows = one_row_each(out, [str(tmp_path / "in" / rel) for rel in SIZES])
    assert {r["status"] for r in rows.values()} == {"ok"} and all(len(r["outputs"]) == 3 for r in rows.values())
    files = sorted(str(p) for p in out.rglob("*") if p.is_file() and p.parts[len(out.parts)] in ("images", "derivatives"))
    assert files == sorted(e["uri"] for r in rows.values() for e in r["outputs"])


def test_webdataset_retry_keeps_the_derivatives_of_rows_not_redone(tmp_path, tiny_ckpt, model):
    """A retried shard's tar is rebuilt: the rows kept from its earlier part keep their derivative members."""
    config = _config(tmp_path, tiny_ckpt, layout="webdataset", shard_size=3)
    [shard] = colorize_by_hand(config, model)
    out = tmp_path / "out"
    part = Path(paths.part_uri(str(out), shard.id))
    t = pa.parquet.read_table(part)
    src = str(tmp_path / "in" / "a.png")
    redo = [s == src for s in t.column("source").to_pylist()]
    t = t.set_column(t.schema.get_field_index("status"), "status",
                     pa.array(["error" if r else s for r, s in zip(redo, t.column("status").to_pylist())]))
    t = t.set_column(t.schema.get_field_index("error"), "error",
                     pa.array(["write_failed: test" if r else e for r, e in zip(redo, t.column("error").to_pylist())]))
    pa.parquet.write_table(t, part)
    before = {r["source"]: r for r in t.to_pylist()}
    colorize_by_hand(config, model, retry="transient")
    assert colorize_by_hand.predicted == 1
    rows = one_row_each(out, [str(tmp_path / "in" / rel) for rel in SIZES])
    tar_uri = rows[src]["output"].split("#", 1)[0]
    with tarfile.open(tar_uri) as tf:
        members = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}
    for source, row in rows.items():
        assert row["status"] == "ok" and len(row["outputs"]) == 3
        for e in row["outputs"]:
            assert _sha(members[e["uri"].split("#", 1)[1]]) == e["sha256"]
        if source != src:
            assert row["outputs"] == before[source]["outputs"]
    assert len(members) == 4 * len(SIZES)  # master, two derivatives and the .json of each sample, once


def test_the_cli_refuses_a_malformed_derivative_before_anything_runs(tmp_path):
    from typer.testing import CliRunner

    from raycolor.cli import app

    r = CliRunner().invoke(app, ["colorize", str(tmp_path), "--output", str(tmp_path / "out"), "--checkpoint", "c",
                                 "--derivative", "jpeg:big"])
    assert r.exit_code == 2 and "FORMAT:LONG_EDGE" in r.output
    r = CliRunner().invoke(app, ["colorize", str(tmp_path), "--output", str(tmp_path / "out"), "--checkpoint", "c",
                                 "--derivative", "bmp2:300"])
    assert r.exit_code == 2 and "unknown image format" in r.output
    assert not (tmp_path / "out").exists()
