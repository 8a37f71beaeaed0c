"""raycolor.outputs.ledger without Ray: shard planning and expansion, content-defined listing chunks, namespaces,
the OUTPUT lock (local O_EXCL and S3 conditional PUT against the moto server)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raycolor import inputs, storage
from raycolor.config import StorageConfig
from raycolor import paths
from raycolor.outputs import ledger
from raycolor.outputs.ledger import OutputLocked


def _entries(shards, **kw):
    return [i.source for s in shards for i in inputs.expand(s, **kw)]


def test_txt_manifest_is_cut_into_byte_ranges_at_line_starts(tmp_path):
    lines = ["# header", ""] + [f"/data/p/{i:04d}.jpg" for i in range(23)] + ["  ", "# trailing comment"]
    lines.insert(10, "# a comment in the middle")
    m = tmp_path / "list.txt"
    m.write_bytes(b"\xef\xbb\xbf" + ("\r\n".join(lines) + "\n").encode())
    shards = inputs.size_object("txt", str(m), "t", root=str(m), shard_size=5)
    assert [s.count for s in shards] == [5, 5, 5, 5, 3]
    assert all(s.kind == "txt" and s.stop > s.start for s in shards)
    assert [(a.stop, b.start) for a, b in zip(shards, shards[1:])] == [(a.stop, a.stop) for a in shards[:-1]]
    got = _entries(shards)
    assert got == [f"/data/p/{i:04d}.jpg" for i in range(23)]  # every entry once, in file order
    # the shard ids are deterministic and distinct; another tag (the file changed) gives other ids
    again = inputs.size_object("txt", str(m), "t", root=str(m), shard_size=5)
    assert [s.id for s in again] == [s.id for s in shards] and len({s.id for s in shards}) == 5
    assert not {s.id for s in inputs.size_object("txt", str(m), "t2", root=str(m), shard_size=5)} & {s.id for s in shards}
    # relpath rule of manifests, relative entries next to the manifest
    (tmp_path / "rel.txt").write_text("imgs/a.jpg\n")
    (item,) = inputs.expand(inputs.size_object("txt", str(tmp_path / "rel.txt"), "t", root="r", shard_size=5)[0])
    assert (item.source, item.relpath) == (str(tmp_path / "imgs" / "a.jpg"), "imgs/a.jpg")


def test_txt_manifest_rule_is_the_same_for_listing_sizing_and_expanding(tmp_path):
    """One rule (inputs.txt_entries) for list_items, size_object and expand. They used to disagree: expand
    split at any Unicode line break and read non-UTF-8 with replacement characters, size_object counted
    byte lines, list_items split like expand but refused non-UTF-8."""
    names = ["a\u2028b.jpg", "c\x0cd.jpg", "e\x85f.jpg", "plain.jpg"]  # Unicode separators inside names
    body = "\n".join([*names, "\u3000", "  # not an entry", "\r", "last.jpg"])  # ideographic-space line: blank
    m = tmp_path / "odd.txt"
    m.write_bytes(body.encode())
    want = [str(tmp_path / n) for n in [*names, "last.jpg"]]
    assert [i.source for i in inputs.list_items([str(m)])] == want
    for size in (1, 2, 5, 10):
        shards = inputs.size_object("txt", str(m), "t", root="r", shard_size=size)
        assert _entries(shards) == want
        assert [s.count for s in shards] == [len(inputs.expand(s)) for s in shards]
    # non-UTF-8: refused alike when listed, when sized (planning) and when a range is expanded
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("ok.jpg\ncaf\u00e9.jpg\n".encode("latin-1"))
    with pytest.raises(inputs.InputError, match="not UTF-8 text"):
        inputs.list_items([str(bad)])
    with pytest.raises(inputs.InputError, match="not UTF-8 text"):
        inputs.size_object("txt", str(bad), "t", root="r", shard_size=5)
    with pytest.raises(inputs.InputError, match="not UTF-8 text"):
        inputs.expand(inputs.Shard(kind="txt", uri=str(bad), root="r", start=0, stop=bad.stat().st_size))


def test_parquet_manifest_row_ranges_read_only_their_row_groups(tmp_path):
    m = tmp_path / "m.parquet"
    uris = [f"s3://b/p/{i:03d}.jpg" for i in range(50)]
    pq.write_table(pa.table({"uri": uris, "other": list(range(50))}), m, row_group_size=7)
    shards = inputs.size_object("parquet", str(m), "t", root=str(m), shard_size=12)
    assert [(s.start, s.stop, s.count) for s in shards] == [(0, 12, 12), (12, 24, 12), (24, 36, 12), (36, 48, 12), (48, 50, 2)]
    assert _entries(shards) == uris
    assert {s.key_rule for s in shards} == {inputs.KEY_RULE} and inputs.expand(shards[1])[0].relpath == "b/p/012.jpg"
    # a descriptor of rule 1 (an older OUTPUT's root; a row without the field) keys as rule 1 did: bucket dropped
    old = {k: v for k, v in dataclasses.asdict(shards[1]).items() if k != "key_rule"}
    assert inputs.Shard.from_row(old).key_rule == 1 and inputs.expand(inputs.Shard.from_row(old))[0].relpath == "p/012.jpg"
    # a listing saved with a relpath column keeps those relpaths
    pq.write_table(pa.table({"uri": ["/x/a.jpg", "/y/a.jpg"], "relpath": ["a.jpg", "sub/a.jpg"]}), tmp_path / "l.parquet")
    items = inputs.expand(inputs.size_object("parquet", str(tmp_path / "l.parquet"), "t", root="r", shard_size=9)[0])
    assert [i.relpath for i in items] == ["a.jpg", "sub/a.jpg"]
    pq.write_table(pa.table({"path": ["a"]}), tmp_path / "bad.parquet")
    with pytest.raises(inputs.InputError, match="uri"):
        inputs.size_object("parquet", str(tmp_path / "bad.parquet"), "t", root="r", shard_size=9)


def test_classify_folders_globs_and_folders_of_manifests(tmp_path):
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    (tmp_path / "imgs" / "a.jpg").write_bytes(b"x")
    (tmp_path / "imgs" / "sub" / "b.png").write_bytes(b"x")
    assert inputs.classify(str(tmp_path / "imgs")).kind == "folder"  # listed later (Ray tasks per sub-folder)
    plan = inputs.list_folder(str(tmp_path / "imgs"))
    assert plan.kind == "listing" and [i.relpath for i in plan.items] == ["a.jpg", "sub/b.png"]
    assert plan.items == tuple(inputs.list_items([str(tmp_path / "imgs")]))  # the folder rules of list_items
    (tmp_path / "lists").mkdir()
    for n in (0, 1):
        pq.write_table(pa.table({"uri": [f"/d/{n}.jpg"]}), tmp_path / "lists" / f"part-{n}.parquet")
    (tmp_path / "lists" / "_SUCCESS").write_text("")
    plan = inputs.list_folder(str(tmp_path / "lists"))
    assert plan.kind == "objects" and [(k, os.path.basename(u)) for k, u, _ in plan.objects] == [
        ("parquet", "part-0.parquet"), ("parquet", "part-1.parquet")]
    glob = inputs.classify(str(tmp_path / "lists" / "part-*.parquet"))
    assert [u for _, u, _ in glob.objects] == [u for _, u, _ in plan.objects]
    with pytest.raises(inputs.InputError):
        inputs.classify(str(tmp_path / "nothing-*.tar"))
    with pytest.raises(inputs.InputError, match="not found"):
        inputs.classify(str(tmp_path / "missing"))
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "notes.md").write_text("x")
    with pytest.raises(inputs.InputError, match="no images found"):
        inputs.list_folder(str(tmp_path / "empty"))


def test_listing_chunks_are_content_defined(tmp_path):
    items = [inputs.Item(source=f"/d/{i:05d}.jpg", relpath=f"{i:05d}.jpg", uri=f"/d/{i:05d}.jpg") for i in range(2000)]
    chunks = inputs.chunk_listing(items, root="/d", shard_size=100)
    assert all(1 <= s.count <= 100 for s, _ in chunks) and sum(s.count for s, _ in chunks) == 2000
    assert [i for _, its in chunks for i in its] == items
    assert 20 < len(chunks) < 60  # about twice as many as fixed 100-item chunks: ~50 items on average
    # one file added in the middle changes at most the two chunks around it, not every later chunk
    extra = inputs.Item(source="/d/01000x.jpg", relpath="01000x.jpg", uri="/d/01000x.jpg")
    grown = inputs.chunk_listing(items[:1001] + [extra] + items[1001:], root="/d", shard_size=100)
    changed = {s.id for s, _ in grown} - {s.id for s, _ in chunks}
    assert 1 <= len(changed) <= 2, len(changed)


def test_namespaces_first_run_plain_later_roots_hashed():
    first = ledger.assign_namespaces(["/a/scans", "/a/more.tar"], {}, listed=["/a/scans"])
    # the folder (listed, de-duplicated with the other listed roots) is plain; the tar, whose keys are made in
    # its own task, gets its own namespace even on the first run
    assert first == {"/a/scans": "", "/a/more.tar": paths.namespace_for("/a/more.tar")}
    known = {r: {"root": r, "namespace": ns} for r, ns in first.items()}
    later = ledger.assign_namespaces(["/a/scans", "/b/scans"], known)
    assert later["/a/scans"] == "" and later["/b/scans"].startswith("scans-") and len(later["/b/scans"]) == len("scans-") + 8
    assert ledger.assign_namespaces(["/b/scans"], known) == {"/b/scans": later["/b/scans"]}  # deterministic
    assert paths.namespace_for("/c/scans") != later["/b/scans"]


def test_retryable_reasons():
    assert ledger.is_retryable("read_failed: reset", "transient") and ledger.is_retryable("write_failed: x", "transient")
    assert not ledger.is_retryable("truncated: cut", "transient") and ledger.is_retryable("truncated: cut", "all")
    assert not ledger.is_retryable(None, "all") and not ledger.is_retryable("read_failed: x", "none")


HOLD = """
import sys, time
from raycolor import inputs, storage
from raycolor.outputs import ledger
ledger.acquire_lock(sys.argv[1])
print("HELD", flush=True)
time.sleep(60)
"""


def test_local_lock_refuses_a_second_driver_takes_over_a_dead_ones(tmp_path):
    out = str(tmp_path / "out")
    proc = subprocess.Popen([sys.executable, "-c", HOLD, out], stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert proc.stdout.readline().strip() == b"HELD"
        held = json.loads((tmp_path / "out" / "_lock.json").read_text())
        assert held["pid"] == proc.pid and held["host"]
        with pytest.raises(OutputLocked, match=f"pid {proc.pid}.*--force-unlock"):
            ledger.acquire_lock(out)
    finally:
        proc.kill()
        proc.wait()
    # the holder died without releasing: same host, dead pid -> stale, taken over
    mine = ledger.acquire_lock(out)
    assert json.loads((tmp_path / "out" / "_lock.json").read_text())["token"] == mine["token"]
    with pytest.raises(OutputLocked):
        ledger.acquire_lock(out)  # our own process is alive: a second driver in it is refused too
    other = ledger.acquire_lock(out, force=True)
    ledger.release_lock(out, mine)  # not ours any more: left alone
    assert (tmp_path / "out" / "_lock.json").exists()
    ledger.release_lock(out, other)
    assert not (tmp_path / "out" / "_lock.json").exists()


def test_s3_lock_uses_a_conditional_put(s3_env):
    bucket = s3_env.bucket("lock")
    out = f"s3://{bucket}/out"
    first = ledger.acquire_lock(out)
    body = json.loads(s3_env.fs().cat_file(f"{bucket}/out/_lock.json"))
    assert body["token"] == first["token"]
    # a holder on another host: never stale, refused
    s3_env.fs().pipe_file(f"{bucket}/out/_lock.json", json.dumps({**body, "host": "elsewhere"}).encode())
    with pytest.raises(OutputLocked, match="host elsewhere"):
        ledger.acquire_lock(out)
    # the create itself is exclusive on the server (If-None-Match: *), not exists-then-put
    fs, path = storage.filesystem(paths.lock_uri(out))
    assert ledger._create_exclusive(paths.lock_uri(out), b"{}", store=StorageConfig()) is False
    fs.rm(path)
    assert ledger._create_exclusive(paths.lock_uri(out), b"{}", store=StorageConfig()) is True
    assert ledger._create_exclusive(paths.lock_uri(out), b"{}", store=StorageConfig()) is False


def test_list_group_on_s3_one_level_then_a_subtree(s3_env):
    """A listing task's two modes (no Ray: the function itself): the root's first level with its sub-folders
    handed back, then a sub-folder's whole subtree cut into chunks; together, what list_items lists."""
    fs = s3_env.fs()
    bucket = s3_env.bucket("listing")
    for key in ("in/a.jpg", "in/x/b.JPG", "in/x/y/c.png", "in/z/notes.txt", "in/x/b.png", "other/d.jpg"):
        fs.pipe_file(f"{bucket}/{key}", b"x")
    root, chunks = f"s3://{bucket}/in", f"s3://{bucket}/out/{{id}}.parquet"
    top = inputs.ListGroup(key="", dirs=((root, root),), exclude=(root,))
    (shards, nxt, found, left, not_taken), rest = inputs.list_group(top, chunk_uri=chunks, shard_size=2, fan_out=True)
    assert [(g.key, g.dirs, g.depth) for g in nxt] == [("x", ((root, f"{root}/x"),), 1), ("z", ((root, f"{root}/z"),), 1)]
    assert (shards, found, dict(left)) == ([], {root: 1}, {root: 1})  # one image, fewer than shard_size: left to bin
    assert not_taken == {}  # the first level holds a.jpg only; z/notes.txt is its own group's to count
    assert rest.column("relpath").to_pylist() == ["a.jpg"] and rest.column("root").to_pylist() == [root]
    (shards, nxt, found, left, not_taken), rest = inputs.list_group(nxt[0], chunk_uri=chunks, shard_size=2, fan_out=False)
    assert (nxt, found, dict(left), rest.num_rows, not_taken) == ([], {root: 3}, {}, 0, {})
    assert all(s.uri == chunks.replace("{id}", s.id) and fs.exists(s.uri) for _, s in shards)
    listed = [("s3://" + f"{bucket}/in/a.jpg", "a.jpg")] + [(i.source, i.relpath) for _, s in shards for i in inputs.expand(s)]
    assert sorted(listed) == sorted((i.source, i.relpath) for i in inputs.list_items([root]))
    assert any("__" in rel for _, rel in listed)  # x/b.png renamed after x/b.JPG, as list_items does


def test_list_group_leaves_a_nested_root_to_its_own_listing(tmp_path):
    """The folder rule with an excluded root inside (inputs.images_below via inputs.list_group, no Ray): the
    outer root's listing counts the inner root's images but leaves them to it; together they list what
    list_items lists for the outer folder."""
    outer, inner = tmp_path / "outer", tmp_path / "outer" / "Inner"
    (inner / "deep").mkdir(parents=True)
    for p in (outer / "a.JPG", outer / "notes.txt", inner / "b.png", inner / "deep" / "c.tif", outer / "Inner2.jpg"):
        p.write_bytes(b"x")
    group = inputs.ListGroup(key="", dirs=((str(outer), str(outer)), (str(inner), str(inner))), exclude=(str(outer), str(inner)))
    (shards, nxt, found, left, not_taken), rest = inputs.list_group(group, chunk_uri=str(tmp_path / "c-{id}.parquet"),
                                                                     shard_size=100, fan_out=False)
    assert (shards, nxt, found) == ([], [], {str(outer): 4, str(inner): 2})
    assert not_taken == {str(outer): {".txt": 1}}  # counted once, by the root that holds it
    rows = list(zip(rest.column("root").to_pylist(), rest.column("relpath").to_pylist()))
    assert rows == [(str(outer), "Inner2.jpg"), (str(outer), "a.JPG"), (str(inner), "b.png"), (str(inner), "deep/c.tif")]
    assert sorted(rest.column("source").to_pylist()) == sorted(i.source for i in inputs.list_items([str(outer)]))


def test_packs_of_small_folder_remainders_are_bounded_and_realign():
    """planning.packs (pure; no Ray is started): packs never exceed the size, are at least half full except
    the last, and a folder that gained images changes only the packs near it."""
    from raycolor.pipelines.planning import packs

    rems = [(f"box{i:04d}", f"t{i}", 3 + i % 5) for i in range(400)]
    out = packs(rems, 40)
    sizes = [sum(dict((k, c) for k, _, c in rems)[k] for k, _ in p) for p in out]
    assert all(n <= 40 for n in sizes) and all(n >= 20 for n in sizes[:-1]), sizes
    assert [k for p in out for k, _ in p] == [k for k, _, _ in rems]  # every remainder once, in order
    grown = list(rems)
    grown[100] = (grown[100][0], grown[100][1], grown[100][2] + 6)
    before, after = ({tuple(k for k, _ in p) for p in packs(r, 40)} for r in (rems, grown))
    assert len(before - after) <= 6, (len(before - after), len(out))  # a few packs change, not every later one
    assert packs([("a", "t", 0), ("b", "u", 5)], 40) == [[("b", "u")]]


def test_descriptor_and_item_rows_back_to_objects():
    """Shard.from_row and Item.from_row / from_batch: the one conversion of a Ray Data row (extra keys such as
    a shard's marker ignored; numpy scalars become str/int; relpath, offset and size optional)."""
    import dataclasses

    import numpy as np

    shard = inputs.Shard(kind="txt", uri="/m.txt", root="/m.txt", namespace="ns", start=3, stop=90, count=7, id="m-1", retry="all")
    assert inputs.Shard.from_row({**dataclasses.asdict(shard), "marker": "/m.txt#shard"}) == shard
    batch = {"source": np.array(["/a.jpg", "/t.tar#b.jpg"]), "uri": np.array(["/a.jpg", "/t.tar"]),
             "offset": np.array([0, 512]), "size": np.array([-1, 100]), "error": np.array(["", ""])}
    items = inputs.Item.from_batch(batch, [1])
    assert items == [inputs.Item(source="/t.tar#b.jpg", relpath="", uri="/t.tar", offset=512, size=100)]
    assert type(items[0].source) is str and type(items[0].offset) is int
    row = {"source": "/a.jpg", "uri": "/a.jpg", "relpath": "ns/a.jpg"}
    assert inputs.Item.from_row(row) == inputs.Item(source="/a.jpg", relpath="ns/a.jpg", uri="/a.jpg")
    assert [i.source for i in inputs.Item.from_batch(batch)] == ["/a.jpg", "/t.tar#b.jpg"]
