"""Telemetry: GPU readings through NVML as plain data, never an exception."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest

from engine import telemetry


class _NVMLError(Exception):
    pass


def fake_pynvml(*, fail_init: bool = False, count: int = 1) -> types.ModuleType:
    mod = types.ModuleType("pynvml")
    mod.NVML_TEMPERATURE_GPU = 0  # type: ignore[attr-defined]
    calls: dict[str, int] = {"shutdown": 0}

    def init() -> None:
        if fail_init:
            raise _NVMLError("NVML Shared Library Not Found")

    def no_power(handle: Any) -> int:
        raise _NVMLError("Not Supported")

    mem = types.SimpleNamespace(total=24 * 2**30, used=2 * 2**30, free=22 * 2**30)
    util = types.SimpleNamespace(gpu=37, memory=12)
    mod.nvmlInit = init  # type: ignore[attr-defined]
    mod.nvmlShutdown = lambda: calls.__setitem__("shutdown", 1)  # type: ignore[attr-defined]
    mod.nvmlSystemGetDriverVersion = lambda: b"550.54"  # type: ignore[attr-defined]
    mod.nvmlDeviceGetCount = lambda: count  # type: ignore[attr-defined]
    mod.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    mod.nvmlDeviceGetName = lambda h: "NVIDIA GeForce RTX 4090"  # type: ignore[attr-defined]
    mod.nvmlDeviceGetMemoryInfo = lambda h: mem  # type: ignore[attr-defined]
    mod.nvmlDeviceGetUtilizationRates = lambda h: util  # type: ignore[attr-defined]
    mod.nvmlDeviceGetTemperature = lambda h, kind: 61  # type: ignore[attr-defined]
    mod.nvmlDeviceGetPowerUsage = no_power  # type: ignore[attr-defined]
    mod.nvmlDeviceGetEnforcedPowerLimit = lambda h: 450000  # type: ignore[attr-defined]
    mod.nvmlDeviceGetCudaComputeCapability = lambda h: (8, 9)  # type: ignore[attr-defined]
    mod.calls = calls  # type: ignore[attr-defined]
    return mod


def test_no_driver_is_an_empty_list_and_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(fail_init=True))
    status = telemetry.gpu_status()
    assert status["gpus"] == []
    assert "no NVIDIA GPU" in status["reason"]
    assert telemetry.read_gpu_stats() == []


def test_this_machine_never_raises() -> None:
    status = telemetry.gpu_status()  # the real pynvml: no driver here, a GPU elsewhere
    assert isinstance(status["gpus"], list)
    assert isinstance(status["reason"], str)
    assert status["gpus"] or status["reason"]


def test_gpu_readings_are_plain_data(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_pynvml(count=2)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    status = telemetry.gpu_status()
    assert status["reason"] == ""
    assert [g["index"] for g in status["gpus"]] == [0, 1]
    gpu = status["gpus"][0]
    assert gpu["name"] == "NVIDIA GeForce RTX 4090"
    assert gpu["total_gb"] == 24.0 and gpu["used_gb"] == 2.0 and gpu["free_gb"] == 22.0
    assert gpu["utilization_pct"] == 37 and gpu["temperature_c"] == 61
    assert gpu["power_w"] is None and gpu["power_limit_w"] == 450.0  # unsupported -> None
    assert gpu["driver"] == "550.54"
    assert gpu["compute_capability"] == "8.9" and gpu["bf16"] is True
    assert fake.calls["shutdown"] == 1  # type: ignore[attr-defined]


def test_old_gpus_have_no_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_pynvml()
    fake.nvmlDeviceGetCudaComputeCapability = lambda h: (7, 5)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert telemetry.read_gpu_stats()[0]["bf16"] is False


def test_driver_without_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(count=0))
    assert telemetry.gpu_status() == {"gpus": [], "reason": "the NVIDIA driver reports no GPU"}


def test_system_stats() -> None:
    stats = telemetry.read_system_stats()
    assert stats["ram_total_gb"] > 0.1
    assert 0 < stats["ram_available_gb"] <= stats["ram_total_gb"]
    assert stats["cpu_count"] >= 1
    assert stats["process_rss_gb"] > 0
    assert stats["process_peak_rss_gb"] >= stats["process_rss_gb"] * 0.9
