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
    name: str
    label: str
    summary: str
    mergeable: bool
    works_on_4bit: bool
    quantized_base: bool
    suggested_lr: float
    output_dir: str  # folder name inside the run folder
    apply: Callable[[Any, Any, str], Any]  # (model, MethodConfig, task) -> model
    save: Callable[[Any, Path], None]
    load_trained: Callable[[Any, Path], Any]  # (base model, result folder) -> model
    # Packed batches are exact only for methods that act token by token; prompt-learning
    # methods prepend virtual tokens that restarting position ids know nothing of.
    packs: bool = True


METHODS: dict[str, MethodSpec] = {
    "full": MethodSpec(
        "full", "Full fine-tuning", "Trains every weight. Best quality, memory ≈ 3-4× the "
        "model's size.", True, False, False, 2e-5, "model", _full.apply, _full.save,
        _full.load_trained),
    "lora": MethodSpec(
        "lora", "LoRA", "Low-rank updates beside frozen weights (~0.5% trained). The default.",
        True, True, False, 2e-4, "adapter", _lora.apply_lora, _lora.save, _lora.load_trained),
    "qlora": MethodSpec(
        "qlora", "QLoRA", "LoRA on a 4-bit NF4 base: fits large models on consumer GPUs, "
        "~30% slower.", True, True, True, 2e-4, "adapter", _lora.apply_qlora, _lora.save,
        _lora.load_trained),
    "dora": MethodSpec(
        "dora", "DoRA", "LoRA that also learns each weight's magnitude: closer to full "
        "fine-tuning at low rank, a little slower.", True, True, False, 2e-4, "adapter",
        _lora.apply_dora, _lora.save, _lora.load_trained),
    "adapter": MethodSpec(
        "adapter", "Adapters (bottleneck)", "Small down/up-projection blocks after every "
        "attention and feed-forward block (~3% of a 135M model, ~0.4% of an 8B one). "
        "Modular, one per task; cannot be merged into the base.", False, True, False, 1e-3,
        "adapter", _adapter.apply, _adapter.save, _adapter.load_trained),
    "prefix": MethodSpec(
        "prefix", "Prefix tuning", "Trained key/value vectors in front of every layer's "
        "attention (~0.02-0.2%). For very tight memory; weaker than LoRA. Not mergeable.", False,
        True, False, 1e-2, "adapter", _prompt.apply_prefix, _prompt.save,
        _prompt.load_trained, packs=False),
    "ptuning_v2": MethodSpec(
        "ptuning_v2", "P-tuning v2", "Deep prompt tuning: prefix tuning at every layer "
        "without reparameterisation (~0.02-0.2%). Suits prompt-style and classification "
        "tasks. Not mergeable.", False, True, False, 1e-2, "adapter", _prompt.apply_ptuning_v2,
        _prompt.save, _prompt.load_trained, packs=False),
    "prompt": MethodSpec(
        "prompt", "Prompt tuning", "Trained embeddings of a few virtual tokens at the input "
        "only (<0.01%). The smallest method; needs big models to do well. Not mergeable.",
        False, True, False, 3e-2, "adapter", _prompt.apply_prompt, _prompt.save,
        _prompt.load_trained, packs=False),
    "ia3": MethodSpec(
        "ia3", "IA³", "Learned vectors that rescale keys, values and feed-forward "
        "activations (~0.01-0.05%). Tiny, mergeable.", True, True, False, 3e-3, "adapter",
        _ia3.apply, _ia3.save, _ia3.load_trained),
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
