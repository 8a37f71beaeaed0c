"""URIs and filesystems: fsspec for local paths, ``file://``, ``s3://`` and any installed protocol; the path-safety
rule (:func:`sanitize_relpath`, applied by :func:`join_uri`); credentials kept out of URIs and scrubbed from
any text shown or stored (:func:`redact`); :func:`digest`, the one hash of names and ids."""

from __future__ import annotations

import hashlib
import os
import re

import fsspec
from fsspec.implementations.local import LocalFileSystem

from raycolor.config import DEFAULT_STORE, StorageConfig

LOCAL_PROTOCOLS = frozenset({"file", "local"})
S3_PROTOCOLS = frozenset({"s3", "s3a"})
# HTTP connections per S3 filesystem instance (one per process and endpoint): above any sensible
# io_concurrency, so that the requests read_items/write_many put in flight never wait for a connection.
_S3_MAX_POOL_CONNECTIONS = 128


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


# Query parameters that carry a credential or a signature: presigned S3 (SigV4 and SigV2), Azure SAS, GCS signed
# URLs, and the usual token names. Their values are scrubbed from any text, with or without the URL around them.
_SECRET_PARAM_RE = re.compile(
    r"((?<![\w-])(?:X-Amz-(?:Credential|Signature|Security-Token)|X-Goog-(?:Credential|Signature)|AWSAccessKeyId"
    r"|Signature|sig|token|access_token|api_key|apikey|password|secret)=)[^&\s#\"']+",
    re.IGNORECASE,
)
# the query string of an http(s) URL in any text (stored_uri's rule): everything from "?" to the end of the URL
_URL_QUERY_RE = re.compile(r"(\bhttps?://[^\s?#\"']*)\?[^\s#\"']*", re.IGNORECASE)


def _redact(text: object, uri: str | None = None) -> str:
    """One line, no userinfo in URIs, no query string of a remote URL, no credential-like query parameter, no
    credential values from the environment.

    ``uri``: the URI the text is about; its userinfo and query (if any) are scrubbed wherever they appear,
    e.g. when a library echoes the path back without the scheme.
    """
    text = str(text)
    if uri and "://" in uri:
        userinfo = uri.split("://", 1)[1].split("/", 1)[0].rpartition("@")[0]
        if userinfo:
            text = text.replace(userinfo, "***")
        query = _query(uri)
        if query:
            text = text.replace(query, "***")
    text = re.sub(r"(://)[^/@\s]*@", r"\1***@", text)
    text = _URL_QUERY_RE.sub(lambda m: m.group(1) + "?***", text)
    text = _SECRET_PARAM_RE.sub(lambda m: m.group(1) + "***", text)
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
    return proto in S3_PROTOCOLS or proto in ("http", "https") or ":" in info


def without_credentials(uri: str) -> str:
    """``uri`` with its userinfo replaced by ``***`` (the rest of the URI kept byte for byte)."""
    scheme, rest = uri.split("://", 1)
    authority, sep, path = rest.partition("/")
    return f"{scheme}://***@{authority.rpartition('@')[2]}{sep}{path}"


def _query(uri: str) -> str:
    """The query string of a remote URL (after "?", before any "#"), '' for local paths and URLs without one."""
    proto = protocol(uri)
    if proto is None or proto in LOCAL_PROTOCOLS or "?" not in uri:
        return ""
    return uri.split("?", 1)[1].split("#", 1)[0]


def stored_uri(uri: str) -> str:
    """``uri`` as it may be stored (a manifest row's ``source``, an output key, a log): without the query string
    of a remote URL, which is where presigned URLs carry their signature and credential (``X-Amz-Credential``,
    ``X-Amz-Signature``) and other stores their tokens. What is *read* keeps the whole URI; what is *kept* never
    does. Local paths are kept as they are (``?`` is a letter of a file name there). On an object store, a
    ``?`` in an s3:// key is kept unless the query holds a credential-like parameter."""
    query = _query(uri)
    if not query:
        return uri
    if protocol(uri) not in ("http", "https") and not _SECRET_PARAM_RE.search(query):
        return uri
    head, _, rest = uri.partition("?")
    fragment = rest.partition("#")[2]
    return head + (f"#{fragment}" if fragment else "")


def endpoint_problem(endpoint: str | None) -> str | None:
    """Why an S3 endpoint URL cannot be used, or None. An endpoint is exported to every worker (Ray's runtime
    environment, which ``ray job list`` and the dashboard show), so it must not carry a secret: userinfo
    (``http://key:secret@host``) or a query string is refused; credentials come from the AWS chain."""
    if not endpoint:
        return None
    if "://" not in endpoint:
        return "it must be a URL such as http://host:9000"
    if _userinfo(endpoint):
        return ("it carries user:password@ (refused: the endpoint is shown in Ray's runtime environment); give "
                "credentials as AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE or an instance role")
    if "?" in endpoint or "#" in endpoint:
        return "it carries a query string or fragment (refused: an endpoint is a scheme, host and port)"
    return None


def redact(text: object, uri: str | None = None) -> str:
    """Public name of the scrubber: use it on any text built from an exception before it is shown or stored."""
    return _redact(text, uri)


def _s3_endpoint(s3_endpoint: str | None) -> str | None:
    return s3_endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def filesystem(uri: str, *, store: StorageConfig = DEFAULT_STORE) -> tuple[fsspec.AbstractFileSystem, str]:
    """(fs, path) for ``uri``: local paths, ``file://``, ``s3://`` and any installed fsspec protocol.

    For S3 the endpoint is ``store.s3_endpoint`` or else ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``;
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
    if proto in S3_PROTOCOLS:
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
        endpoint = _s3_endpoint(store.s3_endpoint)
        problem = endpoint_problem(endpoint)
        if problem:
            raise InputError(f"bad S3 endpoint {_redact(endpoint)}: {problem}")
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
    if proto in S3_PROTOCOLS:
        return f"{proto}://{path}"
    return fs.unstrip_protocol(path)


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
