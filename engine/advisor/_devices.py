"""The advice for N GPUs: memory per GPU, tokens/s, and the accumulation that keeps the batch.

Built on the one-GPU prediction (``advise()``'s per-method breakdown), with what data-parallel
training adds or removes on each GPU:

- **DDP** (``training.fsdp: off``): every GPU holds the whole model and its own micro-batch, so
  the one-GPU peak stays, plus DDP's gradient buckets: the reducer copies the trained
  parameters' gradients into flat buckets for the all-reduce (PyTorch DDP's
  ``gradient_as_bucket_view=False``, the Trainer's default), one more gradient-sized buffer.
- **FSDP** (``training.fsdp: full_shard``): weights, gradients and optimizer state are split
  N ways; a GPU briefly holds one whole decoder layer while it computes (and prefetches the
  next), so two layers' weights come back. Activations do not shrink: each GPU still runs its
  own micro-batch.

Tokens/s: each GPU processes its own micro-batches, so N GPUs do N times the work per step;
what is lost is the all-reduce of the trained gradients once per optimizer step (DDP skips
it while accumulating), 2 (N-1)/N of the gradient bytes over the link. DDP overlaps it with
the backward pass; the estimate here counts it as not overlapped, a floor. With a measured
one-GPU ``tokens_per_s`` the floor is a number; without it only the communication is given.
"""

from __future__ import annotations

from typing import Any

from engine.distributed import accumulation_for, effective_batch

# Effective all-reduce bandwidth, GB/s: PCIe 4.0 x16 moves ~25 GB/s one way; NCCL's ring over
# PCIe reaches about half of that between consumer cards (no peer-to-peer).
PCIE_GBPS = 12.0
GIB = 1024**3


def _per_gpu(entry: dict[str, Any], devices: int, fsdp: bool, layers: int) -> dict[str, float]:
    parts = entry.get("breakdown_gb", {})
    weights, grads, optim = (float(parts.get(k, 0.0)) for k in ("weights", "gradients",
                                                                 "optimizer"))
    expected = float(entry["expected_gb"])
    if not fsdp:
        buckets = grads
        return {"expected_gb": round(expected + buckets, 3), "ddp_buckets_gb": round(buckets, 3)}
    sharded = (weights + grads + optim) * (1 - 1 / devices)
    gathered = 2 * weights / max(layers, 1)  # the layer computing and the one prefetched
    return {"expected_gb": round(expected - sharded + gathered, 3),
            "sharded_away_gb": round(sharded, 3), "gathered_layers_gb": round(gathered, 3)}


def _throughput(grad_gb: float, devices: int, tokens_per_s: float | None, step_tokens: int,
                link_gbps: float) -> dict[str, Any]:
    moved = 2 * (devices - 1) / devices * grad_gb * GIB  # a ring all-reduce's bytes per GPU
    comm_s = moved / (link_gbps * 1e9)
    out: dict[str, Any] = {"allreduce_mb": round(moved / 1e6, 1),
                           "allreduce_ms": round(comm_s * 1e3, 2),
                           "ideal_tokens_per_s_factor": float(devices)}
    if tokens_per_s:
        step_s = step_tokens / tokens_per_s  # one GPU's time for its share of a step
        factor = devices * step_s / (step_s + comm_s)
        out.update(tokens_per_s_factor=round(factor, 3),
                   tokens_per_s=round(tokens_per_s * factor, 1))
    return out


def plan_devices(result: dict[str, Any], devices: int, *, fsdp: bool = False,
                 tokens_per_s: float | None = None, link_gbps: float = PCIE_GBPS,
                 layers: int | None = None) -> dict[str, Any]:
    """What ``devices`` GPUs change in ``advise()``'s ``result`` (plain data, GiB).

    ``tokens_per_s``: a measured one-GPU rate at the same settings (e.g. a run's step events);
    ``layers``: decoder layers (FSDP's gathered layer; read from the model when left out).
    """
    from engine.methods import get_method

    s = result["settings"]
    b, g, seq = int(s["batch_size"]), int(s["grad_accum"]), int(s["seq_len"])
    one = effective_batch(b, g, 1)
    keep = accumulation_for(one, b, devices)
    if fsdp and layers is None:
        from engine.advisor._counts import model_facts, resolve_model

        layers = model_facts(resolve_model(result["model"]["name"]).config).layers
    per_method: dict[str, Any] = {}
    for name, entry in result["methods"].items():
        if fsdp and get_method(name).quantized_base:
            per_method[name] = {"refused": "bitsandbytes' 4-bit weights cannot be sharded"}
            continue
        gpu = _per_gpu(entry, devices, fsdp, layers or 1)
        fits = (result.get("memory_gb") is not None
                and gpu["expected_gb"] * 1.10 <= float(result["memory_gb"]))
        grad_gb = float(entry.get("breakdown_gb", {}).get("gradients", 0.0))
        per_method[name] = {**gpu, "fits": fits,
                            **_throughput(grad_gb, devices, tokens_per_s,
                                          b * (keep or g) * seq, link_gbps)}
    return {
        "devices": devices, "fsdp": fsdp, "link_gbps": link_gbps,
        "batch": {"batch_size": b, "grad_accum": g, "effective_one_gpu": one,
                  "effective_unchanged": effective_batch(b, g, devices),
                  "grad_accum_to_keep": keep,
                  "note": (f"keep the effective batch {one}: grad_accum {g} → {keep}"
                           if keep is not None else
                           f"no whole grad_accum keeps {one} on {devices} GPUs at micro-batch "
                           f"{b}; the effective batch becomes {effective_batch(b, g, devices)}"
                           " (lower batch_size or accept the larger batch)")},
        "methods": per_method,
    }


def format_devices(plan: dict[str, Any]) -> str:
    """The plan as lines under the advisor's table."""
    n, b = plan["devices"], plan["batch"]
    how = "FSDP full_shard" if plan["fsdp"] else "DDP (each GPU holds the whole model)"
    lines = ["", f"On {n} GPUs, {how}; per GPU:",
             f"{'method':<11}{'expected':>10}  fits  all-reduce/step"
             + ("  tokens/s" if any("tokens_per_s" in m for m in plan["methods"].values())
                else ""), "-" * 50]
    for name, m in plan["methods"].items():
        if "refused" in m:
            lines.append(f"{name:<11}{'-':>10}  no    {m['refused']}")
            continue
        rate = f"  {m['tokens_per_s']:,.0f} ({m['tokens_per_s_factor']:.2f}x)" \
            if "tokens_per_s" in m else ""
        lines.append(f"{name:<11}{m['expected_gb']:>9.2f}G  {'yes' if m['fits'] else 'no ':<4}"
                     f"  {m['allreduce_mb']:>7.1f} MB {m['allreduce_ms']:>6.1f} ms{rate}")
    keep = b["grad_accum_to_keep"]
    lines += [f"Effective batch: {b['batch_size']} x {b['grad_accum']} x {n} = "
              f"{b['effective_unchanged']} (one GPU: {b['effective_one_gpu']}); {b['note']}.",
              f"All-reduce times at {plan['link_gbps']:g} GB/s, not overlapped (a floor on "
              f"tokens/s; ideal {n}x), at grad_accum {keep or b['grad_accum']}."]
    return "\n".join(lines)
