"""The layout writers (raycolor/outputs/writers.py) driven directly on a temp OUTPUT, without the pipeline:
what each writes, where, and what it makes of a shard's rows. tests/test_stages.py runs them inside the stages."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pytest

from raycolor import storage
from raycolor.config import StorageConfig
from raycolor import paths
from raycolor.outputs.ledger import IMAGE_COLUMN, MANIFEST_SCHEMA
from raycolor.outputs.writers import WRITERS, FilesWriter, WebDatasetWriter
from raycolor.paths import wds_key

SID = "shard0"


def _rows(*rows: dict) -> pa.Table:
    """Spooled rows as the finish stage writes them: the manifest columns and the images."""
    full = [{**{c: None for c in MANIFEST_SCHEMA.names}, "model_id": "m", "format": "png", "finished_at": 1.0, **r}
            for r in rows]
    table = pa.Table.from_pylist(full, schema=MANIFEST_SCHEMA)
    return table.append_column(IMAGE_COLUMN, pa.array([r.get("image") for r in rows], type=pa.binary()))


def _ok(source: str, key: str, image: bytes) -> dict:
    return {"source": source, "output": key, "status": "ok", "width": 4, "height": 3, "bit_depth": 8,
            "metadata": json.dumps({"added": ["provenance"]}), "image": image}


def _merge(writer, table: pa.Table, out: Path, *, retried: bool = False, parquet_images: bool = False) -> pa.Table:
    return writer.merge(table, output=str(out), sid=SID, retried=retried, parquet_images=parquet_images,
                        store=StorageConfig(retries=1))


def _members(tar: Path) -> dict[str, bytes]:
    with tarfile.open(tar) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers()}


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_one_writer_per_layout():
    assert {name: type(w) for name, w in WRITERS.items()} == {"files": FilesWriter, "webdataset": WebDatasetWriter}
    assert {name: w.layout for name, w in WRITERS.items()} == {"files": "files", "webdataset": "webdataset"}
    assert (FilesWriter.spools_images, WebDatasetWriter.spools_images) == (False, True)


def test_files_writer_writes_each_image_under_images(tmp_path):
    """The finish stage's writes: each image at images/<key>, its temp file in its shard's spool (gone with the
    spool, never beside the images); a write that fails is that image's error, the others are written."""
    out, w = tmp_path / "out", FilesWriter()
    uris = [w.row_output(str(out), key) for key in ("a.png", "sub/b.png")]
    assert uris == [str(out / "images" / "a.png"), str(out / "images" / "sub" / "b.png")]
    (out / "images" / "blocked").mkdir(parents=True)  # a folder where a file should go: that write fails
    blocked = w.row_output(str(out), "blocked")
    errors = w.write_images([(uris[0], b"A"), (blocked, b"X"), (uris[1], b"B")], [SID, SID, "shard1"],
                            output=str(out), store=StorageConfig(retries=1))
    assert errors[0] is None and errors[2] is None and isinstance(errors[1], Exception)
    assert (out / "images" / "a.png").read_bytes() == b"A" and (out / "images" / "sub" / "b.png").read_bytes() == b"B"
    assert _files(out / "images") == {"a.png", "sub/b.png"}  # no temp file beside the images

    table = _rows(_ok("/in/a.png", uris[0], b"A"))
    assert _merge(w, table, out) is table  # the merge adds nothing: the part holds the rows as spooled
    assert not (out / "shards").exists()


def test_webdataset_writer_joins_a_shard_into_one_tar(tmp_path):
    """The merge writes shards/<id>.tar: key.<ext> + key.json per ok row, in row order, nothing for an error row;
    the rows' output points at their member, and the images leave the part unless --parquet-images."""
    out, w = tmp_path / "out", WebDatasetWriter()
    assert w.row_output(str(out), "sub/a.png") == "sub/a.png"  # the key travels to the merge
    table = _rows(
        _ok("/in/sub/a.png", "sub/a.png", b"A"),
        {"source": "/in/bad.png", "status": "error", "error": "truncated: cut short"},
        _ok("/in/v1.2/c.d.png", "v1.2/c.d.png", b"C"),
        _ok("/in/v1_2/c_d.png", "v1_2/c_d.png", b"D"),  # the same WebDataset key once the dots go
    )
    merged = _merge(w, table, out)

    tar = paths.shard_tar_uri(str(out), SID)
    assert tar == str(out / "shards" / f"{SID}.tar") and _files(out) == {f"shards/{SID}.tar"}
    clash = f"v1_2/c_d__{storage.digest('/in/v1_2/c_d.png', 8)}"
    members = _members(Path(tar))
    assert list(members) == ["sub/a.png", "sub/a.json", "v1_2/c_d.png", "v1_2/c_d.json", f"{clash}.png", f"{clash}.json"]
    assert (members["sub/a.png"], members["v1_2/c_d.png"], members[f"{clash}.png"]) == (b"A", b"C", b"D")
    assert json.loads(members["sub/a.json"]) == {"source": "/in/sub/a.png", "status": "ok", "width": 4, "height": 3,
                                                 "model_id": "m", "format": "png", "bit_depth": 8,
                                                 "metadata": {"added": ["provenance"]}}
    assert merged.column("output").to_pylist() == [f"{tar}#sub/a.png", None, f"{tar}#v1_2/c_d.png", f"{tar}#{clash}.png"]
    assert merged.column_names == MANIFEST_SCHEMA.names  # no image column in the part
    assert wds_key("v1.2/c.d.png") == "v1_2/c_d" and wds_key("noext") == "noext"

    kept = _merge(w, table, tmp_path / "again", parquet_images=True)
    assert kept.column("image").to_pylist() == [b"A", None, b"C", b"D"]


def test_a_retried_webdataset_shard_keeps_its_old_members(tmp_path):
    """On --retry-errors the shard's part is the base: its old rows point into the old tar, and the rebuilt tar
    holds their members (same names, same bytes) next to the retried rows' images."""
    out, w = tmp_path / "out", WebDatasetWriter()
    first = _merge(w, _rows(_ok("/in/a.png", "a.png", b"old A"),
                            {"source": "/in/b.png", "status": "error", "error": "read_failed: timeout"}), out)
    tar = Path(paths.shard_tar_uri(str(out), SID))
    assert list(_members(tar)) == ["a.png", "a.json"]

    # the merge's table on a retry: the old part's row for a (no image: the part does not hold it) and b retried
    old_a = {k: v for k, v in first.to_pylist()[0].items()} | {"image": None}
    merged = _merge(w, _rows(old_a, _ok("/in/b.png", "b.png", b"new B")), out, retried=True)
    members = _members(tar)
    assert list(members) == ["a.png", "a.json", "b.png", "b.json"]
    assert (members["a.png"], members["b.png"]) == (b"old A", b"new B")
    assert json.loads(members["a.json"])["source"] == "/in/a.png"
    assert merged.column("output").to_pylist() == [f"{tar}#a.png", f"{tar}#b.png"]

    # not retried, the same rows would lose a's image: the old row is not an image the merge can write
    lost = _merge(w, _rows(old_a, _ok("/in/b.png", "b.png", b"new B")), tmp_path / "other")
    assert lost.column("output").to_pylist()[0] is None

    # a tar changed outside raycolor: the merge fails rather than drop the old row's image
    gone = old_a | {"output": f"{tar}#missing.png"}
    with pytest.raises(RuntimeError, match="has no member missing.png"):
        _merge(w, _rows(gone, _ok("/in/b.png", "b.png", b"new B")), out, retried=True)
