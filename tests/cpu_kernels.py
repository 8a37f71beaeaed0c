"""Print the ATEN_CPU_CAPABILITY values this machine can run, one per line (used by `make test-kernels`).

x86-64: default, avx2 and, where the CPU has AVX-512, avx512. Elsewhere: default and the machine's own.
torch picks the highest the CPU has unless told; asking for one above it silently gives a lower one, so only
those at or below torch's own choice are listed.

`--others`: all but the kernel that `make test`'s main run used (ATEN_CPU_CAPABILITY when it is set, else torch's
own choice): that run has just checked the numeric core on it, with the rest of the suite.
"""

import os
import sys

asked = os.environ.pop("ATEN_CPU_CAPABILITY", None)  # unset before torch reads it: what follows is torch's own choice

import torch  # noqa: E402

ORDER = ["default", "avx2", "avx512"]
best = torch.backends.cpu.get_cpu_capability().lower()
caps = ORDER[: ORDER.index(best) + 1] if best in ORDER else list(dict.fromkeys(["default", best]))  # e.g. arm64 SVE
if "--others" in sys.argv[1:]:
    caps = [c for c in caps if c != (asked or best).lower()]
print("\n".join(caps))
