"""Fast checks of the benchmarks' CPU-independent parts (no training, no GPU)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    path = ROOT / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


gpu = _load("gpu_check")
speed = _load("train_speed")


def test_gpu_shapes_match_published_parameter_counts():
    # Qwen2.5-0.5B: 494,032,768 parameters; Qwen2.5-1.5B: 1,543,714,304 (model cards).
    assert gpu.param_count(gpu.SHAPES["qwen2.5-0.5b"]) == 494_032_768
    assert gpu.param_count(gpu.SHAPES["qwen2.5-1.5b"]) == 1_543_714_304


def test_gpu_flop_arithmetic_and_peaks():
    assert gpu.flops_per_token(10**9) == 4e9
    assert gpu.peak_tflops("NVIDIA H100 PCIe") == 756.0  # the longer name wins
    assert gpu.peak_tflops("NVIDIA H200") == 989.0
    assert gpu.peak_tflops("Some Unknown GPU") is None
    # 10k tokens/s of a 1B model on a 40 TFLOP/s part: 4e13 / 4e13 = 1.0
    gpu.PEAK_TFLOPS["TESTCARD"] = 40.0
    try:
        assert gpu.mfu(10_000, 10**9, gpu.peak_tflops("TESTCARD")) == pytest.approx(1.0)
    finally:
        del gpu.PEAK_TFLOPS["TESTCARD"]
    assert gpu.mfu(1.0, 1, None) is None


def test_gpu_arguments():
    args = gpu.parse_args(["--shapes", "qwen2.5-0.5b", "--methods", "lora", "--steps", "3"])
    assert args.shapes == ["qwen2.5-0.5b"] and args.methods == ["lora"] and args.seq_len == 2048
    with pytest.raises(SystemExit):
        gpu.parse_args(["--shapes", "gpt5"])
    with pytest.raises(SystemExit):
        gpu.parse_args(["--steps", "1"])


def test_gpu_check_without_cuda_exits_2(monkeypatch, capsys, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu.main(["--json", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs a CUDA GPU" in err
    assert not (tmp_path / "x.json").exists()


def test_variable_length_set_is_deterministic_and_mixed():
    rows = speed.variable_length_rows()
    assert rows == speed.variable_length_rows()
    lengths = [len(r["messages"][1]["content"].split()) for r in rows]
    assert min(lengths) <= 20 and max(lengths) >= 120
    assert sum(n >= 120 for n in lengths) == len(rows) // 3 + (len(rows) % 3 > 0)


def test_tunesmith_order_is_its_split():
    from engine.data import split_samples

    order = speed.tunesmith_order(20)
    assert sorted(order) == list(range(20)) and order != list(range(20))
    assert order == split_samples(list(range(20)), 0.0, speed.SEED)[0]


def test_step_parsing_and_summary():
    plain = [json.dumps({"t": 100.0 + i, "started": 90.0, "step": i + 1, "loss": 3.0 - i,
                         "tokens_seen": 300 * (i + 1)}) for i in range(3)]
    steps = speed.steps_of("plain-bf16", plain)
    assert [s["tokens"] for s in steps] == [300, 300, 300]
    s = speed.summarize(steps, 90.0, 2048 * 1024)
    assert s["tokens_per_s"] == pytest.approx(300.0)  # 600 tokens of steps 2-3 over 2 s
    assert s["first_step_s"] == pytest.approx(10.0) and s["peak_rss_mb"] == 2048
    assert s["final_loss"] == 1.0 and s["real_tokens"] == 900
    events = [json.dumps({"type": "run_started"})] + [
        json.dumps({"type": "step", "time": 50.0 + 2 * i, "loss": 2.0, "elapsed_s": 2.0 * (i + 1),
                    "tokens_per_s": 500.0}) for i in range(3)]
    steps = speed.steps_of("tunesmith", events)
    assert [s["tokens"] for s in steps] == [1000.0, 1000.0, 1000.0]
    with pytest.raises(ValueError):
        speed.summarize(steps[:1], 0.0, 1)


def test_ratios_pick_the_faster_plain_variant():
    row = lambda tps, first, rss, losses: {  # noqa: E731
        "tokens_per_s": tps, "first_step_s": first, "peak_rss_mb": rss, "losses": losses}
    table = {"tunesmith": row(260, 10, 2000, [3.0]), "plain-fp32": row(100, 12, 2500, [3.0]),
             "plain-bf16": row(200, 10, 2400, [3.0, 2.0]),
             "tunesmith-nopack-bf16": row(190, 11, 2100, [3.03, 2.0])}
    r = speed.ratios(table)
    assert r["faster_plain"] == "plain-bf16" and r["tokens_per_s"] == pytest.approx(1.3)
    assert r["peak_rss_vs_plain_bf16"] == pytest.approx(2000 / 2400)
    assert r["loss_max_rel_diff"] == pytest.approx(0.01) and r["loss_within_tolerance"]


def test_tunesmith_job_is_valid(tmp_path):
    from engine.config import load_job

    path = tmp_path / "job.yaml"
    path.write_text(speed.job_yaml(speed.DEMO, 3, "auto", "auto", tmp_path / "runs"))
    job = load_job(path)
    assert job.training.batch_size == 4 and job.dataset.max_length == 256
    assert job.method.r == 16 and job.dataset.eval_split == 0
