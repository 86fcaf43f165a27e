"""LoRA, DoRA and QLoRA through peft."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TASK_TYPES = {"sft": "CAUSAL_LM", "classify": "SEQ_CLS"}


def _targets(names: list[str]) -> str | list[str]:
    return "all-linear" if names == ["all-linear"] else list(names)


def lora_config(cfg: Any, task: str, model_config: Any = None, *, use_dora: bool = False) -> Any:
    """The peft ``LoraConfig`` of a ``MethodConfig`` (the model's config is not needed)."""
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
        target_modules=_targets(cfg.target_modules), use_dora=use_dora,
        task_type=TASK_TYPES[task])


def dora_config(cfg: Any, task: str, model_config: Any = None) -> Any:
    return lora_config(cfg, task, use_dora=True)


def _wrap(model: Any, config: Any) -> Any:
    from peft import get_peft_model

    try:
        return get_peft_model(model, config)
    except ValueError as exc:  # e.g. target modules not found in the model
        from engine.errors import ConfigError

        raise ConfigError("method.target_modules", str(exc).splitlines()[0],
                          "use [all-linear] or names of linear layers in this model") from None


def apply_lora(model: Any, cfg: Any, task: str) -> Any:
    return set_trainable_dtype(_wrap(model, lora_config(cfg, task)), cfg.adapter_dtype)


def apply_dora(model: Any, cfg: Any, task: str) -> Any:
    return set_trainable_dtype(_wrap(model, dora_config(cfg, task)), cfg.adapter_dtype)


def apply_qlora(model: Any, cfg: Any, task: str) -> Any:
    model = prepare_kbit(model)
    return set_trainable_dtype(_wrap(model, lora_config(cfg, task)), cfg.adapter_dtype)


def prepare_kbit(model: Any) -> Any:
    """peft's ``prepare_model_for_kbit_training`` without its blanket fp32 upcast.

    peft casts every non-4-bit parameter (embeddings, norms, head) to fp32: for Llama-3.1-8B
    that is 1.96 GiB more for weights that do not train. Here they stay in the dtype they were
    loaded in (the compute dtype on a GPU); RMSNorm computes in fp32 internally whatever its
    weight's dtype. Like peft: freeze the base, and with gradient checkpointing make the
    embedding output require grad so checkpointed layers see an input that needs a gradient.
    """
    for param in model.parameters():
        param.requires_grad = False
    name = ("is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing")
            else "is_gradient_checkpointing")  # transformers 5 renamed it
    if getattr(model, name, False) and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    return model


def compute_dtype(model: Any) -> Any:
    """The dtype the base computes in: bitsandbytes' compute dtype for a 4-bit base, else the
    dtype of its (16-bit or fp32) input embeddings."""
    quant = getattr(getattr(model, "config", None), "quantization_config", None)
    dtype = getattr(quant, "bnb_4bit_compute_dtype", None)
    if dtype is not None and getattr(model, "is_loaded_in_4bit", False):
        import torch

        return getattr(torch, dtype) if isinstance(dtype, str) else dtype
    return model.get_input_embeddings().weight.dtype


def set_trainable_dtype(model: Any, adapter_dtype: str) -> Any:
    """Every trained parameter in fp32 (``fp32``, peft's default for adapters, and a classify
    head too) or in the base's compute dtype (``compute``: half the adapter, gradient and
    AdamW-state bytes). fp16 parameters are refused: fp16 mixed precision's gradient scaler
    cannot unscale fp16 gradients."""
    import torch

    dtype = torch.float32 if adapter_dtype == "fp32" else compute_dtype(model)
    if dtype == torch.float16:
        from engine.errors import ConfigError

        raise ConfigError("method.adapter_dtype", "compute would train fp16 adapters, which "
                          "fp16 mixed precision cannot unscale",
                          "use adapter_dtype: fp32, or training.precision: bf16")
    for param in model.parameters():
        if param.requires_grad and param.dtype != dtype and param.is_floating_point():
            param.data = param.data.to(dtype)
    return model


def save(model: Any, folder: Path) -> None:
    model.save_pretrained(folder)


def load_trained(base: Any, folder: Path) -> Any:
    from peft import PeftModel

    return PeftModel.from_pretrained(base, folder)
