"""advise(): the JSON structure, the recommendation, the CLI verb and its errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import LlamaConfig

from engine.advisor import advise, method_param_counts
from engine.cli import main
from engine.errors import UserError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "cache"))  # no stored corrections


def test_json_structure(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["advise", "--model", "smollm2-135m-instruct", "--vram-gb", "12", "--json"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert data["vram_gb"] == 12.0
    assert isinstance(data["gpus"], list)
    for name in ("full", "lora", "qlora", "dora", "adapter", "prefix", "ptuning_v2", "prompt",
                 "ia3"):
        m = data["methods"][name]
        assert 0 < m["low_gb"] <= m["expected_gb"] <= m["high_gb"]
        assert isinstance(m["fits"], bool)
    rec = data["recommendation"]
    assert set(rec) >= {"method", "batch_size", "grad_accum", "seq_len",
                        "gradient_checkpointing", "reason"}
    assert rec["method"] == "lora" and rec["batch_size"] == 4 and rec["reason"]


def test_qlora_when_only_it_fits() -> None:
    data = advise("llama-3.1-8b-instruct", vram_gb=16, seq_len=1024, batch_size=4,
                  grad_accum=2)
    rec = data["recommendation"]
    assert not data["methods"]["lora"]["fits"]
    assert rec["method"] == "qlora"
    assert rec["batch_size"] * rec["grad_accum"] >= 8  # the effective batch is kept
    assert rec["seq_len"] == 1024
    assert "slower" in rec["reason"]
    assert rec["expected_gb"] * 1.1 <= 16


def test_lora_on_a_big_gpu() -> None:
    rec = advise("qwen2.5-1.5b-instruct", vram_gb=48)["recommendation"]
    assert rec["method"] == "lora" and rec["gradient_checkpointing"] is False


def test_wont_fit_says_what_would() -> None:
    rec = advise("qwen2.5-14b-instruct", vram_gb=4)["recommendation"]
    assert rec["method"] is None
    assert rec["needs_gb"] > 4
    assert "Won't fit" in rec["reason"] and "would fit" in rec["reason"]


def test_requested_method_and_checkpointing() -> None:
    data = advise("smollm2-360m-instruct", vram_gb=8, method="dora",
                  gradient_checkpointing=True)
    assert data["recommendation"]["method"] == "dora"
    assert data["recommendation"]["gradient_checkpointing"] is True
    assert data["settings"]["gradient_checkpointing"] is True


def test_checkpointing_shrinks_the_prediction() -> None:
    off = advise("llama-3.2-1b-instruct", vram_gb=24, seq_len=2048)["methods"]["lora"]
    on = advise("llama-3.2-1b-instruct", vram_gb=24, seq_len=2048,
                gradient_checkpointing=True)["methods"]["lora"]
    assert on["expected_gb"] < 0.6 * off["expected_gb"]


def test_local_config_folder(tmp_path: Path) -> None:
    LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, vocab_size=256).save_pretrained(
        tmp_path / "tiny")
    data = advise(str(tmp_path / "tiny"), vram_gb=1)
    assert data["recommendation"]["method"] == "lora"
    assert data["model"]["from"] == "config"


def test_method_param_counts() -> None:
    counts = method_param_counts("llama-3.1-8b-instruct", "lora", r=16)
    assert counts["trainable"] == 41_943_040
    assert counts["total"] == 8_030_261_248 + 41_943_040
    assert counts["share"] == pytest.approx(counts["trainable"] / counts["total"])
    assert method_param_counts("llama-3.1-8b-instruct", "full")["share"] == 1.0


@pytest.mark.parametrize("kwargs", [{"vram_gb": -1}, {"method": "magic"}, {"seq_len": 0},
                                    {"batch_size": 0}, {"optimizer": "sgd"}])
def test_bad_values_are_user_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(UserError):
        advise("smollm2-135m-instruct", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("args", [
    ["--model", "no-such-model-anywhere", "--vram-gb", "8"],
    ["--model", "smollm2-135m-instruct", "--vram-gb", "twelve"],
    ["--model", "smollm2-135m-instruct", "--seq-len", "1.5"],
    ["--model", "smollm2-135m-instruct", "--batch-size", "0"],
])
def test_cli_bad_input_exits_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["advise", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


def test_cli_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["advise", "--model", "Qwen/Qwen2.5-0.5B-Instruct", "--vram-gb", "6"]) == 0
    out = capsys.readouterr().out
    assert "qlora" in out and "Recommended: lora" in out and "expected" in out


@pytest.mark.integration  # a fresh interpreter imports torch, transformers and peft
def test_cli_subprocess_without_gpu(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "advise", "--model", "smollm2-135m-instruct",
         "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "TUNESMITH_CACHE": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert "pip install kernels" not in proc.stderr  # library chatter stays off the terminal
    data = json.loads(proc.stdout)
    assert data["device"] in ("cpu", "cuda")
    if data["device"] == "cpu":
        assert data["vram_gb"] is None and data["gpus"] == [] and data["gpu_reason"]
