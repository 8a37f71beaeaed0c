"""What an input is, by its file suffix: the one list of image suffixes, and those of tar archives and
manifests. No imports: :mod:`raycolor.core.images` (decoding) and :mod:`raycolor.inputs` (listing) both take
their suffixes from here, so neither needs the other for them."""

from __future__ import annotations

import posixpath

__all__ = ["IMAGE_SUFFIXES", "MANIFEST_SUFFIXES", "OBJECT_KINDS", "TAR_SUFFIXES", "object_kind", "suffix"]

# the one list of inputs we take (any case); GIF is included because its first frame decodes like any still
IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif"})
TAR_SUFFIXES: frozenset[str] = frozenset({".tar"})
MANIFEST_SUFFIXES: frozenset[str] = frozenset({".txt", ".parquet"})
# suffix -> the kind of shard object a planner sizes (inputs.size_object)
OBJECT_KINDS: dict[str, str] = {".tar": "tar", ".parquet": "parquet", ".txt": "txt"}


def suffix(path: str) -> str:
    """The lower-cased suffix of ``path`` (a trailing "/" ignored): ``"a/B.JPG"`` -> ``".jpg"``."""
    return posixpath.splitext(path.rstrip("/"))[1].lower()


def object_kind(path: str) -> str | None:
    """"tar", "parquet" or "txt" for a tar archive or manifest named ``path``, else None."""
    return OBJECT_KINDS.get(suffix(path))
