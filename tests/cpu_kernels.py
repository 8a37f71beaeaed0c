"""The numeric core and the CPU kernels to rerun it under (`make test-kernels`, and tests/test_cpu_kernels.py in
`make test`).

Run as a script it prints the ATEN_CPU_CAPABILITY values this machine can run, one per line; with `--tests`, the
test files (and node ids) of the numeric core instead.

x86-64: default, avx2 and, where the CPU has AVX-512, avx512. Elsewhere: default and the machine's own. torch
picks the highest the CPU has unless told; asking for one above it silently gives a lower one, so only those at or
below torch's own choice are listed.

`--others`: all but the kernel that the main run used (ATEN_CPU_CAPABILITY when it is set, else torch's own
choice): that run has just checked the numeric core on it, with the rest of the suite.

Imports no torch at module level: torch reads ATEN_CPU_CAPABILITY once, when it is imported, so torch's own choice
can only be asked in a process started without it (`capabilities` starts one).
"""

from __future__ import annotations

import os
import subprocess
import sys

# The tests whose results go through torch's CPU kernels (colour maths, compose, model, metrics, and the metadata
# test that checks L* against raycolor.core.color): ATEN_CPU_CAPABILITY changes nothing else. Image decoding and
# the rest of the metadata tests run in Pillow and NumPy, the same under every torch kernel, so they run once, in
# the main suite; so do the tests marked kernel_free (pyproject.toml).
KERNEL_TESTS = (
    "tests/test_color.py",
    "tests/test_colorize.py",
    "tests/test_compose_exact.py",
    "tests/test_model.py",
    "tests/test_metrics.py",
    "tests/test_metadata.py::test_lightness_is_raycolor_colors_formula",
)

ORDER = ["default", "avx2", "avx512"]


def _torch_choice() -> str:
    """The kernel torch picks on this CPU when not told (printed by a fresh process without ATEN_CPU_CAPABILITY)."""
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    code = "import torch; print(torch.backends.cpu.get_cpu_capability().lower())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()


def capabilities(others: bool = False, asked: str | None = None) -> list[str]:
    """The kernels this machine runs; with `others`, all but the one a run with ATEN_CPU_CAPABILITY=`asked` (or
    torch's own choice when None) used."""
    best = _torch_choice()
    caps = ORDER[: ORDER.index(best) + 1] if best in ORDER else list(dict.fromkeys(["default", best]))  # arm64 SVE
    if others:
        caps = [c for c in caps if c != (asked or best).lower()]
    return caps


if __name__ == "__main__":
    if "--tests" in sys.argv[1:]:
        print("\n".join(KERNEL_TESTS))
    else:
        print("\n".join(capabilities("--others" in sys.argv[1:], os.environ.get("ATEN_CPU_CAPABILITY"))))
