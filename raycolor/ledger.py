"""Shards and the resume ledger of a colorize OUTPUT: pure fsspec/pyarrow, no Ray (a test asserts it).

A **shard** is the unit of work, of resume and of the ledger:

* ``tar``: one input ``.tar`` (its members are listed from the headers inside the shard's task);
* ``parquet``: rows ``[start, stop)`` of one Parquet manifest (row counts come from the file footer);
* ``txt``: the lines starting in bytes ``[start, stop)`` of one ``.txt`` manifest (chunks found by one
  scan of the file, in a task);
* ``listing``: a chunk of a folder / prefix listing, saved as ``OUTPUT/_listing/<shard id>.parquet``
  (``uri``, ``relpath``, ``source``) by the task that listed it (:func:`list_group`), so that the driver
  never holds the listing and the shard's task reads only its chunk (training keeps them in its run's
  OUTPUT the same way).

The driver holds only :class:`Shard` descriptors (a few hundred bytes each, at most
``ceil(images / shard_size)`` of them); shard tasks expand them into items.

OUTPUT layout::

    OUTPUT/images/[<namespace>/]<key>            the colorized images
    OUTPUT/manifest/<shard id>.parquet           one part per shard: one row per input of the shard
    OUTPUT/_stats/<shard id>.json                counts of the shard; written after its part: "shard done"
    OUTPUT/_roots/<root id>.json                 one per input root: its namespace and its current shards
    OUTPUT/_listing/<shard id>.parquet           listing chunks (folder inputs)
    OUTPUT/_spool/<shard id>/<hash>.parquet      rows of finished batches until their shard is merged
    OUTPUT/_lock.json                            held while a driver runs
    OUTPUT/_SUCCESS.json                         written last

Shard ids are deterministic: a hash of the root, the shard's kind and object, its range and, for listing
chunks, the sources it holds. The same command over unchanged inputs plans the same shards, so a re-run
skips every shard whose stats record exists and redoes the others (their images are overwritten with
identical bytes, their part replaced). When an input changes (a folder gained files, a manifest was
rewritten), the shards of that root that are no longer planned are *superseded*: their stats, part and
listing chunk are removed before any new work, so the OUTPUT never holds two rows for one input.

Listing chunks are content-defined: a chunk ends after a source whose hash is 0 modulo ``shard_size // 2``
(or when it reaches ``shard_size``), so a file added to a big folder changes one chunk, not every chunk
after it.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import socket
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from raycolor import sources
from raycolor.suffixes import object_kind

# error reasons that a later run may cure by itself (object-store or network trouble); everything else
# (truncated, not_an_image, too_large, unsupported) is a property of the input
TRANSIENT_REASONS = frozenset({"read_failed", "write_failed", "timeout"})

# one row per input across an OUTPUT (docs/colorizing.md, "Manifest schema")
MANIFEST_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("output", pa.string()),
        ("status", pa.string()),  # "ok" | "error"
        ("error", pa.string()),  # "<reason>: <detail>" or null
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("model_id", pa.string()),
        ("format", pa.string()),
        ("finished_at", pa.float64()),
        ("bit_depth", pa.int64()),  # bits per sample of the written image (8 or 16); null for error rows
        # JSON: metadata groups kept / added / changed / dropped (with the reason), and notes such as "first of 3
        # pages"; null for error rows. Parts written before these two columns read them back as null.
        ("metadata", pa.string()),
    ]
)
IMAGE_COLUMN = pa.field("image", pa.binary())

LISTING_SCHEMA = pa.schema([("uri", pa.string()), ("relpath", pa.string()), ("source", pa.string())])


class OutputLocked(ValueError):
    """Another driver holds OUTPUT/_lock.json (exit code 2 in the CLI)."""


class OwnershipError(ValueError):
    """OUTPUT's ledger cannot be reconciled with the inputs (exit code 2 in the CLI)."""


def _h(*parts: object, n: int = 16) -> str:
    """The digest of several parts (ids of shards, roots, namespaces, the lock token): joined by \\x1f."""
    return sources.digest("\x1f".join(str(p) for p in parts), n)


def reason_of(error: str | None) -> str:
    return (error or "").split(":", 1)[0]


def is_retryable(error: str | None, mode: str) -> bool:
    """Whether an error row is re-attempted by ``--retry-errors`` (mode "transient") or "all"."""
    if not error or mode == "none":
        return False
    return mode == "all" or reason_of(error) in TRANSIENT_REASONS


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

    def with_(self, **kw) -> Shard:
        return Shard(**{**asdict(self), **kw})

    @classmethod
    def from_row(cls, row: Mapping) -> Shard:
        """The shard of a descriptor row (a dict holding at least the shard's fields, e.g. a Ray Data row
        with a `marker` too; other keys ignored)."""
        return cls(**{k: row[k] for k in cls.__dataclass_fields__})


def shard_id(kind: str, root: str, uri: str, start: int, stop: int, tag: str) -> str:
    """``<readable stem>-<hash>``; tag pins the content (object size/etag, or the listing's sources)."""
    stem = posixpath.basename(uri.rstrip("/")).split(".", 1)[0] or kind
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:24]
    return f"{stem}-{_h(kind, root, uri, start, stop, tag)}"


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
    items: tuple = ()  # listing: sources.Item
    objects: tuple = ()  # objects: (kind, uri, tag) with kind "tar" | "parquet" | "txt"


def classify(uri: str, *, s3_endpoint: str | None = None) -> RootPlan:
    """Folder, image, tar, manifest, folder/glob of manifests or tars -> a RootPlan. Raises InputError."""
    if not isinstance(uri, str) or not uri.strip():
        raise sources.InputError(f"empty input URI: {uri!r}")
    uri = uri.strip()
    fs, path = sources.filesystem(uri, s3_endpoint=s3_endpoint)
    root = sources.to_uri(fs, path, uri)
    if _is_glob(uri):
        found = sorted(fs.glob(path))
        objs = []
        for p in found:
            kind = object_kind(p)
            if kind:
                objs.append((kind, sources.to_uri(fs, p, uri), _tag(fs.info(p))))
        if not objs:
            raise sources.InputError(f"no .tar/.parquet/.txt objects match {sources.redact(uri)}")
        return RootPlan(root=root, kind="objects", objects=tuple(objs))
    try:
        info = sources.retrying(lambda: fs.info(path), 3)
    except Exception as exc:
        raise sources.input_error("read", uri, exc) from exc
    if info.get("type") == "directory":
        return RootPlan(root=root, kind="folder")  # listed in tasks (list_group), or by list_folder
    kind = object_kind(path)
    if kind:
        return RootPlan(root=root, kind="objects", objects=((kind, root, _tag(info)),))
    return RootPlan(root=root, kind="listing", items=tuple(sources.list_items([uri], s3_endpoint=s3_endpoint)))


def find_files(uri: str, *, s3_endpoint: str | None = None) -> list[str]:
    """Every file below ``uri`` (recursive, paged by the store's client), as filesystem paths."""
    fs, path = sources.filesystem(uri, s3_endpoint=s3_endpoint)
    try:
        return list(sources.retrying(lambda: fs.find(path, withdirs=False), 3))
    except Exception as exc:
        raise sources.input_error("list", uri, exc) from exc


def _fs_path(uri: str, s3_endpoint: str | None) -> str:
    fs, path = sources.filesystem(uri, s3_endpoint=s3_endpoint)
    return (path.replace(os.sep, "/") if isinstance(fs, LocalFileSystem) else path).rstrip("/")


def list_folder(root: str, *, s3_endpoint: str | None = None) -> RootPlan:
    """A whole folder, listed here in one recursive listing -> its images, or, for a folder holding no
    image but ``.parquet`` / ``.txt`` / ``.tar`` objects (e.g. written by ``raycolor list``), those objects.
    The pipelines list folders of images in tasks (:func:`list_group`); this is for the second case."""
    fs, path = sources.filesystem(root, s3_endpoint=s3_endpoint)
    paths = sorted(find_files(root, s3_endpoint=s3_endpoint))
    items, _ = sources.images_below(fs, path, root, paths)
    if items:
        return RootPlan(root=root, kind="listing", items=tuple(items))
    objs = []
    for p in paths:
        kind = object_kind(p)
        if kind and not posixpath.basename(p).startswith((".", "_")):
            objs.append((kind, sources.to_uri(fs, p, root), _tag(sources.retrying(lambda p=p: fs.info(p), 3))))
    if objs:
        return RootPlan(root=root, kind="objects", objects=tuple(objs))
    raise sources.no_images(root)


def size_object(kind: str, uri: str, tag: str, *, root: str, shard_size: int, s3_endpoint: str | None = None) -> list[Shard]:
    """The shards of one manifest or tar object (reads a tar's headers, a Parquet footer, or a .txt once)."""
    fs, path = sources.filesystem(uri, s3_endpoint=s3_endpoint)
    if kind == "tar":
        n = len(sources.list_tar(uri, s3_endpoint=s3_endpoint))
        return [Shard(kind="tar", uri=uri, root=root, count=n, id=shard_id("tar", root, uri, 0, -1, tag))]
    if kind == "parquet":
        try:
            with fs.open(path, "rb") as f:
                pf = pq.ParquetFile(f)
                rows = pf.metadata.num_rows
                if "uri" not in pf.schema_arrow.names:
                    raise sources.InputError(f"bad manifest {sources.redact(uri)}: needs a parquet file with a 'uri' column")
        except sources.InputError:
            raise
        except Exception as exc:
            raise sources.input_error("read", uri, exc) from exc
        if rows == 0:
            raise sources.InputError(f"empty manifest (no URIs): {sources.redact(uri)}")
        return [
            Shard(kind="parquet", uri=uri, root=root, start=a, stop=min(rows, a + shard_size), count=min(rows, a + shard_size) - a,
                  id=shard_id("parquet", root, uri, a, min(rows, a + shard_size), tag))
            for a in range(0, rows, shard_size)
        ]
    # txt: one pass over the lines, cutting every shard_size entries at a line start
    raw = sources.retrying(lambda: fs.cat_file(path), 3)
    shards, n = [], 0
    start = 3 if raw.startswith(b"\xef\xbb\xbf") else 0  # the first range starts after a BOM
    for pos, _ in sources.txt_entries(raw, uri):
        if n == shard_size:
            shards.append((start, pos, n))
            start, n = pos, 0
        n += 1
    if n:
        shards.append((start, len(raw), n))
    if not shards:
        raise sources.InputError(f"empty manifest (no URIs): {sources.redact(uri)}")
    return [
        Shard(kind="txt", uri=uri, root=root, start=a, stop=b, count=c, id=shard_id("txt", root, uri, a, b, tag))
        for a, b, c in shards
    ]


def chunk_listing(items: Sequence[sources.Item], *, root: str, shard_size: int) -> list[tuple[Shard, list[sources.Item]]]:
    """Content-defined chunks (see the module docstring) of a root's listing, each with its items."""
    modulus = max(1, shard_size // 2)
    out, cur = [], []

    def close():
        ident = shard_id("listing", root, root, 0, len(cur), _h(*(i.source for i in cur), n=40))
        out.append((Shard(kind="listing", uri="", root=root, count=len(cur), id=ident), list(cur)))
        cur.clear()

    for item in items:
        cur.append(item)
        if len(cur) >= shard_size or int(sources.digest(item.source, 8), 16) % modulus == 0:
            close()
    if cur:
        close()
    return out


def listing_table(items: Iterable[sources.Item]) -> pa.Table:
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


def _listing_items(t: pa.Table) -> list[sources.Item]:
    return [sources.Item(source=s, relpath=r, uri=u) for u, r, s in zip(*(t.column(c).to_pylist() for c in ("uri", "relpath", "source")))]


def expand(shard: Shard, *, s3_endpoint: str | None = None, retries: int = 5) -> list[sources.Item]:
    """The shard's items, de-duplicated and collision-renamed within the shard (first wins)."""
    if shard.kind == "tar":
        return sources.dedupe(sources.list_tar(shard.uri, s3_endpoint=s3_endpoint))
    fs, path = sources.filesystem(shard.uri, s3_endpoint=s3_endpoint)
    if shard.kind == "listing":
        return _listing_items(sources.retrying(lambda: pq.read_table(io.BytesIO(fs.cat_file(path))), retries))
    if shard.kind == "parquet":
        t = sources.retrying(lambda: _parquet_rows(fs, path, shard.start, shard.stop, ["uri", "relpath"]), retries)
        uris = [u for u in t.column("uri").to_pylist()]
        items = sources.manifest_items(shard.uri, [u for u in uris if u], s3_endpoint=s3_endpoint)
        if "relpath" in t.column_names:  # a listing saved by `raycolor list` keeps the folder's relpaths
            rel = [r for u, r in zip(uris, t.column("relpath").to_pylist()) if u and u.strip()]
            items = [sources.Item(source=i.source, relpath=sources.sanitize_relpath(r) if r else i.relpath, uri=i.uri) for i, r in zip(items, rel)]
        return sources.dedupe(items)
    if shard.kind == "txt":
        raw = sources.retrying(lambda: fs.cat_file(path, start=shard.start, end=shard.stop), retries)
        entries = [e for _, e in sources.txt_entries(raw, shard.uri, offset=shard.start)]
        return sources.dedupe(sources.manifest_items(shard.uri, entries, s3_endpoint=s3_endpoint))
    raise ValueError(f"unknown shard kind {shard.kind!r}")


# --------------------------------------------------------------------------------------------
# OUTPUT: names, stats, roots
# --------------------------------------------------------------------------------------------


def read_manifest(output: str, *, s3_endpoint=None, columns=None) -> pa.Table:
    """All manifest rows under OUTPUT/manifest/ (empty table if none), with a `_part` column."""
    fs, path = sources.filesystem(sources.join_uri(output, "manifest"), s3_endpoint=s3_endpoint)
    try:
        names = sorted(p for p in fs.ls(path, detail=False) if p.endswith(".parquet"))
    except FileNotFoundError:
        names = []
    cols = columns or MANIFEST_SCHEMA.names
    tables = []
    for name in names:
        data = io.BytesIO(fs.cat_file(name))
        present = set(pq.read_schema(data).names)
        t = with_manifest_columns(pq.read_table(data, columns=[c for c in cols if c in present]), cols)
        tables.append(t.append_column("_part", pa.array([name] * t.num_rows, type=pa.string())))
    if not tables:
        return pa.table({c: pa.array([], type=MANIFEST_SCHEMA.field(c).type) for c in cols} | {"_part": pa.array([], pa.string())})
    return pa.concat_tables(tables, promote_options="default")


def with_manifest_columns(table: pa.Table, cols=None) -> pa.Table:
    """`table` with exactly the manifest columns `cols` (default: all), in order; a column that a part written
    by an older raycolor lacks comes back as nulls."""
    cols = cols or MANIFEST_SCHEMA.names
    return pa.table({
        c: table.column(c) if c in table.column_names else pa.nulls(table.num_rows, type=MANIFEST_SCHEMA.field(c).type)
        for c in cols
    })


def part_uri(output: str, sid: str) -> str:
    return sources.join_uri(output, "manifest", f"{sid}.parquet")


def stats_uri(output: str, sid: str) -> str:
    return sources.join_uri(output, "_stats", f"{sid}.json")


def listing_uri(output: str, sid: str) -> str:
    return sources.join_uri(output, "_listing", f"{sid}.parquet")


def spool_dir(output: str, sid: str) -> str:
    return sources.join_uri(output, "_spool", sid)


def root_id(root: str) -> str:
    return _h("root", root)


def namespace_for(root: str) -> str:
    stem = posixpath.basename(root.rstrip("/").split("#", 1)[0]) or "root"
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:40].strip(".") or "root"
    return f"{stem}-{_h('ns', root, n=8)}"


def _ls(output: str, folder: str, *, s3_endpoint) -> list[str]:
    fs, path = sources.filesystem(sources.join_uri(output, folder), s3_endpoint=s3_endpoint)
    try:
        return sorted(sources.retrying(lambda: fs.ls(path, detail=False), 3))
    except FileNotFoundError:
        return []


def finished_shards(output: str, *, s3_endpoint=None) -> set[str]:
    """Ids of the shards whose stats record exists: one listing of OUTPUT/_stats/, no row is read."""
    return {posixpath.basename(p)[: -len(".json")] for p in _ls(output, "_stats", s3_endpoint=s3_endpoint) if p.endswith(".json")}


def read_stats(output: str, ids: Iterable[str], *, s3_endpoint=None) -> dict[str, dict]:
    """Stats records of ``ids`` (fetched concurrently on object stores)."""
    ids = list(ids)
    if not ids:
        return {}
    fs, _ = sources.filesystem(output, s3_endpoint=s3_endpoint)
    paths = {sources.filesystem(stats_uri(output, i), s3_endpoint=s3_endpoint)[1]: i for i in ids}
    blobs = sources.retrying(lambda: fs.cat(list(paths)), 3)  # s3fs: one batch of concurrent GETs
    return {paths[p]: json.loads(b) for p, b in blobs.items()}


def read_roots(output: str, *, s3_endpoint=None) -> dict[str, dict]:
    """root URI -> its record (namespace, shards) for every root OUTPUT has seen."""
    names = [p for p in _ls(output, "_roots", s3_endpoint=s3_endpoint) if p.endswith(".json")]
    if not names:
        return {}
    fs, _ = sources.filesystem(output, s3_endpoint=s3_endpoint)
    blobs = sources.retrying(lambda: fs.cat(names), 3)
    records = [json.loads(b) for b in blobs.values()]
    return {r["root"]: r for r in records}


def write_json(uri: str, obj, *, s3_endpoint=None, retries: int = 5) -> None:
    sources.write_bytes_atomic(uri, json.dumps(obj, indent=1).encode(), s3_endpoint=s3_endpoint, retries=retries)


def remove(uris: Iterable[str], *, s3_endpoint=None, retries: int = 5) -> None:
    for uri in uris:
        sources.remove(uri, s3_endpoint=s3_endpoint, retries=retries)


def assign_namespaces(roots: Sequence[str], known: dict[str, dict]) -> dict[str, str]:
    """Each root's output namespace. A root OUTPUT already knows keeps its namespace. New roots share
    the plain namespace ("") only when OUTPUT has no root yet (the first run; its roots are listed
    together, folder listings de-duplicated together); a root that arrives when OUTPUT already holds
    another root's outputs gets ``<basename>-<hash of the root>``, so it can never overwrite them."""
    first_run = not known
    return {r: known[r]["namespace"] if r in known else ("" if first_run else namespace_for(r)) for r in roots}


# --------------------------------------------------------------------------------------------
# The lock: one driver per OUTPUT
# --------------------------------------------------------------------------------------------


def lock_uri(output: str) -> str:
    return sources.join_uri(output, "_lock.json")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _create_exclusive(uri: str, data: bytes, *, s3_endpoint) -> bool:
    """Create ``uri`` only if it does not exist; False if it does. Local: O_EXCL. S3: a conditional PUT
    (If-None-Match: *). Other stores: exists-then-write (a race between two drivers starting in the
    same instant is possible there)."""
    fs, path = sources.filesystem(uri, s3_endpoint=s3_endpoint)
    if isinstance(fs, LocalFileSystem):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    if type(fs).__name__ == "S3FileSystem":
        bucket, key = path.split("/", 1)
        try:
            fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except Exception as exc:  # s3fs translates the 412 into an OSError subclass; look at the chain
            text = f"{exc!r} {exc.__cause__!r} {exc.__context__!r}"
            if "PreconditionFailed" in text or "412" in text or "ConditionalRequestConflict" in text:
                return False
            raise
        return True
    if fs.exists(path):
        return False
    fs.pipe_file(path, data)
    return True


def acquire_lock(output: str, *, force: bool = False, s3_endpoint=None) -> dict:
    """Create OUTPUT/_lock.json (host, pid, start time) or raise :class:`OutputLocked`.

    A lock left by a dead process on this same host is stale and taken over; ``force`` takes over any lock
    (use it only when the driver that held it is known to be gone)."""
    me = {"host": socket.gethostname(), "pid": os.getpid(), "started_at": time.time(), "token": _h(time.time(), os.getpid(), os.urandom(8))}
    uri = lock_uri(output)
    for _ in range(3):
        # retried on transient errors: a PUT that reached the store but lost its answer comes back as
        # "exists", and the token read below tells that the lock is ours
        if sources.retrying(lambda: _create_exclusive(uri, json.dumps(me).encode(), s3_endpoint=s3_endpoint), 5):
            return me
        fs, path = sources.filesystem(uri, s3_endpoint=s3_endpoint)
        try:
            held = json.loads(sources.retrying(lambda: fs.cat_file(path), 5))
        except FileNotFoundError:
            continue  # released meanwhile: try again
        except Exception:
            held = {}
        if held.get("token") == me["token"]:
            return me
        stale = held.get("host") == me["host"] and isinstance(held.get("pid"), int) and not _pid_alive(held["pid"])
        if force or stale:
            remove([uri], s3_endpoint=s3_endpoint)
            continue
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(held.get("started_at", 0)))
        raise OutputLocked(
            f"{sources.redact(output)} is in use by another raycolor driver (host {held.get('host')}, pid {held.get('pid')}, "
            f"since {since}); wait for it to finish, or pass --force-unlock if it is gone"
        )
    raise OutputLocked(f"could not take the lock {sources.redact(uri)}")


def release_lock(output: str, lock: dict, *, s3_endpoint=None) -> None:
    """Remove OUTPUT/_lock.json if it is still ours."""
    uri = lock_uri(output)
    fs, path = sources.filesystem(uri, s3_endpoint=s3_endpoint)
    try:
        held = json.loads(sources.retrying(lambda: fs.cat_file(path), 5))
    except Exception:
        return
    if held.get("token") == lock.get("token"):
        remove([uri], s3_endpoint=s3_endpoint)


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


def list_group(group: ListGroup, *, chunk_uri: str, shard_size: int, fan_out: bool, s3_endpoint: str | None = None,
               retries: int = 5) -> tuple[tuple[list[tuple[tuple, Shard]], list[ListGroup], dict[str, int], Counter], pa.Table]:
    """One listing task: the images directly in the group's folders (``fan_out``: one paged listing of each
    folder's first level; its sub-folders come back as the next level's groups) or below them (not
    ``fan_out``: one recursive listing each), de-duplicated and collision-renamed together
    (:func:`sources.dedupe`, the rule of :func:`sources.list_items`: first root wins), cut per owning root
    into content-defined chunks (:func:`chunk_listing`), each written as a listing table to
    ``chunk_uri`` with ``{id}`` replaced by the shard id, unless an identical one is there. A root with
    fewer than ``shard_size`` images in the group is not cut: those rows come back in a table, for the
    driver to bin with the next groups' (:func:`write_bin`), so that many small folders do not make many
    small shards.

    Returns (([(sort key, listing Shard with its uri)], [next groups], {root: images found under it, before
    de-duplication}, {root: rows in the table}), the table (root + :data:`LISTING_SCHEMA`)). Run as a Ray
    task with two returns: the driver fetches the first, never the images."""
    given = dict(group.files)
    tagged: list[tuple[str, sources.Item]] = []  # (root, item) in the order of the roots
    children: dict[str, list] = {}
    found: dict[str, int] = {}
    for root, folder in group.dirs:
        found.setdefault(root, 0)
        if folder in given:
            found[root] += len(given[folder])
            tagged += [(root, i) for i in given[folder]]
            continue
        fs, path = sources.filesystem(folder, s3_endpoint=s3_endpoint)
        here = _fs_path(folder, s3_endpoint)
        prefix = _fs_path(root, s3_endpoint) + "/"
        excluded = [x for x in (_fs_path(e, s3_endpoint) for e in group.exclude) if x.startswith(prefix)]
        try:
            if fan_out:
                entries = sorted(sources.retrying(lambda fs=fs, path=path: fs.ls(path, detail=True), retries), key=lambda e: e["name"])
                files = [e["name"] for e in entries if e.get("type") != "directory"]
                for e in entries:
                    sub = (e["name"].replace(os.sep, "/") if isinstance(fs, LocalFileSystem) else e["name"]).rstrip("/")
                    if e.get("type") != "directory" or sub == here:
                        continue
                    if _is_under(sub, excluded):
                        found[root] += 1  # its images belong to another input, which lists them
                        continue
                    key = sources.sanitize_relpath(sub[len(prefix):]).lower()
                    children.setdefault(key, []).append((root, sources.to_uri(fs, e["name"], root)))
            else:
                files = sources.retrying(lambda fs=fs, path=path: fs.find(path, withdirs=False), retries)
        except Exception as exc:
            raise sources.input_error("list", folder, exc) from exc
        mine, n = sources.images_below(fs, prefix, root, files, exclude=excluded)
        found[root] += n
        tagged += [(root, i) for i in mine]
    owner: dict[str, str] = {}
    for root, item in tagged:
        owner.setdefault(item.source, root)
    per_root: dict[str, list] = {}
    for item in sources.dedupe(i for _, i in tagged):
        per_root.setdefault(owner[item.source], []).append(item)
    order = {root: n for n, (root, _) in enumerate(group.dirs)}
    shards, small = [], []
    for root, mine in per_root.items():
        if len(mine) < shard_size:  # binned with its neighbours by write_bin, not a shard of its own
            small += [(root, i) for i in mine]
            continue
        for k, (shard, chunk) in enumerate(chunk_listing(mine, root=root, shard_size=shard_size)):
            shards.append(((group.key, order[root], k), _write_chunk(shard, chunk, chunk_uri, s3_endpoint=s3_endpoint, retries=retries)))
    nxt = [ListGroup(key=k, dirs=tuple(d), depth=group.depth + 1, exclude=group.exclude) for k, d in sorted(children.items())]
    rest = listing_table(i for _, i in small)
    rest = rest.add_column(0, "root", pa.array([r for r, _ in small], pa.string()))
    return (shards, nxt, found, Counter(r for r, _ in small)), rest


def _write_chunk(shard: Shard, chunk: Sequence[sources.Item], chunk_uri: str, *, s3_endpoint, retries: int) -> Shard:
    uri = chunk_uri.replace("{id}", shard.id)
    buf = io.BytesIO()
    pq.write_table(listing_table(chunk), buf)
    _write_if_changed(uri, buf.getvalue(), s3_endpoint=s3_endpoint, retries=retries)
    return shard.with_(uri=uri)


def write_bin(root: str, chunk_uri: str, *tables: pa.Table, s3_endpoint: str | None = None, retries: int = 5) -> Shard:
    """The small remainders of consecutive folder groups (what :func:`list_group` left unwritten: fewer than
    ``shard_size`` images of ``root``), as one listing chunk of ``root``; returns its shard."""
    t = pa.concat_tables([t.filter(pc.equal(t.column("root"), root)) for t in tables])
    items = _listing_items(t)
    shard = Shard(kind="listing", uri="", root=root, count=len(items),
                  id=shard_id("listing", root, root, 0, len(items), _h(*(i.source for i in items), n=40)))
    return _write_chunk(shard, items, chunk_uri, s3_endpoint=s3_endpoint, retries=retries)


def _write_if_changed(uri: str, data: bytes, *, s3_endpoint: str | None, retries: int) -> None:
    fs, path = sources.filesystem(uri, s3_endpoint=s3_endpoint)
    try:
        if sources.retrying(lambda: fs.cat_file(path), retries) == data:
            return
    except FileNotFoundError:
        pass
    sources.write_bytes_atomic(uri, data, s3_endpoint=s3_endpoint, retries=retries)


def remove_stale_parts(output: str, keep: Iterable[str], *, s3_endpoint: str | None = None, retries: int = 5) -> None:
    """Remove ``part-*.parquet`` under OUTPUT that this listing did not write (an earlier listing's)."""
    fs, path = sources.filesystem(output, s3_endpoint=s3_endpoint)
    keep = set(keep)
    stale = [sources.to_uri(fs, p, output) for p in sources.retrying(lambda: fs.ls(path, detail=False), retries)
             if posixpath.basename(p).startswith("part-") and p.endswith(".parquet") and posixpath.basename(p) not in keep]
    remove(stale, s3_endpoint=s3_endpoint, retries=retries)
