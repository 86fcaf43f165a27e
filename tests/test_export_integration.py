"""The real default model (SmolLM2-135M-Instruct): a few LoRA steps, then a merged model and a
GGUF file that both reload and give the same greedy answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

DEMO = "Who are you?"
REPO = Path(__file__).resolve().parent.parent


def _greedy(model: Any, tok: Any, prompt: str, stops: list[int]) -> str:
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                   add_generation_prompt=True)
    enc = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        ids = model.generate(**enc, max_new_tokens=24, do_sample=False, eos_token_id=stops,
                             pad_token_id=tok.pad_token_id)
    return str(tok.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))


@pytest.mark.integration
def test_default_model_merged_and_gguf(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from engine import events as ev
    from engine.config import job_from_dict
    from engine.export import export_run
    from engine.training import run_training

    job = job_from_dict({
        "name": "smol", "model": {"source": "smollm2-135m-instruct"},
        "dataset": {"path": str(REPO / "resources/datasets/pirate-persona.jsonl"),
                    "max_length": 64, "max_rows": 16, "eval_split": 0},
        "method": {"name": "lora"},
        "training": {"max_steps": 2, "batch_size": 2, "learning_rate": 1e-3,
                     "warmup_ratio": 0.0},
        "output": {"runs_dir": str(tmp_path / "runs")}})
    run_dir = tmp_path / "runs" / "smol"
    assert run_training(job, run_dir=run_dir, emit=lambda _e: None).status == "completed"

    out = tmp_path / "export"
    events: list[ev.Event] = []
    # float16 weights in both: the two files then hold the very same numbers.
    merged, gguf = export_run(run_dir, out, merge=True, gguf=True, gguf_type="f16",
                              dtype="float16", emit=events.append)
    assert merged.max_logit_diff is not None and gguf.max_logit_diff is not None
    assert gguf.details["tokenizer_matches"] and gguf.details["tokenizer_pre"] == "smollm"
    assert gguf.details["argmax_agreement"] >= 0.98

    tok = AutoTokenizer.from_pretrained(out)
    stops = GenerationConfig.from_pretrained(out).eos_token_id
    stops = stops if isinstance(stops, list) else [stops]
    assert tok.convert_tokens_to_ids("<|im_end|>") in stops
    from_folder = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    name = Path(gguf.path).name
    from_gguf = AutoModelForCausalLM.from_pretrained(out, gguf_file=name,
                                                     dtype=torch.float32).eval()
    a, b = (_greedy(m, tok, DEMO, stops) for m in (from_folder, from_gguf))
    assert a.strip() and a == b
    assert (out / "Modelfile").read_text().startswith(f"FROM ./{name}")
