"""The run's self-check: measured peak vs prediction, the warning, the stored correction."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import LlamaConfig

from engine import events
from engine.advisor import _callback, _corrections, predict_job_peak
from engine.advisor._callback import MemoryCheckCallback
from engine.config import DatasetConfig, JobConfig, MethodConfig, ModelConfig, TrainingConfig

CPU_ARGS = types.SimpleNamespace(device=torch.device("cpu"))


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "tiny"
    LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
                max_position_embeddings=256).save_pretrained(folder)
    return folder


def make_job(source: str, method: str = "lora") -> JobConfig:
    return JobConfig(model=ModelConfig(source=source), dataset=DatasetConfig(max_length=64),
                     method=MethodConfig(name=method, r=8),
                     training=TrainingConfig(batch_size=2, max_steps=4))


def fake_rss(monkeypatch: pytest.MonkeyPatch, begin: int, peak_at_check: int) -> None:
    peaks = iter([begin + 100, peak_at_check])
    monkeypatch.setattr(_callback, "_rss_bytes", lambda: begin)
    monkeypatch.setattr(_callback, "_peak_rss_bytes", lambda: next(peaks))


def run_check(cb: MemoryCheckCallback) -> None:
    cb.on_train_begin(CPU_ARGS, None, None, model=None)
    cb.on_step_end(CPU_ARGS, types.SimpleNamespace(global_step=cb.check_after_steps), None)


def test_off_prediction_warns_and_the_next_one_is_closer(
        tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job = make_job(str(tiny_dir))
    raw = predict_job_peak(job, "cpu", corrected=False).compared
    got: list[events.Event] = []
    begin = 2**30
    fake_rss(monkeypatch, begin, begin + int(2 * raw))  # the real growth is twice the prediction
    cb = MemoryCheckCallback(job, got.append, check_after_steps=1)
    run_check(cb)
    warnings = [e for e in got if isinstance(e, events.Warning)]
    assert [w.code for w in warnings] == ["memory_prediction_off"]
    assert "+100%" in warnings[0].message
    assert _corrections.get_correction(str(tiny_dir), "lora", "cpu") == pytest.approx(2, rel=1e-3)
    corrected = predict_job_peak(job, "cpu").compared
    assert corrected == pytest.approx(2 * raw, rel=1e-3)

    got.clear()  # the same measurement again: now within 10%, no warning
    fake_rss(monkeypatch, begin, begin + int(2 * raw))
    run_check(MemoryCheckCallback(job, got.append, check_after_steps=1))
    assert got == []


def test_close_prediction_is_quiet(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job = make_job(str(tiny_dir))
    raw = predict_job_peak(job, "cpu", corrected=False).compared
    got: list[events.Event] = []
    fake_rss(monkeypatch, 2**30, 2**30 + int(1.05 * raw))
    cb = MemoryCheckCallback(job, got.append, check_after_steps=1)
    run_check(cb)
    assert got == [] and cb.result is not None and cb.result["off"] == pytest.approx(0.05, 1e-3)


def test_hidden_peak_is_not_compared(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_callback, "_rss_bytes", lambda: 2**30)
    monkeypatch.setattr(_callback, "_peak_rss_bytes", lambda: 2**31)  # loading peaked higher
    got: list[events.Event] = []
    cb = MemoryCheckCallback(make_job(str(tiny_dir)), got.append, check_after_steps=1)
    run_check(cb)
    assert got == [] and cb.result is None and cb.done


def test_failures_become_warnings_not_exceptions() -> None:
    got: list[events.Event] = []
    cb = MemoryCheckCallback(make_job("/no/such/model/folder"), got.append, check_after_steps=1)
    cb.on_train_begin(CPU_ARGS, None, None, model=None)
    cb._measure = lambda: 123.0  # type: ignore[method-assign]
    cb.on_step_end(CPU_ARGS, types.SimpleNamespace(global_step=1), None)
    assert [e.code for e in got if isinstance(e, events.Warning)] == ["memory_check_failed"]

    def broken(event: Any) -> None:
        raise RuntimeError("sink is gone")

    cb = MemoryCheckCallback(make_job("/no/such/model/folder"), broken, check_after_steps=1)
    cb.on_train_begin(CPU_ARGS, None, None, model=None)
    cb._measure = lambda: 123.0  # type: ignore[method-assign]
    cb.on_step_end(CPU_ARGS, types.SimpleNamespace(global_step=1), None)  # does not raise


def test_real_trainer_run(tiny_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from engine.advisor._counts import MethodOptions, peft_config

    job = make_job(str(tiny_dir))
    config = LlamaConfig.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_config(config)
    from peft import get_peft_model

    model = get_peft_model(model, peft_config("lora", config, MethodOptions(r=8)))
    rows = [{"input_ids": torch.randint(0, 256, (48,))} for _ in range(16)]
    data = [{**r, "labels": r["input_ids"]} for r in rows]
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=3,
                             per_device_train_batch_size=2, use_cpu=True, report_to=[],
                             save_strategy="no", logging_strategy="no",
                             disable_tqdm=True)
    got: list[events.Event] = []
    cb = MemoryCheckCallback(job, got.append, check_after_steps=2)
    Trainer(model=model, args=args, train_dataset=data, callbacks=[cb]).train()
    assert cb.done and cb._hooks == []
    assert [e for e in got if getattr(e, "code", "") == "memory_check_failed"] == []
    if cb.result is not None:  # None when an earlier test pushed the process's peak higher
        assert (cb.result["batch"], cb.result["tokens"]) == (2, 48)


def test_classification_jobs_are_not_checked(tiny_dir: Path) -> None:
    job = make_job(str(tiny_dir))
    job.task = "classify"
    got: list[events.Event] = []
    cb = MemoryCheckCallback(job, got.append, check_after_steps=1)
    run_check(cb)
    assert got == [] and cb.result is None
