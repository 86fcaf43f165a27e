"""Every method trains on a tiny Llama, saves, reloads and gives the same logits."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from engine import methods
from engine.config import job_from_dict
from engine.errors import ConfigError
from engine.methods import METHODS, count_parameters, get_method

ALL = ["full", "lora", "qlora", "dora", "adapter", "prefix", "ptuning_v2", "prompt", "ia3"]
PROBE = torch.tensor([[1, 504, 3458, 314, 253, 1234, 30, 2]])


def _job(model_dir: Path, data: Path, tmp_path: Path, method: str, **method_kw: Any) -> Any:
    return job_from_dict({
        "name": f"t-{method}", "model": {"source": str(model_dir)},
        "dataset": {"path": str(data), "max_length": 64, "eval_split": 0},
        "method": {"name": method, "r": 4, "bottleneck_size": 8, "num_virtual_tokens": 4,
                   **method_kw},
        # fp32: the trained model's forward stays under the Trainer's autocast, and these
        # tests compare its logits with a reload's in fp32 (auto is bf16 on a native-bf16 CPU)
        "training": {"max_steps": 3, "batch_size": 2, "learning_rate": 1e-2, "seed": 1,
                     "device": "cpu", "precision": "fp32"},
        "output": {"runs_dir": str(tmp_path / "runs")}})


def _logits(model: Any) -> torch.Tensor:
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(input_ids=PROBE.to(model.device), attention_mask=torch.ones_like(PROBE))
    model.train(was)
    return out.logits.detach().float().cpu()


def test_every_lesson_method_is_offered() -> None:
    assert sorted(METHODS) == sorted(ALL)
    assert METHODS["adapter"].mergeable is False
    assert not any(METHODS[m].packs for m in ("prefix", "ptuning_v2", "prompt"))


@pytest.mark.parametrize("method", ALL)
def test_trains_saves_and_reloads_same_logits(method: str, tiny_llama_dir: Path,
                                              chat_jsonl: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.models import load_base, resolve_precision
    from engine.training import run_training

    spec = get_method(method)
    seen: dict[str, torch.Tensor] = {}

    def save_and_remember(model: Any, folder: Path) -> None:
        seen["logits"] = _logits(model)
        seen["trainable"] = torch.tensor(count_parameters(model)[0])
        spec.save(model, folder)

    monkeypatch.setitem(methods.METHODS, method, dataclasses.replace(spec, save=save_and_remember))
    job = _job(tiny_llama_dir, chat_jsonl, tmp_path, method)
    events: list[Any] = []
    result = run_training(job, run_dir=tmp_path / "run", emit=events.append)

    assert result.status == "completed" and result.step == 3
    losses = [e.loss for e in events if e.type == "step"]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    started = next(e for e in events if e.type == "run_started")
    assert 0 < started.trainable_params <= started.total_params
    ready = next(e for e in events if e.type == "data_ready")
    assert ready.packed is spec.packs  # llama packs exactly, except for virtual tokens

    base = load_base(job, str(tiny_llama_dir), "cpu", resolve_precision("fp32", "cpu"),
                     spec.quantized_base)
    before = _logits(base)
    reloaded = spec.load_trained(base, result.output_path)
    after = _logits(reloaded)
    if spec.quantized_base:
        # On CPUs with AVX512-BF16, bitsandbytes runs a 4-bit layer through a bf16 kernel when
        # no input needs a gradient (the reloaded model) and in fp32 otherwise (the trained
        # model, whose inputs require grad for checkpointing): they agree to bf16 rounding.
        drift = float((after - seen["logits"]).abs().max())
        assert drift < 0.1 * float((before - seen["logits"]).abs().max()), drift
    else:
        torch.testing.assert_close(after, seen["logits"], rtol=1e-4, atol=1e-4)
    if after.shape == before.shape:  # prompt tuning adds virtual positions to the logits
        assert not torch.allclose(after, before)  # the saved result is really in use


def test_adapter_starts_exactly_at_the_base(tiny_llama_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    before = _logits(base)
    cfg = job_from_dict({"method": {"name": "adapter", "bottleneck_size": 8}}).method
    model = get_method("adapter").apply(base, cfg, "sft")
    torch.testing.assert_close(_logits(model), before, rtol=0, atol=0)
    trainable, _total = count_parameters(model)
    # 2 layers x 2 sites x (64*8 + 8 + 8*64 + 64)
    assert trainable == 2 * 2 * (64 * 8 + 8 + 8 * 64 + 64)
    assert all("_adapter." in n for n, p in model.named_parameters() if p.requires_grad)


def test_packing_on_is_refused_for_virtual_tokens(tiny_llama_dir: Path, chat_jsonl: Path,
                                                  tmp_path: Path) -> None:
    from engine.training import run_training

    job = _job(tiny_llama_dir, chat_jsonl, tmp_path, "prefix")
    job.dataset.packing = "on"
    with pytest.raises(ConfigError, match=r"dataset\.packing"):
        run_training(job, run_dir=tmp_path / "run", emit=lambda e: None)


def test_ptuning_v2_refuses_a_projection() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2))
    cfg = job_from_dict({"method": {"name": "ptuning_v2", "prefix_projection": True}}).method
    with pytest.raises(ConfigError, match=r"method\.prefix_projection"):
        get_method("ptuning_v2").apply(model, cfg, "sft")


@pytest.mark.parametrize("method", ["prefix", "ptuning_v2"])
def test_prefix_methods_refuse_bert(method: str) -> None:
    from transformers import BertConfig, BertForSequenceClassification

    model = BertForSequenceClassification(BertConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_labels=3))
    cfg = job_from_dict({"method": {"name": method}}).method
    with pytest.raises(ConfigError, match=f"method.name: {method} cannot work with bert"):
        get_method(method).apply(model, cfg, "classify")


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("method", ["prefix", "prompt", "ia3", "adapter"])
def test_methods_run_on_supported_families(model_type: str, method: str) -> None:
    """Forward, backward and a few generated tokens with a padded batch on each family."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, vocab_size=64, hidden_size=16,
                                  intermediate_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, num_key_value_heads=1, pad_token_id=0)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    cfg = job_from_dict({"method": {"name": method, "num_virtual_tokens": 3,
                                    "bottleneck_size": 4}}).method
    model = get_method(method).apply(model, cfg, "sft")
    ids = torch.randint(3, 64, (2, 6))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    out = model(input_ids=ids, attention_mask=mask, labels=ids)
    out.loss.backward()
    assert math.isfinite(out.loss.item())
    assert any(p.grad is not None for p in model.parameters() if p.requires_grad)
    gen = model.generate(input_ids=ids[:1], attention_mask=mask[:1], max_new_tokens=2,
                         min_new_tokens=2, do_sample=False)
    assert gen.shape[1] == 8


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_generation_sees_the_virtual_tokens(model_type: str, method: str) -> None:
    """Greedy generation scores equal a plain forward pass over the generated text.

    Without engine.methods._prompt.fix_generation, transformers 5 ignores a trained prefix
    during generate and prompt tuning re-inserts its virtual tokens at every step.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, vocab_size=64, hidden_size=16,
                                  intermediate_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, num_key_value_heads=1, pad_token_id=0,
                                  eos_token_id=None)
    torch.manual_seed(0)
    cfg = job_from_dict({"method": {"name": method, "num_virtual_tokens": 3}}).method
    model = get_method(method).apply(AutoModelForCausalLM.from_config(config), cfg, "sft")
    with torch.no_grad():
        for p in model.prompt_encoder.parameters():
            p.normal_(0, 3)  # a prefix far from zero, so ignoring it would show
    model.eval()
    ids = torch.randint(3, 64, (2, 6))
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3,
                         do_sample=False, output_scores=True,
                         return_dict_in_generate=True)
    with torch.no_grad():
        logits = model(input_ids=out.sequences,
                       attention_mask=torch.ones_like(out.sequences)).logits
    shift = 3 if method == "prompt" else 0  # prompt tuning's logits include its tokens
    for i, scores in enumerate(out.scores):
        torch.testing.assert_close(scores, logits[:, shift + 5 + i], rtol=1e-4, atol=1e-4)
