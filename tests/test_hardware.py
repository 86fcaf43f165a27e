"""Native bf16 detection on the CPU, and the precision each request resolves to."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import hardware
from engine.errors import UserError
from engine.models import resolve_precision


@pytest.fixture
def cpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Set what torch and /proc/cpuinfo say: cpu(torch_answer, flags)."""
    def set_cpu(torch_says: bool | None, flags: str = "") -> None:
        info = tmp_path / "cpuinfo"
        info.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 avx2 {flags}\n")
        monkeypatch.setattr(hardware, "CPUINFO", info)
        monkeypatch.setattr(hardware, "_torch_says", lambda: torch_says)
        hardware.cpu_native_bf16.cache_clear()

    yield set_cpu
    hardware.cpu_native_bf16.cache_clear()


@pytest.mark.parametrize(("torch_says", "flags", "native"), [
    (True, "", True), (None, "avx512_bf16", True), (False, "amx_bf16 amx_tile", True),
    (None, "", False), (False, "avx512f", False)])
def test_detection(cpu, torch_says, flags, native) -> None:
    cpu(torch_says, flags)
    ok, reason = hardware.cpu_native_bf16()
    assert ok is native
    assert ("has native bf16" if native else "no native bf16") in reason


def test_detection_without_cpuinfo(cpu, monkeypatch: pytest.MonkeyPatch,
                                   tmp_path: Path) -> None:
    cpu(None)
    monkeypatch.setattr(hardware, "CPUINFO", tmp_path / "absent")
    assert hardware.cpu_native_bf16()[0] is False


def test_this_machines_answer_is_torchs() -> None:
    import torch

    hardware.cpu_native_bf16.cache_clear()
    expected = bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
                    or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    if expected:
        assert hardware.cpu_native_bf16()[0]


def test_auto_picks_bf16_autocast_with_fp32_masters_on_a_native_cpu(cpu) -> None:
    import torch

    cpu(True)
    p = resolve_precision("auto", "cpu")
    assert (p.name, p.bf16, p.fp16, p.dtype) == ("bf16", True, False, torch.float32)
    assert p.reason.startswith("auto: the CPU has native bf16")
    assert resolve_precision("bf16", "cpu").name == "bf16"  # explicit: allowed here
    assert resolve_precision("fp32", "cpu").reason == "training.precision: fp32"


def test_auto_stays_fp32_and_bf16_is_refused_without_native_bf16(cpu) -> None:
    cpu(False)
    p = resolve_precision("auto", "cpu")
    assert (p.name, p.bf16) == ("fp32", False) and "no native bf16" in p.reason
    with pytest.raises(UserError, match="no native bf16") as err:
        resolve_precision("bf16", "cpu")
    assert err.value.code == "bad_job" and "fp32" in err.value.advice
    with pytest.raises(UserError, match="fp16 is not supported on the CPU"):
        resolve_precision("fp16", "cpu")


def test_cuda_auto_follows_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    p = resolve_precision("auto", "cuda")
    assert (p.name, p.dtype) == ("bf16", torch.bfloat16) and "supports bf16" in p.reason
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", "cuda").name == "fp16"
