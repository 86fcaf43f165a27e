"""The model catalog: architecture facts of popular models, readable offline.

The advisor predicts memory before anything is downloaded, so it needs each model's
config.json fields. ``resources/catalog/models.yaml`` holds them together with display facts
(name, hub id, published parameter count, context length, licence).
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import yaml

from engine import resources


@functools.cache
def _entries() -> tuple[dict[str, Any], ...]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C parser is ~10× faster
    text = resources.path("catalog", "models.yaml").read_text(encoding="utf-8")
    data = yaml.load(text, Loader=loader)
    return tuple(data["models"])


def list_models() -> list[dict[str, Any]]:
    """Every catalog entry (copies), in the file's order."""
    return [copy.deepcopy(e) for e in _entries()]


def names() -> list[str]:
    """The catalog names, for messages that list the known models."""
    return [e["name"] for e in _entries()]


def get(name_or_hub_id: str) -> dict[str, Any] | None:
    """The entry whose name, hub id or a variant's hub id matches (case-insensitive), or None.

    A variant (the family's base or instruct twin, same architecture) comes back as the
    entry with that variant's ``hub_id`` and ``display_name``; ``name`` stays the entry's.
    """
    key = name_or_hub_id.strip().lower()
    for entry in _entries():
        if key in (entry["name"].lower(), entry["hub_id"].lower()):
            return copy.deepcopy(entry)
        for variant in entry.get("variants", ()):
            if key == variant["hub_id"].lower():
                return {**copy.deepcopy(entry), **variant}
    return None


def hub_ids() -> list[str]:
    """Every hub id the catalog knows offline (entries and their variants)."""
    return [hub for e in _entries()
            for hub in (e["hub_id"], *(v["hub_id"] for v in e.get("variants", ())))]


def catalog_config(name: str) -> Any:
    """A ``transformers.PretrainedConfig`` built from the entry's config fields, or None."""
    entry = get(name)
    if entry is None:
        return None
    from transformers import AutoConfig

    fields = dict(entry["config"])
    model_type = fields.pop("model_type")
    return AutoConfig.for_model(model_type, **fields)
