"""IA³ (Liu et al., 2022) through peft: learned vectors that rescale keys, values and the
feed-forward activations. Fewer trainable parameters than any other method here, mergeable.

The scaled layers are peft's defaults for the model family (Llama: k_proj, v_proj, down_proj;
BERT: key, value, output.dense). A family peft has no defaults for is refused by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.errors import ConfigError

TASK_TYPES = {"sft": "CAUSAL_LM", "classify": "SEQ_CLS"}


def peft_config(cfg: Any, task: str, model_config: Any = None) -> Any:
    """peft's ``IA3Config``: it reads no method.* key (peft picks the layers to scale)."""
    from peft import IA3Config

    return IA3Config(task_type=TASK_TYPES[task])


def check_model(config: Any) -> None:
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as KNOWN

    model_type = getattr(config, "model_type", "")
    if model_type not in KNOWN:
        raise ConfigError("method.name", f"ia3 has no default layers to scale for "
                          f"{model_type!r} models", "use lora or adapter for this model")


def apply(model: Any, cfg: Any, task: str) -> Any:
    from peft import get_peft_model

    check_model(model.config)
    return get_peft_model(model, peft_config(cfg, task))


def save(model: Any, folder: Path) -> None:
    model.save_pretrained(folder)


def load_trained(base: Any, folder: Path) -> Any:
    from peft import PeftModel

    return PeftModel.from_pretrained(base, folder)
