"""The output-key rules without Ray (raycolor.inputs, raycolor.outputs.ledger): one output per input across the
shards and roots of a run. Rule 2 keys a tar's members under the tar's path below its root's base and a remote
manifest entry under its bucket; a first run shares the plain namespace only among roots whose keys are listed
together; an OUTPUT's roots keep the rule their record names (none: rule 1). Colorizing it: test_output_keys_ray.py."""

from __future__ import annotations


import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support import write_tar

from raycolor import inputs
from raycolor.inputs import InputError
from raycolor import paths
from raycolor.outputs import ledger


def _keys(uri: str, **kw) -> list[tuple[str, str]]:
    """(source, relpath) of every item of the input ``uri``, planned and expanded as colorize does (no Ray)."""
    plan = inputs.classify(uri)
    if plan.kind == "folder":
        plan = inputs.list_folder(plan.root)
    shards = [s for kind, u, tag in plan.objects for s in inputs.size_object(kind, u, tag, root=plan.root, shard_size=100, **kw)]
    return [(i.source, i.relpath) for s in shards for i in inputs.expand(s)]


def test_tars_of_one_name_in_a_glob_or_folder_get_their_own_keys(tmp_path):
    for who in ("alice", "bob"):
        write_tar(tmp_path / "in" / who / "batch.tar", {"x.png": who.encode(), "d/y.png": b"y"})
    glob = _keys(str(tmp_path / "in" / "*" / "batch.tar"))
    a, b = (str(tmp_path / "in" / w / "batch.tar") for w in ("alice", "bob"))
    assert glob == [(f"{a}#x.png", "alice/batch.tar/x.png"), (f"{a}#d/y.png", "alice/batch.tar/d/y.png"),
                    (f"{b}#x.png", "bob/batch.tar/x.png"), (f"{b}#d/y.png", "bob/batch.tar/d/y.png")]
    # a folder of tars: below the folder; a glob with the wildcard deeper: below its last plain folder
    assert [k for _, k in _keys(str(tmp_path / "in"))] == [k for _, k in glob]
    assert [k for _, k in _keys(str(tmp_path / "in" / "a*" / "*.tar"))] == ["alice/batch.tar/x.png", "alice/batch.tar/d/y.png"]
    # a tar given directly: its basename, as before
    assert [k for _, k in _keys(a)] == ["batch.tar/x.png", "batch.tar/d/y.png"]
    assert [i.relpath for i in inputs.list_items([a, b])][:2] == ["batch.tar/x.png", "batch.tar/d/y.png"]
    # rule 1 (an OUTPUT written before the rule changed) still keys by the basename alone
    assert [k for _, k in _keys(str(tmp_path / "in" / "*" / "batch.tar"), key_rule=1)] == ["batch.tar/x.png", "batch.tar/d/y.png"] * 2


def test_tar_prefix_and_below_base_on_object_store_uris():
    assert inputs.below_base("s3://b/in/alice/batch.tar", "s3://b/in/*/batch.tar") == "alice/batch.tar"
    assert inputs.below_base("s3://b/in/x/batch.tar", "s3://b/in") == "x/batch.tar"
    assert inputs.below_base("s3://b/in/batch.tar", "s3://b/in/batch.tar") is None
    assert inputs.below_base("s3://b2/x.tar", "s3://b*/x.tar") == "b2/x.tar"  # a wildcard in the bucket
    assert inputs.tar_prefix("s3://b/in/alice/batch.tar", "s3://b/in/*/batch.tar") == "alice/batch.tar"
    assert inputs.tar_prefix("s3://b/in/alice/batch.tar", "s3://b/in/*/batch.tar", 1) == "batch.tar"
    assert inputs.tar_prefix("s3://b/in/batch.tar", "s3://b/in/batch.tar") == "batch.tar"
    assert inputs.tar_prefix("s3://b/in/batch.tar", None) == "batch.tar"
    with pytest.raises(ValueError, match="newer raycolor"):
        inputs.tar_prefix("s3://b/in/alice/batch.tar", "s3://b/in/*/batch.tar", 3)


def test_manifest_entries_of_two_buckets_get_two_keys(tmp_path):
    entries = ["s3://bucket-a/p/x.jpg", "s3://bucket-b/p/x.jpg", "s3://key:secret@bucket-c/p/x.jpg",
               "https://host.example/p/x.jpg?X-Amz-Credential=AKIA/x&X-Amz-Signature=secret", "/data/p/x.jpg"]
    txt = tmp_path / "m.txt"
    txt.write_text("\n".join(entries) + "\n")
    pqt = tmp_path / "m.parquet"
    pq.write_table(pa.table({"uri": entries}), pqt)
    want = ["bucket-a/p/x.jpg", "bucket-b/p/x.jpg", "bucket-c/p/x.jpg", "host.example/p/x.jpg", "data/p/x.jpg"]
    for m in (txt, pqt):
        # one entry per shard: the keys differ without any renaming, which only ever happened within a shard
        plan = inputs.classify(str(m))
        [(kind, uri, tag)] = plan.objects
        shards = inputs.size_object(kind, uri, tag, root=plan.root, shard_size=1)
        assert len(shards) == 5
        keys = [i.relpath for s in shards for i in inputs.expand(s)]
        assert keys == want, m
        assert not any("secret" in k or "key" in k.split("/")[0] for k in keys)  # never the userinfo
        assert [i.relpath for i in inputs.list_items([str(m)])] == want
        # rule 1 (frozen, so older OUTPUTs keep their names): the bucket was dropped, the three s3 entries shared
        # p/x.jpg, and a presigned URL's query was kept in the name
        old = [i.relpath for s in shards for i in inputs.expand(s.with_(key_rule=1))]
        assert old[:3] == ["p/x.jpg"] * 3 and old[3].startswith("p/x.jpg?X-Amz-Credential") and old[4] == "data/p/x.jpg"


def test_relative_entries_of_manifests_in_a_glob_are_keyed_below_the_glob(tmp_path):
    for who in ("alice", "bob"):
        (tmp_path / "lists" / who).mkdir(parents=True)
        (tmp_path / "lists" / who / "list.txt").write_text("x.jpg\nsub/y.jpg\n")
    keys = _keys(str(tmp_path / "lists" / "*" / "list.txt"))
    assert keys == [(str(tmp_path / "lists" / w / n), f"{w}/{n}") for w in ("alice", "bob") for n in ("x.jpg", "sub/y.jpg")]
    # a manifest given directly keeps its entries' text
    assert [k for _, k in _keys(str(tmp_path / "lists" / "bob" / "list.txt"))] == ["x.jpg", "sub/y.jpg"]


def test_first_run_namespaces_share_plain_keys_only_where_they_cannot_collide():
    ns = ledger.assign_namespaces
    # two tars (or globs, or manifests): the first is plain, the second has its own namespace
    two = ns(["/a/batch.tar", "/b/batch.tar"], {})
    assert two == {"/a/batch.tar": "", "/b/batch.tar": paths.namespace_for("/b/batch.tar")}
    assert two["/b/batch.tar"].startswith("batch.tar-")
    # folders and images, listed and de-duplicated together, share the plain namespace; objects do not
    mixed = ns(["/t/one.tar", "/f/scans", "/f/x.jpg", "/m/list.txt"], {}, listed=["/f/scans", "/f/x.jpg"])
    assert mixed == {"/t/one.tar": paths.namespace_for("/t/one.tar"), "/f/scans": "", "/f/x.jpg": "",
                     "/m/list.txt": paths.namespace_for("/m/list.txt")}
    assert ns(["/a/batch.tar"], {}) == {"/a/batch.tar": ""}  # a single input keeps plain names
    assert ns(["/s/*/batch.tar"], {}) == {"/s/*/batch.tar": ""}
    # a later run: known roots keep theirs (a rule-1 OUTPUT's tars sharing "" too), new roots are hashed
    known = {"/a/batch.tar": {"root": "/a/batch.tar", "namespace": ""}, "/b/batch.tar": {"root": "/b/batch.tar", "namespace": ""}}
    later = ns(["/a/batch.tar", "/b/batch.tar", "/c/scans"], known, listed=["/c/scans"])
    assert later == {"/a/batch.tar": "", "/b/batch.tar": "", "/c/scans": paths.namespace_for("/c/scans")}


def test_key_rules_come_from_the_roots_record():
    known = {"/old": {"root": "/old", "namespace": ""},  # written before rules had numbers
             "/two": {"root": "/two", "namespace": "", "key_rule": 2}}
    assert ledger.key_rules(["/old", "/two", "/new"], known) == {"/old": 1, "/two": 2, "/new": inputs.KEY_RULE}
    assert inputs.KEY_RULE == 2 and ledger.key_rule_of({}) == 1
    with pytest.raises(ValueError, match="newer raycolor"):
        inputs.list_items(["/nowhere.jpg"], key_rule=9)
    with pytest.raises(InputError):
        inputs.list_items(["/nowhere.jpg"])
