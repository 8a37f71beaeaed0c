"""`raycolor verify OUTPUT`: every output (or, with sources, every input) re-read in Ray tasks and compared with
the SHA-256 its manifest row recorded (raycolor/outputs/fixity.py holds the checks; this is their driver).

    manifest parts (names) ─▶ check tasks, one per part     its rows' files read once and hashed; a WebDataset
                                                             part's tar checked for members no row names
    (layout "files")       ─▶ count tasks, one per first-level entry of images/ and derivatives/<name>/
    only if the folders hold more files than the rows name and were found:
                           ─▶ name tasks (parts, folders) ─▶ join tasks, one per hash bucket: the files no row names

The driver stays flat, as colorize's does: it holds part names, counts and at most IN_FLIGHT_PER_CPU refs per CPU,
never rows. Reports carry counts and at most fixity.MAX_NAMED names of each problem. Only the join (a failure's
naming) holds refs per part and bucket.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from raycolor.config import DEFAULT_STORE, StorageConfig
from raycolor.outputs import fixity
from raycolor.pipelines import runtime

# tasks in flight per CPU of the cluster: checking is I/O-bound (store.io_concurrency reads per task)
IN_FLIGHT_PER_CPU = 2
# parts per join bucket: a join task holds about this many parts' names (10,000 rows a part by default)
PARTS_PER_BUCKET = 16


@dataclass(frozen=True)
class VerifyResult:
    output: str
    sources: bool
    parts: int
    report: fixity.Report

    @property
    def ok(self) -> bool:
        return self.report.problems == 0


def _count(uri: str, store: StorageConfig) -> int:
    return len(fixity.list_files(uri, store=store))


def _returns(chunks: list[list[str]]):
    """A task's buckets as its returns (one return is the list itself, not a tuple of one)."""
    return chunks[0] if len(chunks) == 1 else tuple(chunks)


def _listed(uri: str, buckets: int, store: StorageConfig):
    return _returns(fixity.split(fixity.list_files(uri, store=store), buckets))


def _named(part: str, buckets: int, store: StorageConfig):
    return _returns(fixity.split(fixity.named_files(part, store=store), buckets))


def _join(output: str, store: StorageConfig, n_found: int, *chunks) -> fixity.Report:
    return fixity.unexpected(chunks[:n_found], chunks[n_found:], output=output, store=store)


def verify(output: str, *, sources: bool = False, store: StorageConfig = DEFAULT_STORE, c2pa: bool = False
           ) -> VerifyResult:
    """Check OUTPUT against its manifest (module docstring); the result says every problem found (by count, and
    by name up to fixity.MAX_NAMED each). ``c2pa``: each output's Content Credentials are verified too, from the
    same read."""
    import ray

    from raycolor import storage

    runtime.ensure_ray()
    output = storage.absolute(output)
    parts = fixity.part_uris(output, store=store)
    if not parts:
        raise ValueError(f"{storage.redact(output)} holds no manifest (OUTPUT/manifest/*.parquet): nothing to verify")
    check = ray.remote(num_cpus=1, max_retries=3)(fixity.check_part)
    total = fixity.Report()
    for report in _bounded(lambda part: check.remote(part, sources=sources, store=store, c2pa=c2pa), parts):
        total.merge(report)
    if sources:
        return VerifyResult(output=output, sources=sources, parts=len(parts), report=total)
    total.merge(fixity.stray_tars(output, parts, store=store))
    folders = fixity.output_folders(output, store=store)
    count = ray.remote(num_cpus=1, max_retries=3)(_count)
    found = sum(_bounded(lambda uri: count.remote(uri, store), folders))
    if found > total.files:  # keys are unique: only then is any file unexpected, and worth naming
        total.merge(_unexpected(output, parts, folders, store))
    return VerifyResult(output=output, sources=sources, parts=len(parts), report=total)


def _unexpected(output: str, parts: list[str], folders: list[str], store: StorageConfig) -> fixity.Report:
    """The join of the names the folders hold with those the parts name, bucket by bucket in tasks."""
    import ray

    buckets = max(1, math.ceil(len(parts) / PARTS_PER_BUCKET))
    listed = ray.remote(num_cpus=1, max_retries=3, num_returns=buckets)(_listed)
    named = ray.remote(num_cpus=1, max_retries=3, num_returns=buckets)(_named)

    def refs(r) -> list:
        return r if isinstance(r, list) else [r]

    found = [refs(listed.remote(uri, buckets, store)) for uri in folders]
    names = [refs(named.remote(part, buckets, store)) for part in parts]
    join = ray.remote(num_cpus=1, max_retries=3)(_join)
    report = fixity.Report()
    for r in _bounded(lambda b: join.remote(output, store, len(found), *[f[b] for f in found], *[p[b] for p in names]),
                      range(buckets)):
        report.merge(r)
    return report


def _bounded(submit, args):
    """submit(arg) for each arg, at most IN_FLIGHT_PER_CPU per CPU of the cluster in flight; yields each result
    (a task's error raised as itself: runtime.ray_get) as it finishes, in any order."""
    import ray

    limit = max(1, IN_FLIGHT_PER_CPU * runtime.cluster_cpus())
    in_flight: list = []
    for arg in args:
        if len(in_flight) >= limit:
            done, in_flight = ray.wait(in_flight, num_returns=1)
            yield from runtime.ray_get(done, cancel=in_flight)
        in_flight.append(submit(arg))
    while in_flight:
        done, in_flight = ray.wait(in_flight, num_returns=1)
        yield from runtime.ray_get(done, cancel=in_flight)
