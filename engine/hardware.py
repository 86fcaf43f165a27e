"""What the machine's processors can do fast, detected rather than guessed."""

from __future__ import annotations

import functools
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# /proc/cpuinfo flags of the x86 instructions that make bf16 matmuls fast on the CPU.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def _torch_says() -> bool | None:
    """torch's own capability queries (private, so each is looked up first); None: no answer."""
    import torch

    queries = [getattr(torch.cpu, name, None)
               for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    answers = [bool(q()) for q in queries if callable(q)]
    return any(answers) if answers else None


def _cpuinfo_flags() -> set[str]:
    try:
        text = CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


@functools.cache
def cpu_native_bf16() -> tuple[bool, str]:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX), and how we know."""
    if _torch_says():
        return True, "the CPU has native bf16 (AVX-512 BF16 or AMX, as torch reports)"
    found = [f for f in BF16_FLAGS if f in _cpuinfo_flags()]
    if found:
        return True, f"the CPU has native bf16 ({', '.join(found)} in /proc/cpuinfo)"
    return False, ("the CPU has no native bf16 (neither AVX-512 BF16 nor AMX): bf16 autocast "
                   "would be emulated and slower than fp32")
