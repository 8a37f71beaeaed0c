"""Fixity: what `raycolor verify OUTPUT` checks, without Ray (raycolor/pipelines/verify.py runs it in tasks).

Each manifest row records the SHA-256 of the input's bytes as read (``source_sha256``) and of every output's final
bytes as written (``sha256``, and each entry of ``outputs``: the master and its derivatives), hashed while the
bytes were in memory. Verifying reads each file once more and compares:

* **missing**: a file a row names that is not there (a WebDataset member: not in its shard's tar);
* **changed**: a file whose bytes hash otherwise, or whose size differs;
* **unreadable**: a read that failed for another reason, after the retries;
* **unexpected**: a file under OUTPUT/images/ or OUTPUT/derivatives/ that no row names, a member of a shard's tar
  that no row names (each sample's ``.json`` is expected beside its image), a tar under OUTPUT/shards/ with no
  manifest part.

A row written before fixity (no hash) is checked for presence only and counted as ``unhashed``. The unit of work
is one manifest part (:func:`check_part`). The files-layout "unexpected" check first counts: rows' output keys are
unique, so when the folders hold exactly as many files as the rows name and were found (``Report.files``), none is
unexpected. Only when they hold more are the names joined (what the parts name, :func:`named_files`, with what
the folders hold), cut into hash buckets (:func:`bucket_of`) so that no process holds every name.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from raycolor import storage
from raycolor.config import DEFAULT_STORE, StorageConfig
from raycolor.inputs import Item
from raycolor import paths
from raycolor.outputs import ledger

# names a report keeps of each kind of problem (its counts are exact): a run that lost everything must not send
# 100M names back to one driver
MAX_NAMED = 1000
# bytes of outputs read at once by one check (read_items keeps a batch's bytes until it is hashed)
READ_BYTES = 64 << 20
# "c2pa": a file whose Content Credentials do not verify (`verify --c2pa`: missing, or not valid)
KINDS = ("missing", "changed", "unreadable", "unexpected", "c2pa")


@dataclass
class Report:
    """What one check (a part, a listing bucket) or a whole verify found. ``named``: up to MAX_NAMED names of each
    problem kind; ``counts``: how many in all."""

    checked: int = 0  # files read and compared (or found present, for unhashed rows)
    ok: int = 0
    unhashed: int = 0  # present, no hash recorded (a row written before fixity)
    files: int = 0  # plain files (not tar members) named and found: what the folders hold if nothing is unexpected
    counts: dict = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    c2pa: bool = False  # this check also verifies Content Credentials
    named: dict = field(default_factory=lambda: {k: [] for k in KINDS})

    def add(self, kind: str, name: str) -> None:
        self.counts[kind] += 1
        if len(self.named[kind]) < MAX_NAMED:
            self.named[kind].append(storage.redact(name))

    def merge(self, other: Report) -> Report:
        self.checked += other.checked
        self.ok += other.ok
        self.unhashed += other.unhashed
        self.files += other.files
        for k in KINDS:
            self.counts[k] += other.counts[k]
            self.named[k].extend(other.named[k][: max(0, MAX_NAMED - len(self.named[k]))])
        return self

    @property
    def problems(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict:
        return {"checked": self.checked, "ok": self.ok, "unhashed": self.unhashed, "problems": self.problems,
                "counts": dict(self.counts), "named": {k: sorted(v) for k, v in self.named.items()}}


@dataclass(frozen=True)
class Expected:
    """One file a row names: its URI (a file, or `<tar uri>#<member>`), the SHA-256 and size it was written with
    (None: not recorded)."""

    uri: str
    sha256: str | None
    size: int | None = None
    format: str | None = None  # the format it was written in (what a C2PA reader is told it is)


# --------------------------------------------------------------------------------------------- what rows name


def part_uris(output: str, *, store: StorageConfig = DEFAULT_STORE) -> list[str]:
    """The manifest parts of OUTPUT, as URIs (one listing of OUTPUT/manifest/: names only, no row read)."""
    fs, path = storage.filesystem(paths.manifest_dir(output), store=store)
    try:
        names = storage.retrying(lambda: fs.ls(path, detail=False), store.retries)
    except FileNotFoundError:
        return []
    return sorted(storage.to_uri(fs, p, output) for p in names if p.endswith(".parquet"))


def read_part(uri: str, *, store: StorageConfig = DEFAULT_STORE) -> pa.Table:
    """One manifest part with every manifest column (those of an older raycolor as nulls)."""
    fs, path = storage.filesystem(uri, store=store)
    data = storage.retrying(lambda: fs.cat_file(path), store.retries)
    return ledger.with_manifest_columns(pq.read_table(io.BytesIO(data)))


def expected_outputs(table: pa.Table) -> Iterator[Expected]:
    """Every output the rows of a part name: each ok row's `outputs` (the master and its derivatives), or, for a
    row written before that column, its `output` with its `sha256` (null before fixity)."""
    cols = {c: table.column(c).to_pylist() for c in ("status", "output", "sha256", "outputs", "format", "duplicate_of")}
    for status, out, sha, listed, fmt, dup in zip(cols["status"], cols["output"], cols["sha256"], cols["outputs"],
                                                  cols["format"], cols["duplicate_of"]):
        if status != "ok" or dup:  # a copy's files are its first's, checked with that row
            continue
        if listed:
            for e in listed:
                yield Expected(e["uri"], e["sha256"], e["bytes"], e["format"])
        elif out:
            yield Expected(out, sha, format=fmt)


def expected_sources(table: pa.Table) -> Iterator[Expected]:
    """Every input a part's rows read and hashed (any status: an undecodable input was read too)."""
    for src, sha in zip(table.column("source").to_pylist(), table.column("source_sha256").to_pylist()):
        if sha:
            yield Expected(src, sha)


def tar_member(uri: str) -> tuple[str, str] | None:
    """(tar URI, member name) of `<tar uri>#<member>`, or None for a plain file."""
    head, sep, member = uri.partition(".tar#")
    return (head + ".tar", member) if sep else None


# --------------------------------------------------------------------------------------------- checking


def check(expected: Iterable[Expected], *, store: StorageConfig = DEFAULT_STORE, tar_extras: bool = False,
          c2pa: bool = False) -> Report:
    """Read every expected file once and compare it with its record. Files are read READ_BYTES at a time
    (storage.read_items: store.io_concurrency in flight), tar members by one streaming pass over their tar.
    ``tar_extras``: also report a tar's members that nothing expected names (a WebDataset shard's: each
    sample's .json beside its image is expected). ``c2pa``: also verify each file's Content Credentials
    (core.signing.verify: valid, or untrusted without a trust list; anything else is a "c2pa" problem)."""
    report = Report(c2pa=c2pa)
    plain: list[Expected] = []
    tars: dict[str, dict[str, Expected]] = {}
    for e in expected:
        tm = tar_member(e.uri)
        if tm:
            tars.setdefault(tm[0], {})[tm[1]] = e
        else:
            plain.append(e)
    batch: list[Expected] = []
    held = 0
    for e in plain:
        batch.append(e)
        held += e.size or (1 << 20)
        if held >= READ_BYTES or len(batch) >= 4 * store.io_concurrency:
            _check_files(batch, report, store)
            batch, held = [], 0
    if batch:
        _check_files(batch, report, store)
    for tar_uri, members in tars.items():
        _check_tar(tar_uri, members, report, store, extras=tar_extras)
    return report


def _compare(e: Expected, data: bytes, report: Report, name: str) -> None:
    report.checked += 1
    if report.c2pa:
        _check_c2pa(e, data, report, name)
    if e.sha256 is None:  # present; nothing to compare it with
        report.unhashed += 1
        return
    if (e.size is not None and len(data) != e.size) or hashlib.sha256(data).hexdigest() != e.sha256:
        report.add("changed", name)
        return
    report.ok += 1


def _check_c2pa(e: Expected, data: bytes, report: Report, name: str) -> None:
    from raycolor.core import signing

    try:
        state, failures = signing.verify(data, e.format or "")
    except Exception as err:  # no manifest, or one the reader cannot parse: not signed as far as anyone can tell
        report.add("c2pa", f"{name}: no readable Content Credentials ({type(err).__name__}: {storage.redact(err)})"[:500])
        return
    if not signing.acceptable(state, failures):
        report.add("c2pa", f"{name}: {state} {', '.join(failures)}")


def _check_files(batch: list[Expected], report: Report, store: StorageConfig) -> None:
    datas = storage.read_items([Item(source=e.uri, relpath="", uri=e.uri) for e in batch], store=store)
    for k, (e, data) in enumerate(zip(batch, datas)):
        datas[k] = None
        if isinstance(data, FileNotFoundError):
            report.add("missing", e.uri)
            continue
        report.files += 1
        if isinstance(data, Exception):
            report.add("unreadable", f"{e.uri}: {storage.redact(data, e.uri)}")
        else:
            _compare(e, data, report, e.uri)


def _check_tar(tar_uri: str, members: dict[str, Expected], report: Report, store: StorageConfig, *,
               extras: bool) -> None:
    """One pass over the tar (streamed: one member's bytes at a time), hashing the members named."""
    seen: set[str] = set()
    stems = {_sample(m) for m in members}
    fs, path = storage.filesystem(tar_uri, store=store)
    try:
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tf:
            for info in tf:
                if not info.isfile():
                    continue
                e = members.get(info.name)
                if e is None:
                    if extras and not (info.name.endswith(".json") and _sample(info.name) in stems):
                        report.add("unexpected", f"{tar_uri}#{info.name}")
                    continue
                seen.add(info.name)
                _compare(e, tf.extractfile(info).read(), report, f"{tar_uri}#{info.name}")
    except FileNotFoundError:
        pass  # every member is missing
    except (tarfile.TarError, OSError) as err:
        report.add("unreadable", f"{tar_uri}: {storage.redact(err, tar_uri)}")
        seen.update(members)  # not read: reported once, as the tar
    for name in members:
        if name not in seen:
            report.add("missing", f"{tar_uri}#{name}")


def _sample(member: str) -> str:
    """A WebDataset member's sample key: the name up to the first dot of its base name."""
    head, base = posixpath.split(member)
    return posixpath.join(head, base.split(".", 1)[0])


def check_part(part: str, *, sources: bool = False, store: StorageConfig = DEFAULT_STORE, c2pa: bool = False) -> Report:
    """One manifest part: its outputs (or, with `sources`, its inputs) read and compared. A WebDataset part's tar
    is also checked for members no row names. A part that cannot be read is itself reported, unreadable."""
    try:
        table = read_part(part, store=store)
    except Exception as e:  # a damaged part: what it names cannot be checked, and verify must say so
        report = Report()
        report.add("unreadable", f"{part}: {storage.redact(e, part)}")
        return report
    wanted = expected_sources(table) if sources else expected_outputs(table)
    return check(wanted, store=store, tar_extras=not sources, c2pa=c2pa and not sources)


def named_files(part: str, *, store: StorageConfig = DEFAULT_STORE) -> list[str]:
    """The paths, on their filesystem, of the plain files (not tar members) a part's rows name (none for a part
    that cannot be read: check_part reported it)."""
    try:
        table = read_part(part, store=store)
    except Exception:
        return []
    return [storage.filesystem(e.uri, store=store)[1] for e in expected_outputs(table) if not tar_member(e.uri)]


# --------------------------------------------------------------------------------------------- unexpected files


def bucket_of(path: str, buckets: int) -> int:
    """The join bucket of a file path: the same on every process (a digest, never Python's salted hash)."""
    return int(storage.digest(path, 8), 16) % buckets


def split(paths: Iterable[str], buckets: int) -> list[list[str]]:
    out: list[list[str]] = [[] for _ in range(buckets)]
    for p in paths:
        out[bucket_of(p, buckets)].append(p)
    return out


def output_folders(output: str, *, store: StorageConfig = DEFAULT_STORE) -> list[str]:
    """The folders whose files rows name (layout "files"): images/ and each derivatives/<name>/ sub-folder,
    as their first level's entries, so that each listing task takes one (a listing of names only)."""
    tops = []
    for folder in (paths.images_dir(output), paths.derivatives_dir(output)):
        fs, path = storage.filesystem(folder, store=store)
        try:
            tops += [storage.to_uri(fs, p, output) for p in storage.retrying(lambda: fs.ls(path, detail=False), store.retries)]
        except FileNotFoundError:
            continue
    return sorted(tops)


def list_files(uri: str, *, store: StorageConfig = DEFAULT_STORE) -> list[str]:
    """Every file at or below `uri`, as paths on its filesystem (a file itself gives itself)."""
    fs, path = storage.filesystem(uri, store=store)
    try:
        if storage.retrying(lambda: fs.isfile(path), store.retries):
            return [path]
        return sorted(storage.retrying(lambda: fs.find(path), store.retries))
    except FileNotFoundError:
        return []


def unexpected(found: Iterable[Iterable[str]], named: Iterable[Iterable[str]], *, output: str,
               store: StorageConfig = DEFAULT_STORE) -> Report:
    """One bucket of the join: the files found that no row names, as URIs like OUTPUT's."""
    names = {p for chunk in named for p in chunk}
    report = Report()
    fs, _ = storage.filesystem(output, store=store)
    for p in sorted({p for chunk in found for p in chunk} - names):
        report.add("unexpected", storage.to_uri(fs, p, output))
    return report


def stray_tars(output: str, parts: Iterable[str], *, store: StorageConfig = DEFAULT_STORE) -> Report:
    """Tars under OUTPUT/shards/ whose shard has no manifest part (layout "webdataset")."""
    ids = {posixpath.basename(p)[: -len(".parquet")] for p in parts}
    report = Report()
    fs, path = storage.filesystem(paths.shards_dir(output), store=store)
    try:
        names = storage.retrying(lambda: fs.ls(path, detail=False), store.retries)
    except FileNotFoundError:
        names = []
    for p in sorted(names):
        base = posixpath.basename(p)
        if not (base.endswith(".tar") and base[: -len(".tar")] in ids):
            report.add("unexpected", storage.to_uri(fs, p, output))
    return report
