"""Fixity without Ray: the hashes the stages record (source_sha256 of the bytes read, sha256 and `outputs` of the
bytes written) and raycolor/outputs/fixity.py's checks of an OUTPUT against them, both layouts; and a part written
before these columns (an older OUTPUT) still reads, resumes and verifies (presence only).

The stages are chained by hand as tests/test_stages.py does (decode_block -> Predictor.with_model -> finish_batch
-> merge_shard); tests/test_verify_ray.py runs `raycolor verify` itself on Ray and S3."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support import encoded, noise, one_row_each
from test_derivatives import colorize_by_hand

from raycolor.config import ColorizeConfig, StorageConfig
from raycolor.core import checkpoint
from raycolor import paths
from raycolor.outputs import fixity, ledger

SIZES = {"a.png": (24, 32), "sub/b.jpg": (40, 20), "c.png": (17, 30)}


@pytest.fixture(scope="module")
def model(tiny_ckpt):
    return checkpoint.load(tiny_ckpt)


def _inputs(folder: Path) -> Path:
    for k, (rel, (h, w)) in enumerate(SIZES.items()):
        p = folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(encoded(noise(w, h, k), "PNG" if rel.endswith(".png") else "JPEG"))
    (folder / "list.txt").write_text("".join(f"{rel}\n" for rel in SIZES))
    return folder / "list.txt"


def _config(tmp_path: Path, ckpt: str, **kw) -> ColorizeConfig:
    manifest = _inputs(tmp_path / "in")
    return ColorizeConfig(inputs=(str(manifest),), output=str(tmp_path / "out"), checkpoint=ckpt, batch_size=2,
                          shard_size=2, storage=StorageConfig(retries=1), **kw)


def _verify(out: Path) -> fixity.Report:
    """fixity's checks over every part, as raycolor verify's tasks run them (the folders' join included)."""
    report = fixity.Report()
    parts = fixity.part_uris(str(out))
    for part in parts:
        report.merge(fixity.check_part(part))
    report.merge(fixity.stray_tars(str(out), parts))
    found = [fixity.list_files(uri) for uri in fixity.output_folders(str(out))]
    report.merge(fixity.unexpected(found, [fixity.named_files(p) for p in parts], output=str(out)))
    return report


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_rows_record_the_hashes_of_the_bytes_read_and_written(tmp_path, tiny_ckpt, model):
    config = _config(tmp_path, tiny_ckpt)
    colorize_by_hand(config, model)
    out = tmp_path / "out"
    rows = one_row_each(out, [str(tmp_path / "in" / rel) for rel in SIZES])
    for src, row in rows.items():
        written = Path(row["output"]).read_bytes()
        assert row["source_sha256"] == _sha(Path(src).read_bytes())
        assert row["sha256"] == _sha(written)
        [master] = row["outputs"]
        assert master == {"name": ledger.MASTER, "uri": row["output"], "format": "png", "width": row["width"],
                          "height": row["height"], "bytes": len(written), "sha256": row["sha256"]}
    clean = _verify(out)
    assert (clean.problems, clean.checked, clean.ok, clean.files) == (0, 3, 3, 3)


def test_a_flipped_byte_a_deleted_file_and_a_stray_file_are_named(tmp_path, tiny_ckpt, model):
    config = _config(tmp_path, tiny_ckpt)
    colorize_by_hand(config, model)
    out = tmp_path / "out"
    a, b = out / "images" / "a.png", out / "images" / "sub" / "b.png"
    data = bytearray(a.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one byte: same size, other hash
    a.write_bytes(bytes(data))
    b.unlink()
    (out / "images" / "stray.png").write_bytes(b"not ours")
    r = _verify(out)
    assert r.counts == {"missing": 1, "changed": 1, "unreadable": 0, "unexpected": 1, "c2pa": 0}
    assert r.named["changed"] == [str(a)] and r.named["missing"] == [str(b)]
    assert r.named["unexpected"] == [str(out / "images" / "stray.png")]
    part = Path(fixity.part_uris(str(out))[0])
    part.write_bytes(part.read_bytes()[:100])  # a damaged part is reported, never a crash
    damaged = _verify(out)
    assert damaged.named["unreadable"][0].startswith(f"{part}: ")


def test_sources_are_checked_against_source_sha256(tmp_path, tiny_ckpt, model):
    config = _config(tmp_path, tiny_ckpt)
    colorize_by_hand(config, model)
    out = tmp_path / "out"
    parts = fixity.part_uris(str(out))
    assert sum(fixity.check_part(p, sources=True).ok for p in parts) == 3
    c = tmp_path / "in" / "c.png"
    c.write_bytes(c.read_bytes() + b"\0")  # appended to: decodes the same, is not the same file
    (tmp_path / "in" / "a.png").unlink()
    r = fixity.Report()
    for p in parts:
        r.merge(fixity.check_part(p, sources=True))
    assert r.named["changed"] == [str(c)] and r.named["missing"] == [str(tmp_path / "in" / "a.png")]


def test_tar_sources_are_checked_member_by_member(tmp_path, tiny_ckpt, model):
    """--sources over a tar input: each member hashed as read (a range read), checked by one pass over the tar."""
    from support import write_tar

    tar = write_tar(tmp_path / "in" / "batch.tar", {"x.png": encoded(noise(20, 10, 1), "PNG"),
                                                    "d/y.png": encoded(noise(12, 30, 2), "PNG")})
    config = ColorizeConfig(inputs=(str(tar),), output=str(tmp_path / "out"), checkpoint=tiny_ckpt, batch_size=2,
                            storage=StorageConfig(retries=1))
    colorize_by_hand(config, model)
    [part] = fixity.part_uris(str(tmp_path / "out"))
    clean = fixity.check_part(part, sources=True)
    assert (clean.ok, clean.problems) == (2, 0)
    write_tar(tar, {"x.png": encoded(noise(20, 10, 1), "PNG"), "d/y.png": encoded(noise(12, 30, 3), "PNG")})
    r = fixity.check_part(part, sources=True)
    assert r.named["changed"] == [f"{tar}#d/y.png"] and r.ok == 1


def test_webdataset_members_are_hashed_and_checked(tmp_path, tiny_ckpt, model):
    config = _config(tmp_path, tiny_ckpt, layout="webdataset")
    shards = colorize_by_hand(config, model)
    out = tmp_path / "out"
    rows = one_row_each(out, [str(tmp_path / "in" / rel) for rel in SIZES])
    tars = {}
    for row in rows.values():
        tar_uri, member = row["output"].split("#", 1)
        with tarfile.open(tar_uri) as tf:
            tars[tar_uri] = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}
        assert row["sha256"] == _sha(tars[tar_uri][member]) and row["outputs"][0]["uri"] == row["output"]
    assert _verify(out).problems == 0
    # one member changed, one extra member: each tar rewritten by hand
    tar_uri, member = rows[str(tmp_path / "in" / "a.png")]["output"].split("#", 1)
    members = dict(tars[tar_uri])
    members[member] = members[member][:-1] + bytes([members[member][-1] ^ 0xFF])
    members["zzz.png"] = b"stray"
    with tarfile.open(tar_uri, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    (out / "shards" / "not-a-shard.tar").write_bytes(b"")
    r = _verify(out)
    assert r.named["changed"] == [f"{tar_uri}#{member}"]
    assert sorted(r.named["unexpected"]) == sorted([f"{tar_uri}#zzz.png", str(out / "shards" / "not-a-shard.tar")])
    assert len(shards) == 2


def _as_old(part: Path) -> None:
    """A part as a raycolor before fixity wrote it: without the new columns."""
    t = pq.read_table(part)
    pq.write_table(t.drop_columns(["source_sha256", "sha256", "outputs"]), part)


def test_an_output_written_before_fixity_reads_resumes_and_verifies(tmp_path, tiny_ckpt, model):
    """Older parts lack source_sha256, sha256 and outputs: read_manifest gives nulls, verify checks presence only
    (unhashed), and a --retry-errors merge over such a part keeps its rows and writes the new columns."""
    config = _config(tmp_path, tiny_ckpt)
    shards = colorize_by_hand(config, model)
    out = tmp_path / "out"
    for s in shards:
        _as_old(Path(paths.part_uri(str(out), s.id)))
    rows = one_row_each(out, [str(tmp_path / "in" / rel) for rel in SIZES])
    assert {r["sha256"] for r in rows.values()} == {None} and {r["outputs"] is None for r in rows.values()} == {True}
    r = _verify(out)
    assert (r.problems, r.unhashed, r.ok) == (0, 3, 0)
    (out / "images" / "a.png").unlink()
    assert _verify(out).named["missing"] == [str(out / "images" / "a.png")]
    # the old part is the base of a retried shard's merge: its rows stay, the redone row gains the new columns
    first = shards[0]
    part = Path(paths.part_uri(str(out), first.id))
    t = pq.read_table(part)
    src = t.column("source").to_pylist()[0]
    status = pa.array(["error" if s == src else st for s, st in zip(t.column("source").to_pylist(),
                                                                    t.column("status").to_pylist())])
    errors = pa.array(["read_failed: gone" if s == src else e for s, e in zip(t.column("source").to_pylist(),
                                                                            t.column("error").to_pylist())])
    t = t.set_column(t.schema.get_field_index("status"), "status", status)
    pq.write_table(t.set_column(t.schema.get_field_index("error"), "error", errors), part)
    colorize_by_hand(config, model, retry="transient")
    rows = one_row_each(out, [str(tmp_path / "in" / rel) for rel in SIZES])
    assert {r["status"] for r in rows.values()} == {"ok"}
    assert rows[src]["sha256"] == _sha(Path(rows[src]["output"]).read_bytes())
