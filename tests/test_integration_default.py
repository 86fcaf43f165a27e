"""The real offline default, SmolLM2-135M-Instruct, learns the demo persona in a few steps."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import events as ev
from engine.config import load_job
from engine.training import run_training

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration


def test_demo_preset_trains_the_real_default(tmp_path: Path, default_model_dir: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine._callback import generate_samples

    job = load_job(REPO / "resources" / "presets" / "demo-persona.yaml")
    job.dataset.path = str(REPO / job.dataset.path)
    job.dataset.max_length = 128  # the preset's 256, shortened to keep the suite quick
    job.training.max_steps = 8
    job.training.eval_steps = 0
    job.training.save_steps = 0
    job.training.sample_prompts = []
    job.output.runs_dir = str(tmp_path)
    events: list = []
    result = run_training(job, run_dir=tmp_path / "run", emit=events.append)
    assert result.status == "completed"

    losses = [e.loss for e in events if isinstance(e, ev.Step)]
    assert len(losses) == 8
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:2]) / 2, losses  # the loss falls

    # The adapter reloads with plain peft on the base, and the answers change.
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    base = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32)
    prompt = ["Who are you?"]
    before = generate_samples(base, tokenizer, prompt, 24)[0][1]
    tuned = PeftModel.from_pretrained(base, result.output_path)
    after = generate_samples(tuned, tokenizer, prompt, 24)[0][1]
    assert after != before
    assert "matey" in after.lower() or "arr" in after.lower(), after
