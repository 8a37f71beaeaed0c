"""Listing folders in tasks: a group of folders listed, chunked into shards and saved as listing chunks by one
task (:func:`list_group`), so that the driver never holds a big listing."""

from __future__ import annotations

import io
import os
import posixpath
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from raycolor import storage
from raycolor.config import DEFAULT_STORE, StorageConfig
from raycolor.inputs.listing import Item, dedupe, images_below, input_error, merge_not_taken
from raycolor.inputs.shards import (
    Shard,
    chunk_listing,
    fs_path,
    listing_items,
    listing_table,
    shard_id,
)

# --------------------------------------------------------------------------------------------
# Listing folders in tasks (colorize and training plan with it; `raycolor list` saves it as a manifest)
# --------------------------------------------------------------------------------------------

# How many levels of sub-folders are fanned out, one Ray task per folder group and level; each group below
# that depth is listed by one recursive (paged) listing in its task. Two levels cover the usual archive
# layouts (collection/year/..., box/folder/...) with hundreds to thousands of tasks.
LIST_FANOUT_DEPTH = 2


@dataclass(frozen=True)
class ListGroup:
    """Folders listed together by one task of :func:`list_group`: the same relative path up to case under
    each input root, so that every pair of images whose output keys could collide is in one group.

    ``dirs``: ((root URI, folder URI), ...) in the order of the inputs; ``files``: ((root URI, items), ...)
    for inputs that are single images (first level only); ``exclude``: the input roots: a root's listing
    skips those strictly inside it, whose images belong to them."""

    key: str
    dirs: tuple
    depth: int = 0
    exclude: tuple = ()
    files: tuple = ()


def _is_under(path: str, folders: Iterable[str]) -> bool:
    return any(path == f or path.startswith(f + "/") for f in folders)


def list_group(group: ListGroup, *, chunk_uri: str, shard_size: int, fan_out: bool, store: StorageConfig = DEFAULT_STORE
               ) -> tuple[tuple[list[tuple[tuple, Shard]], list[ListGroup], dict[str, int], Counter, dict[str, dict[str, int]]],
                          pa.Table]:
    """One listing task: the images directly in the group's folders (``fan_out``: one paged listing of each
    folder's first level; its sub-folders come back as the next level's groups) or below them (not
    ``fan_out``: one recursive listing each), de-duplicated and collision-renamed together
    (:func:`dedupe`, the rule of :func:`list_items`: first root wins), cut per owning root
    into content-defined chunks (:func:`chunk_listing`), each written as a listing table to
    ``chunk_uri`` with ``{id}`` replaced by the shard id, unless an identical one is there. A root with
    fewer than ``shard_size`` images in the group is not cut: those rows come back in a table, for the
    driver to bin with the next groups' (:func:`write_bin`), so that many small folders do not make many
    small shards.

    Returns (([(sort key, listing Shard with its uri)], [next groups], {root: images found under it, before
    de-duplication}, {root: rows in the table}, {root: {suffix: files listed here that are not taken}}), the
    table (root + :data:`LISTING_SCHEMA`)). The not-taken counts are of the files this task listed (a folder's
    first level when fanning out), not of those inside another input root (its own listing counts them);
    a suffix-keyed dict per root (:func:`merge_not_taken`), never a row per file. Run as a Ray task with two
    returns: the driver fetches the first, never the images."""
    given = dict(group.files)
    tagged: list[tuple[str, Item]] = []  # (root, item) in the order of the roots
    children: dict[str, list] = {}
    found: dict[str, int] = {}
    not_taken: dict[str, dict[str, int]] = {}
    for root, folder in group.dirs:
        found.setdefault(root, 0)
        if folder in given:
            found[root] += len(given[folder])
            tagged += [(root, i) for i in given[folder]]
            continue
        fs, path = storage.filesystem(folder, store=store)
        here = fs_path(folder, store=store)
        prefix = fs_path(root, store=store) + "/"
        excluded = [x for x in (fs_path(e, store=store) for e in group.exclude) if x.startswith(prefix)]
        try:
            if fan_out:
                entries = sorted(storage.retrying(lambda fs=fs, path=path: fs.ls(path, detail=True), store.retries), key=lambda e: e["name"])
                files = [e["name"] for e in entries if e.get("type") != "directory"]
                for e in entries:
                    sub = (e["name"].replace(os.sep, "/") if isinstance(fs, LocalFileSystem) else e["name"]).rstrip("/")
                    if e.get("type") != "directory" or sub == here:
                        continue
                    if _is_under(sub, excluded):
                        found[root] += 1  # its images belong to another input, which lists them
                        continue
                    key = storage.sanitize_relpath(sub[len(prefix):]).lower()
                    children.setdefault(key, []).append((root, storage.to_uri(fs, e["name"], root)))
            else:
                files = storage.retrying(lambda fs=fs, path=path: fs.find(path, withdirs=False), store.retries)
        except Exception as exc:
            raise input_error("list", folder, exc) from exc
        mine, n, others = images_below(fs, prefix, root, files, exclude=excluded)
        found[root] += n
        if others:
            not_taken[root] = merge_not_taken(not_taken.get(root, {}), others)
        tagged += [(root, i) for i in mine]
    owner: dict[str, str] = {}
    for root, item in tagged:
        owner.setdefault(item.source, root)
    per_root: dict[str, list] = {}
    for item in dedupe(i for _, i in tagged):
        per_root.setdefault(owner[item.source], []).append(item)
    order = {root: n for n, (root, _) in enumerate(group.dirs)}
    shards, small = [], []
    for root, mine in per_root.items():
        if len(mine) < shard_size:  # binned with its neighbours by write_bin, not a shard of its own
            small += [(root, i) for i in mine]
            continue
        for k, (shard, chunk) in enumerate(chunk_listing(mine, root=root, shard_size=shard_size)):
            shards.append(((group.key, order[root], k), _write_chunk(shard, chunk, chunk_uri, store=store)))
    nxt = [ListGroup(key=k, dirs=tuple(d), depth=group.depth + 1, exclude=group.exclude) for k, d in sorted(children.items())]
    rest = listing_table(i for _, i in small)
    rest = rest.add_column(0, "root", pa.array([r for r, _ in small], pa.string()))
    return (shards, nxt, found, Counter(r for r, _ in small), not_taken), rest


def _write_chunk(shard: Shard, chunk: Sequence[Item], chunk_uri: str, *, store: StorageConfig) -> Shard:
    uri = chunk_uri.replace("{id}", shard.id)
    buf = io.BytesIO()
    pq.write_table(listing_table(chunk), buf)
    _write_if_changed(uri, buf.getvalue(), store=store)
    return shard.with_(uri=uri)


def write_bin(root: str, chunk_uri: str, *tables: pa.Table, store: StorageConfig = DEFAULT_STORE) -> Shard:
    """The small remainders of consecutive folder groups (what :func:`list_group` left unwritten: fewer than
    ``shard_size`` images of ``root``), as one listing chunk of ``root``; returns its shard."""
    t = pa.concat_tables([t.filter(pc.equal(t.column("root"), root)) for t in tables])
    items = listing_items(t)
    shard = Shard(kind="listing", uri="", root=root, count=len(items),
                  id=shard_id("listing", root, root, 0, len(items), storage.digest_parts(*(i.source for i in items), n=40)))
    return _write_chunk(shard, items, chunk_uri, store=store)


def _write_if_changed(uri: str, data: bytes, *, store: StorageConfig) -> None:
    fs, path = storage.filesystem(uri, store=store)
    try:
        if storage.retrying(lambda: fs.cat_file(path), store.retries) == data:
            return
    except FileNotFoundError:
        pass
    storage.write_bytes_atomic(uri, data, store=store)


def remove_stale_parts(output: str, keep: Iterable[str], *, store: StorageConfig = DEFAULT_STORE) -> None:
    """Remove ``part-*.parquet`` under OUTPUT that this listing did not write (an earlier listing's)."""
    fs, path = storage.filesystem(output, store=store)
    keep = set(keep)
    stale = [storage.to_uri(fs, p, output) for p in storage.retrying(lambda: fs.ls(path, detail=False), store.retries)
             if posixpath.basename(p).startswith("part-") and p.endswith(".parquet") and posixpath.basename(p) not in keep]
    for uri in stale:
        storage.remove(uri, store=store)
