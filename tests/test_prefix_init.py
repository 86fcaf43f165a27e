"""Prefix tuning and P-tuning v2 start from real tokens' keys and values, exactly.

The check is the strongest there is: the prefixed model's logits on some text equal the base
model's logits for that text read after the init tokens, so the layout (layer, key/value,
head, position) and the rotary positions are all right. With peft's random init they differ.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch


def _tiny(model_type: str = "llama") -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    kind = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}
    config_cls, model_cls = kind[model_type]
    config = config_cls(vocab_size=512, hidden_size=64, intermediate_size=128,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        max_position_embeddings=128)
    return model_cls(config).eval()


def _cfg(n: int = 6, projection: bool = False) -> SimpleNamespace:
    return SimpleNamespace(num_virtual_tokens=n, prefix_projection=projection)


@pytest.mark.parametrize("method", ["prefix", "ptuning_v2"])
@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_the_prefixed_model_reads_as_the_base_after_real_tokens(method: str,
                                                                model_type: str) -> None:
    from engine.methods import _prompt

    base = _tiny(model_type)
    text = torch.tensor([[5, 77, 301, 42, 9, 250, 13]])
    ids = _prompt.prefix_init_ids(base.config.vocab_size, 6)
    with torch.no_grad():
        expected = base(input_ids=torch.cat([torch.tensor([ids]), text], 1)).logits[:, 6:]
    apply = _prompt.apply_prefix if method == "prefix" else _prompt.apply_ptuning_v2
    model = apply(base, _cfg(), "sft").eval()
    with torch.no_grad():
        got = model(input_ids=text, attention_mask=torch.ones_like(text)).logits
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


def test_peft_random_init_is_what_it_replaces() -> None:
    """Without the init, the prefix is random and the logits are far from the base's."""
    from peft import get_peft_model

    from engine.methods import _prompt

    base = _tiny()
    text = torch.tensor([[5, 77, 301, 42, 9, 250, 13]])
    ids = _prompt.prefix_init_ids(base.config.vocab_size, 6)
    with torch.no_grad():
        expected = base(input_ids=torch.cat([torch.tensor([ids]), text], 1)).logits[:, 6:]
    model = get_peft_model(base, _prompt.prefix_tuning_config(_cfg(), "sft", base.config)).eval()
    with torch.no_grad():
        got = model(input_ids=text, attention_mask=torch.ones_like(text)).logits
    assert not torch.allclose(got, expected, atol=1e-2)


def test_a_projected_prefix_keeps_pefts_init() -> None:
    from engine.methods import _prompt

    model = _prompt.apply_prefix(_tiny(), _cfg(projection=True), "sft")
    assert model.active_peft_config.prefix_projection  # trains through the MLP as peft builds it


def test_init_ids_are_spread_inside_the_vocabulary() -> None:
    from engine.methods._prompt import prefix_init_ids

    for vocab, n in ((49152, 20), (512, 6), (100, 30)):
        ids = prefix_init_ids(vocab, n)
        assert len(ids) == n and all(0 <= i < vocab for i in ids)
