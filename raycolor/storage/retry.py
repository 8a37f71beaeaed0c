"""The one retry policy: :func:`retrying` (exponential backoff with jitter) on the failures :func:`is_transient`
names; anything else (a missing object, a refused permission, a short read, a bad input) fails at once."""

from __future__ import annotations

import errno
import random
import re
import time
from collections.abc import Callable
from typing import TypeVar

from raycolor.storage.uris import InputError

# Backoff between attempts: base * 2**attempt (with jitter), capped. Module-level so tests can shrink it.
_BACKOFF_BASE_S = 0.2
_BACKOFF_CAP_S = 10.0

T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# Retries
# --------------------------------------------------------------------------------------------


class ShortRead(OSError):
    """The object ended before the requested range: permanent (truncated tar, changed object)."""


_PERMANENT = (
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    FileExistsError,
    ShortRead,
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
