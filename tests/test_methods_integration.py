"""The real default model (SmolLM2-135M-Instruct): each main method trains, saves, reloads.

Kept small (max_length 64, 2 steps, batch 2): one LoRA step of this model at 4 x 256 tokens
takes ~7 s on a 2-core CPU.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from engine import methods
from engine.config import job_from_dict
from engine.methods import get_method

pytestmark = pytest.mark.integration
PROBE = torch.tensor([[1, 9690, 198, 2683, 359, 253, 5356, 2]])


def _logits(model: Any) -> torch.Tensor:
    was = model.training
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=PROBE.to(model.device),
                       attention_mask=torch.ones_like(PROBE)).logits
    model.train(was)
    return logits.float().cpu()


@pytest.mark.parametrize("method", ["lora", "qlora", "dora", "adapter", "prefix", "ptuning_v2"])
def test_default_model_trains_and_reloads(method: str, chat_jsonl: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.models import load_base, load_model_dir, resolve_precision
    from engine.training import run_training

    spec = get_method(method)
    seen: dict[str, torch.Tensor] = {}

    def save_and_remember(model: Any, folder: Path) -> None:
        seen["logits"] = _logits(model)
        spec.save(model, folder)

    monkeypatch.setitem(methods.METHODS, method, dataclasses.replace(spec, save=save_and_remember))
    job = job_from_dict({
        "name": f"int-{method}", "model": {"source": "smollm2-135m-instruct"},
        "dataset": {"path": str(chat_jsonl), "max_length": 64, "eval_split": 0},
        "method": {"name": method},
        # fp32: the trained model keeps accelerate's autocast wrapper, so with bf16 the
        # logits seen at save time are bf16-rounded while the reload below runs in fp32.
        "training": {"max_steps": 2, "batch_size": 2, "device": "cpu", "precision": "fp32",
                     "learning_rate": spec.suggested_lr},
        "output": {"runs_dir": str(tmp_path / "runs")}})
    events: list[Any] = []
    result = run_training(job, run_dir=tmp_path / "run", emit=events.append)
    assert result.status == "completed" and result.step == 2
    assert all(math.isfinite(e.loss) for e in events if e.type == "step")
    started = next(e for e in events if e.type == "run_started")
    assert started.quantized_4bit is spec.quantized_base

    base = load_base(job, load_model_dir("smollm2-135m-instruct"), "cpu",
                     resolve_precision("fp32", "cpu"), spec.quantized_base)
    reloaded = spec.load_trained(base, result.output_path)
    torch.testing.assert_close(_logits(reloaded), seen["logits"], rtol=1e-3, atol=1e-3)
