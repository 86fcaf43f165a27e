"""Write a llama-family model as a GGUF file (f16 or q8_0) with its tokenizer and chat template,
following llama.cpp's convert_hf_to_gguf conventions, and check it by loading it back."""

from __future__ import annotations

import json
from hashlib import sha256
from pathlib import Path
from typing import Any

from engine.errors import UserError

GGUF_TYPES = ("f16", "q8_0")
# transformers model_type -> llama.cpp architecture (llama.cpp writes Mistral as llama).
GGUF_ARCHS = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}
# llama.cpp's Llama converter reorders q/k rows for its rope layout; its Qwen2 converter does not.
PERMUTE_QK = {"llama", "mistral"}

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
ROPE_FREQS_TENSOR = "rope_freqs.weight"  # gguf.TENSOR_NAMES[MODEL_TENSOR.ROPE_FREQS] + ".weight"
_FALLBACK_PRE = {"qwen2": "qwen2", "llama": "gpt-2", "mistral": "gpt-2"}


# --------------------------------------------------------------------------- checks


def rope_type(config: Any) -> tuple[str, dict[str, Any]]:
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope = dict(rope)
    return str(rope.get("rope_type", rope.get("type", "default"))), rope


def check_supported(config: Any, tokenizer: Any) -> None:
    """UserError when this model cannot be written as GGUF here (before any heavy work)."""
    model_type = str(getattr(config, "model_type", ""))
    advice = ("export with --merge and convert the folder with llama.cpp's "
              "convert_hf_to_gguf.py")
    if model_type not in GGUF_ARCHS:
        raise UserError(f"GGUF export supports llama-family models ({', '.join(GGUF_ARCHS)}); "
                        f"this model is {model_type or 'unknown'}", advice,
                        code="gguf_unsupported")
    kind, _ = rope_type(config)
    if kind not in ("default", "linear") and not (kind == "llama3" and model_type == "llama"):
        raise UserError(f"GGUF export does not support rope scaling {kind!r} for "
                        f"{model_type} models yet", advice, code="gguf_unsupported")
    if not _is_byte_level_bpe(tokenizer):
        kind = ("SentencePiece (Llama 2, Mistral v0.1-v0.3 style; llama.cpp's converter reads "
                "its scores from tokenizer.model with the sentencepiece package)"
                if _is_sentencepiece(tokenizer) else "neither")
        raise UserError("GGUF export supports byte-level BPE tokenizers (GPT-2 style: SmolLM, "
                        f"Llama 3, Qwen2); this model's tokenizer is {kind}", advice,
                        code="gguf_unsupported")


def _tokenizer_json(tokenizer: Any) -> dict[str, Any]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return {}
    data: dict[str, Any] = json.loads(backend.to_str())
    return data


def _is_sentencepiece(tokenizer: Any) -> bool:
    """A SentencePiece model as tokenizers holds it: Unigram, or BPE with byte fallback."""
    model = _tokenizer_json(tokenizer).get("model", {})
    return model.get("type") == "Unigram" or bool(model.get("byte_fallback"))


def _is_byte_level_bpe(tokenizer: Any) -> bool:
    data = _tokenizer_json(tokenizer)
    return (data.get("model", {}).get("type") == "BPE"
            and "ByteLevel" in json.dumps(data.get("pre_tokenizer")))


# --------------------------------------------------------------------------- tokenizer


def _pre_tokenizer_name(tokenizer: Any, model_type: str) -> str:
    digest = sha256(str(tokenizer.encode(_CHECK_TEXT, add_special_tokens=False))
                    .encode()).hexdigest()
    # llama.cpp hashes encode() with special tokens; for these families they add none.
    return _PRE_BY_HASH.get(digest) or _FALLBACK_PRE.get(model_type, "default")


def tokenizer_metadata(tokenizer: Any, vocab_size: int, model_type: str) -> dict[str, Any]:
    """Tokens in id order with llama.cpp token types, merges and the pre-tokenizer name."""
    import gguf

    vocab = tokenizer.get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            special = added[i].special or (by_id[i].startswith("<|") and by_id[i].endswith("|>"))
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m)
              for m in _tokenizer_json(tokenizer)["model"]["merges"]]
    return {"tokens": tokens, "types": types, "merges": merges,
            "pre": _pre_tokenizer_name(tokenizer, model_type)}


def _adds_bos(tokenizer: Any) -> bool:
    bos = tokenizer.bos_token_id
    ids = tokenizer("a")["input_ids"]
    return bos is not None and bool(ids) and ids[0] == bos


# --------------------------------------------------------------------------- tensors


def _permute(w: Any, n_head: int) -> Any:
    """llama.cpp's q/k row order: each head's rotary halves interleaved."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _head_dim(config: Any) -> int:
    return int(getattr(config, "head_dim", None)
               or config.hidden_size // config.num_attention_heads)


def rope_freqs(config: Any) -> Any:
    """Llama 3's rope scaling as llama.cpp stores it: one divisor per rotary frequency
    (the ``rope_freqs`` tensor, LlamaModel.generate_extra_tensors in convert_hf_to_gguf.py);
    None for any other rope. llama.cpp divides each default frequency by its factor."""
    import math

    import numpy as np

    kind, rope = rope_type(config)
    if kind != "llama3":
        return None
    base = float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
    dim = _head_dim(config)
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor = float(rope.get("factor", 8.0))
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    # The converter reads this from the config's top level (default 8192); transformers keeps
    # it in the rope parameters, where Llama 3.x sets it to 8192 too.
    old_context = float(rope.get("original_max_position_embeddings",
                                 getattr(config, "original_max_position_embeddings", 8192)))
    low_wavelen, high_wavelen = old_context / low, old_context / high
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def _tensors(model: Any, arch: Any, model_type: str) -> list[tuple[str, Any]]:
    import gguf

    config = model.config
    factors = rope_freqs(config)  # written first, as the converter does
    out = [] if factors is None else [(ROPE_FREQS_TENSOR, factors)]
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads or \
        config.num_attention_heads
    for key, value in model.state_dict().items():
        if tied and key == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when output.weight is absent
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UserError(f"GGUF export cannot place tensor {key!r} of this model",
                            code="gguf_unsupported")
        data = value.detach().float().cpu().numpy()
        if model_type in PERMUTE_QK and key.endswith("q_proj.weight"):
            data = _permute(data, n_head)
        elif model_type in PERMUTE_QK and key.endswith("k_proj.weight"):
            data = _permute(data, n_kv)
        out.append((name, data))
    return out


def _encode(data: Any, gguf_type: str) -> tuple[Any, Any]:
    """(array, raw dtype or None): 1-D tensors stay f32, as llama.cpp keeps them."""
    import gguf
    import numpy as np

    if data.ndim == 1:
        return data.astype(np.float32), None
    if gguf_type == "q8_0" and data.shape[-1] % 32 == 0:
        q8 = gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(data, q8), q8
    return data.astype(np.float16), None


# --------------------------------------------------------------------------- writing


def write_gguf(model: Any, tokenizer: Any, path: Path, *, gguf_type: str, name: str,
               stops: list[int], end_of_turn: int | None) -> dict[str, Any]:
    """Write ``model`` (fp32, merged) to ``path``; returns facts for the export event."""
    import gguf

    if gguf_type not in GGUF_TYPES:
        raise UserError(f"--gguf-type {gguf_type!r} is not one of {', '.join(GGUF_TYPES)}")
    config = model.config
    model_type = config.model_type
    arch_name = GGUF_ARCHS[model_type]
    arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch_name)
    if name.strip().lower() == "mistral":
        # transformers' GGUF loader treats general.name == "mistral" as a Mistral model and then
        # finds no Mistral tensor map in gguf-py; any other name loads as Llama (identical math).
        name = f"{name}-finetune"
    writer = gguf.GGUFWriter(str(path), arch_name)
    _write_hparams(writer, config, model_type, name, gguf_type)
    tok = tokenizer_metadata(tokenizer, config.vocab_size, model_type)
    _write_tokenizer(writer, tokenizer, tok, stops, end_of_turn)
    for tensor_name, data in _tensors(model, arch, model_type):
        array, raw = _encode(data, gguf_type)
        writer.add_tensor(tensor_name, array, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"architecture": arch_name, "tokenizer_pre": tok["pre"], "type": gguf_type,
            "bytes": path.stat().st_size, "adds_bos": _adds_bos(tokenizer)}


def _write_hparams(writer: Any, config: Any, model_type: str, name: str, gguf_type: str) -> None:
    import gguf

    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kind, rope = rope_type(config)
    theta = rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    writer.add_type("model")
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.num_key_value_heads or heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(float(theta))
    writer.add_vocab_size(config.vocab_size)
    if model_type in PERMUTE_QK:
        writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    if gguf_type == "q8_0":
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    else:
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)


def _write_tokenizer(writer: Any, tokenizer: Any, tok: dict[str, Any], stops: list[int],
                     end_of_turn: int | None) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(tok["pre"])
    writer.add_token_list(tok["tokens"])
    writer.add_token_types(tok["types"])
    writer.add_token_merges(tok["merges"])
    if tokenizer.bos_token_id is not None:
        writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(stops[0])
    if end_of_turn is not None:
        writer.add_eot_token_id(end_of_turn)
    if tokenizer.unk_token_id is not None:
        writer.add_unk_token_id(tokenizer.unk_token_id)
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(_adds_bos(tokenizer))
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(str(tokenizer.chat_template))


# --------------------------------------------------------------------------- checking


# Round-trip thresholds per type: the share of positions whose most likely next token agrees
# with the merged fp32 model, and the largest logit difference relative to the logit range.
ROUND_TRIP = {"f16": (0.98, 0.02), "q8_0": (0.9, 0.08)}


def verify_gguf(path: Path, merged: Any, tokenizer: Any, inputs: list[Any], gguf_type: str,
                demo_prompt: str, stops: list[int],
                max_new_tokens: int = 24) -> dict[str, Any]:
    """Load ``path`` back with transformers' GGUF loader; compare logits, tokenization and a
    greedy answer with the merged model. Raises ExportCheckFailed beyond the type's bounds."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.export._merge import ExportCheckFailed, chat_inputs, logits_of

    loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                  dtype=torch.float32).eval()
    _apply_rope_freqs(path, merged, loaded)
    loaded_tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    want, got = logits_of(merged, inputs), logits_of(loaded, inputs)
    diff = max(float((a - b).abs().max()) for a, b in zip(want, got, strict=True))
    scale = max(float(a.abs().max()) for a in want) or 1.0
    agree = sum(int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in zip(want, got, strict=True))
    total = sum(a.shape[1] for a in want)
    same_ids = all(
        loaded_tok(t, add_special_tokens=False)["input_ids"] == x[0].tolist()
        for t, x in zip(_texts(tokenizer), inputs, strict=True))
    prompt = chat_inputs(tokenizer, [demo_prompt])[0]
    texts = [_greedy(m, tokenizer, prompt, stops, max_new_tokens) for m in (merged, loaded)]
    facts = {"max_logit_diff": diff, "logit_scale": scale, "argmax_agreement": agree / total,
             "tokenizer_matches": same_ids, "demo_prompt": demo_prompt,
             "merged_text": texts[0], "gguf_text": texts[1],
             "same_greedy_text": texts[0] == texts[1],
             "greedy_common_chars": _common_chars(*texts)}
    min_agree, max_rel = ROUND_TRIP[gguf_type]
    if not same_ids or agree / total < min_agree or not diff <= max_rel * scale:
        raise ExportCheckFailed(
            f"the GGUF file does not reproduce the merged model: argmax agreement "
            f"{agree / total:.1%}, largest logit difference {diff:.3g} of {scale:.3g}, "
            f"tokenizer {'matches' if same_ids else 'differs'}; nothing was written")
    return facts


def _apply_rope_freqs(path: Path, merged: Any, loaded: Any) -> None:
    """transformers' GGUF loader ignores ``rope_freqs``: give the loaded model the frequencies
    the file's tensor says (as llama.cpp computes them), after checking they are the ones
    transformers' own llama3 rope computes. ExportCheckFailed when they are not."""
    import numpy as np
    import torch
    from gguf import GGUFReader

    from engine.export._merge import ExportCheckFailed

    if rope_freqs(merged.config) is None:
        return
    tensors = {t.name: t for t in GGUFReader(str(path)).tensors}
    if ROPE_FREQS_TENSOR not in tensors:
        raise ExportCheckFailed(f"the GGUF file has no {ROPE_FREQS_TENSOR} for its llama3 rope; "
                                "nothing was written")
    factors = torch.from_numpy(np.array(tensors[ROPE_FREQS_TENSOR].data, dtype=np.float32))
    rotary = loaded.model.rotary_emb  # built with the default rope: the plain frequencies
    inv_freq = rotary.original_inv_freq.float() / factors
    want = merged.model.rotary_emb.inv_freq.float().cpu()
    if not torch.allclose(inv_freq, want, rtol=1e-5, atol=0):
        raise ExportCheckFailed(
            f"the GGUF file's {ROPE_FREQS_TENSOR} gives rope frequencies that differ from the "
            f"model's by up to {float((inv_freq - want).abs().max()):.3g}; nothing was written")
    rotary.inv_freq.copy_(inv_freq)
    rotary.original_inv_freq.copy_(inv_freq)


def _common_chars(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _texts(tokenizer: Any) -> list[str]:
    from engine.export._merge import CHECK_PROMPTS

    return [str(tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                              add_generation_prompt=True)) for p in CHECK_PROMPTS]


def _greedy(model: Any, tokenizer: Any, prompt: Any, stops: list[int],
            max_new_tokens: int) -> str:
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        ids = model.generate(prompt.to(device), attention_mask=torch.ones_like(prompt).to(device),
                             max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=stops)
    return str(tokenizer.decode(ids[0, prompt.shape[1]:], skip_special_tokens=True))
