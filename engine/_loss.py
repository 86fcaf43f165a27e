"""Causal-LM cross-entropy that never holds the whole batch's fp32 logits.

The model's own loss (transformers' ``ForCausalLMLoss``) builds ``lm_head(hidden)`` for every
token, upcasts it to fp32 and keeps it (and its gradient) alive through the backward pass:
12 bytes × tokens × vocabulary at the peak, which for a 128k vocabulary is more than the rest
of a LoRA step. :func:`causal_lm_loss` computes the same number from the decoder's hidden
states instead: only the tokens that carry a label, a chunk of rows at a time, each chunk's
logits gone before the next is made. Like Liger's fused linear cross-entropy, the gradients
are computed chunk by chunk in the forward pass (nothing is recomputed), so at most one chunk
of fp32 logits is alive at once, forward or backward.

It is exact to ``ForCausalLMLoss``: the same shift by one, ``ignore_index`` -100, and the
same normalisation (the sum over the batch divided by the Trainer's ``num_items_in_batch``,
or the mean when there is none); only the order of the fp32 sums differs.

On CUDA, liger-kernel's ``LigerFusedLinearCrossEntropyLoss`` (an optional extra) is used when
it is installed: :func:`liger_fused_ce` is the one place that import is guarded.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

IGNORE_INDEX = -100
# A chunk's fp32 logits hold at most this many values (64 MiB) ...
CHUNK_VALUES = 1 << 24
# ... but never fewer rows than this, so that the head's matmul stays efficient.
MIN_CHUNK_ROWS = 32
# Architectures whose causal-LM forward is exactly ``lm_head(model(...).last_hidden_state)``
# followed by ``ForCausalLMLoss`` in transformers 5 (no logit scaling or soft-capping).
PLAIN_HEAD_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "olmo",
                              "olmo2", "smollm3", "starcoder2", "glm"})
# Config keys that change the logits after the head: any of them set means "not plain".
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling",
                     "lm_head_multiplier", "output_multiplier_scale")


def chunk_rows(vocab_size: int) -> int:
    return max(MIN_CHUNK_ROWS, CHUNK_VALUES // max(vocab_size, 1))


@functools.cache
def liger_fused_ce() -> Any:
    """liger-kernel's fused linear cross-entropy class, or None where it is not installed."""
    if importlib.util.find_spec("liger_kernel") is None:
        return None
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:  # installed but broken (e.g. no triton): the chunked loss still works
        return None
    return LigerFusedLinearCrossEntropyLoss


def _compute_dtype(hidden: Any, weight: Any) -> Any:
    """The dtype ``F.linear(hidden, weight)`` would run in here (autocast's, when it is on)."""
    import torch

    kind = hidden.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return weight.dtype


def _chunked_ce_class() -> type:
    import torch

    class ChunkedLinearCrossEntropy(torch.autograd.Function):
        """sum_i CE(hidden_i @ weight.T, target_i) · scale, gradients made chunk by chunk."""

        @staticmethod
        def forward(ctx: Any, hidden: Any, weight: Any, target: Any, scale: Any,
                    rows: int, dtype: Any) -> Any:
            need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
            w = weight.to(dtype)
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_h = torch.empty_like(hidden) if need_h else None
            grad_w = torch.zeros(weight.shape, dtype=torch.float32,
                                 device=weight.device) if need_w else None
            for start in range(0, hidden.shape[0], rows):
                h = hidden[start:start + rows].to(dtype)
                t = target[start:start + rows]
                logits = (h @ w.T).float()
                lse = torch.logsumexp(logits, dim=-1)
                total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
                if not (need_h or need_w):
                    continue
                # d CE / d logits = softmax - onehot, made in place in the chunk's buffer
                grad = logits.sub_(lse[:, None]).exp_()
                grad[torch.arange(t.shape[0], device=t.device), t] -= 1.0
                grad = (grad * scale).to(dtype)
                if grad_h is not None:
                    grad_h[start:start + rows] = (grad @ w).to(hidden.dtype)
                if grad_w is not None:
                    grad_w += (grad.T @ h).float()
                del logits, grad
            ctx.grads = (grad_h, None if grad_w is None else grad_w.to(weight.dtype))
            return total * scale

        @staticmethod
        def backward(ctx: Any, grad_out: Any) -> tuple[Any, ...]:
            grad_h, grad_w = ctx.grads
            ctx.grads = None
            if grad_h is not None:
                grad_h = grad_h * grad_out.to(grad_h.dtype)
            if grad_w is not None:
                grad_w = grad_w * grad_out.to(grad_w.dtype)
            return grad_h, grad_w, None, None, None, None

    return ChunkedLinearCrossEntropy


_CHUNKED: type | None = None


def causal_lm_loss(hidden: Any, weight: Any, labels: Any, num_items_in_batch: Any = None,
                   *, rows: int | None = None, use_liger: bool = True) -> Any:
    """``ForCausalLMLoss(hidden @ weight.T, labels, num_items_in_batch)`` without the logits.

    ``hidden`` is the decoder's last hidden state (batch, seq, dim), ``weight`` the head's
    (vocab, dim) and ``labels`` the unshifted labels (batch, seq). ``rows`` overrides the chunk
    size (tests). The result and the gradients of ``hidden`` and ``weight`` equal the unfused
    loss's within fp32 rounding.
    """
    import torch

    global _CHUNKED
    target = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    target = target.reshape(-1).to(hidden.device)
    keep = target != IGNORE_INDEX
    # Rows without a label cost nothing: neither a logit nor a gradient is made for them.
    flat = hidden.reshape(-1, hidden.shape[-1])[keep]
    target = target[keep]
    if num_items_in_batch is None:
        scale = 1.0 / target.shape[0] if target.shape[0] else float("nan")  # the mean's 0/0
    else:
        scale = (1.0 / num_items_in_batch.to(hidden.device).float()
                 if torch.is_tensor(num_items_in_batch) else 1.0 / num_items_in_batch)
    liger = liger_fused_ce() if use_liger and hidden.device.type == "cuda" else None
    if liger is not None:
        return liger(ignore_index=IGNORE_INDEX, reduction="sum")(weight, flat, target) * scale
    if _CHUNKED is None:
        _CHUNKED = _chunked_ce_class()
    dtype = _compute_dtype(hidden, weight)
    return _CHUNKED.apply(flat, weight, target, scale, rows or chunk_rows(weight.shape[0]),
                          dtype)


def plain_head(model: Any) -> tuple[Any, Any] | None:
    """(decoder, lm_head) of a causal LM whose logits are ``lm_head(decoder(...)[0])``.

    ``model`` may be a PeftModel (its base model is looked at). None for anything else
    (another task, a model with logit scaling, an adapted or biased head, prompt learning):
    the caller then keeps the model's own loss.
    """
    from torch import nn

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    decoder, head = getattr(base, "model", None), getattr(base, "lm_head", None)
    if (not plain_head_config(config)
            or not isinstance(decoder, nn.Module) or type(head) is not nn.Linear
            or head.bias is not None
            or getattr(base, "loss_type", "ForCausalLM") != "ForCausalLM"):
        return None
    return decoder, head


def plain_head_config(config: Any) -> bool:
    """Whether a model of ``config`` computes its logits plainly (the advisor asks too)."""
    if config is None or getattr(config, "model_type", None) not in PLAIN_HEAD_TYPES:
        return False
    return all(getattr(config, key, None) in (None, 1, 1.0) for key in _LOGIT_TRANSFORMS)


def trainer_loss(trainer: Any, model: Any, inputs: dict[str, Any],
                 num_items_in_batch: Any) -> Any:
    """What ``Trainer.compute_loss`` returns for a plain causal LM, or None to use it instead.

    The decoder runs under the Trainer's autocast (accelerate applies it around the model's
    own forward, which this path does not call); the loss is normalised and scaled exactly as
    ``Trainer.compute_loss`` does with the model's loss.
    """
    if ("labels" not in inputs or trainer.label_smoother is not None
            or trainer.compute_loss_func is not None
            # DDP and friends sync gradients from their own forward: go through it
            or trainer.accelerator.unwrap_model(model) is not model):
        return None
    parts = plain_head(model)
    if parts is None:
        return None
    decoder, head = parts
    rest = {k: v for k, v in inputs.items() if k != "labels"}
    counted = num_items_in_batch if trainer.model_accepts_loss_kwargs else None
    with trainer.accelerator.autocast():
        hidden = decoder(**rest).last_hidden_state
        loss = causal_lm_loss(hidden, head.weight, inputs["labels"], counted)
    if trainer.args.average_tokens_across_devices and counted is not None:
        loss = loss * (trainer.accelerator.num_processes // trainer.get_tp_size())
    return loss
