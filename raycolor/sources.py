"""Where images come from and where results go: URIs, listings, tar members, atomic writes.

Pure fsspec/pyarrow: this module never imports ray or torch, so the Ray pipelines (and their
workers) can call it cheaply.

Inputs accepted by :func:`list_items` (any mix, in any number):

* a folder -- local path, ``file://``, ``s3://bucket/prefix`` (or any installed fsspec protocol
  such as ``gs://`` / ``az://``): recursive listing of the image files below it
  (suffixes in :data:`IMAGE_SUFFIXES`, case-insensitive); ``relpath`` is the path relative to the
  folder. Tars found inside a folder are *not* expanded: pass them explicitly.
* a single image file: one item, ``relpath`` = its basename.
* a ``.tar`` (uncompressed) archive: its regular image members are listed by reading the tar
  headers only (seekable, no extraction, nothing written to disk). Each member becomes an item
  whose ``uri`` is the tar itself plus ``offset``/``size``, so :func:`read_item` does one range
  read. ``relpath`` = ``"<tar basename>/<member name>"``, sanitised. Links, devices, directories
  and sparse members are skipped.
* a manifest -- ``.txt`` (one URI per line; blank lines and ``#`` comments ignored) or
  ``.parquet`` with a string ``uri`` column. Entries are taken as image files *as given*: no
  listing and no existence check is done (that is the point of a manifest on a huge prefix); an
  entry that cannot be read or decoded becomes an error row downstream.
  Relative entries are resolved against the manifest's own folder. An entry with credentials in
  its URI (``s3://key:secret@b/x.jpg``) is listed with them replaced by ``***`` and fails to
  read: credentials in URIs are not supported anywhere (see :func:`filesystem`).
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
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import posixpath
import random
import re
import tarfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

from raycolor.config import DEFAULT_IO_CONCURRENCY
from raycolor.suffixes import IMAGE_SUFFIXES, MANIFEST_SUFFIXES, TAR_SUFFIXES, suffix

__all__ = [
    "IMAGE_SUFFIXES",  # these three and suffix(): raycolor.suffixes, the one definition
    "MANIFEST_SUFFIXES",
    "TAR_SUFFIXES",
    "InputError",
    "Item",
    "digest",
    "exists",
    "filesystem",
    "is_local",
    "join_uri",
    "images_below",
    "list_items",
    "no_images",
    "output_key",
    "read_item",
    "remove",
    "read_items",
    "sanitize_relpath",
    "txt_entries",
    "write_bytes_atomic",
    "write_many",
]

_LOCAL_PROTOCOLS = frozenset({"file", "local"})
_S3_PROTOCOLS = frozenset({"s3", "s3a"})

# Backoff between attempts: base * 2**attempt (with jitter), capped. Module-level so tests can shrink it.
_BACKOFF_BASE_S = 0.2
_BACKOFF_CAP_S = 10.0
# Block size for walking tar headers on object stores: every header costs at most one request of
# this size (read-ahead), member data beyond it is skipped with a seek.
_TAR_BLOCK_SIZE = 4 * 2**20
# HTTP connections per S3 filesystem instance (one per process and endpoint): above any sensible
# io_concurrency, so that the requests read_items/write_many put in flight never wait for a connection.
_S3_MAX_POOL_CONNECTIONS = 128

T = TypeVar("T")


class InputError(ValueError):
    """An input cannot be used: unknown/unreachable URI, empty listing, bad manifest.

    The message is one line and never contains credentials.
    """


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
# Paths
# --------------------------------------------------------------------------------------------

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_SURROGATE_RE = re.compile(r"[\ud800-\udfff]")
_DRIVE_RE = re.compile(r"^[A-Za-z]:")


def _components(name: str) -> list[str]:
    name = _CONTROL_RE.sub("", str(name))
    name = _SURROGATE_RE.sub("\ufffd", name)
    name = name.replace("\\", "/")
    parts = [p for p in name.split("/") if p not in ("", ".", "..")]
    # A drive prefix only matters (Windows-absolute / drive-relative) on the first component;
    # loop because stripping "C:" may expose another one ("C:D:x").
    while parts and _DRIVE_RE.match(parts[0]):
        rest = parts[0][2:]
        if rest in ("", ".", ".."):
            parts.pop(0)
        else:
            parts[0] = rest
    return parts


def sanitize_relpath(name: str) -> str:
    """A safe relative POSIX path: never absolute, never escapes its base, never empty.

    Backslashes become '/', control characters are removed, empty / '.' / '..' components are
    dropped (not resolved), a leading drive letter ('C:') is dropped. Spaces and non-ASCII letters
    are kept (undecodable bytes, i.e. lone surrogates, become U+FFFD). Empty -> "unnamed".
    """
    return "/".join(_components(name)) or "unnamed"


def _split_ext(relpath: str) -> tuple[str, str]:
    head, base = posixpath.split(relpath)
    stem, ext = posixpath.splitext(base)  # ".hidden" -> (".hidden", "")
    return posixpath.join(head, stem) if head else stem, ext


def output_key(relpath: str, ext: str) -> str:
    """``relpath`` (sanitised) with its extension replaced by ``ext``: ("a/b/x.JPG", ".png") -> "a/b/x.png"."""
    if ext and not ext.startswith("."):
        ext = "." + ext
    stem, _ = _split_ext(sanitize_relpath(relpath))
    return stem + ext


def join_uri(base: str, *parts: str) -> str:
    """Join relative ``parts`` under ``base`` (a URI or local path); the result always stays under ``base``.

    Every part is sanitised (see :func:`sanitize_relpath`), so '..', absolute parts, backslashes
    and drive letters cannot escape. Empty parts are ignored.
    """
    rel = [c for p in parts if p for c in _components(p)]
    if not rel:
        return base
    if base.endswith("://"):  # "s3://" + "bucket/key"
        return base + "/".join(rel)
    trimmed = base.rstrip("/")
    if not trimmed:  # base "/" (or "")
        return ("/" if base.startswith("/") else "") + "/".join(rel)
    return trimmed + "/" + "/".join(rel)


# --------------------------------------------------------------------------------------------
# Filesystems
# --------------------------------------------------------------------------------------------


def _protocol(uri: str) -> str | None:
    if "://" not in uri:
        return None
    proto = uri.split("://", 1)[0].lower()
    return proto or None


def _redact(text: object, uri: str | None = None) -> str:
    """One line, no userinfo in URIs, no credential values from the environment.

    ``uri``: the URI the text is about; its userinfo (if any) is scrubbed wherever it appears,
    e.g. when a library echoes the path back without the scheme.
    """
    text = str(text)
    if uri and "://" in uri:
        userinfo = uri.split("://", 1)[1].split("/", 1)[0].rpartition("@")[0]
        if userinfo:
            text = text.replace(userinfo, "***")
    text = re.sub(r"(://)[^/@\s]*@", r"\1***@", text)
    for var in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ACCESS_KEY_ID"):
        value = os.environ.get(var)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return " ".join(text.split())


def _userinfo(uri: str) -> str:
    """The ``user[:password]`` part of a URI's authority, '' if none."""
    if "://" not in uri:
        return ""
    return uri.split("://", 1)[1].split("/", 1)[0].rpartition("@")[0]


def _has_credentials(uri: str) -> bool:
    """Whether ``uri`` carries credentials: any userinfo on s3:// and http(s)://, ``user:password@`` on
    any other remote scheme (``abfs://container@account...`` names a container, not a credential)."""
    info = _userinfo(uri)
    proto = _protocol(uri)
    if not info or proto is None or proto in _LOCAL_PROTOCOLS:
        return False
    return proto in _S3_PROTOCOLS or proto in ("http", "https") or ":" in info


def _without_credentials(uri: str) -> str:
    """``uri`` with its userinfo replaced by ``***`` (the rest of the URI kept byte for byte)."""
    scheme, rest = uri.split("://", 1)
    authority, sep, path = rest.partition("/")
    return f"{scheme}://***@{authority.rpartition('@')[2]}{sep}{path}"


def redact(text: object, uri: str | None = None) -> str:
    """Public name of the scrubber: use it on any text built from an exception before it is shown or stored."""
    return _redact(text, uri)


def _s3_endpoint(s3_endpoint: str | None) -> str | None:
    return s3_endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def filesystem(uri: str, *, s3_endpoint: str | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(fs, path) for ``uri``: local paths, ``file://``, ``s3://`` and any installed fsspec protocol.

    For S3 the endpoint is ``s3_endpoint`` or else ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``;
    credentials come from the usual AWS chain. A URI that carries credentials (see
    :func:`_has_credentials`) raises :class:`InputError`. Directory-listing caching is disabled so that a
    listing or ``exists`` never answers from a stale cache. Instances are cached by fsspec (per
    process and arguments).
    """
    if not isinstance(uri, str) or not uri.strip():
        raise InputError(f"empty URI: {uri!r}")
    proto = _protocol(uri)
    if proto is None or proto in _LOCAL_PROTOCOLS:
        fs = LocalFileSystem()
        raw = uri.split("://", 1)[1] if proto else uri
        path = os.path.abspath(os.path.expanduser(raw)) if raw else os.sep
        return fs, path
    if _has_credentials(uri):
        # refused before any request, so no library error (or traceback) can echo them
        raise InputError(
            f"credentials in URIs are not supported (use the AWS environment/profile): {_redact(uri)}"
        )
    if proto in _S3_PROTOCOLS:
        try:
            import s3fs
        except ImportError as exc:  # pragma: no cover - s3fs is a dependency
            raise InputError(f"s3fs is required for {proto}:// URIs") from exc
        # Per-item reads/writes retry in our retrying (StorageConfig.retries, exponential backoff). Left at
        # their defaults, s3fs (5) x botocore (5) would multiply each of our attempts into 25 requests; s3fs's
        # loop is turned off and botocore keeps 3 attempts, which still covers the calls we do not wrap
        # (listings, manifests, checkpoints, Ray Train's own uploads) against a brief blip.
        kwargs: dict = {
            "use_listings_cache": False,
            "config_kwargs": {"retries": {"max_attempts": 3, "mode": "standard"}},
        }
        endpoint = _s3_endpoint(s3_endpoint)
        if endpoint:
            kwargs["endpoint_url"] = endpoint
        # aiobotocore's connection pool defaults to 10 connections per filesystem (per process): fewer than the
        # requests read_items/write_many keep in flight, which would queue behind it
        kwargs["config_kwargs"]["max_pool_connections"] = _S3_MAX_POOL_CONNECTIONS
        fs = s3fs.S3FileSystem(**kwargs)
        fs.retries = 1  # s3fs has no constructor argument for its retry loop (a class attribute, 5)
        path = uri.split("://", 1)[1].strip("/")
        return fs, path
    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except ImportError as exc:
        raise InputError(f"no filesystem installed for {proto}:// ({_redact(exc, uri)}): {_redact(uri)}") from exc
    except ValueError as exc:
        raise InputError(f"unknown URI scheme {proto}://: {_redact(uri)}") from exc
    return fs, path


def absolute(uri: str) -> str:
    """``uri`` as every process of a cluster job can use it: a local path made absolute (Ray workers run in
    another working directory; ``~`` expanded, ``file://`` dropped), a remote URI without trailing slashes."""
    uri = uri.strip()
    if is_local(uri):
        return filesystem(uri)[1]
    return uri.rstrip("/")


def is_local(uri: str) -> bool:
    """Whether ``uri`` names this machine's own filesystem (a plain path or ``file://``)."""
    return _protocol(uri) in (None, *_LOCAL_PROTOCOLS)


def to_uri(fs: fsspec.AbstractFileSystem, path: str, like: str) -> str:
    """User-visible URI for ``path`` on ``fs``; ``like`` is the URI the user gave (keeps its scheme)."""
    if isinstance(fs, LocalFileSystem):
        return path
    proto = _protocol(like)
    if proto in _S3_PROTOCOLS:
        return f"{proto}://{path}"
    return fs.unstrip_protocol(path)


# --------------------------------------------------------------------------------------------
# Retries
# --------------------------------------------------------------------------------------------


class _ShortRead(OSError):
    """The object ended before the requested range: permanent (truncated tar, changed object)."""


_PERMANENT = (
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    FileExistsError,
    _ShortRead,
    InputError,
)
_TRANSIENT_ERRNOS = {
    errno.EIO,
    errno.EAGAIN,
    errno.EBUSY,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.ECONNREFUSED,
    errno.ETIMEDOUT,
    errno.EPIPE,
    errno.ENETUNREACH,
    errno.EHOSTUNREACH,
}
_TRANSIENT_CODES = {
    "SlowDown",
    "InternalError",
    "ServiceUnavailable",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "Throttling",
    "ThrottlingException",
    "TooManyRequests",
    "TooManyRequestsException",
    "RequestLimitExceeded",
}
# Network error families of botocore/aiohttp/urllib3/requests, matched by class name so that none
# of those packages has to be importable here.
_TRANSIENT_CLASS_NAMES = {
    "EndpointConnectionError",
    "ConnectionClosedError",
    "ReadTimeoutError",
    "ConnectTimeoutError",
    "ResponseStreamingError",
    "IncompleteReadError",
    "HTTPClientError",
    "ClientConnectionError",
    "ClientConnectorError",
    "ClientOSError",
    "ClientPayloadError",
    "ServerDisconnectedError",
    "ServerTimeoutError",
    "ProtocolError",
    "IncompleteRead",
}


def _status_of(exc: BaseException) -> tuple[int | None, str | None]:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        code = (response.get("Error") or {}).get("Code")
        return (int(status) if status else None), code
    status = getattr(exc, "status", None) or getattr(exc, "status_code", None)
    return (status if isinstance(status, int) else None), None


def _is_transient(exc: BaseException) -> bool:
    """5xx / throttling / connection reset / timeouts: retry. Not found, permission, bad input: don't."""
    seen: set[int] = set()
    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    if isinstance(exc, _PERMANENT):
        return False
    for e in chain:
        if isinstance(e, _PERMANENT) and e is not exc:
            # e.g. s3fs raising OSError from a NoSuchKey: the root cause decides
            return False
        status, code = _status_of(e)
        if (status is not None and (status >= 500 or status in (408, 429))) or code in _TRANSIENT_CODES:
            return True
        if isinstance(e, (ConnectionError, TimeoutError)):
            return True
        if any(c.__name__ in _TRANSIENT_CLASS_NAMES for c in type(e).__mro__):
            return True
        if isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNOS:
            return True
        msg = str(e)
        if re.search(r"\b(50[0-9]|SlowDown|ServiceUnavailable|InternalError|Reduce your request rate)\b", msg):
            return True
    return False


def retrying(fn: Callable[[], T], retries: int) -> T:
    attempts = max(1, int(retries))
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if attempt + 1 >= attempts or not _is_transient(exc):
                raise
            delay = min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * (2**attempt))
            time.sleep(delay * (0.5 + random.random() / 2))
    raise AssertionError("unreachable")  # pragma: no cover


# --------------------------------------------------------------------------------------------
# Reading and writing
# --------------------------------------------------------------------------------------------


def read_item(item: Item, *, s3_endpoint: str | None = None, retries: int = 5) -> bytes:
    """The bytes of ``item``: the whole object, or one range read for a tar member.

    Retries (``retries`` attempts in all, exponential backoff) on transient errors only; a missing
    object or a permission error is raised at once. A range that the object cannot fill raises
    ``OSError`` (truncated archive) without retrying.
    """
    fs, path = filesystem(item.uri, s3_endpoint=s3_endpoint)
    if item.size == 0:
        return b""
    # s3fs answers a whole-object cat_file with a HEAD (for the size) and then the GET, unless its
    # chunked download is off: one round trip per image instead of two (objects of any size, one GET)
    whole = {"max_concurrency": 1} if _protocol(item.uri) in _S3_PROTOCOLS else {}

    def once() -> bytes:
        if item.size < 0:
            if item.offset:
                return fs.cat_file(path, start=item.offset)
            return fs.cat_file(path, **whole)
        data = fs.cat_file(path, start=item.offset, end=item.offset + item.size)
        if len(data) != item.size:
            raise _ShortRead(
                errno.EIO,
                f"short read: got {len(data)} of {item.size} bytes at offset {item.offset} of {_redact(item.uri)}",
            )
        return data

    return retrying(once, retries)


def write_bytes_atomic(
    uri: str, data: bytes, *, s3_endpoint: str | None = None, retries: int = 5, tmp_dir: str | None = None
) -> None:
    """Write ``data`` to ``uri`` so that readers see either the old object or the whole new one.

    Local: a temp file, then ``os.replace`` (the temp file is removed on failure; a process killed in
    between leaves it). The temp file goes in ``tmp_dir`` when given (a folder on the same file system that
    its owner removes later: colorize passes the shard's spool folder, so whatever a killed write leaves
    goes with the spool), else next to the target. Object stores: one single PUT (``fs.pipe_file``), which
    is atomic there; ``tmp_dir`` is not used.
    """
    fs, path = filesystem(uri, s3_endpoint=s3_endpoint)
    data = bytes(data) if not isinstance(data, bytes) else data
    if isinstance(fs, LocalFileSystem):
        tmp_folder = filesystem(tmp_dir)[1] if tmp_dir and is_local(tmp_dir) else None
        retrying(lambda: _write_local_atomic(path, data, tmp_folder), retries)
    else:
        retrying(lambda: fs.pipe_file(path, data), retries)


def _bounded_map(fn: Callable[[T], object], args: list[T], max_in_flight: int) -> list:
    """[fn(a) for a in args], at most ``max_in_flight`` calls running at once (threads), same order."""
    workers = max(1, min(int(max_in_flight), len(args)))
    if workers == 1:
        return [fn(a) for a in args]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="raycolor-io") as pool:
        return list(pool.map(fn, args))


def read_items(
    items: Sequence[Item],
    *,
    s3_endpoint: str | None = None,
    retries: int = 5,
    max_in_flight: int = DEFAULT_IO_CONCURRENCY,
) -> list[bytes | Exception]:
    """The bytes of every item, ``max_in_flight`` reads at a time; one entry per item, in order.

    Each entry is what :func:`read_item` returns, or the exception it raised after its own retries
    (transient errors retried with backoff per item, permanent ones at once): one failing item never
    fails the others. Tar members stay single range reads. Memory: the caller passes one batch, and
    holds its bytes; at most ``max_in_flight`` requests are open at once.

    Why threads over :func:`read_item` rather than s3fs's batch ``cat``/``cat_ranges``: the requests
    still run concurrently on s3fs's one event loop (each thread waits on its own coroutine), per-item
    retries and range reads stay exactly as in :func:`read_item`, and any fsspec filesystem (local
    disk included) gets the same code path. Measured in docs/performance.md.
    """

    def one(item: Item) -> bytes | Exception:
        try:
            return read_item(item, s3_endpoint=s3_endpoint, retries=retries)
        except Exception as exc:  # the caller turns it into this item's error row
            return exc

    return _bounded_map(one, list(items), max_in_flight)


def write_many(
    pairs: Sequence[tuple[str, bytes]],
    *,
    s3_endpoint: str | None = None,
    retries: int = 5,
    max_in_flight: int = DEFAULT_IO_CONCURRENCY,
    tmp_dirs: Sequence[str | None] | None = None,
) -> list[Exception | None]:
    """:func:`write_bytes_atomic` for every ``(uri, data)``, ``max_in_flight`` at a time; ``tmp_dirs``: each
    write's ``tmp_dir``.

    One entry per pair, in order: ``None`` when written, else the exception after that write's
    retries. Every write stays atomic (local: temp file + rename; object stores: one PUT). Pairs
    should name distinct URIs: two writes of one URI race and either may win.
    """
    tmps = list(tmp_dirs) if tmp_dirs is not None else [None] * len(pairs)

    def one(job: tuple[tuple[str, bytes], str | None]) -> Exception | None:
        (uri, data), tmp_dir = job
        try:
            write_bytes_atomic(uri, data, s3_endpoint=s3_endpoint, retries=retries, tmp_dir=tmp_dir)
        except Exception as exc:
            return exc
        return None

    return _bounded_map(one, list(zip(pairs, tmps)), max_in_flight)


def _write_local_atomic(path: str, data: bytes, tmp_folder: str | None = None) -> None:
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    if tmp_folder:
        os.makedirs(tmp_folder, exist_ok=True)
    tmp = os.path.join(tmp_folder or folder, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.tmp")
    # os.open with 0o666 honours the umask (mkstemp would force 0600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if tmp_folder and isinstance(e, OSError) and e.errno == errno.EXDEV:  # tmp_folder on another mount
            return _write_local_atomic(path, data)
        raise


def remove(uri: str, *, s3_endpoint: str | None = None, retries: int = 5) -> None:
    """Delete the object / file / folder ``uri`` (recursively) if it exists; retried like every other call."""
    fs, path = filesystem(uri, s3_endpoint=s3_endpoint)

    def once() -> None:
        try:
            fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass

    retrying(once, retries)


def exists(uri: str, *, s3_endpoint: str | None = None) -> bool:
    """Whether the object/file/folder ``uri`` exists (fresh answer: no listing cache)."""
    fs, path = filesystem(uri, s3_endpoint=s3_endpoint)
    return bool(retrying(lambda: fs.exists(path), 3))


# --------------------------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------------------------


def is_image(path: str) -> bool:
    return suffix(path) in IMAGE_SUFFIXES


def input_error(action: str, uri: str, exc: BaseException) -> InputError:
    if isinstance(exc, InputError):
        return exc
    if isinstance(exc, FileNotFoundError):
        return InputError(f"input not found: {_redact(uri)}")
    if isinstance(exc, PermissionError):
        return InputError(f"input not readable (permission denied): {_redact(uri)}")
    detail = _redact(f"{type(exc).__name__}: {exc}", uri)
    if len(detail) > 300:
        detail = detail[:297] + "..."
    return InputError(f"cannot {action} input {_redact(uri)} ({detail})")


@contextlib.contextmanager
def _reading_input(uri: str) -> Iterator[None]:
    """What reading a tar's headers or a manifest can raise, as one-line InputErrors."""
    try:
        yield
    except (tarfile.TarError, EOFError) as exc:
        raise InputError(f"not a valid tar archive: {_redact(uri)} ({_redact(exc, uri)})") from exc
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
    fs, path = filesystem(uri, s3_endpoint=s3_endpoint)
    try:
        info = retrying(lambda: fs.info(path), 3)
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
        source = to_uri(fs, path, uri)
        return [Item(source=source, relpath=sanitize_relpath(posixpath.basename(path)), uri=source)]
    raise InputError(
        f"not an image, .tar archive or .txt/.parquet manifest: {_redact(uri)} "
        f"(images: {', '.join(sorted(IMAGE_SUFFIXES))})"
    )


def _list_folder(fs: fsspec.AbstractFileSystem, path: str, uri: str) -> list[Item]:
    try:
        found = retrying(lambda: fs.find(path, withdirs=False), 3)
    except Exception as exc:
        raise input_error("list", uri, exc) from exc
    rows, _ = images_below(fs, path, uri, found)
    if not rows:
        raise no_images(uri)
    return rows


def images_below(fs: fsspec.AbstractFileSystem, folder: str, like: str, paths: Iterable[str], *,
                 exclude: Iterable[str] = ()) -> tuple[list[Item], int]:
    """The folder rule, stated once (:func:`list_items`, and the listing tasks of ``ledger``): the images
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
        source = to_uri(fs, p, like)
        items.append(Item(source=source, relpath=sanitize_relpath(p[len(prefix):]), uri=source))
    items.sort(key=lambda it: (it.relpath, it.source))
    return items, len(images)


def no_images(uri: str) -> InputError:
    """The error for a folder that holds no image."""
    return InputError(f"no images found under {_redact(uri)} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")


def _list_tar(fs: fsspec.AbstractFileSystem, path: str, uri: str) -> list[Item]:
    tar_uri = to_uri(fs, path, uri)
    base = sanitize_relpath(posixpath.basename(path))
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
                        relpath=f"{base}/{sanitize_relpath(member.name)}",
                        uri=tar_uri,
                        offset=member.offset_data,
                        size=member.size,
                    )
                )
    if not rows:
        raise InputError(
            f"no image members in tar archive {_redact(uri)} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
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
            raise InputError(f"bad manifest {_redact(uri)}: not UTF-8 text (the line at byte {pos})") from exc
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
        raise InputError(f"bad manifest {_redact(uri)}: needs a parquet file with a 'uri' column ({_redact(exc, uri)})") from exc
    column = table.column("uri")
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise InputError(f"bad manifest {_redact(uri)}: column 'uri' must hold strings, not {column.type}")
    return [v.strip() for v in column.to_pylist() if v is not None and v.strip()]


def _manifest_relpath(entry: str) -> str:
    proto = _protocol(entry)
    if proto is None:
        return sanitize_relpath(entry)
    rest = entry.split("://", 1)[1]
    if proto not in _LOCAL_PROTOCOLS:
        rest = rest.lstrip("/").split("/", 1)[1] if "/" in rest.lstrip("/") else ""
    return sanitize_relpath(rest)


def _list_manifest(fs: fsspec.AbstractFileSystem, path: str, uri: str, suffix: str) -> list[Item]:
    entries = _manifest_entries(fs, path, uri, suffix)
    if not entries:
        raise InputError(f"empty manifest (no URIs): {_redact(uri)}")
    return _manifest_items(fs, path, uri, entries)


def manifest_items(uri: str, entries: Sequence[str], *, s3_endpoint: str | None = None) -> list[Item]:
    """Items for ``entries`` (lines or ``uri`` values) of the manifest at ``uri``: the manifest rules of
    :func:`list_items` (relative entries resolve next to the manifest; relpath rule) applied to a part of
    a manifest, as a shard task reads it. Not de-duplicated."""
    fs, path = filesystem(uri, s3_endpoint=s3_endpoint)
    return _manifest_items(fs, path, uri, [e.strip() for e in entries if e and e.strip()])


def list_tar(uri: str, *, s3_endpoint: str | None = None) -> list[Item]:
    """The image members of the tar archive at ``uri`` (header walk only), as :func:`list_items` lists them."""
    fs, path = filesystem(uri, s3_endpoint=s3_endpoint)
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
        proto = _protocol(entry)
        if proto is None and not entry.startswith(("/", "~")) and not _DRIVE_RE.match(entry):
            # relative entry: resolve against the manifest's folder, keep its own text as relpath
            if isinstance(fs, LocalFileSystem):
                target = os.path.normpath(os.path.join(manifest_dir, entry))
            else:
                target = to_uri(fs, posixpath.normpath(posixpath.join(manifest_dir, entry)), uri)
        elif proto is None or proto in _LOCAL_PROTOCOLS:
            raw = entry.split("://", 1)[1] if proto else entry
            target = os.path.abspath(os.path.expanduser(raw))
        else:
            if proto not in checked:
                try:
                    fsspec.get_filesystem_class(proto)
                except (ValueError, ImportError) as exc:
                    raise InputError(
                        f"bad manifest {_redact(uri)} line {n}: unsupported URI scheme {proto}:// ({_redact(exc, uri)})"
                    ) from exc
                checked.add(proto)
            target = f"{proto}://{entry.split('://', 1)[1].lstrip('/')}"
            if _has_credentials(target):
                # kept as an item (it becomes an error row) but never with its credentials: the
                # source is stored in the manifest and shipped to workers
                target = _without_credentials(target)
        rows.append(Item(source=target, relpath=_manifest_relpath(entry), uri=target))
    return rows


def digest(text: str, n: int = 40) -> str:
    """The first ``n`` hex digits of sha1(``text`` as UTF-8), the one hash of names and ids (collision
    suffixes, shard and root ids, content-defined chunk ends, the training hold-out). Text with lone
    surrogates (undecodable local file names) hashes too (their code units are encoded as such)."""
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:n]


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
                new_stem = f"{stem}__{digest(salt, 8)}"
                if new_stem.lower() not in taken:
                    break
                salt += "#"  # astronomically rare: keep deterministic
            stem, key = new_stem, new_stem.lower()
            item = Item(source=item.source, relpath=stem + ext, uri=item.uri, offset=item.offset, size=item.size)
        taken.add(key)
        out.append(item)
    return out
