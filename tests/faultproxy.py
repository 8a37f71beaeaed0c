"""A small fault-injecting HTTP proxy for S3 tests: it sits on 127.0.0.1 in front of a real S3 API
(the moto server) and, per request, either forwards it or injects a fault.

Faults (what real object stores do under load):

* ``"slowdown"``: ``503 Slow Down`` with S3's XML error body (``<Code>SlowDown</Code>``), no body for HEAD.
* ``"reset"``: the request is read, then the connection is closed with a TCP reset and no response.

Latency: ``FaultProxy(upstream, latency_s=0.03)`` holds every request (forwarded or faulted) that long
before answering it, like the first-byte latency of a real object store (20-60 ms for small objects).
Requests on different connections wait concurrently, so a client with many requests in flight sees
the latency once per round, a sequential client once per request. ``latency_s`` may be changed while
the proxy runs.

Which requests fail is decided by a *policy*, a function ``(method, key_path) -> fault or None``;
``key_path`` is the unquoted path without the query string (path-style S3: ``/bucket/key``). Helpers
build the usual ones: :func:`random_faults` (seeded), :func:`first_n` (the first n requests for each
path fail, then they pass), :func:`always` and :func:`combine`. The proxy counts what it did
(``proxy.counts``), keeps a log of ``(method, key_path, outcome)`` and the most requests it was handling
at once (``proxy.peak_in_flight``).

Protocol handling: HTTP/1.1 keep-alive towards the client, ``Content-Length`` and chunked request bodies
(de-chunked before forwarding), ``Expect: 100-continue`` (answered by http.server), HEAD responses that
carry a Content-Length but no body. Each forwarded request uses a fresh upstream connection.
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

Policy = Callable[[str, str], "str | None"]
FAULTS = ("slowdown", "reset")

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
    "content-length",
}

SLOWDOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message>"
    b"<RequestId>FAULTPROXY</RequestId><HostId>faultproxy</HostId></Error>"
)


def key_path(path: str) -> str:
    """'/bucket/some%20key?x-id=PutObject' -> '/bucket/some key'."""
    return unquote(urlsplit(path).path)


def random_faults(rate: float, *, seed: int = 0, kinds=FAULTS, where: Policy | None = None) -> Policy:
    """Fail a seeded-random ``rate`` of the requests ``where(method, key_path)`` accepts (all if None)."""
    rng = random.Random(seed)
    lock = threading.Lock()

    def policy(method: str, path: str) -> str | None:
        if where is not None and not where(method, path):
            return None
        with lock:
            hit, kind = rng.random() < rate, rng.choice(kinds)
        return kind if hit else None

    return policy


def first_n(n: int, kind: str = "slowdown", *, where: Policy | None = None) -> Policy:
    """The first ``n`` requests for each (method, key_path) that ``where`` accepts fail with ``kind``."""
    seen: Counter = Counter()
    lock = threading.Lock()

    def policy(method: str, path: str) -> str | None:
        if where is not None and not where(method, path):
            return None
        with lock:
            seen[(method, path)] += 1
            return kind if seen[(method, path)] <= n else None

    return policy


def always(kind: str = "slowdown", *, where: Policy | None = None) -> Policy:
    return lambda method, path: kind if where is None or where(method, path) else None


def combine(*policies: Policy) -> Policy:
    """The first policy that injects a fault wins (every policy sees every request)."""

    def policy(method: str, path: str) -> str | None:
        found = [p(method, path) for p in policies]
        return next((f for f in found if f), None)

    return policy


class FaultProxy:
    """``with FaultProxy(upstream, policy) as proxy: ... proxy.url ...``"""

    def __init__(self, upstream: str, policy: Policy | None = None, *, latency_s: float = 0.0):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.policy: Policy = policy or (lambda method, path: None)
        self.latency_s = float(latency_s)  # added to every request, before it is forwarded or faulted
        self.counts: Counter = Counter()  # "requests", "forwarded", "slowdown", "reset", "upstream_error"
        self.log: list[tuple[str, str, str]] = []
        self.in_flight = 0  # requests being handled now (latency wait included)
        self.peak_in_flight = 0  # the most at once since start (or since reset to 0 by a test)
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._server.proxy = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, name="faultproxy", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def faults(self) -> int:
        return sum(self.counts[k] for k in FAULTS)

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _decide(self, method: str, path: str) -> str | None:
        kp = key_path(path)
        fault = self.policy(method, kp)
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}")
        with self._lock:
            self.counts["requests"] += 1
            self.counts[fault or "forwarded"] += 1
            self.log.append((method, kp, fault or "forwarded"))
        return fault


class _Server(ThreadingHTTPServer):
    # listen backlog: the default 5 makes the kernel drop SYNs when many clients connect at once, and a
    # dropped SYN costs the client a 1 s retransmit, which would swamp any latency being measured
    request_queue_size = 256


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive towards the client
    server_version = "faultproxy"

    def log_message(self, format, *args) -> None:  # noqa: A002 - quiet
        pass

    # -- request body ---------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise ConnectionError("client closed mid-body")
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after the chunk
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    # -- one request ----------------------------------------------------------------------------

    def _handle(self) -> None:
        proxy: FaultProxy = self.server.proxy  # type: ignore[attr-defined]
        body = self._read_body()
        with proxy._lock:
            proxy.in_flight += 1
            proxy.peak_in_flight = max(proxy.peak_in_flight, proxy.in_flight)
        try:
            if proxy.latency_s > 0:
                time.sleep(proxy.latency_s)  # per request: this handler thread serves one connection
            fault = proxy._decide(self.command, self.path)
            if fault == "reset":
                self._reset()
            elif fault == "slowdown":
                self._slowdown()
            else:
                self._forward(body, proxy)
        finally:
            with proxy._lock:
                proxy.in_flight -= 1

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _handle

    def _reset(self) -> None:
        """Close with RST and no response (SO_LINGER 0); the fd really closes when rfile does."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()
            self.connection.close()
        except OSError:
            pass

    def _slowdown(self) -> None:
        self.send_response(503, "Slow Down")
        self.send_header("Content-Type", "application/xml")
        self.send_header("x-amz-request-id", "FAULTPROXY")
        self.send_header("Content-Length", str(len(SLOWDOWN_BODY)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(SLOWDOWN_BODY)

    def _forward(self, body: bytes, proxy: FaultProxy) -> None:
        conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in _HOP_BY_HOP:
                    conn.putheader(name, value)
            if body or self.command in ("PUT", "POST", "PATCH"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            resp = conn.getresponse()
            data = resp.read()  # http.client knows HEAD / 204 / 304 have no body
        except (OSError, http.client.HTTPException):
            with proxy._lock:
                proxy.counts["upstream_error"] += 1
            self.send_error(502, "upstream failed")
            return
        finally:
            conn.close()
        self.send_response_only(resp.status, resp.reason)
        for name, value in resp.getheaders():
            if name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        if self.command == "HEAD":
            if resp.getheader("Content-Length") is not None:
                self.send_header("Content-Length", resp.getheader("Content-Length"))
        elif resp.status not in (204, 304) and not 100 <= resp.status < 200:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD" and data:
            self.wfile.write(data)
