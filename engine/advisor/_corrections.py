"""Stored corrections: measured / predicted peak ratios per model, method and device.

A training run measures its real peak after its first steps (see ``_callback.py``); when the
prediction was off, the ratio is stored here, in the user cache, and the next prediction for
the same model + method + device is scaled by it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

FILE_NAME = "advisor-corrections.json"
MIN_FACTOR, MAX_FACTOR = 0.25, 4.0
BLEND = 0.5  # weight of the newest measurement against the stored factor


def corrections_path() -> Path:
    """The corrections file in Tunesmith's user cache."""
    from engine.models import cache_dir

    return cache_dir() / FILE_NAME


def correction_key(model: str, method: str, device: str) -> str:
    """The key of one stored correction: model source, method and device kind."""
    return f"{model.strip().lower()}|{method}|{device}"


def load_all() -> dict[str, Any]:
    """Every stored correction; an unreadable file reads as none."""
    try:
        data = json.loads(corrections_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def get_correction(model: str, method: str, device: str) -> float:
    """The stored factor for this model + method + device (1.0 when none)."""
    entry = load_all().get(correction_key(model, method, device))
    try:
        return _clamp(float(entry["factor"])) if entry else 1.0
    except (KeyError, TypeError, ValueError):
        return 1.0


def _clamp(x: float) -> float:
    return min(MAX_FACTOR, max(MIN_FACTOR, x))


def record(model: str, method: str, device: str, *, raw_predicted: float,
           measured: float) -> float:
    """Store measured / raw_predicted (blended with the stored factor); return the factor.

    ``raw_predicted`` is the prediction *before* any stored correction was applied.
    """
    if raw_predicted <= 0 or measured <= 0:
        return get_correction(model, method, device)
    data = load_all()
    key = correction_key(model, method, device)
    ratio = measured / raw_predicted
    old = data.get(key)
    factor = ratio if not old else BLEND * ratio + (1 - BLEND) * float(old.get("factor", ratio))
    samples = 1 + (int(old.get("samples", 0)) if old else 0)
    data[key] = {"factor": round(_clamp(factor), 4), "samples": samples,
                 "last_ratio": round(ratio, 4), "updated": round(time.time(), 1)}
    _write(corrections_path(), data)
    return _clamp(factor)


def _write(path: Path, data: dict[str, Any]) -> None:
    """Write aside, then rename into place: readers never see half a file."""
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def clear() -> None:
    """Forget every stored correction."""
    try:
        corrections_path().unlink()
    except FileNotFoundError:
        pass
