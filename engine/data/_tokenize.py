"""Turn samples into token ids and labels: loss only on answers, every answer ends with EOS.

Conversations are rendered with the tokenizer's chat template (or a ChatML fallback when the
model has none). Which characters belong to assistant answers is found by rendering each prefix
of the conversation, so any template that renders prefixes consistently works; the trained
tokens are those whose characters fall inside an answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

IGNORE = -100

# ChatML, with EOS after every answer, for models without a chat template.
FALLBACK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% else %}<|im_end|>{% endif %}\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    where: str = ""


@dataclass
class EncodeStats:
    truncated: int = 0
    dropped: int = 0
    lengths: list[int] = field(default_factory=list)  # before truncation
    eos_appended: int = 0


def ensure_chat_template(tokenizer: Any) -> bool:
    """Give a tokenizer without a chat template the fallback; True when the fallback is used."""
    if getattr(tokenizer, "chat_template", None):
        return False
    tokenizer.chat_template = FALLBACK_TEMPLATE
    return True


def _render(tokenizer: Any, messages: list[dict[str, str]], gen: bool) -> str:
    return str(tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=gen))


def _answer_spans(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int,
                                                                                        int]]]:
    full = _render(tokenizer, messages, gen=False)
    spans = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        start = len(_render(tokenizer, messages[:i], gen=True)) if i else 0
        upto = _render(tokenizer, messages[: i + 1], gen=False)
        if not full.startswith(upto) or start > len(upto):
            raise ValueError("the chat template does not render conversations prefix by prefix")
        spans.append((start, len(upto)))
    return full, spans


def _encode_conversation(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[list[int],
                                                                                  list[int]]:
    text, spans = _answer_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    labels = [IGNORE] * len(ids)
    for k, (a, b) in enumerate(offsets):
        if b > a and any(s <= a < e for s, e in spans):
            labels[k] = ids[k]
    # The span runs to the end of the answer's turn, so the end-of-turn token (EOS for chat
    # models) is trained; encode_sample appends EOS where a template does not emit one.
    return ids, labels


def _ends_answer_with_eos(ids: list[int], labels: list[int], eos_id: int) -> bool:
    trained = [t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE]
    return bool(trained) and eos_id in trained


def encode_sample(tokenizer: Any, sample: Any) -> Encoded:
    """Ids and labels for one Sample (no truncation here)."""
    eos = tokenizer.eos_token_id
    if sample.messages is not None:
        ids, labels = _encode_conversation(tokenizer, sample.messages)
        if eos is not None and not _ends_answer_with_eos(ids, labels, eos):
            ids, labels = [*ids, eos], [*labels, eos]
        return Encoded(ids, labels, sample.where)
    if sample.prompt is not None:
        p = tokenizer(sample.prompt, add_special_tokens=True)["input_ids"]
        c = tokenizer(sample.completion, add_special_tokens=False)["input_ids"]
        tail = [eos] if eos is not None else []
        return Encoded([*p, *c, *tail], [IGNORE] * len(p) + [*c, *tail], sample.where)
    ids = list(tokenizer(sample.text, add_special_tokens=True)["input_ids"])
    if eos is not None:
        ids.append(eos)
    return Encoded(ids, list(ids), sample.where)


def encode_all(tokenizer: Any, samples: list[Any], max_length: int, overflow: str,
               progress: Any = None) -> tuple[list[Encoded], EncodeStats]:
    """Encode, then truncate or drop samples longer than ``max_length``."""
    out: list[Encoded] = []
    stats = EncodeStats()
    for i, sample in enumerate(samples):
        enc = encode_sample(tokenizer, sample)
        stats.lengths.append(len(enc.input_ids))
        if len(enc.input_ids) > max_length:
            if overflow == "drop":
                stats.dropped += 1
                continue
            stats.truncated += 1
            enc = Encoded(enc.input_ids[:max_length], enc.labels[:max_length], enc.where)
        if all(lab == IGNORE for lab in enc.labels):
            stats.dropped += 1  # truncation cut away every trained token
            continue
        out.append(enc)
        if progress is not None and (i + 1) % 200 == 0:
            progress(i + 1, len(samples))
    return out, stats


def pack(encoded: list[Encoded], max_length: int) -> list[dict[str, list[int]]]:
    """Pack samples greedily into sequences of at most ``max_length`` tokens.

    Each sample keeps its own positions (0, 1, 2, ...), which is what makes packing exact:
    transformers builds a block-diagonal causal mask from position ids that restart, so a
    sample never attends to its neighbours.
    """
    sequences: list[dict[str, list[int]]] = []
    cur: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
    for enc in sorted(encoded, key=lambda e: -len(e.input_ids)):
        if cur["input_ids"] and len(cur["input_ids"]) + len(enc.input_ids) > max_length:
            sequences.append(cur)
            cur = {"input_ids": [], "labels": [], "position_ids": []}
        cur["input_ids"] += enc.input_ids
        # The first token is never a target (nothing precedes it); ignoring it also keeps the
        # previous sample's last token from being trained to predict this one.
        cur["labels"] += [IGNORE, *enc.labels[1:]]
        cur["position_ids"] += list(range(len(enc.input_ids)))
    if cur["input_ids"]:
        sequences.append(cur)
    return sequences


def unpacked(encoded: list[Encoded]) -> list[dict[str, list[int]]]:
    return [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded]


def segments(tokenizer: Any, ids: list[int], labels: list[int]) -> list[tuple[str, bool]]:
    """The sample as text, split into runs of trained / not-trained tokens."""
    runs: list[tuple[str, bool]] = []
    start = 0
    for k in range(1, len(ids) + 1):
        if k == len(ids) or (labels[k] != IGNORE) != (labels[start] != IGNORE):
            text = tokenizer.decode(ids[start:k], skip_special_tokens=False)
            runs.append((text, labels[start] != IGNORE))
            start = k
    return runs
