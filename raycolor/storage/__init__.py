"""Where bytes live: fsspec filesystems, URIs, credential redaction, the retry policy, reads and writes.

Pure fsspec: this module never imports ray or torch (nor any other raycolor module but ``config``), so the
Ray pipelines (and their workers) can call it cheaply. What an input *is* (listing rules, items, shards)
is :mod:`raycolor.inputs`; what an OUTPUT holds is :mod:`raycolor.outputs.ledger`.

* URIs: :func:`filesystem` (local paths, ``file://``, ``s3://`` and any installed fsspec protocol),
  :func:`join_uri` (never escapes its base), :func:`absolute`, :func:`is_local`, :func:`to_uri`,
  :func:`protocol`; :func:`sanitize_relpath` is the path-safety rule ``join_uri`` applies to each part.
* Credentials: never in URIs (:func:`has_credentials` refuses them); :func:`redact` scrubs any text built
  from an exception before it is shown or stored.
* Retries: :func:`retrying` (exponential backoff with jitter) on the failures :func:`is_transient` names.
* Reads and writes: :func:`read_item` / :func:`read_items` (whole objects or one range read),
  :func:`write_bytes_atomic` / :func:`write_many` (temp-then-rename locally, one PUT on object stores),
  :func:`remove`, :func:`exists`.
* :func:`digest` / :func:`digest_parts`: the one hash of names and ids.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import re
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

from raycolor.config import DEFAULT_IO_CONCURRENCY

if TYPE_CHECKING:  # an Item is what an input is (raycolor.inputs, which imports this module)
    from raycolor.inputs import Item

__all__ = [
    "DRIVE_RE",
    "LOCAL_PROTOCOLS",
    "InputError",
    "absolute",
    "digest",
    "digest_parts",
    "exists",
    "filesystem",
    "has_credentials",
    "is_local",
    "is_transient",
    "join_uri",
    "protocol",
    "read_item",
    "read_items",
    "redact",
    "remove",
    "retrying",
    "sanitize_relpath",
    "to_uri",
    "without_credentials",
    "write_bytes_atomic",
    "write_many",
]

LOCAL_PROTOCOLS = frozenset({"file", "local"})
_S3_PROTOCOLS = frozenset({"s3", "s3a"})

# Backoff between attempts: base * 2**attempt (with jitter), capped. Module-level so tests can shrink it.
_BACKOFF_BASE_S = 0.2
_BACKOFF_CAP_S = 10.0
# HTTP connections per S3 filesystem instance (one per process and endpoint): above any sensible
# io_concurrency, so that the requests read_items/write_many put in flight never wait for a connection.
_S3_MAX_POOL_CONNECTIONS = 128

T = TypeVar("T")


class InputError(ValueError):
    """An input cannot be used: unknown/unreachable URI, empty listing, bad manifest.

    The message is one line and never contains credentials. Defined here, below :mod:`raycolor.inputs`,
    because :func:`filesystem` raises it (a URI with credentials, an unknown scheme) and the retry policy
    never retries it; the listing rules of :mod:`raycolor.inputs` raise the same class.
    """


# --------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_SURROGATE_RE = re.compile(r"[\ud800-\udfff]")
DRIVE_RE = re.compile(r"^[A-Za-z]:")


def _components(name: str) -> list[str]:
    name = _CONTROL_RE.sub("", str(name))
    name = _SURROGATE_RE.sub("\ufffd", name)
    name = name.replace("\\", "/")
    parts = [p for p in name.split("/") if p not in ("", ".", "..")]
    # A drive prefix only matters (Windows-absolute / drive-relative) on the first component;
    # loop because stripping "C:" may expose another one ("C:D:x").
    while parts and DRIVE_RE.match(parts[0]):
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


def protocol(uri: str) -> str | None:
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


def has_credentials(uri: str) -> bool:
    """Whether ``uri`` carries credentials: any userinfo on s3:// and http(s)://, ``user:password@`` on
    any other remote scheme (``abfs://container@account...`` names a container, not a credential)."""
    info = _userinfo(uri)
    proto = protocol(uri)
    if not info or proto is None or proto in LOCAL_PROTOCOLS:
        return False
    return proto in _S3_PROTOCOLS or proto in ("http", "https") or ":" in info


def without_credentials(uri: str) -> str:
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
    :func:`has_credentials`) raises :class:`InputError`. Directory-listing caching is disabled so that a
    listing or ``exists`` never answers from a stale cache. Instances are cached by fsspec (per
    process and arguments).
    """
    if not isinstance(uri, str) or not uri.strip():
        raise InputError(f"empty URI: {uri!r}")
    proto = protocol(uri)
    if proto is None or proto in LOCAL_PROTOCOLS:
        fs = LocalFileSystem()
        raw = uri.split("://", 1)[1] if proto else uri
        path = os.path.abspath(os.path.expanduser(raw)) if raw else os.sep
        return fs, path
    if has_credentials(uri):
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
    return protocol(uri) in (None, *LOCAL_PROTOCOLS)


def to_uri(fs: fsspec.AbstractFileSystem, path: str, like: str) -> str:
    """User-visible URI for ``path`` on ``fs``; ``like`` is the URI the user gave (keeps its scheme)."""
    if isinstance(fs, LocalFileSystem):
        return path
    proto = protocol(like)
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


def is_transient(exc: BaseException) -> bool:
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
            if attempt + 1 >= attempts or not is_transient(exc):
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
    whole = {"max_concurrency": 1} if protocol(item.uri) in _S3_PROTOCOLS else {}

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
# Names and ids
# --------------------------------------------------------------------------------------------


def digest(text: str, n: int = 40) -> str:
    """The first ``n`` hex digits of sha1(``text`` as UTF-8), the one hash of names and ids (collision
    suffixes, shard and root ids, content-defined chunk ends, the training hold-out). Text with lone
    surrogates (undecodable local file names) hashes too (their code units are encoded as such)."""
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:n]


def digest_parts(*parts: object, n: int = 16) -> str:
    """The digest of several parts (ids of shards, roots, namespaces, the lock token): joined by \\x1f."""
    return digest("\x1f".join(str(p) for p in parts), n)
