"""Engine calls the views need, as plain functions returning plain data.

They run on :class:`gui.tasks.TaskRunner` worker threads and import torch, transformers and
peft only inside the function, so opening the window stays fast. Engine modules that other
issues are still writing are looked up with :func:`available` and degrade to a clear message.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path
from typing import Any

from engine.config import MethodConfig


def available(module: str) -> bool:
    """True when ``module`` (e.g. ``engine.advisor``) is importable in this build."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _has(module: str, name: str) -> bool:
    return available(module) and hasattr(importlib.import_module(module), name)


# --------------------------------------------------------------------------- models


def list_catalog() -> list[dict[str, Any]]:
    if not available("engine.catalog"):
        return []
    from engine import catalog

    return catalog.list_models()


def model_choices() -> dict[str, Any]:
    """The built-in defaults (name → task, license, description) and the catalog entries."""
    from engine.models import DEFAULT_MODELS

    defaults = {name: {"task": d.task, "license": d.license, "description": d.description}
                for name, d in DEFAULT_MODELS.items()}
    return {"defaults": defaults, "catalog": list_catalog()}


def _catalog_entry(source: str) -> dict[str, Any] | None:
    if not available("engine.catalog"):
        return None
    from engine import catalog

    return catalog.get(source)


def _config(source: str) -> Any:
    entry = _catalog_entry(source)
    if entry is not None and not Path(source).exists():
        from engine import catalog

        config = catalog.catalog_config(entry["name"])
        if config is not None:
            return config
    from engine.models import load_config

    return load_config(source)


def _readme_license(source: str) -> str:
    readme = Path(source).expanduser() / "README.md"
    if not readme.is_file():
        return ""
    match = re.search(r"^license:\s*(\S+)", readme.read_text(errors="ignore")[:4000], re.M)
    return match.group(1) if match else ""


def count_parameters(config: Any) -> int:
    """Exact parameter count of a model built from ``config`` on the meta device."""
    if _has("engine.methods.facts", "build_meta_model"):
        from engine.methods.facts import build_meta_model, natural_task

        model = build_meta_model(config, natural_task(config))
    else:
        model = _meta_model(config)
    return sum(p.numel() for p in model.parameters())


def _meta_model(config: Any) -> Any:
    from accelerate import init_empty_weights
    from transformers import AutoModel, AutoModelForCausalLM

    with init_empty_weights():
        try:
            model = AutoModelForCausalLM.from_config(config)
        except ValueError:  # an encoder such as BERT: no causal-LM head
            model = AutoModel.from_config(config)
    model.tie_weights()  # init_empty_weights skips tying: count shared embeddings once
    return model


def model_info(source: str) -> dict[str, Any]:
    """Architecture facts of ``source`` without loading weights."""
    from engine.models import DEFAULT_MODELS, model_facts

    config = _config(source)
    facts = model_facts(config)
    entry = _catalog_entry(source) or {}
    default = DEFAULT_MODELS.get(source)
    info: dict[str, Any] = {
        "source": source,
        "display_name": entry.get("display_name")
        or (default.description.split(" (")[0] if default else source),
        "hub_id": entry.get("hub_id", ""),
        "model_type": facts.get("model_type"),
        "architecture": ", ".join(facts.get("architectures") or []) or None,
        "layers": facts.get("num_hidden_layers"),
        "hidden_size": facts.get("hidden_size"),
        "heads": facts.get("num_attention_heads"),
        "kv_heads": facts.get("num_key_value_heads"),
        "intermediate_size": facts.get("intermediate_size"),
        "vocab_size": facts.get("vocab_size"),
        "context": entry.get("context_length") or facts.get("max_position_embeddings"),
        "license": entry.get("license") or (default.license if default else "")
        or _readme_license(source) or "unknown",
        "description": default.description if default else "",
        "task": default.task if default else "",
    }
    info["parameters"] = entry.get("params") or count_parameters(config)
    return info


# --------------------------------------------------------------------------- data


def inspect_data(path: str, **kwargs: Any) -> Any:
    """``engine.data.inspect_dataset``; raises ``ModuleNotFoundError`` before it lands."""
    from engine.data import inspect_dataset

    return inspect_dataset(path, **kwargs)


# --------------------------------------------------------------------------- advisor


def gpu_status() -> dict[str, Any]:
    if not _has("engine.telemetry", "gpu_status"):
        return {"gpus": [], "reason": "GPU telemetry is not available in this build yet"}
    from engine.telemetry import gpu_status as status

    return dict(status())


def advise(source: str, **kwargs: Any) -> dict[str, Any]:
    from engine.advisor import advise as engine_advise

    return dict(engine_advise(source, **kwargs))


def method_shares(source: str, methods: tuple[str, ...]) -> dict[str, float]:
    """Share of parameters each method trains on ``source`` (0..1)."""
    if _has("engine.advisor", "method_param_counts"):
        from engine.advisor import method_param_counts

        return {m: float(method_param_counts(source, m)["share"]) for m in methods}
    config = _config(source)
    shares = {}
    for method in methods:
        model = _apply_method(_meta_model(config), MethodConfig(name=method))
        total = sum(p.numel() for p in model.parameters())
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if method == "adapter":  # not a peft method: a down and an up projection per layer
            trained = _adapter_params(config, MethodConfig().bottleneck_size)
            total += trained
        shares[method] = trained / total if total else 0.0
    return shares


def _adapter_params(config: Any, bottleneck: int) -> int:
    hidden, layers = config.hidden_size, config.num_hidden_layers
    return layers * (2 * hidden * bottleneck + hidden + bottleneck)


# --------------------------------------------------------------------------- architecture map


def architecture_map(source: str, method: MethodConfig) -> dict[str, Any]:
    """The module tree with what ``method`` trains: ``engine.explain`` when present."""
    if _has("engine.explain", "explain"):
        from engine.explain import explain

        report = explain(source, method.name, method)
        totals = report["totals"]
        return {"tree": _from_engine(report["tree"], None), "trainable": totals["trainable_params"],
                "total": totals["params"], "note": _method_note(method.name),
                "source": "engine.explain"}
    model = _apply_method(_meta_model(_config(source)), method)
    tree = _root_node(model)
    return {"tree": tree, "trainable": tree["trainable"], "total": tree["params"],
            "note": _method_note(method.name), "source": "meta-device build (peft applied)"}


def _method_note(name: str) -> str:
    notes = {
        "qlora": "QLoRA: the same LoRA matrices on a base held in 4-bit NF4.",
        "adapter": "Bottleneck adapters are inserted by the engine after each block; "
                   "the base stays frozen.",
        "full": "Full fine-tuning: every weight is trained.",
    }
    return notes.get(name, "")


def _apply_method(model: Any, method: MethodConfig) -> Any:
    name = method.name
    if name == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    for p in model.parameters():
        p.requires_grad_(False)
    config = _peft_config(model, method)
    if config is None:
        return model
    from peft import get_peft_model

    return get_peft_model(model, config)


def _peft_config(model: Any, method: MethodConfig) -> Any:
    import peft

    targets: Any = method.target_modules
    if targets == ["all-linear"]:
        targets = "all-linear"
    causal = hasattr(model, "lm_head") or hasattr(model, "get_output_embeddings")
    task = "CAUSAL_LM" if causal and hasattr(model, "generate") else "FEATURE_EXTRACTION"
    if method.name in ("lora", "qlora", "dora"):
        return peft.LoraConfig(r=method.r, lora_alpha=method.alpha, lora_dropout=method.dropout,
                               target_modules=targets, use_dora=method.name == "dora",
                               task_type=task)
    if method.name == "ia3":
        return peft.IA3Config(task_type=task)
    if method.name in ("prefix", "ptuning_v2"):
        return peft.PrefixTuningConfig(num_virtual_tokens=method.num_virtual_tokens,
                                       prefix_projection=method.prefix_projection,
                                       task_type=task)
    if method.name == "prompt":
        return peft.PromptTuningConfig(num_virtual_tokens=method.num_virtual_tokens,
                                       task_type=task)
    return None  # adapter: not a peft method; the engine adds it


def _from_engine(node: dict[str, Any], parent: str | None) -> dict[str, Any]:
    """``engine.explain``'s node (dotted names) as the map's node: short names, modules without
    parameters left out, and a lone child folded into its parent (``lora_A.default``).

    ``parent`` is None for the root, whose children's names are relative to "".
    """
    path = node["name"]
    short = path[len(parent) + 1:] if parent and path.startswith(parent + ".") else path
    children = [_from_engine(c, path if parent is not None else "") for c in node["children"]
                if c["params"] or c.get("shared_with")]
    out = {"name": short, "type": node["type"], "params": node["params"],
           "trainable": node["trainable_params"], "added": bool(node.get("added")),
           "shared_with": node.get("shared_with"), "children": children}
    own = out["params"] - sum(c["params"] for c in children)
    if len(children) == 1 and not own and parent:
        return {**children[0], "name": f"{short}.{children[0]['name']}"}
    return out


def _root_node(model: Any) -> dict[str, Any]:
    """The base model's tree, with a peft prompt encoder (prefix, prompt) as an extra branch."""
    if not hasattr(model, "get_base_model"):
        return _node("model", model)
    root = _node("model", model.get_base_model())
    encoder = getattr(model, "prompt_encoder", None)
    if encoder is not None and len(encoder):
        extra = _node("prompt_encoder (virtual tokens)", encoder)
        root["children"].append(extra)
        root["params"] += extra["params"]
        root["trainable"] += extra["trainable"]
    return root


def _node(name: str, module: Any) -> dict[str, Any]:
    params = list(module.parameters())
    node: dict[str, Any] = {
        "name": name,
        "type": type(module).__name__,
        "params": sum(p.numel() for p in params),
        "trainable": sum(p.numel() for p in params if p.requires_grad),
        "children": [],
    }
    if hasattr(module, "base_layer"):  # a peft tuner layer: show it as one trained leaf
        tuner = type(module).__module__.split(".")
        kind = tuner[2] if len(tuner) > 2 and tuner[0] == "peft" else type(module).__name__
        node["type"] = f"{type(module.base_layer).__name__} + {kind.upper()}"
        return node
    node["children"] = [_node(child_name, child) for child_name, child in module.named_children()]
    return node


def inspect_for_job(job: Any) -> tuple[Any, str]:
    """Inspect the job's dataset as its model will see it: ``(report, note)``.

    When the model's tokenizer cannot be loaded (offline hub id), the rows are still checked
    without token lengths, and ``note`` says why.
    """
    from engine.errors import DataError, UserError

    ds = job.dataset
    kwargs = {"format": ds.format, "max_length": ds.max_length, "overflow": ds.overflow,
              "text_column": ds.text_column, "label_column": ds.label_column,
              "task": job.task, "system_prompt": ds.system_prompt, "split": ds.split}
    try:
        return inspect_data(ds.path, model_source=job.model.source, **kwargs), ""
    except DataError:
        raise
    except UserError as exc:
        if exc.code == "bad_data":
            raise
        report = inspect_data(ds.path, model_source=None, **kwargs)
        return report, f"Token lengths need the model's tokenizer: {exc.message}"


# --------------------------------------------------------------------------- methods

# What the lesson says about each method, for methods the engine does not describe yet.
_METHOD_FALLBACK: dict[str, dict[str, Any]] = {
    "full": {"label": "Full fine-tuning", "mergeable": True, "works_on_4bit": False,
             "summary": "Trains every weight. Best quality; memory ≈ 3–4× the model's size."},
    "lora": {"label": "LoRA", "mergeable": True, "works_on_4bit": True,
             "summary": "Low-rank updates beside frozen weights (~0.5% trained). The default."},
    "qlora": {"label": "QLoRA", "mergeable": True, "works_on_4bit": True,
              "summary": "LoRA on a 4-bit NF4 base: large models on consumer GPUs."},
    "dora": {"label": "DoRA", "mergeable": True, "works_on_4bit": True,
             "summary": "LoRA that also learns each weight's magnitude; a little slower."},
    "adapter": {"label": "Bottleneck adapter", "mergeable": False, "works_on_4bit": True,
                "summary": "Small down/up MLPs inserted after each block (~3% trained); "
                           "modular, one per task."},
    "prefix": {"label": "Prefix tuning", "mergeable": False, "works_on_4bit": True,
               "summary": "Trainable key/value prefixes in every layer (~0.1%); for very "
                          "tight memory."},
    "ptuning_v2": {"label": "P-tuning v2", "mergeable": False, "works_on_4bit": True,
                   "summary": "Deep prompt tuning: virtual tokens at every layer (~0.2%); "
                              "prompt-style tasks."},
    "prompt": {"label": "Prompt tuning", "mergeable": False, "works_on_4bit": True,
               "summary": "Trainable virtual tokens before the input only; the smallest."},
    "ia3": {"label": "IA³", "mergeable": True, "works_on_4bit": True,
            "summary": "Learned scaling vectors on keys, values and the MLP (~0.01%)."},
}


def method_catalog() -> dict[str, dict[str, Any]]:
    """name → label, summary, mergeable, works_on_4bit (the engine's spec where it has one)."""
    from engine.config import METHODS

    specs: dict[str, Any] = {}
    if available("engine.methods"):
        specs = dict(getattr(importlib.import_module("engine.methods"), "METHODS", {}))
    out = {}
    for name in METHODS:
        info = dict(_METHOD_FALLBACK.get(name, {"label": name, "summary": "",
                                                "mergeable": False, "works_on_4bit": False}))
        spec = specs.get(name)
        if spec is not None:
            info.update(label=spec.label, summary=spec.summary, mergeable=spec.mergeable,
                        works_on_4bit=spec.works_on_4bit)
        out[name] = info
    return out
