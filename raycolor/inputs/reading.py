"""The one reading loop of colorize, evaluate and training: a batch of items read together through storage, each
decoded by the one decode policy (:func:`raycolor.core.images.decode`), one outcome per item, in order."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

from raycolor import storage
from raycolor.config import DEFAULT_MAX_PIXELS, DEFAULT_STORE, StorageConfig
from raycolor.core.failures import internal_error
from raycolor.core.images import DecodedImage, DecodeError, Depth, decode
from raycolor.core.metadata import Metadata
from raycolor.inputs.listing import Item


class Decoded(NamedTuple):
    """One item's outcome in :func:`read_decoded`: exactly one of ``rgb``, ``peeked`` or ``error`` is set."""

    rgb: np.ndarray | None = None  # decode's upright (H, W, 3): uint8, or uint16 for a 16-bit source at depth "auto"
    meta: Metadata | None = None  # the input's metadata (set with ``rgb``)
    data: bytes | None = None  # the item's own bytes, when ``peek`` took them (set with ``peeked``)
    peeked: Any = None  # what ``peek`` returned
    error: str | None = None  # "read_failed: <redacted cause>", the DecodeError text ("truncated: ...") or "internal: ..."
    # hex SHA-256 of the bytes read (the manifest's source_sha256, for fixity): set whenever the read succeeded,
    # an undecodable item's too; None only when the read failed
    sha256: str | None = None


def read_decoded(
    items: Sequence[Item],
    *,
    store: StorageConfig = DEFAULT_STORE,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    peek: Callable[[bytes], Any] | None = None,
    depth: Depth = "8",
    limit: str = "the limit",
) -> Iterator[Decoded]:
    """The one reading loop (colorize, evaluate and both training transforms): one :class:`Decoded` per item,
    in order.

    The batch's reads are in flight together (:func:`storage.read_items`: ``store.io_concurrency`` at a time,
    per-item retries), then each item is decoded with :func:`~raycolor.core.images.decode` when the caller asks for it, so a
    caller that works as it goes holds one full-size RGB at a time (plus the batch's bytes, each released
    once its item is yielded). A read that failed after its retries is ``error="read_failed: ..."`` (the
    cause redacted), an undecodable item is ``error=str(DecodeError)``, and anything else ``peek`` or the
    decoder raises is ``error="internal: ..."`` (:mod:`raycolor.core.failures`); none of them stops the others. ``peek``
    (e.g. the device-codec check, :func:`~raycolor.core.images.device_decodable_jpeg`) sees each item's bytes first: when it
    returns something other than None the item is not decoded here and comes back as ``data`` +
    ``peeked``.

    Every item read is hashed here (``sha256``), while its bytes are in memory: the one read of the input is
    also its fixity record's (about 1.5 GB/s a core, next to decode's ~100 MB/s).
    """
    items = list(items)
    datas = storage.read_items(items, store=store)
    for k, item in enumerate(items):
        data, datas[k] = datas[k], None  # the batch's bytes go as their items are done
        if isinstance(data, Exception):
            yield Decoded(error=f"read_failed: {storage.redact(data, item.uri)}")
            continue
        sha = hashlib.sha256(data).hexdigest()
        try:
            peeked = peek(data) if peek is not None else None
            box = [] if peeked is not None else [decode(data, max_pixels=max_pixels, depth=depth, limit=limit)]
        except DecodeError as e:
            yield Decoded(error=str(e), sha256=sha)
            continue
        except Exception as e:  # a file no one planned for: this item's error row, never the task's end
            yield Decoded(error=storage.redact(internal_error(e, "decode"), item.uri), sha256=sha)
            continue
        if peeked is not None:
            yield Decoded(data=data, peeked=peeked, sha256=sha)
            continue
        del data
        # popped on the way out: no local of this generator holds the pixels while it waits for the caller,
        # who alone decides when they go
        yield _as_decoded(box.pop(), sha)


def _as_decoded(got: DecodedImage, sha: str) -> Decoded:
    return Decoded(rgb=got.rgb, meta=got.meta, sha256=sha)
