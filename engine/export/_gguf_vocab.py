"""A tokenizer as GGUF metadata, by llama.cpp's convert_hf_to_gguf rules: byte-level BPE
(``_set_vocab_gpt2``: tokens, merges, a pre-tokenizer name) and SentencePiece BPE
(``_set_vocab_sentencepiece`` / ``_set_vocab_llama_hf``: tokens, scores, token types)."""

from __future__ import annotations

import json
import re
from hashlib import sha256
from typing import Any

# llama.cpp tells BPE pre-tokenizers apart by hashing the tokens of this text
# (convert_hf_to_gguf.py, get_vocab_base_pre); the table holds common families.
_CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis "
    "concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 "
    "កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not "
    "sure I'll make it, 'D you like some tea? We'Ve a'lL")
_PRE_BY_HASH = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": "smaug-bpe",
}
_FALLBACK_PRE = {"qwen2": "qwen2", "llama": "gpt-2", "mistral": "gpt-2"}
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
ADDED_SCORE = -1000.0  # what the converter gives added and control tokens


def tokenizer_json(tokenizer: Any) -> dict[str, Any]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return {}
    data: dict[str, Any] = json.loads(backend.to_str())
    return data


def vocab_kind(tokenizer: Any) -> str:
    """'gpt2' (byte-level BPE), 'llama' (SentencePiece BPE with byte fallback, as tokenizers
    holds a Llama 2 / Mistral / Gemma / Phi-3 tokenizer.model), 'unigram' or 'other'."""
    data = tokenizer_json(tokenizer)
    model = data.get("model", {})
    if model.get("type") == "Unigram":
        return "unigram"
    if model.get("type") != "BPE":
        return "other"
    if "ByteLevel" in json.dumps(data.get("pre_tokenizer")):
        return "gpt2"
    return "llama" if model.get("byte_fallback") else "other"


def adds_bos(tokenizer: Any) -> bool:
    bos = tokenizer.bos_token_id
    ids = tokenizer("a")["input_ids"]
    return bos is not None and bool(ids) and ids[0] == bos


def _adds_eos(tokenizer: Any) -> bool:
    eos = tokenizer.eos_token_id
    ids = tokenizer("a")["input_ids"]
    return eos is not None and bool(ids) and ids[-1] == eos


def _adds_space_prefix(tokenizer: Any) -> bool:
    """Whether the SentencePiece normalizer puts '▁' before the text (Llama 2, Mistral, Phi-3
    do; Gemma does not): llama.cpp's ``tokenizer.ggml.add_space_prefix``."""
    ids = tokenizer("a", add_special_tokens=False)["input_ids"]
    return bool(ids) and tokenizer.convert_ids_to_tokens(ids[0]).startswith("▁")


def _pre_tokenizer_name(tokenizer: Any, model_type: str) -> str:
    digest = sha256(str(tokenizer.encode(_CHECK_TEXT, add_special_tokens=False))
                    .encode()).hexdigest()
    # llama.cpp hashes encode() with special tokens; for these families they add none.
    return _PRE_BY_HASH.get(digest) or _FALLBACK_PRE.get(model_type, "default")


def _looks_special(token: str) -> bool:
    """convert_hf_to_gguf's does_token_look_special: added tokens some models ship as not
    special that llama.cpp still treats as control tokens."""
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<｜") and token.endswith("｜>"))
            or (token.startswith("<unused") and token.endswith(">")))


def _token_types(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[Any]]:
    """Tokens in id order and their llama.cpp types (padding ids: [PADn], UNUSED).

    SentencePiece, as ``_create_vocab_sentencepiece`` types them: the piece's own type first
    (byte pieces ``<0xNN>`` BYTE, the unknown piece UNKNOWN, special pieces CONTROL), then
    every added token of the tokenizer overrides it: CONTROL when special or special-looking,
    else USER_DEFINED with '▁' written as a space."""
    import gguf

    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    special_ids = set(tokenizer.all_special_ids)
    spm = vocab_kind(tokenizer) == "llama"
    tokens, types = [], []
    for i in range(vocab_size):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        if i in added:
            special = added[i].special or _looks_special(token)
            kind = gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED
            if spm and not special:
                token = token.replace("▁", " ")  # the converter pre-normalizes these
        elif spm and _BYTE_PIECE.fullmatch(token):
            kind = gguf.TokenType.BYTE
        elif spm and i == tokenizer.unk_token_id:
            kind = gguf.TokenType.UNKNOWN
        elif spm and i in special_ids:
            kind = gguf.TokenType.CONTROL
        else:
            kind = gguf.TokenType.NORMAL
        tokens.append(token)
        types.append(kind)
    return tokens, types


def _merges(tokenizer: Any) -> list[str]:
    return [m if isinstance(m, str) else " ".join(m)
            for m in tokenizer_json(tokenizer)["model"]["merges"]]


def _scores(tokens: list[str], types: list[Any], merges: list[str]) -> list[float]:
    """SentencePiece BPE scores: a piece made by the r-th merge scores -r, as the scores in a
    tokenizer.model fall with the merge order (llama.cpp merges the best-scoring pair first;
    transformers' GGUF loader rebuilds the merges from the same scores). transformers 5 writes
    no tokenizer.model and tokenizer.json holds the order only, so the scores come from it; the
    converter's own fallback for that case (gguf.LlamaHfVocab) gives every piece -1000, which
    loses the merge order."""
    import gguf

    rank: dict[str, int] = {}
    for r, merge in enumerate(merges):
        rank.setdefault(merge.replace(" ", "", 1), r)
    scores = []
    for i, (token, kind) in enumerate(zip(tokens, types, strict=True)):
        if kind in (gguf.TokenType.CONTROL, gguf.TokenType.USER_DEFINED):
            scores.append(ADDED_SCORE)
        elif kind == gguf.TokenType.UNUSED:
            scores.append(-10000.0)
        elif token in rank:
            scores.append(-float(rank[token]))
        elif kind == gguf.TokenType.NORMAL:
            scores.append(-float(len(merges) + i))  # single characters: never a merge result
        else:
            scores.append(0.0)  # byte and unknown pieces, as sentencepiece scores them
    return scores


def tokenizer_metadata(tokenizer: Any, vocab_size: int, model_type: str) -> dict[str, Any]:
    """What the GGUF's tokenizer.ggml.* keys hold for this tokenizer."""
    kind = vocab_kind(tokenizer)
    tokens, types = _token_types(tokenizer, vocab_size)
    merges = _merges(tokenizer)
    if kind == "gpt2":
        return {"model": "gpt2", "tokens": tokens, "types": types, "merges": merges,
                "pre": _pre_tokenizer_name(tokenizer, model_type)}
    return {"model": "llama", "tokens": tokens, "types": types, "pre": "default",
            "scores": _scores(tokens, types, merges),
            "add_space_prefix": _adds_space_prefix(tokenizer)}


def write_tokenizer(writer: Any, tokenizer: Any, tok: dict[str, Any], stops: list[int],
                    end_of_turn: int | None) -> None:
    writer.add_tokenizer_model(tok["model"])
    writer.add_tokenizer_pre(tok["pre"])
    writer.add_token_list(tok["tokens"])
    if "scores" in tok:
        writer.add_token_scores(tok["scores"])
    writer.add_token_types(tok["types"])
    if "merges" in tok:
        writer.add_token_merges(tok["merges"])
    if "add_space_prefix" in tok:
        writer.add_add_space_prefix(tok["add_space_prefix"])
    if tokenizer.bos_token_id is not None:
        writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(stops[0])
    if end_of_turn is not None:
        writer.add_eot_token_id(end_of_turn)
    if tokenizer.unk_token_id is not None:
        writer.add_unk_token_id(tokenizer.unk_token_id)
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(adds_bos(tokenizer))
    if tok["model"] == "llama":
        writer.add_add_eos_token(_adds_eos(tokenizer))
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(str(tokenizer.chat_template))
