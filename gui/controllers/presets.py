"""Presets: partial job files in ``resources/presets/*.yaml``, each led by a comment header."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from engine import resources

PRESETS_DIR = resources.root() / "presets"  # the bundled presets, wherever Tunesmith is installed


@dataclass(frozen=True)
class Preset:
    name: str  # the file's stem, e.g. "vram-12gb"
    description: str  # the header comment, without the leading "# "
    values: dict[str, Any]  # a nested, partial job mapping


def _order(name: str) -> tuple[int, float, str]:
    """VRAM tiers first, smallest first (vram-8gb before vram-12gb), then the rest by name."""
    tier = name.removeprefix("vram-").removesuffix("gb")
    if name.startswith("vram-") and tier.replace(".", "", 1).isdigit():
        return (0, float(tier), name)
    return (1, 0.0, name)


def preset_names(folder: Path = PRESETS_DIR) -> list[str]:
    return sorted((p.stem for p in folder.glob("*.yaml")), key=_order)


def preset_path(name: str, folder: Path = PRESETS_DIR) -> Path:
    """The file of preset ``name``; the error lists the known names."""
    path = folder / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(preset_names(folder)) or "none"
        raise KeyError(f"no preset {name!r} in {folder} (known: {known})")
    return path


def load_preset(name: str, folder: Path = PRESETS_DIR) -> Preset:
    text = preset_path(name, folder).read_text(encoding="utf-8")
    values = yaml.safe_load(text) or {}
    if not isinstance(values, dict):
        raise ValueError(f"preset {name!r} must be a mapping of job keys")
    return Preset(name, _header(text), values)


def _header(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    text = " ".join(lines).removeprefix("Preset: ")
    return text[:1].upper() + text[1:]
