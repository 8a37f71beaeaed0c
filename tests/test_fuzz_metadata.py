"""The fast-tier fuzz target for metadata read -> write (tests/metafuzz.py): seeded, a few hundred cases, seconds.

bench/fuzz_metadata.py runs the same target for longer. A failure here prints the case's mutation and problem;
re-run it with ``metafuzz.run(case, seed=SEED)`` to reproduce it.
"""

from __future__ import annotations

import time

try:
    import metafuzz
except ImportError:  # tests/ turned into a package
    from tests import metafuzz

CASES = 400
SEED = 20261207


def test_mutated_metadata_never_costs_more_than_a_decode_error():
    t0 = time.perf_counter()
    n, failures = metafuzz.run(CASES, seed=SEED)
    seconds = time.perf_counter() - t0
    assert n == CASES
    assert not failures, "\n".join(f"case {f.case} ({f.fmt}, {f.mutation}): {f.problem}" for f in failures[:5])
    # a few seconds on an idle core (~10 ms a case); the bound leaves room for a loaded, shared machine
    assert seconds < 60, seconds


def test_the_seeds_are_real_metadata():
    """Unmutated, each container carries all three groups, read back with nothing dropped."""
    import numpy as np

    from raycolor.core import images

    b = metafuzz.seed_blocks()
    rgb = np.zeros((12, 16, 3), np.uint8)
    for fmt in ("jpeg", "png", "tiff"):
        meta = images.decode(metafuzz.container(fmt, rgb, b)).meta
        assert meta.exif and meta.xmp and meta.iptc, fmt
        drops = [n for n in meta.notes if n[0] != "exif.MakerNote" and not n[1].startswith("converted")]
        assert not drops, (fmt, meta.notes)  # (Pillow writes FocalPlaneXResolution as a DOUBLE: converted)
    assert metafuzz.check(metafuzz.container("webp", rgb, b)) is None
