"""The listing rules: what a folder, a tar or a manifest yields (:class:`Item`) and de-duplication (the output names
it keeps apart are :mod:`raycolor.paths`'); the rules themselves are stated in :mod:`raycolor.inputs`."""

from __future__ import annotations

import contextlib
import os
import posixpath
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from raycolor import paths, storage
from raycolor.config import DEFAULT_STORE, StorageConfig
from raycolor.core.suffixes import IMAGE_SUFFIXES, object_kind, suffix
from raycolor.storage import InputError

# Block size for walking tar headers on object stores: every header costs at most one request of
# this size (read-ahead), member data beyond it is skipped with a seek.
_TAR_BLOCK_SIZE = 4 * 2**20

LISTING_SCHEMA = pa.schema([("uri", pa.string()), ("relpath", pa.string()), ("source", pa.string())])

# The output-key rule new roots are written with (see the module docstring of raycolor.inputs, "Key rules"). A root
# keeps the rule its outputs were first written with, on every later run (OUTPUT/_roots/<id>.json says which; a
# record without it means 1): changing the rule never renames what an earlier run wrote.
#   1: a tar member is "<tar basename>/<member>"; a manifest entry with a remote scheme is "<path>" (bucket dropped)
#   2: a tar member is "<the tar's path below its root's base>/<member>"; a remote manifest entry is
#      "<bucket or host>/<path>"; a relative manifest entry gets the manifest's folder below its root's base
KEY_RULE = 2
KEY_RULES = (1, 2)

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
# Listing
# --------------------------------------------------------------------------------------------


def is_image(path: str) -> bool:
    return suffix(path) in IMAGE_SUFFIXES


# What a listing did not take, counted by suffix (never silently skipped; see raycolor.inputs, "Not taken").
NO_SUFFIX = "(none)"  # the key of files without a suffix ("README", ".DS_Store")
OTHER_SUFFIXES = "(other)"  # the key the rarest suffixes are folded into beyond NOT_TAKEN_KINDS
NOT_TAKEN_KINDS = 32  # distinct suffixes kept per count: a listing of odd names stays a small dict


def not_taken_key(path: str) -> str:
    """The key a file that is not taken is counted under: its lower-cased suffix, or :data:`NO_SUFFIX`."""
    return suffix(path) or NO_SUFFIX


def merge_not_taken(*counts: Mapping[str, int]) -> dict[str, int]:
    """Not-taken counts ({suffix: files}) added up, largest first (ties by suffix); beyond
    :data:`NOT_TAKEN_KINDS` distinct suffixes the rarest are folded into :data:`OTHER_SUFFIXES` (last), so the
    sum is always kept and the dict stays small however odd the names are. Zero counts are dropped."""
    total: Counter = Counter()
    for c in counts:
        total.update(c)
    ranked = sorted(((k, n) for k, n in total.items() if n > 0 and k != OTHER_SUFFIXES), key=lambda t: (-t[1], t[0]))
    other = total.get(OTHER_SUFFIXES, 0)
    if len(ranked) > NOT_TAKEN_KINDS:
        keep = NOT_TAKEN_KINDS - 1
        other += sum(n for _, n in ranked[keep:])
        ranked = ranked[:keep]
    out = dict(ranked)
    if other:
        out[OTHER_SUFFIXES] = other
    return out


def _files(n: int, key: str) -> str:
    s = "" if n == 1 else "s"
    if key == NO_SUFFIX:
        return f"{n:,} file{s} with no suffix"
    if key == OTHER_SUFFIXES:
        return f"{n:,} file{s} of other kinds"
    return f"{n:,} {key} file{s}"


def describe_not_taken(counts: Mapping[str, int], *, most: int = 5) -> str:
    """``{".psd": 3, ".heic": 1}`` -> ``"3 .psd files and 1 .heic file are"`` (largest first, at most ``most``
    kinds named, then the rest as one count), for an error that goes on "... not a kind raycolor reads"."""
    ranked = list(merge_not_taken(counts).items())
    parts = [_files(n, k) for k, n in ranked[:most]]
    rest = sum(n for _, n in ranked[most:])
    if rest:
        parts.append(f"{rest:,} more file{'' if rest == 1 else 's'}")
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    one = len(parts) == 1 and sum(n for _, n in ranked) == 1
    return f"{text} {'is' if one else 'are'}"


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


def list_items(inputs: Sequence[str], *, key_rule: int = KEY_RULE, store: StorageConfig = DEFAULT_STORE) -> list[Item]:
    """Every image named by ``inputs`` (folders, image files, .tar archives, .txt/.parquet manifests), keyed by
    the rule ``key_rule`` (:data:`KEY_RULE`, the current one, unless an OUTPUT's record says otherwise).

    See the module docstring for the rules. Raises :class:`InputError` for an input that does not
    exist, cannot be read, is not a supported kind, or yields no image.
    """
    if isinstance(inputs, str):
        inputs = [inputs]
    if not inputs:
        raise InputError("no inputs given")
    items: list[Item] = []
    for uri in inputs:
        items.extend(_list_one(uri, key_rule=_check_rule(key_rule), store=store))
    return _dedupe(items)


def input_kind(path: str, info: Mapping, uri: str) -> str:
    """What the input ``uri`` (at ``path``, whose ``info`` its filesystem gave) is: "folder", "tar", "parquet",
    "txt" or "image". The one classifier: list_items and shards.classify both ask it; anything else is an
    InputError naming what is taken."""
    if info.get("type") == "directory":
        return "folder"
    kind = object_kind(path)
    if kind:
        return kind
    if is_image(path):
        return "image"
    raise InputError(
        f"not an image, .tar archive or .txt/.parquet manifest: {storage.redact(uri)} "
        f"(images: {', '.join(sorted(IMAGE_SUFFIXES))})"
    )


def image_item(fs: fsspec.AbstractFileSystem, path: str, uri: str) -> Item:
    """The item of an input that is one image file."""
    source = storage.to_uri(fs, path, uri)
    return Item(source=source, relpath=storage.sanitize_relpath(posixpath.basename(path)), uri=source)


def _list_one(uri: str, *, key_rule: int, store: StorageConfig) -> list[Item]:
    if not isinstance(uri, str) or not uri.strip():
        raise InputError(f"empty input URI: {uri!r}")
    uri = uri.strip()
    fs, path = storage.filesystem(uri, store=store)
    try:
        info = storage.retrying(lambda: fs.info(path), store.retries)
    except Exception as exc:
        raise input_error("read", uri, exc) from exc
    kind = input_kind(path, info, uri)
    if kind == "folder":
        return _list_folder(fs, path, uri, store=store)
    if kind == "image":
        return [image_item(fs, path, uri)]
    with _reading_input(uri):
        if kind == "tar":
            return _list_tar(fs, path, uri, key_rule=key_rule)[0]
        return _list_manifest(fs, path, uri, suffix(path), key_rule=key_rule)


def _list_folder(fs: fsspec.AbstractFileSystem, path: str, uri: str, *, store: StorageConfig) -> list[Item]:
    try:
        found = storage.retrying(lambda: fs.find(path, withdirs=False), store.retries)
    except Exception as exc:
        raise input_error("list", uri, exc) from exc
    rows, _, not_taken = images_below(fs, path, uri, found)
    if not rows:
        raise no_images(uri, not_taken)
    return rows


def images_below(fs: fsspec.AbstractFileSystem, folder: str, like: str, paths: Iterable[str], *,
                 exclude: Iterable[str] = ()) -> tuple[list[Item], int, dict[str, int]]:
    """The folder rule, stated once (:func:`list_items`, and the listing tasks, :func:`list_group`): the images
    among ``paths`` (files listed below ``folder``, both paths on ``fs``): image suffixes only (any case),
    ``relpath`` = the path relative to ``folder``, sanitised; ``source`` = ``uri`` = the file's URI (scheme
    as in ``like``, the URI the user gave); sorted by (relpath, source). Images in or under an ``exclude``
    folder (paths on ``fs``) strictly inside ``folder`` are left out. Returns (items, images found,
    excluded ones too, the files below ``folder`` not taken: {suffix: files} (:func:`merge_not_taken`), those
    in an ``exclude`` folder left to its own listing)."""
    local = isinstance(fs, LocalFileSystem)
    prefix = (folder.replace(os.sep, "/") if local else folder).rstrip("/") + "/"
    skip = [x.rstrip("/") for x in exclude if x.startswith(prefix)]
    items, images, others = [], 0, Counter()
    for p in (p.replace(os.sep, "/") if local else p for p in paths):
        if not p.startswith(prefix):
            continue
        image = is_image(p)
        images += image
        if any(p == x or p.startswith(x + "/") for x in skip):
            continue  # another root's, which lists (and counts) it
        if not image:
            others[not_taken_key(p)] += 1
            continue
        source = storage.to_uri(fs, p, like)
        items.append(Item(source=source, relpath=storage.sanitize_relpath(p[len(prefix):]), uri=source))
    items.sort(key=lambda it: (it.relpath, it.source))
    return items, images, merge_not_taken(others)


def no_images(uri: str, not_taken: Mapping[str, int] | None = None) -> InputError:
    """The error for a folder that holds no image; ``not_taken``: its files, counted by suffix
    (:func:`images_below`), named in the error: a folder of a kind raycolor does not read says which."""
    reads = ", ".join(sorted(IMAGE_SUFFIXES))
    if not_taken and any(not_taken.values()):
        return InputError(f"no images found under {storage.redact(uri)}: {describe_not_taken(not_taken)} not a kind "
                          f"raycolor reads (it reads {reads})")
    return InputError(f"no images found under {storage.redact(uri)} (looked for {reads})")


def _glob_base(root: str) -> str:
    """The folder a glob root starts from: its components before the first one holding a wildcard
    (``/d/*/b.tar`` -> ``/d``, ``s3://b/in/x-*.tar`` -> ``s3://b/in``, ``s3://*/x.tar`` -> ``s3://``)."""
    head, sep, rest = root.partition("://") if "://" in root else ("", "", root)
    parts = rest.split("/")
    n = next((i for i, p in enumerate(parts) if any(c in p for c in "*?[")), len(parts))
    return head + sep + "/".join(parts[:n])


def below_base(uri: str, root: str) -> str | None:
    """``uri`` (a tar or manifest object of the root ``root``, both as planning spells them) relative to the
    root's base: the glob's non-wildcard folder for a glob root, else the root itself (a folder of tars or
    manifests). None when ``uri`` is not below it: the object was given directly (``uri == root``)."""
    base = _glob_base(root) if any(c in root for c in "*?[") else root
    if base.endswith("://"):
        rest = uri.split("://", 1)[1] if uri.startswith(base) else ""
    else:
        base = base.rstrip("/") + "/"
        rest = uri[len(base):] if uri.startswith(base) else ""
    return rest.strip("/") or None


def _check_rule(key_rule: int) -> int:
    if key_rule not in KEY_RULES:
        raise ValueError(f"unknown output key rule {key_rule!r} (this raycolor knows {', '.join(map(str, KEY_RULES))}); "
                         "the OUTPUT was written by a newer raycolor")
    return key_rule


def tar_prefix(tar_uri: str, root: str | None, key_rule: int = KEY_RULE) -> str:
    """The folder a tar's members are keyed under (sanitised): rule 1, the tar's basename; rule 2, the tar's
    path below its root's base (:func:`below_base`), or its basename when the tar is the root itself."""
    rel = below_base(tar_uri, root) if root and _check_rule(key_rule) >= 2 else None
    return storage.sanitize_relpath(rel or posixpath.basename(tar_uri.split("://", 1)[-1].rstrip("/")))


def _list_tar(fs: fsspec.AbstractFileSystem, path: str, uri: str, *, root: str | None = None,
              key_rule: int = KEY_RULE) -> tuple[list[Item], dict[str, int]]:
    """The tar's image members and the members it did not take: {suffix: members} (every member but a
    directory: links, devices and sparse members too, under their own suffix)."""
    tar_uri = storage.to_uri(fs, path, uri)
    base = tar_prefix(tar_uri, root, key_rule)
    rows = []
    others: Counter = Counter()
    open_kwargs = {} if isinstance(fs, LocalFileSystem) else {"block_size": _TAR_BLOCK_SIZE, "cache_type": "readahead"}
    with fs.open(path, "rb", **open_kwargs) as f:
        # "r:" (seekable, uncompressed): tarfile reads each header and seeks over member data, so
        # large members are never downloaded while listing.
        with tarfile.open(fileobj=f, mode="r:") as tar:
            for member in tar:
                if not member.isfile() or member.issparse() or not is_image(member.name):
                    if not member.isdir():
                        others[not_taken_key(member.name)] += 1
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
        reads = ", ".join(sorted(IMAGE_SUFFIXES))
        if others:
            raise InputError(f"no image members in tar archive {storage.redact(uri)}: {describe_not_taken(others)} not a "
                             f"kind raycolor reads (it reads {reads})")
        raise InputError(f"no image members in tar archive {storage.redact(uri)} (looked for {reads})")
    return rows, merge_not_taken(others)


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

    try:
        with fs.open(path, "rb") as f:
            table = pq.read_table(f, columns=["uri"])
    except (KeyError, pa.ArrowException) as exc:
        raise InputError(f"bad manifest {storage.redact(uri)}: needs a parquet file with a 'uri' column ({storage.redact(exc, uri)})") from exc
    column = table.column("uri")
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise InputError(f"bad manifest {storage.redact(uri)}: column 'uri' must hold strings, not {column.type}")
    return [v.strip() for v in column.to_pylist() if v is not None and v.strip()]


def _manifest_relpath(entry: str, key_rule: int = KEY_RULE, folder: str = "") -> str:
    """The relpath of a manifest entry (the rule: :mod:`raycolor.inputs`). ``folder``: for a relative entry
    under rule 2, the manifest's folder below its root's base ("" for a manifest given directly). Rule 2 keys
    the entry as it may be stored (:func:`storage.stored_uri`: never a presigned URL's query)."""
    if key_rule >= 2:
        entry = storage.stored_uri(entry)
    proto = storage.protocol(entry)
    if proto is None:
        if folder and not entry.startswith(("/", "~")) and not storage.DRIVE_RE.match(entry):
            return storage.sanitize_relpath(posixpath.join(folder, entry))
        return storage.sanitize_relpath(entry)
    rest = entry.split("://", 1)[1]
    if proto not in storage.LOCAL_PROTOCOLS:
        authority, _, path = rest.lstrip("/").partition("/")
        if key_rule >= 2:  # the bucket or host, never a userinfo (credentials) before it
            rest = posixpath.join(authority.rpartition("@")[2], path)
        else:
            rest = path
    return storage.sanitize_relpath(rest)


def _list_manifest(fs: fsspec.AbstractFileSystem, path: str, uri: str, suffix: str, *, key_rule: int) -> list[Item]:
    entries = _manifest_entries(fs, path, uri, suffix)
    if not entries:
        raise InputError(f"empty manifest (no URIs): {storage.redact(uri)}")
    return _manifest_items(fs, path, uri, entries, key_rule=key_rule)


def manifest_items(uri: str, entries: Sequence[str], *, root: str | None = None, key_rule: int = KEY_RULE,
                   store: StorageConfig = DEFAULT_STORE) -> list[Item]:
    """Items for ``entries`` (lines or ``uri`` values) of the manifest at ``uri``: the manifest rules of
    :func:`list_items` (relative entries resolve next to the manifest; relpath rule ``key_rule``) applied to a
    part of a manifest, as a shard task reads it. ``root``: the input the manifest belongs to (a glob or a
    folder of manifests; default: the manifest itself). Not de-duplicated."""
    fs, path = storage.filesystem(uri, store=store)
    return _manifest_items(fs, path, uri, [e.strip() for e in entries if e and e.strip()], root=root, key_rule=key_rule)


def list_tar(uri: str, *, root: str | None = None, key_rule: int = KEY_RULE, store: StorageConfig = DEFAULT_STORE) -> list[Item]:
    """The image members of the tar archive at ``uri`` (header walk only), as :func:`list_items` lists them.
    ``root``: the input the tar belongs to (a glob or a folder of tars; default: the tar itself), whose base
    the members' relpaths start from under rule 2 (:func:`tar_prefix`)."""
    return tar_members(uri, root=root, key_rule=key_rule, store=store)[0]


def tar_members(uri: str, *, root: str | None = None, key_rule: int = KEY_RULE, store: StorageConfig = DEFAULT_STORE
                ) -> tuple[list[Item], dict[str, int]]:
    """:func:`list_tar`, and the members it did not take, counted by suffix (the same header walk): every
    member but a directory, links, devices and sparse members included."""
    fs, path = storage.filesystem(uri, store=store)
    with _reading_input(uri):
        return _list_tar(fs, path, uri, root=root, key_rule=key_rule)


def dedupe(items: Iterable[Item]) -> list[Item]:
    """Public name of the de-duplication / collision-renaming rule (see the module docstring)."""
    return _dedupe(items)


def _manifest_items(fs: fsspec.AbstractFileSystem, path: str, uri: str, entries: Sequence[str], *,
                    root: str | None = None, key_rule: int = KEY_RULE) -> list[Item]:
    manifest_dir = posixpath.dirname(path) if not isinstance(fs, LocalFileSystem) else os.path.dirname(path)
    below = below_base(storage.to_uri(fs, path, uri), root) if root and _check_rule(key_rule) >= 2 else None
    folder = posixpath.dirname(below) if below else ""  # relative entries of a manifest inside a glob/folder root
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
        # the source is stored (manifest rows, error text): never a presigned URL's query; the read keeps it
        rows.append(Item(source=storage.stored_uri(target), relpath=_manifest_relpath(entry, key_rule, folder), uri=target))
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
        stem, ext = paths.split_ext(item.relpath)
        key = stem.lower()
        if key in taken:
            salt = item.source
            while True:
                new_stem = paths.disambiguated(stem, salt)
                if new_stem.lower() not in taken:
                    break
                salt += "#"  # astronomically rare: keep deterministic
            stem, key = new_stem, new_stem.lower()
            item = Item(source=item.source, relpath=stem + ext, uri=item.uri, offset=item.offset, size=item.size)
        taken.add(key)
        out.append(item)
    return out
