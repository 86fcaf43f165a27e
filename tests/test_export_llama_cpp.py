"""llama.cpp as a real client of the GGUF files: each family's tiny model, written as f16,
loaded by llama.cpp (llama-cpp-python), which must find the chat template and the EOS token
stored in the file, tokenize the chat text as the model's tokenizer does and answer greedily
with the same tokens as the model itself. Skipped when llama_cpp is not installed
(pip install 'tunesmith[gguf-quant]'); see docs/export.md."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch
from test_export import _small_tokenizer, _spread, _tiny_model
from test_gguf_families import _family_model, _spm_tokenizer

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed (pip install 'tunesmith[gguf-quant]')")

NEW_TOKENS = 16


def _family(kind: str, tmp_path: Path) -> tuple[Any, Any]:
    if kind in ("llama", "qwen2"):
        tok = _small_tokenizer(tmp_path / "tok")
        return _spread(_tiny_model(kind, len(tok))).eval(), tok
    tok = _spm_tokenizer(prefix_space=kind != "gemma2")
    return _family_model(kind, len(tok)), tok


@pytest.mark.parametrize("kind", ["llama", "qwen2", "llama2", "gemma2", "phi3"])
def test_llama_cpp_reads_the_gguf_like_the_model(kind: str, tmp_path: Path) -> None:
    from llama_cpp import Llama

    from engine.export._gguf import check_supported, write_gguf
    from engine.export._merge import chat_inputs
    from engine.export._stops import end_of_turn_id, stop_token_ids

    model, tok = _family(kind, tmp_path)
    stops = stop_token_ids(tok)
    check_supported(model.config, tok)
    path = tmp_path / "m.gguf"
    write_gguf(model, tok, path, gguf_type="f16", name=f"tiny {kind}", stops=stops,
               end_of_turn=end_of_turn_id(tok))
    llm = Llama(model_path=str(path), n_ctx=256, n_threads=1, verbose=False)
    assert llm.metadata["tokenizer.chat_template"] == tok.chat_template
    assert llm.token_eos() == stops[0]
    text = tok.apply_chat_template([{"role": "user", "content": "Hello! Who are you?"}],
                                   tokenize=False, add_generation_prompt=True)
    prompt = chat_inputs(tok, ["Hello! Who are you?"])[0]
    ids = llm.tokenize(text.encode(), add_bos=False, special=True)
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        want = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                              max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                              pad_token_id=tok.pad_token_id)[0, prompt.shape[1]:].tolist()
    got = []
    for token in llm.generate(prompt[0].tolist(), top_k=1, temp=0.0, repeat_penalty=1.0):
        got.append(int(token))
        if len(got) == NEW_TOKENS:
            break
    assert got == want
