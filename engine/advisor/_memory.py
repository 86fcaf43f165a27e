"""The memory model: peak memory of one training step, term by term.

Every term is derived from what PyTorch, transformers, peft and bitsandbytes keep alive during
a step (see docs/advisor.md for the derivation and its checks):

- weights: 16-bit (or fp32 on the CPU); under QLoRA the decoder-layer linear weights are NF4
  (with double quantization) while embeddings, norms and the head stay 16-bit (the engine's
  own k-bit preparation) -- or fp32 after peft's, which upcasts every non-4-bit parameter;
- gradients and optimizer states of the trainable parameters (fp32 adapters by default, or
  the compute dtype with ``method.adapter_dtype: compute``; 8-bit and paged 8-bit AdamW);
- activations saved for backward, per decoder layer, for the attention implementation, with
  and without gradient checkpointing and activation offloading; the loss: either the model's
  own (tokens x vocab fp32 log-softmax and the buffers of its backward, which dominate small
  models with big vocabularies) or the engine's chunked linear cross-entropy (engine._loss:
  one chunk of logits at a time, the hidden states' gradient kept until the backward);
- on CUDA, the caching allocator's slack and the CUDA context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from engine.advisor._counts import MethodCounts, ModelFacts

GIB = 1024**3
# The memory models this module implements: each method's spec names one (its
# ``memory_model``); the branches below are keyed by it, never by the method's name.
MEMORY_TERMS = ("full", "lora", "qlora", "dora", "adapter", "prefix", "ptuning_v2", "prompt",
                "ia3")
LORA_KINDS = ("lora", "qlora", "dora")
OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw_8bit")
BNB_MIN_8BIT_SIZE = 4096  # bitsandbytes keeps smaller tensors' states in 32 bits
BNB_BLOCK = 256  # 8-bit optimizer block size (one fp32 absmax per block and state)
CUDA_CONTEXT_GIB = (0.3, 0.45, 0.65)  # low / expected / high; not in torch's own counters
ALLOCATOR_SLACK = (1.02, 1.07, 1.20)  # reserved / allocated, for what a step allocates
# Weights are allocated once, tensor by tensor: the caching allocator rounds each request over
# 1 MiB up to a multiple of 2 MiB (kRoundLarge), so a weight wastes 0 / 1 / 2 MiB, never a
# share of its size; the churn of activations and loss buffers is what the slack above covers.
WEIGHT_ROUNDING_MIB = (0.0, 1.0, 2.0)
ACTIVATION_SPREAD = (0.85, 1.0, 1.25)
# Resident memory a CPU process grows by, per byte torch allocates during training (glibc
# keeps freed blocks, oneDNN scratch): measured 1.19-1.47 on small Llamas, see docs/advisor.md.
CPU_RSS_SLACK = (1.0, 1.25, 1.5)


@dataclass(frozen=True)
class Setup:
    """One training configuration to predict (the job file's knobs plus stack details)."""

    method: str = "lora"
    batch_size: int = 4
    seq_len: int = 512
    gradient_checkpointing: bool = False
    optimizer: str = "adamw"
    device: str = "cuda"  # cuda | cpu | mps
    dtype_bytes: int = 2  # compute dtype: 2 for bf16/fp16, 4 for fp32
    attn_implementation: str = "sdpa"
    r: int = 16
    lora_dropout: float = 0.05
    double_quant: bool = True
    num_virtual_tokens: int = 20
    bottleneck_size: int = 64
    adapter_dtype_bytes: int = 4  # fp32 adapters (peft's and the engine's default)
    kbit_upcast: bool = False  # peft's prepare_model_for_kbit_training (not the engine's) upcasts
    loss_chunks: int = 1  # >1: the loss is computed chunk by chunk (torchtune)
    full_master_fp32: bool = False  # full fine-tuning keeps fp32 weights (fp16 AMP)
    attention_mask: bool = True  # padded batches pass a mask (sdpa then repeats k and v)
    fused_loss: bool = False  # a compiled/fused cross-entropy keeps no fp32 log-softmax
    activation_offloading: bool = False  # saved activations wait in CPU memory (CUDA)
    linear_ce: bool = False  # engine._loss's chunked linear cross-entropy (or Liger's)
    # >0: the weights are dtype_bytes (fp32 on the CPU) but autocast computes in this many
    # bytes (bf16 autocast on a CPU with native bf16): activations are 16-bit and every
    # frozen linear saves its 16-bit weight copy for the backward pass.
    autocast_bytes: int = 0
    residual_bytes: int = 0  # the residual stream's bytes when not dtype_bytes (autocast: fp32)

    @property
    def kind(self) -> str:
        """The memory model of the method (see :data:`MEMORY_TERMS`)."""
        return memory_model(self.method)

    @property
    def tokens(self) -> int:
        extra = self.num_virtual_tokens if self.kind in ("prompt", "ptuning_v2") else 0
        return self.batch_size * (self.seq_len + extra)

    @property
    def residual(self) -> int:
        """Bytes of the residual stream (layer inputs, norm outputs)."""
        return self.residual_bytes or self.dtype_bytes

    @property
    def mask_bytes(self) -> int:
        """Bytes per element of a dropout mask: CUDA's fused kernel keeps a bool mask."""
        return 1 if self.device == "cuda" else self.dtype_bytes


@dataclass
class Estimate:
    """A prediction in bytes: ``parts`` (expected) and the low / expected / high peaks."""

    parts: dict[str, float]
    low: float
    expected: float
    high: float
    compared: float  # what a measurement is compared with (CUDA: reserved; CPU: dynamic)
    notes: list[str] = field(default_factory=list)

    def gib(self) -> dict[str, Any]:
        """The prediction in GiB, rounded for display and JSON."""
        return {"low_gb": _gib(self.low), "expected_gb": _gib(self.expected),
                "high_gb": _gib(self.high),
                "breakdown_gb": {k: _gib(v) for k, v in self.parts.items()}}


def _gib(n: float) -> float:
    return round(n / GIB, 3)


def memory_model(method: str) -> str:
    """The memory terms ``method`` follows, from its spec; an unknown one fails loudly."""
    from engine.methods import get_method

    kind = get_method(method).memory_model
    if kind not in MEMORY_TERMS:
        raise NotImplementedError(f"method {method!r} names memory model {kind!r}, which "
                                  f"engine/advisor/_memory.py does not implement")
    return kind


# --------------------------------------------------------------------------- parameters


def nf4_bytes_per_param(double_quant: bool) -> float:
    """Bytes per weight of bitsandbytes NF4 (block 64; double quant: 8-bit absmax)."""
    if double_quant:
        return 0.5 + 1 / 64 + 4 / (64 * 256)
    return 0.5 + 4 / 64


def trainable_bytes_per_param(s: Setup) -> int:
    """Bytes of one trainable parameter (and of its gradient)."""
    if s.kind == "full":
        return 4 if s.full_master_fp32 else s.dtype_bytes
    return s.adapter_dtype_bytes


def weight_bytes(facts: ModelFacts, counts: MethodCounts, s: Setup) -> float:
    """Bytes of the model's weights (frozen base plus trainable parameters)."""
    if s.kind == "full":
        return facts.total_params * trainable_bytes_per_param(s)
    adapters = counts.trainable * s.adapter_dtype_bytes
    if s.kind == "qlora":
        other_bytes = 4 if s.kbit_upcast else s.dtype_bytes
        return (facts.layer_linear_params * nf4_bytes_per_param(s.double_quant)
                + facts.other_params * other_bytes + adapters)
    return facts.total_params * s.dtype_bytes + adapters


def gradient_bytes(counts: MethodCounts, s: Setup) -> float:
    """Bytes of the gradients of the trainable parameters."""
    return counts.trainable * trainable_bytes_per_param(s)


def optimizer_bytes(counts: MethodCounts, s: Setup) -> float:
    """Bytes of the AdamW states (two per parameter) after the first optimizer step."""
    per = trainable_bytes_per_param(s)
    if s.optimizer == "adamw":
        return 2 * counts.trainable * per
    total = 0.0
    for n in counts.tensor_sizes:
        if n >= BNB_MIN_8BIT_SIZE:
            total += 2 * (n + 4 * math.ceil(n / BNB_BLOCK))
        else:
            total += 2 * n * 4
    return total


# --------------------------------------------------------------------------- activations


def _attention_bytes(f: ModelFacts, s: Setup) -> float:
    """Per-token bytes the attention core saves (q, k, v, output, softmax stats)."""
    a = s.dtype_bytes
    q = f.heads * f.head_dim
    kv = f.kv_heads * f.head_dim
    if s.attn_implementation == "eager":
        probs = f.heads * _key_len(s) * (4 + (a if a < 4 else 0))
        return a * 3 * q + probs  # q and the repeated k, v; fp32 softmax (+ its cast)
    if s.attention_mask or s.kind == "prefix":
        kv = q  # with a mask, transformers repeats k and v for grouped-query attention
    return a * (2 * q + 2 * kv) + 4 * f.heads  # q, k, v, output; fp32 log-sum-exp


def _key_len(s: Setup) -> int:
    virtual = s.kind in ("prefix", "prompt", "ptuning_v2")
    return s.seq_len + (s.num_virtual_tokens if virtual else 0)


def _mlp_bytes(f: ModelFacts, s: Setup) -> float:
    """Per-token bytes the MLP saves apart from the down projection's input."""
    gated = any(lf.name.endswith(("gate_proj", "gate_up_proj", "w3")) for lf in f.linears)
    return s.dtype_bytes * f.intermediate * (3 if gated else 1)


def _norm_bytes(s: Setup, hidden: int, trainable: bool) -> float:
    """RMSNorm saves an fp32 copy of its input and the rsqrt; plus normed x if trained."""
    return 4 * hidden + 4 + (s.dtype_bytes * hidden if trainable else 0)


def _group_dims(f: ModelFacts) -> dict[str, int]:
    dims: dict[str, int] = {}
    for lf in f.linears:
        dims.setdefault(lf.group, lf.in_features)
    return dims


def _shared_input_bytes(f: ModelFacts, s: Setup, groups: set[str]) -> float:
    """Inputs kept once per group of linears that read the same tensor."""
    dims = _group_dims(f)
    total = 0.0
    for group in groups:
        if group == "attn_out" and s.attn_implementation != "eager":
            continue  # the attention output is already saved by the attention kernel
        total += s.dtype_bytes * dims[group]
    return total


def _lora_bytes(f: ModelFacts, s: Setup, targets: list[Any]) -> float:
    """Per-token bytes the LoRA branches save for their own weight gradients."""
    a = s.dtype_bytes
    per_module_copy = s.lora_dropout > 0 or s.adapter_dtype_bytes != a
    if per_module_copy:
        def mask(lf: Any) -> int:  # CPU dropout's mask has its input's dtype
            if s.lora_dropout <= 0:
                return 0
            fed = lf.group in ("attn_in", "mlp_in") and s.device != "cuda"
            return s.residual if fed else s.mask_bytes
        total = sum(lf.in_features * (a + mask(lf)) for lf in targets)
    else:
        total = _shared_input_bytes(f, s, {lf.group for lf in targets})
    total += len(targets) * s.r * a  # lora_A's output, read by lora_B
    if s.kind == "dora":
        # the base and LoRA outputs, kept for the magnitude's gradient
        total += sum(2 * lf.out_features * a for lf in targets)
    return total


def layer_bytes_per_token(f: ModelFacts, s: Setup, targets: list[Any]) -> float:
    """Bytes one decoder layer saves for backward, per token, without checkpointing."""
    full = s.kind == "full"
    total = f.norms_per_layer * _norm_bytes(s, f.hidden, full)
    total += _attention_bytes(f, s) + _mlp_bytes(f, s)
    if full and s.residual != s.dtype_bytes:  # autocast casts the input once per linear
        total += _shared_input_bytes(f, s, {"attn_out", "mlp_out"}) + s.dtype_bytes * sum(
            lf.in_features for lf in f.linears if lf.group in ("attn_in", "mlp_in"))
    elif full:
        total += _shared_input_bytes(f, s, {lf.group for lf in f.linears})
    elif s.kind in LORA_KINDS:
        total += _lora_bytes(f, s, targets)
    elif s.kind == "ia3":
        total += s.dtype_bytes * (2 * f.kv_heads * f.head_dim + f.intermediate)
    elif s.kind == "adapter":
        total += 2 * s.dtype_bytes * (f.hidden + 2 * s.bottleneck_size)
    return total


def head_bytes_per_token(f: ModelFacts, s: Setup) -> float:
    """Final norm and the head's input (saved only when the head is trained)."""
    full = s.kind == "full"
    # the chunked linear cross-entropy saves nothing of its input (its gradient is made early)
    head_input = s.dtype_bytes * f.hidden if full and not s.linear_ce else 0
    return _norm_bytes(s, f.hidden, full) + head_input


def logits_saved_bytes(f: ModelFacts, s: Setup) -> float:
    """The loss keeps log-softmax of the logits in fp32: tokens x vocab x 4 bytes.

    A fused (compiled) loss keeps the 16-bit logits and recomputes the softmax instead. The
    chunked linear cross-entropy keeps no logits: it computes the gradient of the hidden
    states (and, when the head trains, the head's fp32 gradient) in its forward pass and
    holds them until the backward.
    """
    if s.linear_ce:
        head = f.vocab * f.hidden * 4 if s.kind == "full" else 0
        return s.tokens * f.hidden * s.dtype_bytes + head
    return s.tokens * f.vocab * (s.dtype_bytes if s.fused_loss else 4)


def linear_ce_chunk_rows(f: ModelFacts) -> int:
    """Rows of one chunk of the chunked linear cross-entropy (engine._loss decides)."""
    from engine._loss import chunk_rows

    return chunk_rows(f.vocab)


def logits_transient_bytes(f: ModelFacts, s: Setup) -> float:
    """Loss buffers beyond the saved log-softmax, at the worse of two moments.

    In the backward: the NLL gradient and the log-softmax gradient (fp32, per chunk). At
    the end of the forward: the 16-bit logits (all chunks) and one chunk's fp32 copy.
    """
    tv = s.tokens * f.vocab
    if s.linear_ce:
        # Forward: the labelled rows' copy of the hidden states plus one chunk's fp32 logits
        # (turned into their gradient in place) and its cast; backward: the hidden states'
        # gradient scaled by the incoming gradient and scattered back to every position.
        th = s.tokens * f.hidden * s.dtype_bytes
        chunk = min(s.tokens, linear_ce_chunk_rows(f)) * f.vocab * (4 + s.dtype_bytes)
        return max(th + chunk, 2 * th)
    n = max(1, s.loss_chunks)
    if s.fused_loss:  # one chunk's fp32 gradient and its 16-bit cast
        return (4 + s.dtype_bytes) * tv / n
    return max(8 * tv / n, s.dtype_bytes * tv * (n > 1) + 4 * tv / n)


def activation_bytes(f: ModelFacts, s: Setup, targets: list[Any]) -> float:
    """Bytes saved for backward by the decoder layers and the final norm (not the logits).

    With gradient checkpointing each layer keeps only its input; one layer's activations
    are rebuilt at a time during backward (counted in :func:`estimate` as a transient).
    """
    per_layer = layer_bytes_per_token(f, s, targets)
    if s.gradient_checkpointing:
        per_layer = s.residual * f.hidden
        if s.activation_offloading:  # only the layers in flight stay on the GPU
            per_layer *= min(1.0, 2 / f.layers)
    extra_kv = 0.0
    if s.kind == "prefix":  # the prefix's keys and values join every layer's attention
        extra_kv = s.batch_size * s.num_virtual_tokens * 2 * f.kv_heads * f.head_dim * 2
    per_token = f.layers * per_layer + head_bytes_per_token(f, s)
    if s.activation_offloading and not s.gradient_checkpointing:
        # every saved tensor moves: about two layers' worth are on the GPU at a time
        per_token = min(per_token, 2 * per_layer)
    return s.tokens * per_token + f.layers * extra_kv


def saved_for_backward(f: ModelFacts, s: Setup, targets: list[Any]) -> float:
    """Everything autograd keeps between forward and backward: activations and logits."""
    return activation_bytes(f, s, targets) + logits_saved_bytes(f, s)


def lora_targets(f: ModelFacts, target_modules: tuple[str, ...]) -> list[Any]:
    """The decoder-layer linears that LoRA wraps for ``target_modules``."""
    if "all-linear" in target_modules:
        return list(f.linears)
    return [lf for lf in f.linears if lf.name.rsplit(".", 1)[-1] in target_modules]


# --------------------------------------------------------------------------- the peak


def _recompute(f: ModelFacts, s: Setup, targets: list[Any]) -> float:
    """With checkpointing, the moment a layer is rebuilt in the backward: its activations
    plus the gradient flowing into it and the one being built (the loss's buffers are gone
    by then, so this and the loss's moment are the two candidates for the peak)."""
    if not s.gradient_checkpointing:
        return 0.0
    layer = s.tokens * layer_bytes_per_token(f, replace(s, gradient_checkpointing=False),
                                             targets)
    return layer + 2 * s.tokens * f.hidden * s.dtype_bytes


def _transients(f: ModelFacts, counts: MethodCounts, s: Setup, targets: list[Any]) -> float:
    """Short-lived buffers beyond what is saved, alive at either moment of the peak."""
    total = 0.0
    if s.kind == "qlora":  # each 4-bit weight is dequantized to 16 bits when used
        total += f.largest_linear * s.dtype_bytes
    if s.kind == "dora":  # the merged weight and its norm, in fp32, one layer at a time
        total += 2 * f.largest_linear * 4
    if s.kind == "full":  # the head's gradient appears while all activations are alive
        total += f.vocab * f.hidden * trainable_bytes_per_param(s)
    return total


def _step_transient(counts: MethodCounts, s: Setup) -> float:
    """The foreach AdamW step allocates one temporary the size of its states."""
    if s.optimizer == "adamw":
        return counts.trainable * trainable_bytes_per_param(s)
    return 0.0


@dataclass(frozen=True)
class Terms:
    """The terms of one prediction in bytes."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    logits: float
    transients: float
    step_transient: float
    loss_transient: float = 0.0  # the loss's buffers at the end of the forward / its backward
    recompute: float = 0.0  # one checkpointed layer rebuilt in the backward

    def peak(self, *, act_scale: float = 1.0, grads_overlap: bool = False) -> float:
        """Allocated bytes at the peak: the loss's moment, a rebuilt layer's, or the step."""
        backward = (self.activations * act_scale + self.transients
                    + max(self.logits + self.loss_transient, self.recompute)
                    + (self.gradients if grads_overlap else 0.0))
        step = self.gradients + self.step_transient
        return self.weights + self.optimizer + max(backward, step)


def autocast_copies(f: ModelFacts, s: Setup) -> tuple[float, float, float]:
    """(saved, recompute, loss) bytes of the 16-bit weight copies autocast makes.

    Under autocast an fp32 weight is cast to 16 bits at every use and a linear keeps that
    copy for its input's gradient: all decoder-layer linears without checkpointing, one layer
    (rebuilt) with it. The head's copy is saved by the model's own loss, or lives through the
    chunked loss's forward. QLoRA's 4-bit weights are dequantized, not cast (a transient).
    """
    if not s.autocast_bytes or s.autocast_bytes >= s.dtype_bytes:
        return 0.0, 0.0, 0.0
    a = s.autocast_bytes
    layers = 0.0 if s.kind == "qlora" else f.layer_linear_params * a
    head = f.vocab * f.hidden * a
    if s.gradient_checkpointing:
        saved, recompute = 0.0, layers / f.layers
    else:
        saved, recompute = layers, 0.0
    if not s.linear_ce:
        return saved + head, recompute, 0.0
    return saved, recompute, head


def terms(f: ModelFacts, counts: MethodCounts, s: Setup, target_modules: tuple[str, ...]
          = ("all-linear",)) -> Terms:
    """Every term of the prediction for one setup."""
    targets = lora_targets(f, target_modules)
    # activations and loss buffers are in the compute dtype, weights and states in theirs
    c = replace(s, dtype_bytes=s.autocast_bytes, residual_bytes=s.dtype_bytes) if (
        s.autocast_bytes) else s
    saved, rebuilt, head = autocast_copies(f, s)
    return Terms(
        weights=weight_bytes(f, counts, s), gradients=gradient_bytes(counts, s),
        optimizer=optimizer_bytes(counts, s),
        activations=activation_bytes(f, c, targets) + saved,
        logits=logits_saved_bytes(f, c), transients=_transients(f, counts, c, targets),
        step_transient=_step_transient(counts, s),
        loss_transient=logits_transient_bytes(f, c) + head,
        recompute=_recompute(f, c, targets) + rebuilt)


def estimate(f: ModelFacts, counts: MethodCounts, s: Setup, *,
             target_modules: tuple[str, ...] = ("all-linear",), correction: float = 1.0,
             cpu_baseline: float = 0.0) -> Estimate:
    """Low / expected / high peak memory of one training step.

    On CUDA the peak is what the GPU holds: torch's reserved memory (allocated bytes plus the
    caching allocator's slack) plus the CUDA context. On the CPU it is the process's peak
    resident memory: ``cpu_baseline`` (interpreter, libraries, data) plus the allocations.
    ``correction`` scales the prediction by a stored measured / predicted ratio.
    """
    t = terms(f, counts, s, target_modules)
    lo_a, ex_a, hi_a = ACTIVATION_SPREAD
    paged = t.optimizer if s.optimizer == "paged_adamw_8bit" else 0.0
    alloc = (t.peak(act_scale=lo_a) - paged, t.peak(act_scale=ex_a),
             t.peak(act_scale=hi_a, grads_overlap=True))
    parts = {"weights": t.weights, "gradients": t.gradients, "optimizer": t.optimizer,
             "activations": t.activations, "logits": t.logits + t.loss_transient,
             "recompute": t.recompute, "transients": t.transients}
    if s.device == "cuda":
        ctx = tuple(g * GIB for g in CUDA_CONTEXT_GIB)
        big = sum(1 for n in f.param_sizes if n * s.dtype_bytes > 2**20)
        rounding = [big * m * 2**20 for m in WEIGHT_ROUNDING_MIB]
        reserved = [(t.weights + r + (a - t.weights) * k) * correction
                    for a, k, r in zip(alloc, ALLOCATOR_SLACK, rounding, strict=True)]
        parts["allocator"] = rounding[1] + (alloc[1] - t.weights) * (ALLOCATOR_SLACK[1] - 1)
        parts["cuda_context"] = ctx[1]
        low, exp, high = (r + c for r, c in zip(reserved, ctx, strict=True))
        return Estimate(parts, low, exp, high, compared=reserved[1])
    # On the CPU the comparison leaves out what is resident before training starts (the
    # interpreter, the libraries and the loaded weights): the callback measures that.
    dynamic = [(a - t.weights) * k * correction
               for a, k in zip(alloc, CPU_RSS_SLACK, strict=True)]
    base = cpu_baseline + t.weights
    parts["allocator"] = (alloc[1] - t.weights) * (CPU_RSS_SLACK[1] - 1)
    parts["process_baseline"] = cpu_baseline
    return Estimate(parts, dynamic[0] + base, dynamic[1] + base, dynamic[2] + base,
                    compared=dynamic[1])
