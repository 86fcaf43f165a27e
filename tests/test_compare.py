"""``python -m engine compare``: every method in its own child, one table, failures reported."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from engine import compare

NUMBERS = ("learning_rate", "trainable_params", "total_params", "trainable_share",
           "peak_memory_gb", "tokens_per_s", "wall_s", "train_s", "eval_s",
           "final_train_loss", "held_out_loss", "perplexity", "base_loss", "quality")


def _job(tmp_path: Path, model: Path, data: Path) -> Path:
    job = {"name": "cmp", "task": "sft", "model": {"source": str(model)},
           # packing on: the prompt-learning methods refuse it, a real failure for the table
           "dataset": {"path": str(data), "max_length": 64, "eval_split": 0.25,
                       "packing": "on"},
           "method": {"name": "lora", "r": 4, "alpha": 8},
           "training": {"max_steps": 5, "batch_size": 4, "precision": "fp32"},
           "output": {"runs_dir": str(tmp_path / "runs")}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine", "compare", *args],
                          capture_output=True, text=True, timeout=300)


def test_compare_three_methods_one_failing(tmp_path: Path, tiny_llama_dir: Path,
                                           chat_jsonl: Path) -> None:
    out = tmp_path / "cmp"
    proc = _cli(str(_job(tmp_path, tiny_llama_dir, chat_jsonl)), "--methods",
                "lora,prefix,ia3", "--steps", "2", "--json", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data == compare.load_comparison(out)  # the folder reopens as printed
    rows = {r["method"]: r for r in data["methods"]}
    assert list(rows) == ["lora", "prefix", "ia3"]
    assert rows["prefix"]["status"] == "failed"
    assert "packing" in rows["prefix"]["reason"]
    for name in ("lora", "ia3"):
        row = rows[name]
        assert row["status"] == "completed", row
        assert set(compare.ROW_FIELDS) <= set(row)
        for key in NUMBERS:
            assert isinstance(row[key], int | float) and math.isfinite(row[key]), (name, key)
        assert row["steps"] == 2
        assert 0 < row["trainable_share"] < 1
        assert row["perplexity"] == pytest.approx(math.exp(row["held_out_loss"]), rel=1e-6)
        assert (out / row["run_dir"] / "events.jsonl").is_file()
    # Each run trained at its method's suggested rate.
    from engine.methods import METHODS

    for name in ("lora", "ia3"):
        job = yaml.safe_load((out / rows[name]["run_dir"] / "job.yaml").read_text())
        assert job["training"]["learning_rate"] == METHODS[name].suggested_lr
    assert data["reference"] == "lora"  # full was not run
    assert rows["lora"]["quality"] == 1.0
    assert data["base_loss"] > 0 and math.isfinite(data["base_loss"])
    assert "[3/3]" in proc.stderr  # a progress line per method
    shown = _cli("--show", str(out))
    assert shown.returncode == 0 and "P-tuning" not in shown.stdout
    assert "failed" in shown.stdout and "relative to lora" in shown.stdout


@pytest.mark.parametrize("args", [["--methods", "lora,nope"], ["--steps", "0"]])
def test_bad_input_is_one_message(tmp_path: Path, tiny_llama_dir: Path, chat_jsonl: Path,
                                  args: list[str]) -> None:
    proc = _cli(str(_job(tmp_path, tiny_llama_dir, chat_jsonl)), *args)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and "Traceback" not in proc.stderr


def test_show_missing_folder(tmp_path: Path) -> None:
    proc = _cli("--show", str(tmp_path / "nothing"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_quality_is_relative_to_full_when_it_ran() -> None:
    rows = [{"method": "full", "held_out_loss": 1.0}, {"method": "lora", "held_out_loss": 1.5},
            {"method": "prefix", "held_out_loss": None}]
    assert compare.add_quality(rows, base_loss=3.0) == "full"
    assert [r.get("quality") for r in rows] == [1.0, 0.75, None]
    assert compare.add_quality([{"method": "lora", "held_out_loss": 3.5}], 3.0) is None


def test_method_job_keeps_data_and_steps_the_same() -> None:
    from engine.config import job_from_dict

    job = job_from_dict({"training": {"max_steps": 7, "eval_steps": 2,
                                      "sample_prompts": ["hi"]}})
    derived = compare.method_job(job, "prefix", 3)
    assert derived.method.name == "prefix" and derived.training.max_steps == 3
    assert derived.dataset.packing == "off"  # auto: every method sees the same sequences
    assert derived.training.learning_rate == 1e-2 and derived.training.sample_prompts == []
    assert derived.dataset.path == job.dataset.path


def test_lesson_claims_name_real_methods() -> None:
    from engine.methods import METHODS

    assert set(compare.LESSON_CLAIMS) <= set(METHODS)
