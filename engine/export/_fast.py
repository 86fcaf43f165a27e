"""The fast pair for chat: the adapter merged in memory, both models in the fast dtype.

``load_chat_pair`` folds a mergeable adapter into a copy of the base (export's checked
``merge_run``) and runs both models in the dtype the hardware computes fastest (bf16 where
native), so generation pays no adapter overhead and no autocast. Where that cannot be had (a
method that does not merge, QLoRA's 4-bit base, too little free memory) it is the plain
``load_pair``, with the reason in the pair's notes.
"""

from __future__ import annotations

from typing import Any

from engine.events import EventSink
from engine.export._merge import merge_run
from engine.export._run import LoadedPair, RunInfo, load_pair, load_tokenizer


def load_chat_pair(info: RunInfo, *, emit: EventSink | None = None, base_only: bool = False,
                   merge: bool = True) -> LoadedPair:
    """The pair chat answers with (``merge=False``: the adapter unmerged, as trained)."""
    from engine.export._run import pick_device
    from engine.models import remote_code_warning

    if not merge or base_only:
        return load_pair(info, emit=emit, base_only=base_only)
    device = pick_device(info)
    why_not = merge_in_memory_refusal(info, device)
    if why_not is not None:
        pair = load_pair(info, emit=emit, device=device)
        pair.notes.append(f"the adapter is not merged for chat: {why_not}")
        return pair
    warning = remote_code_warning(info.job)
    if warning is not None and emit is not None:
        emit(warning)
    return merged_pair(info, device, emit)


def inference_dtype(info: RunInfo, device: str) -> Any:
    """The weights' dtype for generation: bf16 where the hardware computes it natively (and the
    job did not ask for fp32), fp16 on a GPU without bf16, else fp32."""
    import torch

    from engine.models import resolve_precision

    precision = resolve_precision(info.job.training.precision, device)
    if precision.bf16:
        return torch.bfloat16
    if precision.fp16 and device == "cuda":
        return torch.float16
    return torch.float32


def _free_memory(device: str) -> int:
    import torch

    if device == "cuda":
        return int(torch.cuda.mem_get_info()[0])
    import psutil

    return int(psutil.virtual_memory().available)


def merge_in_memory_refusal(info: RunInfo, device: str) -> str | None:
    """Why the tuned model cannot be merged in memory for chat, or None when it can."""
    if info.is_full or info.job.task != "sft":
        return "only an adapter of a language model is merged"
    if not info.spec.mergeable:
        return info.spec.why_not_mergeable or f"method {info.method} cannot be merged"
    if info.spec.quantized_base:
        return ("QLoRA chats on its 4-bit base, as it was trained; export --merge gives the "
                "merged 16-bit model")
    import torch

    n = info.base_param_count()
    size = torch.tensor([], dtype=inference_dtype(info, device)).element_size()
    needed = n * 4 + n * size  # the fp32 merge, then the base beside the merged copy
    free = _free_memory(device)
    if needed > free:
        return (f"merging needs about {needed / 2**30:.1f} GiB and {device} has "
                f"{free / 2**30:.1f} GiB free")
    return None


def merged_pair(info: RunInfo, device: str, emit: EventSink | None) -> LoadedPair:
    """The adapter merged into an fp32 copy of the base and checked (export's ``merge_run``),
    then both the merged model and a plain base in :func:`inference_dtype`."""
    from engine.models import Precision, load_base

    sink: EventSink = emit or (lambda _e: None)
    merged = merge_run(info, load_tokenizer(info), device, sink)
    dtype = inference_dtype(info, device)
    tuned = merged.model.to(dtype).eval()
    name = str(dtype).removeprefix("torch.")
    base = load_base(info.job, info.base_folder(emit), device,
                     Precision(dtype, False, False, name, "chat"), quantized=False).eval()
    return LoadedPair(tuned, base, device, merged=True, dtype=name,
                      notes=[f"adapter merged in memory, weights in {name}", *merged.notes])
