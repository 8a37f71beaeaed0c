"""The numeric core once more under each CPU kernel torch has for this machine (default and avx2 always, avx512
where the CPU has it), as part of `make test`: SIMD kernels round differently, and a newcomer's CPU must not
surprise CI. The rest of the suite has just run these tests on the kernel this process uses, so that one is
skipped here. Each run is a pytest subprocess (torch reads ATEN_CPU_CAPABILITY once, at import), so xdist runs
it beside the rest of the suite; `make test-kernels` runs every kernel on its own. Each run also checks that
torch really used the kernel asked for (tests/test_color.py::test_runs_on_the_cpu_kernel_asked_for)."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cpu_kernels import KERNEL_TESTS, ORDER, capabilities

pytestmark = pytest.mark.slow  # a subprocess

ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def _others() -> list[str]:
    return capabilities(others=True, asked=os.environ.get("ATEN_CPU_CAPABILITY"))


@pytest.mark.timeout(900)
@pytest.mark.parametrize("cap", ORDER)
def test_the_numeric_core_under_the_other_cpu_kernels(cap):
    if cap not in _others():
        pytest.skip(f"{cap}: this run used it, or this CPU lacks it (left to run here: {', '.join(_others()) or 'none'})")
    # a run of its own: none of this xdist worker's settings (PYTEST_XDIST_WORKER, ...) carried into it; one torch
    # thread, as it runs beside the rest of the suite (tests/conftest.py's pytest_configure says why; the tests
    # that check a thread count set it themselves)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}, "ATEN_CPU_CAPABILITY": cap,
           "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider", "-m", "not kernel_free",
         *KERNEL_TESTS],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=850,
    )
    assert run.returncode == 0, f"ATEN_CPU_CAPABILITY={cap}:\n{run.stdout[-8000:]}\n{run.stderr[-2000:]}"
    assert " passed" in run.stdout.splitlines()[-1], run.stdout[-2000:]
