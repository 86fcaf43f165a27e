"""Shared fixtures: an isolated cache, a tiny Llama with the default model's tokenizer."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_REAL_CACHE = None


def _real_models_dir() -> Path:
    from engine.models import cache_dir, load_model_dir

    load_model_dir("smollm2-135m-instruct")  # converted once per machine (make setup does it)
    return cache_dir() / "models"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests write datasets and advisor corrections into a throwaway cache; models are shared."""
    models = _real_models_dir()
    cache = tmp_path_factory.mktemp("cache")
    (cache / "models").symlink_to(models, target_is_directory=True)
    os.environ["TUNESMITH_CACHE"] = str(cache)


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    from engine.models import load_model_dir

    return Path(load_model_dir("smollm2-135m-instruct"))


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory, default_model_dir: Path) -> Path:
    """A 2-layer Llama (hidden 64) with SmolLM2's real tokenizer and chat template.

    4-bit layers need what real models have: bitsandbytes' CPU 4-bit path reshapes the block
    scales as [out, in // 64] (inputs a multiple of the block size, 64) and packs the weight in
    blocks of 32 rows (outputs a multiple of 32: here k/v_proj, 2 KV heads x 16 = 32).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    vocab = json.loads((default_model_dir / "config.json").read_text())["vocab_size"]
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    for name in TOKENIZER_FILES:
        if (default_model_dir / name).exists():
            shutil.copy(default_model_dir / name, folder / name)
    return folder


@pytest.fixture
def chat_jsonl(tmp_path: Path) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"Arr, it be {2 * i}!"}]}
            for i in range(24)]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path
