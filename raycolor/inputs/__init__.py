"""What an input is and how it becomes shards and items: listing rules, items, shards, expansion.

Pure fsspec/pyarrow on top of :mod:`raycolor.storage` (the reads, the retry policy): this package never
imports ray or torch, so the Ray pipelines (and their workers) can call it cheaply. Three modules, one job
each: :mod:`.listing` (the listing rules and items), :mod:`.shards` (classify, size, chunk, expand),
:mod:`.folders` (listing folders in tasks), :mod:`.reading` (the one reading loop); callers use the names below, as ``inputs.expand(...)``.

Inputs accepted by :func:`list_items` (any mix, in any number):

* a folder -- local path, ``file://``, ``s3://bucket/prefix`` (or any installed fsspec protocol
  such as ``gs://`` / ``az://``): recursive listing of the image files below it
  (suffixes in :data:`IMAGE_SUFFIXES`, case-insensitive); ``relpath`` is the path relative to the
  folder. Tars found inside a folder are *not* expanded: pass them explicitly.
* a single image file: one item, ``relpath`` = its basename.
* a ``.tar`` (uncompressed) archive: its regular image members are listed by reading the tar
  headers only (seekable, no extraction, nothing written to disk). Each member becomes an item
  whose ``uri`` is the tar itself plus ``offset``/``size``, so :func:`storage.read_item` does one range
  read. ``relpath`` = ``"<the tar's path below its root's base>/<member name>"``, sanitised: for a tar
  found by a glob (``in/*/batch.tar``), below the glob's last folder without a wildcard
  (``alice/batch.tar/x.png``); for a tar in a folder of tars, below that folder; for a tar given
  directly, its basename (``batch.tar/x.png``). Links, devices, directories and sparse members are skipped.
* a manifest -- ``.txt`` (one URI per line; blank lines and ``#`` comments ignored) or
  ``.parquet`` with a string ``uri`` column. Entries are taken as image files *as given*: no
  listing and no existence check is done (that is the point of a manifest on a huge prefix); an
  entry that cannot be read or decoded becomes an error row downstream.
  Relative entries are resolved against the manifest's own folder. An entry with credentials in
  its URI (``s3://key:secret@b/x.jpg``) is listed with them replaced by ``***`` and fails to
  read: credentials in URIs are not supported anywhere (see :func:`storage.filesystem`).
  **Manifest relpath rule**: a remote entry is its bucket or host, then its path, without scheme,
  userinfo or a presigned URL's query (``storage.stored_uri``) -- ``s3://b/p/x.jpg`` -> ``b/p/x.jpg``, ``https://h/p/x.jpg`` -> ``h/p/x.jpg``; a local
  one its path -- ``/data/p/x.jpg`` -> ``data/p/x.jpg``, ``file:///data/x.jpg`` -> ``data/x.jpg``; a
  relative entry keeps its text (``imgs/x.jpg`` -> ``imgs/x.jpg``), under the manifest's folder below
  its root's base when the manifest was found by a glob or in a folder (``lists/*/m.txt``: ``alice/imgs/x.jpg``);
  always sanitised.

**Not taken.** Nothing is skipped silently. A folder's files that are not images (by suffix: PDFs, XML, a kind
of image raycolor does not read, tars and manifests inside a folder of images), a tar's members that are not
images (links and sparse members too) and a glob's matches that are not tars or manifests are counted by
lower-cased suffix (``"(none)"`` for a name without one): ``{".pdf": 12000, ".xml": 345}``
(:func:`merge_not_taken`: largest first, at most a few dozen suffixes, the rest as ``"(other)"``). A folder's
files are counted by the tasks that list it and a tar's members by the task that sizes it, on every run; the
driver holds one such dict per root. Manifest entries are taken as given: nothing is counted for them. A
folder with no image names what it holds instead (:func:`no_images`).

The order is deterministic: inputs in the order given; within a folder, sorted by relpath; within
a tar, archive order (which is also the best order for range reads); within a manifest, file
order. The same ``source`` appearing twice (across or within inputs) is kept once (first wins).
Two different sources whose outputs would collide -- same relpath up to the extension and
letter case, e.g. ``x.jpg`` and ``x.PNG`` both become ``x.png`` -- are disambiguated
deterministically: the first keeps its name, later ones get ``"__" + sha1(source)[:8]`` before the
extension (``x__1a2b3c4d.PNG``). "First keeps its name" means that appending inputs to a rerun
never renames outputs that already exist. That renaming sees the items listed together: all of
:func:`list_items`, a folder listing group, one shard. Across the shards and roots of a run, keys are kept
apart by construction instead: the tar and manifest rules above make the keys of different objects of one
root differ, and on a first run only the folder and image roots (listed together) share the plain namespace
(``raycolor.outputs.ledger.assign_namespaces``). Not covered: two entries of one manifest (or of two
manifests of one root) in different shards whose keys differ only in extension or letter case
(``p/x.jpg``, ``p/x.PNG``), or that name one bucket through two schemes; two tars of one root whose paths
differ only in letter case.

**Key rules.** The rules above are key rule 2 (:data:`KEY_RULE`). Rule 1, the rule before it, keyed a tar's
members under the tar's basename alone and a remote manifest entry under its path alone (bucket/host
dropped), and kept relative manifest entries' text as is. An OUTPUT's root keeps the rule its outputs were
written with (its record in ``OUTPUT/_roots/``; no ``key_rule`` there means 1) on every later run, and a
new root gets the current rule: the rule travels on the shard descriptor (``Shard.key_rule``, 1 when
absent), so expansion in tasks keys each item by its own root's rule. Folder listings and single images are
keyed alike under both rules.

A **shard** is the unit of work, of resume and of the ledger:

* ``tar``: one input ``.tar`` (its members are listed from the headers inside the shard's task);
* ``parquet``: rows ``[start, stop)`` of one Parquet manifest (row counts come from the file footer);
* ``txt``: the lines starting in bytes ``[start, stop)`` of one ``.txt`` manifest (chunks found by one
  scan of the file, in a task);
* ``listing``: a chunk of a folder / prefix listing, saved as ``OUTPUT/_listing/<shard id>.parquet``
  (``uri``, ``relpath``, ``source``) by the task that listed it (:func:`list_group`), so that the driver
  never holds the listing and the shard's task reads only its chunk (training keeps them in its run's
  OUTPUT the same way).

The driver holds only :class:`Shard` descriptors (a few hundred bytes each, at most
``ceil(images / shard_size)`` of them); shard tasks expand them into items.

Listing chunks are content-defined: a chunk ends after a source whose hash is 0 modulo ``shard_size // 2``
(or when it reaches ``shard_size``), so a file added to a big folder changes one chunk, not every chunk
after it.
"""

from raycolor.core.suffixes import IMAGE_SUFFIXES, MANIFEST_SUFFIXES, TAR_SUFFIXES
from raycolor.inputs.folders import (
    LIST_FANOUT_DEPTH,
    ListGroup,
    list_group,
    remove_stale_parts,
    write_bin,
)
from raycolor.inputs.listing import (
    KEY_RULE,
    KEY_RULES,
    LISTING_SCHEMA,
    Item,
    dedupe,
    images_below,
    input_error,
    is_image,
    list_items,
    below_base,
    describe_not_taken,
    list_tar,
    manifest_items,
    merge_not_taken,
    no_images,
    not_taken_key,
    tar_members,
    tar_prefix,
    txt_entries,
)
from raycolor.inputs.reading import Decoded, read_decoded
from raycolor.inputs.shards import (
    RootPlan,
    Shard,
    chunk_listing,
    classify,
    expand,
    find_files,
    list_folder,
    listing_table,
    shard_id,
    size_and_count,
    size_object,
)
from raycolor.storage import InputError

__all__ = [
    "IMAGE_SUFFIXES",  # these three and suffix(): raycolor.core.suffixes, the one definition
    "KEY_RULE",
    "KEY_RULES",
    "LISTING_SCHEMA",
    "LIST_FANOUT_DEPTH",
    "MANIFEST_SUFFIXES",
    "TAR_SUFFIXES",
    "InputError",  # raycolor.storage's (filesystem raises it too), the one class
    "Decoded",
    "Item",
    "ListGroup",
    "RootPlan",
    "Shard",
    "chunk_listing",
    "below_base",
    "classify",
    "dedupe",
    "describe_not_taken",
    "expand",
    "find_files",
    "images_below",
    "input_error",
    "is_image",
    "list_folder",
    "list_group",
    "list_items",
    "list_tar",
    "listing_table",
    "manifest_items",
    "merge_not_taken",
    "no_images",
    "not_taken_key",
    "read_decoded",
    "remove_stale_parts",
    "shard_id",
    "size_and_count",
    "size_object",
    "tar_members",
    "tar_prefix",
    "txt_entries",
    "write_bin",
]
