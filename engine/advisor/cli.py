"""``python -m engine advise``: predicted peak memory per method and a recommendation."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from engine.errors import UserError

CHECKPOINTING = {"auto": None, "on": True, "off": False}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``advise`` verb's options (numbers are checked in :func:`run`, exit 2 if bad)."""
    parser.add_argument("--model", required=True, metavar="SRC",
                        help="catalog name, hub id, local folder or .gguf file")
    parser.add_argument("--method", default=None,
                        help="advise for this method only (default: LoRA, else QLoRA)")
    parser.add_argument("--vram-gb", default=None, metavar="X",
                        help="GPU memory in GiB (default: the detected GPU, else the CPU's RAM)")
    parser.add_argument("--seq-len", default="512", metavar="N", help="max sequence length")
    parser.add_argument("--batch-size", default="4", metavar="B", help="micro-batch size")
    parser.add_argument("--grad-accum", default="1", metavar="G",
                        help="gradient accumulation steps (effective batch = B x G)")
    parser.add_argument("--optimizer", default="adamw",
                        help="adamw, adamw_8bit or paged_adamw_8bit")
    parser.add_argument("--gradient-checkpointing", default="auto", choices=tuple(CHECKPOINTING),
                        help="auto lets the advice switch it on when needed")
    parser.add_argument("--activation-offloading", default="auto", choices=tuple(CHECKPOINTING),
                        help="CUDA: saved activations in CPU memory; auto lets the advice "
                        "switch it on when needed")
    parser.add_argument("--adapter-dtype", default="fp32", choices=("fp32", "compute"),
                        help="LoRA/DoRA/QLoRA trained weights in fp32 or the compute dtype")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--devices", default="1", metavar="N",
                        help="GPUs to train on: memory per GPU, tokens/s and the accumulation "
                             "that keeps the effective batch (engine.advisor._devices)")
    parser.add_argument("--fsdp", action="store_true", help="with --devices: FSDP full_shard")


def _number(text: str | None, name: str, *, integer: bool, lo: float) -> Any:
    if text is None:
        return None
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise UserError(f"{name} must be {kind}, got {text!r}") from None
    if not math.isfinite(value) or value < lo:
        raise UserError(f"{name} must be >= {lo:g}, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    """Print the advice (a table, or JSON with ``--json``); return 0."""
    from engine.advisor._recommend import advise
    from engine.cli import quiet_libraries

    quiet_libraries()  # e.g. bitsandbytes' "pip install kernels" line on import

    result = advise(
        args.model, method=args.method,
        vram_gb=_number(args.vram_gb, "--vram-gb", integer=False, lo=0.1),
        seq_len=_number(args.seq_len, "--seq-len", integer=True, lo=8),
        batch_size=_number(args.batch_size, "--batch-size", integer=True, lo=1),
        grad_accum=_number(args.grad_accum, "--grad-accum", integer=True, lo=1),
        optimizer=args.optimizer,
        gradient_checkpointing=CHECKPOINTING[args.gradient_checkpointing],
        activation_offloading=CHECKPOINTING[args.activation_offloading],
        adapter_dtype=args.adapter_dtype)
    devices = _number(args.devices, "--devices", integer=True, lo=1)
    if devices > 1:
        from engine.advisor._devices import format_devices, plan_devices

        result["multi_gpu"] = plan_devices(result, devices, fsdp=args.fsdp)
    table = format_table(result) + (format_devices(result["multi_gpu"]) if devices > 1 else "")
    print(json.dumps(result, indent=2) if args.json else table)
    return 0


def format_table(result: dict[str, Any]) -> str:
    """The advice as a readable table plus the recommendation."""
    model, s = result["model"], result["settings"]
    lines = [f"Model: {model.get('display_name', model['name'])} "
             f"({model['total_params'] / 1e9:.2f}B parameters)",
             f"For: {result['target']}",
             f"Settings: micro-batch {s['batch_size']} x {s['seq_len']} tokens, "
             f"{s['optimizer']}, checkpointing {'on' if s['gradient_checkpointing'] else 'off'}"
             f", offloading {'on' if s.get('activation_offloading') else 'off'}, "
             f"{s.get('adapter_dtype', 'fp32')} adapters"
             f"{', chunked loss' if s.get('chunked_loss') else ''}",
             "", f"{'method':<11}{'trained':>9}{'low':>9}{'expected':>10}{'high':>9}  fits",
             "-" * 54]
    for name, m in result["methods"].items():
        fits = "yes" if m["fits"] else "no"
        lines.append(f"{name:<11}{m['share'] * 100:>8.3f}%{m['low_gb']:>8.2f}G"
                     f"{m['expected_gb']:>9.2f}G{m['high_gb']:>8.2f}G  {fits}")
    rec = result["recommendation"]
    lines += ["", "Sizes in GiB; 'fits' means expected + 10% headroom fits.", ""]
    if rec.get("method"):
        lines.append(f"Recommended: {rec['method']}, micro-batch {rec['batch_size']} x "
                     f"{rec['grad_accum']} accumulation, {rec['seq_len']} tokens, "
                     f"checkpointing {'on' if rec['gradient_checkpointing'] else 'off'}, "
                     f"{rec['optimizer']}"
                     f"{', activation offloading' if rec.get('activation_offloading') else ''}")
    lines.append(rec["reason"])
    return "\n".join(lines)
