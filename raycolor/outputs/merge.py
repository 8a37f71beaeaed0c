"""A shard's bookkeeping rows, from the finish tasks to its manifest part: each finish task spools its rows per
shard (:func:`spool`), and once a shard's last row is back its spool is merged (:func:`merge_shard`) into
OUTPUT/manifest/<id>.parquet, the layout's images of the shard (the writer class's `merge`: a WebDataset tar), then
OUTPUT/_stats/<id>.json. Storage and pyarrow only, no Ray: the driver runs merge_shard as a task."""

from __future__ import annotations

import io
import time

import pyarrow as pa
import pyarrow.parquet as pq

from raycolor import storage
from raycolor.config import StorageConfig
from raycolor import paths
from raycolor.outputs import ledger
from raycolor.outputs.ledger import MANIFEST_SCHEMA
from raycolor.outputs.writers import WRITERS


def spool(table: pa.Table, shards: list[str], *, output: str, store: StorageConfig) -> None:
    """One finish batch's rows (`shards[i]`: row i's shard id) -> one spool file per shard in the batch, named by
    its sources, so that a retried task overwrites its own."""
    sources = table.column("source").to_pylist()
    for sid in sorted(set(shards)):
        rows_of = [i for i, x in enumerate(shards) if x == sid]
        buf = io.BytesIO()
        pq.write_table(table.take(pa.array(rows_of, type=pa.int64())), buf)
        uri = paths.spool_part_uri(output, sid, [sources[i] for i in rows_of])
        storage.write_bytes_atomic(uri, buf.getvalue(), store=store)


def merge_shard(shard: dict, *, output: str, store: StorageConfig, layout: str = "files",
                 parquet_images: bool = False) -> dict:
    """Spooled rows of one finished shard -> OUTPUT/manifest/<id>.parquet, then OUTPUT/_stats/<id>.json.

    Why a spool and a merge rather than one task per shard: the model sits in an actor pool between the
    CPU stages, so the rows of one shard come back from many finish tasks, in any order, mixed with other
    shards' rows; grouping them inside Ray Data (groupby) is an all-to-all barrier that would hold every
    output until the whole dataset is done. The spool costs one small PUT per (batch, shard) plus one GET
    and one DELETE per spool file at merge time, about 0.1 request per image at batch size 32, and keeps
    the ledger at one part and one stats record per shard. Rows are de-duplicated by source here (a
    crashed earlier attempt may have left spool files), the newest row winning; with ``retry`` set, the
    shard's old part is the base and the new rows replace its rows for the same sources.
    """
    sid = shard["id"]
    fs, spool = storage.filesystem(paths.spool_dir(output, sid), store=store)
    try:
        names = sorted(p for p in storage.retrying(lambda: fs.ls(spool, detail=False), store.retries) if p.endswith(".parquet"))
    except FileNotFoundError:
        names = []
    tables = []
    if shard.get("retry", "none") != "none":
        pfs, ppath = storage.filesystem(paths.part_uri(output, sid), store=store)
        try:
            tables.append(pq.read_table(io.BytesIO(storage.retrying(lambda: pfs.cat_file(ppath), store.retries))))
        except FileNotFoundError:
            pass
    blobs = storage.retrying(lambda: fs.cat(names), store.retries) if names else {}
    tables += [pq.read_table(io.BytesIO(blobs[n])) for n in names]
    if tables:
        table = pa.concat_tables(tables, promote_options="default")
    else:
        table = MANIFEST_SCHEMA.empty_table()
    # newest row per source (old part rows are older than this run's rows)
    srcs = table.column("source").to_pylist()
    when = table.column("finished_at").to_pylist()
    best: dict[str, int] = {}
    for i, (src, t) in enumerate(zip(srcs, when)):
        if src not in best or (t or 0) >= (when[best[src]] or 0):
            best[src] = i
    if shard.get("marker") in best and len(best) > 1:  # a shard that failed to expand, now expanded
        del best[shard["marker"]]
    table = table.take(pa.array(sorted(best.values()), type=pa.int64()))
    # the layout's images (webdataset: the shard's tar), before its part
    table = WRITERS[layout].merge(table, output=output, sid=sid, retried=shard.get("retry", "none") != "none",
                                  parquet_images=parquet_images, store=store)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes_atomic(paths.part_uri(output, sid), buf.getvalue(), store=store, tmp_dir=paths.spool_dir(output, sid))
    status, errors = table.column("status").to_pylist(), table.column("error").to_pylist()
    reasons: dict[str, int] = {}
    for st, e in zip(status, errors):
        if st not in ("ok", "skipped"):  # a skipped row is done (--colour-inputs skip), not an error
            reasons[ledger.reason_of(e)] = reasons.get(ledger.reason_of(e), 0) + 1
    stats = {
        "shard": sid,
        "root": shard["root"],
        "kind": shard["kind"],
        "uri": shard["uri"],
        "rows": table.num_rows,
        "ok": sum(1 for st in status if st == "ok"),
        "error": sum(1 for st in status if st not in ("ok", "skipped")),
        "skipped": sum(1 for st in status if st == "skipped"),  # left alone: they have colour (--colour-inputs skip)
        "has_colour": sum(1 for h in table.column("has_colour").to_pylist() if h) if "has_colour" in table.column_names else 0,
        # ok rows by what the model ran in ({"bf16": n}); rows of parts older than the column are not counted
        "precision": _precision_counts(table, status),
        "errors_by_reason": reasons,
        "finished_at": time.time(),
    }
    # written after the part: a stats record means "this shard's part is complete"
    ledger.write_json(paths.stats_uri(output, sid), stats, store=store)
    if names or storage.is_local(output):  # locally the spool also holds what killed writes left (temp files)
        try:
            fs.rm(spool, recursive=True)
        except FileNotFoundError:
            pass
    return stats


def _precision_counts(table: pa.Table, status: list) -> dict[str, int]:
    counts: dict[str, int] = {}
    if "precision" in table.column_names:
        for p, st in zip(table.column("precision").to_pylist(), status):
            if st == "ok" and p:
                counts[p] = counts.get(p, 0) + 1
    return counts
