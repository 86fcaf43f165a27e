"""Process memory for step events: CUDA peak on a GPU, peak RSS on the CPU."""

from __future__ import annotations

import sys
from typing import Any

GIB = 1024**3


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (bytes)."""
    if sys.platform == "win32":
        import psutil

        return int(getattr(psutil.Process().memory_info(), "peak_wset", 0))
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS: bytes, Linux: KiB


def memory_snapshot(device: str) -> dict[str, Any]:
    if device.startswith("cuda"):
        import torch

        return {"kind": "cuda",
                "allocated_gb": round(torch.cuda.memory_allocated() / GIB, 3),
                "reserved_gb": round(torch.cuda.memory_reserved() / GIB, 3),
                "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / GIB, 3)}
    import psutil

    return {"kind": "cpu_rss",
            "rss_gb": round(psutil.Process().memory_info().rss / GIB, 3),
            "peak_rss_gb": round(peak_rss_bytes() / GIB, 3)}
