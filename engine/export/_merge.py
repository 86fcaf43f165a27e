"""Fold a trained adapter into its base in fp32, check it, and write a 16-bit model folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.events import EventSink, Progress
from engine.export._run import RunInfo

# Inputs the merge and GGUF checks run on (with the chat template, as a user would chat).
CHECK_PROMPTS = ("Hello! Who are you?", "Write a haiku about the sea.",
                 "What is 12 times 7? Answer briefly.")
MERGE_TOLERANCE = 1e-4  # fp32: merged vs base+adapter, largest absolute logit difference
DTYPES = ("bfloat16", "float16", "float32")
MAX_SHARD_SIZE = "2GB"


class ExportCheckFailed(RuntimeError):
    """A written model does not compute what the trained model computes (exit 1)."""


@dataclass
class Merged:
    model: Any  # fp32, merged (a plain transformers model)
    max_logit_diff: float | None
    notes: list[str]


def chat_inputs(tokenizer: Any, prompts: tuple[str, ...] | list[str] = CHECK_PROMPTS) -> list[Any]:
    """One [1, n] tensor of input ids per prompt, rendered with the chat template."""
    import torch

    out = []
    for prompt in prompts:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                             tokenize=False, add_generation_prompt=True)
        ids = tokenizer(str(text), add_special_tokens=False)["input_ids"]
        out.append(torch.tensor([ids]))
    return out


def logits_of(model: Any, inputs: list[Any]) -> list[Any]:
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        return [model(input_ids=x.to(device)).logits.float().cpu() for x in inputs]


def max_abs_diff(a: list[Any], b: list[Any]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def _load_fp32_base(info: RunInfo, device: str, emit: EventSink | None) -> Any:
    from engine.training import load_base, resolve_precision

    # Never the 4-bit weights: a QLoRA adapter is merged into the base reloaded unquantized.
    base = load_base(info.job, info.base_folder(emit), device, resolve_precision("fp32", device),
                     quantized=False)
    return base.eval()


def merge_run(info: RunInfo, tokenizer: Any, device: str, emit: EventSink) -> Merged:
    """The trained model as one plain fp32 model; the merge is checked against base+adapter."""
    import torch
    from transformers import AutoModelForCausalLM

    if info.is_full:
        emit(Progress(stage="export", current=0, total=1, message="loading the trained model"))
        model = AutoModelForCausalLM.from_pretrained(info.result, dtype=torch.float32)
        return Merged(model.to(device).eval(), None, [])
    emit(Progress(stage="export", current=0, total=1,
                  message="loading the base model in fp32 and attaching the adapter"))
    peft_model = info.spec.load_trained(_load_fp32_base(info, device, emit), info.result).eval()
    inputs = chat_inputs(tokenizer)
    reference = logits_of(peft_model, inputs)
    emit(Progress(stage="export", current=0, total=1, message="merging the adapter"))
    merged = peft_model.merge_and_unload(safe_merge=True)
    diff = max_abs_diff(reference, logits_of(merged, inputs))
    if not diff <= MERGE_TOLERANCE:  # also catches NaN
        raise ExportCheckFailed(
            f"the merged model's logits differ from base+adapter by {diff:.3g} "
            f"(allowed {MERGE_TOLERANCE:g}); nothing was written")
    notes = [f"merge checked in fp32 on {len(inputs)} chat prompts: largest logit difference "
             f"{diff:.2e} (allowed {MERGE_TOLERANCE:g})"]
    if info.spec.quantized_base:
        notes.append("QLoRA: the adapter was merged into the base reloaded in full precision, "
                     "never into 4-bit weights; it was trained against the 4-bit base, so "
                     "answers can differ slightly from the 4-bit model in chat")
    return Merged(merged, diff, notes)


def torch_dtype(name: str) -> Any:
    import torch

    if name not in DTYPES:
        raise UserError(f"--dtype {name!r} is not one of {', '.join(DTYPES)}", code="bad_input")
    return getattr(torch, name)


def generation_config(info: RunInfo, model: Any, tokenizer: Any, stops: list[int]) -> Any:
    """The base's generation config, stopping at EOS and at the chat's end-of-turn token."""
    from transformers import GenerationConfig

    try:
        config = GenerationConfig.from_pretrained(info.base_folder())
    except (OSError, ValueError):
        config = GenerationConfig.from_model_config(model.config)
    config.eos_token_id = stops[0] if len(stops) == 1 else list(stops)
    config.pad_token_id = tokenizer.pad_token_id
    if config.bos_token_id is None:
        config.bos_token_id = tokenizer.bos_token_id
    return config


def save_merged(model: Any, tokenizer: Any, folder: Path, dtype_name: str,
                gen_config: Any) -> None:
    """Write ``model`` cast to ``dtype_name`` (the in-memory model stays fp32)."""
    import json

    dtype = torch_dtype(dtype_name)
    state = {k: v.detach().to("cpu", dtype) for k, v in model.state_dict().items()}
    for key in _tied_keys(model):
        state.pop(key, None)  # tied to the embeddings: written once
    model.generation_config = gen_config
    model.save_pretrained(folder, state_dict=state, max_shard_size=MAX_SHARD_SIZE)
    config_file = folder / "config.json"  # save_pretrained records the in-memory dtype
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["dtype"] = dtype_name
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tokenizer.save_pretrained(folder)


def _tied_keys(model: Any) -> list[str]:
    if not getattr(model.config, "tie_word_embeddings", False):
        return []
    getter = getattr(model, "get_expanded_tied_weights_keys", None)
    tied = getter() if callable(getter) else getattr(model, "_tied_weights_keys", None)
    return list(tied or [])
