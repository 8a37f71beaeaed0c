"""The metadata read -> write fuzz target (tests/metafuzz.py) for longer than the fast tier runs it.

Each case mutates real EXIF / XMP / IPTC blocks (byte flips, truncations, IFD entries' types, counts and
offsets, aliases, resolutions, XMP snippets and re-encodings, IIM lengths) in a JPEG, PNG, TIFF or WebP, decodes
it, encodes it to every format and decodes each output again (raycolor and Pillow). Prints what failed and
keeps each failing input under --keep, to replay with ``metafuzz.check(open(path, "rb").read())``.

    .venv/bin/python bench/fuzz_metadata.py                    # 5,000 cases (about a minute on one core)
    .venv/bin/python bench/fuzz_metadata.py --seconds 600 --seed 7 --keep /tmp/fuzz-failures
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _metafuzz():
    """tests/metafuzz.py, loaded by path: the bench shares the suite's target without putting tests/ on sys.path."""
    spec = importlib.util.spec_from_file_location("metafuzz", ROOT / "tests" / "metafuzz.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["metafuzz"] = module
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=5000, help="how many cases (default 5000)")
    ap.add_argument("--seconds", type=float, default=None, help="stop after this long, whatever --cases says")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, default=None, help="a folder for the failing inputs")
    args = ap.parse_args(argv)
    metafuzz = _metafuzz()
    cases = args.cases if args.seconds is None else max(args.cases, 10**9)
    t0 = time.perf_counter()
    n, failures = metafuzz.run(cases, seed=args.seed, seconds=args.seconds)
    seconds = time.perf_counter() - t0
    print(f"{n} cases in {seconds:.1f} s ({1000 * seconds / max(n, 1):.1f} ms a case), seed {args.seed}: "
          f"{len(failures)} failed")
    kinds = collections.Counter(f.problem.splitlines()[0][:100] for f in failures)
    for problem, count in kinds.most_common():
        print(f"  {count:5d}  {problem}")
    for f in failures[:10]:
        print(f"\ncase {f.case} ({f.fmt}, mutated {f.mutation}):\n{f.problem}")
    if args.keep is not None and failures:
        args.keep.mkdir(parents=True, exist_ok=True)
        suffix = {"jpeg": ".jpg", "png": ".png", "tiff": ".tif", "webp": ".webp"}
        for f in failures:
            (args.keep / f"case{f.case}-seed{args.seed}{suffix[f.fmt]}").write_bytes(f.data)
        print(f"\nfailing inputs in {args.keep}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
