"""Training speed on the CPU: Tunesmith vs the plain Trainer + peft script, side by side.

    python benchmarks/train_speed.py [--steps 10] [--repeats 3] [--json results.json]

The same job for every variant: SmolLM2-135M-Instruct (the offline default), LoRA r16 on all
linear layers, batch 4, max length 256, lr 1e-3 with a linear schedule and 10% warm-up, seed 42.
Variants, run interleaved (one of each, then the next round) so that a machine whose load
changes hurts them alike:

- ``tunesmith`` — ``python -m engine train`` with the job's defaults (packing, precision auto:
  bf16 autocast where the CPU multiplies bf16 natively);
- ``tunesmith-fp32`` — the same with ``training.precision: fp32``;
- ``plain-fp32`` / ``plain-bf16`` — ``benchmarks/plain_script.py`` (pad to longest, no packing);
- ``tunesmith-nopack-bf16`` — Tunesmith with packing off, fed the same rows in the same order as
  ``plain-bf16``: the loss check (the same batches, so the loss curves must agree).

Two data sets: the demo (``resources/datasets/pirate-persona.jsonl``, short answers) and a
variable-length set written here deterministically (:func:`variable_length_rows`: short and
long answers mixed). Per run: real (non-pad) tokens/s over steps 2..N (step 1 holds one-time
work), seconds from the command to the first optimizer step, peak RSS (``wait4``'s
``ru_maxrss``), the final loss and the real tokens seen. Medians over the repeats, and ratios
against the faster plain variant.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "resources" / "datasets" / "pirate-persona.jsonl"
PLAIN = ROOT / "benchmarks" / "plain_script.py"
SEED = 42
VARIANTS = ("tunesmith", "tunesmith-fp32", "plain-fp32", "plain-bf16", "tunesmith-nopack-bf16")
# bf16 keeps 8 mantissa bits (relative rounding 2^-8 ≈ 0.4% per product); summed over a
# 576-wide dot product and 30 layers the loss of one batch moves by up to ~1-2% between two
# bf16 runs that differ only in the order of their sums. Loss curves of the same batches
# "agree" when every step is within this relative tolerance.
BF16_LOSS_RTOL = 0.03


def variable_length_rows(n: int = 160, seed: int = 0) -> list[dict[str, Any]]:
    """Conversations with answers from a few tokens to past the 256-token limit, mixed."""
    rng = random.Random(seed)
    text = ("the ship sails west at dawn with a crew of twelve and a chest of maps while "
            "gulls follow the wake and the captain reads the stars")
    words = text.split(" ")
    rows = []
    for i in range(n):
        long = i % 3 == 0  # a third long (≈120-330 words), the rest short (3-20 words)
        k = rng.randint(120, 330) if long else rng.randint(3, 20)
        answer = " ".join(rng.choice(words) for _ in range(k)).capitalize() + "."
        rows.append({"messages": [{"role": "user", "content": f"Tell me story number {i}."},
                                  {"role": "assistant", "content": answer}]})
    return rows


def tunesmith_order(n_rows: int, seed: int = SEED) -> list[int]:
    """The row order Tunesmith's seeded split gives with eval_split 0 (engine.data)."""
    from engine.data import split_samples

    train, _ = split_samples(list(range(n_rows)), 0.0, seed)
    return train


def job_yaml(data: Path, steps: int, precision: str, packing: str, runs_dir: Path) -> str:
    return "\n".join([
        "name: bench", "task: sft", "model:", "  source: smollm2-135m-instruct",
        "dataset:", f"  path: {data}", "  max_length: 256", "  eval_split: 0",
        f"  packing: {packing}",
        "method:", "  name: lora", "  r: 16", "  alpha: 32", "  dropout: 0.05",
        "  target_modules: [all-linear]",
        "training:", f"  max_steps: {steps}", "  batch_size: 4", "  learning_rate: 1.0e-3",
        "  lr_scheduler: linear", "  warmup_ratio: 0.1", "  logging_steps: 1",
        f"  precision: {precision}", f"  seed: {SEED}",
        "output:", f"  runs_dir: {runs_dir}", ""])


def command(variant: str, data: Path, steps: int, work: Path) -> tuple[list[str], Path]:
    """(argv, the file its step lines land in)."""
    py = sys.executable
    if variant.startswith("plain"):
        out = work / "steps.jsonl"
        order = ",".join(map(str, tunesmith_order(_count_rows(data))))
        return ([py, str(PLAIN), "--data", str(data), "--steps", str(steps), "--precision",
                 variant.split("-")[1], "--order", order, "--out", str(out)], out)
    precision = {"tunesmith": "auto", "tunesmith-fp32": "fp32"}.get(variant, "bf16")
    packing = "off" if "nopack" in variant else "auto"
    job = work / "job.yaml"
    job.write_text(job_yaml(data, steps, precision, packing, work / "runs"), encoding="utf-8")
    run_dir = work / "run"
    return ([py, "-m", "engine", "train", str(job), "--run-dir", str(run_dir)],
            run_dir / "events.jsonl")


def _count_rows(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def steps_of(variant: str, lines: list[str]) -> list[dict[str, float]]:
    """Per optimizer step: wall time, loss, real tokens in that step."""
    out: list[dict[str, float]] = []
    if variant.startswith("plain"):
        seen = 0
        for line in lines:
            d = json.loads(line)
            out.append({"t": d["t"], "loss": d["loss"], "tokens": d["tokens_seen"] - seen})
            seen = d["tokens_seen"]
        return out
    elapsed = 0.0
    for line in lines:
        d = json.loads(line)
        if d.get("type") != "step":
            continue
        # the step event carries the real tokens/s since the previous one
        dt = d["elapsed_s"] - elapsed
        elapsed = d["elapsed_s"]
        out.append({"t": d["time"], "loss": d["loss"], "tokens": d["tokens_per_s"] * dt})
    return out


def summarize(steps: list[dict[str, float]], t0: float, max_rss_kb: int) -> dict[str, Any]:
    """The figures of one run (tokens/s over steps 2..N: step 1 holds one-time work)."""
    if len(steps) < 2:
        raise ValueError("a run needs at least 2 steps to measure a rate")
    span = steps[-1]["t"] - steps[0]["t"]
    tokens = sum(s["tokens"] for s in steps[1:])
    return {"tokens_per_s": tokens / max(span, 1e-9),
            "first_step_s": steps[0]["t"] - t0,
            "peak_rss_mb": max_rss_kb / 1024,
            "final_loss": steps[-1]["loss"],
            "real_tokens": sum(s["tokens"] for s in steps),
            "tokens_per_step": sum(s["tokens"] for s in steps) / len(steps),
            "losses": [round(s["loss"], 5) for s in steps]}


def run_one(variant: str, data: Path, steps: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"bench-{variant}-"))
    argv, step_file = command(variant, data, steps, work)
    env = dict(os.environ, PYTHONPATH=str(ROOT), TUNESMITH_CACHE=os.environ.get(
        "TUNESMITH_CACHE", str(Path.home() / ".cache" / "tunesmith")))
    t0 = time.time()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(work / "stderr.txt", "w"))  # noqa: SIM115
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} failed ({proc.returncode}); see {work / 'stderr.txt'}")
    lines = step_file.read_text(encoding="utf-8").splitlines()
    return summarize(steps_of(variant, lines), t0, usage.ru_maxrss)


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("tokens_per_s", "first_step_s", "peak_rss_mb", "final_loss", "real_tokens",
            "tokens_per_step")
    out: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in keys}
    out["runs"] = len(runs)
    out["losses"] = runs[0]["losses"]
    return out


def ratios(table: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Tunesmith against the faster plain variant (tokens/s, start), plain bf16 (RSS)."""
    plain = max(("plain-fp32", "plain-bf16"), key=lambda v: table[v]["tokens_per_s"])
    ts = table["tunesmith"]
    out = {"faster_plain": plain,
           "tokens_per_s": ts["tokens_per_s"] / table[plain]["tokens_per_s"],
           "first_step_s": ts["first_step_s"] / table[plain]["first_step_s"],
           "peak_rss_vs_plain_bf16": ts["peak_rss_mb"] / table["plain-bf16"]["peak_rss_mb"]}
    if "tunesmith-nopack-bf16" in table:
        a, b = table["tunesmith-nopack-bf16"]["losses"], table["plain-bf16"]["losses"]
        out["loss_max_rel_diff"] = max(abs(x - y) / abs(y) for x, y in zip(a, b, strict=False))
        out["loss_within_tolerance"] = out["loss_max_rel_diff"] <= BF16_LOSS_RTOL
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--data", default="demo,variable", help="demo, variable or both")
    parser.add_argument("--json", default="", help="write the results here")
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    sets = {}
    for name in args.data.split(","):
        if name == "demo":
            sets[name] = DEMO
        else:
            path = Path(tempfile.mkdtemp(prefix="bench-data-")) / "variable-length.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in variable_length_rows()),
                            encoding="utf-8")
            sets[name] = path
    results: dict[str, Any] = {"machine": machine(), "steps": args.steps, "data": {}}
    for name, path in sets.items():
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        for i in range(args.repeats):
            for v in variants:  # interleaved: one of each per round
                r = run_one(v, path, args.steps)
                runs[v].append(r)
                print(f"{name} round {i + 1} {v}: {r['tokens_per_s']:.1f} tok/s, first step "
                      f"{r['first_step_s']:.1f} s, RSS {r['peak_rss_mb']:.0f} MB, loss "
                      f"{r['final_loss']:.4f}", flush=True)
        table = {v: medians(rs) for v, rs in runs.items()}
        entry: dict[str, Any] = {"medians": table}
        if {"tunesmith", "plain-fp32", "plain-bf16"} <= set(table):
            entry["ratios"] = ratios(table)
        results["data"][name] = entry
        print(json.dumps(entry.get("ratios", {}), indent=1), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


def machine() -> dict[str, Any]:
    import platform

    import torch
    import transformers

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "load_avg": os.getloadavg(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "torch_threads": torch.get_num_threads()}


if __name__ == "__main__":
    raise SystemExit(main())
