"""The model card (README.md) of an export: base model, data, method, settings, metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import runs
from engine.export._run import RunInfo

if TYPE_CHECKING:
    from engine.models import BaseIdentity


def run_metrics(run_dir: Path) -> dict[str, Any]:
    """Facts from events.jsonl (and evaluation.json when ``evaluate`` ran)."""
    from engine import events as ev

    facts: dict[str, Any] = {}
    for event in runs.run_events(run_dir):
        if isinstance(event, ev.DataReady):
            facts["data"] = {"format": event.format, "train_rows": event.train_rows,
                             "eval_rows": event.eval_rows, "trained_tokens": event.trained_tokens}
        elif isinstance(event, ev.RunStarted):
            facts["trainable_params"] = event.trainable_params
            facts["total_params"] = event.total_params
            facts["device"] = event.device
        elif isinstance(event, ev.Eval):
            facts["eval_loss"] = event.eval_loss
            facts["eval_step"] = event.step
        elif isinstance(event, ev.RunFinished):
            facts["status"] = event.status
            facts["steps"] = event.step
            facts["final_loss"] = event.final_loss
            facts["elapsed_s"] = event.elapsed_s
    evaluation = run_dir / runs.EVALUATION_FILE
    if evaluation.is_file():
        facts["evaluation"] = json.loads(evaluation.read_text(encoding="utf-8"))
    return facts


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _front_matter(info: RunInfo, kind: str, base: BaseIdentity) -> list[str]:
    """The card's YAML header, as the hub reads it (library_name names what loads it)."""
    library = {"adapter": "peft", "merged": "transformers"}.get(kind)
    if kind == "adapter" and info.is_full:
        library = "transformers"
    if kind == "adapter" and info.method == "adapter":
        library = None  # the bottleneck adapter is Tunesmith's own, not peft's
    license_id, license_name = base.hub_license
    lines = ["---"]
    if base.hub_id:
        lines.append(f"base_model: {base.hub_id}")
    lines.append(f"license: {license_id}")
    if license_name:
        lines.append(f"license_name: {license_name}")
    if library:
        lines.append(f"library_name: {library}")
    dataset = _dataset_hub_id(info.job.dataset.path)
    if dataset:
        lines += ["datasets:", f"- {dataset}"]
    lines += ["tags:", "- tunesmith", f"- {info.job.method.name}"]
    if kind == "gguf":
        lines += ["- gguf", "- llama.cpp"]
    return [*lines, "---", ""]


def _dataset_hub_id(path: str) -> str | None:
    from engine.data import is_hub_dataset_id

    return path if is_hub_dataset_id(path) else None


def _export_name(item: dict[str, Any]) -> str:
    """A result as the reader of the folder sees it: a file name, or this folder."""
    return Path(item["path"]).name if item["kind"] == "gguf" else "this folder"


def model_card(info: RunInfo, *, kind: str, exports: list[dict[str, Any]],
               notes: list[str]) -> str:
    """The card: ``kind`` is adapter, merged or gguf (a GGUF-only export). It names the base
    by its hub id, the data by file name, and holds no path of the machine it was made on."""
    from engine.models import base_identity

    job, m = info.job, run_metrics(info.run_dir)
    base = base_identity(job.model.source)
    base_name = base.hub_id or Path(base.name_or_path).name
    lines = [*_front_matter(info, kind, base), f"# {job.name}", "",
             f"Fine-tuned with Tunesmith from **{base_name}** using "
             f"**{info.spec.label}** ({job.task}).", ""]
    if base.license is None:
        lines += ["The base model's own licence applies; Tunesmith does not know it.", ""]
    else:
        lines += [f"Base model licence: {base.license}.", ""]
    lines += [f"- {n}" for n in base.notes]
    lines += [""] if base.notes else []
    lines += _data_section(job, m) + _method_section(info, m) + _metrics_section(m)
    lines += ["## This export", ""]
    for item in exports:
        lines.append(f"- **{item['kind']}**: {_export_name(item)}"
                     + (f" (largest logit difference in its check: {item['max_logit_diff']:.2e})"
                        if item.get("max_logit_diff") is not None else ""))
    lines += [f"- {n}" for n in notes] + [""]
    lines += _usage(info.method, base.hub_id or "path/to/the/base/model", exports)
    return "\n".join(lines) + "\n"


def _data_section(job: Any, m: dict[str, Any]) -> list[str]:
    data = m.get("data", {})
    fmt = data.get("format", job.dataset.format)
    name = _dataset_hub_id(job.dataset.path) or Path(job.dataset.path).name
    out = ["## Data", "", f"- dataset: `{name}` (format {fmt})"]
    if data:
        out.append(f"- rows: {data['train_rows']} train, {data['eval_rows']} held out; "
                   f"{data['trained_tokens']:,} answer tokens trained on")
    out += [f"- max length: {job.dataset.max_length} tokens", ""]
    return out


def _method_section(info: RunInfo, m: dict[str, Any]) -> list[str]:
    job = info.job
    meth, tr = job.method, job.training
    out = ["## Method and settings", "", f"- method: {info.spec.label} — {info.spec.summary}"]
    if "r" in info.spec.settings:  # the LoRA family
        out.append(f"- rank r={meth.r}, alpha={_fmt(meth.alpha)}, dropout={_fmt(meth.dropout)}, "
                   f"target modules: {', '.join(meth.target_modules)}")
    if "trainable_params" in m:
        share = 100 * m["trainable_params"] / max(m["total_params"], 1)
        out.append(f"- trained parameters: {m['trainable_params']:,} of {m['total_params']:,} "
                   f"({share:.2f}%)")
    steps = tr.max_steps if tr.max_steps > 0 else f"{_fmt(tr.epochs)} epochs"
    out += [f"- steps: {steps}, batch size {tr.batch_size} × grad accumulation {tr.grad_accum}, "
            f"learning rate {_fmt(tr.learning_rate)} ({tr.lr_scheduler}), "
            f"precision {tr.precision}, seed {tr.seed}", ""]
    if info.from_checkpoint:
        out += [f"- exported from `{info.result.name}`: the run did not finish", ""]
    return out


def _metrics_section(m: dict[str, Any]) -> list[str]:
    out = ["## Metrics", ""]
    if m.get("final_loss") is not None:
        out.append(f"- final training loss: {m['final_loss']:.4f} after {m.get('steps')} steps "
                   f"({m.get('status')})")
    if m.get("eval_loss") is not None:
        loss = m["eval_loss"]
        out.append(f"- held-out loss: {loss:.4f} (perplexity {math.exp(min(loss, 50)):.2f})")
    ev = m.get("evaluation")
    if ev and ev.get("tuned", {}).get("loss") is not None:
        out.append(f"- evaluate: held-out loss base {ev['base']['loss']:.4f} → tuned "
                   f"{ev['tuned']['loss']:.4f} (perplexity {ev['base']['perplexity']:.2f} → "
                   f"{ev['tuned']['perplexity']:.2f})")
    if len(out) == 2:
        out.append("- none recorded")
    return [*out, ""]


def _usage(method: str, base: str, exports: list[dict[str, Any]]) -> list[str]:
    out = ["## Use it", ""]
    kinds = {e["kind"] for e in exports}
    if "adapter" in kinds and method == "adapter":
        out += ["```python", "from transformers import AutoModelForCausalLM",
                "from engine.methods import METHODS",
                f"base = AutoModelForCausalLM.from_pretrained(\"{base}\")",
                "model = METHODS[\"adapter\"].load_trained(base, \"path/to/this/folder\")",
                "```", ""]
    elif "adapter" in kinds:
        out += ["```python", "from peft import AutoPeftModelForCausalLM",
                "model = AutoPeftModelForCausalLM.from_pretrained(\"path/to/this/folder\")",
                f"# or attach it to your own copy of the base model ({base})", "```", ""]
    if "merged" in kinds:
        out += ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
                "model = AutoModelForCausalLM.from_pretrained(\"path/to/this/folder\")",
                "tokenizer = AutoTokenizer.from_pretrained(\"path/to/this/folder\")", "```", ""]
    for e in exports:
        if e["kind"] == "gguf":
            name = Path(e["path"]).name
            out += ["```sh", f"llama-cli -m {name} -cnv", "ollama create my-model -f Modelfile",
                    "ollama run my-model", "```", ""]
    return out
