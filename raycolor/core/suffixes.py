"""What an input is, by its file suffix: the image suffixes (the format registry's, :mod:`raycolor.core.formats`),
and those of tar archives and manifests. :mod:`raycolor.inputs` (listing) takes its suffixes from here."""

from __future__ import annotations

import posixpath

from raycolor.core.formats import INPUT_SUFFIXES

__all__ = ["IMAGE_SUFFIXES", "MANIFEST_SUFFIXES", "OBJECT_KINDS", "TAR_SUFFIXES", "object_kind", "suffix"]

# the inputs we take (any case): every format the registry reads (GIF too: its first frame decodes like any still)
IMAGE_SUFFIXES: frozenset[str] = INPUT_SUFFIXES
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
