"""Print the ATEN_CPU_CAPABILITY values this machine can run, one per line (used by `make test-kernels`).

x86-64: default, avx2 and, where the CPU has AVX-512, avx512. Elsewhere: default and the machine's own.
torch picks the highest the CPU has unless told; asking for one above it silently gives a lower one, so only
those at or below torch's own choice are listed.
"""

import torch

ORDER = ["default", "avx2", "avx512"]
best = torch.backends.cpu.get_cpu_capability().lower()
if best in ORDER:
    print("\n".join(ORDER[: ORDER.index(best) + 1]))
else:  # e.g. an arm64 machine's SVE kernels
    print("\n".join(dict.fromkeys(["default", best])))
