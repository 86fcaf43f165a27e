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
    return _wrap(model, lora_config(cfg, task))


def apply_dora(model: Any, cfg: Any, task: str) -> Any:
    return _wrap(model, dora_config(cfg, task))


def apply_qlora(model: Any, cfg: Any, task: str) -> Any:
    from peft import prepare_model_for_kbit_training

    # k-bit preparation freezes the base, upcasts norms (and the head) to fp32 for stable
    # training. Checkpointing is switched on by the trainer setup, not here.
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return _wrap(model, lora_config(cfg, task))


def save(model: Any, folder: Path) -> None:
    model.save_pretrained(folder)


def load_trained(base: Any, folder: Path) -> Any:
    from peft import PeftModel

    return PeftModel.from_pretrained(base, folder)
