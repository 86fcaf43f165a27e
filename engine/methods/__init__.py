"""Fine-tuning methods: how each loads the base, what it trains, how its result is saved.

Each method is a :class:`MethodSpec` in :data:`METHODS`. ``load_base`` and ``apply`` are the
two halves of setting a model up for training; ``save`` writes the final result in the run
folder and ``load_trained`` re-attaches it to a base model (chat, eval, export, tests).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.methods import _adapter, _full, _ia3, _lora, _prompt


@dataclass(frozen=True)
class MethodSpec:
    """Everything Tunesmith knows about one method; the one place a method is described.

    The job file's choices for ``method.name``, the advisor's table, ``explain``, export and
    the GUI's Method page all read :data:`METHODS`, so a method added here shows up in each.
    """

    name: str
    label: str  # shown wherever the method is named in prose or a table
    summary: str
    settings: tuple[str, ...]  # the job file's method.* keys this method reads
    mergeable: bool
    works_on_4bit: bool
    quantized_base: bool  # the base is loaded in 4-bit NF4 (QLoRA)
    suggested_lr: float
    output_dir: str  # folder name inside the run folder
    apply: Callable[[Any, Any, str], Any]  # (model, MethodConfig, task) -> model
    save: Callable[[Any, Path], None]
    load_trained: Callable[[Any, Path], Any]  # (base model, result folder) -> model
    memory_model: str  # the advisor's memory terms for it (advisor.MEMORY_TERMS)
    # (MethodConfig, task, model config) -> the peft config; None for non-peft methods.
    peft_config: Callable[[Any, str, Any], Any] | None = None
    # Packed batches are exact only for methods that act token by token; prompt-learning
    # methods prepend virtual tokens that restarting position ids know nothing of.
    packs: bool = True
    # The trained model runs the plain base inside peft's ``disable_adapter()`` (chat and
    # evaluate then need no second copy of the base).
    switchable: bool = False
    why_not_mergeable: str = ""  # shown by export --merge
    note: str = ""  # a line under the architecture map


_LORA_KEYS = ("r", "alpha", "dropout", "target_modules", "adapter_dtype")
_NOTHING_TO_FOLD = "; there is no weight to fold them into"

METHODS: dict[str, MethodSpec] = {
    "full": MethodSpec(
        "full", "Full fine-tuning", "Trains every weight. Best quality, memory ≈ 3-4× the "
        "model's size.", (), mergeable=True, works_on_4bit=False, quantized_base=False,
        suggested_lr=2e-5, output_dir="model", apply=_full.apply, save=_full.save,
        load_trained=_full.load_trained, memory_model="full",
        note="Full fine-tuning: every weight is trained."),
    "lora": MethodSpec(
        "lora", "LoRA", "Low-rank updates beside frozen weights. The default. The lesson's "
        "~0.5% trained holds for 7B+ models; a small model trains a larger share (~3.5% of "
        "a 135M one at r=16 on all linear layers).",
        _LORA_KEYS, mergeable=True, works_on_4bit=True, quantized_base=False, suggested_lr=2e-4,
        output_dir="adapter", apply=_lora.apply_lora, save=_lora.save,
        load_trained=_lora.load_trained, memory_model="lora", peft_config=_lora.lora_config,
        switchable=True),
    "qlora": MethodSpec(
        "qlora", "QLoRA", "LoRA on a 4-bit NF4 base: fits large models on consumer GPUs, "
        "~30% slower.", (*_LORA_KEYS, "double_quant"), mergeable=True, works_on_4bit=True,
        quantized_base=True, suggested_lr=2e-4, output_dir="adapter", apply=_lora.apply_qlora,
        save=_lora.save, load_trained=_lora.load_trained, memory_model="qlora",
        peft_config=_lora.lora_config, switchable=True,
        note="QLoRA: the same LoRA matrices on a base held in 4-bit NF4."),
    "dora": MethodSpec(
        "dora", "DoRA", "LoRA that also learns each weight's magnitude: closer to full "
        "fine-tuning at low rank, a little slower.", _LORA_KEYS, mergeable=True,
        works_on_4bit=True, quantized_base=False, suggested_lr=2e-4, output_dir="adapter",
        apply=_lora.apply_dora, save=_lora.save, load_trained=_lora.load_trained,
        memory_model="dora", peft_config=_lora.dora_config, switchable=True),
    "adapter": MethodSpec(
        "adapter", "Bottleneck adapter", "Small down/up-projection blocks after every "
        "attention and feed-forward block (~3% of a 135M model, ~0.4% of an 8B one). "
        "Modular, one per task; cannot be merged into the base.", ("bottleneck_size",),
        mergeable=False, works_on_4bit=True, quantized_base=False, suggested_lr=1e-3,
        output_dir="adapter", apply=_adapter.apply, save=_adapter.save,
        load_trained=_adapter.load_trained, memory_model="adapter",
        why_not_mergeable="a bottleneck adapter adds new layers with a nonlinearity between "
        "them; they cannot be folded into the existing weights",
        note="Bottleneck adapters are inserted by the engine after each block; the base stays "
        "frozen."),
    "prefix": MethodSpec(
        "prefix", "Prefix tuning", "Trained key/value vectors in front of every layer's "
        "attention (~0.02-0.2%). For very tight memory; weaker than LoRA. Not mergeable.",
        ("num_virtual_tokens", "prefix_projection"), mergeable=False, works_on_4bit=True,
        quantized_base=False, suggested_lr=1e-2, output_dir="adapter",
        apply=_prompt.apply_prefix, save=_prompt.save, load_trained=_prompt.load_trained,
        memory_model="prefix", peft_config=_prompt.prefix_tuning_config, packs=False,
        why_not_mergeable="prefix tuning learns key/value vectors put in front of every "
        "layer's attention" + _NOTHING_TO_FOLD),
    "ptuning_v2": MethodSpec(
        "ptuning_v2", "P-tuning v2", "Deep prompt tuning: prefix tuning at every layer "
        "without reparameterisation (~0.02-0.2%). Suits prompt-style and classification "
        "tasks. Not mergeable.", ("num_virtual_tokens",), mergeable=False, works_on_4bit=True,
        quantized_base=False, suggested_lr=1e-2, output_dir="adapter",
        apply=_prompt.apply_ptuning_v2, save=_prompt.save, load_trained=_prompt.load_trained,
        memory_model="ptuning_v2", peft_config=_prompt.ptuning_v2_config, packs=False,
        why_not_mergeable="P-tuning v2 learns prefix vectors for every layer's attention"
        + _NOTHING_TO_FOLD),
    "prompt": MethodSpec(
        "prompt", "Prompt tuning", "Trained embeddings of a few virtual tokens at the input "
        "only (<0.01%). The smallest method; needs big models to do well. Not mergeable.",
        ("num_virtual_tokens",), mergeable=False, works_on_4bit=True, quantized_base=False,
        suggested_lr=3e-2, output_dir="adapter", apply=_prompt.apply_prompt, save=_prompt.save,
        load_trained=_prompt.load_trained, memory_model="prompt",
        peft_config=_prompt.prompt_tuning_config, packs=False,
        why_not_mergeable="prompt tuning learns virtual input tokens" + _NOTHING_TO_FOLD),
    "ia3": MethodSpec(
        "ia3", "IA³", "Learned vectors that rescale keys, values and feed-forward "
        "activations (~0.01-0.05%). Tiny, mergeable.", (), mergeable=True, works_on_4bit=True,
        quantized_base=False, suggested_lr=3e-3, output_dir="adapter", apply=_ia3.apply,
        save=_ia3.save, load_trained=_ia3.load_trained, memory_model="ia3",
        peft_config=_ia3.peft_config, switchable=True),
}


def get_method(name: str) -> MethodSpec:
    from engine.errors import ConfigError

    spec = METHODS.get(name)
    if spec is None:
        raise ConfigError("method.name", f"{name!r} is not available in this build",
                          f"available: {', '.join(METHODS)}")
    return spec


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters; 4-bit weights count as their unpacked element count."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if getattr(p, "quant_state", None) is not None or p.__class__.__name__ == "Params4bit":
            n *= 2  # two 4-bit values are packed into each uint8 element
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def is_4bit(model: Any) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False)) or any(
        p.__class__.__name__ == "Params4bit" for p in model.parameters())
