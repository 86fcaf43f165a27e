"""Where a chat model should stop: EOS plus the chat template's end-of-turn token."""

from __future__ import annotations

from typing import Any

# End-of-turn markers of common chat templates (ChatML, Llama 3, Phi-3, Gemma, Mistral...).
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>",
               "<|end_of_text|>", "<|endoftext|>", "</s>", "<|END_OF_TURN_TOKEN|>")


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def stop_token_ids(tokenizer: Any, *extra: Any) -> list[int]:
    """EOS ids: the tokenizer's, any given (config, generation config), and each end-of-turn
    token the chat template writes. The tokenizer's EOS comes first."""
    ids = _ids(tokenizer.eos_token_id)
    for value in extra:
        ids += _ids(value)
    template = str(getattr(tokenizer, "chat_template", "") or "")
    vocab = tokenizer.get_vocab()
    for text in END_OF_TURN:
        if text in template and text in vocab:
            ids.append(int(vocab[text]))
    out: list[int] = []
    for i in ids:
        if i not in out:
            out.append(i)
    return out


def stop_strings(tokenizer: Any, ids: list[int]) -> list[str]:
    return [tokenizer.convert_ids_to_tokens(i) for i in ids]


def end_of_turn_id(tokenizer: Any) -> int | None:
    """The end-of-turn token the chat template writes, when there is one."""
    template = str(getattr(tokenizer, "chat_template", "") or "")
    vocab = tokenizer.get_vocab()
    for text in END_OF_TURN:
        if text in template and text in vocab:
            return int(vocab[text])
    return None
