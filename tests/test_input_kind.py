"""One input classifier (issue 38, 4): list_items and the planners' classify ask listing.input_kind, so they
agree on every kind, and what is not an input is an error in both, never read as a .txt manifest."""

from __future__ import annotations

import pytest

from raycolor.inputs import listing, list_items, shards
from raycolor.storage import InputError


@pytest.fixture
def inputs_dir(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a.jpg").write_bytes(b"\xff\xd8 not decoded here")
    (tmp_path / "one.JPG").write_bytes(b"\xff\xd8 not decoded here")
    (tmp_path / "list.txt").write_text(str(tmp_path / "one.JPG") + "\n")
    (tmp_path / "notes.doc").write_bytes(b"not an input")
    return tmp_path


@pytest.mark.parametrize("name, kind, plan", [
    ("folder", "folder", "folder"), ("one.JPG", "image", "listing"), ("list.txt", "txt", "objects"),
])
def test_both_planners_take_each_kind_the_same_way(inputs_dir, name, kind, plan):
    uri = str(inputs_dir / name)
    info = {"type": "directory"} if kind == "folder" else {"type": "file"}
    assert listing.input_kind(uri, info, uri) == kind
    root = shards.classify(uri)
    assert root.kind == plan
    if plan == "listing":  # an image: the same item whichever way it was listed
        assert list(root.items) == list_items([uri])


def test_what_is_not_an_input_is_refused_by_both(inputs_dir):
    uri = str(inputs_dir / "notes.doc")
    for plan in (list_items, shards.classify):
        with pytest.raises(InputError, match=r"not an image, \.tar archive or \.txt/\.parquet manifest.*notes\.doc"):
            plan([uri] if plan is list_items else uri)


def test_an_unknown_object_kind_is_never_sized_as_a_txt_manifest(inputs_dir):
    uri = str(inputs_dir / "notes.doc")
    with pytest.raises(ValueError, match="cannot size a 'doc' object"):
        shards.size_object("doc", uri, "t", root=str(inputs_dir), shard_size=10)
    assert [s.kind for s in shards.size_object("txt", str(inputs_dir / "list.txt"), "t", root=str(inputs_dir),
                                               shard_size=10)] == ["txt"]
