"""Write a model of a llama.cpp-supported family as a GGUF file (f16 or q8_0) with its
tokenizer and chat template, following llama.cpp's convert_hf_to_gguf conventions (the
converter's per-family classes: LlamaModel, Qwen2Model, Gemma2Model, Phi3MiniModel), and
check it by loading it back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.export._gguf_vocab import adds_bos, tokenizer_metadata, vocab_kind, write_tokenizer

GGUF_TYPES = ("f16", "q8_0")


@dataclass(frozen=True)
class Family:
    """How llama.cpp's converter writes one transformers model type."""

    arch: str  # llama.cpp architecture (gguf.MODEL_ARCH_NAMES value)
    permute_qk: bool = False  # LlamaModel reorders q/k rows for its rope layout
    norm_offset: float = 0.0  # Gemma: llama.cpp multiplies by the stored norm, HF by 1 + it
    ropes: tuple[str, ...] = ("default", "linear")


# transformers model_type -> how the converter writes it (it writes Mistral as llama).
FAMILIES = {
    "llama": Family("llama", permute_qk=True, ropes=("default", "linear", "llama3")),
    "mistral": Family("llama", permute_qk=True),
    "qwen2": Family("qwen2"),
    "gemma2": Family("gemma2", norm_offset=1.0, ropes=("default",)),
    "phi3": Family("phi3", ropes=("default", "longrope")),
}
GGUF_ARCHS = {k: f.arch for k, f in FAMILIES.items()}
ROPE_FREQS_TENSOR = "rope_freqs.weight"  # gguf.TENSOR_NAMES[MODEL_TENSOR.ROPE_FREQS] + ".weight"
ROPE_LONG_TENSOR = "rope_factors_long.weight"  # MODEL_TENSOR.ROPE_FACTORS_LONG
ROPE_SHORT_TENSOR = "rope_factors_short.weight"  # MODEL_TENSOR.ROPE_FACTORS_SHORT
_ADVICE = "export with --merge and convert the folder with llama.cpp's convert_hf_to_gguf.py"


# --------------------------------------------------------------------------- checks


def rope_type(config: Any) -> tuple[str, dict[str, Any]]:
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope = dict(rope)
    return str(rope.get("rope_type", rope.get("type", "default"))), rope


def check_supported(config: Any, tokenizer: Any) -> None:
    """UserError when this model cannot be written as GGUF here (before any heavy work)."""
    model_type = str(getattr(config, "model_type", ""))
    family = FAMILIES.get(model_type)
    if family is None:
        raise UserError(f"GGUF export supports llama-family models ({', '.join(FAMILIES)}); "
                        f"this model is "
                        f"{model_type or 'unknown'}", _ADVICE, code="gguf_unsupported")
    kind, _ = rope_type(config)
    if kind not in family.ropes:
        raise UserError(f"GGUF export does not support rope scaling {kind!r} for "
                        f"{model_type} models yet", _ADVICE, code="gguf_unsupported")
    _check_family(config, model_type)
    vocab = vocab_kind(tokenizer)
    if vocab not in ("gpt2", "llama"):
        what = ("SentencePiece Unigram (T5 style)" if vocab == "unigram" else
                "neither byte-level BPE nor SentencePiece BPE")
        raise UserError("GGUF export supports byte-level BPE tokenizers (SmolLM, Llama 3, "
                        "Qwen2) and SentencePiece BPE ones (Llama 2, Mistral, Gemma, Phi-3); "
                        f"this model's tokenizer is {what}", _ADVICE, code="gguf_unsupported")


def _check_family(config: Any, model_type: str) -> None:
    if model_type == "gemma2":
        # llama.cpp scales Gemma 2 queries by 1/sqrt(head_dim) (by hidden/heads for the 27B
        # size only); a model whose query_pre_attn_scalar is something else would be wrong.
        scalar = getattr(config, "query_pre_attn_scalar", None)
        is_27b = (config.num_hidden_layers == 46  # llama.cpp's LLM_TYPE_27B
                  and scalar == config.hidden_size // config.num_attention_heads)
        if scalar is not None and int(scalar) != _head_dim(config) and not is_27b:
            raise UserError(f"GGUF export: this Gemma 2 model scales queries by "
                            f"query_pre_attn_scalar={scalar}, llama.cpp by head_dim="
                            f"{_head_dim(config)}", _ADVICE, code="gguf_unsupported")
    if model_type == "qwen2" and getattr(config, "use_sliding_window", False):
        raise UserError("GGUF export: llama.cpp's qwen2 has no sliding-window attention; this "
                        "Qwen2 model sets use_sliding_window", _ADVICE, code="gguf_unsupported")
    if model_type == "gemma2" and not getattr(config, "tie_word_embeddings", True):
        raise UserError("GGUF export: llama.cpp's gemma2 reads its output head from the "
                        "token embeddings; this Gemma 2 model has a separate lm_head",
                        _ADVICE, code="gguf_unsupported")
    if model_type == "phi3" and float(getattr(config, "partial_rotary_factor", 1.0)) != 1.0:
        raise UserError("GGUF export does not support Phi-3 models with partial rotary "
                        "embeddings yet", _ADVICE, code="gguf_unsupported")


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


def longrope(config: Any) -> dict[str, Any] | None:
    """Phi-3's long-context rope as the converter writes it (Phi3MiniModel): the long and short
    factor tensors, the original context and the attention factor; None for other ropes."""
    import math

    import numpy as np

    kind, rope = rope_type(config)
    if kind != "longrope" or not rope.get("long_factor"):
        return None
    original = int(rope.get("original_max_position_embeddings")
                   or config.original_max_position_embeddings)
    scale = config.max_position_embeddings / original
    attn = math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1.0 else 1.0
    return {"long": np.asarray(rope["long_factor"], dtype=np.float32),
            "short": np.asarray(rope["short_factor"], dtype=np.float32),
            "original": original, "attn_factor": attn}


def _extra_tensors(config: Any) -> list[tuple[str, Any]]:
    """Tensors the converter writes before the weights (generate_extra_tensors)."""
    factors = rope_freqs(config)
    if factors is not None:
        return [(ROPE_FREQS_TENSOR, factors)]
    phi = longrope(config)
    if phi is not None:
        return [(ROPE_LONG_TENSOR, phi["long"]), (ROPE_SHORT_TENSOR, phi["short"])]
    return []


def _tensors(model: Any, arch: Any, model_type: str) -> list[tuple[str, Any]]:
    import gguf

    config = model.config
    family = FAMILIES[model_type]
    out = _extra_tensors(config)
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
        if family.permute_qk and key.endswith("q_proj.weight"):
            data = _permute(data, n_head)
        elif family.permute_qk and key.endswith("k_proj.weight"):
            data = _permute(data, n_kv)
        elif family.norm_offset and key.endswith("norm.weight"):
            data = data + family.norm_offset
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
    write_tokenizer(writer, tokenizer, tok, stops, end_of_turn)
    for tensor_name, data in _tensors(model, arch, model_type):
        array, raw = _encode(data, gguf_type)
        writer.add_tensor(tensor_name, array, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"architecture": arch_name, "tokenizer_pre": tok["pre"], "type": gguf_type,
            "tokenizer_model": tok["model"], "bytes": path.stat().st_size,
            "adds_bos": adds_bos(tokenizer)}


def _write_hparams(writer: Any, config: Any, model_type: str, name: str, gguf_type: str) -> None:
    import gguf

    heads = config.num_attention_heads
    head_dim = _head_dim(config)
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
    if FAMILIES[model_type].permute_qk or model_type == "phi3":
        writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // heads or model_type == "gemma2":
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    _write_family_hparams(writer, config, model_type)
    if gguf_type == "q8_0":
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    else:
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)


def _write_family_hparams(writer: Any, config: Any, model_type: str) -> None:
    if model_type == "gemma2":  # Gemma2Model.set_gguf_parameters
        writer.add_attn_logit_softcapping(float(config.attn_logit_softcapping or 0.0))
        writer.add_final_logit_softcapping(float(config.final_logit_softcapping or 0.0))
        writer.add_sliding_window(int(config.sliding_window))
    elif model_type == "phi3":  # Phi3MiniModel.set_gguf_parameters
        phi = longrope(config)
        original = (phi["original"] if phi else getattr(config, "original_max_position_embeddings",
                                                         None) or config.max_position_embeddings)
        writer.add_rope_scaling_orig_ctx_len(int(original))
        writer.add_sliding_window(int(getattr(config, "sliding_window", None) or 0))
        if phi is not None:
            writer.add_rope_scaling_attn_factors(float(phi["attn_factor"]))


# --------------------------------------------------------------------------- checking


# Round-trip thresholds per type: the share of positions whose most likely next token agrees
# with the merged fp32 model, and the largest logit difference relative to the logit range.
ROUND_TRIP = {"f16": (0.98, 0.02), "q8_0": (0.9, 0.08),
              # llama.cpp's k-quant mixes (loaded back through transformers' dequantizer);
              # not yet measured: llama.cpp's quantizer could not be built on this machine
              "q5_k_m": (0.8, 0.15), "q4_k_m": (0.7, 0.25)}


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
    same_ids = _same_tokens(tokenizer, loaded_tok, inputs)
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
    """transformers' GGUF loader ignores what llama.cpp reads from ``rope_freqs``, the Phi-3
    long/short rope factors and Gemma 2's soft-capping keys: give the loaded model what the
    file says, after checking it is what the merged model computes. ExportCheckFailed when the
    file says something else."""
    import numpy as np
    import torch
    from gguf import GGUFReader

    from engine.export._merge import ExportCheckFailed

    reader = GGUFReader(str(path))
    tensors = {t.name: np.array(t.data, dtype=np.float32) for t in reader.tensors
               if t.name in (ROPE_FREQS_TENSOR, ROPE_LONG_TENSOR, ROPE_SHORT_TENSOR)}
    want_extra = dict(_extra_tensors(merged.config))
    for name, data in want_extra.items():
        if name not in tensors or not np.array_equal(tensors[name], data):
            raise ExportCheckFailed(f"the GGUF file's {name} is missing or differs from the "
                                    "model's rope; nothing was written")
    if merged.config.model_type == "gemma2":
        _apply_gemma2(reader, loaded, int(merged.config.query_pre_attn_scalar))
    if ROPE_LONG_TENSOR in want_extra:
        # Phi-3 longrope: the factors checked above are the merged model's own; its rotary
        # module computes with them (transformers picks long or short by sequence length,
        # llama.cpp by context size: the same factors either way).
        loaded.model.rotary_emb = merged.model.rotary_emb
        return
    if ROPE_FREQS_TENSOR not in want_extra:
        return
    factors = torch.from_numpy(tensors[ROPE_FREQS_TENSOR])
    rotary = loaded.model.rotary_emb  # built with the default rope: the plain frequencies
    inv_freq = rotary.original_inv_freq.float() / factors
    want = merged.model.rotary_emb.inv_freq.float().cpu()
    if not torch.allclose(inv_freq, want, rtol=1e-5, atol=0):
        raise ExportCheckFailed(
            f"the GGUF file's {ROPE_FREQS_TENSOR} gives rope frequencies that differ from the "
            f"model's by up to {float((inv_freq - want).abs().max()):.3g}; nothing was written")
    rotary.inv_freq.copy_(inv_freq)
    rotary.original_inv_freq.copy_(inv_freq)


def _apply_gemma2(reader: Any, loaded: Any, query_scalar: int) -> None:
    """What llama.cpp computes for a gemma2 file and transformers' loader leaves at Gemma2Config
    defaults: the soft-capping values the file holds, and the query scale (llama.cpp's gemma2
    graph uses 1/sqrt(head_dim), hidden/heads for the 27B size; check_supported refuses a model
    whose query_pre_attn_scalar is neither, so the model's own value is llama.cpp's)."""
    def value(key: str) -> float | None:
        field = reader.fields.get(f"gemma2.{key}")
        return float(field.parts[-1][0]) or None if field is not None else None

    loaded.config.final_logit_softcapping = value("final_logit_softcapping")
    attn_cap = value("attn_logit_softcapping")
    loaded.config.attn_logit_softcapping = attn_cap
    for layer in loaded.model.layers:
        layer.self_attn.attn_logit_softcapping = attn_cap
        layer.self_attn.scaling = query_scalar ** -0.5
    loaded.config.query_pre_attn_scalar = query_scalar


def _same_tokens(tokenizer: Any, loaded_tok: Any, inputs: list[Any]) -> bool:
    """The loaded tokenizer gives the model's ids: on the chat texts for byte-level BPE; on
    the plain prompts for SentencePiece, where llama.cpp puts a space prefix after each special
    token as the original (legacy) tokenizer does and transformers' GGUF loader does not."""
    from engine.export._merge import CHECK_PROMPTS

    if vocab_kind(tokenizer) == "gpt2":
        return all(loaded_tok(t, add_special_tokens=False)["input_ids"] == x[0].tolist()
                   for t, x in zip(_texts(tokenizer), inputs, strict=True))
    return all(loaded_tok(t, add_special_tokens=False)["input_ids"]
               == tokenizer(t, add_special_tokens=False)["input_ids"] for t in CHECK_PROMPTS)


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
