"""Fold a trained adapter into its base in fp32, check it, and write a 16-bit model folder."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.events import EventSink, Progress
from engine.export._run import RunInfo

# Inputs the merge and GGUF checks run on (with the chat template, as a user would chat).
CHECK_PROMPTS = ("Hello! Who are you?", "Write a haiku about the sea.",
                 "What is 12 times 7? Answer briefly.")
# Merged vs base+adapter in fp32: the largest logit difference, as a share of the largest
# logit. Rounding alone leaves ~3e-6 of it on SmolLM2-135M; a wrong merge leaves far more
# (one of 210 LoRA modules dropped: 1.5e-3; the adapter doubled: 0.18). See docs/export.md.
MERGE_RELATIVE_TOLERANCE = 2e-5
DTYPES = ("bfloat16", "float16", "float32")
MAX_SHARD_SIZE = "2GB"
FP64_RECHECK_MAX_PARAMS = 4_000_000_000  # a float64 copy of a bigger model is too much RAM


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


def logits_of(model: Any, inputs: list[Any], dtype: Any = None) -> list[Any]:
    import torch

    dtype = dtype or torch.float32
    device = next(model.parameters()).device
    with torch.no_grad():
        return [model(input_ids=x.to(device)).logits.to(dtype).cpu() for x in inputs]


def max_abs_diff(a: list[Any], b: list[Any]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def logit_scale(logits: list[Any]) -> float:
    """The largest absolute logit: the scale that fp32 rounding errors grow with."""
    return max(float(x.abs().max()) for x in logits)


def merge_tolerance(reference: list[Any]) -> float:
    """The largest logit difference a correct merge may show, relative to the logits' scale."""
    return MERGE_RELATIVE_TOLERANCE * logit_scale(reference)


def top1_agreement(a: list[Any], b: list[Any]) -> float:
    """The share of positions where both give the same most likely next token."""
    same = sum(int((x.argmax(-1) == y.argmax(-1)).sum()) for x, y in zip(a, b, strict=True))
    return same / sum(x.shape[:-1].numel() for x in a)


def _load_fp32_base(info: RunInfo, device: str, emit: EventSink | None) -> Any:
    from engine.models import load_base, resolve_precision

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
        trust = {"trust_remote_code": True} if info.job.model.trust_remote_code else {}
        model = AutoModelForCausalLM.from_pretrained(info.result, dtype=torch.float32, **trust)
        return Merged(model.to(device).eval(), None, [])
    emit(Progress(stage="export", current=0, total=1,
                  message="loading the base model in fp32 and attaching the adapter"))
    peft_model = info.spec.load_trained(_load_fp32_base(info, device, emit), info.result).eval()
    inputs = chat_inputs(tokenizer)
    reference = logits_of(peft_model, inputs)
    emit(Progress(stage="export", current=0, total=1, message="merging the adapter"))
    merged = peft_model.merge_and_unload(safe_merge=True)
    got = logits_of(merged, inputs)
    diff = max_abs_diff(reference, got)
    allowed = merge_tolerance(reference)
    notes = [f"merge checked in fp32 on {len(inputs)} chat prompts: largest logit difference "
             f"{diff:.2e} (allowed {allowed:.2e}: {MERGE_RELATIVE_TOLERANCE:g} of the largest "
             f"logit, {logit_scale(reference):.3g}); next-token agreement "
             f"{top1_agreement(reference, got):.0%}"]
    if not diff <= allowed:  # also catches NaN
        notes = [_fp64_recheck(info, inputs, reference, got, diff, emit)]
    if info.spec.quantized_base:
        notes.append("QLoRA: the adapter was merged into the base reloaded in full precision, "
                     "never into 4-bit weights; it was trained against the 4-bit base, so "
                     "answers can differ slightly from the 4-bit model in chat")
    return Merged(merged, diff, notes)


def _fp64_recheck(info: RunInfo, inputs: list[Any], ref32: list[Any], got32: list[Any],
                  diff: float, emit: EventSink) -> str:
    """Tell fp32 rounding from a wrong merge: redo base+adapter in float64 (on the CPU).

    A deeper or larger model than SmolLM2 can drift further in fp32 than the relative
    tolerance. The merge still passes when the fp32 merged model is no further from the
    float64 base+adapter than fp32 base+adapter itself is (twice that, plus 1e-6 of the
    logits' scale). The "float64" forward still casts to fp32 inside (RMSNorm and softmax
    upcast to fp32 by design), so float64 merged vs base+adapter agrees only to fp32 level:
    it is reported, not bounded by an absolute 1e-6 that fails on other machines.
    """
    import torch

    allowed = merge_tolerance(ref32)
    if not math.isfinite(diff) or info.base_param_count() > FP64_RECHECK_MAX_PARAMS:
        raise ExportCheckFailed(
            f"the merged model's logits differ from base+adapter by {diff:.3g} "
            f"(allowed {allowed:.3g}); nothing was written")
    emit(Progress(stage="export", current=0, total=1,
                  message=f"fp32 difference {diff:.2e}: re-checking the merge in float64"))
    base = _load_fp32_base(info, "cpu", emit).double()
    peft64 = info.spec.load_trained(base, info.result).double().eval()
    ref64 = logits_of(peft64, inputs, torch.float64)
    exact = max_abs_diff(ref64, logits_of(peft64.merge_and_unload(), inputs, torch.float64))
    floor = max_abs_diff([r.double() for r in ref32], ref64)
    ours = max_abs_diff([g.double() for g in got32], ref64)
    del base, peft64
    if not ours <= 2 * floor + 1e-6 * logit_scale(ref32):
        raise ExportCheckFailed(
            f"the merged model's logits differ from base+adapter by {diff:.3g} in fp32 "
            f"(allowed {allowed:.3g}) and by {exact:.3g} in float64; the merged fp32 "
            f"model is {ours:.3g} from the float64 result, base+adapter {floor:.3g}; "
            "nothing was written")
    return (f"merge checked on {len(inputs)} chat prompts: fp32 logit difference {diff:.2e} "
            f"is rounding (fp32 base+adapter is {floor:.2e} from the float64 result, the "
            f"merged model {ours:.2e}); in float64 the merge agrees to {exact:.1e}")


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
    config = portable_config(config)
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tokenizer.save_pretrained(folder)
    _portable_tokenizer_config(folder / "tokenizer_config.json")


# Tokenizer classes transformers 5 writes that 4.x lacks -> the 4.x class that reads the same
# tokenizer.json (in 5, PreTrainedTokenizerFast is TokenizersBackend itself).
TOKENIZER_CLASSES_4X = {"TokenizersBackend": "PreTrainedTokenizerFast"}


def portable_config(config: dict[str, Any]) -> dict[str, Any]:
    """A config.json that transformers 4.4x and 5 read the same way.

    transformers 5 keeps the rope base and scaling only in ``rope_parameters``; 4.x reads
    the top-level ``rope_theta`` (default 10000) and ``rope_scaling``, so without them it
    silently computes another rope. On loading, 5 takes a non-null ``rope_scaling`` in place
    of ``rope_parameters`` and fills its ``rope_theta`` (and ``partial_rotary_factor``) from
    the top level (modeling_rope_utils.convert_rope_params_to_dict): written this way both
    layouts say the same. ``torch_dtype`` is the name 4.x before 4.56 reads the dtype under.
    """
    out = dict(config)
    if "dtype" in out:
        out["torch_dtype"] = out["dtype"]
    rope = out.get("rope_parameters")
    if not isinstance(rope, dict) or "rope_theta" not in rope:
        return out  # no rope, or one per layer type (no 4.x layout for it)
    out["rope_theta"] = rope["rope_theta"]
    if "partial_rotary_factor" in rope:
        out["partial_rotary_factor"] = rope["partial_rotary_factor"]
    scaling = {k: v for k, v in rope.items() if k not in ("rope_theta", "partial_rotary_factor")}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    out["rope_scaling"] = None if kind == "default" else scaling
    return out


def _portable_tokenizer_config(path: Path) -> None:
    import json

    if not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    name = config.get("tokenizer_class")
    if name in TOKENIZER_CLASSES_4X:
        config["tokenizer_class"] = TOKENIZER_CLASSES_4X[name]
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                        encoding="utf-8")


def _tied_keys(model: Any) -> list[str]:
    if not getattr(model.config, "tie_word_embeddings", False):
        return []
    getter = getattr(model, "get_expanded_tied_weights_keys", None)
    tied = getter() if callable(getter) else getattr(model, "_tied_weights_keys", None)
    return list(tied or [])
