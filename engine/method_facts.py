"""Method facts for the GUI and the advisor: what a method trains on a given model.

The model is built from its config on the meta device (no weights, no memory) and the method
is applied with the very ``MethodSpec.apply`` that training uses, so the counts here are the
counts a run reports. An 8B model is counted in about a second, offline.
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path
from typing import Any

from engine.errors import UserError

# Encoder models: no causal-LM head, so their natural task here is classification.
ENCODERS = {"bert", "roberta", "distilbert", "electra", "deberta", "deberta-v2", "mpnet",
            "albert", "xlm-roberta"}


def resolve_config(source: Any) -> Any:
    """A transformers config from a config object, a default name, a folder, a catalog name
    or a hub id (catalog entries need no network)."""
    if not isinstance(source, str | Path):
        return source  # already a PretrainedConfig
    from engine.models import DEFAULT_MODELS, load_config

    text = str(source)
    if text in DEFAULT_MODELS or Path(text).expanduser().exists():
        return load_config(text)
    try:
        catalog = importlib.import_module("engine.catalog")
    except ImportError:
        catalog = None
    config = catalog.catalog_config(text) if catalog is not None else None
    return config if config is not None else load_config(text)


def natural_task(config: Any) -> str:
    return "classify" if getattr(config, "model_type", "") in ENCODERS else "sft"


def method_config(method_name: str, method_cfg: Any = None) -> Any:
    """A validated ``MethodConfig`` from None, a dict of job-file keys, or a MethodConfig."""
    from engine.config import MethodConfig, job_from_dict

    if isinstance(method_cfg, MethodConfig):
        if method_cfg.name == method_name:
            return method_cfg
        method_cfg = {k: v for k, v in vars(method_cfg).items() if k != "name"}
    data = {**(method_cfg or {}), "name": method_name}
    return job_from_dict({"method": data}).method


def build_meta_model(config: Any, task: str) -> Any:
    """The model for ``config`` and ``task`` on the meta device, tied weights tied."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForSequenceClassification if task == "classify" else AutoModelForCausalLM
    try:
        with init_empty_weights(), _no_init():
            model = auto.from_config(config)
    except (ValueError, KeyError) as exc:
        raise UserError(f"cannot build a {config.model_type!r} model for task {task}: "
                        f"{str(exc).splitlines()[0]}", "pick another model or task",
                        code="bad_model") from None
    model.tie_weights()  # init_empty_weights skips tying; a tied head has no weight of its own
    return model


def _no_init() -> Any:
    """Skip weight initialisation (nothing to initialise on the meta device)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers
        import contextlib

        return contextlib.nullcontext()
    return no_init_weights()


def apply_on_meta(model: Any, method_name: str, cfg: Any, task: str) -> Any:
    """``MethodSpec.apply`` on a meta model; new method weights land on meta too."""
    from accelerate import init_empty_weights

    from engine.methods import get_method

    spec = get_method(method_name)
    apply = spec.apply
    if spec.quantized_base:
        # QLoRA trains exactly LoRA's weights; its base becomes 4-bit when loaded, which a
        # meta model cannot be (4-bit weights are counted as their unpacked elements anyway).
        apply = get_method("lora").apply
    with warnings.catch_warnings(), init_empty_weights():
        warnings.simplefilter("ignore", FutureWarning)  # peft calls a v5-deprecated name
        return apply(model, cfg, task)


def method_facts(model_source_or_config: Any, method_name: str, method_cfg: Any = None, *,
                 task: str | None = None) -> dict[str, Any]:
    """trainable, total, share, mergeable, works_on_4bit, suggested_lr, label, summary.

    ``method_cfg``: None (job-file defaults), a dict of ``method.*`` keys, or a MethodConfig.
    Raises UserError/ConfigError when the method cannot work with the model.
    """
    from engine.methods import count_parameters, get_method

    spec = get_method(method_name)
    config = resolve_config(model_source_or_config)
    task = task or natural_task(config)
    cfg = method_config(method_name, method_cfg)
    model = apply_on_meta(build_meta_model(config, task), method_name, cfg, task)
    trainable, total = count_parameters(model)
    return {"method": method_name, "task": task, "model_type": config.model_type,
            "trainable": trainable, "total": total,
            "share": trainable / total if total else 0.0, "mergeable": spec.mergeable,
            "works_on_4bit": spec.works_on_4bit, "suggested_lr": spec.suggested_lr,
            "label": spec.label, "summary": spec.summary}


def all_method_facts(model_source_or_config: Any, method_cfg: dict[str, Any] | None = None, *,
                     task: str | None = None) -> dict[str, dict[str, Any]]:
    """``method_facts`` for every method; a method the model cannot run gets ``error``."""
    from engine.methods import METHODS

    config = resolve_config(model_source_or_config)
    out: dict[str, dict[str, Any]] = {}
    for name, spec in METHODS.items():
        try:
            out[name] = method_facts(config, name, method_cfg, task=task)
        except UserError as exc:
            out[name] = {"method": name, "label": spec.label, "error": exc.message,
                         "advice": exc.advice}
    return out
