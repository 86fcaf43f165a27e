"""Predictions per method and the recommendation: what fits this GPU, and how.

:func:`advise` is what the CLI (``python -m engine advise``) and the GUI call. It predicts the
peak memory of every method at the requested settings, then searches for the best setup that
fits with at least 10% headroom: LoRA when it fits, QLoRA when only it does, smaller
micro-batches (with more gradient accumulation, keeping the effective batch), gradient
checkpointing, and last a shorter maximum sequence length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from engine.advisor import _corrections
from engine.advisor._counts import (
    MethodCounts,
    MethodOptions,
    ResolvedModel,
    lora_counts_analytic,
    method_counts,
    model_facts,
    resolve_model,
)
from engine.advisor._memory import GIB, OPTIMIZERS, Estimate, Setup, estimate
from engine.errors import UserError
from engine.methods import METHODS

HEADROOM = 1.10  # a setup fits when expected x 1.1 <= the memory available
CPU_LIBRARY_BASELINE = 0.55 * GIB  # interpreter + torch + transformers + peft, resident
QLORA_SLOWDOWN = "about 30% slower than LoRA (4-bit weights are de-quantized at every use)"
CKPT_SLOWDOWN = "about 30% slower (activations are recomputed in the backward pass)"
OFFLOAD_SLOWDOWN = ("saved activations wait in CPU memory, a little slower (copies over "
                    "PCIe each step)")
MIN_SEQ_LEN = 128
ADAPTER_DTYPES = ("fp32", "compute")  # method.adapter_dtype


@dataclass(frozen=True)
class Target:
    """The memory the advice is for: a GPU (detected or typed in) or the CPU's RAM."""

    device: str  # cuda | cpu
    memory_gb: float | None
    label: str
    dtype_bytes: int


def _target(vram_gb: float | None, gpus: list[dict[str, Any]]) -> Target:
    if vram_gb is not None:
        return Target("cuda", float(vram_gb), f"a GPU with {vram_gb:g} GiB", 2)
    if gpus:
        gpu = gpus[0]
        return Target("cuda", float(gpu["total_gb"]), f"{gpu['name']} ({gpu['total_gb']:.1f} GiB)",
                      2)
    from engine.telemetry import read_system_stats

    ram = read_system_stats()["ram_available_gb"]
    return Target("cpu", float(ram), f"the CPU ({ram:.1f} GiB RAM free, no NVIDIA GPU)", 4)


@dataclass(frozen=True)
class Request:
    """The settings asked for, before any search."""

    batch_size: int
    grad_accum: int
    seq_len: int
    optimizer: str
    gradient_checkpointing: bool | None
    activation_offloading: bool | None = None  # None: the search may switch it on (CUDA)

    def savers(self, device: str, ckpt: bool) -> list[tuple[str, bool]]:
        """(optimizer, offloading) in the order tried: as asked, then paged 8-bit AdamW
        (its states leave the GPU when it is full; near-free in speed), then offloading, then
        both. Offloading is tried only with checkpointing (then it moves one tensor per layer;
        without, every saved activation would cross PCIe each step)."""
        offload = bool(self.activation_offloading)
        optimizers = [self.optimizer] + (["paged_adamw_8bit"] if self.optimizer == "adamw"
                                         else [])
        out = [(o, offload) for o in optimizers]
        if self.activation_offloading is None and device == "cuda" and ckpt:
            out += [(o, True) for o in optimizers]
        return out

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.grad_accum


class Predictor:
    """Predicts one model's peak for any method and setup, with stored corrections."""

    def __init__(self, model: ResolvedModel, target: Target, opts: MethodOptions, *,
                 analytic_lora: bool = False, adapter_dtype: str = "fp32",
                 task: str = "sft") -> None:
        from engine._loss import plain_head_config

        self.model = model
        self.target = target
        self.opts = opts
        self.facts = model_facts(model.config)
        self.analytic_lora = analytic_lora
        self.adapter_dtype = adapter_dtype
        # The engine computes the loss with its chunked linear cross-entropy where exact.
        self.lean_loss = task == "sft" and plain_head_config(model.config)

    def counts(self, method: str) -> MethodCounts:
        if self.analytic_lora and method in ("lora", "qlora"):
            return lora_counts_analytic(self.facts, self.opts)
        return method_counts(self.model.config, method, self.opts)

    def setup(self, method: str, **kw: Any) -> Setup:
        from engine.methods import get_method

        o = self.opts
        dtype = self.target.dtype_bytes
        compute = self.adapter_dtype == "compute" and "adapter_dtype" in get_method(
            method).settings
        kw.setdefault("linear_ce", self.lean_loss and get_method(method).packs)
        kw.setdefault("adapter_dtype_bytes", dtype if compute else 4)
        if kw.get("activation_offloading") and self.target.device != "cuda":
            kw["activation_offloading"] = False  # the engine offloads on CUDA only
        return Setup(method=method, device=self.target.device, dtype_bytes=dtype, r=o.r,
                     lora_dropout=o.dropout, num_virtual_tokens=o.num_virtual_tokens,
                     bottleneck_size=o.bottleneck_size, **kw)

    def predict(self, s: Setup, *, corrected: bool = True) -> Estimate:
        factor = (_corrections.get_correction(self.model.key, s.method, s.device)
                  if corrected else 1.0)
        return estimate(self.facts, self.counts(s.method), s, target_modules=self.opts
                        .target_modules, correction=factor, cpu_baseline=CPU_LIBRARY_BASELINE)

    def fits(self, est: Estimate) -> bool:
        return self.target.memory_gb is not None and (
            est.expected * HEADROOM <= self.target.memory_gb * GIB)


def _method_entry(p: Predictor, method: str, s: Setup) -> dict[str, Any]:
    est = p.predict(s)
    counts = p.counts(method)
    entry = est.gib()
    entry.update(fits=p.fits(est), trainable_params=counts.trainable,
                 total_params=counts.total, share=round(counts.share, 6))
    return entry


# --------------------------------------------------------------------------- the search


def _candidates(req: Request) -> list[tuple[int, bool]]:
    """(micro-batch, checkpointing) in the order tried: fastest first."""
    ckpts = [False, True] if req.gradient_checkpointing is None else [req.gradient_checkpointing]
    out: list[tuple[int, bool]] = []
    for ckpt in ckpts:
        b = req.batch_size
        while b >= 1:
            out.append((b, ckpt))
            b //= 2
    out.sort(key=lambda bc: (bc[1], -bc[0]))  # no checkpointing first, then big batches
    return out


def _seq_lens(req: Request) -> list[int]:
    lens = [req.seq_len]
    s = req.seq_len
    while s // 2 >= MIN_SEQ_LEN:
        s //= 2
        lens.append(s)
    return lens


def _search(p: Predictor, methods: list[str], req: Request) -> dict[str, Any] | None:
    for seq in _seq_lens(req):
        for method in methods:
            for b, ckpt in _candidates(req):
                for optimizer, offload in req.savers(p.target.device, ckpt):
                    s = p.setup(method, batch_size=b, seq_len=seq, gradient_checkpointing=ckpt,
                                optimizer=optimizer, activation_offloading=offload)
                    est = p.predict(s)
                    if p.fits(est):
                        return {"method": method, "batch_size": b,
                                "grad_accum": max(1, math.ceil(req.effective_batch / b)),
                                "seq_len": seq, "gradient_checkpointing": ckpt,
                                "optimizer": optimizer,
                                "activation_offloading": s.activation_offloading,
                                "expected_gb": est.gib()["expected_gb"]}
    return None


def _reason(rec: dict[str, Any], req: Request, target: Target, methods: list[str]) -> str:
    parts = [f"{METHODS[rec['method']].label} fits {target.label} at about "
             f"{rec['expected_gb']:.1f} GiB"]
    if rec["method"] == "qlora" and "lora" in methods:
        parts.append(f"LoRA does not, so QLoRA's 4-bit base is used: {QLORA_SLOWDOWN}")
    if rec["batch_size"] < req.batch_size:
        parts.append(f"micro-batch {rec['batch_size']} x {rec['grad_accum']} accumulation "
                     f"steps keeps the effective batch of {req.effective_batch}")
    if rec["gradient_checkpointing"] and req.gradient_checkpointing is None:
        parts.append(f"gradient checkpointing is on: {CKPT_SLOWDOWN}")
    if rec["optimizer"] != req.optimizer:
        parts.append(f"{rec['optimizer']} keeps AdamW's states in 8 bits, paged out of the "
                     "GPU when it runs full")
    if rec["activation_offloading"] and req.activation_offloading is None:
        parts.append(f"activation offloading is on: {OFFLOAD_SLOWDOWN}")
    if rec["seq_len"] < req.seq_len:
        parts.append(f"only with sequences cut to {rec['seq_len']} tokens "
                     f"(asked: {req.seq_len})")
    return "; ".join(parts) + "."


def _wont_fit(p: Predictor, req: Request, methods: list[str]) -> dict[str, Any]:
    method = "qlora" if "qlora" in methods or len(methods) > 1 else methods[0]
    s = p.setup(method, batch_size=1, seq_len=min(req.seq_len, 512),
                gradient_checkpointing=True, optimizer="paged_adamw_8bit",
                activation_offloading=req.activation_offloading is not False)
    need = p.predict(s).expected * HEADROOM / GIB
    smaller = _smaller_catalog_model(p, req)
    what = f"; {smaller} would fit" if smaller else ""
    return {"method": None, "batch_size": None, "grad_accum": None, "seq_len": None,
            "gradient_checkpointing": None, "optimizer": None, "activation_offloading": None,
            "needs_gb": round(need, 2),
            "reason": (f"Won't fit {p.target.label}: even {METHODS[method].label} with "
                       f"micro-batch 1, {s.seq_len} tokens, checkpointing"
                       f"{', offloading' if s.activation_offloading else ''} and paged 8-bit "
                       f"AdamW needs about {need:.1f} GiB with 10% headroom{what}.")}


def _smaller_catalog_model(p: Predictor, req: Request) -> str | None:
    """The biggest catalog model that fits with QLoRA at micro-batch 1 and checkpointing."""
    from engine import catalog

    entries = sorted(catalog.list_models(), key=lambda e: -e["params"])
    for entry in entries:
        if entry["params"] >= p.facts.total_params:
            continue
        other = Predictor(resolve_model(entry["name"]), p.target, p.opts, analytic_lora=True)
        s = other.setup("qlora", batch_size=1, seq_len=min(req.seq_len, 512),
                        gradient_checkpointing=True, optimizer="paged_adamw_8bit",
                        activation_offloading=req.activation_offloading is not False)
        if other.fits(other.predict(s)):
            return f"{entry['display_name']} ({entry['name']})"
    return None


def recommend(p: Predictor, req: Request, method: str | None) -> dict[str, Any]:
    """The best setup that fits with 10% headroom, or what would fit, with one reason."""
    if p.target.memory_gb is None:
        return {"method": None, "reason": "No memory amount to advise for."}
    methods = [method] if method else ["lora", "qlora"]
    rec = _search(p, methods, req)
    if rec is None:
        return _wont_fit(p, req, methods)
    rec["reason"] = _reason(rec, req, p.target, methods)
    return rec


# --------------------------------------------------------------------------- public API


def _check(value: float, name: str, lo: float) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or value < lo \
            or not math.isfinite(value):
        raise UserError(f"{name} must be a number >= {lo:g}, got {value!r}")


def _check_inputs(vram_gb: float | None, method: str | None, seq_len: int, batch_size: int,
                  grad_accum: int, optimizer: str, adapter_dtype: str = "fp32") -> None:
    if adapter_dtype not in ADAPTER_DTYPES:
        raise UserError(f"unknown adapter dtype {adapter_dtype!r}",
                        f"one of: {', '.join(ADAPTER_DTYPES)}")
    if vram_gb is not None:
        _check(vram_gb, "vram_gb", 0.1)
    if method is not None and method not in METHODS:
        raise UserError(f"unknown method {method!r}", f"one of: {', '.join(METHODS)}")
    if optimizer not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {optimizer!r}", f"one of: {', '.join(OPTIMIZERS)}")
    _check(seq_len, "seq_len", 8)
    _check(batch_size, "batch_size", 1)
    _check(grad_accum, "grad_accum", 1)


def advise(model_source: str, *, vram_gb: float | None = None, method: str | None = None,
           seq_len: int = 512, batch_size: int = 4, grad_accum: int = 1,
           optimizer: str = "adamw", gradient_checkpointing: bool | None = None,
           activation_offloading: bool | None = None, adapter_dtype: str = "fp32",
           **method_kwargs: Any) -> dict[str, Any]:
    """Predicted peak memory per method and a recommendation, as plain data (sizes in GiB).

    ``vram_gb`` overrides the detected GPU; with neither, the advice is for the CPU's RAM.
    ``gradient_checkpointing=None`` lets the recommendation switch it on when needed (the
    per-method table then assumes it off); ``activation_offloading=None`` likewise (CUDA
    only). ``adapter_dtype`` is ``method.adapter_dtype`` (fp32 or compute). ``method_kwargs``
    are LoRA/prompt options (r, dropout, target_modules, num_virtual_tokens, ...).
    """
    _check_inputs(vram_gb, method, seq_len, batch_size, grad_accum, optimizer, adapter_dtype)
    from engine.telemetry import gpu_status

    status = gpu_status()
    target = _target(vram_gb, status["gpus"])
    model = resolve_model(model_source)
    p = Predictor(model, target, MethodOptions.from_kwargs(**method_kwargs),
                  adapter_dtype=adapter_dtype)
    req = Request(int(batch_size), int(grad_accum), int(seq_len), optimizer,
                  gradient_checkpointing, activation_offloading)
    base = {"batch_size": req.batch_size, "seq_len": req.seq_len, "optimizer": optimizer,
            "gradient_checkpointing": bool(gradient_checkpointing),
            "activation_offloading": bool(activation_offloading) and target.device == "cuda"}
    methods = {m: _method_entry(p, m, p.setup(m, **base)) for m in METHODS}
    return {
        "model": {**model.info, "total_params": p.facts.total_params},
        "vram_gb": target.memory_gb if target.device == "cuda" else None,
        "device": target.device, "memory_gb": target.memory_gb, "target": target.label,
        "gpus": status["gpus"], "gpu_reason": status["reason"],
        "settings": {**base, "grad_accum": req.grad_accum, "headroom": HEADROOM,
                     "adapter_dtype": adapter_dtype, "chunked_loss": p.lean_loss},
        "methods": methods,
        "recommendation": recommend(p, req, method),
    }


def method_param_counts(model_source: str, method: str, **method_kwargs: Any) -> dict[str, Any]:
    """Exact trainable and total parameters of ``method`` on a model (meta device, offline)."""
    model = resolve_model(model_source)
    counts = method_counts(model.config, method, MethodOptions.from_kwargs(**method_kwargs))
    return {"trainable": counts.trainable, "total": counts.total, "share": counts.share}


def predict_job_peak(job: Any, device: str, *, corrected: bool = True,
                     batch_size: int | None = None, seq_len: int | None = None,
                     activation_offloading: bool | None = None) -> Estimate:
    """The prediction for a job file's settings on ``device`` (used by the run's self-check).

    ``batch_size`` and ``seq_len`` override the job's (the batch shape actually seen);
    ``activation_offloading`` says whether the run offloads (default: the job's ``on``).
    """
    m, t = job.method, job.training
    model = resolve_model(job.model.source)
    dtype = 4 if device != "cuda" or t.precision == "fp32" else 2
    autocast = 2 if device == "cpu" and _cpu_autocast(t.precision) else 0
    target = Target(device, None, device, dtype)
    opts = MethodOptions(r=m.r, alpha=m.alpha, dropout=m.dropout,
                         target_modules=tuple(m.target_modules),
                         bottleneck_size=m.bottleneck_size,
                         num_virtual_tokens=m.num_virtual_tokens,
                         prefix_projection=m.prefix_projection)
    p = Predictor(model, target, opts, adapter_dtype=m.adapter_dtype, task=job.task)
    if activation_offloading is None:
        activation_offloading = t.activation_offloading == "on"
    s = replace(p.setup(m.name, batch_size=batch_size or t.batch_size,
                        seq_len=seq_len or job.dataset.max_length,
                        gradient_checkpointing=t.gradient_checkpointing, optimizer=t.optimizer,
                        attn_implementation=job.model.attn_implementation,
                        activation_offloading=activation_offloading),
                double_quant=m.double_quant, full_master_fp32=t.precision == "fp16",
                autocast_bytes=autocast)
    return p.predict(s, corrected=corrected)


def _cpu_autocast(precision: str) -> bool:
    """Whether ``training.precision`` runs bf16 autocast on this CPU (engine.models decides)."""
    from engine.models import resolve_precision

    try:
        return bool(resolve_precision(precision, "cpu").bf16)
    except UserError:  # refused on this CPU: the run will not start either
        return False


def offload_needed(job: Any) -> bool | None:
    """For ``activation_offloading: auto`` on CUDA: True when the job fits this GPU (with 10%
    headroom) only with offloading; None when the advisor cannot tell (e.g. unknown model)."""
    import torch

    try:
        total = torch.cuda.get_device_properties(0).total_memory
        without = predict_job_peak(job, "cuda", activation_offloading=False).expected
        with_it = predict_job_peak(job, "cuda", activation_offloading=True).expected
    except (UserError, NotImplementedError, RuntimeError):
        return None
    return without * HEADROOM > total >= with_it * HEADROOM

