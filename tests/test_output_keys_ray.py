"""One output per input, colorized end to end (local Ray, moto S3): a glob of same-named tars, two tars on a
first run, a manifest naming one path in two buckets, and an OUTPUT written by key rule 1 that keeps its names
when a root is added. The rules themselves, without Ray: test_output_keys.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from support import encoded, noise, one_row_each, write_tar

from raycolor.config import ColorizeConfig
from raycolor import paths
from raycolor.outputs import ledger
from raycolor.pipelines.colorize import colorize

pytestmark = pytest.mark.slow


def _png(seed: int, h: int, w: int) -> bytes:
    return encoded(noise(w, h, seed), "PNG")


def _two_outputs(out: Path, sources: dict[str, tuple[int, int]]) -> dict:
    """Each source has its own ok row and its own output file, of its own picture's size (w, h)."""
    rows = one_row_each(out, list(sources))
    outputs = [r["output"] for r in rows.values()]
    assert all(r["status"] == "ok" for r in rows.values()), rows
    assert len(set(outputs)) == len(sources), outputs
    for src, size in sources.items():
        assert Image.open(rows[src]["output"]).size == size, (src, rows[src]["output"])
    blobs = [Path(o).read_bytes() for o in outputs]
    assert len(set(blobs)) == len(blobs)
    assert sorted(str(p) for p in (out / "images").rglob("*.png")) == sorted(outputs)  # nothing else written
    return rows


def test_a_glob_of_same_named_tars_gives_one_output_per_member(ray_local, tiny_ckpt, tmp_path):
    a = write_tar(tmp_path / "in" / "alice" / "batch.tar", {"x.png": _png(1, 24, 32)})
    b = write_tar(tmp_path / "in" / "bob" / "batch.tar", {"x.png": _png(2, 30, 20)})
    out = tmp_path / "out"
    s = colorize(ColorizeConfig(inputs=(str(tmp_path / "in" / "*" / "batch.tar"),), output=str(out), checkpoint=tiny_ckpt))
    assert (s.inputs, s.ok, s.error) == (2, 2, 0)
    rows = _two_outputs(out, {f"{a}#x.png": (32, 24), f"{b}#x.png": (20, 30)})
    assert rows[f"{a}#x.png"]["output"] == str(out / "images" / "alice" / "batch.tar" / "x.png")
    assert rows[f"{b}#x.png"]["output"] == str(out / "images" / "bob" / "batch.tar" / "x.png")
    [record] = ledger.read_roots(str(out)).values()
    assert (record["namespace"], record["key_rule"]) == ("", 2)


def test_two_tars_of_one_name_on_a_first_run(ray_local, tiny_ckpt, tmp_path):
    a = write_tar(tmp_path / "alice" / "batch.tar", {"x.png": _png(3, 24, 32)})
    b = write_tar(tmp_path / "bob" / "batch.tar", {"x.png": _png(4, 30, 20)})
    out = tmp_path / "out"
    s = colorize(ColorizeConfig(inputs=(str(a), str(b)), output=str(out), checkpoint=tiny_ckpt))
    assert (s.inputs, s.ok, s.error) == (2, 2, 0)
    ns = s.settings["namespaces"]
    assert ns[str(a)] == "" and ns[str(b)] == paths.namespace_for(str(b))
    rows = _two_outputs(out, {f"{a}#x.png": (32, 24), f"{b}#x.png": (20, 30)})
    assert rows[f"{b}#x.png"]["output"] == str(out / "images" / ns[str(b)] / "batch.tar" / "x.png")


def test_a_manifest_naming_one_path_in_two_buckets(ray_local, s3_env, tiny_ckpt, tmp_path):
    fs = s3_env.fs()
    ba, bb = s3_env.bucket("bucket-a"), s3_env.bucket("bucket-b")
    fs.pipe(f"{ba}/p/x.jpg", encoded(noise(32, 24, 5), "JPEG"))
    fs.pipe(f"{bb}/p/x.jpg", encoded(noise(20, 30, 6), "JPEG"))
    srcs = [f"s3://{ba}/p/x.jpg", f"s3://{bb}/p/x.jpg"]
    txt = tmp_path / "m.txt"
    txt.write_text("\n".join(srcs) + "\n")
    out = tmp_path / "out"
    # shard size 1: the entries are in different shards, where the within-shard renaming never saw both
    s = colorize(ColorizeConfig(inputs=(str(txt),), output=str(out), checkpoint=tiny_ckpt, shard_size=1))
    assert (s.inputs, s.ok, s.error, s.shards) == (2, 2, 0, 2)
    rows = _two_outputs(out, {srcs[0]: (32, 24), srcs[1]: (20, 30)})
    assert rows[srcs[0]]["output"] == str(out / "images" / ba / "p" / "x.png")
    assert rows[srcs[1]]["output"] == str(out / "images" / bb / "p" / "x.png")


def test_an_output_of_key_rule_1_keeps_its_names_when_a_root_is_added(ray_local, tiny_ckpt, tmp_path, monkeypatch):
    from raycolor.inputs import listing

    a = write_tar(tmp_path / "in" / "alice" / "batch.tar", {"x.png": _png(7, 24, 32)})
    glob = str(tmp_path / "in" / "*" / "batch.tar")
    out = tmp_path / "out"
    # an OUTPUT as raycolor wrote it before key rules had numbers: rule 1 keys, a roots record without key_rule
    monkeypatch.setattr(listing, "KEY_RULE", 1, raising=False)
    first = colorize(ColorizeConfig(inputs=(glob,), output=str(out), checkpoint=tiny_ckpt))
    monkeypatch.undo()
    assert first.ok == 1
    old = out / "images" / "batch.tar" / "x.png"  # rule 1: the tar's basename only
    record_uri = Path(paths.root_uri(str(out), glob))
    record = json.loads(record_uri.read_text())
    record.pop("key_rule", None)
    record_uri.write_text(json.dumps(record))
    before = (old.read_bytes(), old.stat().st_mtime_ns)

    # a re-run with an added root (same-named tars under another folder)
    c = write_tar(tmp_path / "more" / "carol" / "batch.tar", {"x.png": _png(8, 30, 20)})
    more = str(tmp_path / "more" / "*" / "batch.tar")
    again = colorize(ColorizeConfig(inputs=(glob, more), output=str(out), checkpoint=tiny_ckpt))
    assert (again.inputs, again.ok, again.processed, again.skipped) == (2, 2, 1, 1)
    assert (old.read_bytes(), old.stat().st_mtime_ns) == before  # not rewritten
    ns = again.settings["namespaces"]
    assert ns == {glob: "", more: paths.namespace_for(more)} and again.settings["key_rules"] == {glob: 1, more: 2}
    rows = _two_outputs(out, {f"{a}#x.png": (32, 24), f"{c}#x.png": (20, 30)})
    assert rows[f"{a}#x.png"]["output"] == str(old)  # the old row, its old name
    assert rows[f"{c}#x.png"]["output"] == str(out / "images" / ns[more] / "carol" / "batch.tar" / "x.png")
    roots = ledger.read_roots(str(out))
    assert (roots[glob]["key_rule"], roots[more]["key_rule"]) == (1, 2)  # the old root stays on rule 1

    # and a third run of both changes no name and does nothing
    third = colorize(ColorizeConfig(inputs=(glob, more), output=str(out), checkpoint=tiny_ckpt))
    assert (third.processed, third.skipped) == (0, 2)
    assert (old.read_bytes(), old.stat().st_mtime_ns) == before
