"""The resource advisor: which fine-tuning method fits this GPU, and with which settings.

It predicts the peak memory of a training step from the model's architecture (built on the
meta device, so nothing is downloaded or allocated), the method, the precision, the batch,
the sequence length, gradient checkpointing and the optimizer; then recommends the best setup
that fits with 10% headroom. A training run checks the prediction against its measured peak
(:class:`MemoryCheckCallback`) and stores a correction for the next prediction.
"""

from engine.advisor._corrections import correction_key, corrections_path, get_correction
from engine.advisor._counts import (
    MethodCounts,
    MethodOptions,
    ModelFacts,
    method_counts,
    model_facts,
    resolve_model,
)
from engine.advisor._memory import (
    MEMORY_TERMS,
    Estimate,
    Setup,
    estimate,
    memory_model,
    nf4_bytes_per_param,
)
from engine.advisor._recommend import (
    advise,
    method_param_counts,
    offload_needed,
    predict_job_peak,
)

__all__ = [
    "MEMORY_TERMS",
    "Estimate",
    "MemoryCheckCallback",
    "MethodCounts",
    "MethodOptions",
    "ModelFacts",
    "Setup",
    "advise",
    "correction_key",
    "corrections_path",
    "estimate",
    "get_correction",
    "memory_model",
    "method_counts",
    "method_param_counts",
    "model_facts",
    "nf4_bytes_per_param",
    "offload_needed",
    "predict_job_peak",
    "resolve_model",
]


def __getattr__(name: str) -> object:
    # The callback imports transformers' Trainer machinery: load it only when asked for.
    if name == "MemoryCheckCallback":
        from engine.advisor._callback import MemoryCheckCallback

        return MemoryCheckCallback
    raise AttributeError(name)
