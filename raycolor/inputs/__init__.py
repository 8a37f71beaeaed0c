"""What an input is and how it becomes shards and items: listing rules, items, shards, expansion.

Pure fsspec/pyarrow on top of :mod:`raycolor.storage` (the reads, the retry policy): this module never
imports ray or torch, so the Ray pipelines (and their workers) can call it cheaply.

Inputs accepted by :func:`list_items` (any mix, in any number):

* a folder -- local path, ``file://``, ``s3://bucket/prefix`` (or any installed fsspec protocol
  such as ``gs://`` / ``az://``): recursive listing of the image files below it
  (suffixes in :data:`IMAGE_SUFFIXES`, case-insensitive); ``relpath`` is the path relative to the
  folder. Tars found inside a folder are *not* expanded: pass them explicitly.
* a single image file: one item, ``relpath`` = its basename.
* a ``.tar`` (uncompressed) archive: its regular image members are listed by reading the tar
  headers only (seekable, no extraction, nothing written to disk). Each member becomes an item
  whose ``uri`` is the tar itself plus ``offset``/``size``, so :func:`storage.read_item` does one range
  read. ``relpath`` = ``"<tar basename>/<member name>"``, sanitised. Links, devices, directories
  and sparse members are skipped.
* a manifest -- ``.txt`` (one URI per line; blank lines and ``#`` comments ignored) or
  ``.parquet`` with a string ``uri`` column. Entries are taken as image files *as given*: no
  listing and no existence check is done (that is the point of a manifest on a huge prefix); an
  entry that cannot be read or decoded becomes an error row downstream.
  Relative entries are resolved against the manifest's own folder. An entry with credentials in
  its URI (``s3://key:secret@b/x.jpg``) is listed with them replaced by ``***`` and fails to
  read: credentials in URIs are not supported anywhere (see :func:`storage.filesystem`).
  **Manifest relpath rule**: the entry's path without scheme and bucket/host -- ``s3://b/p/x.jpg``
  -> ``p/x.jpg``, ``/data/p/x.jpg`` -> ``data/p/x.jpg``, ``file:///data/x.jpg`` ->
  ``data/x.jpg``; a relative entry keeps its text (``imgs/x.jpg`` -> ``imgs/x.jpg``); always
  sanitised.

The order is deterministic: inputs in the order given; within a folder, sorted by relpath; within
a tar, archive order (which is also the best order for range reads); within a manifest, file
order. The same ``source`` appearing twice (across or within inputs) is kept once (first wins).
Two different sources whose outputs would collide -- same relpath up to the extension and
letter case, e.g. ``x.jpg`` and ``x.PNG`` both become ``x.png`` -- are disambiguated
deterministically: the first keeps its name, later ones get ``"__" + sha1(source)[:8]`` before the
extension (``x__1a2b3c4d.PNG``). "First keeps its name" means that appending inputs to a rerun
never renames outputs that already exist.

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

Listing chunks are content-defined: a chunk ends after a source whose hash is 0 modulo ``shard_size // 2``
(or when it reaches ``shard_size``), so a file added to a big folder changes one chunk, not every chunk
after it.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from raycolor import storage
from raycolor.core.suffixes import (
    IMAGE_SUFFIXES,
    MANIFEST_SUFFIXES,
    TAR_SUFFIXES,
    object_kind,
    suffix,
)
from raycolor.storage import InputError

__all__ = [
    "IMAGE_SUFFIXES",  # these three and suffix(): raycolor.core.suffixes, the one definition
    "LISTING_SCHEMA",
    "LIST_FANOUT_DEPTH",
    "MANIFEST_SUFFIXES",
    "TAR_SUFFIXES",
    "InputError",  # raycolor.storage's (filesystem raises it too), the one class
    "Item",
    "ListGroup",
    "RootPlan",
    "Shard",
    "chunk_listing",
    "classify",
    "dedupe",
    "expand",
    "find_files",
    "images_below",
    "input_error",
    "is_image",
    "list_folder",
    "list_group",
    "list_items",
    "list_tar",
    "listing_table",
    "manifest_items",
    "no_images",
    "output_key",
    "remove_stale_parts",
    "shard_id",
    "size_object",
    "txt_entries",
    "write_bin",
]

# Block size for walking tar headers on object stores: every header costs at most one request of
# this size (read-ahead), member data beyond it is skipped with a seek.
_TAR_BLOCK_SIZE = 4 * 2**20

LISTING_SCHEMA = pa.schema([("uri", pa.string()), ("relpath", pa.string()), ("source", pa.string())])

@dataclass(frozen=True)
class Item:
    source: str  # user-visible URI: "s3://b/p/x.jpg", "/abs/x.jpg", or "s3://b/shard.tar#dir/x.jpg"
    relpath: str  # sanitised relative output path (extension not yet replaced), e.g. "sub/x.jpg"
    uri: str  # the object to read (for tar members: the tar's URI)
    offset: int = 0  # byte offset of the member's data within `uri` (tar members)
    size: int = -1  # bytes to read; -1 = whole object

    @classmethod
    def from_row(cls, row: Mapping) -> Item:
        """The item of an item row (a dict, e.g. of a Ray Data dataset: source, uri, and optionally relpath,
        offset, size; other keys ignored), with plain str/int fields whatever scalar types the row holds."""
        return cls(source=str(row["source"]), relpath=str(row.get("relpath", "")), uri=str(row["uri"]),
                   offset=int(row.get("offset", 0)), size=int(row.get("size", -1)))

    @classmethod
    def from_batch(cls, batch: Mapping, rows: Iterable[int] | None = None) -> list[Item]:
        """The items of a columnar batch of item rows (columns as in :meth:`from_row`; numpy arrays or lists),
        of the row indices ``rows`` (default: all), in that order."""
        n = len(batch["source"])
        return [cls.from_row({k: batch[k][i] for k in _ITEM_COLUMNS if k in batch}) for i in (range(n) if rows is None else rows)]


_ITEM_COLUMNS = ("source", "relpath", "uri", "offset", "size")


# --------------------------------------------------------------------------------------------
# Output names (the rule de-duplication is stated in)
# --------------------------------------------------------------------------------------------


def _split_ext(relpath: str) -> tuple[str, str]:
    head, base = posixpath.split(relpath)
    stem, ext = posixpath.splitext(base)  # ".hidden" -> (".hidden", "")
    return posixpath.join(head, stem) if head else stem, ext


def output_key(relpath: str, ext: str) -> str:
    """``relpath`` (sanitised) with its extension replaced by ``ext``: ("a/b/x.JPG", ".png") -> "a/b/x.png"."""
    if ext and not ext.startswith("."):
        ext = "." + ext
    stem, _ = _split_ext(storage.sanitize_relpath(relpath))
    return stem + ext


# --------------------------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------------------------


def is_image(path: str) -> bool:
    return suffix(path) in IMAGE_SUFFIXES


def input_error(action: str, uri: str, exc: BaseException) -> InputError:
    if isinstance(exc, InputError):
        return exc
    if isinstance(exc, FileNotFoundError):
        return InputError(f"input not found: {storage.redact(uri)}")
    if isinstance(exc, PermissionError):
        return InputError(f"input not readable (permission denied): {storage.redact(uri)}")
    detail = storage.redact(f"{type(exc).__name__}: {exc}", uri)
    if len(detail) > 300:
        detail = detail[:297] + "..."
    return InputError(f"cannot {action} input {storage.redact(uri)} ({detail})")


@contextlib.contextmanager
def _reading_input(uri: str) -> Iterator[None]:
    """What reading a tar's headers or a manifest can raise, as one-line InputErrors."""
    try:
        yield
    except (tarfile.TarError, EOFError) as exc:
        raise InputError(f"not a valid tar archive: {storage.redact(uri)} ({storage.redact(exc, uri)})") from exc
    except InputError:
        raise
    except Exception as exc:
        raise input_error("read", uri, exc) from exc


def list_items(inputs: Sequence[str], *, s3_endpoint: str | None = None) -> list[Item]:
    """Every image named by ``inputs`` (folders, image files, .tar archives, .txt/.parquet manifests).

    See the module docstring for the rules. Raises :class:`InputError` for an input that does not
    exist, cannot be read, is not a supported kind, or yields no image.
    """
    if isinstance(inputs, str):
        inputs = [inputs]
    if not inputs:
        raise InputError("no inputs given")
    items: list[Item] = []
    for uri in inputs:
        items.extend(_list_one(uri, s3_endpoint=s3_endpoint))
    return _dedupe(items)


def _list_one(uri: str, *, s3_endpoint: str | None) -> list[Item]:
    if not isinstance(uri, str) or not uri.strip():
        raise InputError(f"empty input URI: {uri!r}")
    uri = uri.strip()
    fs, path = storage.filesystem(uri, s3_endpoint=s3_endpoint)
    try:
        info = storage.retrying(lambda: fs.info(path), 3)
    except Exception as exc:
        raise input_error("read", uri, exc) from exc
    if info.get("type") == "directory":
        return _list_folder(fs, path, uri)
    ext = suffix(path)
    with _reading_input(uri):
        if ext in TAR_SUFFIXES:
            return _list_tar(fs, path, uri)
        if ext in MANIFEST_SUFFIXES:
            return _list_manifest(fs, path, uri, ext)
    if ext in IMAGE_SUFFIXES:
        source = storage.to_uri(fs, path, uri)
        return [Item(source=source, relpath=storage.sanitize_relpath(posixpath.basename(path)), uri=source)]
    raise InputError(
        f"not an image, .tar archive or .txt/.parquet manifest: {storage.redact(uri)} "
        f"(images: {', '.join(sorted(IMAGE_SUFFIXES))})"
    )


def _list_folder(fs: fsspec.AbstractFileSystem, path: str, uri: str) -> list[Item]:
    try:
        found = storage.retrying(lambda: fs.find(path, withdirs=False), 3)
    except Exception as exc:
        raise input_error("list", uri, exc) from exc
    rows, _ = images_below(fs, path, uri, found)
    if not rows:
        raise no_images(uri)
    return rows


def images_below(fs: fsspec.AbstractFileSystem, folder: str, like: str, paths: Iterable[str], *,
                 exclude: Iterable[str] = ()) -> tuple[list[Item], int]:
    """The folder rule, stated once (:func:`list_items`, and the listing tasks, :func:`list_group`): the images
    among ``paths`` (files listed below ``folder``, both paths on ``fs``): image suffixes only (any case),
    ``relpath`` = the path relative to ``folder``, sanitised; ``source`` = ``uri`` = the file's URI (scheme
    as in ``like``, the URI the user gave); sorted by (relpath, source). Images in or under an ``exclude``
    folder (paths on ``fs``) strictly inside ``folder`` are left out. Returns (items, images found,
    excluded ones too)."""
    local = isinstance(fs, LocalFileSystem)
    prefix = (folder.replace(os.sep, "/") if local else folder).rstrip("/") + "/"
    skip = [x.rstrip("/") for x in exclude if x.startswith(prefix)]
    images = [p for p in (p.replace(os.sep, "/") if local else p for p in paths) if p.startswith(prefix) and is_image(p)]
    items = []
    for p in images:
        if any(p == x or p.startswith(x + "/") for x in skip):
            continue
        source = storage.to_uri(fs, p, like)
        items.append(Item(source=source, relpath=storage.sanitize_relpath(p[len(prefix):]), uri=source))
    items.sort(key=lambda it: (it.relpath, it.source))
    return items, len(images)


def no_images(uri: str) -> InputError:
    """The error for a folder that holds no image."""
    return InputError(f"no images found under {storage.redact(uri)} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")


def _list_tar(fs: fsspec.AbstractFileSystem, path: str, uri: str) -> list[Item]:
    tar_uri = storage.to_uri(fs, path, uri)
    base = storage.sanitize_relpath(posixpath.basename(path))
    rows = []
    open_kwargs = {} if isinstance(fs, LocalFileSystem) else {"block_size": _TAR_BLOCK_SIZE, "cache_type": "readahead"}
    with fs.open(path, "rb", **open_kwargs) as f:
        # "r:" (seekable, uncompressed): tarfile reads each header and seeks over member data, so
        # large members are never downloaded while listing.
        with tarfile.open(fileobj=f, mode="r:") as tar:
            for member in tar:
                if not member.isfile() or member.issparse() or not is_image(member.name):
                    continue
                rows.append(
                    Item(
                        source=f"{tar_uri}#{member.name}",
                        relpath=f"{base}/{storage.sanitize_relpath(member.name)}",
                        uri=tar_uri,
                        offset=member.offset_data,
                        size=member.size,
                    )
                )
    if not rows:
        raise InputError(
            f"no image members in tar archive {storage.redact(uri)} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return rows


_BOM = b"\xef\xbb\xbf"


def txt_entries(raw: bytes, uri: str, *, offset: int = 0) -> Iterator[tuple[int, str]]:
    """The ``.txt`` manifest rule, stated once (listing, sizing into byte ranges, and expanding a range all
    use it): ``raw`` is the manifest's bytes from byte ``offset`` (a line start) on. Yields (the byte
    position in the file where the line starts, the entry) for each entry line, in file order.

    Lines end at ``\n``, ``\r\n`` or ``\r`` only (so a byte range cut at a line start holds whole lines; other
    Unicode line separators are characters of a name). A UTF-8 BOM opening the file is skipped. Each line
    must be UTF-8: a line that is not raises :class:`InputError` (the manifest is refused, never read with
    replacement characters). Entries are stripped of whitespace; blank lines and lines starting with
    ``#`` are not entries."""
    pos = offset
    if offset == 0 and raw.startswith(_BOM):
        raw, pos = raw[len(_BOM):], len(_BOM)
    for line in raw.splitlines(keepends=True):
        try:
            entry = line.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise InputError(f"bad manifest {storage.redact(uri)}: not UTF-8 text (the line at byte {pos})") from exc
        if entry and not entry.startswith("#"):
            yield pos, entry
        pos += len(line)


def _manifest_entries(fs: fsspec.AbstractFileSystem, path: str, uri: str, suffix: str) -> list[str]:
    if suffix == ".txt":
        return [entry for _, entry in txt_entries(fs.cat_file(path), uri)]
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with fs.open(path, "rb") as f:
            table = pq.read_table(f, columns=["uri"])
    except (KeyError, pa.ArrowException) as exc:
        raise InputError(f"bad manifest {storage.redact(uri)}: needs a parquet file with a 'uri' column ({storage.redact(exc, uri)})") from exc
    column = table.column("uri")
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise InputError(f"bad manifest {storage.redact(uri)}: column 'uri' must hold strings, not {column.type}")
    return [v.strip() for v in column.to_pylist() if v is not None and v.strip()]


def _manifest_relpath(entry: str) -> str:
    proto = storage.protocol(entry)
    if proto is None:
        return storage.sanitize_relpath(entry)
    rest = entry.split("://", 1)[1]
    if proto not in storage.LOCAL_PROTOCOLS:
        rest = rest.lstrip("/").split("/", 1)[1] if "/" in rest.lstrip("/") else ""
    return storage.sanitize_relpath(rest)


def _list_manifest(fs: fsspec.AbstractFileSystem, path: str, uri: str, suffix: str) -> list[Item]:
    entries = _manifest_entries(fs, path, uri, suffix)
    if not entries:
        raise InputError(f"empty manifest (no URIs): {storage.redact(uri)}")
    return _manifest_items(fs, path, uri, entries)


def manifest_items(uri: str, entries: Sequence[str], *, s3_endpoint: str | None = None) -> list[Item]:
    """Items for ``entries`` (lines or ``uri`` values) of the manifest at ``uri``: the manifest rules of
    :func:`list_items` (relative entries resolve next to the manifest; relpath rule) applied to a part of
    a manifest, as a shard task reads it. Not de-duplicated."""
    fs, path = storage.filesystem(uri, s3_endpoint=s3_endpoint)
    return _manifest_items(fs, path, uri, [e.strip() for e in entries if e and e.strip()])


def list_tar(uri: str, *, s3_endpoint: str | None = None) -> list[Item]:
    """The image members of the tar archive at ``uri`` (header walk only), as :func:`list_items` lists them."""
    fs, path = storage.filesystem(uri, s3_endpoint=s3_endpoint)
    with _reading_input(uri):
        return _list_tar(fs, path, uri)


def dedupe(items: Iterable[Item]) -> list[Item]:
    """Public name of the de-duplication / collision-renaming rule (see the module docstring)."""
    return _dedupe(items)


def _manifest_items(fs: fsspec.AbstractFileSystem, path: str, uri: str, entries: Sequence[str]) -> list[Item]:
    manifest_dir = posixpath.dirname(path) if not isinstance(fs, LocalFileSystem) else os.path.dirname(path)
    checked: set[str] = set()
    rows = []
    for n, entry in enumerate(entries, 1):
        proto = storage.protocol(entry)
        if proto is None and not entry.startswith(("/", "~")) and not storage.DRIVE_RE.match(entry):
            # relative entry: resolve against the manifest's folder, keep its own text as relpath
            if isinstance(fs, LocalFileSystem):
                target = os.path.normpath(os.path.join(manifest_dir, entry))
            else:
                target = storage.to_uri(fs, posixpath.normpath(posixpath.join(manifest_dir, entry)), uri)
        elif proto is None or proto in storage.LOCAL_PROTOCOLS:
            raw = entry.split("://", 1)[1] if proto else entry
            target = os.path.abspath(os.path.expanduser(raw))
        else:
            if proto not in checked:
                try:
                    fsspec.get_filesystem_class(proto)
                except (ValueError, ImportError) as exc:
                    raise InputError(
                        f"bad manifest {storage.redact(uri)} line {n}: unsupported URI scheme {proto}:// ({storage.redact(exc, uri)})"
                    ) from exc
                checked.add(proto)
            target = f"{proto}://{entry.split('://', 1)[1].lstrip('/')}"
            if storage.has_credentials(target):
                # kept as an item (it becomes an error row) but never with its credentials: the
                # source is stored in the manifest and shipped to workers
                target = storage.without_credentials(target)
        rows.append(Item(source=target, relpath=_manifest_relpath(entry), uri=target))
    return rows


def _dedupe(items: Iterable[Item]) -> list[Item]:
    """Drop repeated sources (first wins); rename later relpaths whose outputs would collide."""
    out: list[Item] = []
    seen_sources: set[str] = set()
    taken: set[str] = set()  # lower-cased output stems (extension-less relpaths)
    for item in items:
        if item.source in seen_sources:
            continue
        seen_sources.add(item.source)
        stem, ext = _split_ext(item.relpath)
        key = stem.lower()
        if key in taken:
            salt = item.source
            while True:
                new_stem = f"{stem}__{storage.digest(salt, 8)}"
                if new_stem.lower() not in taken:
                    break
                salt += "#"  # astronomically rare: keep deterministic
            stem, key = new_stem, new_stem.lower()
            item = Item(source=item.source, relpath=stem + ext, uri=item.uri, offset=item.offset, size=item.size)
        taken.add(key)
        out.append(item)
    return out


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


def classify(uri: str, *, s3_endpoint: str | None = None) -> RootPlan:
    """Folder, image, tar, manifest, folder/glob of manifests or tars -> a RootPlan. Raises InputError."""
    if not isinstance(uri, str) or not uri.strip():
        raise InputError(f"empty input URI: {uri!r}")
    uri = uri.strip()
    fs, path = storage.filesystem(uri, s3_endpoint=s3_endpoint)
    root = storage.to_uri(fs, path, uri)
    if _is_glob(uri):
        found = sorted(fs.glob(path))
        objs = []
        for p in found:
            kind = object_kind(p)
            if kind:
                objs.append((kind, storage.to_uri(fs, p, uri), _tag(fs.info(p))))
        if not objs:
            raise InputError(f"no .tar/.parquet/.txt objects match {storage.redact(uri)}")
        return RootPlan(root=root, kind="objects", objects=tuple(objs))
    try:
        info = storage.retrying(lambda: fs.info(path), 3)
    except Exception as exc:
        raise input_error("read", uri, exc) from exc
    if info.get("type") == "directory":
        return RootPlan(root=root, kind="folder")  # listed in tasks (list_group), or by list_folder
    kind = object_kind(path)
    if kind:
        return RootPlan(root=root, kind="objects", objects=((kind, root, _tag(info)),))
    return RootPlan(root=root, kind="listing", items=tuple(list_items([uri], s3_endpoint=s3_endpoint)))


def find_files(uri: str, *, s3_endpoint: str | None = None) -> list[str]:
    """Every file below ``uri`` (recursive, paged by the store's client), as filesystem paths."""
    fs, path = storage.filesystem(uri, s3_endpoint=s3_endpoint)
    try:
        return list(storage.retrying(lambda: fs.find(path, withdirs=False), 3))
    except Exception as exc:
        raise input_error("list", uri, exc) from exc


def _fs_path(uri: str, s3_endpoint: str | None) -> str:
    fs, path = storage.filesystem(uri, s3_endpoint=s3_endpoint)
    return (path.replace(os.sep, "/") if isinstance(fs, LocalFileSystem) else path).rstrip("/")


def list_folder(root: str, *, s3_endpoint: str | None = None) -> RootPlan:
    """A whole folder, listed here in one recursive listing -> its images, or, for a folder holding no
    image but ``.parquet`` / ``.txt`` / ``.tar`` objects (e.g. written by ``raycolor list``), those objects.
    The pipelines list folders of images in tasks (:func:`list_group`); this is for the second case."""
    fs, path = storage.filesystem(root, s3_endpoint=s3_endpoint)
    paths = sorted(find_files(root, s3_endpoint=s3_endpoint))
    items, _ = images_below(fs, path, root, paths)
    if items:
        return RootPlan(root=root, kind="listing", items=tuple(items))
    objs = []
    for p in paths:
        kind = object_kind(p)
        if kind and not posixpath.basename(p).startswith((".", "_")):
            objs.append((kind, storage.to_uri(fs, p, root), _tag(storage.retrying(lambda p=p: fs.info(p), 3))))
    if objs:
        return RootPlan(root=root, kind="objects", objects=tuple(objs))
    raise no_images(root)


def size_object(kind: str, uri: str, tag: str, *, root: str, shard_size: int, s3_endpoint: str | None = None) -> list[Shard]:
    """The shards of one manifest or tar object (reads a tar's headers, a Parquet footer, or a .txt once)."""
    fs, path = storage.filesystem(uri, s3_endpoint=s3_endpoint)
    if kind == "tar":
        n = len(list_tar(uri, s3_endpoint=s3_endpoint))
        return [Shard(kind="tar", uri=uri, root=root, count=n, id=shard_id("tar", root, uri, 0, -1, tag))]
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
        ]
    # txt: one pass over the lines, cutting every shard_size entries at a line start
    raw = storage.retrying(lambda: fs.cat_file(path), 3)
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
    ]


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


def _listing_items(t: pa.Table) -> list[Item]:
    return [Item(source=s, relpath=r, uri=u) for u, r, s in zip(*(t.column(c).to_pylist() for c in ("uri", "relpath", "source")))]


def expand(shard: Shard, *, s3_endpoint: str | None = None, retries: int = 5) -> list[Item]:
    """The shard's items, de-duplicated and collision-renamed within the shard (first wins)."""
    if shard.kind == "tar":
        return dedupe(list_tar(shard.uri, s3_endpoint=s3_endpoint))
    fs, path = storage.filesystem(shard.uri, s3_endpoint=s3_endpoint)
    if shard.kind == "listing":
        return _listing_items(storage.retrying(lambda: pq.read_table(io.BytesIO(fs.cat_file(path))), retries))
    if shard.kind == "parquet":
        t = storage.retrying(lambda: _parquet_rows(fs, path, shard.start, shard.stop, ["uri", "relpath"]), retries)
        uris = [u for u in t.column("uri").to_pylist()]
        items = manifest_items(shard.uri, [u for u in uris if u], s3_endpoint=s3_endpoint)
        if "relpath" in t.column_names:  # a listing saved by `raycolor list` keeps the folder's relpaths
            rel = [r for u, r in zip(uris, t.column("relpath").to_pylist()) if u and u.strip()]
            items = [Item(source=i.source, relpath=storage.sanitize_relpath(r) if r else i.relpath, uri=i.uri) for i, r in zip(items, rel)]
        return dedupe(items)
    if shard.kind == "txt":
        raw = storage.retrying(lambda: fs.cat_file(path, start=shard.start, end=shard.stop), retries)
        entries = [e for _, e in txt_entries(raw, shard.uri, offset=shard.start)]
        return dedupe(manifest_items(shard.uri, entries, s3_endpoint=s3_endpoint))
    raise ValueError(f"unknown shard kind {shard.kind!r}")


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
    (:func:`dedupe`, the rule of :func:`list_items`: first root wins), cut per owning root
    into content-defined chunks (:func:`chunk_listing`), each written as a listing table to
    ``chunk_uri`` with ``{id}`` replaced by the shard id, unless an identical one is there. A root with
    fewer than ``shard_size`` images in the group is not cut: those rows come back in a table, for the
    driver to bin with the next groups' (:func:`write_bin`), so that many small folders do not make many
    small shards.

    Returns (([(sort key, listing Shard with its uri)], [next groups], {root: images found under it, before
    de-duplication}, {root: rows in the table}), the table (root + :data:`LISTING_SCHEMA`)). Run as a Ray
    task with two returns: the driver fetches the first, never the images."""
    given = dict(group.files)
    tagged: list[tuple[str, Item]] = []  # (root, item) in the order of the roots
    children: dict[str, list] = {}
    found: dict[str, int] = {}
    for root, folder in group.dirs:
        found.setdefault(root, 0)
        if folder in given:
            found[root] += len(given[folder])
            tagged += [(root, i) for i in given[folder]]
            continue
        fs, path = storage.filesystem(folder, s3_endpoint=s3_endpoint)
        here = _fs_path(folder, s3_endpoint)
        prefix = _fs_path(root, s3_endpoint) + "/"
        excluded = [x for x in (_fs_path(e, s3_endpoint) for e in group.exclude) if x.startswith(prefix)]
        try:
            if fan_out:
                entries = sorted(storage.retrying(lambda fs=fs, path=path: fs.ls(path, detail=True), retries), key=lambda e: e["name"])
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
                files = storage.retrying(lambda fs=fs, path=path: fs.find(path, withdirs=False), retries)
        except Exception as exc:
            raise input_error("list", folder, exc) from exc
        mine, n = images_below(fs, prefix, root, files, exclude=excluded)
        found[root] += n
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
            shards.append(((group.key, order[root], k), _write_chunk(shard, chunk, chunk_uri, s3_endpoint=s3_endpoint, retries=retries)))
    nxt = [ListGroup(key=k, dirs=tuple(d), depth=group.depth + 1, exclude=group.exclude) for k, d in sorted(children.items())]
    rest = listing_table(i for _, i in small)
    rest = rest.add_column(0, "root", pa.array([r for r, _ in small], pa.string()))
    return (shards, nxt, found, Counter(r for r, _ in small)), rest


def _write_chunk(shard: Shard, chunk: Sequence[Item], chunk_uri: str, *, s3_endpoint, retries: int) -> Shard:
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
                  id=shard_id("listing", root, root, 0, len(items), storage.digest_parts(*(i.source for i in items), n=40)))
    return _write_chunk(shard, items, chunk_uri, s3_endpoint=s3_endpoint, retries=retries)


def _write_if_changed(uri: str, data: bytes, *, s3_endpoint: str | None, retries: int) -> None:
    fs, path = storage.filesystem(uri, s3_endpoint=s3_endpoint)
    try:
        if storage.retrying(lambda: fs.cat_file(path), retries) == data:
            return
    except FileNotFoundError:
        pass
    storage.write_bytes_atomic(uri, data, s3_endpoint=s3_endpoint, retries=retries)


def remove_stale_parts(output: str, keep: Iterable[str], *, s3_endpoint: str | None = None, retries: int = 5) -> None:
    """Remove ``part-*.parquet`` under OUTPUT that this listing did not write (an earlier listing's)."""
    fs, path = storage.filesystem(output, s3_endpoint=s3_endpoint)
    keep = set(keep)
    stale = [storage.to_uri(fs, p, output) for p in storage.retrying(lambda: fs.ls(path, detail=False), retries)
             if posixpath.basename(p).startswith("part-") and p.endswith(".parquet") and posixpath.basename(p) not in keep]
    for uri in stale:
        storage.remove(uri, s3_endpoint=s3_endpoint, retries=retries)
