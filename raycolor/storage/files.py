"""Reads and writes: :func:`read_item` / :func:`read_items` (whole objects or one range read, many in flight),
:func:`write_bytes_atomic` / :func:`write_many` (temp-then-rename locally, one PUT on object stores),
:func:`remove`, :func:`exists`; every call goes through the one retry policy."""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

from fsspec.implementations.local import LocalFileSystem

from raycolor.config import DEFAULT_STORE, StorageConfig
from raycolor.storage.retry import ShortRead, retrying
from raycolor.storage.uris import S3_PROTOCOLS, filesystem, is_local, protocol, redact


class Readable(Protocol):
    """What a read needs of an input (raycolor.inputs.Item has it): storage knows no input type."""

    uri: str
    offset: int  # where a tar member's bytes start; 0 for a whole object
    size: int  # bytes to read; -1: to the end


T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# Reading and writing
# --------------------------------------------------------------------------------------------


def read_item(item: Readable, *, store: StorageConfig = DEFAULT_STORE) -> bytes:
    """The bytes of ``item``: the whole object, or one range read for a tar member.

    Retries (``store.retries`` attempts in all, exponential backoff) on transient errors only; a missing
    object or a permission error is raised at once. A range that the object cannot fill raises
    ``OSError`` (truncated archive) without retrying.
    """
    fs, path = filesystem(item.uri, store=store)
    if item.size == 0:
        return b""
    # s3fs answers a whole-object cat_file with a HEAD (for the size) and then the GET, unless its
    # chunked download is off: one round trip per image instead of two (objects of any size, one GET)
    whole = {"max_concurrency": 1} if protocol(item.uri) in S3_PROTOCOLS else {}

    def once() -> bytes:
        if item.size < 0:
            if item.offset:
                return fs.cat_file(path, start=item.offset)
            return fs.cat_file(path, **whole)
        data = fs.cat_file(path, start=item.offset, end=item.offset + item.size)
        if len(data) != item.size:
            raise ShortRead(
                errno.EIO,
                f"short read: got {len(data)} of {item.size} bytes at offset {item.offset} of {redact(item.uri)}",
            )
        return data

    return retrying(once, store.retries)


def write_bytes_atomic(
    uri: str, data: bytes, *, store: StorageConfig = DEFAULT_STORE, tmp_dir: str | None = None
) -> None:
    """Write ``data`` to ``uri`` so that readers see either the old object or the whole new one.

    Local: a temp file, then ``os.replace`` (the temp file is removed on failure; a process killed in
    between leaves it). The temp file goes in ``tmp_dir`` when given (a folder on the same file system that
    its owner removes later: colorize passes the shard's spool folder, so whatever a killed write leaves
    goes with the spool), else next to the target. Object stores: one single PUT (``fs.pipe_file``), which
    is atomic there; ``tmp_dir`` is not used.
    """
    fs, path = filesystem(uri, store=store)
    data = bytes(data) if not isinstance(data, bytes) else data
    if isinstance(fs, LocalFileSystem):
        tmp_folder = filesystem(tmp_dir)[1] if tmp_dir and is_local(tmp_dir) else None
        retrying(lambda: _write_local_atomic(path, data, tmp_folder), store.retries)
    else:
        retrying(lambda: fs.pipe_file(path, data), store.retries)


def _bounded_map(fn: Callable[[T], object], args: list[T], max_in_flight: int) -> list:
    """[fn(a) for a in args], at most ``max_in_flight`` calls running at once (threads), same order."""
    workers = max(1, min(int(max_in_flight), len(args)))
    if workers == 1:
        return [fn(a) for a in args]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="raycolor-io") as pool:
        return list(pool.map(fn, args))


def read_items(
    items: Sequence[Readable],
    *,
    store: StorageConfig = DEFAULT_STORE,
) -> list[bytes | Exception]:
    """The bytes of every item, ``store.io_concurrency`` reads at a time; one entry per item, in order.

    Each entry is what :func:`read_item` returns, or the exception it raised after its own retries
    (transient errors retried with backoff per item, permanent ones at once): one failing item never
    fails the others. Tar members stay single range reads. Memory: the caller passes one batch, and
    holds its bytes; at most ``store.io_concurrency`` requests are open at once.

    Why threads over :func:`read_item` rather than s3fs's batch ``cat``/``cat_ranges``: the requests
    still run concurrently on s3fs's one event loop (each thread waits on its own coroutine), per-item
    retries and range reads stay exactly as in :func:`read_item`, and any fsspec filesystem (local
    disk included) gets the same code path. Measured in docs/performance.md.
    """

    def one(item: Readable) -> bytes | Exception:
        try:
            return read_item(item, store=store)
        except Exception as exc:  # the caller turns it into this item's error row
            return exc

    return _bounded_map(one, list(items), store.io_concurrency)


def write_many(
    pairs: Sequence[tuple[str, bytes]],
    *,
    store: StorageConfig = DEFAULT_STORE,
    tmp_dirs: Sequence[str | None] | None = None,
) -> list[Exception | None]:
    """:func:`write_bytes_atomic` for every ``(uri, data)``, ``store.io_concurrency`` at a time; ``tmp_dirs``: each
    write's ``tmp_dir``.

    One entry per pair, in order: ``None`` when written, else the exception after that write's
    retries. Every write stays atomic (local: temp file + rename; object stores: one PUT). Pairs
    should name distinct URIs: two writes of one URI race and either may win.
    """
    tmps = list(tmp_dirs) if tmp_dirs is not None else [None] * len(pairs)

    def one(job: tuple[tuple[str, bytes], str | None]) -> Exception | None:
        (uri, data), tmp_dir = job
        try:
            write_bytes_atomic(uri, data, store=store, tmp_dir=tmp_dir)
        except Exception as exc:
            return exc
        return None

    return _bounded_map(one, list(zip(pairs, tmps)), store.io_concurrency)


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


def remove(uri: str, *, store: StorageConfig = DEFAULT_STORE) -> None:
    """Delete the object / file / folder ``uri`` (recursively) if it exists; retried like every other call."""
    fs, path = filesystem(uri, store=store)

    def once() -> None:
        try:
            fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass

    retrying(once, store.retries)


def exists(uri: str, *, store: StorageConfig = DEFAULT_STORE) -> bool:
    """Whether the object/file/folder ``uri`` exists (fresh answer: no listing cache), retried as any read."""
    fs, path = filesystem(uri, store=store)
    return bool(retrying(lambda: fs.exists(path), store.retries))
