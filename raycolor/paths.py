"""Where a run's files go under its OUTPUT: every path raycolor writes is made here, and nothing else spells one
(tests/test_paths.py holds that).

Colorize (`raycolor colorize ... --output OUTPUT`):

    OUTPUT/images/[<namespace>/]<key>            the colorized images (layout "files")
    OUTPUT/derivatives/<name>/[<namespace>/]<key>  each --derivative's copy of them, e.g. name "jpeg-3000" (layout "files")
    OUTPUT/shards/<shard id>.tar                 the colorized images of one shard (layout "webdataset")
    OUTPUT/manifest/<shard id>.parquet           one part per shard: one row per input of the shard
    OUTPUT/_stats/<shard id>.json                counts of the shard; written after its part: "shard done"
    OUTPUT/_roots/<root id>.json                 one per input root: its namespace, key rule and current shards
    OUTPUT/_listing/<shard id>.parquet           listing chunks (folder inputs)
    OUTPUT/_spool/<shard id>/<hash>.parquet      rows of finished batches until their shard is merged
    OUTPUT/_lock.json                            held while a driver runs
    OUTPUT/_SUCCESS.json                         written last

Training (`raycolor train --output OUTPUT`):

    OUTPUT/train/checkpoint_e<epoch>_<time>/   the Ray Train run (RunConfig(name="train", storage_path=OUTPUT))
    OUTPUT/model/                              the exported model (raycolor.core.checkpoint's format)
    OUTPUT/metrics.jsonl                       one line per epoch
    OUTPUT/curves.png                          the training curves
    OUTPUT/prior.json                          the classification head's class prior (one Ray Data pass)
    OUTPUT/_listing/<shard id>.parquet         folder inputs' listing chunks, as colorize keeps them
"""

from __future__ import annotations

import posixpath
import time

from raycolor import storage

# Ray Train names the run's folder (RunConfig(name=...)) below OUTPUT itself: the name, not a path
TRAIN_RUN = "train"
CHECKPOINT_PREFIX = "checkpoint_"


# --- colorize


def images_dir(output: str) -> str:
    return storage.join_uri(output, "images")


def image_uri(output: str, key: str) -> str:
    return storage.join_uri(output, "images", key)


def derivatives_dir(output: str) -> str:
    return storage.join_uri(output, "derivatives")


def derivative_uri(output: str, name: str, key: str) -> str:
    """Where the derivative `name` of the output `key` goes (layout "files"): OUTPUT/derivatives/<name>/<key>."""
    return storage.join_uri(output, "derivatives", name, key)


def shards_dir(output: str) -> str:
    return storage.join_uri(output, "shards")


def shard_tar_uri(output: str, sid: str) -> str:
    return storage.join_uri(output, "shards", f"{sid}.tar")


def manifest_dir(output: str) -> str:
    return storage.join_uri(output, "manifest")


def part_uri(output: str, sid: str) -> str:
    return storage.join_uri(output, "manifest", f"{sid}.parquet")


def stats_dir(output: str) -> str:
    return storage.join_uri(output, "_stats")


def stats_uri(output: str, sid: str) -> str:
    return storage.join_uri(stats_dir(output), f"{sid}.json")


def listing_uri(output: str, sid: str) -> str:
    return storage.join_uri(output, "_listing", f"{sid}.parquet")


def spool_dir(output: str, sid: str) -> str:
    return storage.join_uri(output, "_spool", sid)


def roots_dir(output: str) -> str:
    return storage.join_uri(output, "_roots")


def spool_part_uri(output: str, sid: str, sources) -> str:
    """One finished batch's rows of shard `sid`, named by the sources it holds: a retried task overwrites its own."""
    return storage.join_uri(spool_dir(output, sid), f"part-{storage.digest(chr(10).join(sorted(sources)), 20)}.parquet")


def list_parts_uri(output: str) -> str:
    """`raycolor list OUTPUT`'s listing parts' URI pattern ({id}: the shard id)."""
    return storage.join_uri(output, "part-{id}.parquet")


def shard_files(output: str, sid: str) -> list[str]:
    """Every file and folder of OUTPUT's bookkeeping that shard `sid` writes (its outputs aside: they are the
    images or, in a WebDataset, its tar): what goes when the shard is superseded."""
    return [stats_uri(output, sid), part_uri(output, sid), listing_uri(output, sid), spool_dir(output, sid),
            shard_tar_uri(output, sid)]


def root_uri(output: str, root: str) -> str:
    return storage.join_uri(roots_dir(output), f"{root_id(root)}.json")


def success_uri(output: str) -> str:
    return storage.join_uri(output, "_SUCCESS.json")


# --------------------------------------------------------------------------------------------
# Output names: a source's relpath -> [<namespace>/]key (its extension the format registry's) -> WebDataset member
# --------------------------------------------------------------------------------------------


def split_ext(relpath: str) -> tuple[str, str]:
    """("a/b/x.JPG") -> ("a/b/x", ".JPG"); a dot-file has no extension: ".hidden" -> (".hidden", "")."""
    head, base = posixpath.split(relpath)
    stem, ext = posixpath.splitext(base)
    return posixpath.join(head, stem) if head else stem, ext


def output_key(relpath: str, ext: str) -> str:
    """``relpath`` (sanitised) with its extension replaced by ``ext`` (the output format's, ``Format.extension``):
    ("a/b/x.JPG", ".png") -> "a/b/x.png"."""
    if ext and not ext.startswith("."):
        ext = "." + ext
    stem, _ = split_ext(storage.sanitize_relpath(relpath))
    return stem + ext


def disambiguated(name: str, salt: str) -> str:
    """``name`` made distinct from another that collides with it (case-insensitively), by a hash of ``salt`` (the
    input's source): the one renaming rule of input relpaths (inputs.listing's de-duplication) and of WebDataset
    members."""
    return f"{name}__{storage.digest(salt, 8)}"


def namespaced(namespace: str, relpath: str) -> str:
    """An input's relpath inside its root's namespace ("" : the plain one, no prefix)."""
    return f"{namespace}/{relpath}" if namespace else relpath


def wds_key(output_key: str) -> str:
    """WebDataset member key of an output key: extension off, dots in the path replaced (keys hold no dots)."""
    stem = output_key.rsplit(".", 1)[0] if "." in output_key.rsplit("/", 1)[-1] else output_key
    return stem.replace(".", "_")


def root_id(root: str) -> str:
    return storage.digest_parts("root", root)


def namespace_for(root: str) -> str:
    stem = posixpath.basename(root.rstrip("/").split("#", 1)[0]) or "root"
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:40].strip(".") or "root"
    return f"{stem}-{storage.digest_parts('ns', root, n=8)}"


def lock_uri(output: str) -> str:
    return storage.join_uri(output, "_lock.json")


# --- training


def train_run_uri(output: str) -> str:
    return storage.join_uri(output, TRAIN_RUN)


def model_uri(output: str) -> str:
    return storage.join_uri(output, "model")


def metrics_uri(output: str) -> str:
    return storage.join_uri(output, "metrics.jsonl")


def curves_uri(output: str) -> str:
    return storage.join_uri(output, "curves.png")


def prior_uri(output: str) -> str:
    return storage.join_uri(output, "prior.json")


def training_listing_uri(output: str) -> str:
    """The listing chunks' URI pattern ({id}: the shard id), as colorize's OUTPUT/_listing/."""
    return listing_uri(output, "{id}")


def checkpoint_name(epoch: int) -> str:
    """A new checkpoint folder's name below the run: the epoch first, zero-padded, so that the names in order are
    the order of progress; the time and nanoseconds after it keep two saves of one epoch apart."""
    return f"{CHECKPOINT_PREFIX}e{epoch:06d}_{time.strftime('%Y%m%d-%H%M%S')}_{time.time_ns() % 10**9:09d}"


def is_checkpoint_name(name: str) -> bool:
    return name.startswith(CHECKPOINT_PREFIX)
