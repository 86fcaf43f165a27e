"""Full fine-tuning: every weight trains; the result is a whole model folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def apply(model: Any, cfg: Any, task: str) -> Any:
    for p in model.parameters():
        p.requires_grad = True
    return model


def save(model: Any, folder: Path) -> None:
    model.save_pretrained(folder)


def load_trained(base: Any, folder: Path) -> Any:
    return type(base).from_pretrained(folder, dtype=base.dtype)
