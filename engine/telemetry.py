"""GPU, RAM and CPU readings as plain data (no Qt), for the advisor and the GPU gauges.

NVIDIA GPUs are read through NVML (the ``pynvml`` module of nvidia-ml-py). Without an NVIDIA
driver -- the normal case on Macs and CPU-only machines -- the GPU list is empty and
:func:`gpu_status` says why; nothing here raises.
"""

from __future__ import annotations

import os
from typing import Any

GIB = 1024**3

# Compute capabilities from which a GPU runs bfloat16 natively (Ampere and newer).
BF16_MIN_CAPABILITY = (8, 0)


def _nvml() -> Any:
    """The initialised ``pynvml`` module; raises if NVML cannot start."""
    import pynvml

    pynvml.nvmlInit()
    return pynvml


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _optional(read: Any, *args: Any) -> Any:
    """One NVML reading, or None where the GPU does not report it."""
    try:
        return read(*args)
    except Exception:
        return None


def _one_gpu(nv: Any, index: int, driver: str) -> dict[str, Any]:
    handle = nv.nvmlDeviceGetHandleByIndex(index)
    mem = nv.nvmlDeviceGetMemoryInfo(handle)
    util = _optional(nv.nvmlDeviceGetUtilizationRates, handle)
    temp = _optional(nv.nvmlDeviceGetTemperature, handle, nv.NVML_TEMPERATURE_GPU)
    power_mw = _optional(nv.nvmlDeviceGetPowerUsage, handle)
    limit_mw = _optional(nv.nvmlDeviceGetEnforcedPowerLimit, handle)
    capability = _optional(nv.nvmlDeviceGetCudaComputeCapability, handle)
    cap = tuple(capability) if capability else None
    return {
        "index": index,
        "name": _text(nv.nvmlDeviceGetName(handle)),
        "total_gb": round(mem.total / GIB, 3),
        "used_gb": round(mem.used / GIB, 3),
        "free_gb": round(mem.free / GIB, 3),
        "utilization_pct": None if util is None else int(util.gpu),
        "memory_utilization_pct": None if util is None else int(util.memory),
        "temperature_c": temp,
        "power_w": None if power_mw is None else round(power_mw / 1000, 1),
        "power_limit_w": None if limit_mw is None else round(limit_mw / 1000, 1),
        "driver": driver,
        "compute_capability": None if cap is None else f"{cap[0]}.{cap[1]}",
        "bf16": None if cap is None else cap >= BF16_MIN_CAPABILITY,
    }


def gpu_status() -> dict[str, Any]:
    """``{"gpus": [...], "reason": str}``; reason is "" when NVML answered.

    Each GPU is a dict: index, name, total_gb/used_gb/free_gb (GiB), utilization_pct,
    memory_utilization_pct, temperature_c, power_w, power_limit_w, driver,
    compute_capability ("8.6") and bf16 (native bfloat16 support). Readings a GPU does not
    report are None.
    """
    try:
        nv = _nvml()
    except ImportError:
        return {"gpus": [], "reason": "nvidia-ml-py is not installed"}
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return {"gpus": [], "reason": f"no NVIDIA GPU found ({type(exc).__name__}: {exc})"}
    try:
        driver = _text(_optional(nv.nvmlSystemGetDriverVersion) or "")
        count = nv.nvmlDeviceGetCount()
        gpus = [_one_gpu(nv, i, driver) for i in range(count)]
        return {"gpus": gpus, "reason": "" if gpus else "the NVIDIA driver reports no GPU"}
    except Exception as exc:
        return {"gpus": [], "reason": f"reading the NVIDIA GPUs failed ({exc})"}
    finally:
        _optional(nv.nvmlShutdown)


def read_gpu_stats() -> list[dict[str, Any]]:
    """The NVIDIA GPUs as plain dicts (see :func:`gpu_status`); ``[]`` without NVML."""
    return list(gpu_status()["gpus"])


def read_system_stats() -> dict[str, Any]:
    """RAM and CPU of this machine and the memory of this process, as plain data."""
    import psutil

    vm = psutil.virtual_memory()
    proc = psutil.Process(os.getpid())
    return {
        "ram_total_gb": round(vm.total / GIB, 3),
        "ram_used_gb": round((vm.total - vm.available) / GIB, 3),
        "ram_available_gb": round(vm.available / GIB, 3),
        "ram_percent": vm.percent,
        "cpu_count": psutil.cpu_count(logical=True) or 1,
        "cpu_physical": psutil.cpu_count(logical=False),
        "cpu_percent": psutil.cpu_percent(interval=None),
        "process_rss_gb": round(proc.memory_info().rss / GIB, 3),
        "process_peak_rss_gb": _peak_rss_gb(),
    }


def _peak_rss_gb() -> float | None:
    """This process's peak resident memory in GiB (None where the OS does not say)."""
    from engine.telemetry_mem import peak_rss_bytes

    try:
        return round(peak_rss_bytes() / GIB, 3) or None
    except Exception:
        return None


ABOUT_PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets")


def library_versions() -> dict[str, Any]:
    """What the About box shows: the libraries' versions (None when not installed), the
    CUDA build of torch and whether a GPU answers, and the detected GPUs (``gpu_status``)."""
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in ABOUT_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    cuda: str | None = None
    cuda_available = False
    try:
        import torch

        cuda = torch.version.cuda
        cuda_available = bool(torch.cuda.is_available())
    except ImportError:
        pass
    status = gpu_status()
    return {"versions": versions, "cuda": cuda, "cuda_available": cuda_available,
            "gpus": status["gpus"], "gpu_reason": status["reason"]}
