"""GGUF for more of the catalog's families: each a tiny model of that family, written, read
back with gguf's own reader and loaded again to compare with the model it came from."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_export import TEMPLATE, _small_tokenizer, _spread

LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32}


PHI35_ROPE = {"rope_type": "longrope", "rope_theta": 10000.0,
              "original_max_position_embeddings": 32,
              "long_factor": [1.0, 1.2, 1.5, 2.0, 3.0, 5.0, 8.0, 12.0],
              "short_factor": [1.0, 1.0, 1.1, 1.1, 1.2, 1.3, 1.5, 2.0]}


@pytest.fixture(scope="module")
def llama3(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """A Llama 3.x-style model: llama3 rope scaling (short original context, so prompts of a
    few dozen tokens already reach the scaled frequencies) and a byte-level BPE tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _small_tokenizer(tmp_path_factory.mktemp("llama3-tok"))
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
                         pad_token_id=2, tie_word_embeddings=True,
                         rope_parameters=dict(LLAMA3_ROPE))
    torch.manual_seed(0)
    return _spread(LlamaForCausalLM(config)).eval(), tok


def _write(model: Any, tok: Any, path: Path, gguf_type: str = "f16") -> dict[str, Any]:
    from engine.export._gguf import check_supported, write_gguf
    from engine.export._stops import end_of_turn_id, stop_token_ids

    check_supported(model.config, tok)
    return write_gguf(model, tok, path, gguf_type=gguf_type, name="tiny llama3",
                      stops=stop_token_ids(tok), end_of_turn=end_of_turn_id(tok))


def test_llama3_rope_is_written_as_rope_freqs(llama3: tuple[Any, Any], tmp_path: Path) -> None:
    from gguf import GGMLQuantizationType, GGUFReader

    model, tok = llama3
    path = tmp_path / "m.gguf"
    _write(model, tok, path)
    reader = GGUFReader(str(path))
    tensors = {t.name: t for t in reader.tensors}
    freqs = tensors["rope_freqs.weight"]
    assert freqs.tensor_type == GGMLQuantizationType.F32 and list(freqs.shape) == [8]
    factors = torch.from_numpy(np.array(freqs.data, dtype=np.float32))
    assert float(factors.min()) == 1.0 and float(factors.max()) == 8.0  # both ends used
    # llama.cpp divides the plain frequencies by these: that must give transformers' llama3 rope
    plain = 1.0 / (500000.0 ** (torch.arange(0, 16, 2, dtype=torch.float32) / 16))
    torch.testing.assert_close(plain / factors, model.model.rotary_emb.inv_freq,
                               rtol=1e-6, atol=0)
    assert float(reader.fields["llama.rope.freq_base"].parts[-1][0]) == 500000.0
    assert "llama.rope.scaling.type" not in reader.fields  # the converter writes none for llama3


@pytest.mark.parametrize("gguf_type", ["f16", "q8_0"])
def test_llama3_round_trip(gguf_type: str, llama3: tuple[Any, Any], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from engine.export._gguf import verify_gguf
    from engine.export._merge import chat_inputs, logits_of
    from engine.export._stops import stop_token_ids

    model, tok = llama3
    path = tmp_path / "m.gguf"
    _write(model, tok, path, gguf_type)
    inputs = chat_inputs(tok)
    assert min(x.shape[1] for x in inputs) > 32  # past the original context: scaling matters
    check = verify_gguf(path, model, tok, inputs, gguf_type, "Hello, who are you?",
                        stop_token_ids(tok))
    assert check["tokenizer_matches"]
    if gguf_type == "q8_0":
        assert check["argmax_agreement"] >= 0.95
        return
    assert check["argmax_agreement"] == 1.0 and check["same_greedy_text"]
    assert check["max_logit_diff"] < 1e-2 * check["logit_scale"]
    # Without the rope_freqs tensor (as transformers' loader alone reads the file), the same
    # weights compute something else: the tensor is what carries Llama 3's rope.
    plain = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name,
                                                 dtype=torch.float32).eval()
    off = max(float((a - b).abs().max()) for a, b in
              zip(logits_of(model, inputs), logits_of(plain, inputs), strict=True))
    assert off > 10 * check["max_logit_diff"]


def test_llama3_rope_only_for_llama(llama3: tuple[Any, Any]) -> None:
    from transformers import Qwen2Config

    from engine.errors import UserError
    from engine.export._gguf import check_supported

    _model, tok = llama3
    qwen = Qwen2Config(rope_parameters=dict(LLAMA3_ROPE))
    with pytest.raises(UserError, match="rope scaling 'llama3' for qwen2") as info:
        check_supported(qwen, tok)
    assert info.value.code == "gguf_unsupported"


def _spm_tokenizer(prefix_space: bool = True) -> Any:
    """A SentencePiece BPE tokenizer laid out as transformers 5 holds a Llama 2 / Mistral /
    Phi-3 tokenizer.model (<unk> <s> </s>, the 256 byte pieces, then the merged pieces; byte
    fallback, '▁' for spaces, a prefix space) or Gemma's (no prefix space), plus two added
    chat tokens at the end as a chat fine-tune has them."""
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        normalizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    texts = [f"What is {i} plus {i}? Arr, it be {2 * i}! Hello, who are you? Write a haiku "
             "about the sea. You are a helpful assistant." for i in range(50)]
    steps = [normalizers.Prepend("▁")] if prefix_space else []
    normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "▁")])
    trained = Tokenizer(models.BPE(unk_token="<unk>"))
    trained.normalizer = normalizer
    trained.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, show_progress=False))
    learned = json.loads(trained.to_str())["model"]
    pieces = [t for t, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1])]
    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>",
                                         *(f"<0x{b:02X}>" for b in range(256))])}
    for piece in pieces:
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
              for m in learned["merges"]]
    spm = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True,
                               unk_token="<unk>", fuse_unk=True))
    spm.normalizer = normalizer
    spm.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(),
                                     *([decoders.Strip(" ", 1, 0)] if prefix_space else [])])
    spm.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in
                            ("<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>")])
    spm.post_processor = processors.TemplateProcessing(  # <s> first, as Llama 2's does
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=spm, bos_token="<s>", eos_token="<|im_end|>",
                                  unk_token="<unk>", pad_token="</s>")
    tok.chat_template = TEMPLATE
    return tok


def _family_model(kind: str, vocab: int) -> Any:
    from transformers import (
        Gemma2Config,
        Gemma2ForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
        Phi3Config,
        Phi3ForCausalLM,
    )

    common = {"vocab_size": vocab, "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 256, "bos_token_id": 1, "eos_token_id": 4,
              "pad_token_id": 2}
    torch.manual_seed(0)
    if kind == "gemma2":
        model = Gemma2ForCausalLM(Gemma2Config(**common, head_dim=16, query_pre_attn_scalar=16,
                                               sliding_window=128))
    elif kind == "phi3":
        model = Phi3ForCausalLM(Phi3Config(**common, tie_word_embeddings=False))
    elif kind == "phi3.5":  # Phi-3.5-mini's long-context rope, with a short original context
        model = Phi3ForCausalLM(Phi3Config(**common, tie_word_embeddings=False,
                                           original_max_position_embeddings=32,
                                           rope_parameters=dict(PHI35_ROPE)))
    else:  # Llama 2
        model = LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=False))
    model = _spread(model).eval()
    if kind == "gemma2":  # Gemma's norms are stored as offsets from 1: make them matter
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.normal_(0, 0.2)
    return model


@pytest.mark.parametrize("kind", ["llama2", "gemma2", "phi3", "phi3.5"])
def test_sentencepiece_families_round_trip(kind: str, tmp_path: Path) -> None:
    """Llama 2 / Mistral-style, Gemma 2 and Phi-3 models with SentencePiece tokenizers: the
    GGUF holds llama.cpp's vocabulary (model 'llama', scores in merge order, byte pieces) and
    the family's own keys, and loads back with the same tokens and logits."""
    import gguf

    from engine.export._gguf import verify_gguf
    from engine.export._merge import chat_inputs
    from engine.export._stops import end_of_turn_id, stop_token_ids

    tok = _spm_tokenizer(prefix_space=kind != "gemma2")
    model = _family_model(kind, len(tok))
    path = tmp_path / "m.gguf"
    from engine.export._gguf import check_supported, write_gguf

    check_supported(model.config, tok)
    facts = write_gguf(model, tok, path, gguf_type="f16", name=f"tiny {kind}",
                       stops=stop_token_ids(tok), end_of_turn=end_of_turn_id(tok))
    arch = {"llama2": "llama", "gemma2": "gemma2", "phi3": "phi3", "phi3.5": "phi3"}[kind]
    assert facts["architecture"] == arch and facts["tokenizer_model"] == "llama"
    reader = gguf.GGUFReader(str(path))

    def field(key: str) -> Any:
        f = reader.fields[key]
        return f.contents() if hasattr(f, "contents") else f.parts[-1][0]

    assert field("tokenizer.ggml.model") == "llama"
    assert field("tokenizer.ggml.add_space_prefix") == (kind != "gemma2")
    tokens, types = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.token_type")
    assert types[tokens.index("<0x0A>")] == gguf.TokenType.BYTE
    # <unk> is an added special token in transformers' tokenizer, so control, as the
    # converter types it from added_tokens_decoder
    assert types[tokens.index("<unk>")] == gguf.TokenType.CONTROL
    assert types[tokens.index("▁are▁you")] == gguf.TokenType.NORMAL
    assert field("tokenizer.ggml.add_bos_token") is True
    assert field("tokenizer.ggml.pre") == "default"
    assert field("tokenizer.chat_template") == tok.chat_template
    scores = field("tokenizer.ggml.scores")
    assert scores[tokens.index("<|im_end|>")] == -1000.0
    assert types[tokens.index("<|im_end|>")] == gguf.TokenType.CONTROL
    assert field("tokenizer.ggml.eos_token_id") == tok.convert_tokens_to_ids("<|im_end|>")
    assert "tokenizer.ggml.merges" not in reader.fields  # llama.cpp's SPM vocab has none
    names = {t.name for t in reader.tensors}
    if kind == "gemma2":
        assert field("gemma2.attn_logit_softcapping") == pytest.approx(50.0)
        assert field("gemma2.final_logit_softcapping") == pytest.approx(30.0)
        assert {"blk.0.post_attention_norm.weight", "blk.0.post_ffw_norm.weight"} <= names
        norm = next(t for t in reader.tensors if t.name == "output_norm.weight")
        torch.testing.assert_close(torch.from_numpy(np.array(norm.data)),
                                   model.model.norm.weight.detach() + 1)
    if kind == "phi3.5":  # Phi3MiniModel.generate_extra_tensors / set_gguf_parameters
        for which in ("long", "short"):
            factors = next(t for t in reader.tensors if t.name == f"rope_factors_{which}.weight")
            np.testing.assert_array_equal(np.array(factors.data),
                                          np.float32(PHI35_ROPE[f"{which}_factor"]))
        assert field("phi3.rope.scaling.original_context_length") == 32
        assert field("phi3.rope.scaling.attn_factor") == pytest.approx(
            math.sqrt(1 + math.log(256 / 32) / math.log(32)))
    if kind.startswith("phi3"):
        assert field("phi3.rope.dimension_count") == 16
        assert {"blk.0.attn_qkv.weight", "blk.0.ffn_up.weight"} <= names
        up = next(t for t in reader.tensors if t.name == "blk.0.ffn_up.weight")
        assert list(up.shape) == [64, 256]  # gate and up fused, as llama.cpp's phi3 reads it
    check = verify_gguf(path, model, tok, chat_inputs(tok), "f16", "Hello, who are you?",
                        stop_token_ids(tok))
    assert check["tokenizer_matches"]
    assert check["argmax_agreement"] == 1.0 and check["same_greedy_text"]
    assert check["max_logit_diff"] < 1e-2 * check["logit_scale"]


def test_unigram_tokenizers_are_refused_before_any_weight_loads() -> None:
    """T5-style Unigram vocabularies are not written: the refusal names the kind and the
    way out."""
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, PreTrainedTokenizerFast

    from engine.errors import UserError
    from engine.export._gguf import check_supported

    uni = Tokenizer(models.Unigram([("<unk>", 0.0), ("a", -1.0), ("b", -2.0)], unk_id=0))
    tok = PreTrainedTokenizerFast(tokenizer_object=uni, unk_token="<unk>")
    with pytest.raises(UserError, match="Unigram") as info:
        check_supported(LlamaConfig(), tok)
    assert info.value.code == "gguf_unsupported"
    assert "convert_hf_to_gguf.py" in str(info.value.advice)


def test_gemma2_with_another_query_scale_is_refused() -> None:
    from transformers import Gemma2Config

    from engine.errors import UserError
    from engine.export._gguf import check_supported

    config = Gemma2Config(head_dim=16, query_pre_attn_scalar=24, num_hidden_layers=2)
    with pytest.raises(UserError, match="query_pre_attn_scalar=24"):
        check_supported(config, _spm_tokenizer(prefix_space=False))


def _field(reader: Any, key: str) -> Any:
    f = reader.fields[key]
    return f.contents() if hasattr(f, "contents") else f.parts[-1][0]


QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _qwen2_tokenizer() -> Any:
    """Byte-level BPE with Qwen2's own pre-tokenizer (its tokenizer.json's split regex: digits
    one by one, then byte-level without a regex), which llama.cpp's pre name qwen2 stands for."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [f"What is {i} plus {i}? Arr, it be {2 * i}! Hello, who are you? Write a haiku "
             "about the sea. You are a helpful assistant." for i in range(50)]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=360, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>")
    tok.chat_template = TEMPLATE
    return tok


def test_qwen25_writes_llama_cpp_qwen2(tmp_path: Path) -> None:
    """A Qwen2.5-style model (tied embeddings as the 0.5B-3B sizes have, rope base 1e6, a
    vocabulary padded past the tokenizer's): arch qwen2 with q/k/v biases and unpermuted q/k
    (Qwen2Model), byte-level BPE with pre-tokenizer qwen2, padding ids as [PADn] unused; loads
    back with the same tokens and logits."""
    import gguf
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from engine.export._gguf import check_supported, verify_gguf, write_gguf
    from engine.export._merge import chat_inputs
    from engine.export._stops import end_of_turn_id, stop_token_ids

    tok = _qwen2_tokenizer()
    config = Qwen2Config(vocab_size=len(tok) + 5, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    torch.manual_seed(0)
    model = _spread(Qwen2ForCausalLM(config)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("_proj.bias"):
                p.normal_(0, 0.5)  # Qwen's biases are large: make them matter
    check_supported(model.config, tok)
    path = tmp_path / "m.gguf"
    facts = write_gguf(model, tok, path, gguf_type="f16", name="tiny qwen2.5",
                       stops=stop_token_ids(tok), end_of_turn=end_of_turn_id(tok))
    assert facts["architecture"] == "qwen2" and facts["tokenizer_model"] == "gpt2"
    reader = gguf.GGUFReader(str(path))
    assert _field(reader, "general.architecture") == "qwen2"
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    assert _field(reader, "tokenizer.ggml.pre") == "qwen2"
    assert _field(reader, "qwen2.rope.freq_base") == 1e6
    assert "qwen2.rope.dimension_count" not in reader.fields
    assert _field(reader, "tokenizer.ggml.eos_token_id") == tok.convert_tokens_to_ids("<|im_end|>")
    assert _field(reader, "tokenizer.chat_template") == TEMPLATE
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == len(tok) + 5 and tokens[-1] == f"[PAD{len(tok) + 4}]"
    assert types[-1] == gguf.TokenType.UNUSED
    assert types[tokens.index("<|im_start|>")] == gguf.TokenType.CONTROL
    tensors = {t.name: t for t in reader.tensors}
    assert {f"blk.0.attn_{x}.bias" for x in "qkv"} <= set(tensors)
    assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
    q = model.model.layers[0].self_attn.q_proj.weight.detach().numpy()
    np.testing.assert_allclose(np.asarray(tensors["blk.0.attn_q.weight"].data, dtype=np.float32)
                               .reshape(q.shape), q, atol=1e-3)  # not permuted
    check = verify_gguf(path, model, tok, chat_inputs(tok), "f16", "Hello, who are you?",
                        stop_token_ids(tok))
    assert check["tokenizer_matches"] and check["argmax_agreement"] == 1.0
    assert check["max_logit_diff"] < 1e-2 * check["logit_scale"]


@pytest.mark.parametrize("config_name", ["Qwen3Config", "Gemma3TextConfig", "GemmaConfig",
                                         "PhiConfig"])
def test_other_families_are_refused_with_the_way_out(config_name: str) -> None:
    """Families the writer does not know are refused by check_supported, which export runs
    before any weight loads, naming the alternative."""
    import transformers

    from engine.errors import UserError
    from engine.export._gguf import check_supported

    config = getattr(transformers, config_name)()
    with pytest.raises(UserError, match=f"this model is {config.model_type}") as info:
        check_supported(config, _small_tokenizer_cached())
    assert info.value.code == "gguf_unsupported"
    assert "--merge" in str(info.value.advice)


@pytest.mark.parametrize(("config_name", "settings", "message"), [
    ("Qwen2Config", {"use_sliding_window": True, "sliding_window": 64}, "use_sliding_window"),
    ("Gemma2Config", {"tie_word_embeddings": False, "head_dim": 16,
                      "query_pre_attn_scalar": 16}, "separate lm_head"),
    ("Phi3Config", {"partial_rotary_factor": 0.5}, "partial rotary"),
])
def test_what_llama_cpp_computes_otherwise_is_refused(config_name: str, settings: dict[str, Any],
                                                      message: str) -> None:
    """Settings of a supported family that llama.cpp's graph for it does not follow."""
    import transformers

    from engine.errors import UserError
    from engine.export._gguf import check_supported

    config = getattr(transformers, config_name)(num_hidden_layers=2, **settings)
    with pytest.raises(UserError, match=message) as info:
        check_supported(config, _small_tokenizer_cached())
    assert info.value.code == "gguf_unsupported" and "--merge" in str(info.value.advice)


_TOK: list[Any] = []


def _small_tokenizer_cached() -> Any:
    import tempfile

    if not _TOK:
        with tempfile.TemporaryDirectory() as folder:
            _TOK.append(_small_tokenizer(Path(folder)))
    return _TOK[0]


def test_gemma2_run_exports_through_the_real_path(tmp_path: Path) -> None:
    """A LoRA run on a tiny Gemma 2 with a SentencePiece tokenizer (saved and loaded back as a
    user's base folder is): export_run merges, writes gemma2 GGUF, loads it back and writes
    the Modelfile."""
    import gguf
    from test_export import _chat_rows

    from engine import events as ev
    from engine import runs
    from engine.config import job_from_dict
    from engine.export import export_run
    from engine.training import run_training

    base = tmp_path / "gemma2-base"
    tok = _spm_tokenizer(prefix_space=False)
    tok.save_pretrained(base)
    _family_model("gemma2", len(tok)).save_pretrained(base)
    job = job_from_dict({  # Gemma 2 has no sdpa attention in transformers: eager, as a user sets
        "name": "g2", "model": {"source": str(base), "attn_implementation": "eager"},
        "dataset": {"path": str(_chat_rows(tmp_path / "chat.jsonl")), "max_length": 64},
        "method": {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "training": {"max_steps": 2, "batch_size": 2, "learning_rate": 1e-2,
                     "warmup_ratio": 0.0},
        "output": {"runs_dir": str(tmp_path / "runs")}})
    run = tmp_path / "runs" / "g2"
    writer = ev.EventWriter(run / runs.EVENTS_FILE)
    try:
        assert run_training(job, run_dir=run, emit=writer).status == "completed"
    finally:
        writer.close()
    results = export_run(run, tmp_path / "out", merge=True, gguf=True, gguf_type="f16")
    assert [r.kind for r in results] == ["merged", "gguf"]
    facts = results[1].details
    assert facts["architecture"] == "gemma2" and facts["tokenizer_model"] == "llama"
    assert facts["tokenizer_matches"] and facts["argmax_agreement"] >= 0.98
    reader = gguf.GGUFReader(results[1].path)
    assert _field(reader, "tokenizer.ggml.add_space_prefix") is False
    assert _field(reader, "tokenizer.chat_template") == TEMPLATE
    assert 'PARAMETER stop "<|im_end|>"' in (tmp_path / "out" / "Modelfile").read_text()
