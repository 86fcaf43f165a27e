"""Engine calls the views need, as plain functions returning plain data.

They run on :class:`gui.controllers.tasks.TaskRunner` worker threads and import torch, transformers
and peft only inside the function, so opening the window stays fast. What a method is and what it
trains come from the engine's method registry (``engine.methods``), never from a copy here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from engine.cli import quiet_bitsandbytes
from engine.config import MethodConfig

quiet_bitsandbytes()  # the engine runs in-process here too (advisor, parameter counts)

# --------------------------------------------------------------------------- models


def list_catalog() -> list[dict[str, Any]]:
    from engine import catalog

    return catalog.list_models()


def model_choices() -> dict[str, Any]:
    """The built-in defaults (name → task, license, description) and the catalog entries."""
    from engine.models import DEFAULT_MODELS

    defaults = {name: {"task": d.task, "license": d.license, "description": d.description}
                for name, d in DEFAULT_MODELS.items()}
    return {"defaults": defaults, "catalog": list_catalog()}


def _catalog_entry(source: str) -> dict[str, Any] | None:
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
    from engine.method_facts import build_meta_model, natural_task
    from engine.methods import count_parameters as count

    return count(build_meta_model(config, natural_task(config)))[1]


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
    from engine.telemetry import gpu_status as status

    return dict(status())


def advise(source: str, **kwargs: Any) -> dict[str, Any]:
    from engine.advisor import advise as engine_advise

    return dict(engine_advise(source, **kwargs))


def job_peak(job: Any) -> dict[str, Any]:
    """The advisor's predicted peak for ``job`` as it will run (its device, dtype, batch and
    max length): the one prediction the Method page, the Train page's gauges and the run's
    memory check all show (``engine.advisor.predict_job_peak``). Sizes in GiB."""
    from engine.advisor import predict_job_peak
    from engine.errors import UserError
    from engine.models import pick_device

    try:
        device = pick_device(job.training.device)
    except UserError:
        device = "cpu"
    kind = "cuda" if device.startswith("cuda") else "cpu"
    est = predict_job_peak(job, kind)
    return {"device": kind, "expected_gb": est.expected / 2**30,
            "compared_gb": est.compared / 2**30}


def method_shares(source: str) -> dict[str, float | None]:
    """Share of parameters each registered method trains on ``source`` (0..1); None for a
    method this model cannot run. The counter is the one training reports (engine.methods)."""
    from engine.method_facts import all_method_facts

    facts = all_method_facts(_config(source))
    return {name: f.get("share") for name, f in facts.items()}


# --------------------------------------------------------------------------- architecture map


def architecture_map(source: str, method: MethodConfig) -> dict[str, Any]:
    """The module tree with what ``method`` trains (``engine.explain``)."""
    from engine.explain import explain
    from engine.methods import get_method

    report = explain(source, method.name, method)
    totals = report["totals"]
    return {"tree": _from_engine(report["tree"], None), "trainable": totals["trainable_params"],
            "total": totals["params"], "note": get_method(method.name).note,
            "source": "engine.explain"}


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

def method_catalog() -> dict[str, dict[str, Any]]:
    """name → label, summary, settings, mergeable, works_on_4bit, suggested_lr, in the
    registry's order."""
    from engine.methods import METHODS

    return {name: {"label": spec.label, "summary": spec.summary, "settings": spec.settings,
                   "mergeable": spec.mergeable, "works_on_4bit": spec.works_on_4bit,
                   "suggested_lr": spec.suggested_lr}
            for name, spec in METHODS.items()}
