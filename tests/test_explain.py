"""The architecture map and method facts: exact counts from a config, no weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.errors import ConfigError
from engine.explain import explain, render
from engine.method_facts import all_method_facts, method_facts


def _tiny_config() -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       tie_word_embeddings=True)


def _walk(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(n for c in node["children"] for n in _walk(c))]


def test_facts_match_a_real_model() -> None:
    """The meta-device count equals the count on a real model with the method applied."""
    import torch
    from transformers import LlamaForCausalLM

    from engine.config import job_from_dict
    from engine.methods import count_parameters, get_method

    for method in ("lora", "dora", "adapter", "prefix", "ptuning_v2", "prompt", "ia3", "full"):
        facts = method_facts(_tiny_config(), method, {"r": 4, "bottleneck_size": 8})
        torch.manual_seed(0)
        cfg = job_from_dict({"method": {"name": method, "r": 4, "bottleneck_size": 8}}).method
        real = get_method(method).apply(LlamaForCausalLM(_tiny_config()), cfg, "sft")
        assert (facts["trainable"], facts["total"]) == count_parameters(real), method
        assert facts["share"] == pytest.approx(facts["trainable"] / facts["total"])


def test_adapter_and_lora_counts_by_formula() -> None:
    config = _tiny_config()
    adapter = method_facts(config, "adapter", {"bottleneck_size": 8})
    assert adapter["trainable"] == 2 * 2 * (32 * 8 + 8 + 8 * 32 + 32)
    assert adapter["mergeable"] is False and adapter["works_on_4bit"] is True
    lora = method_facts(config, "lora", {"r": 4, "target_modules": ["q_proj", "v_proj"]})
    # q: 32->32, v: 32->16 (2 kv heads x 8); r (in + out) per layer
    assert lora["trainable"] == 2 * (4 * (32 + 32) + 4 * (32 + 16))
    assert method_facts(config, "qlora", {"r": 4})["trainable"] == method_facts(
        config, "lora", {"r": 4})["trainable"]
    prefix = method_facts(config, "prefix", {"num_virtual_tokens": 5})
    assert prefix["trainable"] == 2 * 2 * 5 * 16  # layers x (k, v) x tokens x kv width
    assert method_facts(config, "full")["share"] == 1.0


def test_every_method_on_the_8b_catalog_config() -> None:
    pytest.importorskip("engine.catalog")
    facts = all_method_facts("llama-3.1-8b-instruct")
    assert facts["full"]["total"] == 8_030_261_248
    assert facts["lora"]["share"] == pytest.approx(0.0052, abs=2e-4)
    assert all("share" in f for f in facts.values())


def test_bert_refuses_prefix_with_a_reason() -> None:
    facts = all_method_facts("minilm-l6")
    assert facts["prefix"]["error"].startswith("method.name: prefix cannot work with bert")
    assert facts["ia3"]["task"] == "classify" and facts["ia3"]["trainable"] > 0
    with pytest.raises(ConfigError, match="ptuning_v2 cannot work with bert"):
        method_facts("minilm-l6", "ptuning_v2")


def test_explain_tree_marks_what_the_method_adds(tiny_llama_dir: Path) -> None:
    report = explain(str(tiny_llama_dir), "lora", {"r": 4})
    nodes = _walk(report["tree"])
    totals = report["totals"]
    assert totals["trainable_params"] == sum(n["params"] for n in nodes
                                             if n["added"] and not n["children"])
    assert totals["params"] == totals["base_params"] + totals["added_params"]
    q = next(n for n in nodes if n["name"].endswith("layers.0.self_attn.q_proj"))
    assert not q["added"] and q["trainable_params"] > 0  # wrapped: base weight + LoRA branch
    assert any(c["added"] and "lora_A" in c["name"] for c in _walk(q))
    head = next(n for n in nodes if n["name"] == "lm_head")
    assert head["shared_with"] == "model.embed_tokens" and head["params"] == 0
    assert set(nodes[0]) >= {"name", "type", "params", "trainable_params", "added", "children"}
    text = render(report)
    assert "1..1: 1 more like 0" in text and "+" in text


def test_explain_adapter_and_prefix(tiny_llama_dir: Path) -> None:
    adapter = explain(str(tiny_llama_dir), "adapter", {"bottleneck_size": 8})
    added = [n["name"] for n in _walk(adapter["tree"]) if n["added"] and n["type"] == "Bottleneck"]
    assert added == ["model.layers.0.attn_adapter", "model.layers.0.mlp_adapter",
                     "model.layers.1.attn_adapter", "model.layers.1.mlp_adapter"]
    prefix = explain(str(tiny_llama_dir), "prefix", {"num_virtual_tokens": 5})
    top = [c["name"] for c in prefix["tree"]["children"]]
    assert "prompt_encoder" in top
    assert prefix["totals"]["trainable_params"] == 2 * 2 * 5 * 32  # tiny llama: kv width 32


def test_explain_cli_json(tiny_llama_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main

    assert main(["explain", "--model", str(tiny_llama_dir), "--method", "ia3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["method"] == "ia3" and report["totals"]["trainable_params"] > 0
    assert main(["explain", "--model", str(tiny_llama_dir), "--method", "adapter",
                 "--set", "bottleneck_size=4"]) == 0
    assert "attn_adapter" in capsys.readouterr().out
    assert main(["explain", "--model", "minilm-l6", "--method", "prefix"]) == 2
    assert "prefix cannot work with bert" in capsys.readouterr().err
