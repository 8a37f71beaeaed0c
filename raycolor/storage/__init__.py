"""Where bytes live: fsspec filesystems, URIs, credential redaction, the retry policy, reads and writes.

Pure fsspec: this package never imports ray or torch (nor any other raycolor module but ``config``), so the
Ray pipelines (and their workers) can call it cheaply. Three modules, one job each: :mod:`.uris` (URIs,
filesystems, redaction, digests), :mod:`.retry` (the retry policy), :mod:`.files` (reads and writes); callers
use the names below, as ``storage.filesystem(...)``. What an input *is* (listing rules, items, shards)
is :mod:`raycolor.inputs`; what an OUTPUT holds is :mod:`raycolor.outputs.ledger`.

* URIs: :func:`filesystem` (local paths, ``file://``, ``s3://`` and any installed fsspec protocol),
  :func:`join_uri` (never escapes its base), :func:`absolute`, :func:`is_local`, :func:`to_uri`,
  :func:`protocol`; :func:`sanitize_relpath` is the path-safety rule ``join_uri`` applies to each part.
* Credentials: never in URIs (:func:`has_credentials` refuses them) nor in an endpoint
  (:func:`endpoint_problem`); :func:`stored_uri` is a URI as it may be stored (no presigned query);
  :func:`redact` scrubs any text built from an exception before it is shown or stored.
* Retries: :func:`retrying` (exponential backoff with jitter) on the failures :func:`is_transient` names.
* Reads and writes: :func:`read_item` / :func:`read_items` (whole objects or one range read),
  :func:`write_bytes_atomic` / :func:`write_many` (temp-then-rename locally, one PUT on object stores),
  :func:`remove`, :func:`exists`.
* :func:`digest` / :func:`digest_parts`: the one hash of names and ids.
"""

from raycolor.storage.files import (
    exists,
    read_item,
    read_items,
    remove,
    write_bytes_atomic,
    write_many,
)
from raycolor.storage.retry import ShortRead, is_transient, retrying
from raycolor.storage.uris import (
    DRIVE_RE,
    LOCAL_PROTOCOLS,
    S3_PROTOCOLS,
    InputError,
    absolute,
    digest,
    digest_parts,
    endpoint_problem,
    filesystem,
    has_credentials,
    is_local,
    join_uri,
    protocol,
    redact,
    sanitize_relpath,
    stored_uri,
    to_uri,
    without_credentials,
)

__all__ = [
    "DRIVE_RE",
    "LOCAL_PROTOCOLS",
    "S3_PROTOCOLS",
    "InputError",
    "ShortRead",
    "absolute",
    "digest",
    "digest_parts",
    "endpoint_problem",
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
    "stored_uri",
    "to_uri",
    "without_credentials",
    "write_bytes_atomic",
    "write_many",
]
