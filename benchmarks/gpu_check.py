"""GPU check: measured memory against the advisor's prediction, real tokens/s and MFU.

    python benchmarks/gpu_check.py [--steps 6] [--seq-len 2048] [--json gpu_check.json]

For a 0.5B and a 1.5B shape (Qwen2.5's configurations, built from config with random
weights: no model hub is needed), LoRA and QLoRA, batch 1 × ``--seq-len`` tokens, bf16: a few
optimizer steps of the Trainer's own loop with peft LoRA r16 on all linear layers. Per case:
``torch.cuda.max_memory_reserved()`` after the steps, the advisor's prediction for the same job
(``engine.advisor.predict_job_peak``, uncorrected), the real tokens/s over steps 2..N and the
MFU, taking 4·N FLOPs per token for a frozen base (forward 2·N, backward through the
activations 2·N, no weight gradients) against the GPU's dense bf16 peak (:data:`PEAK_TFLOPS`).
Without CUDA it exits 2 with one line saying so. Whole run: a few minutes on one H100/H200.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s, by a substring of the CUDA device name.
# Sources: NVIDIA data sheets (H100/H200 SXM 989, H100 PCIe 756, A100 312, L40S 362, 4090 165,
# 3090 71, A10 125, L4 121, T4 65 fp16).
PEAK_TFLOPS: dict[str, float] = {
    "H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0,
    "RTX 4090": 165.0, "RTX 3090": 71.0, "A10": 125.0, "L4": 121.0, "T4": 65.0,
}

# Qwen2.5 0.5B and 1.5B (their published config.json values).
SHAPES: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b": {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864,
                     "num_hidden_layers": 24, "num_attention_heads": 14,
                     "num_key_value_heads": 2, "vocab_size": 151936,
                     "tie_word_embeddings": True, "max_position_embeddings": 32768,
                     "rope_theta": 1000000.0, "rms_norm_eps": 1e-6},
    "qwen2.5-1.5b": {"model_type": "qwen2", "hidden_size": 1536, "intermediate_size": 8960,
                     "num_hidden_layers": 28, "num_attention_heads": 12,
                     "num_key_value_heads": 2, "vocab_size": 151936,
                     "tie_word_embeddings": True, "max_position_embeddings": 32768,
                     "rope_theta": 1000000.0, "rms_norm_eps": 1e-6},
}
METHODS = ("lora", "qlora")


def param_count(shape: dict[str, Any]) -> int:
    """Parameters of a Qwen2/Llama decoder of this shape (q/k/v biases as Qwen2 has them)."""
    h, i, n = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    heads, kv = shape["num_attention_heads"], shape["num_key_value_heads"]
    head_dim = h // heads
    bias = shape["model_type"] == "qwen2"
    attn = h * h + 2 * h * kv * head_dim + h * h  # q, k, v, o
    if bias:
        attn += h + 2 * kv * head_dim
    mlp = 3 * h * i
    norms = 2 * h
    embed = shape["vocab_size"] * h
    head = 0 if shape.get("tie_word_embeddings") else embed
    return n * (attn + mlp + norms) + embed + head + h


def flops_per_token(n_params: int) -> float:
    """4·N: forward 2·N plus the backward through activations 2·N (frozen base)."""
    return 4.0 * n_params


def peak_tflops(device_name: str) -> float | None:
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):  # "H100 PCIe" before "H100"
        if key.lower() in device_name.lower():
            return PEAK_TFLOPS[key]
    return None


def mfu(tokens_per_s: float, n_params: int, peak: float | None) -> float | None:
    if not peak:
        return None
    return tokens_per_s * flops_per_token(n_params) / (peak * 1e12)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--shapes", default=",".join(SHAPES), help=", ".join(SHAPES))
    parser.add_argument("--methods", default=",".join(METHODS), help=", ".join(METHODS))
    parser.add_argument("--json", default="gpu_check.json")
    args = parser.parse_args(argv)
    args.shapes = args.shapes.split(",")
    args.methods = args.methods.split(",")
    for s in args.shapes:
        if s not in SHAPES:
            parser.error(f"--shapes: unknown {s!r}; one of {', '.join(SHAPES)}")
    for m in args.methods:
        if m not in METHODS:
            parser.error(f"--methods: unknown {m!r}; one of {', '.join(METHODS)}")
    if args.steps < 2:
        parser.error("--steps: at least 2 (step 1 is excluded from the rate)")
    return args


def _model_folder(shape: str) -> Path:
    """A folder with the shape's config.json (what the advisor and from_config read)."""
    folder = Path(tempfile.mkdtemp(prefix=f"gpu-check-{shape}-"))
    cfg = {**SHAPES[shape], "architectures": ["Qwen2ForCausalLM"], "torch_dtype": "bfloat16"}
    (folder / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    return folder


def predicted_gib(folder: Path, method: str, args: argparse.Namespace) -> float:
    from engine.advisor import predict_job_peak
    from engine.config import JobConfig

    job = JobConfig()
    job.model.source = str(folder)
    job.method.name = method
    job.dataset.max_length = args.seq_len
    job.training.batch_size = args.batch_size
    job.training.precision = "bf16"
    est = predict_job_peak(job, "cuda", corrected=False)
    return est.compared / 2**30


def measure(shape: str, method: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = _model_folder(shape)
    config = AutoConfig.from_pretrained(folder)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    if method == "qlora":
        from transformers import BitsAndBytesConfig

        # Random weights, then quantized: save once, load back 4-bit (how a user's run loads).
        base = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        base.save_pretrained(folder)
        del base
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                               bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=q,
                                                     dtype=torch.bfloat16, device_map={"": 0})
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).cuda()
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05,
                                             target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    torch.cuda.reset_peak_memory_stats()
    g = torch.Generator().manual_seed(0)
    times = []
    tokens = args.batch_size * args.seq_len
    for _ in range(args.steps):
        ids = torch.randint(0, config.vocab_size, (args.batch_size, args.seq_len), generator=g)
        ids = ids.cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter())
    rate = tokens * (len(times) - 1) / (times[-1] - times[0])
    n = param_count(SHAPES[shape])
    peak = peak_tflops(torch.cuda.get_device_name(0))
    measured = torch.cuda.max_memory_reserved() / 2**30
    predicted = predicted_gib(folder, method, args)
    del model, opt
    torch.cuda.empty_cache()
    return {"shape": shape, "method": method, "params": n, "seq_len": args.seq_len,
            "batch_size": args.batch_size, "reserved_gib": round(measured, 3),
            "predicted_gib": round(predicted, 3),
            "predicted_over_measured": round(predicted / measured, 3),
            "tokens_per_s": round(rate, 1), "mfu": mfu(rate, n, peak),
            "peak_tflops_assumed": peak, "final_loss": float(loss)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("error: benchmarks/gpu_check.py needs a CUDA GPU and this machine has none "
              "(torch.cuda.is_available() is False); run it on a GPU machine", file=sys.stderr)
        return 2
    import platform

    import transformers

    results: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
        "cuda": torch.version.cuda, "transformers": transformers.__version__,
        "python": platform.python_version(), "flops_per_token": "4*N (frozen base)",
        "cases": []}
    for shape in args.shapes:
        for method in args.methods:
            try:
                r = measure(shape, method, args)
            except Exception as exc:  # one case failing (e.g. no bitsandbytes) keeps the rest
                r = {"shape": shape, "method": method, "error": f"{type(exc).__name__}: {exc}"}
            results["cases"].append(r)
            print(json.dumps(r), flush=True)
    Path(args.json).write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
