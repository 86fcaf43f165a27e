"""Share of parameters each method trains, beside the lesson's claims (docs/methods.md table).

Every count is exact: the model is built from its config on the meta device and the method is
applied with the code training uses (engine.method_facts). No weights are downloaded.

    python benchmarks/method_shares.py            # markdown table on stdout
    python benchmarks/method_shares.py --json

Models: the built-in SmolLM2-135M-Instruct, and Llama-3.1-8B (config from the catalog, or
written below when the catalog is absent). Method settings are Tunesmith's defaults (LoRA r=16
on all linear layers, adapters with a 64-wide bottleneck, 20 virtual tokens), plus the
configurations the lesson's figures most likely describe (LoRA r=8 on q_proj and v_proj only).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Llama-3.1-8B's config.json fields, for builds without engine/catalog.py.
LLAMA_31_8B = {
    "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "vocab_size": 128256, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0, "tie_word_embeddings": False,
}

LESSON = {"full": "100%", "adapter": "~3%", "lora": "~0.5%", "prefix": "~0.1%",
          "ptuning_v2": "~0.2%", "qlora": "~0.5%"}

# (row label, method, method options)
ROWS: list[tuple[str, str, dict[str, Any]]] = [
    ("full fine-tuning", "full", {}),
    ("adapters, bottleneck 64 (default)", "adapter", {}),
    ("adapters, bottleneck 16", "adapter", {"bottleneck_size": 16}),
    ("LoRA r=16, all linear layers (default)", "lora", {}),
    ("LoRA r=8, q_proj + v_proj", "lora", {"r": 8, "target_modules": ["q_proj", "v_proj"]}),
    ("QLoRA r=16, all linear layers (default)", "qlora", {}),
    ("DoRA r=16, all linear layers", "dora", {}),
    ("prefix tuning, 20 tokens", "prefix", {}),
    ("prefix tuning, 20 tokens, MLP projection (training-time)", "prefix",
     {"prefix_projection": True}),
    ("P-tuning v2, 20 tokens (default)", "ptuning_v2", {}),
    ("P-tuning v2, 100 tokens", "ptuning_v2", {"num_virtual_tokens": 100}),
    ("prompt tuning, 20 tokens", "prompt", {}),
    ("IA³", "ia3", {}),
]


def models() -> list[tuple[str, Any]]:
    from engine.method_facts import resolve_config

    out = [("SmolLM2-135M", resolve_config("smollm2-135m-instruct"))]
    try:
        from engine.catalog import catalog_config

        big = catalog_config("llama-3.1-8b-instruct")
    except ImportError:
        big = None
    if big is None:
        from transformers import AutoConfig

        fields = dict(LLAMA_31_8B)
        big = AutoConfig.for_model(fields.pop("model_type"), **fields)
    out.append(("Llama-3.1-8B", big))
    return out


def measure() -> dict[str, Any]:
    from engine.method_facts import method_facts

    result: dict[str, Any] = {"models": {}, "rows": []}
    configs = models()
    for name, _config in configs:
        result["models"][name] = None
    for label, method, options in ROWS:
        row: dict[str, Any] = {"label": label, "method": method, "options": options,
                               "lesson": LESSON.get(method, "")}
        for name, config in configs:
            start = time.perf_counter()
            facts = method_facts(config, method, options, task="sft")
            row[name] = {"trainable": facts["trainable"], "total": facts["total"],
                         "share": facts["share"],
                         "seconds": round(time.perf_counter() - start, 2)}
            result["models"][name] = result["models"][name] or (
                facts["total"] if method == "full" else None)
        result["rows"].append(row)
    return result


def pct(share: float) -> str:
    if share >= 0.1:
        return f"{100 * share:.1f}%"
    if share >= 0.001:
        return f"{100 * share:.2f}%"
    return f"{100 * share:.3f}%"


def markdown(result: dict[str, Any]) -> str:
    names = list(result["models"])
    head = ["| method (settings) | lesson | "
            + " | ".join(f"{n}: trained (share)" for n in names) + " |",
            "|---|---|" + "---|" * len(names)]
    lines = []
    for row in result["rows"]:
        cells = [f"{row[n]['trainable']:,} ({pct(row[n]['share'])})" for n in names]
        lines.append(f"| {row['label']} | {row['lesson']} | " + " | ".join(cells) + " |")
    totals = ", ".join(f"{n} {result['models'][n]:,}" for n in names)
    return "\n".join([*head, *lines, "", f"Base parameters: {totals}. The share is "
                      "trainable / (base + added)."])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    from engine.cli import quiet_libraries

    quiet_libraries()
    result = measure()
    print(json.dumps(result, indent=1) if args.json else markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
