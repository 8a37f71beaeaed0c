"""Shards, the unit of work, resume and the ledger: what a URI is (:func:`classify`), how an object becomes shards
(:func:`size_object`, :func:`chunk_listing`) and how a shard becomes items again (:func:`expand`)."""

from __future__ import annotations

import io
import os
import posixpath
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from raycolor import storage
from raycolor.config import DEFAULT_STORE, StorageConfig
from raycolor.core.suffixes import (
    object_kind,
)
from raycolor.inputs.listing import (
    KEY_RULE,
    LISTING_SCHEMA,
    Item,
    dedupe,
    images_below,
    image_item,
    input_error,
    input_kind,
    list_tar,
    manifest_items,
    merge_not_taken,
    no_images,
    not_taken_key,
    tar_members,
    txt_entries,
)
from raycolor.storage import InputError

# --------------------------------------------------------------------------------------------
# Shards
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    kind: str  # "tar" | "parquet" | "txt" | "listing"
    uri: str  # the tar, the manifest file, or the listing chunk file
    root: str  # the input as the user gave it (absolute): the owner of the shard's outputs
    namespace: str = ""  # output keys are images/<namespace>/<key> ("" = images/<key>)
    start: int = 0  # parquet/listing: first row; txt: first byte
    stop: int = -1  # parquet/listing: end row (exclusive); txt: end byte (exclusive)
    count: int = 0  # inputs in the shard as planned (before de-duplication within the shard)
    id: str = ""
    retry: str = "none"  # "none" | "transient" | "all": redo only the shard's error rows of that kind
    # the output-key rule of the root's outputs (listing.KEY_RULE; planning sets it from the root's record):
    # expansion keys the items by it. 1 by default: a descriptor without it was planned before rules had numbers
    key_rule: int = 1

    def with_(self, **kw) -> Shard:
        return Shard(**{**asdict(self), **kw})

    @classmethod
    def from_row(cls, row: Mapping) -> Shard:
        """The shard of a descriptor row (a dict holding the shard's fields, e.g. a Ray Data row with a
        `marker` too; other keys ignored; a field it lacks, such as `key_rule` in an older one, takes its
        default)."""
        return cls(**{k: row[k] for k in cls.__dataclass_fields__ if k in row})


def shard_id(kind: str, root: str, uri: str, start: int, stop: int, tag: str) -> str:
    """``<readable stem>-<hash>``; tag pins the content (object size/etag, or the listing's sources)."""
    stem = posixpath.basename(uri.rstrip("/")).split(".", 1)[0] or kind
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:24]
    return f"{stem}-{storage.digest_parts(kind, root, uri, start, stop, tag)}"


# --------------------------------------------------------------------------------------------
# Planning (driver side; the expensive scans are functions a Ray task can run)
# --------------------------------------------------------------------------------------------


def _is_glob(uri: str) -> bool:
    return any(c in uri for c in "*?[")


def _tag(info: dict) -> str:
    return str(info.get("ETag") or info.get("etag") or "") + f":{info.get('size')}:{info.get('mtime') or info.get('LastModified') or ''}"


@dataclass(frozen=True)
class RootPlan:
    """What one input is: kind "folder" (not listed yet: see :func:`list_group` / :func:`list_folder`),
    "listing" (an image, or a folder once listed: its items), or "objects" (manifest / tar objects to be
    sized by :func:`size_object`, possibly in Ray tasks)."""

    root: str
    kind: str  # "folder" | "listing" | "objects"
    items: tuple = ()  # listing: Item
    objects: tuple = ()  # objects: (kind, uri, tag) with kind "tar" | "parquet" | "txt"
    # the files the root holds that are not taken, as ((suffix, files), ...) largest first (listing.merge_not_taken);
    # a tar's members are counted when it is sized (size_and_count), a "folder" when it is listed (list_group)
    not_taken: tuple = ()


def _pairs(counts) -> tuple:
    return tuple(merge_not_taken(counts).items())


def classify(uri: str, *, store: StorageConfig = DEFAULT_STORE) -> RootPlan:
    """Folder, image, tar, manifest, folder/glob of manifests or tars -> a RootPlan. Raises InputError."""
    if not isinstance(uri, str) or not uri.strip():
        raise InputError(f"empty input URI: {uri!r}")
    uri = uri.strip()
    fs, path = storage.filesystem(uri, store=store)
    root = storage.to_uri(fs, path, uri)
    if _is_glob(uri):
        matched = fs.glob(path, detail=True)
        found = sorted(matched)
        objs, others = [], []
        for p in found:
            kind = object_kind(p)
            if kind:
                objs.append((kind, storage.to_uri(fs, p, uri), _tag(storage.retrying(lambda p=p: fs.info(p), store.retries))))
            else:
                others.append(p)
        if not objs:
            raise InputError(f"no .tar/.parquet/.txt objects match {storage.redact(uri)}")
        # what the glob matched that is not an object: folders are not entered, files are not taken
        files = [p for p in others if (matched[p] or {}).get("type") != "directory"]
        return RootPlan(root=root, kind="objects", objects=tuple(objs), not_taken=_pairs(Counter(map(not_taken_key, files))))
    try:
        info = storage.retrying(lambda: fs.info(path), store.retries)
    except Exception as exc:
        raise input_error("read", uri, exc) from exc
    kind = input_kind(path, info, uri)
    if kind == "folder":
        return RootPlan(root=root, kind="folder")  # listed in tasks (list_group), or by list_folder
    if kind == "image":
        return RootPlan(root=root, kind="listing", items=(image_item(fs, path, uri),))
    return RootPlan(root=root, kind="objects", objects=((kind, root, _tag(info)),))


def find_files(uri: str, *, store: StorageConfig = DEFAULT_STORE) -> list[str]:
    """Every file below ``uri`` (recursive, paged by the store's client), as filesystem paths."""
    fs, path = storage.filesystem(uri, store=store)
    try:
        return list(storage.retrying(lambda: fs.find(path, withdirs=False), store.retries))
    except Exception as exc:
        raise input_error("list", uri, exc) from exc


def fs_path(uri: str, *, store: StorageConfig = DEFAULT_STORE) -> str:
    fs, path = storage.filesystem(uri, store=store)
    return (path.replace(os.sep, "/") if isinstance(fs, LocalFileSystem) else path).rstrip("/")


def list_folder(root: str, *, store: StorageConfig = DEFAULT_STORE) -> RootPlan:
    """A whole folder, listed here in one recursive listing -> its images, or, for a folder holding no
    image but ``.parquet`` / ``.txt`` / ``.tar`` objects (e.g. written by ``raycolor list``), those objects.
    The pipelines list folders of images in tasks (:func:`list_group`); this is for the second case."""
    fs, path = storage.filesystem(root, store=store)
    paths = sorted(find_files(root, store=store))
    items, _, not_taken = images_below(fs, path, root, paths)
    if items:
        return RootPlan(root=root, kind="listing", items=tuple(items), not_taken=_pairs(not_taken))
    objs, others = [], Counter()
    for p in paths:
        kind = object_kind(p)
        if kind and not posixpath.basename(p).startswith((".", "_")):
            objs.append((kind, storage.to_uri(fs, p, root), _tag(storage.retrying(lambda p=p: fs.info(p), store.retries))))
        else:
            others[not_taken_key(p)] += 1
    if objs:
        return RootPlan(root=root, kind="objects", objects=tuple(objs), not_taken=_pairs(others))
    raise no_images(root, not_taken)


def size_object(kind: str, uri: str, tag: str, *, root: str, shard_size: int, key_rule: int = KEY_RULE,
                store: StorageConfig = DEFAULT_STORE) -> list[Shard]:
    """The shards of one manifest or tar object (reads a tar's headers, a Parquet footer, or a .txt once),
    to be keyed by the rule ``key_rule``."""
    return size_and_count(kind, uri, tag, root=root, shard_size=shard_size, key_rule=key_rule, store=store)[0]


def size_and_count(kind: str, uri: str, tag: str, *, root: str, shard_size: int, key_rule: int = KEY_RULE,
                   store: StorageConfig = DEFAULT_STORE) -> tuple[list[Shard], dict[str, int]]:
    """:func:`size_object`, and what the object holds that is not taken: a tar's members that are not images,
    by suffix (from the same header walk; {} for a manifest, whose entries are taken as given)."""
    shards, not_taken = _size_object(kind, uri, tag, root=root, shard_size=shard_size, store=store)
    return [s.with_(key_rule=key_rule) for s in shards], not_taken


def _size_object(kind: str, uri: str, tag: str, *, root: str, shard_size: int, store: StorageConfig
                 ) -> tuple[list[Shard], dict[str, int]]:
    fs, path = storage.filesystem(uri, store=store)
    if kind == "tar":
        members, not_taken = tar_members(uri, store=store)
        return [Shard(kind="tar", uri=uri, root=root, count=len(members), id=shard_id("tar", root, uri, 0, -1, tag))], not_taken
    if kind == "parquet":
        try:
            with fs.open(path, "rb") as f:
                pf = pq.ParquetFile(f)
                rows = pf.metadata.num_rows
                if "uri" not in pf.schema_arrow.names:
                    raise InputError(f"bad manifest {storage.redact(uri)}: needs a parquet file with a 'uri' column")
        except InputError:
            raise
        except Exception as exc:
            raise input_error("read", uri, exc) from exc
        if rows == 0:
            raise InputError(f"empty manifest (no URIs): {storage.redact(uri)}")
        return [
            Shard(kind="parquet", uri=uri, root=root, start=a, stop=min(rows, a + shard_size), count=min(rows, a + shard_size) - a,
                  id=shard_id("parquet", root, uri, a, min(rows, a + shard_size), tag))
            for a in range(0, rows, shard_size)
        ], {}
    if kind != "txt":  # a kind input_kind never gives: a planner's bug, not a manifest to read as lines
        raise ValueError(f"cannot size a {kind!r} object: {storage.redact(uri)}")
    # txt: one pass over the lines, cutting every shard_size entries at a line start
    raw = storage.retrying(lambda: fs.cat_file(path), store.retries)
    shards, n = [], 0
    start = 3 if raw.startswith(b"\xef\xbb\xbf") else 0  # the first range starts after a BOM
    for pos, _ in txt_entries(raw, uri):
        if n == shard_size:
            shards.append((start, pos, n))
            start, n = pos, 0
        n += 1
    if n:
        shards.append((start, len(raw), n))
    if not shards:
        raise InputError(f"empty manifest (no URIs): {storage.redact(uri)}")
    return [
        Shard(kind="txt", uri=uri, root=root, start=a, stop=b, count=c, id=shard_id("txt", root, uri, a, b, tag))
        for a, b, c in shards
    ], {}


def chunk_listing(items: Sequence[Item], *, root: str, shard_size: int) -> list[tuple[Shard, list[Item]]]:
    """Content-defined chunks (see the module docstring) of a root's listing, each with its items."""
    modulus = max(1, shard_size // 2)
    out, cur = [], []

    def close():
        ident = shard_id("listing", root, root, 0, len(cur), storage.digest_parts(*(i.source for i in cur), n=40))
        out.append((Shard(kind="listing", uri="", root=root, count=len(cur), id=ident), list(cur)))
        cur.clear()

    for item in items:
        cur.append(item)
        if len(cur) >= shard_size or int(storage.digest(item.source, 8), 16) % modulus == 0:
            close()
    if cur:
        close()
    return out


def listing_table(items: Iterable[Item]) -> pa.Table:
    items = list(items)
    return pa.table(
        {"uri": [i.uri for i in items], "relpath": [i.relpath for i in items], "source": [i.source for i in items]},
        schema=LISTING_SCHEMA,
    )


# --------------------------------------------------------------------------------------------
# Expansion (inside shard tasks)
# --------------------------------------------------------------------------------------------


def _parquet_rows(fs, path: str, start: int, stop: int, columns: list[str]) -> pa.Table:
    """Rows [start, stop) of a Parquet file, reading only the row groups that hold them."""
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        groups, first, offset = [], None, 0
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if offset + n > start and offset < stop:
                groups.append(g)
                first = offset if first is None else first
            offset += n
        cols = [c for c in columns if c in pf.schema_arrow.names]
        table = pf.read_row_groups(groups, columns=cols) if groups else pf.schema_arrow.empty_table().select(cols)
    return table.slice(start - (first or 0), stop - start)


def listing_items(t: pa.Table) -> list[Item]:
    return [Item(source=s, relpath=r, uri=u) for u, r, s in zip(*(t.column(c).to_pylist() for c in ("uri", "relpath", "source")))]


def expand(shard: Shard, *, store: StorageConfig = DEFAULT_STORE) -> list[Item]:
    """The shard's items, keyed by its root's rule (``shard.key_rule``), de-duplicated and collision-renamed
    within the shard (first wins)."""
    if shard.kind == "tar":
        return dedupe(list_tar(shard.uri, root=shard.root, key_rule=shard.key_rule, store=store))
    fs, path = storage.filesystem(shard.uri, store=store)
    if shard.kind == "listing":
        return listing_items(storage.retrying(lambda: pq.read_table(io.BytesIO(fs.cat_file(path))), store.retries))
    if shard.kind == "parquet":
        t = storage.retrying(lambda: _parquet_rows(fs, path, shard.start, shard.stop, ["uri", "relpath"]), store.retries)
        uris = [u for u in t.column("uri").to_pylist()]
        items = manifest_items(shard.uri, [u for u in uris if u], root=shard.root, key_rule=shard.key_rule, store=store)
        if "relpath" in t.column_names:  # a listing saved by `raycolor list` keeps the folder's relpaths
            rel = [r for u, r in zip(uris, t.column("relpath").to_pylist()) if u and u.strip()]
            items = [Item(source=i.source, relpath=storage.sanitize_relpath(r) if r else i.relpath, uri=i.uri) for i, r in zip(items, rel)]
        return dedupe(items)
    if shard.kind == "txt":
        raw = storage.retrying(lambda: fs.cat_file(path, start=shard.start, end=shard.stop), store.retries)
        entries = [e for _, e in txt_entries(raw, shard.uri, offset=shard.start)]
        return dedupe(manifest_items(shard.uri, entries, root=shard.root, key_rule=shard.key_rule, store=store))
    raise ValueError(f"unknown shard kind {shard.kind!r}")
