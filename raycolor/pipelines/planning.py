"""Planning, with Ray: inputs -> shard descriptors (colorize and training), folder listings in Ray tasks,
and `raycolor list`. Imports no torch, so that `raycolor list` starts as fast as Ray does.

    inputs ─inputs.classify─▶ roots ─shard_inputs─┬─ folders/images: list_in_tasks (inputs.list_group tasks,
                                                   │  chunks written by the tasks, small remainders packed
                                                   │  by inputs.write_bin tasks) ─▶ listing shards
                                                   └─ manifests/tars: inputs.size_object tasks ─▶ shards

The driver holds folder groups, counts and shard descriptors; never a per-image row. What a root holds that is
not taken (files that are not images, a tar's other members) comes back from the same tasks as one small
{suffix: files} dict per root (:func:`shard_and_count`), reported by colorize's summary and `raycolor list`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from raycolor import inputs, storage
from raycolor.config import DEFAULT_STORE, ColorizeConfig, StorageConfig
from raycolor import paths
from raycolor.outputs import ledger
from raycolor.pipelines import runtime


@dataclass(frozen=True)
class Plan:
    shards: list  # every shard of the inputs (inputs.Shard), namespaces assigned
    superseded: list  # ids of shards OUTPUT holds for these roots that the inputs no longer make
    roots: dict  # root -> record to write to OUTPUT/_roots/
    left: ledger.Left  # what earlier runs left to do of `shards`
    not_taken: dict = field(default_factory=dict)  # root -> {suffix: files it holds that are not taken}, largest first

    def not_taken_in_all(self) -> dict[str, int]:
        """{suffix: files} not taken, of every root together, largest first (inputs.merge_not_taken)."""
        return inputs.merge_not_taken(*self.not_taken.values())


def classify_inputs(uris: Sequence[str], *, store: StorageConfig = DEFAULT_STORE) -> list:
    """What each input is (folders are listed later, in tasks); raises InputError before anything is
    started or written."""
    if not uris:
        raise inputs.InputError("no inputs given")
    return [inputs.classify(u, store=store) for u in uris]


def _root_group(roots: list) -> inputs.ListGroup:
    """The first-level listing group of folder and image roots (RootPlans, in input order) that are
    de-duplicated together. A root inside an earlier one adds nothing (the earlier root lists its images
    first); a root inside a later one keeps its images, which the later root's listing skips."""
    def inside(r: str, k: str) -> bool:
        return r == k or r.startswith(k.rstrip("/") + "/")

    kept = []
    for r in roots:
        if not any(inside(r.root, k.root) for k in kept):
            kept.append(r)
    return inputs.ListGroup(key="", dirs=tuple((r.root, r.root) for r in kept), exclude=tuple(r.root for r in kept),
                            files=tuple((r.root, tuple(r.items)) for r in kept if r.kind == "listing"))


def packs(remainders: list[tuple[str, object, int]], size: int) -> list[list[tuple[str, object]]]:
    """Consecutive (group key, table, images) remainders, in path order -> packs [(key, table), ...] of at
    most ``size`` images (a remainder is below ``size`` by construction). A pack ends when the next
    remainder would not fit, or, content-defined, once it is at least half full after a group whose key
    hashes to 0 mod 4: a group that gained images shifts the packs after it only until the next such end.
    Remainders of 0 images are skipped."""
    out, cur, n = [], [], 0
    for key, table, count in remainders:
        if not count:
            continue
        if cur and n + count > size:
            out.append(cur)
            cur, n = [], 0
        cur.append((key, table))
        n += count
        if n >= size / 2 and int(storage.digest(key, 8), 16) % 4 == 0:
            out.append(cur)
            cur, n = [], 0
    if cur:
        out.append(cur)
    return out


def list_in_tasks(groups: list, *, chunk_uri: str, shard_size: int, store: StorageConfig = DEFAULT_STORE
                  ) -> tuple[list[inputs.Shard], dict[str, int], dict[str, dict[str, int]]]:
    """Folder groups (:class:`inputs.ListGroup`) listed in Ray tasks (:func:`inputs.list_group`): each task
    lists one level of its group (or, below ``inputs.LIST_FANOUT_DEPTH``, its whole subtree), writes its
    listing chunks to ``chunk_uri`` ({id}: the shard id) and hands back listing shards and the next level's
    groups. A group's remainder of fewer than ``shard_size`` images of a root stays in the object store;
    once everything is listed, consecutive remainders (in path order) are packed into chunks of at most
    ``shard_size`` (:func:`packs`; :func:`inputs.write_bin`, a task each). Returns (the shards in path
    order, {root: images found under it}, {root: {suffix: files under it not taken}} for the roots that hold
    any). The driver holds groups, counts and shard descriptors, never per-image rows: a single
    recursive listing of a 100M-object prefix takes hours (ray-project/ray#40686)."""
    import ray

    size = max(1, shard_size)
    task = ray.remote(num_cpus=0.5, max_retries=3, num_returns=2)(inputs.list_group)

    def submit(group):
        meta, rest = task.remote(group, chunk_uri=chunk_uri, shard_size=size, fan_out=group.depth < inputs.LIST_FANOUT_DEPTH,
                                 store=store)
        return meta, (group, rest)

    pending = dict(submit(g) for g in groups)
    shards, found, rests, not_taken = [], {}, [], {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        group, rest = pending.pop(done[0])
        got, nxt, seen, left, others = runtime.ray_get(done[0], cancel=list(pending))
        shards += got
        for root, n in seen.items():
            found[root] = found.get(root, 0) + n
        for root, counts in others.items():
            not_taken[root] = inputs.merge_not_taken(not_taken.get(root, {}), counts)
        if left:
            rests.append((group, rest, left))
        pending.update(submit(g) for g in nxt)
    # the remainders, per root in input order, then path order, packed
    order = {}
    for g in groups:
        for root, _ in g.dirs:
            order.setdefault(root, len(order))
    rests.sort(key=lambda t: t[0].key)
    writer = ray.remote(num_cpus=0.5, max_retries=3)(inputs.write_bin)
    bins = [
        ((pack[0][0], order.get(root, 0), -1),
         writer.remote(root, chunk_uri, *(ref for _, ref in pack), store=store))
        for root in sorted({r for _, _, left in rests for r in left}, key=lambda r: order.get(r, 0))
        for pack in packs([(g.key, ref, left.get(root, 0)) for g, ref, left in rests], size)
    ]
    shards += [(key, shard) for (key, _), shard in zip(bins, runtime.ray_get([ref for _, ref in bins]))]
    shards.sort(key=lambda t: t[0])
    return [s for _, s in shards], found, not_taken


def shard_inputs(roots: list, *, shard_size: int, listing: str, namespaces: dict[str, str] | None = None,
                 key_rules: dict[str, int] | None = None, store: StorageConfig = DEFAULT_STORE) -> dict[str, list[inputs.Shard]]:
    """Each distinct root's shards, in input order (:func:`shard_and_count`, without the not-taken counts)."""
    return shard_and_count(roots, shard_size=shard_size, listing=listing, namespaces=namespaces, key_rules=key_rules,
                           store=store)[0]


def shard_and_count(roots: list, *, shard_size: int, listing: str, namespaces: dict[str, str] | None = None,
                    key_rules: dict[str, int] | None = None, store: StorageConfig = DEFAULT_STORE
                    ) -> tuple[dict[str, list[inputs.Shard]], dict[str, dict[str, int]]]:
    """Classified inputs (:func:`inputs.classify`) -> each distinct root's shards, in input order: the
    driver's "inputs -> shards" step, shared by colorize (:func:`plan`) and training (``pipelines.training.plan``).

    Folder and image roots are listed in Ray tasks (:func:`list_in_tasks`), those sharing a namespace
    de-duplicated together (a source belongs to the first root that lists it) and cut into content-defined
    chunks per root (:func:`inputs.chunk_listing`), each chunk written by its task to ``listing`` ({id}: the
    shard id; colorize: OUTPUT/_listing/, training: its run's output). Manifest and tar objects are sized
    in tasks (:func:`inputs.size_object`: tar headers, a Parquet footer, one .txt scan). A folder holding
    no image but manifests or tars (e.g. written by ``raycolor list``) is those objects.

    ``namespaces``: {root URI: namespace} sets each root's namespace (on its shards, and as the
    de-duplication group); a root not in it (or no mapping) is in namespace "". ``key_rules``: {root URI:
    output-key rule} sets the rule each root's shards are expanded with (``Shard.key_rule``); a root not in it
    gets the current rule, :data:`inputs.KEY_RULE`.

    Returns (each root's shards, {root: {suffix: files}}: what each root holds that is not taken, for the roots
    that hold any: a folder's files that are not images (counted by its listing tasks), a glob's matches that
    are not objects, a folder of objects' other files, a tar's members that are not images (counted by its
    sizing task). Manifest entries are taken as given: nothing of theirs is counted.)
    """
    import ray

    size = max(1, shard_size)
    seen, unique = set(), []
    for r in roots:  # the same root twice is one root
        if r.root not in seen:
            seen.add(r.root)
            unique.append(r)
    ns = {r.root: (namespaces or {}).get(r.root, "") for r in unique}

    def rule(root: str) -> int:
        return (key_rules or {}).get(root, inputs.KEY_RULE)

    groups: dict[str, list] = {}
    for r in unique:
        if r.kind in ("folder", "listing"):
            groups.setdefault(ns[r.root], []).append(r)
    listed, found, not_taken = list_in_tasks([_root_group(g) for g in groups.values()], chunk_uri=listing, shard_size=size,
                                             store=store)
    # a folder with no image under it: a folder of manifests or tars, or an error
    unique = [inputs.list_folder(r.root, store=store) if r.kind == "folder" and r.root in found
              and not found[r.root] else r for r in unique]
    for r in unique:
        if r.kind == "objects":  # a glob, or a folder of objects (its listing counted the objects as not taken)
            not_taken[r.root] = dict(r.not_taken)
    sizer = ray.remote(num_cpus=0.5, max_retries=3)(inputs.size_and_count)
    refs = {
        r.root: [sizer.remote(kind, uri, tag, root=r.root, shard_size=size, key_rule=rule(r.root), store=store)
                 for kind, uri, tag in r.objects]
        for r in unique
        if r.kind == "objects"
    }
    by_root: dict[str, list] = {}
    for shard in listed:
        by_root.setdefault(shard.root, []).append(shard)
    out: dict[str, list[inputs.Shard]] = {}
    for r in unique:
        if r.kind == "objects":
            sized = [runtime.ray_get(ref) for ref in refs[r.root]]
            mine = [s for got, _ in sized for s in got]
            not_taken[r.root] = inputs.merge_not_taken(not_taken.get(r.root, {}), *(counts for _, counts in sized))
        else:
            mine = by_root.get(r.root, [])
        out[r.root] = [s.with_(namespace=ns[r.root], key_rule=rule(r.root)) for s in mine]
    return out, {root: counts for root, counts in not_taken.items() if root in out and counts}


def write_listing(uris: Sequence[str], output: str, *, shard_size: int, store: StorageConfig = DEFAULT_STORE
                  ) -> tuple[int, int, dict[str, int]]:
    """`raycolor list`: list folders / prefixes in Ray tasks (:func:`list_in_tasks`) and save the listing as
    Parquet manifest parts ``OUTPUT/part-<chunk id>.parquet`` (``uri``, ``relpath``, ``source``: colorizing
    OUTPUT gives the output keys colorizing the folders would). Returns (entries, parts, {suffix: files the
    folders hold that are not taken}, largest first).

    Chunks are content-defined and named by their content, and a part whose bytes are unchanged is not
    rewritten: re-listing a prefix that gained files adds or replaces a few parts, so colorize (whose
    shards are keyed by each part's ETag/mtime) redoes only those. Parts of an earlier listing in the same
    place that this one did not write are removed."""
    roots = []
    for uri in uris:
        r = inputs.classify(uri, store=store)
        if r.kind != "folder":
            raise inputs.InputError(f"raycolor list lists folders and prefixes; {storage.redact(uri)} is not one "
                                     "(colorize takes images, .tar shards and manifests as they are)")
        roots.append(r)
    shards, found, not_taken = list_in_tasks([_root_group(roots)], chunk_uri=paths.list_parts_uri(output),
                                             shard_size=shard_size, store=store)
    for root, n in found.items():
        if not n:
            raise inputs.no_images(root, not_taken.get(root))
    names = [s.uri.rsplit("/", 1)[-1] for s in shards]
    inputs.remove_stale_parts(output, names, store=store)
    return sum(s.count for s in shards), len(names), inputs.merge_not_taken(*not_taken.values())


def plan(config: ColorizeConfig, output: str, roots: list, book: ledger.Book) -> Plan:
    """The run's one planning step, with OUTPUT locked (``book``: ledger.locked's): the shards of the inputs
    (``roots``, :func:`classify_inputs`'s; :func:`shard_and_count`; folder listings chunked into OUTPUT/_listing/)
    with each root's namespace and
    output-key rule, the shards they supersede, each root's record written and what superseded shards left
    removed (before any image), and what is left to do (the ledger's :class:`~raycolor.outputs.ledger.Book` keeps
    all of that bookkeeping).

    On a first run, the folder and image roots (listed and de-duplicated together) share the plain namespace;
    a folder that turns out to hold no image but tars or manifests is not one of them (its keys are made in
    its shards' tasks, where no other root's are seen), so the namespaces are settled once the roots are sized."""
    order = [r.root for r in roots]
    listed = {r.root for r in roots if r.kind in ("folder", "listing")}
    by_root, not_taken = shard_and_count(roots, shard_size=config.shard_size, namespaces=book.namespaces(order, listed),
                                         key_rules=book.rules(order), listing=paths.listing_uri(output, "{id}"),
                                         store=config.storage)
    listed -= {root for root, mine in by_root.items() if any(s.kind != "listing" for s in mine)}
    shards, records, superseded = book.settle(order, by_root, listed)
    book.record(records, superseded)
    return Plan(shards=shards, superseded=superseded, roots=records, not_taken=not_taken,
                left=book.left(shards, config.retry_errors))
