"""The one owner of the numeric precision and memory layout the model runs in (colorize, evaluate, training).

    requested ("auto" | "fp32" | "bf16") + device -> resolve -> "bf16" | "fp32" -> autocast(...) around the trunk

"auto" is bf16 on CUDA, bf16 on a CPU that runs it natively (AVX512_BF16 or AMX: oneDNN's bf16 convolutions are
then ~2.5x fp32's on the dev box's EPYC, docs/performance.md), and fp32 on any other CPU, where bf16 would be
emulated and slower. Only the trunk runs under autocast: the classification head's softmax and annealed mean,
every loss and every colour conversion run in float32 on the trunk's output (.float()), and L never passes
through the model at all (compose takes it from the input), so it is exact whatever ran.

The weights stay float32 in every precision (autocast casts them per call), so a checkpoint written under any
precision loads and runs under any other. Every model runs channels_last, on CPU as on CUDA: oneDNN's and
cuDNN's convolutions are faster in NHWC (fp32 on the dev box: 217 against 286 ms/image at 224 px).

Torch is imported inside the functions, so that importing this module costs nothing (the colorize driver
never loads torch).
"""

from __future__ import annotations

import contextlib
from typing import Any

PRECISIONS = ("auto", "fp32", "bf16")


def check(requested: str) -> str:
    """`requested` if it is a precision raycolor knows, else a ValueError naming them."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {requested!r}")
    return requested


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512_BF16 or AMX-BF16 on x86; oneDNN's bf16 check on Arm, which
    holds only with the BF16 extension), as torch itself reports it. The one capability probe: tests monkeypatch it.

    torch.ops.mkldnn._is_mkldnn_bf16_supported() alone is not enough on x86: it holds on any AVX-512 core CPU
    (avx512bw/vl/dq), where oneDNN emulates bf16 more slowly than it runs fp32."""
    import platform

    import torch

    if not torch.backends.mkldnn.is_available():
        return False
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu, 2.3 .. 2.14
        return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve(requested: str, device: Any, *, training: bool = False) -> str:
    """"bf16" or "fp32": what a model on `device` (a torch.device or its type, "cpu" / "cuda") runs in when
    `requested` is asked for. An explicit "bf16" or "fp32" is honoured anywhere (bf16 on a CPU without it is
    emulated: slower, same maths); "auto" is bf16 on CUDA and, for inference, on a CPU with native bf16, fp32
    elsewhere. Training on a CPU stays fp32 under "auto": over the demo's budget bf16 training ended ~0.4 dB of
    val PSNR lower (15.21 and 14.85 against fp32's 15.60 and 15.34, two runs each) for no gain in wall time at its
    96 px (docs/performance.md), so the curve did not hold."""
    check(requested)
    if requested != "auto":
        return requested
    kind = getattr(device, "type", str(device))
    if kind == "cuda":
        return "bf16"
    if kind == "cpu" and not training:
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return "fp32"


def autocast_args(precision: str, device: Any) -> dict:
    """torch.autocast's keyword arguments for a resolved `precision` ("bf16" | "fp32") on `device`: bf16 autocast,
    or autocast disabled (plain fp32)."""
    import torch

    if precision not in ("bf16", "fp32"):
        raise ValueError(f"autocast_args takes a resolved precision (bf16 or fp32), not {precision!r}")
    kind = getattr(device, "type", str(device))
    return dict(device_type=kind, dtype=torch.bfloat16, enabled=precision == "bf16")


def autocast(precision: str, device: Any) -> contextlib.AbstractContextManager:
    """The context the trunk runs in for a resolved `precision` on `device` (autocast_args')."""
    import torch

    return torch.autocast(**autocast_args(precision, device))


def memory_format():
    """The layout every model runs in, on every device: channels_last (NHWC)."""
    import torch

    return torch.channels_last


def to_layout(model):
    """`model` with its 4-d weights in memory_format(), in place (float32 kept: its state dict and checkpoint are
    unchanged; a conv's output follows its weight's layout, so inputs need no conversion)."""
    return model.to(memory_format=memory_format())
