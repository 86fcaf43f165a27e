"""Prompt-learning methods through peft: prefix tuning, P-tuning v2, prompt tuning.

What each trains (L layers, n virtual tokens, d_kv the width of one layer's keys):

- ``prefix`` (Li & Liang, 2021): n trainable key/value vectors at *every* layer, seen by the
  attention of every real token (2·L·n·d_kv parameters). With ``method.prefix_projection``
  the prefix is produced by a two-layer MLP from n embeddings during training (the paper's
  reparameterisation: more stable, many more trainable parameters while training).
- ``ptuning_v2`` (Liu et al., 2022, "deep prompt tuning"): the same computation as prefix
  tuning without the reparameterisation, which the P-tuning v2 paper found unnecessary. In
  Tunesmith the two share peft's ``PrefixTuningConfig``; what ``ptuning_v2`` fixes is the
  recipe: never a projection (``method.prefix_projection`` must stay false) and, for
  classification, a trained linear classifier head on the model's pooled output rather than
  verbal labels. peft's ``PromptEncoderConfig`` is P-tuning *v1* (an LSTM/MLP prompt
  encoder at the input layer only), so it is deliberately not used here.
- ``prompt`` (Lester et al., 2021): n trainable input embeddings only (n·hidden parameters).

Prefix tuning and P-tuning v2 without a projection start from the keys and values that real
tokens produce in the frozen model (Li & Liang, 2021, section 7.2: initialising with real
words' activations), not from peft's random N(0, 1) vectors: a random prefix scrambles every
layer's attention (SmolLM2-135M's first-step loss 10.7 against the base model's 3.4), and the
short runs hobbyists make never recover from it.

All three prepend virtual tokens, which is why packed batches are refused for them: the
restarting position ids that keep packed samples apart know nothing of the prefix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.errors import ConfigError

TASK_TYPES = {"sft": "CAUSAL_LM", "classify": "SEQ_CLS"}
# Model families whose attention takes a key/value cache (what prefix tuning feeds it).
NO_KV_CACHE = {"bert", "roberta", "distilbert", "electra", "deberta", "deberta-v2", "mpnet",
               "albert", "xlm-roberta"}


def check_model(method: str, config: Any) -> None:
    """Refuse, before any training, a prompt-learning method a model cannot run."""
    model_type = getattr(config, "model_type", "")
    if method in ("prefix", "ptuning_v2") and model_type in NO_KV_CACHE:
        raise ConfigError("method.name", f"{method} cannot work with {model_type} models: it "
                          "feeds trained keys and values to every layer through the attention "
                          f"cache, which {model_type} (an encoder) does not take",
                          "use prompt, ia3, lora or adapter for this model")


def _task(task: str) -> str:
    return TASK_TYPES[task]


def prefix_config(cfg: Any, task: str, config: Any, *, projection: bool) -> Any:
    from peft import PrefixTuningConfig

    return PrefixTuningConfig(num_virtual_tokens=cfg.num_virtual_tokens,
                              prefix_projection=projection,
                              encoder_hidden_size=config.hidden_size, task_type=_task(task))


def _wrap(model: Any, peft_config: Any, method: str) -> Any:
    from peft import get_peft_model

    check_model(method, model.config)
    try:
        return fix_generation(get_peft_model(model, peft_config))
    except ValueError as exc:
        raise ConfigError("method.name", f"{method} cannot be applied to "
                          f"{model.config.model_type} models: {str(exc).splitlines()[0]}",
                          "use lora or adapter") from None


def _renamed(kwargs: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    if old in kwargs:
        kwargs[new] = kwargs.pop(old)
    return kwargs


def fix_generation(model: Any) -> Any:
    """Make peft's prompt injection reach the model during ``generate``.

    transformers 5.2x hands the generation cache around as ``cache``; peft 0.21 looks for and
    writes ``past_key_values``. Left alone, the model prefers ``cache``: generation silently
    ignores a trained prefix, and prompt tuning re-inserts its virtual tokens at every step.
    Around peft's own preparation the cache is renamed to the name peft knows, and back.
    """
    if not hasattr(model, "base_model_prepare_inputs_for_generation"):
        return model  # not a generating task (e.g. classification)
    peft_prepare = type(model).prepare_inputs_for_generation

    def prepare(*args: Any, **kwargs: Any) -> dict[str, Any]:
        base_prepare = model.base_model_prepare_inputs_for_generation
        model.base_model_prepare_inputs_for_generation = (
            lambda *a, **kw: _renamed(base_prepare(*a, **kw), "cache", "past_key_values"))
        try:
            out = peft_prepare(model, *args, **kwargs)
        finally:
            model.base_model_prepare_inputs_for_generation = base_prepare
        return _renamed(out, "past_key_values", "cache")

    model.prepare_inputs_for_generation = prepare
    return model


def prefix_tuning_config(cfg: Any, task: str, config: Any) -> Any:
    return prefix_config(cfg, task, config, projection=cfg.prefix_projection)


def ptuning_v2_config(cfg: Any, task: str, config: Any) -> Any:
    if cfg.prefix_projection:
        raise ConfigError("method.prefix_projection", "P-tuning v2 trains the prefixes "
                          "directly, without a projection", "set it to false, or use "
                          "method prefix for prefix tuning with reparameterisation")
    return prefix_config(cfg, task, config, projection=False)


def prompt_tuning_config(cfg: Any, task: str, config: Any = None) -> Any:
    from peft import PromptTuningConfig

    return PromptTuningConfig(num_virtual_tokens=cfg.num_virtual_tokens, task_type=_task(task))


def apply_prefix(model: Any, cfg: Any, task: str) -> Any:
    return init_prefix_from_real_tokens(
        _wrap(model, prefix_tuning_config(cfg, task, model.config), "prefix"))


def apply_ptuning_v2(model: Any, cfg: Any, task: str) -> Any:
    return init_prefix_from_real_tokens(
        _wrap(model, ptuning_v2_config(cfg, task, model.config), "ptuning_v2"))


def prefix_init_ids(vocab_size: int, n: int) -> list[int]:
    """The n token ids whose activations seed a prefix: spread over the middle of the
    vocabulary, where byte-pair vocabularies keep ordinary words (not bytes, not specials)."""
    low, high = vocab_size // 8, max(vocab_size // 2, vocab_size // 8 + n)
    step = max((high - low) // max(n, 1), 1)
    return [min(low + i * step, vocab_size - 1) for i in range(n)]


def init_prefix_from_real_tokens(model: Any) -> Any:
    """Set a projection-free prefix to the keys/values the frozen model makes for real tokens.

    peft lays the prefix out as one row per virtual token of ``2·L·heads·head_dim`` values,
    viewed as ``(n, 2L, heads, head_dim)`` and permuted so that entries ``2i`` and ``2i+1`` are
    layer i's keys and values. The frozen model run on ``prefix_init_ids`` with a cache gives
    exactly those tensors (keys already rotated for positions 0..n-1, where the real tokens'
    positions then continue), so the prefixed model starts as the base model reading n real
    tokens first. Families whose cache peft post-processes, or that have two transformer
    stacks, keep peft's initialisation.
    """
    import torch
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_PREFIX_TUNING_POSTPROCESS_MAPPING

    peft_config = model.active_peft_config
    base = model.get_base_model()
    model_type = getattr(base.config, "model_type", "")
    if (getattr(peft_config, "prefix_projection", True) or peft_config.num_transformer_submodules
            != 1 or model_type in TRANSFORMERS_MODELS_TO_PREFIX_TUNING_POSTPROCESS_MAPPING
            or "gemma" in model_type):
        return model
    weight = model.prompt_encoder[model.active_adapter].embedding.weight
    n, layers = peft_config.num_virtual_tokens, peft_config.num_layers
    heads = peft_config.num_attention_heads
    ids = torch.tensor([prefix_init_ids(base.config.vocab_size, n)],
                       device=next(base.parameters()).device)
    was_training = base.training
    base.eval()
    try:
        with torch.no_grad():
            cache = base(input_ids=ids, use_cache=True).past_key_values
            kv = [tensor for layer in cache.layers[:layers] for tensor in (layer.keys,
                                                                          layer.values)]
    except (AttributeError, TypeError, RuntimeError):
        return model  # a model whose cache is not per-layer keys and values: peft's init
    finally:
        base.train(was_training)
    expected = (1, heads, n, peft_config.token_dim // heads)
    if len(kv) != 2 * layers or any(tuple(t.shape) != expected for t in kv):
        return model
    # (2L, 1, heads, n, head_dim) -> (n, 2L, heads, head_dim) -> peft's rows.
    rows = torch.stack(kv).squeeze(1).permute(2, 0, 1, 3).reshape(n, -1)
    with torch.no_grad():
        weight.copy_(rows.to(weight.dtype))
    return model


def apply_prompt(model: Any, cfg: Any, task: str) -> Any:
    return _wrap(model, prompt_tuning_config(cfg, task), "prompt")


def save(model: Any, folder: Path) -> None:
    model.save_pretrained(folder)


def load_trained(base: Any, folder: Path) -> Any:
    from peft import PeftModel

    return fix_generation(PeftModel.from_pretrained(base, folder))
