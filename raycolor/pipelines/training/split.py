"""The hold-out split: the rule (split_items), its sums over shards (SplitStats), the rule per row (Split).

Plain Python on source URIs: no Ray, no torch. The driver sums SplitStats over shards and chooses a Split;
each Ray Data task applies it to its own rows (data.shard_rows), so no per-image list is ever held.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from raycolor import inputs, storage

__all__ = ["Split", "SplitStats", "split_items"]


def _hash_fraction(source: str) -> float:
    """A stable number in [0, 1) from the item's source URI (sha1), independent of listing order."""
    return int(storage.digest(source, 16), 16) / 2.0**64


def split_items(
    items: Sequence[inputs.Item], val_fraction: float
) -> tuple[list[inputs.Item], list[inputs.Item]]:
    """Deterministic hold-out: an item is validation iff sha1(source) maps below val_fraction.

    With >= 2 items both sides get at least one (the lowest-hash item is moved to val, or the highest to
    train), so tiny data sets still train and validate. The reference for :class:`SplitStats` and
    :class:`Split`, which give the same result without the list (training plans shards, not items).
    """
    scored = sorted(((_hash_fraction(it.source), i, it) for i, it in enumerate(items)), key=lambda t: t[:2])
    val = [t for t in scored if t[0] < val_fraction]
    train = [t for t in scored if t[0] >= val_fraction]
    if len(scored) >= 2:
        if not val:
            val, train = train[:1], train[1:]
        elif not train:
            val, train = val[:-1], val[-1:]
    order = lambda ts: [it for _, _, it in sorted(ts, key=lambda t: t[1])]  # noqa: E731  (listing order)
    return order(train), order(val)


@dataclass(frozen=True)
class SplitStats:
    """What the hold-out needs to know about some items, summed over shards: count, how many hash below
    val_fraction, and the lowest and highest (hash, source)."""

    n: int = 0
    below: int = 0
    lo: tuple[float, str] | None = None
    hi: tuple[float, str] | None = None

    @classmethod
    def of(cls, srcs: Iterable[str], val_fraction: float) -> SplitStats:
        n = below = 0
        lo = hi = None
        for s in srcs:
            h = (_hash_fraction(s), s)
            n += 1
            below += h[0] < val_fraction
            lo = h if lo is None or h < lo else lo
            hi = h if hi is None or h > hi else hi
        return cls(n, below, lo, hi)

    def __add__(self, other: SplitStats) -> SplitStats:
        los = [x for x in (self.lo, other.lo) if x is not None]
        his = [x for x in (self.hi, other.hi) if x is not None]
        return SplitStats(self.n + other.n, self.below + other.below, min(los, default=None), max(his, default=None))


@dataclass(frozen=True)
class Split:
    """The hold-out rule, applied to each row where shards are expanded: validation iff the source's hash
    is below ``threshold`` (or equal to it, when ``inclusive``)."""

    threshold: float
    inclusive: bool = False

    def is_val(self, source: str) -> bool:
        h = _hash_fraction(source)
        return h < self.threshold or (self.inclusive and h == self.threshold)

    @classmethod
    def choose(cls, stats: SplitStats, val_fraction: float) -> tuple[Split, int, int]:
        """(rule, training images, validation images) equal to :func:`split_items` over all the items:
        val iff hash < val_fraction, except that with >= 2 items an empty side takes the boundary item
        (the lowest hash moves to val: val iff hash <= lowest; the highest moves to train: val iff hash <
        highest). Items with the very same hash fraction (in practice: one source listed twice) move
        together where split_items moves one of them."""
        if stats.n < 2:
            raise ValueError(f"need at least 2 images to hold some out for validation, found {stats.n}")
        if stats.below == 0:
            return cls(stats.lo[0], inclusive=True), stats.n - 1, 1
        if stats.below == stats.n:
            return cls(stats.hi[0]), 1, stats.n - 1
        return cls(val_fraction), stats.n - stats.below, stats.below