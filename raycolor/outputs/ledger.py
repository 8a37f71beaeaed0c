"""The resume ledger of a colorize OUTPUT: pure fsspec/pyarrow, no Ray (a test asserts it).

What a shard is and how inputs become shards is :mod:`raycolor.inputs`; this module records what became of
them: the manifest schema and error reasons, per-shard stats, roots and their namespaces, the lock, and reading
the manifest back.

Every OUTPUT path is made by :mod:`raycolor.paths`, which draws the layout.

Shard ids are deterministic: a hash of the root, the shard's kind and object, its range and, for listing
chunks, the sources it holds. The same command over unchanged inputs plans the same shards, so a re-run
skips every shard whose stats record exists and redoes the others (their images are overwritten with
identical bytes, their part replaced). When an input changes (a folder gained files, a manifest was
rewritten), the shards of that root that are no longer planned are *superseded*: their stats, part and
listing chunk are removed before any new work, so the OUTPUT never holds two rows for one input.

A root's record (``_roots/<root id>.json``: ``root``, ``namespace``, ``key_rule``, ``shards``) fixes its output names
for good: its namespace (:func:`assign_namespaces`) and the output-key rule its outputs were written with
(``key_rule``, :func:`key_rules`; the rules are stated in :mod:`raycolor.inputs`). A record without ``key_rule``
was written before rules had numbers: that root keeps rule 1 on every later run, and new roots get the current
rule, so a change of rule never renames what an earlier run wrote.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import socket
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from raycolor import storage
from raycolor.config import DEFAULT_STORE, StorageConfig
from raycolor import paths

# error reasons that a later run may cure by itself (object-store or network trouble); everything else
# (truncated, not_an_image, too_large, unsupported) is a property of the input
TRANSIENT_REASONS = frozenset({"read_failed", "write_failed", "timeout"})

# the reason of a row left alone by --colour-inputs skip (status "skipped", error "has_colour: <input_chroma>"):
# done, like "ok": never retried, not counted as an error (raycolor.core.chroma has the rule)
HAS_COLOUR = "has_colour"

# the reason of an image --sign could not sign (raycolor.core.signing.SignFailed: the SDK refused the file, the
# timestamp authority did not answer; or this node's Signer could not be built: the key is not there). Not
# transient: --retry-errors all retries it
SIGN_FAILED = "sign_failed"

# one row per input across an OUTPUT (docs/colorizing.md, "Manifest schema")
MANIFEST_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("output", pa.string()),
        ("status", pa.string()),  # "ok" | "error" | "skipped" (--colour-inputs skip: error "has_colour: <chroma>")
        ("error", pa.string()),  # "<reason>: <detail>" or null
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("model_id", pa.string()),
        ("format", pa.string()),
        # what the model ran in for this row ("bf16" | "fp32", raycolor.core.precision); null for rows not
        # colorized. Parts written before this column read it back as null (they ran fp32 on CPU, bf16 on GPU).
        ("precision", pa.string()),
        ("finished_at", pa.float64()),
        ("bit_depth", pa.int64()),  # bits per sample of the written image (8 or 16); null for error rows
        # JSON: metadata groups kept / added / changed / dropped (with the reason), and notes such as "first of 3
        # pages"; null for error rows. Parts written before these two columns read them back as null.
        ("metadata", pa.string()),
        # the input's own colour (raycolor.core.chroma): the 99th percentile of its C*, the hue of its tone (one
        # tone: sepia, cyanotype...) and whether it has several hues (hand-tinted, a colour photograph); null
        # where the input was not decoded. Parts written before these three columns read them back as null.
        ("input_chroma", pa.float64()),
        ("tone_hue", pa.float64()),  # degrees in [0, 360), null unless toned
        ("has_colour", pa.bool_()),
        # fixity (raycolor verify): the hex SHA-256 of the input's bytes as read, and of the written output's (the
        # master's); hashed while the bytes were in memory, never read again. `outputs`: every output of the
        # input, the master first and then each --derivative (its fields below). Parts written before these columns
        # read them back as null; verify checks such a row's files exist and counts them as unhashed.
        ("source_sha256", pa.string()),
        ("sha256", pa.string()),
        ("outputs", pa.list_(pa.struct([
            ("name", pa.string()),  # MASTER, or a derivative's name ("jpeg-3000")
            ("uri", pa.string()),  # as `output` is: a file, or <tar uri>#<member> (layout "webdataset")
            ("format", pa.string()),
            ("width", pa.int64()),
            ("height", pa.int64()),
            ("bytes", pa.int64()),
            ("sha256", pa.string()),
        ]))),
        # --dedupe content: the source of the input of this run that wrote these bytes first; this row's `output`,
        # `sha256` and `outputs` are that input's (written once). Null for every input written itself.
        ("duplicate_of", pa.string()),
    ]
)
IMAGE_COLUMN = pa.field("image", pa.binary())
# the derivatives' bytes, in `outputs` order after the master, where the spool carries images (webdataset)
DERIVATIVE_IMAGES_COLUMN = pa.field("derivative_images", pa.list_(pa.binary()))
# the `name` of an input's own colorized output in `outputs` (its derivatives are named "<format>-<long edge>")
MASTER = "master"


class OutputLocked(ValueError):
    """Another driver holds OUTPUT/_lock.json (exit code 2 in the CLI)."""


class OwnershipError(ValueError):
    """OUTPUT's ledger cannot be reconciled with the inputs (exit code 2 in the CLI)."""


def reason_of(error: str | None) -> str:
    return (error or "").split(":", 1)[0]


def is_retryable(error: str | None, mode: str, status: str | None = None) -> bool:
    """Whether an error row is re-attempted by ``--retry-errors`` (mode "transient") or "all". A skipped row
    (status "skipped", reason HAS_COLOUR) is done, never retried."""
    if not error or mode == "none" or status == "skipped" or reason_of(error) == HAS_COLOUR:
        return False
    return mode == "all" or reason_of(error) in TRANSIENT_REASONS


# --------------------------------------------------------------------------------------------
# OUTPUT: names, stats, roots
# --------------------------------------------------------------------------------------------


def read_manifest(output: str, *, store: StorageConfig = DEFAULT_STORE, columns=None) -> pa.Table:
    """All manifest rows under OUTPUT/manifest/ (empty table if none), with a `_part` column."""
    fs, path = storage.filesystem(paths.manifest_dir(output), store=store)
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


def _ls(folder: str, *, store: StorageConfig) -> list[str]:
    fs, path = storage.filesystem(folder, store=store)
    try:
        return sorted(storage.retrying(lambda: fs.ls(path, detail=False), store.retries))
    except FileNotFoundError:
        return []


def finished_shards(output: str, *, store: StorageConfig = DEFAULT_STORE) -> set[str]:
    """Ids of the shards whose stats record exists: one listing of OUTPUT/_stats/, no row is read."""
    return {posixpath.basename(p)[: -len(".json")] for p in _ls(paths.stats_dir(output), store=store) if p.endswith(".json")}


def read_stats(output: str, ids: Iterable[str], *, store: StorageConfig = DEFAULT_STORE) -> dict[str, dict]:
    """Stats records of ``ids`` (fetched concurrently on object stores)."""
    ids = list(ids)
    if not ids:
        return {}
    fs, _ = storage.filesystem(output, store=store)
    wanted = {storage.filesystem(paths.stats_uri(output, i), store=store)[1]: i for i in ids}
    blobs = storage.retrying(lambda: fs.cat(list(wanted)), store.retries)  # s3fs: one batch of concurrent GETs
    return {wanted[p]: json.loads(b) for p, b in blobs.items()}


def read_roots(output: str, *, store: StorageConfig = DEFAULT_STORE) -> dict[str, dict]:
    """root URI -> its record (namespace, key_rule when written, shards) for every root OUTPUT has seen."""
    names = [p for p in _ls(paths.roots_dir(output), store=store) if p.endswith(".json")]
    if not names:
        return {}
    fs, _ = storage.filesystem(output, store=store)
    blobs = storage.retrying(lambda: fs.cat(names), store.retries)
    records = [json.loads(b) for b in blobs.values()]
    return {r["root"]: r for r in records}


def write_json(uri: str, obj, *, store: StorageConfig = DEFAULT_STORE) -> None:
    storage.write_bytes_atomic(uri, json.dumps(obj, indent=1).encode(), store=store)


def remove(uris: Iterable[str], *, store: StorageConfig = DEFAULT_STORE) -> None:
    for uri in uris:
        storage.remove(uri, store=store)


def assign_namespaces(roots: Sequence[str], known: dict[str, dict], *, listed: Iterable[str] = ()) -> dict[str, str]:
    """Each root's output namespace. A root OUTPUT already knows keeps its namespace, forever.

    New roots share the plain namespace ("") only when OUTPUT has no root yet (the first run), and then only
    those whose keys cannot collide: the ``listed`` roots (folders and single images, listed and
    de-duplicated together by the planner) share ""; when there is none, the first root takes "" (a
    single-input run keeps plain names). Every other root -- a tar, a manifest, a glob, a root that arrives
    when OUTPUT already holds another root's outputs -- gets ``<basename>-<hash of the root>``
    (:func:`namespace_for`), so it can never overwrite another root's outputs."""
    roots = list(dict.fromkeys(roots))
    listed = set(listed)
    new = [r for r in roots if r not in known]
    plain: set[str] = set()
    if not known and new:
        plain = {r for r in new if r in listed} or {new[0]}
    return {r: known[r]["namespace"] if r in known else ("" if r in plain else paths.namespace_for(r)) for r in roots}


def key_rule_of(record: dict) -> int:
    """The output-key rule (inputs.KEY_RULE) a root's outputs were written with: its record's ``key_rule``; a
    record without one was written before rules had numbers, by rule 1."""
    return int(record.get("key_rule", 1))


@dataclass(frozen=True)
class Left:
    """What earlier runs left to do of a plan's shards: the shards to run (a finished one again only for its errors
    to retry)."""

    done_before: dict  # shard id -> stats of a shard an earlier run finished
    todo: list  # inputs.Shard
    rows: int  # images to process
    total: int  # images in all the plan's shards


class Book:
    """OUTPUT's bookkeeping as a run finds it, in one place: every root's record and the shards earlier runs
    finished (read once, under the lock: :func:`locked`). From it, for this run's roots: each root's namespace and
    output-key rule, once the roots are sharded the records to write and the shards of an earlier run the inputs
    no longer make (superseded), writing and removing those records (:meth:`record`), and what is left to do
    (:meth:`left`)."""

    def __init__(self, output: str, *, known: dict[str, dict], finished: set[str], store: StorageConfig = DEFAULT_STORE):
        self.output = output
        self.known = known  # root -> its record, every root OUTPUT has seen
        self.finished = finished  # ids of the shards whose stats record exists
        self.store = store

    @classmethod
    def read(cls, output: str, *, store: StorageConfig = DEFAULT_STORE) -> Book:
        return cls(output, known=read_roots(output, store=store), finished=finished_shards(output, store=store),
                   store=store)

    def rules(self, roots: Sequence[str]) -> dict[str, int]:
        """Each root's output-key rule (:func:`key_rules`)."""
        return key_rules(list(dict.fromkeys(roots)), self.known)

    def namespaces(self, roots: Sequence[str], listed: Iterable[str]) -> dict[str, str]:
        return assign_namespaces(roots, self.known, listed=listed)

    def settle(self, roots: Sequence[str], by_root: dict, listed: Iterable[str]) -> tuple[list, dict[str, dict], list[str]]:
        """(every shard with its root's namespace, root -> the record to write, superseded shard ids), from this
        run's roots (in input order), each root's shards (inputs.Shard) and the roots listed together (that may
        share the plain namespace)."""
        ns, rules = self.namespaces(roots, listed), self.rules(roots)
        shards, records = [], {}
        for root, mine in by_root.items():
            mine = [s.with_(namespace=ns[root]) for s in mine]
            shards += mine
            records[root] = {"root": root, "namespace": ns[root], "key_rule": rules[root], "shards": [s.id for s in mine]}
        superseded = [sid for root, rec in self.known.items() if root in records
                      for sid in rec.get("shards", []) if sid not in set(records[root]["shards"])]
        return shards, records, superseded

    def record(self, records: dict[str, dict], superseded: Sequence[str]) -> None:
        """Before any image: what superseded shards left is removed (inputs that changed since an earlier run:
        their old shards go before anything new is written), then each root's record is written."""
        if superseded:
            remove([u for sid in superseded for u in paths.shard_files(self.output, sid)], store=self.store)
            self.finished -= set(superseded)
        for rec in records.values():
            write_json(paths.root_uri(self.output, rec["root"]), rec, store=self.store)
            self.known[rec["root"]] = rec

    def left(self, shards: Sequence, retry_errors: str) -> Left:
        """What is left of ``shards`` (inputs.Shard): those no earlier run finished, and with ``retry_errors``
        ("transient" or "all"; "none": no retry) the finished ones whose errors of that kind are redone."""
        done_before = read_stats(self.output, [s.id for s in shards if s.id in self.finished], store=self.store)
        todo, rows = [], 0
        for s in shards:
            if s.id not in done_before:
                todo.append(s)
                rows += s.count
                continue
            if retry_errors != "none":
                redo = sum(n for reason, n in done_before[s.id].get("errors_by_reason", {}).items()
                           if retry_errors == "all" or reason in TRANSIENT_REASONS)
                if redo:
                    todo.append(s.with_(retry=retry_errors))
                    rows += redo
        total = sum(done_before[s.id]["rows"] if s.id in done_before else s.count for s in shards)
        return Left(done_before=done_before, todo=todo, rows=rows, total=total)


def key_rules(roots: Sequence[str], known: dict[str, dict]) -> dict[str, int]:
    """Each root's output-key rule: a root OUTPUT already knows keeps its own (:func:`key_rule_of`), so an
    earlier run's outputs are never renamed; a new root gets the current rule, ``inputs.KEY_RULE``."""
    from raycolor.inputs.listing import KEY_RULE

    return {r: key_rule_of(known[r]) if r in known else KEY_RULE for r in roots}


# --------------------------------------------------------------------------------------------
# The lock: one driver per OUTPUT
# --------------------------------------------------------------------------------------------


# attempts of every lock call, whatever ``store.retries`` says: the lock is taken and released once per run,
# so it keeps the one fixed policy it always had
_LOCK_ATTEMPTS = 5


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _create_exclusive(uri: str, data: bytes, *, store: StorageConfig) -> bool:
    """Create ``uri`` only if it does not exist; False if it does. Local: O_EXCL. S3: a conditional PUT
    (If-None-Match: *). Other stores: exists-then-write (a race between two drivers starting in the
    same instant is possible there)."""
    fs, path = storage.filesystem(uri, store=store)
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


def acquire_lock(output: str, *, force: bool = False, store: StorageConfig = DEFAULT_STORE) -> dict:
    """Create OUTPUT/_lock.json (host, pid, start time) or raise :class:`OutputLocked`.

    A lock left by a dead process on this same host is stale and taken over; ``force`` takes over any lock
    (use it only when the driver that held it is known to be gone)."""
    me = {"host": socket.gethostname(), "pid": os.getpid(), "started_at": time.time(), "token": storage.digest_parts(time.time(), os.getpid(), os.urandom(8))}
    uri = paths.lock_uri(output)
    for _ in range(3):
        # retried on transient errors: a PUT that reached the store but lost its answer comes back as
        # "exists", and the token read below tells that the lock is ours
        if storage.retrying(lambda: _create_exclusive(uri, json.dumps(me).encode(), store=store), _LOCK_ATTEMPTS):
            return me
        fs, path = storage.filesystem(uri, store=store)
        try:
            held = json.loads(storage.retrying(lambda: fs.cat_file(path), _LOCK_ATTEMPTS))
        except FileNotFoundError:
            continue  # released meanwhile: try again
        except Exception:
            held = {}
        if held.get("token") == me["token"]:
            return me
        stale = held.get("host") == me["host"] and isinstance(held.get("pid"), int) and not _pid_alive(held["pid"])
        if force or stale:
            remove([uri], store=replace(store, retries=_LOCK_ATTEMPTS))
            continue
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(held.get("started_at", 0)))
        raise OutputLocked(
            f"{storage.redact(output)} is in use by another raycolor driver (host {held.get('host')}, pid {held.get('pid')}, "
            f"since {since}); wait for it to finish, or pass --force-unlock if it is gone"
        )
    raise OutputLocked(f"could not take the lock {storage.redact(uri)}")


def release_lock(output: str, lock: dict, *, store: StorageConfig = DEFAULT_STORE) -> None:
    """Remove OUTPUT/_lock.json if it is still ours."""
    uri = paths.lock_uri(output)
    fs, path = storage.filesystem(uri, store=store)
    try:
        held = json.loads(storage.retrying(lambda: fs.cat_file(path), _LOCK_ATTEMPTS))
    except Exception:
        return
    if held.get("token") == lock.get("token"):
        remove([uri], store=replace(store, retries=_LOCK_ATTEMPTS))


@contextmanager
def locked(output: str, *, force: bool = False, store: StorageConfig = DEFAULT_STORE) -> Iterator[Book]:
    """OUTPUT locked for one driver (:func:`acquire_lock`, released on the way out), and its :class:`Book` as
    this run finds it, read under the lock."""
    lock = acquire_lock(output, force=force, store=store)
    try:
        yield Book.read(output, store=store)
    finally:
        release_lock(output, lock, store=store)
